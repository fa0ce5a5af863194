//! Plugin loading errors: clear messages naming the plugin and the file.

use cdrs::config::{PluginConfig, PluginRuntimeConfig};
use cdrs::metrics::Metrics;
use cdrs::plugin::bindings::types::Verdict;
use cdrs::plugin::filter::FilterPlugin;
use cdrs::plugin::router::RouterPlugin;
use cdrs::plugin::{PluginError, Runtime};
use cdrs::record::Record;
use cdrs_e2e::{plugin_dir, root};
use std::path::PathBuf;
use std::sync::Arc;

fn plugin(name: &str, path: PathBuf, config: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        path,
        config: toml::from_str(config).unwrap(),
        sha256: None,
        shadow: None,
    }
}

fn load_filter(p: &PluginConfig) -> Result<FilterPlugin, PluginError> {
    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    FilterPlugin::load(&rt, p, Arc::new(Metrics::new()))
}

#[test]
fn missing_file_non_wasm_and_wrong_world_are_named() {
    let e = load_filter(&plugin("f", root().join("nope.wasm"), ""))
        .err()
        .unwrap();
    assert!(matches!(e, PluginError::Read { .. }), "{e}");
    assert!(e.to_string().contains("nope.wasm"), "{e}");

    let not_wasm = root().join("tests/fixtures/config/not-wasm.txt");
    let e = load_filter(&plugin("f", not_wasm, "")).err().unwrap();
    assert!(e.to_string().contains("not a WebAssembly file"), "{e}");

    let e = load_filter(&plugin("f", plugin_dir().join("p2c_router.wasm"), ""))
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            PluginError::Link {
                world: "filter",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!(
            "does not fit the filter world of cdrs:plugin@{}: it implements the router world",
            cdrs::plugin::contract::host_version()
        )),
        "{e}"
    );
}

#[test]
fn init_errors_reject_the_plugin_with_the_guest_message() {
    let bad = plugin(
        "f",
        plugin_dir().join("field_filter.wasm"),
        "rules = [{ action = \"drop\", equals = 1 }]",
    );
    let e = load_filter(&bad).err().unwrap();
    assert!(matches!(e, PluginError::Init { .. }), "{e}");
    assert!(e.to_string().contains("rules[0]"), "{e}");

    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    let bad = plugin("r", plugin_dir().join("p2c_router.wasm"), "stiky = true");
    let e = RouterPlugin::load(&rt, &bad, Arc::new(Metrics::new()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("stiky"), "{e}");
}

fn record(offset: i64, value: &str) -> Record {
    Record {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
    }
}

fn fault_filter(config: &str) -> (FilterPlugin, Arc<Metrics>) {
    // 500 ms, not less: on 2 busy cores (the end-to-end tests run beside
    // this one, debug build) a call that traps at once can be preempted
    // past a 100 ms deadline and reported as a missed deadline.
    let limits = PluginRuntimeConfig {
        call_timeout_ms: 500,
        max_memory_bytes: 16 << 20,
        instances: 1,
        ..PluginRuntimeConfig::default()
    };
    let rt = Runtime::new(&limits).unwrap();
    let metrics = Arc::new(Metrics::new());
    let p = plugin("faults", plugin_dir().join("fault_filter.wasm"), config);
    (
        FilterPlugin::load(&rt, &p, metrics.clone()).unwrap(),
        metrics,
    )
}

/// Infinite loop, memory bomb, panic, stack overflow, `unreachable`, an
/// oversized output: each hits its limit,
/// only that record is dead-lettered with the reason, the host stays up and
/// the next batch is served by a fresh instance.
#[test]
fn sandbox_limits_isolate_each_misbehaving_record() {
    let (f, metrics) = fault_filter("");
    let values = [
        "ok",
        "loop",
        "ok",
        "oom",
        "panic",
        "stack",
        "ok",
        "env",
        "unreachable",
        "huge",
        "long-reason",
    ];
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i as i64, v))
        .collect();
    let refs: Vec<&Record> = records.iter().collect();
    let verdicts = f.filter("t", 0, &refs);
    assert_eq!(verdicts.len(), values.len());
    let reason = |i: usize| match &verdicts[i] {
        Verdict::DeadLetter(r) => r.clone(),
        other => panic!("record {i} ({}): {other:?}", values[i]),
    };
    for i in [0, 2, 6] {
        assert!(
            matches!(verdicts[i], Verdict::Keep),
            "{i}: {:?}",
            verdicts[i]
        );
    }
    assert!(
        reason(1).contains("missed its 500 ms call deadline"),
        "{}",
        reason(1)
    );
    assert!(
        reason(3).contains("memory cap of 16777216 bytes"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("trapped"), "{}", reason(4));
    assert!(reason(5).contains("trapped"), "{}", reason(5));
    // Nothing granted: no env vars, no args, no files, no directories, no
    // network, no clock finer than the contract's `now-ms`.
    assert_eq!(
        reason(7),
        "env=0 args=0 file=false dir=false net=false clock=ms"
    );
    assert!(reason(8).contains("trapped"), "{}", reason(8));
    assert!(
        reason(9).contains("over plugins.max_output_bytes = 1048576"),
        "{}",
        reason(9)
    );
    assert!(reason(10).len() <= 1024 && reason(10).ends_with("..."));
    let errors = |kind: &str| metrics.plugin_errors_of("faults", kind);
    assert!(errors("deadline") >= 1 && errors("memory") >= 1 && errors("trap") >= 3);
    assert_eq!(errors("output"), 1);

    let next = [record(10, "ok"), record(11, "ok")];
    let verdicts = f.filter("t", 0, &next.iter().collect::<Vec<_>>());
    assert!(
        verdicts.iter().all(|v| matches!(v, Verdict::Keep)),
        "{verdicts:?}"
    );
}

