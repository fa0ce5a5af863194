//! Dispatcher: per-target queues, delivery with retries, circuit breakers,
//! re-routing, and the completion of each record in its partition.
//!
//! ```text
//!  pipeline ──► target queue (bounded) ──► lane 0..L (one request at a time each)
//!                                             │ ok: finish records
//!                                             │ retryable failure: backoff with full jitter,
//!                                             │   Retry-After honoured, ≤ max_attempts, ≤ deadline
//!                                             │ then / 4xx / unreachable / breaker open:
//!                                             ▼
//!                                     route again (router plugin, failed targets marked down)
//!                                             │ no target: dead-letter, or park and retry
//!                                             ▼
//!                                     another target's queue, the parking queue, or the DLQ
//! ```
//!
//! Guarantees:
//! * **at-least-once**: a record finishes only when delivered (2xx / broker
//!   ack), dropped by a plugin or acknowledged by the dead-letter topic; only
//!   then can its partition's commit watermark ([`OffsetTracker`]) pass it.
//!   On a hard stop, queued records are simply not finished.
//! * **per-key order at a target**: a key always uses the same lane of a
//!   target (lanes are FIFO, one request at a time); while a key has records
//!   in flight, new records of that key follow them to the same target
//!   (overriding the router), and a lane routes its failed records again
//!   before it sends anything queued behind them. So a later record of a key
//!   never overtakes an earlier one being retried or re-routed. Records
//!   routed to several targets (fan-out) are not held to this.
//! * **bounded memory**: fresh records wait for room in the target's queue
//!   (`delivery.queue_capacity`) and for room in their partition's in-flight
//!   window (`pipeline.max_inflight_records`); the source pauses partitions
//!   whose worker waits.

pub mod breaker;

use crate::capacity::{Health, Snapshot};
use crate::config::{DeliveryConfig, WhenNoTarget};
use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;
use crate::pipeline::{fallback, Abandoned, Pipeline};
use crate::plugin::router::Route;
use crate::record::Record;
use crate::sink::http::DeliveryError;
use crate::sink::kafka::DeadLetter;
use backon::BackoffBuilder;
use breaker::{Admit, Breakers};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// The id of the parking queue: records no target can take, waiting
/// (`delivery.when_no_target = "wait"`).
const PARKING: &str = "";

/// One partition's records in flight: its offset tracker, its in-flight
/// window and the targets its in-flight keys are bound to.
pub struct Partition {
    pub topic: Arc<str>,
    pub partition: i32,
    state: Mutex<PartitionState>,
    window: Semaphore,
    /// Set on revoke/shutdown: the worker takes no new batches.
    pub revoked: AtomicBool,
    /// Stores the watermark (next offset to read) in the consumer.
    store: Box<dyn Fn(i64) + Send + Sync>,
    inflight: prometheus::IntGauge,
    /// Notified whenever a record of the partition finishes.
    pub finished: Notify,
}

#[derive(Default)]
struct PartitionState {
    tracker: OffsetTracker,
    /// Key hash → target its in-flight copies were sent to last.
    keys: HashMap<u64, KeyRoute>,
}

struct KeyRoute {
    target: Arc<str>,
    copies: u32,
}

