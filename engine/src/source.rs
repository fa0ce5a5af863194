//! Source: one rdkafka consumer in the consumer group (cooperative-sticky
//! assignment), records handed to one worker task per partition, in
//! per-partition batches.
//!
//! Guarantees:
//! * at-least-once: `enable.auto.offset.store=false`; each partition's
//!   [`Partition`] stores its commit watermark — the lowest offset not yet
//!   delivered, dropped or dead-lettered — whenever it moves. librdkafka
//!   auto-commits stored offsets; revoke and shutdown commit synchronously.
//! * bounded memory: a partition holds at most `pipeline.partition_queue`
//!   records in its worker's channel, `pipeline.pause_after_records` in a
//!   stash behind it, plus its in-flight window
//!   (`pipeline.max_inflight_records`). When the stash fills, the partition
//!   is **paused** (`Consumer::pause`); it is resumed once the stash is down
//!   to half, so the fetch that resuming starts overlaps with the records
//!   still stashed (librdkafka fetches from the offset after the last
//!   record it handed over, so nothing is read twice or skipped). Other
//!   partitions keep flowing. When every partition still fetching is full,
//!   the last one is not paused: the source stops reading instead (at most
//!   1 s at a time), so librdkafka keeps fetching and notices resumes
//!   promptly; its prefetch stays within `queued.min.messages` and
//!   `queued.max.messages.kbytes`.
//! * revoke (rebalance): the revoked partitions take no new batches; their
//!   records in flight get up to `pipeline.revoke_drain_ms` to finish; the
//!   watermark is stored and committed; only then does the callback return
//!   and the partitions go. Records read but not started are read again by
//!   the next owner.
//! * shutdown: stop fetching, give records in flight up to
//!   `pipeline.shutdown_grace_ms`, stop the dispatcher, commit, leave.

use crate::config::{KafkaConfig, PipelineConfig};
use crate::convert;
use crate::dispatch::Partition;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::record::Record;
use futures::StreamExt;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// One assigned partition as the consumer loop sees it.
struct Assigned {
    part: Arc<Partition>,
    tx: mpsc::Sender<Record>,
    /// Records fetched while the partition is paused, in offset order.
    stash: VecDeque<Record>,
    paused: bool,
}

impl Assigned {
    /// Pauses or resumes fetching the partition (backpressure).
    fn set_paused(&mut self, consumer: &Source, metrics: &Metrics, paused: bool) {
        self.paused = paused;
        let (t, p) = (&*self.part.topic, self.part.partition);
        let result = if paused {
            consumer.pause(&one(t, p))
        } else {
            consumer.resume(&one(t, p))
        };
        if let Err(e) = result {
            tracing::debug!(topic = t, partition = p, paused, error = %e, "pause/resume failed");
        }
        metrics
            .partition_paused
            .with_label_values(&[t, &p.to_string()])
            .set(i64::from(paused));
        tracing::debug!(
            topic = t,
            partition = p,
            paused,
            "partition backpressure changed"
        );
    }

    /// Moves stashed records into the worker's channel while it has room.
    fn flush(&mut self) {
        while let Some(r) = self.stash.pop_front() {
            match self.tx.try_send(r) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => {
                    self.stash.push_front(r);
                    return;
                }
                // The worker stopped (hard stop): read again later.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.stash.clear();
                    return;
                }
            }
        }
    }
}

type Assignment = Arc<Mutex<HashMap<(Arc<str>, i32), Assigned>>>;

/// Most records the source takes from the consumer at once.
const SOURCE_CHUNK: usize = 1024;

