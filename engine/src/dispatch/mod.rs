//! Dispatcher: per-target queues, delivery with retries, circuit breakers,
//! re-routing, and the completion of each record in its partition.
//!
//! ```text
//!  pipeline ──► target queue (bounded) ──► lane 0..L: takes a batch and resolves it
//!   (fresh records;                          │ ok: records finish
//!    no target: the                          │ retryable failure: backoff with full jitter,
//!    parking queue)                          │   Retry-After honoured, ≤ max_attempts, ≤ deadline
//!                                            │ then, or 4xx / unreachable / breaker open / down:
//!                                            ▼
//!                          route again (router plugin, failed targets marked down),
//!                          delivered by the same lane to the new targets; no target:
//!                          wait (backoff) or dead-letter, per `delivery.when_no_target`
//! ```
//!
//! Guarantees:
//! * **at-least-once**: a record finishes only when delivered (2xx / broker
//!   ack), dropped by a plugin or acknowledged by the dead-letter topic; only
//!   then can its partition's commit watermark ([`OffsetTracker`](crate::offsets::OffsetTracker)) pass it.
//!   On a hard stop, queued records are simply not finished.
//! * **per-key order at a target**: while a key has copies in flight they
//!   all sit in one lane (new records of the key follow them there, whatever
//!   the router says), and a lane takes its next batch only when the current
//!   one is resolved. Within a batch, a key's copies form one group that is
//!   sent, retried and re-routed together. So a later record of a key never
//!   overtakes an earlier one being retried or re-routed. Records routed to
//!   several targets (fan-out) are not held to this.
//! * **bounded memory**: fresh records wait for room in the target's queue
//!   (`delivery.queue_capacity`) and in their partition's in-flight window
//!   (`pipeline.max_inflight_records`); a partition whose worker waits is
//!   not read, and librdkafka stops fetching it once its prefetch is full.

pub mod breaker;

use crate::capacity::{Health, Registry, Snapshot};
use crate::config::{DeliveryConfig, KeyOrder, WhenNoTarget};
use crate::metrics::Metrics;
use crate::record::Record;
use crate::sink::http::{DeliveryError, HttpSink};
use crate::sink::kafka::{DeadLetter, DeadLetterSink, TargetProducer};
use crate::sink::sse::Streams;
use crate::telemetry::{RecordTrace, RequestSpan};
use arc_swap::ArcSwap;
use backon::BackoffBuilder;
use breaker::{Admit, Breakers};
use futures::future::BoxFuture;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Where a placed record waits for delivery: the queue of a target, or
/// the parking queue of records no target can take now
/// (`delivery.when_no_target = "wait"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Target(Arc<str>),
    Parking,
}

impl Destination {
    /// The `target` label of the queue's metrics.
    fn label(&self) -> &str {
        match self {
            Destination::Target(id) => id,
            Destination::Parking => "(parking)",
        }
    }
}

/// Delivery settings from `[delivery]`, with the HTTP sink over the shared
/// clients; replaced whole on config reload.
pub struct Delivery {
    pub http: HttpSink,
    pub cfg: DeliveryConfig,
}

impl Delivery {
    /// Delivery per `cfg` over `clients` (built from the same config; the
    /// health checks share them).
    pub fn new(cfg: &DeliveryConfig, clients: Arc<ArcSwap<crate::tls::Clients>>) -> Delivery {
        Delivery {
            http: HttpSink::new(cfg, clients),
            cfg: cfg.clone(),
        }
    }

    /// Delivery per `cfg` with clients of its own and no per-target TLS.
    ///
    /// # Errors
    /// A `[delivery.tls]` file cannot be used.
    pub fn standalone(cfg: &DeliveryConfig) -> Result<Delivery, crate::tls::TlsError> {
        Ok(Delivery {
            http: HttpSink::standalone(cfg)?,
            cfg: cfg.clone(),
        })
    }
}

/// The batch was abandoned because the process is stopping; its offsets
/// must not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch abandoned at shutdown; its records will be consumed again")]
pub struct Abandoned;

/// The router (plugin name and version hash) that placed a record, named
/// in its dead letter.
#[derive(Debug)]
pub struct PlacedBy {
    pub name: Arc<str>,
    pub version: String,
}

/// Where records go after their target failed for good: target groups in
/// first-appearance order (offset order within each), and the records no
/// target can take now.
#[derive(Default)]
pub struct Placed {
    pub groups: Vec<(Arc<str>, Vec<Job>)>,
    pub waiting: Vec<Job>,
}