impl Partition {
    /// `window`: `pipeline.max_inflight_records`; `store(w)` is called with
    /// each new watermark.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        window: usize,
        metrics: &Metrics,
        store: impl Fn(i64) + Send + Sync + 'static,
    ) -> Arc<Partition> {
        let inflight = metrics
            .partition_inflight
            .with_label_values(&[&*topic, &partition.to_string()]);
        Arc::new(Partition {
            topic,
            partition,
            state: Mutex::default(),
            window: Semaphore::new(window),
            revoked: AtomicBool::new(false),
            store: Box::new(store),
            inflight,
            finished: Notify::new(),
        })
    }

    /// Waits for room for `n` more records in the in-flight window, then
    /// tracks their offsets (ascending) as unfinished. False (nothing
    /// tracked) if the partition was revoked meanwhile.
    pub async fn admit(&self, offsets: &[i64]) -> bool {
        let n = offsets.len() as u32;
        let permits = self
            .window
            .acquire_many(n)
            .await
            .expect("window semaphore is never closed");
        if self.revoked.load(Ordering::Relaxed) {
            return false;
        }
        permits.forget();
        let mut st = self.state.lock().expect("partition lock");
        for &o in offsets {
            st.tracker.track(o, 1);
        }
        self.inflight.add(n.into());
        true
    }

    /// A record finished before routing (dropped or dead-lettered by a filter).
    pub(crate) fn finish_unrouted(&self, offset: i64) {
        self.finish(offset, None);
    }

    /// Records read and not yet finished.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("partition lock").tracker.pending()
    }

    /// The commit watermark: the next offset to read after a restart.
    pub fn watermark(&self) -> Option<i64> {
        self.state
            .lock()
            .expect("partition lock")
            .tracker
            .watermark()
    }

    /// One copy of `offset` finished (delivered, dropped, dead-lettered);
    /// `key` if the copy was bound to its key's route.
    fn finish(&self, offset: i64, key: Option<u64>) {
        let mut st = self.state.lock().expect("partition lock");
        if let Some(h) = key {
            if let Some(k) = st.keys.get_mut(&h) {
                k.copies -= 1;
                if k.copies == 0 {
                    st.keys.remove(&h);
                }
            }
        }
        if st.tracker.finish(offset) {
            self.window.add_permits(1);
            self.inflight.dec();
        }
        if let Some(w) = st.tracker.advanced() {
            (self.store)(w);
        }
        drop(st);
        self.finished.notify_waiters();
    }

    /// Binds one more copy of key `h` to `target`, or — if the key already
    /// has copies in flight — returns the target they went to.
    fn bind_key(&self, h: u64, target: &Arc<str>) -> Arc<str> {
        let mut st = self.state.lock().expect("partition lock");
        let k = st.keys.entry(h).or_insert_with(|| KeyRoute {
            target: target.clone(),
            copies: 0,
        });
        k.copies += 1;
        k.target.clone()
    }

    /// Moves key `h`'s route to `target` (its copy was routed again) and
    /// adds `extra` copies (fan-out on re-route) of `offset`.
    fn rebind_key(&self, h: Option<u64>, target: &Arc<str>, offset: i64, extra: u32) {
        let mut st = self.state.lock().expect("partition lock");
        if let Some(k) = h.and_then(|h| st.keys.get_mut(&h)) {
            k.target = target.clone();
        }
        if extra > 0 {
            st.tracker.add_copies(offset, extra);
        }
    }

    /// Stores the current watermark now (revoke, shutdown).
    pub fn store_now(&self) {
        let st = self.state.lock().expect("partition lock");
        if let Some(w) = st.tracker.watermark() {
            (self.store)(w);
        }
    }
}

/// Hash of a record key, for lanes and key binding (`None` for no key).
pub fn key_hash(key: Option<&[u8]>) -> Option<u64> {
    key.map(|k| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    })
}

/// One copy of a record on its way to a target.
pub struct Job {
    pub record: Arc<Record>,
    part: Arc<Partition>,
    /// Key hash if this copy is bound to its key's route.
    key: Option<u64>,
    /// Delivery attempts made, all targets together.
    attempts: u32,
    /// Targets that failed this copy.
    excluded: Vec<Arc<str>>,
    last_error: String,
    /// Took a slot of a target queue (fresh records only).
    holds_slot: bool,
    /// The router (name, version) that placed it.
    router: Arc<(Arc<str>, String)>,
}

impl Job {
    /// A fresh copy of `record`, to be enqueued by [`Pipeline::enqueue`].
    pub fn new(
        record: Arc<Record>,
        part: Arc<Partition>,
        key: Option<u64>,
        router: Arc<(Arc<str>, String)>,
    ) -> Job {
        Job {
            record,
            part,
            key,
            attempts: 0,
            excluded: Vec::new(),
            last_error: String::new(),
            holds_slot: false,
            router,
        }
    }

