//! The shadow router (`[router.shadow]`): a candidate router that sees a
//! sampled share of the live router's batches, with the same target
//! snapshot, and whose decisions are compared with the live ones and never
//! used.
//!
//! Guarantees:
//! - **Off the delivery path.** The live router's batch is offered with
//!   `try_send` to one bounded queue ([`QUEUE_BATCHES`]); one thread runs
//!   the shadow. When it falls behind, batches are skipped and counted,
//!   never waited for: the shadow costs the pipeline one clone of a few
//!   `Arc`s per sampled batch, and at most one core.
//! - **Faults stay in the shadow.** It runs in its own instances; a trap,
//!   a missed deadline or a memory cap costs only its comparison (counted
//!   in `cdrs_plugin_errors_total{plugin=<shadow>}` as for any plugin).
//! - **Compared as decided.** Agreement compares the two routers' answers
//!   before the host's fallback: both `default` agree, and so do the same
//!   target sets.
//!
//! Promoting it (`POST /v1/plugins/{router}/promote-shadow`) swaps its
//! file and `init` config into the live router's slot through the normal
//! swap, and the shadow stops.

use super::router::{Route, RouterPlugin};
use super::{PluginError, Runtime};
use crate::capacity::{Health, Snapshot};
use crate::config::ShadowConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Sampled batches waiting for the shadow; more are skipped.
pub const QUEUE_BATCHES: usize = 4;

/// The shadow of one process: empty while `[router.shadow]` is unset.
pub struct Shadow {
    metrics: Arc<Metrics>,
    current: ArcSwapOption<Running>,
    tx: SyncSender<Sample>,
    /// Batches offered, for the sampling.
    offered: AtomicU64,
}

/// A loaded shadow and its comparison so far.
pub struct Running {
    pub cfg: ShadowConfig,
    pub plugin: RouterPlugin,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    batches: u64,
    skipped_batches: u64,
    records: u64,
    agreed: u64,
    live: BTreeMap<String, u64>,
    shadow: BTreeMap<String, u64>,
    /// Capacity × weight of each healthy target in the last view.
    capacity: BTreeMap<String, f64>,
}

struct Sample {
    running: Arc<Running>,
    view: Arc<Snapshot>,
    topic: Arc<str>,
    partition: i32,
    records: Vec<Arc<Record>>,
    live: Vec<Route>,
}

/// What `GET /v1/plugins` shows of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    pub sample_percent: f64,
    /// Batches compared, and skipped because the shadow was behind.
    pub batches: u64,
    pub skipped_batches: u64,
    /// Records compared, and the share on which both routers agreed (0..=1).
    pub records: u64,
    pub agreement: f64,
    /// Per target id (and `(default)`, `(drop)`, `(dead-letter)`): the share
    /// of the compared records each router sent there (0..=1), and the
    /// shadow's share over the target's share of healthy capacity × weight
    /// (`predicted_load`: 1.0 is in proportion to capacity; absent for the
    /// buckets and for targets not healthy in the last snapshot).
    pub targets: BTreeMap<String, TargetShare>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetShare {
    pub live_share: f64,
    pub shadow_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_load: Option<f64>,
}

