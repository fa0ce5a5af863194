#!/usr/bin/env bash
# Build a CDRS plugin written in Python into a WebAssembly component.
#
#   sdk/python/build.sh PLUGIN_DIR WORLD OUT.wasm   build PLUGIN_DIR/app.py for WORLD
#   sdk/python/build.sh --install                   only install the toolchain
#
# WORLD is `filter` or `router` (worlds of sdk/wit/plugin.wit). The plugin's
# entry module is PLUGIN_DIR/app.py, which defines `class WitWorld`; it can
# `import cdrs_plugin` (sdk/python is on the module path).
#
# The toolchain (componentize-py, pinned below) is installed into a venv,
# created if missing (see CACHE below); when the pinned version is already
# there nothing is downloaded. Works from any cwd.
set -euo pipefail

COMPONENTIZE_PY_VERSION="0.25.1"

die() {
    echo "sdk/python/build.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SDK_DIR/../.." && pwd)"
WIT_DIR="$REPO_DIR/sdk/wit"
# Toolchains: in a CDRS checkout, under its .tools/; in a plugin project
# (this SDK copied there by `cdrs plugin new`), per user under
# ${XDG_CACHE_HOME:-~/.cache}/cdrs, or CDRS_CACHE_DIR.
if [ -f "$REPO_DIR/engine/Cargo.toml" ]; then
    CACHE="$REPO_DIR/.tools"
else
    CACHE="${CDRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdrs}"
fi
VENV="$CACHE/venv"
CPY="$VENV/bin/componentize-py"

install_toolchain() {
    # One install at a time per toolchain folder (builds running side by
    # side would otherwise fill one venv at once).
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$(dirname "$VENV")/.cdrs-install.lock"
    flock 9
    install_unlocked
    flock -u 9
}

install_unlocked() {
    if [[ -x "$CPY" ]] && [[ "$("$CPY" --version 2>/dev/null)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 not found (needed to create $VENV)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "creating venv $VENV" >&2
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    fi
    echo "installing componentize-py==$COMPONENTIZE_PY_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION" \
        || die "pip install componentize-py==$COMPONENTIZE_PY_VERSION failed"
    [[ -x "$CPY" ]] || die "componentize-py not found at $CPY after install"
}

if [[ "${1:-}" == "--install" ]]; then
    [[ $# -eq 1 ]] || usage
    install_toolchain
    echo "componentize-py $COMPONENTIZE_PY_VERSION ready: $CPY"
    exit 0
fi

[[ $# -eq 3 ]] || usage
PLUGIN_ARG="$1"
WORLD="$2"
OUT_ARG="$3"

case "$WORLD" in
    filter | router) ;;
    *) die "WORLD must be 'filter' or 'router', got '$WORLD'" ;;
esac
[[ -d "$PLUGIN_ARG" ]] || die "plugin directory '$PLUGIN_ARG' not found"
PLUGIN_DIR="$(cd "$PLUGIN_ARG" && pwd)"
[[ -f "$PLUGIN_DIR/app.py" ]] || die "$PLUGIN_DIR has no app.py (the plugin's entry module)"
[[ -f "$WIT_DIR/plugin.wit" ]] || die "WIT not found at $WIT_DIR"

OUT_DIR="$(dirname "$OUT_ARG")"
mkdir -p "$OUT_DIR" || die "cannot create output directory $OUT_DIR"
OUT="$(cd "$OUT_DIR" && pwd)/$(basename "$OUT_ARG")"

install_toolchain

# componentize-py appends the site-packages of an active venv (or of the
# interpreter that runs it) to the module path. Only modules the app imports
# end up in the component, but keep the path explicit and predictable anyway:
# the plugin dir first (app.py and its own modules), then the SDK.
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME

# Write to a temp file and rename, so a file watcher (CDRS hot reload) never
# sees a half-written component.
TMP_OUT="$(mktemp "$OUT.XXXXXX.tmp")"
trap 'rm -f "$TMP_OUT"' EXIT

start_ns=$(date +%s%N)
# RUST_LIB_BACKTRACE=0: a Python error in the app is reported with its
# traceback; a Rust backtrace of the tool after it would only bury it.
if ! RUST_LIB_BACKTRACE=0 "$CPY" -d "$WIT_DIR" -w "$WORLD" componentize \
    -p "$PLUGIN_DIR" -p "$SDK_DIR" \
    app -o "$TMP_OUT" >&2; then
    die "componentize-py failed for $PLUGIN_DIR (world $WORLD); see the messages above"
fi
chmod 0644 "$TMP_OUT"  # mktemp makes it 0600
mv -f "$TMP_OUT" "$OUT"
trap - EXIT
end_ns=$(date +%s%N)

size=$(stat -c %s "$OUT")
ms=$(((end_ns - start_ns) / 1000000))
printf 'built %s (%s world, %d bytes, %d.%01d s)\n' "$OUT" "$WORLD" "$size" $((ms / 1000)) $((ms % 1000 / 100))