/// Routes records again once their target failed for good (the router
/// step, [`crate::route`], implements it). A lane holds one, so dispatch
/// never imports the router.
pub trait Reroute: Send + Sync + 'static {
    /// Where `jobs` (offset order per partition; each with the targets it
    /// failed at in `excluded`) go now. Records the router drops or
    /// dead-letters finish inside.
    fn route_again(&self, jobs: Vec<Job>) -> BoxFuture<'_, Placed>;
}

/// One partition's records in flight, keys bound to a [`Destination`]
/// (see [`crate::offsets::Partition`]).
pub type Partition = crate::offsets::Partition<Destination>;

/// Records a lane of a `kafka://` target hands the producer before it waits
/// for their acks (`delivery.max_batch` if larger). librdkafka forms its own
/// produce requests (`batch.num.messages`, default 10000), so a lane's batch
/// only sets how much is in flight per round trip: with 500 (the HTTP
/// default) four lanes capped a target near 200,000 records/s in `cdrs bench`;
/// 5000 lifted it to ~320,000 (CPU-bound). One lane of 20,000
/// (`delivery.kafka_lanes = 1`, the default) ran as fast as four of 5,000
/// with ~25% less CPU.
pub const KAFKA_LANE_BATCH: usize = 20_000;

/// Hash of a record key, for lanes and key binding (`None` for no key):
/// foldhash's fast hash with a fixed seed, so a key keeps its lane for the
/// life of the process. Not keyed against collisions on purpose: two keys
/// with one hash only share a lane and a binding (stricter order, never
/// lost order). SipHash (std's `DefaultHasher`) here and in the key
/// bindings' map took ~3% of the daemon's CPU on the HTTP path
/// (`cdrs bench --only http-scaling` under perf).
pub fn key_hash(key: Option<&[u8]>) -> Option<u64> {
    use std::hash::BuildHasher;
    key.map(|k| foldhash::fast::FixedState::with_seed(KEY_HASH_SEED).hash_one(k))
}

const KEY_HASH_SEED: u64 = 0x6364_7273_6b65_7973;

/// One copy of a record on its way to a target.
pub struct Job {
    pub record: Arc<Record>,
    pub(crate) part: Arc<Partition>,
    /// Key hash (`None` for keyless records and fan-out copies).
    pub(crate) key: Option<u64>,
    /// Counted in its key's binding (`delivery.key_order = "strict"`).
    bound: bool,
    /// Delivery attempts made, all targets together.
    pub(crate) attempts: u32,
    /// Targets that failed this copy.
    pub(crate) excluded: Vec<Arc<str>>,
    last_error: String,
    /// Took a slot of a target queue (fresh records only).
    holds_slot: bool,
    /// The router that placed it.
    pub(crate) router: Arc<PlacedBy>,
    /// Its `deliver` span, when traced ([`crate::telemetry`]).
    pub(crate) trace: Option<Arc<RecordTrace>>,
}

impl Job {
    /// A fresh copy of `record`, to be enqueued by [`Dispatcher::enqueue_all`].
    pub fn new(
        record: Arc<Record>,
        part: Arc<Partition>,
        key: Option<u64>,
        router: Arc<PlacedBy>,
    ) -> Job {
        Job {
            record,
            part,
            key,
            bound: false,
            attempts: 0,
            excluded: Vec::new(),
            last_error: String::new(),
            holds_slot: false,
            router,
            trace: None,
        }
    }

    /// The same job with the record's trace (its copies share it).
    pub fn with_trace(mut self, trace: Option<Arc<RecordTrace>>) -> Job {
        self.trace = trace;
        self
    }

    fn holding_slot(mut self) -> Job {
        self.holds_slot = true;
        self
    }

    /// This copy is done (delivered, dropped or dead-lettered).
    pub(crate) fn finish(self) {
        let bound = if self.bound { self.key } else { None };
        self.part.finish(self.record.offset, bound);
    }

    fn lane(&self, lanes: usize) -> usize {
        let h = self.key.unwrap_or(self.record.offset as u64);
        (h % lanes as u64) as usize
    }
}

/// `jobs` followed by the later parts of their batch still `pending` (a
/// stack, next part last), all in offset order.
fn with_pending(mut jobs: Vec<Job>, pending: &mut Vec<Vec<Job>>) -> Vec<Job> {
    for later in pending.drain(..).rev() {
        jobs.extend(later);
    }
    jobs
}