/// One verdict too few breaks the contract: the batch is dead-lettered
/// with a reason that says so.
#[test]
fn wrong_verdict_count_dead_letters_the_batch() {
    let (f, _) = fault_filter(r#"verdicts = "short""#);
    let records = [record(0, "ok"), record(1, "ok"), record(2, "ok")];
    let verdicts = f.filter("t", 0, &records.iter().collect::<Vec<_>>());
    assert_eq!(verdicts.len(), 3);
    for v in &verdicts {
        assert!(
            matches!(v, Verdict::DeadLetter(r) if r.contains("returned 2 verdicts for 3 records")),
            "{v:?}"
        );
    }
}

/// `stamp_header` makes both example filters tag what they keep.
#[test]
fn filters_stamp_kept_records_when_asked() {
    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    for (file, name) in [
        ("field_filter.wasm", "field-filter"),
        ("fault_filter.wasm", "fault-filter"),
    ] {
        let p = plugin("stamp", plugin_dir().join(file), r#"stamp_header = "x-by""#);
        let f = FilterPlugin::load(&rt, &p, Arc::new(Metrics::new())).unwrap();
        let r = record(0, r#"{"type":"trade"}"#);
        let v = f.filter("t", 0, &[&r]);
        match &v[0] {
            Verdict::Transform(rw) => {
                assert_eq!(rw.value.as_deref(), r.value.as_deref());
                assert_eq!(rw.headers.len(), 1);
                assert_eq!(rw.headers[0].key, "x-by");
                assert_eq!(rw.headers[0].value.as_deref(), Some(name.as_bytes()));
            }
            other => panic!("{file}: {other:?}"),
        }
    }
}

/// What a plugin logs through `host.log` is kept, the last lines per
/// plugin, for `GET /v1/plugins` and the dashboard.
#[test]
fn plugin_log_lines_are_kept_for_operators() {
    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    let p = plugin("noisy", plugin_dir().join("fault_filter.wasm"), "");
    let f = FilterPlugin::load(&rt, &p, Arc::new(Metrics::new())).unwrap();
    let records: Vec<_> = (0..30).map(|o| record(o, "log")).collect();
    let refs: Vec<_> = records.iter().collect();
    let v = f.filter("t", 0, &refs);
    assert!(v.iter().all(|v| matches!(v, Verdict::Keep)), "{v:?}");
    let lines = rt.logs.recent("noisy");
    assert_eq!(lines.len(), cdrs::plugin::LOG_LINES_KEPT);
    assert_eq!(
        lines[0].message, "fault-filter: log at offset 10",
        "oldest kept"
    );
    assert_eq!(
        lines.last().unwrap().message,
        "fault-filter: log at offset 29"
    );
    assert!(lines.iter().all(|l| l.level == "warn" && l.at_ms > 0));
    assert!(rt.logs.recent("quiet").is_empty());
}

/// A restart (new runtime) loads a known plugin from the compiled cache
/// without compiling; a corrupt entry is detected and rebuilt. Entries are
/// written by `persist`, which the loaders call once a plugin is accepted.
#[test]
fn compiled_cache_serves_restarts_and_rejects_corrupt_entries() {
    let dir = std::env::temp_dir().join(format!("cdrs-e2e-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limits = PluginRuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..PluginRuntimeConfig::default()
    };
    let path = plugin_dir().join("p2c_router.wasm");
    let rt = Runtime::new(&limits).unwrap();
    let cold = rt.compile("r", &path, None, Some("router")).unwrap();
    assert!(!cold.cached);
    cold.persist(&rt);
    let warm = Runtime::new(&limits)
        .unwrap()
        .compile("r", &path, None, Some("router"))
        .unwrap();
    assert!(warm.cached, "second runtime loads from the cache");
    assert_eq!(warm.hash, cold.hash);
    eprintln!(
        "p2c_router.wasm: cold compile {:.1} ms, cached load {:.1} ms",
        cold.load_ms, warm.load_ms
    );

    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let rt = Runtime::new(&limits).unwrap();
    let again = rt.compile("r", &path, None, Some("router")).unwrap();
    assert!(!again.cached, "corrupt entry not trusted");
    again.persist(&rt);
    let fixed = Runtime::new(&limits)
        .unwrap()
        .compile("r", &path, None, Some("router"))
        .unwrap();
    assert!(fixed.cached, "entry rebuilt");

    let pinned =
        Runtime::new(&limits)
            .unwrap()
            .compile("r", &path, Some(&"0".repeat(64)), Some("router"));
    let e = pinned.err().unwrap().to_string();
    assert!(e.contains("config pins"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A router that traps, misses its deadline or names a target that does
/// not exist costs no record: those records get `default` and the host's
/// fallback places them; the rest are routed as the plugin said.
#[test]
fn router_failures_fall_back_to_the_host_policy() {
    use cdrs::capacity::{Registry, Snapshot};
    use cdrs::config::{CapacityConfig, TargetConfig};
    use cdrs::plugin::router::Route;
    let limits = PluginRuntimeConfig {
        call_timeout_ms: 100,
        instances: 1,
        ..PluginRuntimeConfig::default()
    };
    let rt = Runtime::new(&limits).unwrap();
    let metrics = Arc::new(Metrics::new());
    let r = RouterPlugin::load(
        &rt,
        &plugin("faulty", plugin_dir().join("fault_router.wasm"), ""),
        metrics.clone(),
    )
    .unwrap();
    let t = |id: &str| TargetConfig::new(id, format!("http://127.0.0.1:1/{id}"), 1);
    let registry = Registry::new(
        CapacityConfig::default(),
        &[t("a"), t("b")],
        metrics.clone(),
    );
    let snapshot: Arc<Snapshot> = registry.snapshot();
    let keys = ["ok", "panic", "ok", "loop", "far", "ok", "many"];
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            key: Some(k.as_bytes().to_vec()),
            ..record(i as i64, "{}")
        })
        .collect();
    let routes = r.route(&snapshot, "t", 0, &records.iter().collect::<Vec<_>>());
    let want = [
        Route::Targets([0].into_iter().collect()),
        Route::Default,
        Route::Targets([0].into_iter().collect()),
        Route::Default,
        Route::Default,
        Route::Targets([0].into_iter().collect()),
        // 100,000 indexes: deduplicated, out-of-range ones ignored.
        Route::Targets([0, 1].into_iter().collect()),
    ];
    assert_eq!(routes, want);
    let errors = |kind: &str| metrics.plugin_errors_of("faulty", kind);
    assert!(errors("trap") >= 1 && errors("deadline") >= 1);
}
