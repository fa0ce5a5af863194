//! Source: one rdkafka consumer in the consumer group (cooperative-sticky
//! assignment). Each assigned partition gets its own fetch queue, split
//! from the consumer queue before its fetch starts, and one worker task
//! that reads it in batches (`rd_kafka_consume_batch_queue`: one lock and
//! one clock read per batch, not per record) and hands each batch to the
//! pipeline. The consumer queue itself then carries only rebalances,
//! commit results and errors, which the source loop serves.
//!
//! Guarantees:
//! * at-least-once: `enable.auto.offset.store=false`; each partition's
//!   [`Partition`] stores its commit watermark — the lowest offset not yet
//!   delivered, dropped or dead-lettered — whenever it moves. librdkafka
//!   auto-commits stored offsets (every `kafka::AUTO_COMMIT_INTERVAL_MS`); revoke and shutdown commit synchronously.
//! * per-partition order: one reader per partition queue, batches handed to
//!   the pipeline in offset order.
//! * bounded memory: a partition holds at most its in-flight window
//!   (`pipeline.max_inflight_records`) in the pipeline, one batch being
//!   read, and librdkafka's prefetch in its queue. While the window is full
//!   the worker does not read; once the queue holds
//!   `pipeline.prefetch_records` records (librdkafka's `queued.min.messages`)
//!   or [`crate::kafka::PREFETCH_KBYTES`] (`queued.max.messages.kbytes`), both per
//!   partition because each queue is its own, librdkafka stops fetching
//!   the partition until the worker has read below them. Other partitions
//!   keep flowing; nothing is paused, so no prefetch is dropped and fetched
//!   twice.
//! * revoke (rebalance): the revoked partitions take no new batches; their
//!   records in flight get up to `pipeline.revoke_drain_ms` to finish; the
//!   watermark is stored and committed; only then does the callback return
//!   and the partitions go. Records read but not started are read again by
//!   the next owner.
//! * shutdown: stop reading, give records in flight up to
//!   `pipeline.shutdown_grace_ms`, stop the dispatcher, commit, leave.

use crate::config::{KafkaConfig, PipelineConfig};
use crate::dispatch::{Destination, Partition};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::record::Record;
use futures::StreamExt;
use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// A partition's own fetch queue, split from the consumer queue
/// (`rd_kafka_queue_get_partition` + `rd_kafka_queue_forward(q, NULL)`),
/// as rust-rdkafka's `split_partition_queue` does, but read in batches.
///
/// librdkafka keeps a queue unforwarded once the application has set its
/// forwarding, so a later fetch start does not route it back to the
/// consumer queue; splitting before the partition is assigned means no
/// record of it ever lands there.
pub struct PartitionQueue {
    queue: *mut rd::rd_kafka_queue_t,
    /// Woken by librdkafka (on one of its threads, queue lock held) when a
    /// record lands on the empty queue; and by the source on revoke.
    ready: Arc<Notify>,
    /// False once the partition is revoked: reads (made under this lock)
    /// take nothing more. A revoked worker must not read: if the partition
    /// came back to this consumer, a new worker reads the same librdkafka
    /// queue, and what the old one took and dropped would be missing from
    /// the new one's offsets (its watermark would pass over them).
    open: Mutex<bool>,
}

// SAFETY: librdkafka queue handles are thread-safe (every operation takes
// the queue's lock); the handle is destroyed once, on drop.
unsafe impl Send for PartitionQueue {}
unsafe impl Sync for PartitionQueue {}

unsafe extern "C" fn queue_nonempty(_: *mut rd::rd_kafka_t, opaque: *mut std::ffi::c_void) {
    // SAFETY: `opaque` is the `Notify` of a live `PartitionQueue`: the
    // callback is disabled in its `drop` before the `Arc` can go.
    let ready = unsafe { &*(opaque as *const Notify) };
    ready.notify_one();
}

