//! Failures: a target dies mid-run; a plugin traps on some records.

use crate::common::start;
use cdrs::capacity::Health;
use cdrs::config::PluginConfig;
use cdrs::testkit::{produce, produce_events, trade_event, Fate};
use cdrs_e2e::{mock_cluster, plugin_dir, wait_for};
use std::time::{Duration, Instant};

/// Kill the largest server mid-stream: its share moves to the others once
/// it is marked down (failed delivery or report expiry), nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_target_traffic_moves_and_nothing_is_lost() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 4), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-kill", |c| {
        c.capacity.report_expiry_ms = 1_000;
        c.capacity.failure_cooldown_ms = 60_000;
    })
    .await;
    for srv in &s.servers {
        srv.behaviour()
            .latency_ms
            .store(5, std::sync::atomic::Ordering::Relaxed);
    }
    let mut ledger = produce(&brokers, topic, 10_000, 2000).await.unwrap();
    let victim = &s.servers[2];
    assert!(
        wait_for(Duration::from_secs(60), || victim.count() > 500).await,
        "victim got traffic"
    );
    victim.kill();
    let killed_at = Instant::now();
    let before_kill = victim.count();
    // The registry marks it down on the first failed delivery, or when its
    // reports expire (1 s) if nothing was in flight to it.
    let down = wait_for(Duration::from_secs(5), || {
        s.daemon.registry.snapshot().targets[2].health == Health::Down
    })
    .await;
    assert!(down, "killed target marked down");
    eprintln!("killed target marked down after {:?}", killed_at.elapsed());
    let second: Vec<_> = (10_000..20_000).map(|i| trade_event(i, 2000)).collect();
    let more = produce_events(&brokers, topic, second).await.unwrap();
    ledger.fates.extend(more.fates);
    ledger.keys.extend(more.keys);
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_eq!(
        servers[2].count(),
        before_kill,
        "nothing reached the dead server after the kill"
    );
    assert!(
        a.per_target["blotter-1"] + a.per_target["blotter-2"] > 10_000,
        "{a:?}"
    );
}

/// A filter that panics on some records: exactly those are dead-lettered,
/// with the trap as reason; every other record is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_dead_letters_exactly_the_bad_records() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 3), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-trap", |c| {
        c.filters.push(PluginConfig {
            name: "faults".into(),
            path: plugin_dir().join("fault_filter.wasm"),
            config: toml::Table::new(),
            sha256: None,
            shadow: None,
        });
    })
    .await;
    let events: Vec<_> = (0..3000u64)
        .map(|i| {
            let key = format!("client-{}", i % 100);
            if i % 150 == 7 {
                (
                    key,
                    format!(r#"{{"type":"trade","poison":true,"seq":{i}}}"#),
                    Fate::DeadLettered,
                )
            } else {
                (
                    key,
                    format!(r#"{{"type":"trade","seq":{i}}}"#),
                    Fate::Delivered,
                )
            }
        })
        .collect();
    let ledger = produce_events(&brokers, topic, events).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let traps = s.daemon.metrics.plugin_errors_of("faults", "trap");
    let (_, dead, _, _) = s.finish(&ledger).await;
    assert_eq!(dead.len(), 20);
    for (id, reason) in &dead {
        assert!(reason.contains("trapped"), "{id}: {reason}");
    }
    assert!(
        traps >= 20,
        "each poison record trapped the plugin at least once ({traps})"
    );
}

/// Credentials in a target's URL (basic auth, a query token) never show in
/// what CDRS writes about it: the target list's reasons, the snapshot, and
/// the dead letters' `cdrs-dlq-reason`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_credentials_never_show_in_reasons_or_dead_letters() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 2), (dlq, 1)]);
    // Nothing listens there: every request fails with the URL in the error.
    let port = cdrs_e2e::free_port();
    let s = start(&brokers, topic, dlq, "cdrs-e2e-redact", |c| {
        c.targets = vec![cdrs::config::TargetConfig {
            id: "secret-target".into(),
            url: format!("http://svc:s3cret@127.0.0.1:{port}/records?api_key=k3y"),
            capacity: 10,
            weight: cdrs::config::DEFAULT_WEIGHT,
            zone: None,
            labels: Default::default(),
            health_url: Some(format!("http://svc:s3cret@127.0.0.1:{port}/health")),
            report_token: None,
            tls: None,
        }];
        c.delivery.when_no_target = cdrs::config::WhenNoTarget::DeadLetter;
        c.capacity.health_interval_ms = 100;
    })
    .await;
    let events: Vec<_> = (0..50)
        .map(|i| {
            (
                format!("client-{i}"),
                format!(r#"{{"type":"trade","seq":{i}}}"#),
                Fate::DeadLettered,
            )
        })
        .collect();
    let ledger = produce_events(&brokers, topic, events).await.unwrap();
    let leaks = |text: &str| text.contains("s3cret") || text.contains("k3y");
    let mut reasons = Vec::new();
    let done = wait_for(Duration::from_secs(60), || {
        reasons.extend(s.daemon.registry.snapshot().targets[0].reason.clone());
        s.daemon
            .metrics
            .dead_letters
            .with_label_values(&["delivery"])
            .get()
            >= 50
    })
    .await;
    assert!(done, "every record dead-lettered (no target can take it)");
    assert!(
        reasons.iter().any(|r| r.contains("svc:redacted@")),
        "the reason names the target, redacted: {reasons:?}"
    );
    assert!(!reasons.iter().any(|r| leaks(r)), "{reasons:?}");
    // What an operator reads: `GET /v1/targets` (URL, reason and all).
    let shown = reqwest::get(format!("http://{}/v1/targets", s.daemon.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains("secret-target"), "{shown}");
    assert!(
        !leaks(&shown),
        "GET /v1/targets leaks a credential: {shown}"
    );
    let (b, d) = (brokers.clone(), dlq.to_string());
    let dead = tokio::task::spawn_blocking(move || {
        cdrs::testkit::read_dead_letters(&b, &d, 1, 50, Duration::from_secs(20))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        dead.len(),
        ledger.fates.len(),
        "each record dead-lettered once"
    );
    for (id, reason) in &dead {
        assert!(ledger.fates.contains_key(id), "{id} is one of ours");
        assert!(!leaks(reason), "{id}: reason leaks a credential: {reason}");
    }
    s.daemon.stop().await.unwrap();
}
