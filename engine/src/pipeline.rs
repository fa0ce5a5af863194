//! The data path for one batch of one partition:
//!
//! ```text
//! records ─► filter chain ─► router ─► per-target HTTP delivery ─► done
//!              │ dead-letter    │ dead-letter     │ failure: target marked
//!              ▼                ▼                 ▼ down, records routed again
//!          dead-letter topic ◄──┘
//! ```
//!
//! [`Pipeline::process`] returns only when every record of the batch is
//! delivered (2xx), dropped by a plugin, or acknowledged by the dead-letter
//! topic; only then may the caller store the batch's offsets. It needs Tokio's
//! multi-thread runtime (plugin calls run in `block_in_place`). When no target
//! can take a record it waits (exponential backoff with jitter) rather than
//! drop it; on shutdown it gives up the batch *without* success, so its
//! offsets are not committed and the records are consumed again later.

use crate::capacity::{Health, Registry, Snapshot};
use crate::metrics::Metrics;
use crate::plugin::bindings::types::Verdict;

use crate::config::DeliveryConfig;
use crate::plugin::router::Route;
use crate::record::Record;
use crate::reload::PluginManager;
use crate::sink::http::HttpSink;
use crate::sink::kafka::{DeadLetter, DeadLetterSink};
use arc_swap::ArcSwap;
use backon::BackoffBuilder;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Delivery settings from `[delivery]`.
pub struct Delivery {
    pub http: HttpSink,
    /// Records per POST at most (`delivery.max_batch`).
    pub max_post: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Delivery {
    pub fn new(cfg: &DeliveryConfig) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            http: HttpSink::new(cfg)?,
            max_post: cfg.max_batch,
            retry_initial: Duration::from_millis(cfg.retry_initial_ms),
            retry_max: Duration::from_millis(cfg.retry_max_ms),
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
}

/// The batch was abandoned because the process is shutting down; its offsets
/// must not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch abandoned at shutdown; its records will be consumed again")]
pub struct Abandoned;

impl Pipeline {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.delivery.load().retry_initial)
            .with_max_delay(self.delivery.load().retry_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Runs one batch (records of one partition, offset order) to completion.
    ///
    /// Errors: [`Abandoned`] if `shutdown` fired while records were still
    /// waiting for a target or for the dead-letter topic.
    pub async fn process(
        &self,
        topic: &str,
        partition: i32,
        batch: Vec<Record>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Abandoned> {
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
                    Verdict::Drop => dropped += 1,
                    Verdict::DeadLetter(reason) => dead.push((r, reason)),
                }
            }
            self.metrics
                .count("filter", "kept", kept.len() - transformed);
            self.metrics.count("filter", "transformed", transformed);
            self.metrics.count("filter", "dropped", dropped);
            for (r, reason) in &dead {
                let why = DeadLetter {
                    stage: "filter",
                    plugin: Some((&f.meta.name, &f.meta.hash)),
                    reason,
                };
                self.dead_letter(r, &why, shutdown).await?;
            }
            live = kept;
        }