impl PartitionQueue {
    /// Splits the fetch queue of `topic` [`partition`] from the consumer
    /// queue of `c`. `None` if librdkafka has no such queue (a producer
    /// handle; not the case for a consumer) or the topic name holds a NUL.
    fn split(c: &BaseConsumer<SourceContext>, topic: &str, partition: i32) -> Option<Self> {
        let name = std::ffi::CString::new(topic).ok()?;
        // SAFETY: a valid client handle and a NUL-terminated name; the
        // returned handle is ours to destroy.
        let queue = unsafe {
            rd::rd_kafka_queue_get_partition(c.client().native_ptr(), name.as_ptr(), partition)
        };
        if queue.is_null() {
            return None;
        }
        let ready = Arc::new(Notify::new());
        // SAFETY: `queue` is valid; the opaque outlives the callback (see
        // `queue_nonempty`).
        unsafe {
            rd::rd_kafka_queue_forward(queue, std::ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(
                queue,
                Some(queue_nonempty),
                Arc::as_ptr(&ready) as *mut std::ffi::c_void,
            );
        }
        Some(PartitionQueue {
            queue,
            ready,
            open: Mutex::new(true),
        })
    }

    /// Records waiting in the queue (prefetched, not yet read).
    fn len(&self) -> usize {
        // SAFETY: `queue` is valid until drop.
        unsafe { rd::rd_kafka_queue_length(self.queue) }
    }

    /// Moves up to `max` records out of the queue into `out`, without
    /// waiting; librdkafka's errors for the partition are logged and
    /// skipped. Returns how many messages were taken (records and errors).
    fn read(&self, topic: &Arc<str>, out: &mut Vec<Record>, max: usize) -> usize {
        let open = self.open.lock().expect("partition queue lock");
        if !*open {
            return 0;
        }
        let mut raw: Vec<*mut rd::rd_kafka_message_t> = vec![std::ptr::null_mut(); max];
        // SAFETY: `raw` has room for `max` message pointers; each returned
        // message is ours and destroyed below.
        let n = unsafe { rd::rd_kafka_consume_batch_queue(self.queue, 0, raw.as_mut_ptr(), max) };
        let n = usize::try_from(n).unwrap_or(0);
        for &m in &raw[..n] {
            // SAFETY: `m` is a valid message until destroyed right after.
            match unsafe { crate::kafka::record_from_raw(m, topic) } {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(topic = %topic, error = %e, "consumer error"),
            }
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
        n
    }
}

impl PartitionQueue {
    /// Stops all reads (revoke): returns once a read in progress is done.
    fn close(&self) {
        *self.open.lock().expect("partition queue lock") = false;
        self.ready.notify_one();
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: `queue` is valid; after disabling the callback librdkafka
        // no longer touches `ready`.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// One assigned partition: its queue, once the source loop has started
/// its worker, its tracker, and librdkafka's last statistics of it.
struct Assigned {
    queue: Arc<PartitionQueue>,
    part: Option<Arc<Partition>>,
    offsets: Option<OffsetStats>,
}

/// A partition's offsets from librdkafka's statistics.
#[derive(Debug, Clone, Copy)]
struct OffsetStats {
    committed: i64,
    high_watermark: i64,
    lag_records: i64,
    lag_seconds: f64,
}

type Assignment = Arc<Mutex<HashMap<(Arc<str>, i32), Assigned>>>;

/// The partitions assigned to this process, as `GET /v1/partitions` and the
/// dashboard show them. Cheap to clone; made before the consumer
/// ([`consumer`]) so the admin API can hold it.
#[derive(Clone, Default)]
pub struct Partitions {
    assigned: Assignment,
    /// `pipeline.prefetch_records`.
    prefetch_limit: usize,
}

/// One assigned partition's state.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Offsets, lag and lag seconds from librdkafka's statistics (every
    /// `statistics.interval.ms`); none until the first.
    pub committed_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag_records: Option<i64>,
    pub lag_seconds: Option<f64>,
    /// Read and not finished.
    pub inflight_records: usize,
    /// Fetched and not yet read by the partition's worker.
    pub prefetched_records: usize,
    /// Reading waits: the in-flight window or the prefetch is full.
    pub held_back: bool,
}

impl Partitions {
    /// `prefetch_limit`: `pipeline.prefetch_records`.
    pub fn new(prefetch_limit: usize) -> Partitions {
        Partitions {
            assigned: Assignment::default(),
            prefetch_limit,
        }
    }

    /// The partition of `topic` where records of the key with hash `key`
    /// are in flight, and where they are bound to; `None` if none is.
    pub fn key_binding(&self, topic: &str, key: u64) -> Option<(i32, Destination)> {
        let map = self.assigned.lock().expect("assignment lock");
        map.iter()
            .filter(|((t, _), _)| &**t == topic)
            .find_map(|((_, p), a)| Some((*p, a.part.as_ref()?.bound_to(key)?)))
    }

    /// Every assigned partition, by topic and partition.
    pub fn status(&self) -> Vec<PartitionStatus> {
        let map = self.assigned.lock().expect("assignment lock");
        let mut out: Vec<PartitionStatus> = map
            .iter()
            .map(|((topic, p), a)| {
                let prefetched = a.queue.len();
                let inflight = a.part.as_ref().map_or(0, |x| x.pending());
                let window_full = a.part.as_ref().is_some_and(|x| x.window_full());
                PartitionStatus {
                    topic: topic.to_string(),
                    partition: *p,
                    committed_offset: a.offsets.map(|o| o.committed),
                    high_watermark: a.offsets.map(|o| o.high_watermark),
                    lag_records: a.offsets.map(|o| o.lag_records),
                    lag_seconds: a.offsets.map(|o| o.lag_seconds),
                    inflight_records: inflight,
                    prefetched_records: prefetched,
                    held_back: window_full
                        || (self.prefetch_limit > 0 && prefetched >= self.prefetch_limit),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }
}

/// Consumer context: splits assigned partitions' queues, drains revoked
/// partitions, logs rebalances and commit failures, tracks readiness.
pub struct SourceContext {
    /// Set once the consumer has joined its group (first assignment, even empty).
    pub joined: Arc<AtomicBool>,
    assigned: Assignment,
    /// Wakes the source loop to start workers for new partitions.
    new_partitions: Arc<Notify>,
    revoke_drain: Duration,
    metrics: Arc<Metrics>,
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (`statistics.interval.ms`): the lag of
    /// each assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut map = self.assigned.lock().expect("assignment lock");
        for (topic, t) in &statistics.topics {
            for (&p, part) in &t.partitions {
                let key: (Arc<str>, i32) = (Arc::from(topic.as_str()), p);
                let Some(a) = map.get_mut(&key).filter(|_| part.consumer_lag >= 0) else {
                    continue;
                };
                let lag_seconds = match a.part.as_ref().and_then(|x| x.oldest_timestamp_ms()) {
                    Some(ts) if part.consumer_lag > 0 => (now_ms - ts).max(0) as f64 / 1000.0,
                    _ => 0.0,
                };
                a.offsets = Some(OffsetStats {
                    committed: part.committed_offset,
                    high_watermark: part.hi_offset,
                    lag_records: part.consumer_lag,
                    lag_seconds,
                });
                let labels = [topic.as_str(), &p.to_string()];
                self.metrics
                    .partition_lag
                    .with_label_values(&labels)
                    .set(part.consumer_lag);
                self.metrics
                    .partition_lag_seconds
                    .with_label_values(&labels)
                    .set(lag_seconds);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                self.metrics.events.publish(
                    "partition.assigned",
                    serde_json::json!({"partitions": partitions(tpl)}),
                );
                // Before the assign starts their fetch (rust-rdkafka assigns
                // after this callback).
                let mut map = self.assigned.lock().expect("assignment lock");
                for e in tpl.elements() {
                    let key: (Arc<str>, i32) = (Arc::from(e.topic()), e.partition());
                    // Already ours (an assign without a revoke before it):
                    // keep its one reader.
                    if map.contains_key(&key) {
                        continue;
                    }
                    match PartitionQueue::split(c, e.topic(), e.partition()) {
                        Some(q) => {
                            let queue = Arc::new(q);
                            map.insert(
                                key,
                                Assigned {
                                    queue,
                                    part: None,
                                    offsets: None,
                                },
                            );
                        }
                        None => tracing::error!(
                            topic = e.topic(),
                            partition = e.partition(),
                            "could not split the partition's fetch queue; it is not read"
                        ),
                    }
                }
                self.new_partitions.notify_one();
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked; draining");
                self.metrics.events.publish(
                    "partition.revoked",
                    serde_json::json!({"partitions": partitions(tpl)}),
                );
                for e in tpl.elements() {
                    let labels = [e.topic(), &e.partition().to_string()];
                    let _ = self.metrics.partition_lag.remove_label_values(&labels);
                    let _ = self
                        .metrics
                        .partition_lag_seconds
                        .remove_label_values(&labels);
                }
                let gone: Vec<Assigned> = {
                    let mut map = self.assigned.lock().expect("assignment lock");
                    tpl.elements()
                        .iter()
                        .filter_map(|e| {
                            let key: (Arc<str>, i32) = (Arc::from(e.topic()), e.partition());
                            map.remove(&key)
                        })
                        .collect()
                };
                let parts: Vec<Arc<Partition>> = gone
                    .iter()
                    .filter_map(|a| {
                        if let Some(p) = &a.part {
                            p.revoked.store(true, Ordering::Relaxed);
                        }
                        a.queue.close();
                        a.part.clone()
                    })
                    .collect();
                let drained = block_while(self.revoke_drain, || {
                    parts.iter().map(|p| p.pending()).sum::<usize>() > 0
                });
                for p in &parts {
                    p.store_now();
                }
                if !drained {
                    let left: usize = parts.iter().map(|p| p.pending()).sum();
                    tracing::warn!(records = left, drain = ?self.revoke_drain,
                        "revoke drain time over; the next owner reads these records again");
                }
                if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(error = %e, "commit on revoke");
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.joined.store(true, Ordering::Relaxed);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, partitions = %describe(offsets), "offset commit failed");
        }
    }
}

/// Blocks the calling thread while `busy()` (polling every 5 ms), at most
/// `limit`; true if it stopped being busy. On a Tokio multi-thread worker
/// (librdkafka runs the rebalance callback inside `recv()`), the worker's
/// other tasks move elsewhere meanwhile, so deliveries go on.
fn block_while(limit: Duration, mut busy: impl FnMut() -> bool) -> bool {
    let mut wait = || {
        let deadline = Instant::now() + limit;
        while busy() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `[{"topic", "partition"}, ...]` for an event.
fn partitions(tpl: &TopicPartitionList) -> serde_json::Value {
    tpl.elements()
        .iter()
        .map(|e| serde_json::json!({"topic": e.topic(), "partition": e.partition()}))
        .collect()
}

/// The consumer type CDRS uses.
pub type Source = StreamConsumer<SourceContext>;

/// Creates the group consumer and subscribes to `kafka.topics`.
///
/// # Errors
/// librdkafka refuses the settings (`[kafka.options]`) or the subscription.
pub fn consumer(
    cfg: &KafkaConfig,
    pipeline: &PipelineConfig,
    joined: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    partitions: &Partitions,
) -> anyhow::Result<Source> {
    let c = crate::kafka::consumer_config(cfg, pipeline);
    let context = SourceContext {
        joined,
        assigned: partitions.assigned.clone(),
        new_partitions: Arc::new(Notify::new()),
        revoke_drain: Duration::from_millis(pipeline.revoke_drain_ms),
        metrics,
    };
    let consumer: Source = c.create_with_context(context)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Serves the consumer (rebalances, commits, errors) and starts a worker
/// per assigned partition until `shutdown`; then drains (at most
/// `pipeline.shutdown_grace_ms`) and commits.
pub async fn run(
    consumer: Arc<Source>,
    pipeline: Arc<Pipeline>,
    cfg: PipelineConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let assigned = consumer.context().assigned.clone();
    let new_partitions = consumer.context().new_partitions.clone();
    let metrics = pipeline.metrics.clone();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records do not come this way (every assigned partition's queue is
    // split before its fetch starts); rebalances, commit results and
    // errors do, served inside `next()`.
    let mut stream = consumer.stream();
    // Partitions with a prefetch gauge.
    let mut labelled: HashSet<(Arc<str>, i32)> = HashSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = new_partitions.notified() => {
                let mut map = assigned.lock().expect("assignment lock");
                for ((topic, p), a) in map.iter_mut().filter(|(_, a)| a.part.is_none()) {
                    let part = partition(&consumer, topic, *p, &cfg, &metrics);
                    tasks.spawn(partition_worker(
                        part.clone(),
                        a.queue.clone(),
                        pipeline.clone(),
                        cfg.clone(),
                    ));
                    a.part = Some(part);
                }
            }
            _ = tick.tick() => {
                // Workers of revoked partitions have returned: reap them.
                while tasks.try_join_next().is_some() {}
                let map = assigned.lock().expect("assignment lock");
                for ((topic, p), a) in map.iter() {
                    metrics
                        .partition_prefetched
                        .with_label_values(&[&**topic, &p.to_string()])
                        .set(i64::try_from(a.queue.len()).unwrap_or(i64::MAX));
                }
                // Revoked partitions leave the gauge.
                labelled.retain(|(topic, p)| {
                    let kept = map.contains_key(&(topic.clone(), *p));
                    if !kept {
                        let _ = metrics
                            .partition_prefetched
                            .remove_label_values(&[&**topic, &p.to_string()]);
                    }
                    kept
                });
                labelled.extend(map.keys().cloned());
            }
            m = stream.next() => match m {
                Some(Ok(m)) => tracing::error!(topic = m.topic(), partition = m.partition(),
                    offset = m.offset(), "record on the consumer queue of a split partition; not read here, read again after a restart"),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => break,
            },
        }
    }
    drop(stream);

    let parts: Vec<Arc<Partition>> = {
        let map = assigned.lock().expect("assignment lock");
        map.values().filter_map(|a| a.part.clone()).collect()
    };
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    tracing::info!(
        partitions = parts.len(),
        ?grace,
        "shutting down: draining records in flight"
    );
    for p in &parts {
        p.revoked.store(true, Ordering::Relaxed);
    }
    for a in assigned.lock().expect("assignment lock").values() {
        a.queue.close();
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let left: usize = parts.iter().map(|p| p.pending()).sum();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                records = left,
                ?grace,
                "shutdown grace period over; records in flight will be read again"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pipeline.dispatch.stop();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    for p in &parts {
        p.store_now();
    }
    // The queues go before the consumer does.
    assigned.lock().expect("assignment lock").clear();
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("final offsets committed"),
        // Every stored offset was already auto-committed.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => tracing::info!("final offsets committed (nothing new since the last auto-commit)"),
        Err(e) => tracing::warn!(error = %e, "final commit failed"),
    }
    consumer.unsubscribe();
    Ok(())
}

/// The tracker of a newly seen partition; it stores its watermark in
/// `consumer` (weakly held: the consumer's context holds the partition).
fn partition(
    consumer: &Arc<Source>,
    topic: &Arc<str>,
    partition: i32,
    cfg: &PipelineConfig,
    metrics: &Metrics,
) -> Arc<Partition> {
    let weak: Weak<Source> = Arc::downgrade(consumer);
    let offsets_stored = metrics.offsets_stored.with_label_values(&[&**topic]);
    let t = topic.clone();
    Partition::new(
        topic.clone(),
        partition,
        cfg.max_inflight_records,
        metrics,
        move |watermark| {
            let Some(c) = weak.upgrade() else { return };
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&t, partition, Offset::Offset(watermark))
                .is_ok()
            {
                match c.store_offsets(&tpl) {
                    Ok(()) => offsets_stored.inc(),
                    Err(e) => tracing::debug!(topic = %t, partition, error = %e,
                        "offset store failed (partition revoked?)"),
                }
            }
        },
    )
}

/// Reads one partition's queue in batches of up to `pipeline.batch_size`
/// records (offset order) and hands each to the pipeline; a batch short of
/// full waits up to `pipeline.batch_linger_ms` for more. While the
/// partition's in-flight window is full, `process` waits and nothing is
/// read. Stops when the partition is revoked or on a hard stop.
async fn partition_worker(
    part: Arc<Partition>,
    queue: Arc<PartitionQueue>,
    pipeline: Arc<Pipeline>,
    cfg: PipelineConfig,
) {
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let size = cfg.batch_size;
    loop {
        let mut batch = Vec::with_capacity(size);
        // Wait for the first records. (A wake-up that comes while the
        // worker is reading is kept by `Notify` as a permit: none is lost.)
        loop {
            if part.revoked.load(Ordering::Relaxed) {
                return;
            }
            queue.read(&part.topic, &mut batch, size);
            if !batch.is_empty() {
                break;
            }
            queue.ready.notified().await;
        }
        // Fill the batch, up to the linger time.
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < size {
            let room = size - batch.len();
            if queue.read(&part.topic, &mut batch, room) > 0 {
                continue;
            }
            if tokio::time::timeout_at(deadline, queue.ready.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        if part.revoked.load(Ordering::Relaxed) {
            return;
        }
        let from = batch[0].offset;
        if let Err(e) = pipeline.process(&part, batch).await {
            tracing::debug!(topic = %part.topic, partition = part.partition, from_offset = from, error = %e, "partition worker stopped");
            return;
        }
    }
}