/// Finishes `jobs` (delivered): one partition lock per run of jobs of the
/// same partition, as a lane's batch holds long runs of each partition's
/// records.
fn finish_jobs(jobs: Vec<Job>) {
    let mut run: Vec<(i64, Option<u64>)> = Vec::new();
    let mut current: Option<Arc<Partition>> = None;
    for j in jobs {
        let Job {
            record,
            part,
            key,
            bound,
            ..
        } = j;
        if let Some(p) = current.as_ref().filter(|p| !Arc::ptr_eq(p, &part)) {
            p.finish_many(&run);
            run.clear();
            current = None;
        }
        run.push((record.offset, if bound { key } else { None }));
        current.get_or_insert(part);
    }
    if let Some(p) = current {
        p.finish_many(&run);
    }
}

struct Lane {
    jobs: Mutex<VecDeque<Job>>,
    ready: Notify,
}

/// One target's queue: FIFO lanes and the slots bounding fresh records.
pub struct TargetQueue {
    id: Destination,
    lanes: Vec<Lane>,
    slots: Semaphore,
    depth: prometheus::IntGauge,
}

impl TargetQueue {
    /// Appends `jobs` to their lanes: one lock and one wake-up per lane.
    fn push_all(&self, jobs: Vec<Job>) {
        let n = jobs.len();
        if n == 0 {
            return;
        }
        if n == 1 || self.lanes.len() == 1 {
            let lane = &self.lanes[jobs[0].lane(self.lanes.len())];
            lane.jobs.lock().expect("lane lock").extend(jobs);
            self.depth.add(n as i64);
            lane.ready.notify_one();
            return;
        }
        let mut per_lane: Vec<Vec<Job>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for j in jobs {
            per_lane[j.lane(self.lanes.len())].push(j);
        }
        self.depth.add(n as i64);
        for (lane, js) in self.lanes.iter().zip(per_lane) {
            if !js.is_empty() {
                lane.jobs.lock().expect("lane lock").extend(js);
                lane.ready.notify_one();
            }
        }
    }

    /// The next jobs of `lane` (at most `max`), waiting for some; `None` on stop.
    async fn take(
        &self,
        lane: usize,
        max: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Job>> {
        let lane = &self.lanes[lane];
        loop {
            {
                let mut q = lane.jobs.lock().expect("lane lock");
                if !q.is_empty() {
                    let n = q.len().min(max);
                    let jobs: Vec<Job> = q.drain(..n).collect();
                    let slots = jobs.iter().filter(|j| j.holds_slot).count();
                    self.slots.add_permits(slots);
                    self.depth.sub(n as i64);
                    return Some(jobs);
                }
            }
            tokio::select! {
                _ = lane.ready.notified() => {}
                _ = stop.changed() => return None,
            }
            if *stop.borrow() {
                return None;
            }
        }
    }
}

/// Delivery of placed records: the target queues and their lanes, retries
/// and circuit breakers, the sinks, and the hard-stop signal. Shared by all
/// partition workers and lanes.
pub struct Dispatcher {
    queues: Mutex<HashMap<Destination, Arc<TargetQueue>>>,
    pub breakers: Breakers,
    stop_tx: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    pub registry: Arc<Registry>,
    /// Delivery settings; replaced whole on config reload.
    pub delivery: ArcSwap<Delivery>,
    dead_letters: DeadLetterSink,
    metrics: Arc<Metrics>,
    /// `kafka.brokers` and `[kafka.options]`, for the `kafka://` target
    /// producer.
    brokers: String,
    kafka_options: BTreeMap<String, String>,
    target_producer: OnceLock<Result<TargetProducer, String>>,
    /// The streams of `sse://` targets; subscribers read them through the
    /// admin API.
    pub streams: Arc<Streams>,
}

impl Dispatcher {
    /// A dispatcher with no queues yet (each target's is made on first use).
    pub fn new(
        registry: Arc<Registry>,
        delivery: Delivery,
        dead_letters: DeadLetterSink,
        metrics: Arc<Metrics>,
        brokers: String,
        kafka_options: BTreeMap<String, String>,
    ) -> Dispatcher {
        let (stop_tx, stop) = watch::channel(false);
        let streams = {
            let registry = registry.clone();
            Arc::new(Streams::new(
                metrics.clone(),
                Box::new(move |name, n| registry.set_stream_subscribers(name, n)),
            ))
        };
        Dispatcher {
            streams,
            queues: Mutex::default(),
            breakers: Breakers::default(),
            stop_tx,
            stop,
            registry,
            delivery: ArcSwap::from_pointee(delivery),
            dead_letters,
            metrics,
            brokers,
            kafka_options,
            target_producer: OnceLock::new(),
        }
    }

