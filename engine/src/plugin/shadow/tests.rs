use super::*;
use crate::config::PluginRuntimeConfig;
use crate::plugin::tests::plugin_dir;
use crate::route::tests::target;
use std::time::{Duration, Instant};

fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        version: 1,
        targets: vec![
            target("a", 10, 0, Health::Healthy),
            target("b", 30, 0, Health::Healthy),
            target("c", 10, 0, Health::Down),
        ],
    })
}

fn records(n: usize, key: impl Fn(usize) -> String) -> Vec<Arc<Record>> {
    (0..n)
        .map(|i| {
            Arc::new(Record {
                topic: "trades".into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: Some(key(i).into_bytes()),
                value: None,
                headers: Vec::new(),
            })
        })
        .collect()
}

fn shadow_of(file: &str, sample_percent: f64) -> (Arc<Shadow>, Arc<Runtime>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .unwrap();
    let cfg = ShadowConfig {
        name: "candidate".into(),
        path: plugin_dir().join(file),
        config: toml::Table::new(),
        sha256: None,
        sample_percent,
    };
    let shadow = Shadow::new(metrics.clone());
    shadow.set(Some(
        Shadow::load(&runtime, &cfg, metrics.clone()).expect("shadow loads"),
    ));
    (shadow, runtime, metrics)
}

