//! The data path for one batch of one partition, up to the dispatcher:
//!
//! ```text
//! records ─► filter chain ─► router ─► target queues (dispatch) ─► sinks
//!              │ dead-letter    │ dead-letter / no target
//!              ▼                ▼
//!          dead-letter topic   parking queue (wait) or dead-letter topic
//! ```
//!
//! [`Pipeline::process`] returns once every record of the batch is dropped,
//! dead-lettered, or queued for delivery; records finish later, in any
//! order, and their partition's [`OffsetTracker`](crate::offsets::OffsetTracker)
//! turns that into a commit watermark. It needs Tokio's multi-thread runtime
//! (plugin calls run in `block_in_place`).

use crate::capacity::{Health, Registry, Snapshot};
use crate::config::DeliveryConfig;
use crate::dispatch::{self, Dispatcher, Job, Partition};
use crate::metrics::Metrics;
use crate::plugin::bindings::types::Verdict;
use crate::plugin::slot::PluginManager;
use crate::record::Record;
use crate::sink::http::HttpSink;
use crate::sink::kafka::{DeadLetter, DeadLetterSink, TargetProducer};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// Delivery settings from `[delivery]`.
pub struct Delivery {
    pub http: HttpSink,
    pub cfg: DeliveryConfig,
}

impl Delivery {
    pub fn new(cfg: &DeliveryConfig) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            http: HttpSink::new(cfg)?,
            cfg: cfg.clone(),
        })
    }
}

/// Everything a partition worker needs; shared by all of them.
pub struct Pipeline {
    /// The filter chain and the router, each hot-swappable.
    pub plugins: Arc<PluginManager>,
    pub registry: Arc<Registry>,
    /// Delivery settings; replaced whole on config reload.
    pub delivery: ArcSwap<Delivery>,
    pub dead_letters: DeadLetterSink,
    pub metrics: Arc<Metrics>,
    /// Target queues, lanes and circuit breakers.
    pub dispatch: Dispatcher,
    /// `kafka.brokers` and `[kafka.options]`, for `kafka://` targets.
    pub kafka: (String, BTreeMap<String, String>),
    target_producer: OnceLock<Result<TargetProducer, String>>,
}

/// The batch was abandoned because the process is stopping; its offsets
/// must not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch abandoned at shutdown; its records will be consumed again")]
pub struct Abandoned;

impl Pipeline {
    pub fn new(
        plugins: Arc<PluginManager>,
        registry: Arc<Registry>,
        delivery: Delivery,
        dead_letters: DeadLetterSink,
        metrics: Arc<Metrics>,
        kafka: (String, BTreeMap<String, String>),
    ) -> Pipeline {
        Pipeline {
            plugins,
            registry,
            delivery: ArcSwap::from_pointee(delivery),
            dead_letters,
            metrics,
            dispatch: Dispatcher::default(),
            kafka,
            target_producer: OnceLock::new(),
        }
    }