    /// Stops every lane at once; what is still queued stays unfinished (its
    /// offsets are not committed).
    pub fn stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// Whether [`Dispatcher::stop`] was called.
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A receiver of the hard-stop signal.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

/// Full jitter on an exponential schedule: a uniform delay in [0, d)
/// (Brooker, "Exponential Backoff and Jitter", AWS Architecture Blog, 2015).
fn full_jitter(d: Duration) -> Duration {
    d.mul_f64(fastrand::f64())
}

/// The exponential schedule of `[delivery]` (backon), `retries` long.
pub fn schedule(cfg: &DeliveryConfig, retries: Option<usize>) -> impl Iterator<Item = Duration> {
    let b = backon::ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(Duration::from_millis(cfg.retry_initial_ms))
        .with_max_delay(Duration::from_millis(cfg.retry_max_ms));
    match retries {
        Some(n) => b.with_max_times(n),
        None => b.without_max_times(),
    }
    .build()
    .map(full_jitter)
}

/// What [`Dispatcher::admit`] allows.
enum Admission {
    /// Send to this URL.
    Send(Arc<str>),
    /// The breaker spaces its probes: ask again after this.
    Wait(Duration),
    /// Route the records elsewhere (`cdrs_rerouted_records_total` label,
    /// reason).
    Refused(&'static str, String),
}

/// One delivery's retry budget at a target: `delivery.max_attempts`
/// attempts on the backoff schedule, within `delivery.retry_deadline_ms`.
struct Budget {
    retries: Box<dyn Iterator<Item = Duration> + Send>,
    deadline: Instant,
    tries: u32,
}

impl Budget {
    fn new(cfg: &DeliveryConfig) -> Budget {
        Budget {
            retries: Box::new(schedule(
                cfg,
                Some(cfg.max_attempts.saturating_sub(1) as usize),
            )),
            deadline: Instant::now() + Duration::from_millis(cfg.retry_deadline_ms),
            tries: 0,
        }
    }

    /// How long to wait before retrying after `e`; `None` when the records
    /// should go elsewhere: `e` is not retryable or the target unreachable,
    /// or the budget is spent. A `Retry-After` is honoured while attempts
    /// remain.
    fn next_wait(
        &mut self,
        cfg: &DeliveryConfig,
        e: &DeliveryError,
        now: Instant,
    ) -> Option<Duration> {
        if !e.retryable() || e.unreachable() {
            return None;
        }
        let wait = match e.retry_after() {
            Some(ra) if self.tries < cfg.max_attempts => Some(ra),
            Some(_) => None,
            None => self.retries.next(),
        };
        // `checked_add`: a `Retry-After` of 10^19 s overflows `Instant`.
        wait.filter(|w| now.checked_add(*w).is_some_and(|t| t < self.deadline))
    }
}

impl Dispatcher {
    /// The queue of `target`, created (with its lane tasks) on first use.
    fn queue(
        self: &Arc<Self>,
        target: &Destination,
        reroute: &Arc<dyn Reroute>,
    ) -> Arc<TargetQueue> {
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.get(target) {
            return q.clone();
        }
        let cfg = &self.delivery.load().cfg;
        let kafka = self.is_kafka_target(target);
        let lanes = if kafka { cfg.kafka_lanes } else { cfg.lanes };
        // A `kafka://` lane waits for its batch's acks before taking the
        // next (per-key order); room for two lane batches per lane keeps the
        // next ones ready meanwhile (`cdrs bench` on Tansu: with 10,000 the
        // partition workers waited for slots most of the run).
        let capacity = if kafka {
            cfg.queue_capacity.max(2 * lanes * KAFKA_LANE_BATCH)
        } else {
            cfg.queue_capacity
        };
        let q = Arc::new(TargetQueue {
            id: target.clone(),
            lanes: (0..lanes)
                .map(|_| Lane {
                    jobs: Mutex::default(),
                    ready: Notify::new(),
                })
                .collect(),
            slots: Semaphore::new(capacity),
            depth: self
                .metrics
                .target_queue
                .with_label_values(&[target.label()]),
        });
        for lane in 0..lanes {
            tokio::spawn(self.clone().run_lane(q.clone(), lane, reroute.clone()));
        }
        queues.insert(target.clone(), q.clone());
        q
    }

