//! Fleet-wide deployment through the control topic: two CDRS of one
//! consumer group on a real broker, `cdrs plugin deploy` (the binary)
//! while records flow (among them a Python router made by `cdrs plugin
//! new` outside the checkout), a canary, refused deployments, and a
//! restart that comes back on the deployed version.

use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{account, demo_config, produce_events, trade_event, Fate, Ledger};
use cdrs_e2e::{cdrs_bin, create_topics, plugin_dir, wait_for, Tansu};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const CONTROL: &str = "fleet-control";

/// The deployers' signing key and another one.
fn key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn config(brokers: &str, servers: &[AppServer], instance: &str) -> Config {
    let targets = servers.iter().map(AppServer::target_config).collect();
    let mut c = demo_config(
        brokers,
        "cdrs-e2e-fleet",
        "fleet-trades",
        "fleet-dlq",
        &plugin_dir(),
        targets,
    );
    c.control.topic = CONTROL.into();
    c.control.instance_id = Some(instance.into());
    c.control.status_interval_ms = 300;
    use base64::Engine as _;
    let public =
        base64::engine::general_purpose::STANDARD.encode(key(1).verifying_key().as_bytes());
    c.plugins.trusted_keys = vec![public];
    c
}

async fn start(c: Config, servers: &[AppServer]) -> Daemon {
    let d = Daemon::start(c, None).await.expect("cdrs starts");
    for s in servers {
        s.report_to(d.admin_addr, Duration::from_millis(200), None);
    }
    d
}

