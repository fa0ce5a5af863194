#!/usr/bin/env bash
# Build a CDRS JavaScript plugin into a WebAssembly component.
#
#   sdk/js/build.sh PLUGIN_DIR WORLD OUT.wasm
#   sdk/js/build.sh --install        # only install the toolchain
#
# PLUGIN_DIR/plugin.js is the entry module; WORLD is `filter` or `router`
# (of cdrs:plugin@1.0.0 in sdk/wit). The plugin may `import ... from
# 'cdrs-plugin'` (the helper module sdk/js/cdrs-plugin.js), import its own
# relative modules, and import the host functions from
# 'cdrs:plugin/host@1.0.0'.
#
# Steps:
#   1. install the pinned toolchain (sdk/js/package.json + package-lock.json)
#      into the toolchain folder (see CACHE below) with `npm ci`; skipped when the installed lock
#      file is the same (a stamp file records it);
#   2. bundle plugin.js and its imports into one ES module with esbuild
#      (componentize-js only sees the directory of its source file);
#   3. componentize-js against sdk/wit, with `-d http fetch-event` so the
#      component does not import wasi:http.
#
# Environment: CDRS_JS_TOOLS overrides the toolchain directory.
set -euo pipefail

die() { echo "sdk/js/build.sh: $*" >&2; exit 1; }

install_only=0
if [ $# -eq 1 ] && [ "$1" = "--install" ]; then
    install_only=1
else
    [ $# -eq 3 ] || die "usage: sdk/js/build.sh PLUGIN_DIR (filter|router) OUT.wasm  |  sdk/js/build.sh --install"
    plugin_dir=$1 world=$2 out=$3
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
wit="$root/sdk/wit"
# Toolchains: in a CDRS checkout, under its .tools/; in a plugin project
# (this SDK copied there by `cdrs plugin new`), per user under
# ${XDG_CACHE_HOME:-~/.cache}/cdrs, or CDRS_CACHE_DIR.
if [ -f "$root/engine/Cargo.toml" ]; then
    CACHE="$root/.tools"
else
    CACHE="${CDRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdrs}"
fi
tools=${CDRS_JS_TOOLS:-$CACHE/js}

command -v node >/dev/null || die "node is not installed (Node.js >= 18 is needed)"
command -v npm >/dev/null || die "npm is not installed"
if [ $install_only = 0 ]; then
    case "$world" in filter|router) ;; *) die "WORLD must be 'filter' or 'router', not '$world'" ;; esac
    [ -d "$plugin_dir" ] || die "no plugin directory '$plugin_dir'"
    entry="$(cd "$plugin_dir" && pwd)/plugin.js"
    [ -f "$entry" ] || die "no plugin.js in '$plugin_dir'"
    [ -d "$wit" ] || die "no WIT directory at $wit"
fi

# 1. Toolchain, pinned by the committed lock file; one install at a time
# per toolchain folder.
mkdir -p "$(dirname "$tools")"
exec 9>"$(dirname "$tools")/.cdrs-install.lock"
flock 9
stamp="$tools/.cdrs-installed"
want=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
    || [ ! -x "$tools/node_modules/.bin/componentize-js" ] \
    || [ ! -x "$tools/node_modules/.bin/esbuild" ]; then
    echo "sdk/js/build.sh: installing the JS toolchain into $tools (npm ci)..." >&2
    mkdir -p "$tools"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    rm -f "$stamp"
    # --ignore-scripts: nothing in the lock needs an install script (esbuild's
    # only checks its binary), and no script may fetch from outside npm.
    if ! (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
        die "npm ci failed in $tools (is the npm registry reachable?)"
    fi
    echo "$want" >"$stamp"
fi
flock -u 9
bin="$tools/node_modules/.bin"
if [ $install_only = 1 ]; then
    echo "sdk/js/build.sh: toolchain ready in $tools" >&2
    exit 0
fi

# 2. One ES module: plugin.js + cdrs-plugin + the plugin's own imports.
work=$(mktemp -d "${TMPDIR:-/tmp}/cdrs-js-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$bin/esbuild" "$entry" --bundle --format=esm --platform=neutral \
    --target=es2022 --log-level=warning \
    --alias:cdrs-plugin="$here/cdrs-plugin.js" \
    '--external:cdrs:*' '--external:wasi:*' \
    --outfile="$work/plugin.js" \
    || die "bundling $entry failed"

# 3. The component.
mkdir -p "$(dirname "$out")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
(cd "$work" && "$bin/componentize-js" plugin.js --wit "$wit" -n "$world" \
    -d http fetch-event -o "$work/out.wasm" >&2) \
    || die "componentize-js failed for $entry (world $world)"
[ -s "$work/out.wasm" ] || die "componentize-js wrote no component"
# Copy next to the output, then rename: CDRS's file watcher never sees half
# a component.
cp "$work/out.wasm" "$out_abs.tmp.$$"
mv -f "$out_abs.tmp.$$" "$out_abs"
echo "sdk/js/build.sh: wrote $out_abs ($(stat -c %s "$out_abs") bytes)" >&2