    /// Puts fresh copies on their targets' queues (`(target, copy)` in
    /// offset order), waiting for free slots. With
    /// `delivery.key_order = "strict"`, a keyed copy whose key has copies in
    /// flight goes where they went (bound in the order given). One queue
    /// lookup, one lock and one wake-up per lane per target for all of
    /// them: done per record, these cost about a tenth of the daemon's CPU
    /// in `cdrs bench`.
    ///
    /// Errors: [`Abandoned`] on a hard stop (the copies not queued yet stay
    /// unfinished).
    pub async fn enqueue_all(
        self: &Arc<Self>,
        mut jobs: Vec<(Destination, Job)>,
        reroute: &Arc<dyn Reroute>,
    ) -> Result<(), Abandoned> {
        let strict = self.delivery.load().cfg.key_order == KeyOrder::Strict;
        if strict {
            for run in jobs.chunk_by_mut(|a, b| Arc::ptr_eq(&a.1.part, &b.1.part)) {
                let part = run[0].1.part.clone();
                part.bind_keys(run.iter_mut().filter_map(|(target, j)| {
                    j.bound = j.key.is_some();
                    j.key.map(|h| (h, target))
                }));
            }
        }
        // By target, in order of first appearance; offset order within each.
        let mut groups: Vec<(Destination, Vec<Job>)> = Vec::new();
        for (t, j) in jobs {
            match groups.iter_mut().rev().find(|(g, _)| *g == t) {
                Some((_, js)) => js.push(j),
                None => groups.push((t, vec![j])),
            }
        }
        for (target, jobs) in groups {
            let q = self.queue(&target, reroute);
            // Fast path without a stop watcher: the queue has room for all.
            if let Ok(permits) = q.slots.try_acquire_many(jobs.len() as u32) {
                permits.forget();
                q.push_all(jobs.into_iter().map(Job::holding_slot).collect());
                continue;
            }
            let mut stop = self.stop_signal();
            for job in jobs {
                tokio::select! {
                    permit = q.slots.acquire() => permit.expect("slots are never closed").forget(),
                    _ = stop.wait_for(|s| *s) => return Err(Abandoned),
                }
                q.push_all(vec![job.holding_slot()]);
            }
        }
        Ok(())
    }

    /// Whether `target`'s URL in the current snapshot is `kafka://`.
    fn is_kafka_target(&self, target: &Destination) -> bool {
        let Destination::Target(target) = target else {
            return false;
        };
        let snapshot = self.registry.snapshot();
        snapshot
            .index_of(target)
            .is_some_and(|i| snapshot.targets[i].url.starts_with("kafka://"))
    }

    async fn run_lane(
        self: Arc<Self>,
        q: Arc<TargetQueue>,
        lane: usize,
        reroute: Arc<dyn Reroute>,
    ) {
        let mut stop = self.stop_signal();
        loop {
            let mut max = self.delivery.load().cfg.max_batch;
            if self.is_kafka_target(&q.id) {
                // A Kafka producer batches by itself; what bounds a lane is
                // how many records it hands over per acknowledgement wait.
                max = max.max(KAFKA_LANE_BATCH);
            }
            let Some(jobs) = q.take(lane, max, &mut stop).await else {
                return;
            };
            self.deliver(&q, jobs, &*reroute).await;
        }
    }

    async fn send(
        &self,
        cfg: &DeliveryConfig,
        target: &str,
        url: &str,
        records: &[&Record],
        traceparent: Option<&str>,
    ) -> Result<(), DeliveryError> {
        if url.starts_with("kafka://") {
            let producer = self
                .target_producer()
                .map_err(|msg| DeliveryError::Request {
                    url: url.into(),
                    msg,
                })?;
            producer
                .send(url, records, Duration::from_millis(cfg.timeout_ms))
                .await
        } else if url.starts_with("sse://") {
            self.streams.deliver(url, records, &cfg.sse)
        } else {
            self.delivery
                .load()
                .http
                .post_traced(target, url, records, traceparent)
                .await
        }
    }

