//! Live capacity: heartbeats over the capacity topic and HTTP, phi accrual
//! failure detection, slow start, dynamic targets, health checks, bad reports.

use crate::common::trades;
use crate::common::{start, Scenario};
use cdrs::capacity::{Feed, Health, TargetView};
use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{account, produce_events};
use cdrs_e2e::{create_topics, mock_cluster, wait_for, Tansu};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn view(d: &Daemon, id: &str) -> Option<TargetView> {
    let s = d.registry.snapshot();
    s.index_of(id).map(|i| s.targets[i].clone())
}

fn rejected(d: &Daemon, reason: &str) -> u64 {
    d.metrics
        .capacity_reports
        .with_label_values(&["rejected", reason])
        .get()
}

/// Servers heartbeat only through the capacity topic on a real broker; two
/// CDRS instances see the same targets; an unknown server with an allowed
/// endpoint joins and gets traffic, one with another endpoint does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_topic_feeds_every_instance_and_admits_allowed_servers() {
    let tansu = Tansu::start();
    create_topics(
        &tansu.brokers,
        &[("trades", 4), ("trades-dlq", 1), ("capacity", 2)],
    )
    .await;
    let tweak = |c: &mut Config| {
        c.capacity.topic = Some("capacity".into());
        c.capacity.allow_endpoints = vec!["http://127.0.0.1:*/records".into()];
        c.capacity.slow_start_ms = 0;
    };
    let a = start(
        &tansu.brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-cap",
        tweak,
    )
    .await;
    let b = start(
        &tansu.brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-cap-b",
        tweak,
    )
    .await;
    let joiner = AppServer::start("blotter-9", 300).unwrap();
    let outsider = AppServer::start("rogue-1", 300).unwrap();
    for s in a.servers.iter().chain(&b.servers).chain([&joiner]) {
        s.publish_to(&tansu.brokers, "capacity", Duration::from_millis(200))
            .unwrap();
    }
    // The outsider claims an endpoint outside the allow-list.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .create()
        .unwrap();
    let rogue = format!(
        r#"{{"server_id":"rogue-1","endpoint":"http://localhost:{}/records","capacity":500}}"#,
        outsider.addr.port()
    );
    let send_rogue = || async {
        producer
            .send(
                FutureRecord::to("capacity").key("rogue-1").payload(&rogue),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    };
    let both = |f: &dyn Fn(&Daemon) -> bool| f(&a.daemon) && f(&b.daemon);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !both(&|d| {
        view(d, "blotter-9")
            .is_some_and(|v| v.health == Health::Healthy && v.feed == Some(Feed::Topic))
    }) {
        assert!(
            Instant::now() < deadline,
            "blotter-9 never joined: {:?}",
            a.daemon.registry.snapshot()
        );
        send_rogue().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // blotter-9 may have joined before the rogue report was sent or read:
    // send it until both instances refused it.
    while !both(&|d| rejected(d, "endpoint_not_allowed") > 0) {
        assert!(
            Instant::now() < deadline,
            "the rogue report was never refused"
        );
        send_rogue().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in [&a.daemon, &b.daemon] {
        let v = view(d, "blotter-9").unwrap();
        assert!(
            v.dynamic && v.url.ends_with(&format!(":{}/records", joiner.addr.port())),
            "{v:?}"
        );
        assert!(view(d, "rogue-1").is_none());
        assert!(rejected(d, "endpoint_not_allowed") > 0);
    }

    // Traffic through instance a reaches the joiner too; nothing lost.
    b.daemon.stop().await.unwrap();
    let ledger = produce_events(&tansu.brokers, "trades", trades(0, 4000))
        .await
        .unwrap();
    let mut servers: Vec<&AppServer> = a.servers.iter().collect();
    servers.push(&joiner);
    let done = wait_for(Duration::from_secs(60), || {
        account(&ledger, &servers).delivered == ledger.fates.len()
    })
    .await;
    let acc = account(&ledger, &servers);
    assert!(done, "{acc:?}");
    assert!(
        acc.per_target["blotter-9"] > 0,
        "the joiner got traffic: {acc:?}"
    );
    assert_eq!(outsider.count(), 0);
    a.daemon.stop().await.unwrap();
}

/// A server that stops heartbeating is marked down by phi accrual well
/// before the hard expiry and gets no new records; when it heartbeats again
/// it comes back with slow start and traffic returns. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_suspected_by_phi_and_returns_with_slow_start() {
    let brokers = mock_cluster(&[("trades", 3), ("trades-dlq", 1)]);
    let s: Scenario = start(&brokers, "trades", "trades-dlq", "cdrs-e2e-phi", |c| {
        c.capacity.report_expiry_ms = 30_000;
        c.capacity.slow_start_ms = 3_000;
        c.router
            .config
            .insert("sticky".into(), toml::Value::Boolean(false));
    })
    .await;
    // Reports every 200 ms for a while, so phi has a history.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = &s.servers[2];
    quiet.behaviour().silent.store(true, Ordering::Relaxed);
    let silenced = Instant::now();
    let down = wait_for(Duration::from_secs(10), || {
        view(&s.daemon, "blotter-3").unwrap().health == Health::Down
    })
    .await;
    assert!(down, "{:?}", view(&s.daemon, "blotter-3"));
    let took = silenced.elapsed();
    let v = view(&s.daemon, "blotter-3").unwrap();
    assert!(v.reason.as_deref().unwrap().starts_with("phi"), "{v:?}");
    eprintln!("silent server marked down by phi after {took:?} (expiry 30 s)");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let had = quiet.count();
    let mut ledger = produce_events(&brokers, "trades", trades(0, 3000))
        .await
        .unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    assert_eq!(quiet.count(), had, "a suspected server gets no new records");

    quiet.behaviour().silent.store(false, Ordering::Relaxed);
    let back = wait_for(Duration::from_secs(10), || {
        view(&s.daemon, "blotter-3").unwrap().health == Health::Healthy
    })
    .await;
    assert!(back);
    let v = view(&s.daemon, "blotter-3").unwrap();
    assert!(
        v.slow_start_percent.is_some_and(|p| p < 100),
        "slow start after recovery: {v:?}"
    );
    let more = produce_events(&brokers, "trades", trades(3000, 3000))
        .await
        .unwrap();
    ledger.fates.extend(more.fates);
    ledger.keys.extend(more.keys);
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    assert!(quiet.count() > had, "traffic returns after recovery");
    s.finish(&ledger).await;
}

/// Active health checks take a target out and bring it back; 10,000 bad
/// reports over HTTP and the topic are rejected and counted by reason while
/// the last good state stays and records keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_bad_reports() {
    let brokers = mock_cluster(&[("trades", 1), ("trades-dlq", 1), ("capacity", 1)]);
    let s = start(&brokers, "trades", "trades-dlq", "cdrs-e2e-health", |c| {
        c.capacity.topic = Some("capacity".into());
        c.capacity.health_interval_ms = 100;
        c.capacity.health_timeout_ms = 200;
    })
    .await;
    // Health URLs arrive by a live target edit (servers got ports first).
    let mut targets = s.daemon.reloader.active().targets;
    for (t, srv) in targets.iter_mut().zip(&s.servers) {
        t.health_url = Some(srv.health_url());
    }
    s.daemon.registry.set_targets(&targets);
    s.servers[0]
        .behaviour()
        .failing
        .store(true, Ordering::Relaxed);
    assert!(
        wait_for(Duration::from_secs(5), || view(&s.daemon, "blotter-1")
            .unwrap()
            .health
            == Health::Down)
        .await
    );
    let v = view(&s.daemon, "blotter-1").unwrap();
    assert!(
        v.reason.as_deref().unwrap().contains("health check"),
        "{v:?}"
    );
    s.servers[0]
        .behaviour()
        .failing
        .store(false, Ordering::Relaxed);
    assert!(
        wait_for(Duration::from_secs(5), || view(&s.daemon, "blotter-1")
            .unwrap()
            .health
            == Health::Healthy)
        .await
    );

    let good = view(&s.daemon, "blotter-2").unwrap().capacity;
    let http = cdrs::tls::plain_client();
    let url = format!(
        "http://{}/v1/targets/blotter-2/capacity",
        s.daemon.admin_addr
    );
    let bad_http = [
        r#"{"capacity": -5}"#,
        r#"{"capacity": "lots"}"#,
        r#"{"capacity": 1, "cpu_permille": 4000}"#,
        r#"{"capacity": 1, "sent_at_ms": 99999999999999}"#,
        r#"{"capacity": 1, "server_id": "blotter-1"}"#,
        r#"{"capacity": 1, "surprise": true}"#,
        r#"[1, 2, 3]"#,
        r#""#,
    ];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let bad_topic = [
        r#"{"capacity": 7}"#,
        r#"{"server_id": "blotter-2"}"#,
        r#"\u0000garbage"#,
        r#"{"server_id":"x y","capacity":1}"#,
    ];
    // 10,000 malformed reports, half over HTTP (16 at a time), half on the
    // topic, while records flow.
    let flow = {
        let brokers = brokers.clone();
        tokio::spawn(async move {
            produce_events(&brokers, "trades", trades(0, 2000))
                .await
                .unwrap()
        })
    };
    use futures::StreamExt;
    let statuses: Vec<u16> = futures::stream::iter(0..5000)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.put(&url)
                    .body(bad_http[i % bad_http.len()])
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| (400..500).contains(s)),
        "every bad report gets a 4xx"
    );
    for chunk in (0..5000).collect::<Vec<usize>>().chunks(500) {
        let sends = chunk.iter().map(|i| {
            let rec = FutureRecord::to("capacity")
                .key("x")
                .payload(bad_topic[i % bad_topic.len()]);
            producer.send(rec, Duration::from_secs(10))
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }
    let ledger = flow.await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let counted = || {
        [
            "invalid",
            "out_of_range",
            "future_timestamp",
            "id_mismatch",
            "missing_server_id",
        ]
        .iter()
        .map(|r| rejected(&s.daemon, r))
        .sum::<u64>()
    };
    assert!(
        wait_for(Duration::from_secs(30), || counted() >= 10_000).await,
        "counted {}",
        counted()
    );
    for reason in [
        "invalid",
        "out_of_range",
        "future_timestamp",
        "id_mismatch",
        "missing_server_id",
    ] {
        assert!(rejected(&s.daemon, reason) > 0, "{reason}");
    }
    assert_eq!(
        view(&s.daemon, "blotter-2").unwrap().capacity,
        good,
        "last good state kept"
    );
    let r = http
        .get(format!("http://{}/healthz", s.daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    s.daemon.stop().await.unwrap();
}