    /// The producer of `kafka://` targets, created on first use.
    pub(crate) fn target_producer(&self) -> Result<&TargetProducer, String> {
        self.target_producer
            .get_or_init(|| {
                TargetProducer::new(&self.kafka.0, &self.kafka.1)
                    .map_err(|e| format!("failed to create the target producer: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Runs one batch (records of one partition, offset order) through the
    /// filter chain and the router and queues it for delivery. Waits for
    /// room in the partition's in-flight window and in the target queues.
    ///
    /// Errors: [`Abandoned`] on a hard stop (the records stay unfinished).
    pub async fn process(
        self: &Arc<Self>,
        part: &Arc<Partition>,
        batch: Vec<Record>,
    ) -> Result<(), Abandoned> {
        let offsets: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        let mut stop = self.dispatch.stop_signal();
        tokio::select! {
            admitted = part.admit(&offsets) => if !admitted {
                return Err(Abandoned);
            },
            _ = stop.wait_for(|s| *s) => return Err(Abandoned),
        }
        let (topic, partition) = (&*part.topic, part.partition);
        self.metrics.count("source", "in", batch.len());
        let mut live = batch;

        // Filter chain.
        let chain = self.plugins.chain();
        for slot in chain.iter() {
            if live.is_empty() {
                break;
            }
            // One version for the whole batch, even if a swap lands meanwhile.
            let f = slot.current();
            let refs: Vec<&Record> = live.iter().collect();
            // Plugin calls are synchronous and CPU-bound; some WASI imports
            // (guest stderr) block on Tokio, which only works off the async
            // worker role.
            let verdicts = tokio::task::block_in_place(|| f.filter(topic, partition, &refs));
            slot.check_health();
            let mut kept = Vec::with_capacity(live.len());
            let (mut dropped, mut transformed) = (0, 0);
            let mut dead = Vec::new();
            for (mut r, v) in live.into_iter().zip(verdicts) {
                match v {
                    Verdict::Keep => kept.push(r),
                    Verdict::Transform(rw) => {
                        crate::convert::apply_rewrite(&mut r, rw);
                        transformed += 1;
                        kept.push(r);
                    }
                    Verdict::Drop => {
                        dropped += 1;
                        part.finish_unrouted(r.offset);
                    }
                    Verdict::DeadLetter(reason) => dead.push((r, reason)),
                }
            }
            self.metrics
                .count("filter", "kept", kept.len() - transformed);
            self.metrics.count("filter", "transformed", transformed);
            self.metrics.count("filter", "dropped", dropped);
            if !dead.is_empty() {
                // Written off the worker: waiting here for each broker ack
                // (a linger plus a round trip) capped a partition at a few
                // batches per round trip. Their offsets stay unfinished, and
                // their window permits taken, until the dead-letter topic
                // acked them; on a hard stop they stay unfinished and are
                // consumed again.
                let (pipeline, part, f, stop) =
                    (self.clone(), part.clone(), f.clone(), stop.clone());
                tokio::spawn(async move {
                    let writes = dead.iter().map(|(r, reason)| {
                        let why = DeadLetter {
                            stage: "filter",
                            plugin: Some((&f.meta.name, &f.meta.hash)),
                            reason,
                            attempts: 0,
                        };
                        let (pipeline, part, stop) = (&pipeline, &part, &stop);
                        async move {
                            if pipeline.dead_letter(r, &why, stop).await.is_ok() {
                                part.finish_unrouted(r.offset);
                            }
                        }
                    });
                    futures::future::join_all(writes).await;
                });
            }
            live = kept;
        }
        if live.is_empty() {
            return Ok(());
        }

        // Route and queue.
        let meta = &self.plugins.router.current().meta;
        let router = Arc::new((meta.name.clone(), meta.hash.clone()));
        let jobs: Vec<Job> = live
            .into_iter()
            .map(|r| {
                let key = dispatch::key_hash(r.key.as_deref());
                Job::new(Arc::new(r), part.clone(), key, router.clone())
            })
            .collect();
        self.place(jobs).await;
        if self.dispatch.stopped() {
            return Err(Abandoned);
        }
        Ok(())
    }

    /// Writes one dead letter, retrying with backoff until the broker acks
    /// or shutdown.
    pub(crate) async fn dead_letter(
        &self,
        r: &Record,
        why: &DeadLetter<'_>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Abandoned> {
        let mut backoff = dispatch::schedule(&self.delivery.load().cfg, None);
        loop {
            match self.dead_letters.send(r, why).await {
                Ok(()) => {
                    self.metrics.count(why.stage, "dead_lettered", 1);
                    self.metrics
                        .dead_letters
                        .with_label_values(&[why.stage])
                        .inc();
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(record = %r.id(), error = %e, "dead-letter write failed; retrying");
                    if stopping(shutdown) {
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

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// The host's built-in policy (router `default`, a router that chose only
/// down targets, or none that could decide): weighted power of two choices
/// over healthy targets by `(own in-flight + records placed in this batch) /
/// (capacity × weight)` — CDRS's own counts, so stale or missing heartbeats
/// cannot mislead it (Mitzenmacher 2001). Degraded targets only when no
/// healthy one exists. `None` if all are down.
pub fn fallback(snapshot: &Snapshot, extra: &[u32]) -> Option<usize> {
    let load = |i: usize| {
        let t = &snapshot.targets[i];
        (f64::from(t.own_inflight) + f64::from(extra[i]) + 1.0)
            / (f64::from(t.capacity) * f64::from(t.weight)).max(1.0)
    };
    for wanted in [Health::Healthy, Health::Degraded] {
        let up: Vec<usize> = (0..snapshot.targets.len())
            .filter(|&i| snapshot.targets[i].health == wanted)
            .collect();
        match up.len() {
            0 => continue,
            1 => return Some(up[0]),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (up[a], up[b]);
                return Some(if load(a) <= load(b) { a } else { b });
            }
        }
    }
    None
}
