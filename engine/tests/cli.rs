//! The `cdrs` binary: `check` reports every problem at once and exits
//! non-zero; it accepts the example config once the plugins are built.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cdrs(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdrs"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run cdrs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_names_three_mistakes_at_once() {
    let (ok, out) = cdrs(&[
        "check",
        "--config",
        "tests/fixtures/config/three-mistakes.toml",
    ]);
    assert!(!ok, "{out}");
    for needle in [
        "kafka.topics: is empty",
        "targets[1].id: \"blotter-1\" is declared twice",
        "targets[1].url: \"ftp://127.0.0.1:8082/records\" has scheme \"ftp\"",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// Durations beyond a day would wrap `now + duration` (keeping a failing
/// target healthy); each is refused by name.
#[test]
fn check_refuses_durations_beyond_a_day() {
    let (ok, out) = cdrs(&[
        "check",
        "--config",
        "tests/fixtures/config/huge-durations.toml",
    ]);
    assert!(!ok, "{out}");
    for key in [
        "capacity.failure_cooldown_ms",
        "delivery.breaker.base_ejection_ms",
        "delivery.breaker.max_ejection_ms",
    ] {
        let needle =
            format!("{key}: 18446744073709551615 is above the maximum of 86400000 (1 day, in ms)");
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn check_reports_missing_and_non_wasm_plugins() {
    let (ok, out) = cdrs(&[
        "check",
        "--config",
        "tests/fixtures/config/missing-plugin.toml",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no-such-plugin.wasm\" does not exist"),
        "{out}"
    );
    assert!(out.contains("not a WebAssembly file"), "{out}");
}

/// `[kafka.options]` are judged by librdkafka, by name, in `check` and
/// before `run` starts anything; a target looping into a consumed topic is
/// refused.
#[test]
fn check_and_run_name_a_bad_kafka_option_and_a_topic_loop() {
    let file = "tests/fixtures/config/bad-kafka-option.toml";
    let (ok, out) = cdrs(&["check", "--config", file]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("targets[0].url: \"kafka://trades\" writes to a topic CDRS consumes"),
        "{out}"
    );
    let (ok, out) = cdrs(&["run", "--config", file]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("targets[0].url"),
        "run refuses the same file: {out}"
    );
    // Without the loop, the option alone.
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let dir = std::env::temp_dir().join(format!("cdrs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let only_option = dir.join("only-option.toml");
    let plugin = root().join("target/wasm32-wasip2/plugin/p2c_router.wasm");
    std::fs::write(
        &only_option,
        text.replace("kafka://trades", "kafka://elsewhere").replace(
            "../../../target/wasm32-wasip2/plugin/p2c_router.wasm",
            &plugin.display().to_string(),
        ),
    )
    .unwrap();
    let path = only_option.display().to_string();
    for cmd in ["check", "run"] {
        let (ok, out) = cdrs(&[cmd, "--config", &path]);
        assert!(!ok, "{cmd}: {out}");
        assert!(
            out.contains("kafka.options.\"no.such.option\": \"1\" is refused by librdkafka"),
            "{cmd}: {out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_accepts_the_example_config() {
    if !root()
        .join("target/wasm32-wasip2/plugin/p2c_router.wasm")
        .is_file()
    {
        panic!("plugins not built: run `scripts/dev.sh plugins` (the README's test command does)");
    }
    let (ok, out) = cdrs(&["check", "--config", "config/cdrs.toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("ok:"), "{out}");
}

/// `cdrs bench --quick --out F` runs all four benchmarks and writes every
/// key the performance goals are stated in, each a measured positive number.
/// (A smoke run of the command: no figure is judged here.)
#[test]
fn bench_writes_every_figure() {
    let out_file = std::env::temp_dir().join(format!("cdrs-bench-{}.json", std::process::id()));
    let (ok, out) = cdrs(&[
        "bench",
        "--quick",
        "--records",
        "2000",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("plugin overhead"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    for key in [
        "overhead_ns_per_record",
        "native_ns_per_record",
        "overhead_trivial_ns_per_record",
        "native_trivial_ns_per_record",
        "overhead_no_deadline_ns_per_record",
        "native_no_deadline_ns_per_record",
        "e2e_records_per_s",
        "passthrough_records_per_s",
        "e2e_ratio_trivial",
        "e2e_ratio_json",
        "passthrough_like_cdrs_records_per_s",
        "e2e_ratio_trivial_like_cdrs",
        "e2e_ratio_json_like_cdrs",
        "p99_latency_ms",
        "passthrough_p99_latency_ms",
        "broker_p99_latency_ms",
        "cold_load_ms",
        "cached_load_ms",
        "instance_rss_bytes",
        "http_records_per_s",
        "http_loop_records_per_s",
        "http_ratio_like_for_like",
        "http_p99_ms",
        "http_loop_p99_ms",
    ] {
        let v = json[key].as_f64().unwrap_or(f64::NAN);
        // RSS growth can round to zero pages; everything else is a rate or a time.
        let min_ok = if key == "instance_rss_bytes" {
            v >= 0.0
        } else {
            v > 0.0
        };
        assert!(v.is_finite() && min_ok, "{key} = {v} in {json}");
    }
    // CPU per record can round to 0 on 2,000 records (clock ticks of 10
    // ms); CDRS's added latency is negative when it was faster than the loop.
    for key in [
        "http_cpu_us_per_record",
        "http_loop_cpu_us_per_record",
        "http_p50_added_ms",
        "http_p99_added_ms",
    ] {
        let v = json[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key} = {v} in {json}");
    }
    // Two policies (json, trivial) × 4 batch sizes × 2 target counts, and
    // one row of json without deadlines.
    let rows = json["overhead"].as_array().unwrap();
    assert_eq!(rows.len(), 17);
    for policy in ["json", "trivial"] {
        assert_eq!(rows.iter().filter(|r| r["policy"] == policy).count(), 8);
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r["policy"] == "json-no-deadline")
            .count(),
        1
    );
    let _ = std::fs::remove_file(&out_file);
}

/// `cdrs plugin check|test|new` on real components: exit codes and messages
/// a plugin author relies on.
/// `--kafka-option` takes KEY=VALUE and says so when it gets anything else.
#[test]
fn bench_rejects_a_malformed_kafka_option() {
    let (ok, out) = cdrs(&["bench", "--only", "latency", "--kafka-option", "linger.ms"]);
    assert!(!ok, "{out}");
    assert!(out.contains("expected KEY=VALUE"), "{out}");
    assert!(out.contains("\"linger.ms\""), "{out}");
}

#[test]
fn plugin_tooling_reports_and_exits_by_outcome() {
    let dir = root().join("target/wasm32-wasip2/plugin");
    if !dir.join("example_router.wasm").is_file() {
        panic!("plugins not built: run `scripts/dev.sh plugins`");
    }
    let router = dir.join("example_router.wasm");
    let router = router.to_str().unwrap();
    let case = "tests/conformance/router/weighted";

    let (ok, out) = cdrs(&["plugin", "check", router]);
    assert!(ok, "{out}");
    for needle in [
        "world:    router (packed decisions)".to_string(),
        format!(
            "contract: cdrs:plugin@{}",
            cdrs::plugin::contract::host_version()
        ),
        "ok: a router plugin".to_string(),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
    let (ok, out) = cdrs(&["plugin", "check", "tests/fixtures/config/not-wasm.txt"]);
    assert!(!ok && out.contains("not a WebAssembly file"), "{out}");

    // Matching output: exit 0; one changed expectation: a diff and exit 1.
    let args = |expect: &str| -> Vec<String> {
        [
            "plugin",
            "test",
            router,
            "--records",
            &format!("{case}/records.jsonl"),
            "--targets",
            &format!("{case}/targets.json"),
            "--config",
            &format!("{case}/config.json"),
            "--expect",
            expect,
        ]
        .map(String::from)
        .to_vec()
    };
    let argv = args(&format!("{case}/expect.jsonl"));
    let (ok, out) = cdrs(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok && out.contains("ok: 40 line(s) as expected"), "{out}");
    assert!(out.contains("µs/record"), "{out}");
    let changed =
        std::env::temp_dir().join(format!("cdrs-cli-expect-{}.jsonl", std::process::id()));
    let text = std::fs::read_to_string(root().join(case).join("expect.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let swapped = lines[1].replace("blotter-", "blotter-9");
    lines[1] = &swapped;
    std::fs::write(&changed, lines.join("\n")).unwrap();
    let argv = args(changed.to_str().unwrap());
    let (ok, out) = cdrs(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && out.contains("1 difference(s)") && out.contains("line 2:"),
        "{out}"
    );
    let _ = std::fs::remove_file(changed);

    // A config the plugin refuses: exit 1 with its message; bad fixtures name the line.
    let (ok, out) = cdrs(&[
        "plugin",
        "test",
        router,
        "--records",
        &format!("{case}/records.jsonl"),
        "--config",
        r#"{"seed": 0}"#,
    ]);
    assert!(
        !ok && out.contains("refused the config") && out.contains("seed"),
        "{out}"
    );
    let (ok, out) = cdrs(&[
        "plugin",
        "test",
        router,
        "--records",
        "tests/conformance/router/weighted/targets.json",
    ]);
    assert!(!ok && out.contains("targets.json line 1"), "{out}");

    // `new` refuses an existing folder, naming it.
    let (ok, out) = cdrs(&["plugin", "new", "--lang", "rust", "engine"]);
    assert!(!ok && out.contains("\"engine\" already exists"), "{out}");
}

/// Log lines written to a pipe or a file carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let plugin = root().join("target/wasm32-wasip2/plugin/p2c_router.wasm");
    assert!(
        plugin.is_file(),
        "plugins not built: run `scripts/dev.sh plugins`"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cdrs"))
        .args(["plugin", "check", &plugin.display().to_string()])
        .env("RUST_LOG", "info")
        .current_dir(root())
        .output()
        .expect("run cdrs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO"), "an INFO line was logged: {err}");
    assert!(!err.contains('\u{1b}'), "no ANSI escape in: {err:?}");
}

/// `cdrs simulate`: the same seed gives the same figures; every record is
/// accounted for (finished, unfinished or dropped) under every policy; a
/// capacity-blind baseline overloads the slow server of the heterogeneous
/// scenario where capacity-weighted ones do not; `--goals` writes every
/// goal figure; a bad scenario is refused with each key named.
#[test]
fn simulate_is_deterministic_accounts_for_every_record_and_names_bad_scenarios() {
    let dir = std::env::temp_dir().join(format!("cdrs-simulate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out = dir.join(name);
        let mut args = vec![
            "simulate",
            "--duration-ms",
            "10000",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, text) = cdrs(&args);
        assert!(ok, "{text}");
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    let a = run("a.json", &["--scenario", "heterogeneous"]);
    let b = run("b.json", &["--scenario", "heterogeneous"]);
    assert_eq!(a, b, "the same seed, the same figures");
    let c = run("c.json", &["--scenario", "heterogeneous", "--seed", "2"]);
    assert_ne!(a, c, "another seed, other draws");
    let outcomes = a["scenarios"][0]["outcomes"].as_array().unwrap();
    let names: Vec<&str> = outcomes
        .iter()
        .map(|o| o["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "p2c",
            "p2c-sticky",
            "p2c-bounded",
            "ewma",
            "prequal",
            "random",
            "round-robin",
            "weighted-round-robin",
            "least-inflight"
        ]
    );
    for o in outcomes {
        let n = |k: &str| o[k].as_u64().unwrap();
        assert!(n("arrived") > 8_000, "{o}");
        assert_eq!(
            n("completed") + n("unfinished") + n("dropped"),
            n("arrived"),
            "{o}"
        );
    }
    let p99 = |name: &str| {
        outcomes.iter().find(|o| o["policy"] == name).unwrap()["p99_ms"]
            .as_f64()
            .unwrap()
    };
    assert!(p99("random") > 5.0 * p99("weighted-round-robin"), "{a}");
    assert!(p99("p2c") < 2.0 * p99("weighted-round-robin"), "{a}");
    assert!(p99("ewma") < 2.0 * p99("weighted-round-robin"), "{a}");
    assert!(p99("prequal") < 2.0 * p99("weighted-round-robin"), "{a}");

    let g = run("goals.json", &["--goals"]);
    for key in [
        "p99_best_over_least_inflight",
        "p99_best_over_static_wrr",
        "herding_p99_best_over_least_inflight",
        "slowdown_p99_over_steady",
        "sticky_max_load_over_mean",
        "sticky_keys_moved_fraction",
    ] {
        assert!(
            g[key].as_f64().is_some_and(f64::is_finite),
            "{key}: {}",
            g[key]
        );
    }
    assert_eq!(g["scenarios"].as_array().unwrap().len(), 4);

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nduration_ms = 1000\n[arrivals]\nrate_per_s = 0\n\
         [[servers]]\nid = \"a\"\nconcurrency = 0\nservice_ms = 1\n\
         [[events]]\nat_ms = 10\nserver = \"b\"\nslowdown = 2\n",
    )
    .unwrap();
    let (ok, text) = cdrs(&["simulate", "--scenario", bad.to_str().unwrap()]);
    assert!(!ok, "{text}");
    for needle in [
        "arrivals.rate_per_s: 0 is out of range",
        "servers[0].concurrency: must be at least 1",
        "events[0].server: no server \"b\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let (ok, text) = cdrs(&["simulate", "--scenario", "nonesuch"]);
    assert!(
        !ok && text
            .contains("built-in one (heterogeneous, herding, sim-vs-real, slowdown, sticky)"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
