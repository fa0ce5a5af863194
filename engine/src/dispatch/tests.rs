//! The dispatcher against real HTTP servers on 127.0.0.1 (the test kit's
//! app server) and a dead-letter producer on librdkafka's mock cluster.
//! Each test accounts for every record it enqueued: delivered where it
//! should be, and the partition's commit watermark past it.

use super::*;
use crate::config::CapacityConfig;
use crate::testkit::appserver::AppServer;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A record as the re-router saw it: offset, targets excluded, attempts.
type Seen = (i64, Vec<Arc<str>>, u32);

/// Where the test's re-router sends records routed again: to a target, or
/// nowhere (they wait) for the first `wait_rounds` calls.
struct TestReroute {
    to: Option<Arc<str>>,
    wait_rounds: AtomicUsize,
    /// Per call, each record.
    seen: Mutex<Vec<Vec<Seen>>>,
}

impl TestReroute {
    fn new(to: Option<&str>, wait_rounds: usize) -> Arc<TestReroute> {
        Arc::new(TestReroute {
            to: to.map(Arc::from),
            wait_rounds: AtomicUsize::new(wait_rounds),
            seen: Mutex::default(),
        })
    }
}

impl Reroute for TestReroute {
    fn route_again(&self, jobs: Vec<Job>) -> BoxFuture<'_, Placed> {
        self.seen.lock().unwrap().push(
            jobs.iter()
                .map(|j| (j.record.offset, j.excluded.clone(), j.attempts))
                .collect(),
        );
        let wait = self
            .wait_rounds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            match &self.to {
                Some(to) if !wait => Placed {
                    groups: vec![(to.clone(), jobs)],
                    waiting: Vec::new(),
                },
                _ => Placed {
                    groups: Vec::new(),
                    waiting: jobs,
                },
            }
        })
    }
}

struct Rig {
    dispatch: Arc<Dispatcher>,
    part: Arc<Partition>,
    /// Every watermark the partition stored.
    stored: Arc<Mutex<Vec<i64>>>,
}

fn rig(servers: &[&AppServer], cfg: DeliveryConfig) -> Rig {
    let metrics = Arc::new(Metrics::new());
    let targets: Vec<_> = servers.iter().map(|s| s.target_config()).collect();
    let registry = Arc::new(Registry::new(
        CapacityConfig::default(),
        &targets,
        metrics.clone(),
    ));
    let brokers = crate::testkit::kafka::leaked_mock(&[("dlq", 1)])
        .expect("mock cluster")
        .bootstrap_servers();
    let dead_letters =
        DeadLetterSink::new(&brokers, "dlq", &BTreeMap::new()).expect("dead-letter producer");
    let dispatch = Arc::new(Dispatcher::new(
        registry,
        Delivery::standalone(&cfg).expect("delivery"),
        dead_letters,
        metrics.clone(),
        brokers,
        BTreeMap::new(),
    ));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let s = stored.clone();
    let part = Partition::new("in".into(), 0, 10_000, &metrics, move |w| {
        s.lock().unwrap().push(w)
    });
    Rig {
        dispatch,
        part,
        stored,
    }
}

/// Retries within milliseconds, so failures resolve quickly.
fn quick() -> DeliveryConfig {
    DeliveryConfig {
        retry_initial_ms: 1,
        retry_max_ms: 5,
        ..DeliveryConfig::default()
    }
}

impl Rig {
    /// Fresh copies of records `0..n` (key `k{offset % keys}`), tracked in
    /// the partition's window, each for the target `to(offset)`.
    async fn jobs(
        &self,
        n: i64,
        keys: i64,
        to: impl Fn(i64) -> Destination,
    ) -> Vec<(Destination, Job)> {
        let offsets: Vec<i64> = (0..n).collect();
        let tracked: Vec<(i64, i64)> = offsets.iter().map(|&o| (o, 0)).collect();
        assert!(self.part.admit(&tracked).await);
        let router = Arc::new(PlacedBy {
            name: "test".into(),
            version: "0".into(),
        });
        offsets
            .into_iter()
            .map(|o| {
                let key = format!("k{}", o % keys).into_bytes();
                let record = Record {
                    topic: "in".into(),
                    partition: 0,
                    offset: o,
                    timestamp_ms: None,
                    key: Some(key.clone()),
                    value: Some(format!("{{\"n\":{o}}}").into_bytes()),
                    headers: Vec::new(),
                };
                let job = Job::new(
                    Arc::new(record),
                    self.part.clone(),
                    key_hash(Some(&key)),
                    router.clone(),
                );
                (to(o), job)
            })
            .collect()
    }

