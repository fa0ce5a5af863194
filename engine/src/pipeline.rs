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

use crate::dispatch::{self, Abandoned, Dispatcher, Job, Partition, PlacedBy};
use crate::metrics::Metrics;
use crate::plugin::bindings::types::Verdict;
use crate::plugin::slot::PluginManager;
use crate::record::Record;
use crate::route::Routing;
use crate::sink::kafka::DeadLetter;
use crate::telemetry::{RecordTrace, Telemetry};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything a partition worker needs; shared by all of them.
pub struct Pipeline {
    /// The filter chain and the router, each hot-swappable.
    pub plugins: Arc<PluginManager>,
    pub metrics: Arc<Metrics>,
    /// The router step: router plugin, decision table, re-routing.
    pub routing: Arc<Routing>,
    /// Target queues, lanes, retries, circuit breakers, dead letters.
    pub dispatch: Arc<Dispatcher>,
    /// Traces of records with a `traceparent`, when `[telemetry]` is on.
    pub telemetry: Option<Arc<Telemetry>>,
}

impl Pipeline {
    pub fn new(
        plugins: Arc<PluginManager>,
        dispatch: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let routing = Routing::new(plugins.router.clone(), dispatch.clone(), metrics.clone());
        routing.set_shadow(plugins.shadow.clone());
        Pipeline {
            plugins,
            metrics,
            routing,
            dispatch,
            telemetry: None,
        }
    }

    /// The same pipeline, tracing records with `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Option<Arc<Telemetry>>) -> Pipeline {
        self.telemetry = telemetry;
        self
    }

    /// Runs one batch (records of one partition, offset order) through the
    /// filter chain and the router and queues it for delivery. Waits for
    /// room in the partition's in-flight window and in the target queues.
    ///
    /// # Errors
    /// [`Abandoned`] on a hard stop (the records stay unfinished).
    pub async fn process(
        self: &Arc<Self>,
        part: &Arc<Partition>,
        batch: Vec<Record>,
    ) -> Result<(), Abandoned> {
        let mut batch = batch;
        let offsets: Vec<(i64, i64)> = batch
            .iter()
            .map(|r| (r.offset, r.timestamp_ms.unwrap_or(0)))
            .collect();
        let mut stop = self.dispatch.stop_signal();
        tokio::select! {
            admitted = part.admit(&offsets) => if !admitted {
                return Err(Abandoned);
            },
            _ = stop.wait_for(|s| *s) => return Err(Abandoned),
        }
        let (topic, partition) = (&*part.topic, part.partition);
        self.metrics.count("source", "in", batch.len());
        // Records with a sampled `traceparent`: their `process` spans end
        // when this batch is routed, their `deliver` spans go with the jobs.
        let mut process_spans = Vec::new();
        let mut traces: HashMap<i64, Arc<RecordTrace>> = HashMap::new();
        if let Some(t) = &self.telemetry {
            for r in &mut batch {
                if let Some((span, trace)) = t.start(r) {
                    process_spans.push(span);
                    traces.insert(r.offset, trace);
                }
            }
        }
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
                        crate::plugin::convert::apply_rewrite(&mut r, rw);
                        transformed += 1;
                        kept.push(r);
                    }
                    Verdict::Drop => {
                        dropped += 1;
                        part.finish_unrouted(r.offset);
                    }
                    Verdict::DeadLetter(reason) => {
                        let trace = traces.remove(&r.offset);
                        dead.push((r, reason, trace));
                    }
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
                let (dispatch, part, f, stop) =
                    (self.dispatch.clone(), part.clone(), f.clone(), stop.clone());
                tokio::spawn(async move {
                    let writes = dead.iter().map(|(r, reason, trace)| {
                        let why = DeadLetter {
                            stage: "filter",
                            plugin: Some((&f.meta.name, &f.meta.hash)),
                            reason,
                            attempts: 0,
                        };
                        let (dispatch, part, stop) = (&dispatch, &part, &stop);
                        async move {
                            if dispatch.dead_letter(r, &why, stop).await.is_ok() {
                                if let Some(t) = trace {
                                    t.dead_lettered(&r.id(), "filter", reason);
                                }
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
        let router = Arc::new(PlacedBy {
            name: meta.name.clone(),
            version: meta.hash.clone(),
        });
        let jobs: Vec<Job> = live
            .into_iter()
            .map(|r| {
                let key = dispatch::key_hash(r.key.as_deref());
                let trace = traces.remove(&r.offset);
                Job::new(Arc::new(r), part.clone(), key, router.clone()).with_trace(trace)
            })
            .collect();
        self.routing.place(jobs).await;
        drop(process_spans);
        if self.dispatch.stopped() {
            return Err(Abandoned);
        }
        Ok(())
    }
}