    /// Resolves one batch of a lane completely before the lane takes the
    /// next: delivered to the lane's target, or — when that fails for good —
    /// routed again and delivered by this lane to the new targets, and so
    /// on; records no target can take wait here (backoff) or are
    /// dead-lettered. All copies of one key stay in one group, so they
    /// move, fail and arrive together, in offset order.
    async fn deliver(self: &Arc<Self>, q: &TargetQueue, jobs: Vec<Job>, reroute: &dyn Reroute) {
        let mut stop = self.stop_signal();
        let (mut groups, mut unplaced) = match &q.id {
            Destination::Parking => (Vec::new(), jobs),
            Destination::Target(id) => (vec![(id.clone(), jobs)], Vec::new()),
        };
        let mut idle = schedule(&self.delivery.load().cfg, None);
        loop {
            let sends = groups.drain(..).map(|(t, js)| self.deliver_to(t, js));
            let mut failed: Vec<Job> = futures::future::join_all(sends)
                .await
                .into_iter()
                .flatten()
                .collect();
            failed.append(&mut unplaced);
            if failed.is_empty() || self.stopped() {
                return;
            }
            // Offset order within each partition, as they were read.
            failed.sort_by(|a, b| {
                (&a.record.topic, a.record.partition, a.record.offset).cmp(&(
                    &b.record.topic,
                    b.record.partition,
                    b.record.offset,
                ))
            });
            let Placed {
                groups: placed,
                waiting,
            } = reroute.route_again(failed).await;
            groups = placed;
            if waiting.is_empty() {
                idle = schedule(&self.delivery.load().cfg, None);
                continue;
            }
            if self.delivery.load().cfg.when_no_target == WhenNoTarget::DeadLetter {
                for j in waiting {
                    let why = format!(
                        "no target can take the record; last error: {}",
                        j.last_error
                    );
                    self.dead_letter_job(j, "delivery", &why).await;
                }
                continue;
            }
            unplaced = waiting;
            if groups.is_empty() {
                // Nothing can take them now: wait, then give every target
                // another chance.
                let wait = idle.next().unwrap_or(Duration::from_secs(1));
                tracing::debug!(
                    records = unplaced.len(),
                    ?wait,
                    "no target for records; waiting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for j in &mut unplaced {
                    j.excluded.clear();
                }
            }
        }
    }

    /// Delivers `jobs` to `target`: retries with backoff while the failure
    /// is retryable, the breaker lets requests through and the attempt and
    /// deadline budgets last. Returns the jobs not delivered (with `target`
    /// added to their exclusions); empty on success or on a hard stop.
    async fn deliver_to(self: &Arc<Self>, id: Arc<str>, mut jobs: Vec<Job>) -> Vec<Job> {
        let delivery = self.delivery.load_full();
        let cfg = &delivery.cfg;
        let mut budget = Budget::new(cfg);
        let mut stop = self.stop_signal();
        let gauge = self.metrics.breaker_state.with_label_values(&[&*id]);
        // Later parts of a batch split after a 413, next to send last.
        let mut pending: Vec<Vec<Job>> = Vec::new();
        loop {
            if self.stopped() {
                return Vec::new();
            }
            let snapshot = self.registry.snapshot();
            let url = match self.admit(&id, &snapshot, &gauge) {
                Admission::Send(url) => url,
                Admission::Wait(w) => {
                    tokio::time::sleep(w).await;
                    continue;
                }
                Admission::Refused(label, why) => {
                    return self.give_up(&id, with_pending(jobs, &mut pending), label, &why);
                }
            };
            budget.tries += 1;
            for j in &mut jobs {
                j.attempts += 1;
            }
            if budget.tries > 1 {
                self.metrics
                    .retries
                    .with_label_values(&[&*id])
                    .inc_by(jobs.len() as u64);
            }
            let refs: Vec<&Record> = jobs.iter().map(|j| &*j.record).collect();
            let n = refs.len() as u32;
            self.registry.begin_delivery(&id, n);
            let started = Instant::now();
            // A request that carries traced records has a span of its own.
            let request_span = if url.starts_with("http") {
                RequestSpan::start(&url, jobs.iter().filter_map(|j| j.trace.as_deref()))
            } else {
                None
            };
            let traceparent = request_span.as_ref().map(|s| s.traceparent.as_str());
            let result = self.send(cfg, &id, &url, &refs, traceparent).await;
            if let Some(span) = request_span {
                match &result {
                    Ok(()) => span.succeeded(),
                    Err(e) => span.failed(e.status(), &e.kind(), &e.to_string()),
                }
            }
            let latency = started.elapsed();
            self.metrics
                .delivery_seconds
                .with_label_values(&[&*id])
                .observe(latency.as_secs_f64());
            let now = Instant::now();
            // Records the sink can never write (too large for a Kafka
            // producer): the target took the others, so this counts as a
            // success, and those go to the dead-letter topic: no retry or
            // other `kafka://` target would take them.
            let (result, refused) = match result {
                Err(DeliveryError::Rejected { records, .. }) => (Ok(()), records),
                other => (other, Vec::new()),
            };
            let e = match result {
                Ok(()) => {
                    self.registry.end_delivery(&id, n, latency, None, false);
                    self.count_success(cfg, &id, now);
                    gauge.set(self.breakers.state(&id).gauge());
                    self.delivered(&id, jobs, refused).await;
                    match pending.pop() {
                        Some(next) => {
                            // A part of a split batch: a request of its own,
                            // with the whole retry budget.
                            jobs = next;
                            budget = Budget::new(cfg);
                            continue;
                        }
                        None => return Vec::new(),
                    }
                }
                Err(e) => e,
            };
            let msg = e.to_string();
            self.registry
                .end_delivery(&id, n, latency, Some(&msg), e.unreachable());
            self.metrics
                .deliveries
                .with_label_values(&[&*id, "error"])
                .inc();
            self.count_failure(cfg, &id, &snapshot, &e, now);
            gauge.set(self.breakers.state(&id).gauge());
            // 413 Payload Too Large: the server's body limit (nginx's
            // default is 1 MiB), not the records. Send the batch in halves,
            // in offset order; a single record still too large goes
            // elsewhere like any other refusal.
            if matches!(e, DeliveryError::Status { status: 413, .. }) && jobs.len() > 1 {
                let later = jobs.split_off(jobs.len() / 2);
                tracing::debug!(target_id = %id, records = jobs.len() + later.len(),
                    "413 from the target; sending the batch in halves");
                self.metrics.split_batches.with_label_values(&[&*id]).inc();
                pending.push(later);
                budget = Budget::new(cfg);
                continue;
            }
            let Some(wait) = budget.next_wait(cfg, &e, now) else {
                return self.give_up(&id, with_pending(jobs, &mut pending), &e.label(), &msg);
            };
            tracing::debug!(target_id = %id, records = n, ?wait, error = %msg, "delivery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return Vec::new(),
            }
        }
    }