/// Waits until the shadow compared `batches` batches.
fn compared(shadow: &Shadow, batches: u64) -> ShadowStatus {
    let started = Instant::now();
    loop {
        let st = shadow.running().unwrap().status();
        if st.batches + st.skipped_batches >= batches {
            return st;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{st:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A shadow that decides as the live router did agrees on every record,
/// and its shares and predicted loads follow its decisions.
#[test]
fn agreement_shares_and_predicted_load() {
    let (shadow, rt, metrics) = shadow_of("p2c_router.wasm", 100.0);
    let view = snapshot();
    let batch = records(400, |i| format!("k{i}"));
    // The live router's decisions, as the shadow would make them: take
    // them from a second copy of the same plugin with the same seed.
    let refs: Vec<&Record> = batch.iter().map(|r| &**r).collect();
    let twin = Shadow::load(&rt, &shadow.running().unwrap().cfg, metrics.clone()).unwrap();
    let live = twin.plugin.route(&view, "trades", 0, &refs);
    shadow.offer(&view, || batch.clone(), &live);
    let st = compared(&shadow, 1);
    assert_eq!((st.records, st.agreement), (400, 1.0), "{st:?}");
    let a = &st.targets["a"];
    let b = &st.targets["b"];
    assert_eq!(a.live_share, a.shadow_share);
    assert!(
        (a.shadow_share + b.shadow_share - 1.0).abs() < 1e-9,
        "{st:?}"
    );
    // Capacities 10 and 30 (c is down): b should get about three quarters,
    // and each a load near 1 per unit of capacity.
    assert!((b.shadow_share - 0.75).abs() < 0.1, "{st:?}");
    for t in [a, b] {
        let load = t.predicted_load.unwrap();
        assert!((load - 1.0).abs() < 0.3, "{st:?}");
    }
    assert!(!st.targets.contains_key("c"), "{st:?}");

    // Live decisions the shadow does not share: all to "a" by the live
    // router, so only the shadow's "a" records agree.
    let all_a: Vec<Route> = (0..400)
        .map(|_| Route::Targets(smallvec::smallvec![0]))
        .collect();
    shadow.offer(&view, || batch.clone(), &all_a);
    let st = compared(&shadow, 2);
    assert_eq!(st.records, 800);
    // Agreed: the first batch, and the second's records the shadow also
    // sent to "a".
    let a_second = st.targets["a"].shadow_share * 800.0 - a.shadow_share * 400.0;
    let expected = (400.0 + a_second) / 800.0;
    assert!((st.agreement - expected).abs() < 1e-9, "{st:?}");
    let m = metrics.render();
    assert!(
        m.contains(r#"cdrs_shadow_records_total{result="agreed",shadow="candidate"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"cdrs_shadow_batches_total{result="compared",shadow="candidate"} 2"#),
        "{m}"
    );
}

/// Sampling takes the configured share of batches, deterministically; a
/// shadow that traps costs only its own comparison.
#[test]
fn sampling_and_a_trapping_shadow() {
    let (shadow, _rt, metrics) = shadow_of("fault_router.wasm", 25.0);
    let view = snapshot();
    let batch = records(8, |i| {
        if i == 3 {
            "panic".into()
        } else {
            format!("k{i}")
        }
    });
    let live = vec![Route::Default; 8];
    for _ in 0..40 {
        shadow.offer(&view, || batch.clone(), &live);
        // One at a time, so none is skipped for a full queue.
        let running = shadow.running().unwrap();
        let started = Instant::now();
        while running.stats.lock().unwrap().batches < shadow.offered.load(Ordering::Relaxed) / 4
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let st = compared(&shadow, 10);
    assert_eq!((st.batches, st.skipped_batches), (10, 0), "{st:?}");
    assert_eq!(st.records, 80, "{st:?}");
    let faults = shadow
        .running()
        .unwrap()
        .plugin
        .meta
        .faults
        .load(Ordering::Relaxed);
    assert!(faults >= 10, "a trap per compared batch: {faults}");
    // The trapped record counts as `default` (the host's fallback), as for
    // a live router; the fault router's other answers are its own.
    assert!(st.targets.contains_key("(default)"), "{st:?}");
    assert!(metrics
        .render()
        .contains("cdrs_plugin_errors_total{kind=\"trap\",plugin=\"candidate\""));
}

/// A reload adds, changes and removes the shadow without loading the live
/// router again; promoting needs a shadow and swaps it in as the router.
#[test]
fn reload_and_promotion() {
    use crate::plugin::slot::PluginManager;
    let dir = plugin_dir();
    let targets = vec![crate::config::TargetConfig::new(
        "a",
        "http://127.0.0.1:1/records",
        10,
    )];
    let mut config = crate::testkit::demo_config("b:9092", "g", "t", "t-dlq", &dir, targets);
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .unwrap();
    let m = PluginManager::load(runtime, &config, metrics).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(m.shadow.running().is_none());
    let live = m.router.current().meta.hash.clone();
    let e = m.promote_shadow(&config.router.name).unwrap_err();
    assert!(e.to_string().contains("no shadow router is running"), "{e}");

    config.router.shadow = Some(Box::new(ShadowConfig {
        name: "candidate".into(),
        path: dir.join("fault_router.wasm"),
        config: toml::Table::new(),
        sha256: None,
        sample_percent: 50.0,
    }));
    let changes = m.apply(&config).unwrap();
    assert_eq!(changes, ["router.shadow: candidate loaded"]);
    assert_eq!(m.router.current().meta.hash, live, "the live router stays");
    let listed: Vec<_> = m.status().into_iter().map(|p| (p.name, p.kind)).collect();
    assert!(
        listed.contains(&("candidate".into(), "shadow")),
        "{listed:?}"
    );

    config.router.shadow = None;
    assert_eq!(m.apply(&config).unwrap(), ["router.shadow: removed"]);
    assert!(m.shadow.running().is_none());

    // A shadow that does not load is refused with the reason; nothing
    // changes.
    let mut broken = config.clone();
    broken.router.shadow = Some(Box::new(ShadowConfig {
        name: "candidate".into(),
        path: dir.join("field_filter.wasm"),
        config: toml::Table::new(),
        sha256: None,
        sample_percent: 50.0,
    }));
    let errors = m.apply(&broken).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(m.shadow.running().is_none());

    config.router.shadow = Some(Box::new(ShadowConfig {
        name: "candidate".into(),
        path: dir.join("fault_router.wasm"),
        config: toml::Table::new(),
        sha256: None,
        sample_percent: 50.0,
    }));
    m.apply(&config).unwrap();
    let version = m.promote_shadow(&config.router.name).unwrap();
    assert_ne!(version, live);
    assert_eq!(m.router.current().meta.hash, version);
    assert!(m.shadow.running().is_none(), "the shadow stops");
    let e = m.promote_shadow("drop-heartbeats").unwrap_err();
    assert!(e.to_string().contains("is a filter"), "{e}");
}
