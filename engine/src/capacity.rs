//! Target registry: the live view of the application servers.
//!
//! Merges, per target, the static config (id, url, capacity, weight), the
//! last capacity report the server pushed (`PUT /v1/targets/{id}/capacity`),
//! and CDRS's own delivery statistics (in-flight records, latency EWMA, error
//! rate, failure cooldown). It publishes an immutable, versioned [`Snapshot`]
//! behind an `ArcSwap`; the version only moves when something a router cares
//! about changed, so router plugins get `update-targets` only on change.
//!
//! Health: a target is **down** while a failed delivery's cooldown runs
//! (`capacity.failure_cooldown_ms`) or when its last report is older than
//! `capacity.report_expiry_ms`; **degraded** when it reports `draining`;
//! otherwise **healthy**. A target that never reported is judged by
//! deliveries alone.

use crate::config::{CapacityConfig, TargetConfig, MAX_CAPACITY};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Health of a target, as pushed to routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

/// A capacity report pushed by an application server (JSON body of
/// `PUT /v1/targets/{id}/capacity`). Unknown fields are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityReport {
    /// Records the server can hold in flight (0..=10,000,000).
    pub capacity: u32,
    /// Records the server is processing now.
    #[serde(default)]
    pub inflight: u32,
    /// Records queued in the server, not yet processed.
    #[serde(default)]
    pub queue_depth: u32,
    /// CPU use in thousandths (0..=1000).
    #[serde(default)]
    pub cpu_permille: u16,
    /// The server is shutting down: send it no new records.
    #[serde(default)]
    pub draining: bool,
}

/// Why a capacity report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("unknown target {0:?}; known targets are those in the config's [[targets]]")]
    UnknownTarget(String),
    #[error("field {field:?}: {value} is out of range 0..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        max: u64,
    },
}

impl CapacityReport {
    /// Checks ranges; serde already rejected wrong types, negative numbers
    /// and unknown fields.
    pub fn validate(&self) -> Result<(), ReportError> {
        let check = |field, value: u64, max: u64| {
            if value > max {
                Err(ReportError::OutOfRange { field, value, max })
            } else {
                Ok(())
            }
        };
        check("capacity", self.capacity.into(), MAX_CAPACITY.into())?;
        check("inflight", self.inflight.into(), MAX_CAPACITY.into())?;
        check("queue_depth", self.queue_depth.into(), 1_000_000_000)?;
        check("cpu_permille", self.cpu_permille.into(), 1000)?;
        Ok(())
    }
}

/// One target as seen at snapshot time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetView {
    pub id: Arc<str>,
    pub url: Arc<str>,
    pub zone: Option<String>,
    pub labels: Vec<(String, String)>,
    pub weight: u32,
    /// Reported capacity, else the configured one.
    pub capacity: u32,
    /// max(CDRS's in-flight records, the server's reported in-flight).
    pub inflight: u32,
    pub queue_depth: u32,
    pub cpu_permille: u16,
    pub latency_ewma_us: u32,
    pub error_rate_permille: u16,
    pub health: Health,
    /// Why the target is down or degraded, if it is.
    pub reason: Option<String>,
    /// Age of the last report when the snapshot was taken, ms; none if never.
    pub report_age_ms: Option<u64>,
}

impl TargetView {
    fn same_for_routing(&self, other: &TargetView) -> bool {
        // Report age moves every tick; everything else is what routers use.
        let mut a = self.clone();
        a.report_age_ms = other.report_age_ms;
        a == *other
    }
}

/// An immutable view of all targets; `version` increases on each change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub version: u64,
    pub targets: Vec<TargetView>,
}

impl Snapshot {
    /// Index of the target with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.targets.iter().position(|t| &*t.id == id)
    }
}

/// Mutable per-target state.
pub struct TargetLive {
    pub config: TargetConfig,
    id: Arc<str>,
    url: Arc<str>,
    inflight: AtomicU32,
    latency_ewma_us: AtomicU32,
    error_rate_permille: AtomicU32,
    /// Milliseconds since the registry started; down while now < this.
    down_until_ms: AtomicU64,
    state: Mutex<ReportState>,
}

#[derive(Default)]
struct ReportState {
    last: Option<(CapacityReport, Instant)>,
    last_failure: Option<String>,
}

