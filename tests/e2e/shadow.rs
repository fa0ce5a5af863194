//! The shadow router (`[router.shadow]`) on a real broker: it decides a
//! sampled share of the live router's batches and its decisions are
//! compared, never used; its traps cost no record; promoting it makes it
//! the live router through the normal swap.

use crate::common::{assert_capacity_split, start, trades};
use cdrs::config::ShadowConfig;
use cdrs::testkit::{account, produce_events, Fate, Ledger};
use cdrs_e2e::{create_topics, plugin_dir, Tansu};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

async fn plugins(admin: SocketAddr) -> Vec<Value> {
    cdrs::tls::plain_client()
        .get(format!("http://{admin}/v1/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn shadow_entry(admin: SocketAddr) -> Option<Value> {
    plugins(admin)
        .await
        .into_iter()
        .find(|p| p["kind"] == "shadow")
}

fn merge(into: &mut Ledger, more: Ledger) {
    into.fates.extend(more.fates);
    into.keys.extend(more.keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_router_is_compared_never_used_and_can_be_promoted() {
    let tansu = Tansu::start();
    create_topics(&tansu.brokers, &[("trades", 4), ("trades-dlq", 1)]).await;
    let dir = plugin_dir();
    // The candidate sends everything to the first target, and traps on
    // records keyed "panic": a bad policy the live traffic must not feel.
    let shadow = ShadowConfig {
        name: "candidate".into(),
        path: dir.join("fault_router.wasm"),
        config: toml::Table::new(),
        sha256: None,
        sample_percent: 100.0,
    };
    let s = start(
        &tansu.brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-shadow",
        |c| c.router.shadow = Some(Box::new(shadow)),
    )
    .await;
    let admin = s.daemon.admin_addr;

    // 1. Live traffic: the live router's split stands; the shadow's
    //    disagreement is measured.
    let mut ledger = produce_events(&s.brokers, "trades", trades(0, 20_000))
        .await
        .unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    // The live router's split, whatever the shadow would have done.
    assert_capacity_split(&account(&ledger, &s.refs()));
    let entry = shadow_entry(admin).await.expect("the shadow is listed");
    assert_eq!(entry["name"], "candidate", "{entry}");
    let cmp = &entry["shadow"];
    let records = cmp["records"].as_u64().unwrap();
    assert!(records > 0, "{entry}");
    // Compared and skipped batches add up to what was sampled (all).
    assert!(cmp["batches"].as_u64().unwrap() > 0, "{entry}");
    let agreement = cmp["agreement"].as_f64().unwrap();
    let first = &cmp["targets"]["blotter-1"];
    // All to blotter-1 against a live share of about 1/7.
    assert!(first["shadow_share"].as_f64().unwrap() > 0.99, "{entry}");
    let live_share = first["live_share"].as_f64().unwrap();
    assert!((live_share - 1.0 / 7.0).abs() < 0.07, "{entry}");
    assert!((agreement - live_share).abs() < 1e-6, "{entry}");
    assert!(first["predicted_load"].as_f64().unwrap() > 5.0, "{entry}");
    eprintln!(
        "shadow: {records} records compared, {} batches skipped, agreement {agreement:.3}",
        cmp["skipped_batches"]
    );
    // The dashboard's plugin table shows the comparison.
    let shots = crate::dashboard::shots_dir("shadow");
    let url = format!("http://{admin}/ui");
    let (mut driver, mut out, _stdin) =
        crate::dashboard::ui_driver("shadow.cjs", &[&url, "candidate", shots.to_str().unwrap()]);
    let shown = crate::dashboard::line(&mut out, Duration::from_secs(60)).await;
    eprintln!("dashboard: {shown}");
    assert!(
        shown.starts_with("SHADOW shadow: agrees on") && shown.contains("blotter-1: 100.0%"),
        "{shown}"
    );
    assert!(driver.wait().await.unwrap().success());

    // 2. Records the shadow traps on: delivered all the same.
    let panics: Vec<(String, String, Fate)> = (0..50)
        .map(|i| {
            (
                "panic".to_string(),
                format!(r#"{{"type":"trade","seq":{}}}"#, 100_000 + i),
                Fate::Delivered,
            )
        })
        .collect();
    merge(
        &mut ledger,
        produce_events(&s.brokers, "trades", panics).await.unwrap(),
    );
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    // The first batch offered to an idle shadow is always compared.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = shadow_entry(admin).await.expect("the shadow is listed");
        if e["traps"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no trap counted: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = s.daemon.metrics.render();
    for series in [
        r#"cdrs_shadow_records_total{result="differed",shadow="candidate"}"#,
        r#"cdrs_shadow_decisions_total{shadow="candidate",target="blotter-1"}"#,
        r#"cdrs_plugin_errors_total{kind="trap",plugin="candidate""#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }

    // 3. Promote it: the live router becomes the candidate, through the
    //    normal swap, and the shadow stops.
    let r = cdrs::tls::plain_client()
        .post(format!("http://{admin}/v1/plugins/p2c/promote-shadow"))
        .send()
        .await
        .unwrap();
    let (code, body) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(code, 200, "{body}");
    assert!(shadow_entry(admin).await.is_none());
    let router = plugins(admin)
        .await
        .into_iter()
        .find(|p| p["kind"] == "router")
        .unwrap();
    assert_eq!(router["source"], "shadow candidate", "{router}");
    let again = cdrs::tls::plain_client()
        .post(format!("http://{admin}/v1/plugins/p2c/promote-shadow"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 422);
    let after = produce_events(&s.brokers, "trades", trades(200_000, 2_000))
        .await
        .unwrap();
    let after_ids: Vec<String> = after.fates.keys().cloned().collect();
    merge(&mut ledger, after);
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let on_first: std::collections::HashSet<String> =
        s.servers[0].received().into_iter().map(|r| r.id).collect();
    let moved = after_ids.iter().filter(|id| on_first.contains(*id)).count();
    assert_eq!(moved, after_ids.len(), "the promoted router decides");

    let (a, _, _, _) = s.finish(&ledger).await;
    assert_eq!(a.lost, 0, "{a:?}");
}

/// `GET /v1/plugins/{router}/capture` records the live router's next
/// batches while records flow; `cdrs plugin test --replay` runs a router on
/// them (the live one decides exactly as captured), and `cdrs simulate
/// --trace` takes their arrivals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replays_in_plugin_test_and_simulate() {
    let tansu = Tansu::start();
    create_topics(&tansu.brokers, &[("trades", 4), ("trades-dlq", 1)]).await;
    let s = start(
        &tansu.brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-capture",
        |_| {},
    )
    .await;
    let admin = s.daemon.admin_addr;
    let http = cdrs::tls::plain_client();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{admin}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Bad requests are refused with the reason.
    for (path, code, says) in [
        (
            "/v1/plugins/p2c/capture?records=0",
            400,
            "records 0 is out of range",
        ),
        ("/v1/plugins/p2c/capture?nope=1", 400, "unknown field"),
        ("/v1/plugins/drop-heartbeats/capture", 404, "is a filter"),
        ("/v1/plugins/nope/capture", 404, "no plugin named"),
    ] {
        let (c, body) = get(path.to_string()).await;
        assert_eq!((c, body.contains(says)), (code, true), "{path}: {body}");
    }
    let capture = tokio::spawn(get("/v1/plugins/p2c/capture?records=3000".to_string()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (busy, body) = get("/v1/plugins/p2c/capture?records=1&timeout_ms=100".to_string()).await;
    assert_eq!(busy, 409, "{body}");
    let ledger = produce_events(&s.brokers, "trades", trades(0, 6_000))
        .await
        .unwrap();
    let (code, body) = capture.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let batches: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: usize = batches
        .iter()
        .map(|b| b["records"].as_array().unwrap().len())
        .sum();
    assert_eq!(records, 3_000, "exactly the records asked for");
    for b in &batches {
        assert_eq!(b["router"], "p2c");
        assert_eq!(b["targets"].as_array().unwrap().len(), 3, "{b}");
        let (rs, ds) = (
            b["records"].as_array().unwrap(),
            b["decisions"].as_array().unwrap(),
        );
        assert_eq!(rs.len(), ds.len());
        for (r, d) in rs.iter().zip(ds) {
            assert!(r["key"].as_str().unwrap().starts_with("client-"), "{r}");
            assert!(r["timestamp_ms"].as_i64().is_some(), "{r}");
            assert!(
                r.get("value").is_none(),
                "no value unless the router asks: {r}"
            );
            assert_eq!(
                (&d["offset"], &d["decision"]),
                (&r["offset"], &"route".into())
            );
        }
    }
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, _, _) = s.finish(&ledger).await;
    assert_eq!(a.lost, 0, "{a:?}");

    let dir = std::env::temp_dir().join(format!("cdrs-e2e-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("capture.jsonl");
    std::fs::write(&file, &body).unwrap();
    let plugins = plugin_dir();
    // The live router, replayed on what it was given, decides the same.
    let replay = |router: &str, config: &str| {
        std::process::Command::new(cdrs_e2e::cdrs_bin())
            .args(["plugin", "test"])
            .arg(plugins.join(router))
            .arg("--replay")
            .arg(&file)
            .args(["--config", config])
            .output()
            .unwrap()
    };
    let same = replay("p2c_router.wasm", r#"{"sticky": true}"#);
    let err = String::from_utf8_lossy(&same.stderr);
    assert!(same.status.success(), "{err}");
    assert!(err.contains("3000 record(s)"), "{err}");
    assert!(
        err.contains("the same decision as the captured router for 100.0%"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&same.stdout).lines().count(), 3_000);
    // Another policy: its shares beside the captured ones.
    let other = replay("fault_router.wasm", "{}");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(other.status.success(), "{err}");
    assert!(
        err.contains("| blotter-1 |") && err.contains("| 100.0% |"),
        "{err}"
    );
    eprintln!("{err}");

    // The trace drives the simulator's arrivals.
    let out = dir.join("sim.json");
    let sim = std::process::Command::new(cdrs_e2e::cdrs_bin())
        .args([
            "simulate",
            "--scenario",
            "heterogeneous",
            "--duration-ms",
            "5000",
        ])
        .arg("--trace")
        .arg(&file)
        .arg("--router")
        .arg(format!("p2c={}", plugins.join("p2c_router.wasm").display()))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert!(stdout.contains("3000 records, 300 keys"), "{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let p2c = &report["scenarios"][0]["outcomes"][0];
    assert_eq!(p2c["policy"], "p2c");
    assert!(p2c["arrived"].as_u64().unwrap() > 0, "{p2c}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cdrs simulate --real` runs the scenario's arrivals through Tansu, a
/// CDRS daemon and app servers with the scenario's service times, and
/// reports the real sojourn beside the simulated one (every record
/// delivered, or the run fails). The figure itself is a benchmark
/// (docs/routing.md); a short run here checks the harness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_real_runs_the_scenario_on_the_pipeline() {
    let dir = std::env::temp_dir().join(format!("cdrs-e2e-sim-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("real.json");
    let tansu = cdrs::testkit::tansu::TansuProcess::binary(&cdrs_e2e::root());
    let plugins = plugin_dir();
    let run = tokio::process::Command::new(cdrs_e2e::cdrs_bin())
        .args(["simulate", "--scenario", "sim-vs-real", "--real"])
        .args(["--duration-ms", "15000"])
        .arg("--router")
        .arg(format!("p2c={}", plugins.join("p2c_router.wasm").display()))
        .arg("--out")
        .arg(&out)
        .env("CDRS_TANSU", tansu)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let v = &report["sim_vs_real"];
    let records = v["records"].as_u64().unwrap();
    let per_server: u64 = v["per_server_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert!(records > 400, "{v}");
    assert_eq!(per_server, records, "every record delivered once: {v}");
    for k in ["sim_p50_ms", "sim_p99_ms", "real_p50_ms", "real_p99_ms"] {
        assert!(v[k].as_f64().unwrap() > 50.0, "{k}: {v}");
    }
    assert_eq!(report["sim_vs_real_p99_error"], v["p99_error"]);
    let _ = std::fs::remove_dir_all(&dir);
}
