//! The main flow: 20,000 keyed records, three servers with capacities 1:2:4.

use crate::common::{assert_capacity_split, assert_sticky_and_ordered, start};
use cdrs::demo::{produce, Ledger};
use cdrs_e2e::{committed, create_topics, high_watermarks, mock_cluster, Tansu};
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