impl TargetLive {
    fn new(t: &TargetConfig) -> TargetLive {
        TargetLive {
            id: t.id.as_str().into(),
            url: t.url.as_str().into(),
            config: t.clone(),
            inflight: AtomicU32::new(0),
            latency_ewma_us: AtomicU32::new(0),
            error_rate_permille: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            state: Mutex::new(ReportState::default()),
        }
    }
}

/// The registry of targets and their live state.
pub struct Registry {
    config: ArcSwap<CapacityConfig>,
    targets: ArcSwap<Vec<Arc<TargetLive>>>,
    snapshot: ArcSwap<Snapshot>,
    started: Instant,
    metrics: Arc<Metrics>,
    refresh_lock: Mutex<()>,
}

/// EWMA smoothing factor for latency and error rate (weight of the newest
/// sample), as in the classic exponentially weighted moving average.
const EWMA_ALPHA: f64 = 0.2;

impl Registry {
    /// A registry for the configured targets; the first snapshot is version 1.
    pub fn new(config: CapacityConfig, targets: &[TargetConfig], metrics: Arc<Metrics>) -> Self {
        let reg = Registry {
            config: ArcSwap::from_pointee(config),
            targets: ArcSwap::from_pointee(
                targets
                    .iter()
                    .map(|t| Arc::new(TargetLive::new(t)))
                    .collect(),
            ),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            started: Instant::now(),
            metrics,
            refresh_lock: Mutex::new(()),
        };
        reg.refresh();
        reg
    }