fn router_version(d: &Daemon) -> String {
    d.plugins.router.current().meta.hash.clone()
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(cdrs_bin()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `GET /v1/fleet` of `d`.
async fn fleet_of(http: &reqwest::Client, d: &Daemon) -> serde_json::Value {
    http.get(format!("http://{}/v1/fleet", d.admin_addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every key's records reached each server in offset order.
fn assert_ordered(servers: &[AppServer]) {
    for s in servers {
        let mut last: BTreeMap<(i32, Vec<u8>), i64> = BTreeMap::new();
        for r in s.received() {
            let k = (r.partition, r.key.clone().unwrap_or_default());
            if let Some(&o) = last.get(&k) {
                assert!(r.offset > o, "{}: {} after {o}", s.id, r.offset);
            }
            last.insert(k, r.offset);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_reaches_every_instance_and_survives_a_restart() {
    let tansu = Tansu::start();
    create_topics(&tansu.brokers, &[("fleet-trades", 6), ("fleet-dlq", 1)]).await;
    let servers: Vec<AppServer> = [("blotter-1", 100), ("blotter-2", 200), ("blotter-3", 400)]
        .iter()
        .map(|(id, cap)| AppServer::start(id, *cap).unwrap())
        .collect();
    // Instance ids: the first in a 34% canary share, the second not.
    let id = |inside: bool| {
        (0..)
            .map(|i| format!("cdrs-{i}"))
            .find(|n| (cdrs::control::canary_bucket(n) < 34) == inside)
            .unwrap()
    };
    let (ia, ib) = (id(true), id(false));
    let a = start(config(&tansu.brokers, &servers, &ia), &servers).await;
    let b = start(config(&tansu.brokers, &servers, &ib), &servers).await;
    for d in [&a, &b] {
        d.wait_ready(Duration::from_secs(60)).await.unwrap();
    }
    let dir = std::env::temp_dir().join(format!("cdrs-e2e-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A Python router project made by `cdrs plugin new` outside the
    // checkout (its SDK copied in), built with its one command while the
    // fleet starts; deployed below.
    let project = dir.join("py-router");
    let building = std::thread::spawn({
        let project = project.clone();
        move || {
            let (ok, out) = cli(&[
                "plugin",
                "new",
                "--lang",
                "python",
                "--world",
                "router",
                project.to_str().unwrap(),
            ]);
            assert!(ok, "{out}");
            let built = Command::new("bash")
                .arg(project.join("build.sh"))
                .output()
                .unwrap();
            assert!(
                built.status.success(),
                "{}",
                String::from_utf8_lossy(&built.stderr)
            );
            project.join("py_router.wasm")
        }
    });
    let file = dir.join("cdrs.toml");
    std::fs::write(
        &file,
        toml::to_string(&config(&tansu.brokers, &servers, "cli")).unwrap(),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let (signing, wrong) = (dir.join("deploy-key.pem"), dir.join("wrong-key.pem"));
    for (path, seed) in [(&signing, 1), (&wrong, 2)] {
        let pem = key(seed).to_pkcs8_pem(Default::default()).unwrap();
        std::fs::write(path, pem.as_bytes()).unwrap();
    }
    let key_arg = signing.to_str().unwrap();
    let router_name = config(&tansu.brokers, &servers, "cli").router.name;

    // Records flow while the router is replaced fleet-wide.
    let producing = tokio::spawn({
        let brokers = tansu.brokers.clone();
        async move {
            let events = (0..30_000).map(|i| trade_event(i, 300)).collect();
            produce_events(&brokers, "fleet-trades", events)
                .await
                .unwrap()
        }
    });
    let new_router = plugin_dir().join("example_router.wasm");
    let want = hex::encode(Sha256::digest(std::fs::read(&new_router).unwrap()));
    assert_ne!(router_version(&a), want);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deployed_at = Instant::now();
    let (ok, out) = cli(&[
        "plugin",
        "deploy",
        "--config",
        file_arg,
        &router_name,
        new_router.to_str().unwrap(),
        "--plugin-config",
        "{}",
        "--label",
        "v2",
        "--key",
        key_arg,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(&want[..12]), "{out}");
    let everywhere = wait_for(Duration::from_secs(30), || {
        router_version(&a) == want && router_version(&b) == want
    })
    .await;
    assert!(everywhere, "not every instance runs {want}");
    eprintln!(
        "fleet: every instance ran the deployment {:?} after the deploy command returned",
        deployed_at.elapsed()
    );

    // v3: the scaffolded Python router, 18 MB, in 36 chunks through the
    // topic; then a rollback: every instance runs v2 again (its artifact
    // is read from the topic again: it was let go after it was applied).
    let original = plugin_dir().join("p2c_router.wasm");
    let python = building.join().expect("the Python project builds");
    let v3 = hex::encode(Sha256::digest(std::fs::read(&python).unwrap()));
    let started = Instant::now();
    let (ok, out) = cli(&[
        "plugin",
        "deploy",
        "--config",
        file_arg,
        &router_name,
        python.to_str().unwrap(),
        "--plugin-config",
        "{}",
        "--label",
        "v3-python",
        "--key",
        key_arg,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("chunk(s)") && !out.contains(" 1 chunk"),
        "{out}"
    );
    let on = |v: &str| router_version(&a) == v && router_version(&b) == v;
    assert!(
        wait_for(Duration::from_secs(120), || on(&v3)).await,
        "the Python router everywhere"
    );
    eprintln!(
        "fleet: an 18 MB Python router ran everywhere {:?} after the deploy started",
        started.elapsed()
    );
    let (ok, out) = cli(&["plugin", "rollback", "--config", file_arg, &router_name]);
    assert!(
        ok && out.contains(&want[..12]) && out.contains("v2"),
        "{out}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || on(&want)).await,
        "rolled back to v2 everywhere"
    );

    let http = cdrs::tls::plain_client();
    // A canary that traps: the fault router on the 34% share (instance
    // a only); records keyed "panic" on every partition make it trap on
    // a, whose slot rolls it back; a marks the deployment failed, b never
    // runs it, promote refuses it, and every record is still delivered.
    let fault = plugin_dir().join("fault_router.wasm");
    let fault_sha = hex::encode(Sha256::digest(std::fs::read(&fault).unwrap()));
    let (ok, out) = cli(&[
        "plugin",
        "deploy",
        "--config",
        file_arg,
        &router_name,
        fault.to_str().unwrap(),
        "--label",
        "canary",
        "--canary",
        "34",
        "--key",
        key_arg,
    ]);
    assert!(ok, "{out}");
    assert!(
        wait_for(Duration::from_secs(30), || router_version(&a) == fault_sha).await,
        "the canary instance runs it"
    );
    let producer = cdrs::testkit::producer(&tansu.brokers).unwrap();
    let mut panics = Ledger::default();
    for p in 0..6 {
        for i in 0..10 {
            let value = format!(r#"{{"type":"trade","seq":"panic-{p}-{i}"}}"#);
            let delivered = producer
                .send(
                    rdkafka::producer::FutureRecord::to("fleet-trades")
                        .partition(p)
                        .key("panic")
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            let id = format!("fleet-trades/{}/{}", delivered.partition, delivered.offset);
            panics.fates.insert(id.clone(), Fate::Delivered);
            panics.keys.insert(id, "panic".into());
        }
    }
    let mut fleet = serde_json::Value::Null;
    for _ in 0..300 {
        fleet = fleet_of(&http, &b).await;
        if fleet["deployments"][router_name.as_str()]["failed"]["instance"] == ia.as_str()
            && router_version(&a) == want
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = &fleet["deployments"][router_name.as_str()]["failed"];
    assert_eq!(failed["instance"], ia.as_str(), "{fleet}");
    assert_eq!(router_version(&a), want, "the canary rolled back to v2");
    let b_router = b.plugins.status().pop().unwrap();
    assert_eq!(b_router.version, want, "the other instance never ran it");
    assert_ne!(
        b_router.previous_version.as_deref(),
        Some(fault_sha.as_str())
    );
    let (ok, out) = cli(&["plugin", "promote", "--config", file_arg, &router_name]);
    assert!(!ok && out.contains("failed on canary instance"), "{out}");

    // A deployment that cannot run here (a filter as the router) is
    // refused by every instance, with the reason; v2 keeps serving.
    let (ok, out) = cli(&[
        "plugin",
        "deploy",
        "--config",
        file_arg,
        &router_name,
        plugin_dir().join("field_filter.wasm").to_str().unwrap(),
        "--label",
        "wrong-world",
        "--key",
        key_arg,
    ]);
    assert!(ok, "{out}");
    let mut fleet = serde_json::Value::Null;
    for _ in 0..300 {
        fleet = fleet_of(&http, &a).await;
        let refused_by = |i: &str| {
            fleet["instances"][i]["plugins"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["refused"]["label"] == "wrong-world"))
        };
        if refused_by(&ia) && refused_by(&ib) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in [&ia, &ib] {
        let router = &fleet["instances"][i.as_str()]["plugins"][1];
        assert_eq!(router["label"], "v2", "{fleet}");
        let why = router["refused"]["reason"].as_str().unwrap_or_default();
        assert!(
            why.contains("router"),
            "{i} refused the filter with a reason: {fleet}"
        );
    }
    assert_eq!(
        fleet["deployments"][router_name.as_str()]["label"],
        "wrong-world",
        "{fleet}"
    );
    assert_eq!(router_version(&a), want);
    assert_eq!(router_version(&b), want);

    // plugins.trusted_keys: unsigned and wrongly signed deployments are
    // refused everywhere, with the reason in `plugin status`.
    let v3_file = original.to_str().unwrap();
    for (label, key, why) in [
        ("unsigned", None, "unsigned"),
        (
            "wrong-key",
            Some(wrong.to_str().unwrap()),
            "does not verify",
        ),
    ] {
        let mut args = vec![
            "plugin",
            "deploy",
            "--config",
            file_arg,
            &router_name,
            v3_file,
            "--label",
            label,
        ];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        let (ok, out) = cli(&args);
        assert!(ok, "{out}");
        let mut status = String::new();
        for _ in 0..100 {
            status = cli(&["plugin", "status", "--config", file_arg]).1;
            if status.matches(why).count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            status.matches(why).count() >= 2,
            "both refuse {label}: {status}"
        );
        assert_eq!(router_version(&a), want);
        assert_eq!(router_version(&b), want);
    }
    let (ok, status) = cli(&["plugin", "status", "--config", file_arg]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&ia) && status.contains(&ib) && status.contains("v2"),
        "{status}"
    );
    assert!(status.contains("refused"), "{status}");

    // `cdrs check` says what a start would run instead of the file's path.
    let (ok, out) = cli(&["check", "--config", file_arg]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("a start would run deployment {}", &want[..12])),
        "{out}"
    );

    // A restart comes back on the deployed version before it reads a record.
    let mut ledger: Ledger = producing.await.unwrap();
    ledger.fates.extend(panics.fates);
    ledger.keys.extend(panics.keys);
    let b_filtered = b.metrics.get("filter", "dropped");
    let b_dead = (b.metrics.get("filter", "dead_lettered")
        + b.metrics.get("router", "dead_lettered")) as u64;
    b.stop().await.unwrap();
    let b2 = Daemon::start(config(&tansu.brokers, &servers, &ib), None)
        .await
        .unwrap();
    assert_eq!(
        router_version(&b2),
        want,
        "the restart runs the deployed version"
    );
    let events = (30_000..40_000).map(|i| trade_event(i, 300)).collect();
    let more = produce_events(&tansu.brokers, "fleet-trades", events)
        .await
        .unwrap();
    ledger.fates.extend(more.fates);
    ledger.keys.extend(more.keys);

    let refs: Vec<&AppServer> = servers.iter().collect();
    let want_delivered = ledger.count(Fate::Delivered);
    let all = wait_for(Duration::from_secs(120), || {
        account(&ledger, &refs).delivered >= want_delivered
    })
    .await;
    assert!(all, "{:?}", account(&ledger, &refs));
    let count = |d: &Daemon, stage: &str, outcome: &str| d.metrics.get(stage, outcome);
    let filtered = count(&a, "filter", "dropped") + b_filtered + count(&b2, "filter", "dropped");
    let dead = count(&a, "filter", "dead_lettered")
        + count(&a, "router", "dead_lettered")
        + b_dead
        + count(&b2, "filter", "dead_lettered")
        + count(&b2, "router", "dead_lettered");
    let acc = account(&ledger, &refs);
    assert_eq!((acc.lost, acc.unexpected), (0, 0), "{acc:?}");
    assert!(filtered >= ledger.count(Fate::Filtered) as u64);
    assert!(dead >= ledger.count(Fate::DeadLettered) as u64);
    assert_ordered(&servers);
    eprintln!(
        "ledger: produced {} delivered {} duplicates {} per target {:?}",
        ledger.fates.len(),
        acc.delivered,
        acc.duplicates,
        acc.per_target
    );
    // The components no deployment names any more (the Python router,
    // the fault router) have tombstones on the compacted topic; v2's not.
    let control = config(&tansu.brokers, &servers, "reader");
    let (reader, ends) = cdrs::control::reader(&control, CONTROL).unwrap();
    let mut gone = std::collections::HashSet::new();
    cdrs::control::catch_up(&reader, &ends, Duration::from_secs(30), |r| {
        if let cdrs::control::ControlRecord::Tombstone(key) = r {
            gone.insert(key);
        }
    })
    .await
    .unwrap();
    for sha in [&v3, &fault_sha] {
        assert!(gone.contains(&format!("artifact/{sha}/0")), "{sha} retired");
    }
    assert!(!gone.iter().any(|k| k.contains(&want)), "v2 kept: {gone:?}");
    a.stop().await.unwrap();
    b2.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
