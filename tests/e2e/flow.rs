//! The main flow: 20,000 keyed records, three servers with capacities 1:2:4.

use crate::common::{assert_capacity_split, assert_sticky_and_ordered, start, trades};
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{demo_config, produce, produce_events, Ledger};
use cdrs_e2e::{
    committed, create_topics, high_watermarks, mock_cluster, plugin_dir, wait_for, Tansu,
};
use std::time::{Duration, Instant};

const RECORDS: u64 = 20_000;

/// Per partition, the offset after the last produced record. (Tansu 0.6's
/// ListOffsets answers lower high watermarks than the records it acked, so
/// the ledger is the reference.)
pub fn ends(ledger: &Ledger, partitions: i32) -> Vec<i64> {
    let mut end = vec![0; partitions as usize];
    for id in ledger.fates.keys() {
        let mut parts = id.rsplit('/');
        let offset: i64 = parts.next().unwrap().parse().unwrap();
        let partition: usize = parts.next().unwrap().parse().unwrap();
        end[partition] = end[partition].max(offset + 1);
    }
    end
}

/// Real broker process: capacity split, exact filtered/dead-lettered counts,
/// nothing lost, committed offsets at the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_routes_by_capacity_and_loses_nothing() {
    let tansu = Tansu::start();
    let (topic, dlq, partitions) = ("trades", "trades-dlq", 4);
    create_topics(&tansu.brokers, &[(topic, partitions), (dlq, 1)]).await;
    let s = start(&tansu.brokers, topic, dlq, "cdrs-e2e-tansu", |c| {
        c.router
            .config
            .insert("sticky".into(), toml::Value::Boolean(false));
        // Every record where the router says: the split is the router's.
        c.delivery.key_order = cdrs::config::KeyOrder::Relaxed;
    })
    .await;
    let started = Instant::now();
    let ledger = produce(&tansu.brokers, topic, RECORDS, 500).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let (a, _, _, _) = s.finish(&ledger).await;
    eprintln!(
        "tansu: {RECORDS} records in {elapsed:?} ({:.0} records/s)",
        RECORDS as f64 / elapsed.as_secs_f64()
    );
    assert_capacity_split(&a);
    let done = committed(&tansu.brokers, "cdrs-e2e-tansu", topic, partitions);
    let end = ends(&ledger, partitions);
    assert_eq!(
        done, end,
        "committed offsets reach the end of every partition"
    );
}

/// Fast path on the mock cluster, sticky routing: each client id stays on
/// one server, in offset order, and the split still follows capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_sticky_routing_keeps_keys_in_order() {
    let (topic, dlq, partitions) = ("trades", "trades-dlq", 6);
    let brokers = mock_cluster(&[(topic, partitions), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-mock", |_| {}).await;
    let ledger = produce(&brokers, topic, RECORDS, 2000).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_sticky_and_ordered(&ledger, &servers);
    assert_capacity_split(&a);
    let done = committed(&brokers, "cdrs-e2e-mock", topic, partitions);
    let end = ends(&ledger, partitions);
    assert_eq!(end, high_watermarks(&brokers, topic, partitions));
    assert_eq!(
        done, end,
        "committed offsets reach the end of every partition"
    );
}

/// Partitions that move to a second CDRS of the group and back (cooperative
/// rebalances: revoked from the first, later assigned to it again, so a new
/// worker reads a queue an old one read) lose nothing, and the committed
/// offsets reach the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moving_away_and_back_lose_nothing() {
    let (topic, dlq, partitions, group) = ("moves", "moves-dlq", 6, "cdrs-e2e-moves");
    let brokers = mock_cluster(&[(topic, partitions), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, group, |_| {}).await;
    let mut ledger = Ledger::default();
    let wave = |from| {
        let brokers = brokers.clone();
        async move {
            produce_events(&brokers, topic, trades(from, 5_000))
                .await
                .expect("produce")
        }
    };
    let w = wave(0).await;
    ledger.fates.extend(w.fates);
    ledger.keys.extend(w.keys);
    // A second instance joins: the first gives some partitions up.
    let targets = s.servers.iter().map(AppServer::target_config).collect();
    let cfg = demo_config(&brokers, group, topic, dlq, &plugin_dir(), targets);
    let second = Daemon::start(cfg, None).await.expect("second cdrs starts");
    second
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("second instance joins");
    let w = wave(5_000).await;
    ledger.fates.extend(w.fates);
    ledger.keys.extend(w.keys);
    let took = wait_for(Duration::from_secs(60), || {
        second.metrics.get("source", "in") > 0
    })
    .await;
    assert!(took, "the second instance read some partitions");
    let read_by_second = second.metrics.get("source", "in");
    // It leaves: its partitions go back to the first.
    second.stop().await.expect("second stops cleanly");
    let w = wave(10_000).await;
    ledger.fates.extend(w.fates);
    ledger.keys.extend(w.keys);
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, _, _) = s.finish(&ledger).await;
    eprintln!(
        "read by the second instance: {read_by_second}; duplicates {}",
        a.duplicates
    );
    let done = committed(&brokers, group, topic, partitions);
    assert_eq!(
        done,
        ends(&ledger, partitions),
        "committed offsets reach the end of every partition"
    );
}