    /// Whether a request may go to `id` now: its URL if so; a wait while
    /// its breaker spaces probes; or why not (the label of
    /// `cdrs_rerouted_records_total`, and the reason).
    fn admit(&self, id: &str, snapshot: &Snapshot, gauge: &prometheus::IntGauge) -> Admission {
        let Some(t) = snapshot.index_of(id).map(|i| &snapshot.targets[i]) else {
            return Admission::Refused("removed", "target no longer exists".into());
        };
        if t.health == Health::Down {
            let why = t.reason.clone().unwrap_or_else(|| "target is down".into());
            return Admission::Refused("down", why);
        }
        let admit = self.breakers.admit(id, Instant::now());
        gauge.set(self.breakers.state(id).gauge());
        match admit {
            Admit::Open => Admission::Refused("breaker_open", "circuit breaker open".into()),
            Admit::Wait(w) => Admission::Wait(w),
            Admit::Send | Admit::Probe => Admission::Send(t.url.clone()),
        }
    }

    /// `jobs` were delivered to `id`, but for the records the sink refused
    /// for good (`refused`: index in `jobs`, reason), which are
    /// dead-lettered.
    async fn delivered(&self, id: &str, jobs: Vec<Job>, refused: Vec<(usize, String)>) {
        self.metrics.deliveries.with_label_values(&[id, "ok"]).inc();
        let mut jobs = jobs;
        let mut dead = Vec::with_capacity(refused.len());
        if !refused.is_empty() {
            let mut all: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
            for (i, why) in refused {
                if let Some(j) = all.get_mut(i).and_then(Option::take) {
                    dead.push((j, format!("{id}: {why}")));
                }
            }
            jobs = all.into_iter().flatten().collect();
        }
        self.metrics
            .delivered_records
            .with_label_values(&[id])
            .inc_by(jobs.len() as u64);
        self.metrics.count("delivery", "delivered", jobs.len());
        for t in jobs.iter().filter_map(|j| j.trace.as_ref()) {
            t.delivered(id);
        }
        finish_jobs(jobs);
        for (j, why) in dead {
            {
                let _in = j.trace.as_ref().map(|t| t.log_span().entered());
                tracing::warn!(target_id = %id, record = %j.record.id(), reason = %why,
                    "record refused by the sink for good; dead-lettering it");
            }
            self.dead_letter_job(j, "delivery", &why).await;
        }
    }