    /// The current snapshot (cheap: one atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn live(&self, id: &str) -> Option<Arc<TargetLive>> {
        self.targets.load().iter().find(|t| &*t.id == id).cloned()
    }

    /// Replaces the target list (config reload). Targets whose id and url
    /// stay keep their live state (reports, in-flight, failures); others
    /// start fresh; removed ones get no new records (deliveries in flight to
    /// them finish). Publishes a new snapshot.
    pub fn set_targets(&self, targets: &[TargetConfig]) {
        let old = self.targets.load_full();
        let next: Vec<Arc<TargetLive>> = targets
            .iter()
            .map(
                |t| match old.iter().find(|o| *o.id == *t.id && *o.url == *t.url) {
                    Some(o) if o.config == *t => o.clone(),
                    Some(o) => {
                        // Same server, new static settings: keep the live state.
                        let mut n = TargetLive::new(t);
                        n.inflight = AtomicU32::new(o.inflight.load(Ordering::Relaxed));
                        n.latency_ewma_us =
                            AtomicU32::new(o.latency_ewma_us.load(Ordering::Relaxed));
                        n.error_rate_permille =
                            AtomicU32::new(o.error_rate_permille.load(Ordering::Relaxed));
                        n.down_until_ms = AtomicU64::new(o.down_until_ms.load(Ordering::Relaxed));
                        let st = o.state.lock().expect("report lock");
                        n.state = Mutex::new(ReportState {
                            last: st.last,
                            last_failure: st.last_failure.clone(),
                        });
                        Arc::new(n)
                    }
                    None => Arc::new(TargetLive::new(t)),
                },
            )
            .collect();
        for gone in old.iter().filter(|o| !next.iter().any(|n| n.id == o.id)) {
            let _ = self.metrics.target_up.remove_label_values(&[&*gone.id]);
            let _ = self
                .metrics
                .target_inflight
                .remove_label_values(&[&*gone.id]);
        }
        self.targets.store(Arc::new(next));
        self.refresh();
    }

    /// Replaces the `[capacity]` settings (config reload).
    pub fn set_config(&self, config: CapacityConfig) {
        self.config.store(Arc::new(config));
        self.refresh();
    }

    /// Records a capacity report from target `id`.
    ///
    /// Errors: unknown target, or a value out of range; the last good state
    /// stays and the rejection is counted in `cdrs_capacity_reports_total`.
    pub fn report(&self, id: &str, report: CapacityReport) -> Result<(), ReportError> {
        let result = report.validate().and_then(|()| {
            let t = self
                .live(id)
                .ok_or_else(|| ReportError::UnknownTarget(id.to_string()))?;
            t.state.lock().expect("report lock").last = Some((report, Instant::now()));
            Ok(())
        });
        let label = match &result {
            Ok(()) => "accepted",
            Err(ReportError::UnknownTarget(_)) => "unknown_target",
            Err(_) => "rejected",
        };
        self.metrics
            .capacity_reports
            .with_label_values(&[label])
            .inc();
        if result.is_ok() {
            self.refresh();
        }
        result
    }

    /// Adds `n` records in flight to target `id`.
    pub fn begin_delivery(&self, id: &str, n: u32) {
        if let Some(t) = self.live(id) {
            t.inflight.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Ends a delivery of `n` records to target `id`: updates in-flight,
    /// latency EWMA and error rate; a failure marks the target down for the
    /// cooldown and publishes a new snapshot at once.
    pub fn end_delivery(&self, id: &str, n: u32, latency: Duration, failure: Option<&str>) {
        let Some(t) = self.live(id) else {
            return;
        };
        t.inflight
            .fetch_sub(n.min(t.inflight.load(Ordering::Relaxed)), Ordering::Relaxed);
        let ewma = |cell: &AtomicU32, sample: f64| {
            let old = f64::from(cell.load(Ordering::Relaxed));
            let new = if old == 0.0 {
                sample
            } else {
                old + EWMA_ALPHA * (sample - old)
            };
            cell.store(new.round() as u32, Ordering::Relaxed);
        };
        ewma(&t.latency_ewma_us, latency.as_micros() as f64);
        ewma(
            &t.error_rate_permille,
            if failure.is_some() { 1000.0 } else { 0.0 },
        );
        if let Some(why) = failure {
            let cooldown = self.config.load().failure_cooldown_ms;
            t.down_until_ms
                .store(self.now_ms() + cooldown, Ordering::Relaxed);
            t.state.lock().expect("report lock").last_failure = Some(why.to_string());
            self.refresh();
        }
    }

    /// Rebuilds the snapshot; publishes it with a new version if anything
    /// but report ages changed. Called on reports, failures and by a ticker
    /// every `capacity.refresh_interval_ms`.
    pub fn refresh(&self) {
        let _one_writer = self.refresh_lock.lock().expect("refresh lock");
        let now = self.now_ms();
        let expiry = self.config.load().report_expiry_ms;
        let views: Vec<TargetView> = self
            .targets
            .load()
            .iter()
            .map(|t| {
                let st = t.state.lock().expect("report lock");
                let report = st.last.map(|(r, at)| (r, at.elapsed().as_millis() as u64));
                let own = t.inflight.load(Ordering::Relaxed);
                let down_until = t.down_until_ms.load(Ordering::Relaxed);
                let (health, reason) = if now < down_until {
                    let why = st.last_failure.clone().unwrap_or_default();
                    (Health::Down, Some(format!("delivery failed: {why}")))
                } else if let Some((_, age)) = report.filter(|(_, age)| *age > expiry) {
                    (
                        Health::Down,
                        Some(format!(
                            "last capacity report {age} ms old (expiry {expiry} ms)"
                        )),
                    )
                } else if report.is_some_and(|(r, _)| r.draining) {
                    (Health::Degraded, Some("draining".to_string()))
                } else {
                    (Health::Healthy, None)
                };
                TargetView {
                    id: t.id.clone(),
                    url: t.url.clone(),
                    zone: t.config.zone.clone(),
                    labels: t
                        .config
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    weight: t.config.weight,
                    capacity: report.map_or(t.config.capacity, |(r, _)| r.capacity),
                    inflight: own.max(report.map_or(0, |(r, _)| r.inflight)),
                    queue_depth: report.map_or(0, |(r, _)| r.queue_depth),
                    cpu_permille: report.map_or(0, |(r, _)| r.cpu_permille),
                    latency_ewma_us: t.latency_ewma_us.load(Ordering::Relaxed),
                    error_rate_permille: t.error_rate_permille.load(Ordering::Relaxed).min(1000)
                        as u16,
                    health,
                    reason,
                    report_age_ms: report.map(|(_, age)| age),
                }
            })
            .collect();
        let current = self.snapshot.load();
        let changed = current.targets.len() != views.len()
            || current
                .targets
                .iter()
                .zip(&views)
                .any(|(a, b)| !a.same_for_routing(b));
        for v in &views {
            let up = i64::from(v.health != Health::Down);
            self.metrics.target_up.with_label_values(&[&*v.id]).set(up);
            self.metrics
                .target_inflight
                .with_label_values(&[&*v.id])
                .set(v.inflight.into());
        }
        if changed {
            let version = current.version + 1;
            for new in &views {
                let old = current.targets.iter().find(|o| o.id == new.id);
                if let Some(old) = old.filter(|o| o.health != new.health) {
                    tracing::info!(target_id = %new.id, from = ?old.health, to = ?new.health,
                        reason = new.reason.as_deref().unwrap_or(""), "target health changed");
                }
            }
            self.snapshot.store(Arc::new(Snapshot {
                version,
                targets: views,
            }));
        }
    }

    /// Runs [`Registry::refresh`] every `capacity.refresh_interval_ms` until
    /// `shutdown` fires.
    pub async fn run_refresher(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let every = Duration::from_millis(self.config.load().refresh_interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(every) => self.refresh(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(expiry: u64) -> Registry {
        let t = |id: &str, cap| TargetConfig {
            id: id.into(),
            url: format!("http://127.0.0.1:1/{id}"),
            capacity: cap,
            weight: 100,
            zone: None,
            labels: Default::default(),
        };
        let cfg = CapacityConfig {
            report_expiry_ms: expiry,
            failure_cooldown_ms: 60_000,
            refresh_interval_ms: 100,
        };
        Registry::new(cfg, &[t("a", 1), t("b", 2)], Arc::new(Metrics::new()))
    }

    fn report(capacity: u32) -> CapacityReport {
        CapacityReport {
            capacity,
            inflight: 3,
            queue_depth: 0,
            cpu_permille: 10,
            draining: false,
        }
    }

    #[test]
    fn reports_bump_the_version_only_on_change() {
        let r = registry(10_000);
        let v1 = r.snapshot().version;
        r.report("a", report(10)).unwrap();
        let s = r.snapshot();
        assert_eq!(s.version, v1 + 1);
        assert_eq!(s.targets[0].capacity, 10);
        assert_eq!(s.targets[0].inflight, 3);
        r.report("a", report(10)).unwrap();
        assert_eq!(r.snapshot().version, v1 + 1, "same report, same version");
    }

    #[test]
    fn bad_reports_are_rejected_and_keep_the_last_good_state() {
        let r = registry(10_000);
        r.report("a", report(10)).unwrap();
        let mut bad = report(10);
        bad.cpu_permille = 1001;
        assert!(matches!(
            r.report("a", bad),
            Err(ReportError::OutOfRange {
                field: "cpu_permille",
                ..
            })
        ));
        assert!(matches!(
            r.report("zz", report(1)),
            Err(ReportError::UnknownTarget(_))
        ));
        assert_eq!(r.snapshot().targets[0].cpu_permille, 10);
        let json = r#"{"capacity": -1}"#;
        assert!(serde_json::from_str::<CapacityReport>(json).is_err());
        let json = r#"{"capacity": 1, "colour": "red"}"#;
        let e = serde_json::from_str::<CapacityReport>(json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn target_list_changes_keep_the_state_of_targets_that_stay() {
        let r = registry(10_000);
        r.report("a", report(10)).unwrap();
        let mut next: Vec<TargetConfig> =
            r.targets.load().iter().map(|t| t.config.clone()).collect();
        next.remove(1);
        next[0].weight = 200;
        next.push(TargetConfig {
            id: "c".into(),
            ..next[0].clone()
        });
        r.set_targets(&next);
        let s = r.snapshot();
        let ids: Vec<&str> = s.targets.iter().map(|t| &*t.id).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(
            (s.targets[0].capacity, s.targets[0].weight),
            (10, 200),
            "a keeps its report"
        );
        assert_eq!(s.targets[1].report_age_ms, None, "c starts fresh");
    }

    #[test]
    fn expired_reports_and_failed_deliveries_mark_targets_down() {
        let r = registry(100);
        r.report("a", report(10)).unwrap();
        assert_eq!(r.snapshot().targets[0].health, Health::Healthy);
        std::thread::sleep(Duration::from_millis(150));
        r.refresh();
        assert_eq!(r.snapshot().targets[0].health, Health::Down);
        // b never reported: healthy until a delivery fails.
        assert_eq!(r.snapshot().targets[1].health, Health::Healthy);
        r.begin_delivery("b", 5);
        r.end_delivery("b", 5, Duration::from_millis(1), Some("connection refused"));
        let b = &r.snapshot().targets[1];
        assert_eq!(b.health, Health::Down);
        assert!(b.reason.as_deref().unwrap().contains("connection refused"));
        assert_eq!(b.inflight, 0);
    }
}
