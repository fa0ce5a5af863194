//! Hot swap while records flow: uploads, file changes, broken versions,
//! automatic rollback. Nothing lost, each record handled by one version,
//! per-key order kept.

use crate::common::trades;
use crate::common::{assert_sticky_and_ordered, start, Scenario};
use cdrs::config::{Config, PluginConfig};
use cdrs::plugin::slot::PluginStatus;
use cdrs::testkit::{account, produce_events};
use cdrs_e2e::{mock_cluster, plugin_dir, wait_for};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn stamp_slot(path: &Path) -> PluginConfig {
    let mut config = toml::Table::new();
    config.insert(
        "stamp_header".into(),
        toml::Value::String("x-filtered-by".into()),
    );
    PluginConfig {
        name: "stamp".into(),
        path: path.to_path_buf(),
        config,
        sha256: None,
        shadow: None,
    }
}

async fn status(s: &Scenario, name: &str) -> PluginStatus {
    let all = s.daemon.plugins.status();
    all.into_iter()
        .find(|p| p.name == name)
        .expect("plugin listed")
}

async fn put_plugin(admin: std::net::SocketAddr, name: &str, body: Vec<u8>) -> (u16, String) {
    let r = cdrs::tls::plain_client()
        .put(format!("http://{admin}/v1/plugins/{name}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Which stamps each delivered record carries.
fn stamps(s: &[cdrs::testkit::appserver::AppServer]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for srv in s {
        for r in srv.received() {
            let v: Vec<String> = r
                .headers
                .iter()
                .filter(|(k, _)| k == "x-filtered-by")
                .map(|(_, v)| {
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
                })
                .collect();
            out.entry(r.id).or_default().extend(v);
        }
    }
    out
}

async fn mock(group: &str, stamp: &Path) -> Scenario {
    mock_with(group, stamp, |_| {}).await
}

async fn mock_with(group: &str, stamp: &Path, tweak: impl FnOnce(&mut Config)) -> Scenario {
    let brokers = mock_cluster(&[("trades", 4), ("trades-dlq", 1)]);
    let slot = stamp_slot(stamp);
    start(&brokers, "trades", "trades-dlq", group, move |c| {
        c.filters.push(slot);
        tweak(c);
    })
    .await
}

/// The same component with a custom section appended: a different version
/// (sha256) with identical behaviour.
fn variant(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = tag.as_bytes();
    let payload_len = 1 + name.len(); // name length (< 128, one LEB128 byte) + name
    assert!(name.len() < 128 && payload_len < 128);
    bytes.extend([0u8, payload_len as u8, name.len() as u8]);
    bytes.extend(name);
    bytes
}

/// 100,000 records at full speed while the filter and the router are each
/// swapped 50 times between two versions through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_lose_nothing() {
    let dir = plugin_dir();
    // Keys must keep their server through every swap, so no server may be
    // judged down meanwhile. With reports every 200 ms, phi 8 is reached
    // after ~0.8 s of silence; in one CI run of the whole suite (both cores
    // oversubscribed, swap p99 1056 ms) ~8% of the records, from two of the
    // three servers, went to the third: most likely both judged down for a
    // moment, then ramping back (slow start); not reproduced alone or
    // beside busy loops, so inferred. The failure detector and the call
    // deadline have their own tests (capacity, chaos, plugins); here a
    // server is suspected after ~2.3 s (phi 100), comes back at full
    // weight, and a call may take 5 s.
    let s = mock_with("cdrs-e2e-swap", &dir.join("field_filter.wasm"), |c| {
        c.capacity.phi_threshold = 100.0;
        c.capacity.slow_start_ms = 0;
        c.plugins.call_timeout_ms = 5_000;
    })
    .await;
    let versions = [
        std::fs::read(dir.join("fault_filter.wasm")).unwrap(),
        std::fs::read(dir.join("field_filter.wasm")).unwrap(),
    ];
    let router = std::fs::read(dir.join("p2c_router.wasm")).unwrap();
    let routers = [variant(router.clone(), "cdrs-test-variant"), router];
    let brokers = s.brokers.clone();
    let producer = tokio::spawn(async move {
        produce_events(&brokers, "trades", trades(0, 100_000))
            .await
            .unwrap()
    });
    let mut swap_ms = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let (code, body) = put_plugin(s.daemon.admin_addr, "stamp", versions[i % 2].clone()).await;
        swap_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 200, "swap {i}: {body}");
        let started = Instant::now();
        let (code, body) = put_plugin(s.daemon.admin_addr, "p2c", routers[i % 2].clone()).await;
        swap_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(code, 200, "router swap {i}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger = producer.await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    swap_ms.sort_by(f64::total_cmp);
    eprintln!(
        "swap request, 100 swaps (compile from cache + init + swap): p50 {:.1} ms, p99 {:.1} ms",
        swap_ms[swap_ms.len() / 2],
        swap_ms[swap_ms.len() * 99 / 100]
    );
    for name in ["stamp", "p2c"] {
        let st = status(&s, name).await;
        assert_eq!(st.source, "upload");
        eprintln!(
            "{name}: {} calls, p50 {} µs, p99 {} µs per batch call",
            st.calls, st.call_p50_us, st.call_p99_us
        );
    }
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_eq!(a.lost, 0);
    let stamps = stamps(&servers);
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for (id, st) in &stamps {
        let mut unique = st.clone();
        unique.dedup();
        assert_eq!(unique.len(), 1, "record {id} handled by {st:?}");
        *by_version.entry(unique[0].clone()).or_default() += 1;
    }
    eprintln!("records per filter version: {by_version:?}");
    assert_eq!(
        by_version.len(),
        2,
        "both versions handled records: {by_version:?}"
    );
    assert_sticky_and_ordered(&ledger, &servers);
}

/// Broken uploads are refused and the running version keeps serving; a
/// version that traps too often after its swap is rolled back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_and_trap_storms_roll_back() {
    let dir = plugin_dir();
    let s = mock("cdrs-e2e-rollback", &dir.join("field_filter.wasm")).await;
    let good = status(&s, "stamp").await.version;

    let (code, body) = put_plugin(s.daemon.admin_addr, "stamp", b"garbage".to_vec()).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("not a WebAssembly file") && body.contains("keeps serving"),
        "{body}"
    );
    let (code, body) = put_plugin(
        s.daemon.admin_addr,
        "stamp",
        std::fs::read(dir.join("p2c_router.wasm")).unwrap(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("filter world"), "{body}");
    let (code, _) = put_plugin(s.daemon.admin_addr, "nope", b"x".to_vec()).await;
    assert_eq!(code, 404);
    let st = status(&s, "stamp").await;
    assert_eq!(st.version, good, "old version still running");
    assert!(st.last_error.unwrap().contains("filter world"));

    // Swap in fault-filter, which traps on poison records; the default policy
    // rolls back after 5 faults.
    let (code, body) = put_plugin(
        s.daemon.admin_addr,
        "stamp",
        std::fs::read(dir.join("fault_filter.wasm")).unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut events = trades(0, 2000);
    for (i, e) in events.iter_mut().enumerate() {
        if i % 100 == 50 {
            e.1 = format!(r#"{{"type":"trade","poison":true,"seq":{i}}}"#);
        }
    }
    let ledger = produce_events(&s.brokers, "trades", events).await.unwrap();
    let rolled = wait_for(Duration::from_secs(60), || {
        s.daemon
            .plugins
            .status()
            .iter()
            .any(|p| p.name == "stamp" && p.source == "rollback")
    })
    .await;
    assert!(rolled, "rolled back: {:?}", s.daemon.plugins.status());
    let st = status(&s, "stamp").await;
    assert_eq!(st.version, good);
    assert!(st.last_event.unwrap().contains("record faults"));

    // Every record is delivered or (if the bad version trapped on it) dead-lettered.
    let dead_count = || s.daemon.metrics.get("filter", "dead_lettered") as usize;
    let done = wait_for(Duration::from_secs(60), || {
        account(&ledger, &s.refs()).delivered + dead_count() == ledger.fates.len()
    })
    .await;
    let a = account(&ledger, &s.refs());
    assert!(
        done,
        "delivered {} + dead-lettered {} of {}",
        a.delivered,
        dead_count(),
        ledger.fates.len()
    );
    assert!(
        (1..=20).contains(&dead_count()),
        "only poison records, and not all of them (a trap counts once per bisection step): {}",
        dead_count()
    );
    s.daemon.stop().await.unwrap();
}

/// Changing the plugin file on disk swaps the new version in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_file_change_is_picked_up() {
    let dir = plugin_dir();
    let tmp = std::env::temp_dir().join(format!("cdrs-e2e-watch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("stamp.wasm");
    std::fs::copy(dir.join("field_filter.wasm"), &file).unwrap();
    let s = mock("cdrs-e2e-watch", &file).await;
    let before = status(&s, "stamp").await.version;
    std::fs::copy(dir.join("fault_filter.wasm"), &file).unwrap();
    let changed = wait_for(Duration::from_secs(20), || {
        s.daemon
            .plugins
            .status()
            .iter()
            .any(|p| p.name == "stamp" && p.version != before && p.source == "file")
    })
    .await;
    assert!(changed, "{:?}", s.daemon.plugins.status());
    let ledger = produce_events(&s.brokers, "trades", trades(0, 1000))
        .await
        .unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let (_, _, servers, _) = s.finish(&ledger).await;
    assert!(stamps(&servers)
        .values()
        .all(|v| v == &["fault-filter".to_string()]));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn batch(n: usize) -> Vec<cdrs::record::Record> {
    (0..n)
        .map(|i| cdrs::record::Record {
            topic: "t".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
            key: Some(format!("client-{i}").into_bytes()),
            value: Some(
                format!(r#"{{"type":"trade","seq":{i},"symbol":"AAPL","qty":100}}"#).into_bytes(),
            ),
            headers: vec![],
        })
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// Figures, not a timed assertion: filter call latency on the data path
/// (batch 256) with no swaps, then while another thread loads and swaps in
/// a new version 50 times; and the time the swap itself holds the slot.
#[test]
fn swap_stall_figures() {
    use cdrs::config::PluginRuntimeConfig;
    use cdrs::metrics::Metrics;
    use cdrs::plugin::filter::FilterPlugin;
    use cdrs::plugin::slot::{RollbackPolicy, Slot};
    use cdrs::plugin::Runtime;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let rt = Runtime::new(&PluginRuntimeConfig::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let dir = plugin_dir();
    let configs = [
        stamp_slot(&dir.join("field_filter.wasm")),
        stamp_slot(&dir.join("fault_filter.wasm")),
    ];
    let load = |i: usize| FilterPlugin::load(&rt, &configs[i % 2], metrics.clone()).unwrap();
    let policy = RollbackPolicy {
        faults: 1000,
        window: Duration::from_secs(1),
    };
    let slot = Arc::new(Slot::new(load(0), "config", policy, metrics.events.clone()));
    let records = batch(256);
    let refs: Vec<&cdrs::record::Record> = records.iter().collect();
    let call = |slot: &Slot<FilterPlugin>| {
        let started = Instant::now();
        let f = slot.current();
        let v = f.filter("t", 0, &refs);
        assert_eq!(v.len(), 256);
        started.elapsed().as_secs_f64() * 1e6
    };
    let mut baseline: Vec<f64> = (0..1500).map(|_| call(&slot)).collect();
    let swapping = Arc::new(AtomicBool::new(true));
    let swapper = {
        let (slot, swapping) = (slot.clone(), swapping.clone());
        let loads: Vec<FilterPlugin> = (1..=50).map(load).collect();
        std::thread::spawn(move || {
            let mut hold_us = Vec::new();
            for p in loads {
                std::thread::sleep(Duration::from_millis(10));
                let started = Instant::now();
                slot.swap(p, "upload");
                hold_us.push(started.elapsed().as_secs_f64() * 1e6);
            }
            swapping.store(false, Ordering::Relaxed);
            hold_us
        })
    };
    let mut during = Vec::new();
    while swapping.load(Ordering::Relaxed) {
        during.push(call(&slot));
    }
    let mut hold = swapper.join().unwrap();
    for v in [&mut baseline, &mut during, &mut hold] {
        v.sort_by(f64::total_cmp);
    }
    eprintln!(
        "filter call, batch 256: no swaps p50 {:.0} µs p99 {:.0} µs; during 50 swaps p50 {:.0} µs p99 {:.0} µs ({} calls); \
         swap() itself p50 {:.1} µs p99 {:.1} µs",
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.len(),
        percentile(&hold, 0.5),
        percentile(&hold, 0.99),
    );
    assert!(!during.is_empty());
}

/// The promise to plugin teams, end to end: a router written in Python and
/// then one in JavaScript are uploaded into a running pipeline (the SDK
/// examples, built by their one-command builds), between waves of records.
/// Each is compiled off the hot path, swapped in, and serves the next wave;
/// nothing is lost, and each server receives each key's records in offset
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_routers_hot_deploy_between_waves() {
    let dir = plugin_dir();
    let brokers = mock_cluster(&[("trades", 4), ("trades-dlq", 1)]);
    let s = start(
        &brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-sdk-swap",
        |_| {},
    )
    .await;
    let mut ledger = produce_events(&s.brokers, "trades", trades(0, 5_000))
        .await
        .unwrap();
    let mut served = Vec::new();
    for (wave, lang) in ["python", "js"].into_iter().enumerate() {
        let wasm =
            std::fs::read(dir.join(format!("example_router_{lang}.wasm"))).unwrap_or_else(|e| {
                panic!("example_router_{lang}.wasm: {e}; build it with `scripts/dev.sh plugins`")
            });
        let (code, body) = put_plugin(s.daemon.admin_addr, "p2c", wasm).await;
        assert_eq!(code, 200, "{lang} router upload: {body}");
        let version = status(&s, "p2c").await.version;
        let more = produce_events(
            &s.brokers,
            "trades",
            trades(5_000 * (wave as u64 + 1), 5_000),
        )
        .await
        .unwrap();
        ledger.fates.extend(more.fates);
        ledger.keys.extend(more.keys);
        s.wait_accounted(&ledger, Duration::from_secs(120)).await;
        let st = status(&s, "p2c").await;
        assert_eq!(st.version, version, "the {lang} router is the one running");
        assert!(st.calls > 0 && st.faults == 0, "{lang} router: {st:?}");
        served.push((lang, st.calls, st.call_p50_us, st.load_ms));
    }
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_eq!((a.lost, a.duplicates), (0, 0));
    assert_eq!(a.delivered, 15_000);
    // Per-key order on each server (keys may move between servers at a swap:
    // the new router hashes differently).
    for srv in &servers {
        let mut last: BTreeMap<(i32, Vec<u8>), i64> = BTreeMap::new();
        for r in srv.received() {
            let k = (r.partition, r.key.clone().unwrap_or_default());
            if let Some(&o) = last.get(&k) {
                assert!(
                    r.offset > o,
                    "{}: key {:?} at {} after {o}",
                    srv.id,
                    k.1,
                    r.offset
                );
            }
            last.insert(k, r.offset);
        }
    }
    eprintln!(
        "sdk hot deploy (lang, calls, p50 µs per batch call, load ms): {served:?}; per target {:?}",
        a.per_target
    );
}