    /// Tells `id`'s circuit breaker a request went through.
    fn count_success(&self, cfg: &DeliveryConfig, id: &str, now: Instant) {
        if self.breakers.success(&cfg.breaker, id, now) {
            tracing::info!(target_id = %id, "circuit breaker closed");
            self.metrics
                .events
                .publish("breaker.closed", json!({"target": id}));
        }
    }

    /// Counts a failed request in `id`'s circuit breaker, ejecting the
    /// target when the breaker opens. A redirect is not retried, but a
    /// target that redirects every batch is as useless as a failing one,
    /// so it counts; any other refusal means the target is up.
    fn count_failure(
        &self,
        cfg: &DeliveryConfig,
        id: &str,
        snapshot: &Snapshot,
        e: &DeliveryError,
        now: Instant,
    ) {
        if !(e.retryable() || e.is_redirect()) {
            self.count_success(cfg, id, now);
            return;
        }
        let targets: HashSet<&str> = snapshot.targets.iter().map(|t| &*t.id).collect();
        if let Some(ej) = self.breakers.failure(&cfg.breaker, id, &targets, now) {
            tracing::warn!(target_id = %id, reason = %ej.reason, last_error = %e,
                ejection = ?ej.duration, "circuit breaker open: target ejected");
            self.metrics.ejections.with_label_values(&[id]).inc();
            self.metrics.events.publish(
                "breaker.opened",
                json!({"target": id, "reason": ej.reason, "last_error": e.to_string(),
                       "ejection_ms": ej.duration.as_millis() as u64}),
            );
            // The last failure stays in the reason: an operator needs the
            // cause (a TLS handshake, a status), not only the count.
            self.registry.eject(
                id,
                ej.duration,
                &format!("ejected: {}; last: {e}", ej.reason),
            );
        }
    }

    /// `jobs` leave `id` to be routed again: `id` joins their exclusions,
    /// `why` becomes their last error. Returns them.
    fn give_up(&self, id: &Arc<str>, mut jobs: Vec<Job>, label: &str, why: &str) -> Vec<Job> {
        tracing::debug!(target_id = %id, records = jobs.len(), reason = why, "routing records again");
        self.metrics
            .rerouted
            .with_label_values(&[&**id, label])
            .inc_by(jobs.len() as u64);
        self.metrics.count("delivery", "rerouted", jobs.len());
        for j in &mut jobs {
            if !j.excluded.contains(id) {
                j.excluded.push(id.clone());
            }
            j.last_error = format!("{id}: {why}");
        }
        jobs
    }

    /// Dead-letters one copy and finishes it (unless the process stops
    /// first: then it stays unfinished).
    pub(crate) async fn dead_letter_job(&self, j: Job, stage: &'static str, reason: &str) {
        let why = DeadLetter {
            stage,
            plugin: Some((&j.router.name, &j.router.version)),
            reason,
            attempts: j.attempts,
        };
        if self
            .dead_letter(&j.record, &why, &self.stop_signal())
            .await
            .is_ok()
        {
            if let Some(t) = &j.trace {
                t.dead_lettered(&j.record.id(), stage, reason);
            }
            j.finish();
        }
    }

    /// The producer of `kafka://` targets, created on first use.
    pub(crate) fn target_producer(&self) -> Result<&TargetProducer, String> {
        self.target_producer
            .get_or_init(|| {
                TargetProducer::new(&self.brokers, &self.kafka_options)
                    .map_err(|e| format!("failed to create the target producer: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Writes one dead letter, retrying with backoff until the broker acks
    /// or shutdown.
    pub(crate) async fn dead_letter(
        &self,
        r: &Record,
        why: &DeadLetter<'_>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Abandoned> {
        let mut backoff = schedule(&self.delivery.load().cfg, None);
        loop {
            match self.dead_letters.send(r, why).await {
                Ok(()) => {
                    self.metrics.count(why.stage, "dead_lettered", 1);
                    self.metrics
                        .dead_letters
                        .with_label_values(&[why.stage])
                        .inc();
                    self.metrics
                        .dead_letter_reasons
                        .count(why.stage, why.reason);
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(record = %r.id(), error = %e, "dead-letter write failed; retrying");
                    if *shutdown.borrow() {
                        return Err(Abandoned);
                    }
                    let wait = backoff.next().unwrap_or_default();
                    let mut stop = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return Err(Abandoned),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