impl Shadow {
    /// An empty shadow and the thread that will run it.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Shadow> {
        let (tx, rx) = sync_channel(QUEUE_BATCHES);
        let shadow = Arc::new(Shadow {
            metrics: metrics.clone(),
            current: ArcSwapOption::empty(),
            tx,
            offered: AtomicU64::new(0),
        });
        std::thread::Builder::new()
            .name("cdrs-shadow".into())
            .spawn(move || run(rx, metrics))
            .expect("spawn the shadow router thread");
        shadow
    }

    /// Loads `cfg`'s router (blocking: compiles).
    ///
    /// # Errors
    /// [`PluginError`]: the file cannot be read, compiled or linked as a
    /// router, or its `init` refused the config.
    pub fn load(
        runtime: &Arc<Runtime>,
        cfg: &ShadowConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Running>, PluginError> {
        let plugin = RouterPlugin::load(runtime, &cfg.plugin(), metrics)?;
        Ok(Arc::new(Running {
            cfg: cfg.clone(),
            plugin,
            stats: Mutex::new(Stats::default()),
        }))
    }

    /// Installs `running` (or removes the shadow); the comparison starts
    /// over.
    pub fn set(&self, running: Option<Arc<Running>>) {
        if let Some(r) = &running {
            tracing::info!(shadow = %r.cfg.name, version = %r.plugin.meta.short(),
                sample_percent = r.cfg.sample_percent, "shadow router running");
        }
        self.current.store(running);
    }

    /// The running shadow, if any.
    pub fn running(&self) -> Option<Arc<Running>> {
        self.current.load_full()
    }

    /// Offers the live router's batch (`records` and their `live` routes,
    /// decided against `view`) to the shadow when it is sampled. Never
    /// waits.
    pub fn offer(
        &self,
        view: &Arc<Snapshot>,
        records: impl FnOnce() -> Vec<Arc<Record>>,
        live: &[Route],
    ) {
        let Some(running) = self.current.load_full() else {
            return;
        };
        let n = self.offered.fetch_add(1, Ordering::Relaxed) as f64;
        let p = running.cfg.sample_percent / 100.0;
        // Deterministic sampling: batch n is taken when the running count
        // of p crosses an integer.
        if ((n + 1.0) * p).floor() == (n * p).floor() {
            return;
        }
        let records = records();
        let Some(first) = records.first() else {
            return;
        };
        let sample = Sample {
            view: view.clone(),
            topic: first.topic.clone(),
            partition: first.partition,
            records,
            live: live.to_vec(),
            running: running.clone(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(sample)
        {
            running.stats.lock().expect("shadow stats").skipped_batches += 1;
            self.metrics
                .shadow_batches
                .with_label_values(&[&running.cfg.name, "skipped"])
                .inc();
        }
    }
}

impl Running {
    /// The comparison so far.
    pub fn status(&self) -> ShadowStatus {
        let st = self.stats.lock().expect("shadow stats");
        let records = st.records.max(1) as f64;
        let total_capacity: f64 = st.capacity.values().sum();
        let mut targets = BTreeMap::new();
        for id in st.live.keys().chain(st.shadow.keys()) {
            let share = |m: &BTreeMap<String, u64>| *m.get(id).unwrap_or(&0) as f64 / records;
            let shadow_share = share(&st.shadow);
            let predicted_load = st
                .capacity
                .get(id)
                .filter(|_| total_capacity > 0.0)
                .map(|c| shadow_share / (c / total_capacity));
            targets.insert(
                id.clone(),
                TargetShare {
                    live_share: share(&st.live),
                    shadow_share,
                    predicted_load,
                },
            );
        }
        ShadowStatus {
            sample_percent: self.cfg.sample_percent,
            batches: st.batches,
            skipped_batches: st.skipped_batches,
            records: st.records,
            agreement: if st.records == 0 {
                0.0
            } else {
                st.agreed as f64 / st.records as f64
            },
            targets,
        }
    }

    /// Routes one sample with the shadow and counts how it differs.
    fn compare(&self, s: &Sample, metrics: &Metrics) {
        let refs: Vec<&Record> = s.records.iter().map(|r| &**r).collect();
        let shadow = self.plugin.route(&s.view, &s.topic, s.partition, &refs);
        let name = self.cfg.name.as_str();
        let mut guard = self.stats.lock().expect("shadow stats");
        let st = &mut *guard;
        st.batches += 1;
        let mut agreed = 0;
        for (live, shadow) in s.live.iter().zip(&shadow) {
            if live == shadow {
                agreed += 1;
            }
            for (route, counts) in [(live, &mut st.live), (shadow, &mut st.shadow)] {
                for bucket in buckets(route, &s.view) {
                    *counts.entry(bucket).or_default() += 1;
                }
            }
            let bucket = buckets(shadow, &s.view);
            for b in &bucket {
                metrics.shadow_decisions.with_label_values(&[name, b]).inc();
            }
        }
        let n = s.live.len().min(shadow.len()) as u64;
        st.records += n;
        st.agreed += agreed;
        st.capacity = s
            .view
            .targets
            .iter()
            .filter(|t| t.health == Health::Healthy)
            .map(|t| {
                let weight = f64::from(t.capacity) * f64::from(t.weight);
                (t.id.to_string(), weight)
            })
            .collect();
        drop(guard);
        metrics
            .shadow_records
            .with_label_values(&[name, "agreed"])
            .inc_by(agreed);
        metrics
            .shadow_records
            .with_label_values(&[name, "differed"])
            .inc_by(n - agreed);
        metrics
            .shadow_batches
            .with_label_values(&[name, "compared"])
            .inc();
    }
}

/// The target ids a decision names, or its bucket: `(default)`, `(drop)`,
/// `(dead-letter)`.
fn buckets(route: &Route, view: &Snapshot) -> Vec<String> {
    match route {
        Route::Targets(ts) => ts
            .iter()
            .filter_map(|&i| view.targets.get(i))
            .map(|t| t.id.to_string())
            .collect(),
        Route::Default => vec!["(default)".into()],
        Route::Drop => vec!["(drop)".into()],
        Route::DeadLetter(_) => vec!["(dead-letter)".into()],
    }
}

/// The shadow's thread: compares samples until the process ends.
fn run(rx: Receiver<Sample>, metrics: Arc<Metrics>) {
    while let Ok(sample) = rx.recv() {
        let r = sample.running.clone();
        // A panic in the comparison must not end the thread (the shadow
        // would then skip every batch without saying why).
        let compared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.compare(&sample, &metrics)
        }));
        if compared.is_err() {
            tracing::error!(shadow = %r.cfg.name, "shadow router comparison panicked; batch skipped");
        }
    }
}

#[cfg(test)]
mod tests;