    fn finish(self) {
        self.part.finish(self.record.offset, self.key);
    }

    fn lane(&self, lanes: usize) -> usize {
        let h = key_hash(self.record.key.as_deref()).unwrap_or(self.record.offset as u64);
        (h % lanes as u64) as usize
    }
}

struct Lane {
    jobs: Mutex<VecDeque<Job>>,
    ready: Notify,
}

/// One target's queue: FIFO lanes and the slots bounding fresh records.
pub struct TargetQueue {
    id: Arc<str>,
    lanes: Vec<Lane>,
    slots: Semaphore,
    depth: prometheus::IntGauge,
}

impl TargetQueue {
    fn push(&self, job: Job, front: bool) {
        let lane = &self.lanes[job.lane(self.lanes.len())];
        {
            let mut q = lane.jobs.lock().expect("lane lock");
            if front {
                q.push_front(job);
            } else {
                q.push_back(job);
            }
        }
        self.depth.inc();
        lane.ready.notify_one();
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

/// All target queues, their breakers and the hard-stop signal.
pub struct Dispatcher {
    queues: Mutex<HashMap<Arc<str>, Arc<TargetQueue>>>,
    pub breakers: Breakers,
    stop_tx: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    /// Versions for the derived snapshots given to the router on re-route.
    versions: AtomicU64,
}

impl Default for Dispatcher {
    fn default() -> Self {
        let (stop_tx, stop) = watch::channel(false);
        Dispatcher {
            queues: Mutex::default(),
            breakers: Breakers::default(),
            stop_tx,
            stop,
            versions: AtomicU64::new(1 << 62),
        }
    }
}

impl Dispatcher {
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

impl Pipeline {
    /// The queue of `target`, created (with its lane tasks) on first use.
    fn queue(self: &Arc<Self>, target: &Arc<str>) -> Arc<TargetQueue> {
        let mut queues = self.dispatch.queues.lock().expect("queues lock");
        if let Some(q) = queues.get(target) {
            return q.clone();
        }
        let cfg = &self.delivery.load().cfg;
        let lanes = if &**target == PARKING { 1 } else { cfg.lanes };
        let q = Arc::new(TargetQueue {
            id: target.clone(),
            lanes: (0..lanes)
                .map(|_| Lane {
                    jobs: Mutex::default(),
                    ready: Notify::new(),
                })
                .collect(),
            slots: Semaphore::new(cfg.queue_capacity),
            depth: self
                .metrics
                .target_queue
                .with_label_values(&[if &**target == PARKING {
                    "(parking)"
                } else {
                    target
                }]),
        });
        for lane in 0..lanes {
            tokio::spawn(self.clone().run_lane(q.clone(), lane));
        }
        queues.insert(target.clone(), q.clone());
        q
    }

    /// Puts a fresh copy on `target`'s queue, waiting for a free slot.
    /// A keyed copy whose key has copies in flight goes where they went.
    ///
    /// Errors: [`Abandoned`] on a hard stop.
    pub async fn enqueue(
        self: &Arc<Self>,
        target: Arc<str>,
        mut job: Job,
    ) -> Result<(), Abandoned> {
        let target = match job.key {
            Some(h) => job.part.bind_key(h, &target),
            None => target,
        };
        let q = self.queue(&target);
        let mut stop = self.dispatch.stop_signal();
        tokio::select! {
            permit = q.slots.acquire() => permit.expect("slots are never closed").forget(),
            _ = stop.wait_for(|s| *s) => return Err(Abandoned),
        }
        job.holds_slot = true;
        q.push(job, false);
        Ok(())
    }

    async fn run_lane(self: Arc<Self>, q: Arc<TargetQueue>, lane: usize) {
        let mut stop = self.dispatch.stop_signal();
        let mut idle = schedule(&self.delivery.load().cfg, None);
        loop {
            let max = self.delivery.load().cfg.max_batch;
            let Some(jobs) = q.take(lane, max, &mut stop).await else {
                return;
            };
            if &*q.id != PARKING {
                self.deliver(&q, jobs).await;
                continue;
            }
            // Parked records: try every target again.
            let mut jobs = jobs;
            for j in &mut jobs {
                j.excluded.clear();
            }
            let n = jobs.len();
            let unplaced = self.place(jobs, false).await;
            if unplaced.len() < n {
                idle = schedule(&self.delivery.load().cfg, None);
            }
            if unplaced.is_empty() {
                continue;
            }
            for j in unplaced.into_iter().rev() {
                q.push(j, true);
            }
            let wait = idle.next().unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn send(
        &self,
        cfg: &DeliveryConfig,
        url: &str,
        records: &[&Record],
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
        } else {
            self.delivery.load().http.post(url, records).await
        }
    }

    /// Delivers `jobs` to `q`'s target: retries, breaker, then re-route.
    async fn deliver(self: &Arc<Self>, q: &TargetQueue, mut jobs: Vec<Job>) {
        let delivery = self.delivery.load_full();
        let cfg = &delivery.cfg;
        let id = &q.id;
        let mut retries = schedule(cfg, Some(cfg.max_attempts.saturating_sub(1) as usize));
        let deadline = Instant::now() + Duration::from_millis(cfg.retry_deadline_ms);
        let mut stop = self.dispatch.stop_signal();
        let gauge = self.metrics.breaker_state.with_label_values(&[&**id]);
        let mut tries = 0u32;
        loop {
            if self.dispatch.stopped() {
                return;
            }
            let snapshot = self.registry.snapshot();
            let Some(t) = snapshot.index_of(id).map(|i| &snapshot.targets[i]) else {
                return self
                    .reroute(jobs, id, "removed", "target no longer exists")
                    .await;
            };
            if t.health == Health::Down {
                let why = t.reason.clone().unwrap_or_else(|| "target is down".into());
                return self.reroute(jobs, id, "down", &why).await;
            }
            let admit = self.dispatch.breakers.admit(id, Instant::now());
            gauge.set(self.dispatch.breakers.state(id).gauge());
            match admit {
                Admit::Open => {
                    return self
                        .reroute(jobs, id, "breaker_open", "circuit breaker open")
                        .await
                }
                Admit::Wait(w) => {
                    tokio::time::sleep(w).await;
                    continue;
                }
                Admit::Send | Admit::Probe => {}
            }
            tries += 1;
            for j in &mut jobs {
                j.attempts += 1;
            }
            if tries > 1 {
                self.metrics
                    .retries
                    .with_label_values(&[&**id])
                    .inc_by(jobs.len() as u64);
            }
            let refs: Vec<&Record> = jobs.iter().map(|j| &*j.record).collect();
            let n = refs.len() as u32;
            self.registry.begin_delivery(id, n);
            let started = Instant::now();
            let result = self.send(cfg, &t.url, &refs).await;
            let latency = started.elapsed();
            self.metrics
                .delivery_seconds
                .with_label_values(&[&**id])
                .observe(latency.as_secs_f64());
            let now = Instant::now();
            let e = match result {
                Ok(()) => {
                    self.registry.end_delivery(id, n, latency, None, false);
                    self.dispatch.breakers.success(&cfg.breaker, id, now);
                    gauge.set(self.dispatch.breakers.state(id).gauge());
                    self.metrics
                        .deliveries
                        .with_label_values(&[&**id, "ok"])
                        .inc();
                    self.metrics
                        .delivered_records
                        .with_label_values(&[&**id])
                        .inc_by(n.into());
                    self.metrics.count("delivery", "delivered", jobs.len());
                    for j in jobs {
                        j.finish();
                    }
                    return;
                }
                Err(e) => e,
            };
            let msg = e.to_string();
            self.registry
                .end_delivery(id, n, latency, Some(&msg), e.unreachable());
            self.metrics
                .deliveries
                .with_label_values(&[&**id, "error"])
                .inc();
            if e.retryable() {
                let targets = snapshot.targets.len();
                if let Some(ej) = self
                    .dispatch
                    .breakers
                    .failure(&cfg.breaker, id, targets, now)
                {
                    tracing::warn!(target_id = %id, reason = %ej.reason, ejection = ?ej.duration,
                        "circuit breaker open: target ejected");
                    self.metrics.ejections.with_label_values(&[&**id]).inc();
                    self.registry
                        .eject(id, ej.duration, &format!("ejected: {}", ej.reason));
                }
            } else {
                // The target answered: it is up, it just refuses these.
                self.dispatch.breakers.success(&cfg.breaker, id, now);
            }
            gauge.set(self.dispatch.breakers.state(id).gauge());
            if !e.retryable() || e.unreachable() {
                return self.reroute(jobs, id, &e.label(), &msg).await;
            }
            let wait = match e.retry_after() {
                Some(ra) if tries < cfg.max_attempts => Some(ra),
                Some(_) => None,
                None => retries.next(),
            };
            let Some(wait) = wait.filter(|w| now + *w < deadline) else {
                return self.reroute(jobs, id, &e.label(), &msg).await;
            };
            tracing::debug!(target_id = %id, records = n, ?wait, error = %msg, "delivery failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Routes `jobs` again with `from` marked down for them.
    async fn reroute(
        self: &Arc<Self>,
        mut jobs: Vec<Job>,
        from: &Arc<str>,
        label: &str,
        why: &str,
    ) {
        tracing::debug!(target_id = %from, records = jobs.len(), reason = why, "routing records again");
        self.metrics
            .rerouted
            .with_label_values(&[&**from, label])
            .inc_by(jobs.len() as u64);
        self.metrics.count("delivery", "rerouted", jobs.len());
        for j in &mut jobs {
            if !j.excluded.contains(from) {
                j.excluded.push(from.clone());
            }
            j.last_error = format!("{from}: {why}");
        }
        let unplaced = self.place(jobs, false).await;
        if unplaced.is_empty() {
            return;
        }
        let parking = self.queue(&Arc::from(PARKING));
        for j in unplaced {
            j.part.rebind_key(j.key, &parking.id, j.record.offset, 0);
            parking.push(j, false);
        }
    }

    /// Asks the router where `jobs` go and queues them there. Records the
    /// router drops or dead-letters finish here.
    ///
    /// `fresh`: the first pass of records just read (they wait for queue
    /// slots, keyed ones follow their key's copies in flight, and records
    /// no target can take are parked or dead-lettered). Otherwise a
    /// re-route: the router sees the jobs' failed targets as down, and the
    /// jobs no target can take are returned when `when_no_target = "wait"`.
    pub(crate) async fn place(self: &Arc<Self>, jobs: Vec<Job>, fresh: bool) -> Vec<Job> {
        let snapshot = self.registry.snapshot();
        let view = if fresh || jobs.iter().all(|j| j.excluded.is_empty()) {
            snapshot
        } else {
            let mut view: Snapshot = (*snapshot).clone();
            view.version = self.dispatch.versions.fetch_add(1, Ordering::Relaxed);
            for t in &mut view.targets {
                if jobs.iter().any(|j| j.excluded.contains(&t.id)) {
                    t.health = Health::Down;
                }
            }
            Arc::new(view)
        };
        // The router is called per partition, as on the first pass.
        let mut groups: BTreeMap<(Arc<str>, i32), Vec<Job>> = BTreeMap::new();
        for j in jobs {
            groups
                .entry((j.record.topic.clone(), j.record.partition))
                .or_default()
                .push(j);
        }
        let router = self.plugins.router.current();
        let mut extra = vec![0u32; view.targets.len()];
        let mut unplaced = Vec::new();
        let (mut routed, mut defaulted) = (0, 0);
        for ((topic, partition), jobs) in groups {
            let refs: Vec<&Record> = jobs.iter().map(|j| &*j.record).collect();
            let routes =
                tokio::task::block_in_place(|| router.route(&view, &topic, partition, &refs));
            self.plugins.router.check_health();
            for (j, route) in jobs.into_iter().zip(routes) {
                let allowed = |t: usize| {
                    view.targets[t].health != Health::Down
                        && !j.excluded.contains(&view.targets[t].id)
                };
                let targets: Vec<usize> = match route {
                    Route::Targets(ts) => {
                        let up: Vec<usize> = ts.into_iter().filter(|&t| allowed(t)).collect();
                        if up.is_empty() {
                            defaulted += 1;
                            fallback(&view, &extra).into_iter().collect()
                        } else {
                            routed += 1;
                            up
                        }
                    }
                    Route::Default => {
                        defaulted += 1;
                        fallback(&view, &extra).into_iter().collect()
                    }
                    Route::Drop => {
                        self.metrics.count("router", "dropped", 1);
                        j.finish();
                        continue;
                    }
                    Route::DeadLetter(reason) => {
                        self.dead_letter_job(j, "router", &reason).await;
                        continue;
                    }
                };
                if targets.is_empty() {
                    unplaced.push(j);
                    continue;
                }
                for &t in &targets {
                    extra[t] += 1;
                }
                let first = view.targets[targets[0]].id.clone();
                if fresh {
                    let mut j = j;
                    if targets.len() > 1 {
                        // Fan-out copies are not bound to their key's route.
                        j.key = None;
                        j.part
                            .rebind_key(None, &first, j.record.offset, targets.len() as u32 - 1);
                    }
                    for &t in &targets[1..] {
                        let copy =
                            Job::new(j.record.clone(), j.part.clone(), None, j.router.clone());
                        if self
                            .enqueue(view.targets[t].id.clone(), copy)
                            .await
                            .is_err()
                        {
                            return Vec::new();
                        }
                    }
                    if self.enqueue(first, j).await.is_err() {
                        return Vec::new();
                    }
                    continue;
                }
                j.part
                    .rebind_key(j.key, &first, j.record.offset, targets.len() as u32 - 1);
                for &t in &targets[1..] {
                    let mut copy =
                        Job::new(j.record.clone(), j.part.clone(), None, j.router.clone());
                    copy.attempts = j.attempts;
                    self.queue(&view.targets[t].id).push(copy, false);
                }
                self.queue(&first).push(j, false);
            }
        }
        if fresh {
            self.metrics.count("router", "routed", routed);
            self.metrics.count("router", "defaulted", defaulted);
        }
        let wait = self.delivery.load().cfg.when_no_target == WhenNoTarget::Wait;
        if fresh && wait {
            // Parked, unless the key has copies in flight elsewhere: then
            // behind them.
            for j in unplaced {
                if self.enqueue(Arc::from(PARKING), j).await.is_err() {
                    break;
                }
            }
            return Vec::new();
        }
        if unplaced.is_empty() || wait {
            return unplaced;
        }
        for j in unplaced {
            let why = format!(
                "no target can take the record; last error: {}",
                j.last_error
            );
            self.dead_letter_job(j, "delivery", &why).await;
        }
        Vec::new()
    }

    /// Dead-letters one copy and finishes it (unless the process stops
    /// first: then it stays unfinished).
    async fn dead_letter_job(&self, j: Job, stage: &'static str, reason: &str) {
        let why = DeadLetter {
            stage,
            plugin: Some((&j.router.0, &j.router.1)),
            reason,
            attempts: j.attempts,
        };
        if self
            .dead_letter(&j.record, &why, &self.dispatch.stop_signal())
            .await
            .is_ok()
        {
            j.finish();
        }
    }
}
