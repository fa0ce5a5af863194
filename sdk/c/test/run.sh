#!/usr/bin/env bash
# Native unit tests of the C SDK header and the example C plugins: gcc with
# AddressSanitizer/UBSan (leaks and double frees of the wit-bindgen ownership
# rules show up here), no Wasm. The generated bindings come from
# cdrs-plugin-tools (built with cargo unless CDRS_PLUGIN_TOOLS is set).
#
#   sdk/c/test/run.sh
set -euo pipefail

TEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SDK_C="$(cd "$TEST/.." && pwd)"
ROOT="$(cd "$SDK_C/../.." && pwd)"
BUILD="$ROOT/target/c-plugins/native-test"
CC="${CC:-gcc}"

die() {
    echo "run.sh: error: $*" >&2
    exit 1
}

command -v "$CC" >/dev/null || die "no C compiler '$CC' (apt-get install gcc)"
if [ -n "${CDRS_PLUGIN_TOOLS:-}" ]; then
    TOOLS="$CDRS_PLUGIN_TOOLS"
else
    TOOLS="$ROOT/target/release/cdrs-plugin-tools"
    (cd "$ROOT" && cargo build --quiet --release -p cdrs-plugin-tools -j "${CARGO_BUILD_JOBS:-2}") ||
        die "cannot build cdrs-plugin-tools"
fi

SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
echo 'int main(void){return 0;}' >"$BUILD.probe.c" 2>/dev/null || { mkdir -p "$(dirname "$BUILD")"; echo 'int main(void){return 0;}' >"$BUILD.probe.c"; }
# shellcheck disable=SC2086
if ! "$CC" $SAN "$BUILD.probe.c" -o "$BUILD.probe" 2>/dev/null; then
    echo "run.sh: sanitizers unavailable, building without them" >&2
    SAN=""
fi
rm -f "$BUILD.probe.c" "$BUILD.probe"

status=0
for world in router filter; do
    gen="$BUILD/$world/gen"
    mkdir -p "$gen"
    "$TOOLS" c-bindings --wit "$ROOT/sdk/wit" --world "$world" --out "$gen" ||
        die "cannot generate bindings for '$world'"
    # The generated code's wasm attributes (import/export names) mean nothing
    # natively: -Wno-attributes.
    # shellcheck disable=SC2086
    "$CC" -std=c11 -D_DEFAULT_SOURCE -O1 -g -Wall -Wextra -Wno-unused-parameter -Wno-attributes \
        -Wno-unused-function $SAN -I "$gen" -I "$SDK_C" \
        "$TEST/test_$world.c" "$gen/$world.c" -o "$BUILD/test_$world" ||
        die "cannot compile test_$world.c"
    ASAN_OPTIONS=detect_leaks=1 "$BUILD/test_$world" || status=1
done
exit $status
