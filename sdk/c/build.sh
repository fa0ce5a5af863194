#!/usr/bin/env bash
# Builds a CDRS plugin written in C into a WebAssembly component.
#
#   sdk/c/build.sh PLUGIN_DIR WORLD OUT.wasm
#
#   PLUGIN_DIR  directory with the plugin's *.c (and any *.h)
#   WORLD       `router` or `filter` (a world of sdk/wit/plugin.wit)
#   OUT.wasm    the component to write
#
# Steps (each idempotent, fast when already done):
#   1. Zig from PyPI (`ziglang`, pinned below) in a venv (see CACHE below);
#   2. `cdrs-plugin-tools` (sdk/tools) with cargo: wit-bindgen's C bindings
#      and componentization from library crates, no CLI installs (in a
#      plugin project, built once per user under the cache folder);
#   3. C bindings for WORLD into target/c-plugins/<plugin>/gen;
#   4. `zig cc --target=wasm32-wasi` of the plugin, the bindings and the
#      component-type object into a core module (reactor, no WASI imports);
#   5. the core module into a component at OUT.wasm.
#
# Environment: CDRS_ZIG_VERSION (default below), CDRS_VENV (default
# CACHE/venv), CDRS_PLUGIN_TOOLS (a prebuilt cdrs-plugin-tools: skips cargo),
# CDRS_CFLAGS (extra compiler flags), CDRS_WIT_DIR (another copy of the
# contract, e.g. to build against a later version; default sdk/wit),
# CARGO_BUILD_JOBS (default 2).
set -euo pipefail

ZIG_VERSION="${CDRS_ZIG_VERSION:-0.17.0}"

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

if [ $# -ne 3 ]; then
    echo "usage: $0 PLUGIN_DIR WORLD OUT.wasm" >&2
    echo "  e.g. $0 plugins/example-router-c router target/wasm32-wasip2/plugin/example_router_c.wasm" >&2
    exit 2
fi
PLUGIN_DIR="$1"
WORLD="$2"
OUT="$3"

SDK_C="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SDK_C/../.." && pwd)"
WIT="${CDRS_WIT_DIR:-$ROOT/sdk/wit}"
# Toolchains: in a CDRS checkout, under its .tools/; in a plugin project
# (this SDK copied there by `cdrs plugin new`), per user under
# ${XDG_CACHE_HOME:-~/.cache}/cdrs, or CDRS_CACHE_DIR.
if [ -f "$ROOT/engine/Cargo.toml" ]; then
    CACHE="$ROOT/.tools"
else
    CACHE="${CDRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdrs}"
fi
VENV="${CDRS_VENV:-$CACHE/venv}"

[ -d "$PLUGIN_DIR" ] || die "plugin directory '$PLUGIN_DIR' does not exist"
PLUGIN_DIR="$(cd "$PLUGIN_DIR" && pwd)"
case "$WORLD" in
router | filter) ;;
*) die "world '$WORLD' is not one of: router, filter" ;;
esac
shopt -s nullglob
SOURCES=("$PLUGIN_DIR"/*.c)
shopt -u nullglob
[ ${#SOURCES[@]} -gt 0 ] || die "no .c files in '$PLUGIN_DIR'"
OUT_DIR="$(dirname "$OUT")"
mkdir -p "$OUT_DIR" || die "cannot create directory '$OUT_DIR'"
OUT="$(cd "$OUT_DIR" && pwd)/$(basename "$OUT")"

NAME="$(basename "$PLUGIN_DIR")"
BUILD="$ROOT/target/c-plugins/$NAME"
GEN="$BUILD/gen"
mkdir -p "$GEN"

# 1. Zig from PyPI. One install at a time per toolchain folder (builds
# running side by side would otherwise fill one venv at once).
mkdir -p "$(dirname "$VENV")"
exec 9>"$(dirname "$VENV")/.cdrs-install.lock"
flock 9
if [ ! -x "$VENV/bin/python" ]; then
    echo "build.sh: creating venv $VENV" >&2
    python3 -m venv "$VENV" || die "cannot create venv '$VENV' (python3 -m venv)"
fi
have_zig="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null || true)"
if [ "$have_zig" != "$ZIG_VERSION" ]; then
    echo "build.sh: installing ziglang==$ZIG_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIG_VERSION" ||
        die "cannot install ziglang==$ZIG_VERSION from PyPI"
fi
flock -u 9
zig() { "$VENV/bin/python" -m ziglang "$@"; }

# 2. The build tools.
if [ -n "${CDRS_PLUGIN_TOOLS:-}" ]; then
    TOOLS="$CDRS_PLUGIN_TOOLS"
elif [ -f "$ROOT/engine/Cargo.toml" ]; then
    TOOLS="$ROOT/target/release/cdrs-plugin-tools"
    (cd "$ROOT" && cargo build --quiet --release -p cdrs-plugin-tools -j "${CARGO_BUILD_JOBS:-2}") ||
        die "cannot build cdrs-plugin-tools (cargo build --release -p cdrs-plugin-tools)"
else
    # A plugin project: from the copy of sdk/tools beside this SDK, once
    # per user (a few minutes the first time).
    TOOLS="$CACHE/target/release/cdrs-plugin-tools"
    cargo build --quiet --release --manifest-path "$SDK_C/../tools/Cargo.toml" \
        --target-dir "$CACHE/target" -j "${CARGO_BUILD_JOBS:-2}" ||
        die "cannot build cdrs-plugin-tools from $SDK_C/../tools (is cargo installed?)"
fi
[ -x "$TOOLS" ] || die "'$TOOLS' is not an executable"

# 3. Bindings.
"$TOOLS" c-bindings --wit "$WIT" --world "$WORLD" --out "$GEN" ||
    die "cannot generate C bindings for world '$WORLD' from '$WIT'"

# 4. Core module. -mexec-model=reactor is needed: without it Zig links a
# command module (`_start`, WASI imports for the exit path); with it the
# module exports `_initialize` (static constructors, run by the component at
# instantiation) and the generated `__export_name__` functions, and imports
# nothing from WASI. -s strips debug info: ~15 KB instead of ~1 MB.
CORE="$BUILD/$NAME.core.wasm"
# shellcheck disable=SC2086
zig cc --target=wasm32-wasi -O2 -mexec-model=reactor -s \
    -std=c11 -Wall -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration \
    -I "$GEN" -I "$SDK_C" -I "$PLUGIN_DIR" ${CDRS_CFLAGS:-} \
    "${SOURCES[@]}" "$GEN/$WORLD.c" "$GEN/${WORLD}_component_type.o" \
    -o "$CORE" || die "compiling '$PLUGIN_DIR' failed"

# 5. Component.
"$TOOLS" componentize "$CORE" -o "$OUT" || die "cannot componentize '$CORE'"
echo "build.sh: wrote $OUT ($(wc -c <"$OUT") bytes)" >&2