        // Route and deliver until every record is placed.
        let mut pending: Vec<Record> = live;
        let mut backoff = self.backoff();
        while !pending.is_empty() {
            let snapshot = self.registry.snapshot();
            let refs: Vec<&Record> = pending.iter().collect();
            let router = self.plugins.router.current();
            let routes =
                tokio::task::block_in_place(|| router.route(&snapshot, topic, partition, &refs));
            self.plugins.router.check_health();
            let mut per_target: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
            let mut unplaced = Vec::new();
            let mut extra = vec![0u32; snapshot.targets.len()];
            let (mut routed, mut dropped, mut defaulted) = (0, 0, 0);
            for (p, route) in pending.into_iter().zip(routes) {
                let targets = match route {
                    Route::Targets(ts) => {
                        let up: Vec<usize> = ts
                            .into_iter()
                            .filter(|&t| snapshot.targets[t].health != Health::Down)
                            .collect();
                        if up.is_empty() {
                            defaulted += 1;
                            fallback(&snapshot, &extra).into_iter().collect()
                        } else {
                            routed += 1;
                            up
                        }
                    }
                    Route::Default => {
                        defaulted += 1;
                        fallback(&snapshot, &extra).into_iter().collect()
                    }
                    Route::Drop => {
                        dropped += 1;
                        continue;
                    }
                    Route::DeadLetter(reason) => {
                        let why = DeadLetter {
                            stage: "router",
                            plugin: Some((&router.meta.name, &router.meta.hash)),
                            reason: &reason,
                        };
                        self.dead_letter(&p, &why, shutdown).await?;
                        continue;
                    }
                };
                if targets.is_empty() {
                    unplaced.push(p);
                    continue;
                }
                for &t in &targets[1..] {
                    extra[t] += 1;
                    per_target.entry(t).or_default().push(p.clone());
                }
                extra[targets[0]] += 1;
                per_target.entry(targets[0]).or_default().push(p);
            }
            self.metrics.count("router", "routed", routed);
            self.metrics.count("router", "defaulted", defaulted);
            self.metrics.count("router", "dropped", dropped);

            let failed = self.deliver(&snapshot, per_target).await;
            let progress = unplaced.is_empty() && failed.is_empty();
            self.metrics.count("delivery", "rerouted", failed.len());
            pending = unplaced;
            pending.extend(failed);
            if !pending.is_empty() {
                if !progress {
                    // Nothing could take these records: wait, unless stopping.
                    let wait = backoff.next().unwrap_or(self.delivery.load().retry_max);
                    tracing::debug!(
                        topic,
                        partition,
                        waiting = pending.len(),
                        ?wait,
                        "no target for records; backing off"
                    );
                    if stopping(shutdown) {
                        return Err(Abandoned);
                    }
                    let mut s = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.changed() => return Err(Abandoned),
                    }
                } else {
                    backoff = self.backoff();
                }
            }
        }
        Ok(())
    }

    /// Delivers each target's records (in offset order, `max_post` per POST),
    /// targets in parallel. Returns the records that were not delivered.
    async fn deliver(
        &self,
        snapshot: &Snapshot,
        per_target: BTreeMap<usize, Vec<Record>>,
    ) -> Vec<Record> {
        let delivery = self.delivery.load_full();
        let delivery = &delivery;
        let sends = per_target.into_iter().map(|(t, records)| async move {
            let target = &snapshot.targets[t];
            let mut rest = records.as_slice();
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rest.len().min(delivery.max_post));
                let refs: Vec<&Record> = chunk.iter().collect();
                let n = chunk.len() as u32;
                self.registry.begin_delivery(&target.id, n);
                let started = Instant::now();
                let result = delivery.http.post(&target.url, &refs).await;
                let latency = started.elapsed();
                self.metrics
                    .delivery_seconds
                    .with_label_values(&[&*target.id])
                    .observe(latency.as_secs_f64());
                match result {
                    Ok(()) => {
                        self.registry.end_delivery(&target.id, n, latency, None);
                        self.metrics
                            .deliveries
                            .with_label_values(&[&*target.id, "ok"])
                            .inc();
                        self.metrics
                            .delivered_records
                            .with_label_values(&[&*target.id])
                            .inc_by(n.into());
                        self.metrics.count("delivery", "delivered", chunk.len());
                        rest = tail;
                    }
                    Err(e) => {
                        tracing::warn!(target_id = %target.id, records = rest.len(), error = %e,
                            "delivery failed; target marked down, records routed again");
                        self.registry
                            .end_delivery(&target.id, n, latency, Some(&e.to_string()));
                        self.metrics
                            .deliveries
                            .with_label_values(&[&*target.id, "error"])
                            .inc();
                        return rest.to_vec();
                    }
                }
            }
            Vec::new()
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Writes one dead letter, retrying with backoff until the broker acks
    /// or shutdown.
    async fn dead_letter(
        &self,
        r: &Record,
        why: &DeadLetter<'_>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Abandoned> {
        let mut backoff = self.backoff();
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
                    tokio::time::sleep(backoff.next().unwrap_or(self.delivery.load().retry_max))
                        .await;
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