/// Consumer context: drains revoked partitions, logs rebalances and commit
/// failures, tracks readiness.
pub struct SourceContext {
    /// Set once the consumer has joined its group (first assignment, even empty).
    pub joined: Arc<AtomicBool>,
    assigned: Assignment,
    revoke_drain: Duration,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked; draining");
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
                let parts: Vec<Arc<Partition>> = gone.into_iter().map(|a| a.part).collect();
                let drained = block_while(self.revoke_drain, || {
                    parts
                        .iter()
                        .map(|p| {
                            p.revoked.store(true, Ordering::Relaxed);
                            p.pending()
                        })
                        .sum::<usize>()
                        > 0
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

/// librdkafka's `fetch.queue.backoff.ms` for the source consumer, unless
/// `[kafka.options]` sets it: how long a partition whose prefetch queue is
/// over `queued.min.messages` (100,000) or `queued.max.messages.kbytes`
/// waits before its next fetch. librdkafka's default, 1000 ms, left the
/// pipeline idle for ~0.8 s at a time once it had fallen behind by that
/// much: in `cdrs bench` on Tansu, a consume → produce loop with one such
/// stall per 500,000 records ran at ~250,000 instead of ~450,000 records/s.
/// librdkafka's CONFIGURATION.md: "This property may need to be decreased
/// if the queue thresholds are set low and the application is experiencing
/// long (~1s) delays between messages."
pub const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// The consumer type CDRS uses.
pub type Source = StreamConsumer<SourceContext>;

/// Creates the group consumer and subscribes to `kafka.topics`.
pub fn consumer(
    cfg: &KafkaConfig,
    pipeline: &PipelineConfig,
    joined: Arc<AtomicBool>,
) -> anyhow::Result<Source> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    let context = SourceContext {
        joined,
        assigned: Assignment::default(),
        revoke_drain: Duration::from_millis(pipeline.revoke_drain_ms),
    };
    let consumer: Source = c.create_with_context(context)?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Reads records until `shutdown`, feeding per-partition workers and
/// pausing partitions whose worker is full; then drains (at most
/// `pipeline.shutdown_grace_ms`) and commits.
pub async fn run(
    consumer: Arc<Source>,
    pipeline: Arc<Pipeline>,
    cfg: PipelineConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let assigned = consumer.context().assigned.clone();
    let metrics = pipeline.metrics.clone();
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Records are taken in chunks: all the consumer has ready (up to
    // SOURCE_CHUNK), then one lock of the assignment per chunk. A `recv` and
    // a `select!` per record were a third of the pipeline's own CPU in
    // `cdrs bench`.
    let mut stream = consumer.stream().ready_chunks(SOURCE_CHUNK);
    // Since when the source has held off reading (see `backpressure`).
    let mut held_since: Option<Instant> = None;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                let threshold = cfg.pause_after_records;
                resume_drained(&consumer, &assigned, &metrics, threshold / 2);
                let may_hold = held_since.is_none_or(|t| t.elapsed() < HOLD_MAX);
                let mut map = assigned.lock().expect("assignment lock");
                let hold = backpressure(&mut map, &consumer, &metrics, threshold, may_hold);
                held_since = hold.then(|| held_since.unwrap_or_else(Instant::now));
                continue;
            }
            chunk = stream.next(), if held_since.is_none() => match chunk {
                Some(chunk) => chunk,
                None => break,
            },
        };
        let records: Vec<Record> = chunk
            .into_iter()
            .filter_map(|m| match m {
                Ok(m) => {
                    // Looked up by `&str`: an owned key per record was
                    // an allocation per record.
                    let topic = match topics.get(m.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(m.topic());
                            topics.insert(m.topic().to_string(), t.clone());
                            t
                        }
                    };
                    Some(convert::record_from_kafka(&m, &topic))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    None
                }
            })
            .collect();
        let mut map = assigned.lock().expect("assignment lock");
        for record in records {
            let key = (record.topic.clone(), record.partition);
            let a = map.entry(key).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(cfg.partition_queue);
                let part = partition(&consumer, &record.topic, record.partition, &cfg, &metrics);
                tasks.spawn(partition_worker(
                    part.clone(),
                    rx,
                    pipeline.clone(),
                    cfg.clone(),
                ));
                Assigned {
                    part,
                    tx,
                    stash: VecDeque::new(),
                    paused: false,
                }
            });
            // Records wait in the stash while the channel is full; only a
            // stash of `pause_after_records` pauses the partition. (Each
            // pause makes librdkafka drop what it prefetched for the
            // partition and fetch it again on resume: pausing whenever the
            // channel was full cut throughput by 7× in `cdrs bench`.)
            a.stash.push_back(record);
            a.flush();
        }
        let hold = backpressure(&mut map, &consumer, &metrics, cfg.pause_after_records, true);
        held_since = hold.then(Instant::now);
    }
    drop(stream);

    let parts: Vec<Arc<Partition>> = {
        let mut map = assigned.lock().expect("assignment lock");
        map.drain().map(|(_, a)| a.part).collect()
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

/// Longest the source holds off reading instead of pausing its last
/// fetching partition (see [`backpressure`]); then that one is paused too.
/// Far below `max.poll.interval.ms`, as the consumer is not polled meanwhile.
const HOLD_MAX: Duration = Duration::from_secs(1);

/// Pauses the partitions whose stash holds `threshold` records, but one:
/// when every partition still fetching is full, the last one stays
/// unpaused and the source holds off reading (returns `true`) until its
/// stash has room again, or until `may_hold` is false (held for
/// [`HOLD_MAX`]).
///
/// Why: a resumed partition is fetched again only when librdkafka's broker
/// thread next wakes up, and with every partition paused nothing wakes it:
/// in `cdrs bench` on Tansu, resuming after all six partitions had been
/// paused took 200–300 ms to show in a fetch, and the pipeline ran dry
/// meanwhile (confluent-kafka-go issue #630 shows the same wait, ~550 ms,
/// in librdkafka's debug log). The partition left unpaused keeps its
/// prefetch (bounded by librdkafka's `queued.min.messages` and
/// `queued.max.messages.kbytes`) and its fetches keep the broker thread
/// awake.
fn backpressure(
    map: &mut HashMap<(Arc<str>, i32), Assigned>,
    consumer: &Source,
    metrics: &Metrics,
    threshold: usize,
    may_hold: bool,
) -> bool {
    if !map
        .values()
        .any(|a| !a.paused && a.stash.len() >= threshold)
    {
        return false;
    }
    let mut parts: Vec<&mut Assigned> = map.values_mut().collect();
    let states: Vec<(bool, usize)> = parts.iter().map(|a| (a.paused, a.stash.len())).collect();
    let (pause, hold) = backpressure_plan(&states, threshold, may_hold);
    for i in pause {
        parts[i].set_paused(consumer, metrics, true);
    }
    hold
}

/// The decision of [`backpressure`] over `(paused, stashed records)` per
/// partition: the indexes to pause, and whether to hold off reading.
fn backpressure_plan(
    parts: &[(bool, usize)],
    threshold: usize,
    may_hold: bool,
) -> (Vec<usize>, bool) {
    let full = |&(paused, stashed): &(bool, usize)| !paused && stashed >= threshold;
    // Someone not full still fetches: pause every full partition.
    let mut keep_one = may_hold && !parts.iter().any(|p| !p.0 && !full(p));
    let mut pause = Vec::new();
    let mut hold = false;
    for (i, p) in parts.iter().enumerate() {
        if full(p) {
            if keep_one {
                keep_one = false;
                hold = true;
            } else {
                pause.push(i);
            }
        }
    }
    (pause, hold)
}

/// Feeds stashed records to their workers and resumes paused partitions
/// whose stash is down to `resume_at` records (a stash that is empty
/// also needs a channel at least half free).
///
/// Resuming before the stash is empty hides the fetch that resuming starts
/// (pausing dropped librdkafka's prefetch): waiting for an empty stash left
/// partitions idle for up to ~0.3 s at a time in `cdrs bench` on Tansu.
fn resume_drained(consumer: &Source, assigned: &Assignment, metrics: &Metrics, resume_at: usize) {
    let mut map = assigned.lock().expect("assignment lock");
    for a in map.values_mut() {
        a.flush();
        let room = if a.stash.is_empty() {
            a.tx.capacity() * 2 >= a.tx.max_capacity()
        } else {
            a.stash.len() <= resume_at
        };
        if a.paused && room {
            a.set_paused(consumer, metrics, false);
        }
    }
}

/// Batches one partition's records (offset order) and hands each batch to
/// the pipeline; stops when the partition is revoked or on a hard stop.
async fn partition_worker(
    part: Arc<Partition>,
    mut rx: mpsc::Receiver<Record>,
    pipeline: Arc<Pipeline>,
    cfg: PipelineConfig,
) {
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    while let Some(first) = rx.recv().await {
        if part.revoked.load(Ordering::Relaxed) {
            return;
        }
        let mut batch = Vec::with_capacity(cfg.batch_size.min(1024));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < cfg.batch_size {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => break,
                    }
                }
            }
        }
        let from = batch[0].offset;
        if let Err(e) = pipeline.process(&part, batch).await {
            tracing::debug!(topic = %part.topic, partition = part.partition, from_offset = from, error = %e, "partition worker stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backpressure_plan;

    #[test]
    fn full_partitions_are_paused_while_another_still_fetches() {
        // (paused, stashed), threshold 100.
        let parts = [(false, 100), (false, 10), (true, 300), (false, 150)];
        assert_eq!(backpressure_plan(&parts, 100, true), (vec![0, 3], false));
    }

    #[test]
    fn the_last_fetching_partition_is_held_not_paused() {
        let parts = [(true, 100), (false, 120), (true, 0)];
        assert_eq!(backpressure_plan(&parts, 100, true), (vec![], true));
        // Several full, none else fetching: one held, the others paused.
        let parts = [(false, 100), (false, 120), (true, 0)];
        assert_eq!(backpressure_plan(&parts, 100, true), (vec![1], true));
    }

    #[test]
    fn a_hold_that_lasted_too_long_pauses_it_too() {
        let parts = [(true, 100), (false, 120)];
        assert_eq!(backpressure_plan(&parts, 100, false), (vec![1], false));
    }

    #[test]
    fn nothing_full_nothing_done() {
        let parts = [(false, 99), (true, 500), (false, 0)];
        assert_eq!(backpressure_plan(&parts, 100, true), (vec![], false));
        assert_eq!(backpressure_plan(&[], 100, true), (vec![], false));
    }
}