    /// Waits (at most 20 s) until every record finished; true if they did.
    async fn settled(&self) -> bool {
        for _ in 0..400 {
            if self.part.pending() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn watermark(&self) -> Option<i64> {
        self.stored.lock().unwrap().last().copied()
    }
}

fn target(id: &str) -> Destination {
    Destination::Target(id.into())
}

fn offsets(s: &AppServer) -> Vec<i64> {
    s.received().iter().map(|r| r.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_records_pass_the_watermark_in_offset_order() {
    let a = AppServer::start("a", 100).unwrap();
    let rig = rig(&[&a], quick());
    let reroute: Arc<dyn Reroute> = TestReroute::new(None, 0);
    let jobs = rig.jobs(1000, 7, |_| target("a")).await;
    rig.dispatch.enqueue_all(jobs, &reroute).await.unwrap();
    assert!(
        rig.settled().await,
        "{} records pending",
        rig.part.pending()
    );
    assert_eq!(rig.watermark(), Some(1000));
    // Each key's records arrive in offset order (one lane per key).
    let got = a.received();
    assert_eq!(got.len(), 1000, "lost or duplicated");
    for k in 0..7 {
        let key = format!("k{k}").into_bytes();
        let of_key: Vec<i64> = got
            .iter()
            .filter(|r| r.key.as_deref() == Some(&key[..]))
            .map(|r| r.offset)
            .collect();
        assert!(
            of_key.windows(2).all(|w| w[0] < w[1]),
            "key k{k}: {of_key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_retried_then_its_records_are_routed_again() {
    let (a, b) = (
        AppServer::start("a", 100).unwrap(),
        AppServer::start("b", 100).unwrap(),
    );
    a.behaviour().failing.store(true, Ordering::Relaxed);
    // One lane, so one batch: the attempt count is exact.
    let cfg = DeliveryConfig {
        max_attempts: 3,
        max_batch: 100,
        lanes: 1,
        ..quick()
    };
    let rig = rig(&[&a, &b], cfg);
    let reroute = TestReroute::new(Some("b"), 0);
    let dyn_reroute: Arc<dyn Reroute> = reroute.clone();
    let jobs = rig.jobs(50, 50, |_| target("a")).await;
    rig.dispatch.enqueue_all(jobs, &dyn_reroute).await.unwrap();
    assert!(
        rig.settled().await,
        "{} records pending",
        rig.part.pending()
    );
    assert_eq!(rig.watermark(), Some(50));
    assert_eq!(offsets(&b), (0..50).collect::<Vec<_>>());
    assert!(a.received().is_empty());
    // Three attempts at `a` (one lane, one batch), then one re-route of
    // every record with `a` excluded.
    assert_eq!(a.behaviour().refused.load(Ordering::Relaxed), 3);
    let seen = reroute.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].len(), 50);
    for (_, excluded, attempts) in &seen[0] {
        assert_eq!(excluded, &vec![Arc::<str>::from("a")]);
        assert_eq!(*attempts, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_key_order_keeps_a_keys_records_at_its_first_target() {
    let (a, b) = (
        AppServer::start("a", 100).unwrap(),
        AppServer::start("b", 100).unwrap(),
    );
    let rig = rig(&[&a, &b], quick());
    let reroute: Arc<dyn Reroute> = TestReroute::new(None, 0);
    // One key; the router alternates a and b. The key's first copy binds
    // it to `a`, and every later one follows while copies are in flight.
    let jobs = rig
        .jobs(40, 1, |o| target(if o % 2 == 0 { "a" } else { "b" }))
        .await;
    rig.dispatch.enqueue_all(jobs, &reroute).await.unwrap();
    assert!(rig.settled().await);
    assert_eq!(offsets(&a), (0..40).collect::<Vec<_>>());
    assert!(b.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_records_wait_until_a_target_can_take_them() {
    let a = AppServer::start("a", 100).unwrap();
    let rig = rig(
        &[&a],
        DeliveryConfig {
            lanes: 1,
            ..quick()
        },
    );
    // Nowhere to go for the first two rounds, then `a`.
    let reroute = TestReroute::new(Some("a"), 2);
    let dyn_reroute: Arc<dyn Reroute> = reroute.clone();
    let jobs = rig.jobs(20, 3, |_| Destination::Parking).await;
    rig.dispatch.enqueue_all(jobs, &dyn_reroute).await.unwrap();
    assert!(rig.settled().await);
    assert_eq!(rig.watermark(), Some(20));
    assert_eq!(a.count(), 20);
    assert_eq!(reroute.seen.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_stop_leaves_queued_records_unfinished() {
    let a = AppServer::start("a", 100).unwrap();
    a.behaviour().latency_ms.store(500, Ordering::Relaxed);
    let cfg = DeliveryConfig {
        max_batch: 10,
        ..quick()
    };
    let rig = rig(&[&a], cfg);
    let reroute: Arc<dyn Reroute> = TestReroute::new(None, 0);
    let jobs = rig.jobs(100, 1, |_| target("a")).await;
    rig.dispatch.enqueue_all(jobs, &reroute).await.unwrap();
    rig.dispatch.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Whatever the server took before the stop finished; the rest did not,
    // and the watermark never passed an unfinished record.
    let delivered = a.count() as i64;
    assert!(delivered < 100, "{delivered}");
    assert_eq!(rig.part.pending() as i64, 100 - delivered);
    assert!(rig.watermark().unwrap_or(0) <= delivered);
}
