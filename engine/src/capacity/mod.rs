//! Target registry: the live view of the application servers.
//!
//! Merges four feeds per target into one state: the static config (id, url,
//! capacity, weight, zone, labels); capacity reports (heartbeats) from the
//! servers, over the capacity topic ([`topic`]) or `PUT
//! /v1/targets/{id}/capacity`, one code path; active health checks
//! ([`health`]); and CDRS's own delivery statistics (in-flight records,
//! latency EWMA, error rate, failure cooldown). It publishes an immutable,
//! versioned [`Snapshot`] behind an `ArcSwap`; the version only moves when
//! something a router uses changed, so routers get `update-targets` only on
//! change.
//!
//! Health, first match wins: **down** while a failed delivery's cooldown runs
//! (`failure_cooldown_ms`), while active health checks fail, when the last
//! report is older than `report_expiry_ms`, or when the phi accrual detector
//! over heartbeat arrivals exceeds `phi_threshold` ([`phi`]); **degraded** when
//! it reports `draining`; else **healthy**. A target that never reported is
//! judged by deliveries and health checks alone; once reported, it comes back
//! only with fresh heartbeats. A target that joins (dynamic) or comes back
//! from down ramps its weight over `slow_start_ms` (Envoy's slow start).
//!
//! Unknown servers join when their report's `endpoint` matches
//! `allow_endpoints`; such dynamic targets are removed after
//! `remove_after_ms` of silence. Bad reports are rejected, counted per reason
//! and logged at a limited rate; the last good state stays.
//!
//! Bounds against report floods: each target may send
//! `max_reports_per_second` reports (more are rejected before they touch
//! phi or state); at most `max_dynamic_targets` dynamic targets, joining at
//! `max_joins_per_second` at most (both `governor` GCRA limiters on the
//! registry's clock); arrivals closer than [`phi::MIN_INTERVAL_MS`] teach
//! the failure detector nothing. Snapshot rebuilds are coalesced: a report
//! rebuilds at once only when a rebuild is due (the last one is older than
//! `refresh_interval_ms`) or when it changes what a target is or whether it
//! can be used (its first report, a join, draining or zone or feed
//! changing, a report from a target shown down), and those at most
//! [`URGENT_REFRESH_BURST`] at a time and one per `refresh_interval_ms` on
//! average; otherwise the refresher publishes it within
//! `refresh_interval_ms`.

pub mod health;
pub mod phi;
pub mod report;
pub mod topic;

pub use report::{CapacityReport, ReportError};

use crate::config::{CapacityConfig, EndpointPattern, TargetConfig, DEFAULT_WEIGHT};
use crate::metrics::Metrics;
use crate::redact;
use arc_swap::ArcSwap;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use phi::PhiDetector;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::num::NonZeroU32;
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

/// Where a capacity report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    Http,
    Topic,
}

/// One target as seen at snapshot time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetView {
    pub id: Arc<str>,
    pub url: Arc<str>,
    pub zone: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Configured weight, reduced while slow start ramps.
    pub weight: u32,
    /// Reported capacity, else the configured one.
    pub capacity: u32,
    /// max(CDRS's in-flight records, the server's reported in-flight).
    pub inflight: u32,
    /// CDRS's own in-flight records to it.
    pub own_inflight: u32,
    pub queue_depth: u32,
    pub cpu_permille: u16,
    pub mem_permille: u16,
    pub latency_p99_ms: u32,
    pub latency_ewma_us: u32,
    pub error_rate_permille: u16,
    pub health: Health,
    /// Why the target is down or degraded, if it is.
    pub reason: Option<String>,
    /// Age of the last report when the snapshot was taken, ms; none if never.
    pub report_age_ms: Option<u64>,
    /// Feed of the last report.
    pub feed: Option<Feed>,
    /// Phi accrual suspicion at snapshot time (none until 3 heartbeat
    /// intervals of at least [`phi::MIN_INTERVAL_MS`] were seen).
    pub phi: Option<f64>,
    /// Joined by its own report rather than the config.
    pub dynamic: bool,
    /// Percent of its weight while slow start ramps, else none.
    pub slow_start_percent: Option<u32>,
    /// Subscribers connected to the stream of an `sse://` target; none for
    /// other targets. With none connected the target is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<u32>,
}

impl TargetView {
    fn same_for_routing(&self, other: &TargetView) -> bool {
        // Age and phi move every tick and the feed is provenance; everything
        // else is what routers use.
        let mut a = self.clone();
        a.report_age_ms = other.report_age_ms;
        a.phi = other.phi;
        a.feed = other.feed;
        // One subscriber or ten: the same for routing (none is `health`).
        a.subscribers = other.subscribers;
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
    dynamic: bool,
    inflight: AtomicU32,
    latency_ewma_us: AtomicU32,
    error_rate_permille: AtomicU32,
    /// Milliseconds since the registry started; down while now < this.
    down_until_ms: AtomicU64,
    state: Mutex<LiveState>,
}

#[derive(Default, Clone)]
struct LiveState {
    /// The last accepted report, when it arrived (registry ms) and how.
    last: Option<(CapacityReport, u64, Feed)>,
    last_failure: Option<String>,
    phi: PhiDetector,
    /// When it last came up after being down (or joined), registry ms.
    up_since_ms: Option<u64>,
    was_down: bool,
    check: CheckState,
}

#[derive(Default, Clone)]
struct CheckState {
    fails: u32,
    oks: u32,
    down: bool,
    last_error: Option<String>,
}

impl TargetLive {
    fn new(t: &TargetConfig, dynamic: bool) -> TargetLive {
        TargetLive {
            id: t.id.as_str().into(),
            url: t.url.as_str().into(),
            dynamic,
            config: t.clone(),
            inflight: AtomicU32::new(0),
            latency_ewma_us: AtomicU32::new(0),
            error_rate_permille: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            state: Mutex::new(LiveState::default()),
        }
    }

    /// A copy with new static settings and the same live state.
    fn with_config(&self, t: &TargetConfig) -> TargetLive {
        let n = TargetLive::new(t, self.dynamic);
        n.inflight
            .store(self.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
        n.latency_ewma_us.store(
            self.latency_ewma_us.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        n.error_rate_permille.store(
            self.error_rate_permille.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        n.down_until_ms.store(
            self.down_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        *n.state.lock().expect("target lock") = self.state.lock().expect("target lock").clone();
        n
    }
}

/// The target list with an index by id (reports and deliveries look
/// targets up by id; a scan cost ~50 µs per report at 5,000 targets).
#[derive(Default)]
struct Targets {
    list: Vec<Arc<TargetLive>>,
    index: HashMap<Arc<str>, usize>,
}

impl Targets {
    fn new(list: Vec<Arc<TargetLive>>) -> Targets {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        Targets { list, index }
    }

    fn get(&self, id: &str) -> Option<&Arc<TargetLive>> {
        self.index.get(id).map(|&i| &self.list[i])
    }

    /// The targets in order: configured ones, then dynamic ones.
    fn iter(&self) -> std::slice::Iter<'_, Arc<TargetLive>> {
        self.list.iter()
    }
}

/// The registry's monotonic clock: time since it started, plus whatever a
/// test moved it forward by. The failure detector, report ages and the
/// rate limiters all read it, so a test can replay seconds of heartbeats
/// without sleeping.
#[derive(Clone, Debug)]
struct RegistryClock {
    started: Instant,
    advanced_ns: Arc<AtomicU64>,
}

impl RegistryClock {
    fn new() -> RegistryClock {
        RegistryClock {
            started: Instant::now(),
            advanced_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn nanos(&self) -> u64 {
        let real = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        real.saturating_add(self.advanced_ns.load(Ordering::Relaxed))
    }

    fn ms(&self) -> u64 {
        self.nanos() / 1_000_000
    }
}

impl governor::clock::Clock for RegistryClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.nanos())
    }
}

type KeyedLimiter =
    RateLimiter<Arc<str>, DefaultKeyedStateStore<Arc<str>>, RegistryClock, NoOpMiddleware<Nanos>>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, RegistryClock, NoOpMiddleware<Nanos>>;

/// Immediate snapshot rebuilds that reports may trigger back to back (then
/// one per `capacity.refresh_interval_ms`); see the module doc.
pub const URGENT_REFRESH_BURST: u32 = 4;

/// The registry's rate limiters, built from the `[capacity]` settings.
struct Limits {
    /// Per target: `capacity.max_reports_per_second`.
    reports: KeyedLimiter,
    /// Whole process: `capacity.max_joins_per_second`.
    joins: DirectLimiter,
    /// Rebuilds triggered by state-changing reports.
    urgent_refreshes: DirectLimiter,
    /// (reports/s, joins/s, refresh interval ms) they were built from.
    built_from: (u32, u32, u64),
}

impl Limits {
    fn new(cfg: &CapacityConfig, clock: &RegistryClock) -> Limits {
        let per_second = |n: u32| Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        let every = Duration::from_millis(cfg.refresh_interval_ms.max(1));
        let urgent = Quota::with_period(every)
            .expect("period of at least 1 ms")
            .allow_burst(NonZeroU32::new(URGENT_REFRESH_BURST).expect("non-zero"));
        Limits {
            reports: RateLimiter::hashmap_with_clock(
                per_second(cfg.max_reports_per_second),
                clock.clone(),
            ),
            joins: RateLimiter::direct_with_clock(
                per_second(cfg.max_joins_per_second),
                clock.clone(),
            ),
            urgent_refreshes: RateLimiter::direct_with_clock(urgent, clock.clone()),
            built_from: Limits::key(cfg),
        }
    }

    fn key(cfg: &CapacityConfig) -> (u32, u32, u64) {
        (
            cfg.max_reports_per_second,
            cfg.max_joins_per_second,
            cfg.refresh_interval_ms,
        )
    }
}

/// The registry of targets and their live state.
pub struct Registry {
    config: ArcSwap<CapacityConfig>,
    allow: ArcSwap<Vec<EndpointPattern>>,
    targets: ArcSwap<Targets>,
    snapshot: ArcSwap<Snapshot>,
    clock: RegistryClock,
    limits: ArcSwap<Limits>,
    metrics: Arc<Metrics>,
    refresh_lock: Mutex<()>,
    /// Serialises changes of the target list (joins, reloads, removals).
    targets_lock: Mutex<()>,
    /// When the snapshot was last rebuilt, registry ms.
    last_refresh_ms: AtomicU64,
    /// Last log line per rejection reason (logged at most every 10 s each).
    rejections_logged: Mutex<HashMap<&'static str, Instant>>,
    /// Subscribers connected per `sse://` stream name.
    stream_subscribers: Mutex<HashMap<String, u32>>,
}

/// EWMA smoothing factor for latency and error rate (weight of the newest
/// sample), as in the classic exponentially weighted moving average.
const EWMA_ALPHA: f64 = 0.2;

/// Minimum time between two log lines for the same rejection reason.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

fn allow_set(patterns: &[String]) -> Vec<EndpointPattern> {
    // Validated with the config; a bad pattern here is skipped.
    patterns
        .iter()
        .filter_map(|p| EndpointPattern::new(p).ok())
        .collect()
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Registry {
    /// A registry for the configured targets; the first snapshot is version 1.
    pub fn new(config: CapacityConfig, targets: &[TargetConfig], metrics: Arc<Metrics>) -> Self {
        let clock = RegistryClock::new();
        let reg = Registry {
            allow: ArcSwap::from_pointee(allow_set(&config.allow_endpoints)),
            limits: ArcSwap::from_pointee(Limits::new(&config, &clock)),
            config: ArcSwap::from_pointee(config),
            targets: ArcSwap::from_pointee(Targets::new(
                targets
                    .iter()
                    .map(|t| Arc::new(TargetLive::new(t, false)))
                    .collect(),
            )),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            clock,
            metrics,
            refresh_lock: Mutex::new(()),
            targets_lock: Mutex::new(()),
            last_refresh_ms: AtomicU64::new(0),
            rejections_logged: Mutex::new(HashMap::new()),
            stream_subscribers: Mutex::new(HashMap::new()),
        };
        reg.refresh();
        reg
    }

    /// The current snapshot (cheap: one atomic load).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The `[capacity]` settings in force.
    pub fn config(&self) -> Arc<CapacityConfig> {
        self.config.load_full()
    }

    fn now_ms(&self) -> u64 {
        self.clock.ms()
    }

    /// Moves the registry's clock forward (tests replay heartbeats with it).
    #[cfg(test)]
    fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.clock.advanced_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn live(&self, id: &str) -> Option<Arc<TargetLive>> {
        self.targets.load().get(id).cloned()
    }

    /// The `targets[].report_token` of target `id`: the bearer token its
    /// capacity reports must carry on `PUT /v1/targets/{id}/capacity`.
    /// `None` for a target without one, a dynamic or an unknown target
    /// (the admin token, if any, applies then).
    pub fn report_token(&self, id: &str) -> Option<String> {
        self.targets.load().get(id)?.config.report_token.clone()
    }

    /// Replaces the configured targets (config reload). Targets whose id and
    /// url stay keep their live state; others start fresh; removed ones get
    /// no new records (deliveries in flight finish). Dynamic targets stay.
    pub fn set_targets(&self, targets: &[TargetConfig]) {
        let one_writer = self.targets_lock.lock().expect("targets lock");
        let old_targets = self.targets.load_full();
        let old = &old_targets.list;
        let mut next: Vec<Arc<TargetLive>> = targets
            .iter()
            .map(
                |t| match old.iter().find(|o| *o.id == *t.id && *o.url == *t.url) {
                    Some(o) if o.config == *t => o.clone(),
                    Some(o) => Arc::new(o.with_config(t)),
                    None => Arc::new(TargetLive::new(t, false)),
                },
            )
            .collect();
        for o in old.iter().filter(|o| o.dynamic) {
            if !next.iter().any(|n| n.id == o.id) {
                next.push(o.clone());
            }
        }
        self.store_targets(old, next);
        drop(one_writer);
        self.refresh();
    }

    /// Publishes `next` (the caller holds `targets_lock`) and forgets the
    /// metrics and rate-limit state of targets that left.
    fn store_targets(&self, old: &[Arc<TargetLive>], next: Vec<Arc<TargetLive>>) {
        let next = Targets::new(next);
        let mut gone = 0;
        for o in old.iter().filter(|o| next.get(&o.id).is_none()) {
            gone += 1;
            let _ = self.metrics.target_up.remove_label_values(&[&*o.id]);
            let _ = self.metrics.target_inflight.remove_label_values(&[&*o.id]);
        }
        self.metrics
            .capacity_dynamic_targets
            .set(next.list.iter().filter(|t| t.dynamic).count() as i64);
        self.targets.store(Arc::new(next));
        if gone > 0 {
            // Keys of targets that left (and of idle ones: their state is
            // that of a fresh key) go; the map stays as big as the targets.
            let limits = self.limits.load();
            limits.reports.retain_recent();
            limits.reports.shrink_to_fit();
        }
    }

    /// Replaces the `[capacity]` settings (config reload). Changed rate
    /// limits start with full buckets.
    pub fn set_config(&self, config: CapacityConfig) {
        self.allow
            .store(Arc::new(allow_set(&config.allow_endpoints)));
        if self.limits.load().built_from != Limits::key(&config) {
            self.limits
                .store(Arc::new(Limits::new(&config, &self.clock)));
        }
        self.config.store(Arc::new(config));
        self.refresh();
    }

    /// Counts and (rate-limited) logs a rejected report; returns the error.
    pub fn reject(&self, id: &str, e: ReportError) -> ReportError {
        self.metrics
            .capacity_reports
            .with_label_values(&["rejected", e.reason()])
            .inc();
        let mut logged = self.rejections_logged.lock().expect("log limiter lock");
        let due = logged
            .get(e.reason())
            .is_none_or(|t| t.elapsed() >= REJECTION_LOG_EVERY);
        if due {
            logged.insert(e.reason(), Instant::now());
            // An id from the outside may be long; the log keeps 64 chars.
            let id: String = id.chars().take(64).collect();
            let id = id.as_str();
            tracing::warn!(target_id = id, reason = e.reason(), error = %e,
                "capacity report rejected (this reason is logged at most every 10 s)");
        }
        e
    }

    /// Records a capacity report for target `id` from `feed`.
    ///
    /// Errors: out-of-range values, a timestamp from the future, an unknown
    /// target that may not join (not allowed, `max_dynamic_targets` reached,
    /// over `max_joins_per_second`), a target over
    /// `max_reports_per_second`; each counted per reason. The last good
    /// state stays. The snapshot shows the report at once or, for a report
    /// that only moves load figures, within `refresh_interval_ms` (see the
    /// module doc).
    pub fn report(&self, id: &str, report: CapacityReport, feed: Feed) -> Result<(), ReportError> {
        let cfg = self.config.load();
        if let Err(e) = report.validate(wall_ms(), cfg.max_clock_skew_ms) {
            return Err(self.reject(id, e));
        }
        // The HTTP path's id has not been checked yet (a topic report's id
        // is its `server_id`, checked above); a dynamic target joins by it.
        if let Some(problem) = report::id_problem(id) {
            return Err(self.reject(id, ReportError::InvalidId(problem)));
        }
        if let Some(sid) = report.server_id.as_deref().filter(|s| *s != id) {
            return Err(self.reject(id, ReportError::IdMismatch(sid.into(), id.into())));
        }
        let limits = self.limits.load();
        // Only known targets get a rate-limit key, so ids from the outside
        // cannot grow the limiter's map.
        let (target, joined) = match self.live(id) {
            Some(t) => {
                if limits.reports.check_key(&t.id).is_err() {
                    let e = ReportError::RateLimited {
                        id: id.into(),
                        max_per_second: cfg.max_reports_per_second,
                    };
                    return Err(self.reject(id, e));
                }
                (t, false)
            }
            None => match self.join(id, &report, &cfg, &limits) {
                Ok((t, joined)) => {
                    // The joining report counts against the new target's rate.
                    let _ = limits.reports.check_key(&t.id);
                    (t, joined)
                }
                Err(e) => return Err(self.reject(id, e)),
            },
        };
        let urgent = {
            let mut st = target.state.lock().expect("target lock");
            let now = self.now_ms();
            st.phi.heartbeat(now, cfg.report_expiry_ms);
            let urgent = joined
                || st.was_down
                || st.last.as_ref().is_none_or(|(old, _, old_feed)| {
                    old.draining != report.draining || old.zone != report.zone || *old_feed != feed
                });
            st.last = Some((report, now, feed));
            urgent
        };
        self.metrics
            .capacity_reports
            .with_label_values(&["accepted", ""])
            .inc();
        let since = self
            .now_ms()
            .saturating_sub(self.last_refresh_ms.load(Ordering::Relaxed));
        if since >= cfg.refresh_interval_ms || (urgent && limits.urgent_refreshes.check().is_ok()) {
            self.refresh();
        }
        Ok(())
    }

    /// Registers an unknown server whose endpoint the allow-list accepts,
    /// within `max_dynamic_targets` and `max_joins_per_second`. The flag is
    /// false when another report joined it meanwhile.
    fn join(
        &self,
        id: &str,
        report: &CapacityReport,
        cfg: &CapacityConfig,
        limits: &Limits,
    ) -> Result<(Arc<TargetLive>, bool), ReportError> {
        let Some(endpoint) = &report.endpoint else {
            return Err(ReportError::UnknownTarget(id.into()));
        };
        if !self.allow.load().iter().any(|p| p.matches(endpoint)) {
            return Err(ReportError::EndpointNotAllowed {
                id: id.into(),
                endpoint: endpoint.clone(),
            });
        }
        let _one_writer = self.targets_lock.lock().expect("targets lock");
        let old = self.targets.load_full();
        if let Some(t) = old.get(id) {
            return Ok((t.clone(), false));
        }
        // The cap first: a full registry spends no join budget.
        if old.list.iter().filter(|t| t.dynamic).count() >= cfg.max_dynamic_targets {
            return Err(ReportError::TooManyTargets {
                id: id.into(),
                max: cfg.max_dynamic_targets,
            });
        }
        if limits.joins.check().is_err() {
            return Err(ReportError::JoinRateLimited {
                id: id.into(),
                max_per_second: cfg.max_joins_per_second,
            });
        }
        let t = TargetConfig {
            id: id.into(),
            url: endpoint.clone(),
            capacity: report.capacity.max(1),
            weight: DEFAULT_WEIGHT,
            zone: report.zone.clone(),
            labels: report.labels.clone(),
            health_url: None,
            report_token: None,
            tls: None,
        };
        let live = Arc::new(TargetLive::new(&t, true));
        live.state.lock().expect("target lock").up_since_ms = Some(self.now_ms());
        let mut next = old.list.clone();
        next.push(live.clone());
        self.store_targets(&old.list, next);
        tracing::info!(target_id = id, %endpoint, "dynamic target joined");
        Ok((live, true))
    }

    /// `n` subscribers are now connected to the `sse://NAME` stream `name`:
    /// its target is up while `n > 0` (see [`crate::sink::sse`]).
    pub fn set_stream_subscribers(&self, name: &str, n: u32) {
        let before = self
            .stream_subscribers
            .lock()
            .expect("stream subscribers lock")
            .insert(name.to_string(), n);
        if before != Some(n) {
            self.refresh();
        }
    }

    /// Records an active health check result for target `id`.
    pub fn health_result(&self, id: &str, result: Result<(), String>) {
        let Some(t) = self.live(id) else { return };
        let cfg = self.config.load();
        let changed = {
            let mut st = t.state.lock().expect("target lock");
            let c = &mut st.check;
            let was = c.down;
            match result {
                Ok(()) => {
                    c.oks += 1;
                    c.fails = 0;
                    if c.oks >= cfg.health_healthy_after {
                        c.down = false;
                    }
                }
                Err(e) => {
                    c.fails += 1;
                    c.oks = 0;
                    c.last_error = Some(e);
                    if c.fails >= cfg.health_unhealthy_after {
                        c.down = true;
                    }
                }
            }
            was != c.down
        };
        if changed {
            self.refresh();
        }
    }

    /// Adds `n` records in flight to target `id`.
    pub fn begin_delivery(&self, id: &str, n: u32) {
        if let Some(t) = self.live(id) {
            t.inflight.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Ends a delivery of `n` records to target `id`: updates in-flight,
    /// latency EWMA and error rate (`failure` is `Some` for a failed
    /// request). With `mark_down` (the target was unreachable) it is marked
    /// down for `capacity.failure_cooldown_ms` and a new snapshot is
    /// published at once; other failures are the circuit breaker's to judge.
    pub fn end_delivery(
        &self,
        id: &str,
        n: u32,
        latency: Duration,
        failure: Option<&str>,
        mark_down: bool,
    ) {
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
        if let (Some(why), true) = (failure, mark_down) {
            let cooldown = Duration::from_millis(self.config.load().failure_cooldown_ms);
            self.eject(id, cooldown, why);
        }
    }

    /// Marks target `id` down for `duration` (an unreachable target, or an
    /// outlier ejected by its circuit breaker) and publishes a new snapshot.
    pub fn eject(&self, id: &str, duration: Duration, why: &str) {
        let Some(t) = self.live(id) else {
            return;
        };
        // Saturating: validation bounds durations to a day, but a wrapped sum
        // would end the ejection at once.
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let until = self.now_ms().saturating_add(ms);
        t.down_until_ms.fetch_max(until, Ordering::Relaxed);
        t.state.lock().expect("target lock").last_failure = Some(why.to_string());
        self.refresh();
    }

    fn view(&self, t: &TargetLive, cfg: &CapacityConfig, now: u64) -> TargetView {
        let mut st = t.state.lock().expect("target lock");
        let report = st
            .last
            .as_ref()
            .map(|(r, at, feed)| (r.clone(), now.saturating_sub(*at), *feed));
        let phi = st.phi.phi(now, cfg.acceptable_heartbeat_pause_ms);
        let own = t.inflight.load(Ordering::Relaxed);
        let down_until = t.down_until_ms.load(Ordering::Relaxed);
        let expiry = cfg.report_expiry_ms;
        let stream = crate::config::target_stream(&t.url);
        let subscribers = stream.map(|name| {
            self.stream_subscribers
                .lock()
                .expect("stream subscribers lock")
                .get(name)
                .copied()
                .unwrap_or(0)
        });
        let (health, reason) = if let (Some(0), Some(name)) = (subscribers, stream) {
            (
                Health::Down,
                Some(format!("no subscriber connected to stream {name:?}")),
            )
        } else if now < down_until {
            let why = st.last_failure.clone().unwrap_or_default();
            (Health::Down, Some(format!("delivery failed: {why}")))
        } else if st.check.down {
            let why = st.check.last_error.clone().unwrap_or_default();
            (Health::Down, Some(format!("health check failing: {why}")))
        } else if let Some((_, age, _)) = report.as_ref().filter(|(_, age, _)| *age > expiry) {
            (
                Health::Down,
                Some(format!(
                    "last capacity report {age} ms old (expiry {expiry} ms)"
                )),
            )
        } else if let Some(p) = phi.filter(|p| *p > cfg.phi_threshold) {
            let age = report.as_ref().map_or(0, |r| r.1);
            (
                Health::Down,
                Some(format!(
                    "phi {p:.1} > {} after {age} ms without a heartbeat",
                    cfg.phi_threshold
                )),
            )
        } else if report.as_ref().is_some_and(|(r, _, _)| r.draining) {
            (Health::Degraded, Some("draining".to_string()))
        } else {
            (Health::Healthy, None)
        };
        // Slow start (Envoy): weight × max(min%, t / window) after joining
        // or coming back, in 10% steps so the snapshot does not churn.
        if health == Health::Down {
            st.was_down = true;
        } else if st.was_down {
            st.was_down = false;
            st.up_since_ms = Some(now);
        }
        let slow = st.up_since_ms.and_then(|up| {
            let elapsed = now.saturating_sub(up);
            (cfg.slow_start_ms > 0 && elapsed < cfg.slow_start_ms).then(|| {
                let pct = (elapsed * 100 / cfg.slow_start_ms) as u32;
                pct.div_ceil(10).max(1) * 10
            })
        });
        let slow = slow
            .map(|p| p.max(cfg.slow_start_min_percent).min(100))
            .filter(|p| *p < 100);
        let weight = match slow {
            Some(p) => (t.config.weight * p / 100).max(1),
            None => t.config.weight,
        };
        let r = report.as_ref().map(|(r, _, _)| r);
        TargetView {
            id: t.id.clone(),
            url: t.url.clone(),
            zone: r
                .and_then(|r| r.zone.clone())
                .or_else(|| t.config.zone.clone()),
            labels: t
                .config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            weight,
            capacity: r.map_or(t.config.capacity, |r| r.capacity),
            inflight: own.max(r.map_or(0, |r| r.inflight)),
            own_inflight: own,
            queue_depth: r.map_or(0, |r| r.queue_depth),
            cpu_permille: r.map_or(0, |r| r.cpu_permille),
            mem_permille: r.map_or(0, |r| r.mem_permille),
            latency_p99_ms: r.map_or(0, |r| r.latency_p99_ms),
            latency_ewma_us: t.latency_ewma_us.load(Ordering::Relaxed),
            error_rate_permille: t.error_rate_permille.load(Ordering::Relaxed).min(1000) as u16,
            health,
            reason,
            report_age_ms: report.as_ref().map(|(_, age, _)| *age),
            feed: report.as_ref().map(|(_, _, f)| *f),
            phi,
            dynamic: t.dynamic,
            slow_start_percent: slow,
            subscribers,
        }
    }

    /// Rebuilds the snapshot; publishes it with a new version if anything
    /// but report ages and phi changed. Removes dynamic targets silent past
    /// `remove_after_ms`. Called on failures and health changes, on reports
    /// (coalesced, see the module doc) and by [`Registry::run_refresher`].
    pub fn refresh(&self) {
        let _one_writer = self.refresh_lock.lock().expect("refresh lock");
        let started = Instant::now();
        let now = self.now_ms();
        self.last_refresh_ms.store(now, Ordering::Relaxed);
        let cfg = self.config.load_full();
        let silent = |t: &TargetLive| {
            let st = t.state.lock().expect("target lock");
            // A dynamic target's life starts with its join.
            let seen = st.last.as_ref().map(|(_, at, _)| *at).or(st.up_since_ms);
            seen.is_some_and(|at| now.saturating_sub(at) > cfg.remove_after_ms)
        };
        if self
            .targets
            .load()
            .list
            .iter()
            .any(|t| t.dynamic && silent(t))
        {
            let _targets = self.targets_lock.lock().expect("targets lock");
            let targets = self.targets.load_full();
            let (gone, keep): (Vec<_>, Vec<_>) = targets
                .list
                .iter()
                .cloned()
                .partition(|t| t.dynamic && silent(t));
            for t in &gone {
                tracing::info!(target_id = %t.id, "dynamic target removed after silence");
            }
            self.store_targets(&targets.list, keep);
        }
        let views: Vec<TargetView> = self
            .targets
            .load()
            .list
            .iter()
            .map(|t| self.view(t, &cfg, now))
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
                .set(v.own_inflight.into());
        }
        if changed {
            let version = current.version + 1;
            for (i, new) in views.iter().enumerate() {
                // Mostly in the same place; a join or removal shifts them.
                let old = current
                    .targets
                    .get(i)
                    .filter(|o| o.id == new.id)
                    .or_else(|| current.targets.iter().find(|o| o.id == new.id));
                match old {
                    None => self.metrics.events.publish(
                        "target.joined",
                        json!({"target": &*new.id, "url": redact::url(&new.url),
                               "dynamic": new.dynamic, "health": new.health}),
                    ),
                    Some(old) if old.health != new.health => {
                        tracing::info!(target_id = %new.id, from = ?old.health, to = ?new.health,
                            reason = new.reason.as_deref().unwrap_or(""), "target health changed");
                        self.metrics.events.publish(
                            "target.health",
                            json!({"target": &*new.id, "from": old.health, "to": new.health,
                                   "reason": new.reason}),
                        );
                    }
                    Some(_) => {}
                }
            }
            for old in &current.targets {
                if !views.iter().any(|v| v.id == old.id) {
                    self.metrics
                        .events
                        .publish("target.left", json!({"target": &*old.id}));
                }
            }
            self.snapshot.store(Arc::new(Snapshot {
                version,
                targets: views,
            }));
        } else {
            // Same routing view: keep the version, refresh ages and phi.
            self.snapshot.store(Arc::new(Snapshot {
                version: current.version,
                targets: views,
            }));
        }
        self.metrics
            .capacity_refresh_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Keeps the snapshot at most `capacity.refresh_interval_ms` old until
    /// `shutdown` fires: runs [`Registry::refresh`] whenever that long has
    /// passed since the last rebuild (by it, a report or anything else).
    pub async fn run_refresher(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let every = self.config.load().refresh_interval_ms;
            let since = self
                .now_ms()
                .saturating_sub(self.last_refresh_ms.load(Ordering::Relaxed));
            let wait = Duration::from_millis(every.saturating_sub(since).max(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let since = self
                        .now_ms()
                        .saturating_sub(self.last_refresh_ms.load(Ordering::Relaxed));
                    if since >= every {
                        self.refresh();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, cap: u32) -> TargetConfig {
        TargetConfig::new(id, format!("http://127.0.0.1:1/{id}"), cap)
    }

    fn registry_with(cfg: CapacityConfig) -> Registry {
        Registry::new(
            cfg,
            &[target("a", 1), target("b", 2)],
            Arc::new(Metrics::new()),
        )
    }

    fn registry(expiry: u64) -> Registry {
        registry_with(CapacityConfig {
            report_expiry_ms: expiry,
            failure_cooldown_ms: 60_000,
            ..CapacityConfig::default()
        })
    }

    fn report(capacity: u32) -> CapacityReport {
        CapacityReport {
            inflight: 3,
            cpu_permille: 10,
            ..CapacityReport::new(capacity)
        }
    }

    #[test]
    fn reports_bump_the_version_only_on_change() {
        let r = registry(10_000);
        let v1 = r.snapshot().version;
        r.report("a", report(10), Feed::Http).unwrap();
        let s = r.snapshot();
        assert_eq!(s.version, v1 + 1);
        assert_eq!(s.targets[0].capacity, 10);
        assert_eq!(s.targets[0].inflight, 3);
        assert_eq!(s.targets[0].feed, Some(Feed::Http));
        r.report("a", report(10), Feed::Topic).unwrap();
        assert_eq!(r.snapshot().version, v1 + 1, "same report, same version");
        assert_eq!(
            r.snapshot().targets[0].feed,
            Some(Feed::Topic),
            "provenance still shown"
        );
    }

    #[test]
    fn bad_reports_are_rejected_and_keep_the_last_good_state() {
        let r = registry(10_000);
        r.report("a", report(10), Feed::Http).unwrap();
        let mut bad = report(10);
        bad.cpu_permille = 1001;
        let e = r.report("a", bad, Feed::Http).unwrap_err();
        assert_eq!(e.reason(), "out_of_range");
        assert_eq!(
            r.report("zz", report(1), Feed::Http).unwrap_err().reason(),
            "unknown_target"
        );
        let mut other = report(1);
        other.server_id = Some("b".into());
        assert_eq!(
            r.report("a", other, Feed::Http).unwrap_err().reason(),
            "id_mismatch"
        );
        assert_eq!(r.snapshot().targets[0].cpu_permille, 10);
        let rejected = r
            .metrics
            .capacity_reports
            .with_label_values(&["rejected", "out_of_range"])
            .get();
        assert_eq!(rejected, 1);
    }

    #[test]
    fn target_list_changes_keep_the_state_of_targets_that_stay() {
        let r = registry(10_000);
        r.report("a", report(10), Feed::Http).unwrap();
        let mut next: Vec<TargetConfig> = r
            .targets
            .load()
            .list
            .iter()
            .map(|t| t.config.clone())
            .collect();
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
        r.report("a", report(10), Feed::Http).unwrap();
        assert_eq!(r.snapshot().targets[0].health, Health::Healthy);
        std::thread::sleep(Duration::from_millis(150));
        r.refresh();
        assert_eq!(r.snapshot().targets[0].health, Health::Down);
        // b never reported: healthy until a delivery fails.
        assert_eq!(r.snapshot().targets[1].health, Health::Healthy);
        r.begin_delivery("b", 5);
        r.end_delivery(
            "b",
            5,
            Duration::from_millis(1),
            Some("connection refused"),
            true,
        );
        let b = &r.snapshot().targets[1];
        assert_eq!(b.health, Health::Down);
        assert!(b.reason.as_deref().unwrap().contains("connection refused"));
        assert_eq!(b.inflight, 0);
    }

    /// An ejection of `u64::MAX` ms keeps the target down: `now + duration`
    /// saturates instead of wrapping into the past, which would keep an
    /// unreachable target healthy (validation also bounds it).
    #[test]
    fn a_huge_ejection_keeps_the_target_down() {
        let r = registry(10_000);
        r.eject("b", Duration::from_millis(u64::MAX), "connection refused");
        assert_eq!(r.snapshot().targets[1].health, Health::Down);
        r.eject("a", Duration::MAX, "connection refused");
        assert_eq!(r.snapshot().targets[0].health, Health::Down);
    }

    #[test]
    fn phi_marks_a_silent_target_down_before_the_expiry_and_slow_start_follows() {
        let r = registry_with(CapacityConfig {
            report_expiry_ms: 60_000,
            slow_start_ms: 10_000,
            ..CapacityConfig::default()
        });
        for _ in 0..6 {
            r.report("a", report(10), Feed::Topic).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(r.snapshot().targets[0].health, Health::Healthy);
        assert_eq!(
            r.snapshot().targets[0].slow_start_percent,
            None,
            "config targets start at full weight"
        );
        std::thread::sleep(Duration::from_millis(900));
        r.refresh();
        let a = &r.snapshot().targets[0];
        assert_eq!(a.health, Health::Down, "{a:?}");
        assert!(a.reason.as_deref().unwrap().starts_with("phi"), "{a:?}");
        r.report("a", report(10), Feed::Topic).unwrap();
        let a = &r.snapshot().targets[0];
        assert_eq!(a.health, Health::Healthy, "fresh heartbeat: {a:?}");
        assert_eq!(
            a.slow_start_percent,
            Some(10),
            "comes back at the slow-start floor"
        );
        assert_eq!(a.weight, 10);
    }

    #[test]
    fn unknown_servers_join_only_from_allowed_endpoints() {
        let r = registry_with(CapacityConfig {
            allow_endpoints: vec!["http://127.0.0.1:*/records".into()],
            ..CapacityConfig::default()
        });
        let mut join = report(50);
        join.endpoint = Some("http://127.0.0.1:7000/records".into());
        r.report("dyn-1", join, Feed::Topic).unwrap();
        let s = r.snapshot();
        let d = &s.targets[s.index_of("dyn-1").unwrap()];
        assert!(d.dynamic);
        assert_eq!(&*d.url, "http://127.0.0.1:7000/records");
        assert!(d.slow_start_percent.is_some(), "new targets ramp up");
        let mut evil = report(50);
        evil.endpoint = Some("http://10.9.9.9:80/x".into());
        assert_eq!(
            r.report("dyn-2", evil, Feed::Topic).unwrap_err().reason(),
            "endpoint_not_allowed"
        );
        assert_eq!(r.snapshot().index_of("dyn-2"), None);
        // A config reload keeps dynamic targets.
        r.set_targets(&[target("a", 1)]);
        assert!(r.snapshot().index_of("dyn-1").is_some());
    }

    #[test]
    fn a_path_id_is_checked_like_a_server_id_before_joining() {
        let r = registry_with(CapacityConfig {
            allow_endpoints: vec!["http://127.0.0.1:*/records".into()],
            ..CapacityConfig::default()
        });
        let mut join = report(5);
        join.endpoint = Some("http://127.0.0.1:7000/records".into());
        for id in ["bad id!😀", &"x".repeat(3000), ""] {
            let e = r.report(id, join.clone(), Feed::Http).unwrap_err();
            assert_eq!(e.reason(), "invalid_id", "{e}");
            assert!(
                e.to_string().starts_with("target id \"")
                    && e.to_string()
                        .ends_with("is not 1..=64 chars of [A-Za-z0-9._-]"),
                "{e}"
            );
        }
        assert_eq!(r.snapshot().targets.len(), 2, "none joined");
        r.report("ok-1", join, Feed::Http).unwrap();
        assert!(r.snapshot().index_of("ok-1").is_some());
    }

    #[test]
    fn silent_dynamic_targets_are_removed_configured_ones_stay() {
        let r = registry_with(CapacityConfig {
            allow_endpoints: vec!["http://127.0.0.1:*".into()],
            remove_after_ms: 100,
            report_expiry_ms: 100,
            ..CapacityConfig::default()
        });
        let mut join = report(5);
        join.endpoint = Some("http://127.0.0.1:7001/records".into());
        r.report("dyn-1", join, Feed::Http).unwrap();
        r.report("a", report(5), Feed::Http).unwrap();
        assert_eq!(r.snapshot().targets.len(), 3);
        std::thread::sleep(Duration::from_millis(150));
        r.refresh();
        let s = r.snapshot();
        assert_eq!(s.index_of("dyn-1"), None, "silent dynamic target removed");
        assert_eq!(
            s.targets[s.index_of("a").unwrap()].health,
            Health::Down,
            "configured target only down"
        );
    }

    #[test]
    fn failing_health_checks_mark_down_and_passing_ones_bring_back() {
        let r = registry(10_000);
        for _ in 0..2 {
            r.health_result("a", Err("connection refused".into()));
        }
        assert_eq!(
            r.snapshot().targets[0].health,
            Health::Healthy,
            "2 < 3 failures"
        );
        r.health_result("a", Err("connection refused".into()));
        assert_eq!(r.snapshot().targets[0].health, Health::Down);
        r.health_result("a", Ok(()));
        assert_eq!(
            r.snapshot().targets[0].health,
            Health::Down,
            "1 < 2 successes"
        );
        r.health_result("a", Ok(()));
        assert_eq!(r.snapshot().targets[0].health, Health::Healthy);
    }

    fn health_of(r: &Registry, id: &str) -> (Health, Option<f64>) {
        let s = r.snapshot();
        let t = &s.targets[s.index_of(id).unwrap()];
        (t.health, t.phi)
    }

    /// The incident: a burst of 20,000 reports for a target, then its normal
    /// heartbeats every 100–200 ms for ~2 s, two of them lost in a row (a
    /// 600 ms gap), all on the registry's clock. The burst is rate-limited
    /// and what gets through is no sample (arrivals < 20 ms apart), so the
    /// target stays healthy with the suspicion of its real rhythm (highest φ
    /// about 3.5, in the gap). With the three fixes switched off (minimum
    /// interval 0, pause 0, 1,000 reports per second) this test fails, as the
    /// code before them would: the burst's 0 ms samples push φ over 8 within
    /// the 600 ms gap and the target goes down.
    #[test]
    fn a_report_flood_does_not_poison_the_failure_detector() {
        let r = registry(10_000);
        let tick = Duration::from_millis(10);
        // A history: 2 s of reports every 200 ms.
        for _ in 0..10 {
            r.report("a", report(10), Feed::Http).unwrap();
            r.advance(Duration::from_millis(200));
        }
        let mut rejected = 0;
        for i in 0..20_000 {
            r.advance(Duration::from_micros(3));
            match r.report("a", report(10_000 + i), Feed::Http) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.reason(), "rate_limited", "{e}");
                    rejected += 1;
                }
            }
        }
        // A burst of 20 passes, plus one per 50 ms of (real) time taken.
        assert!(rejected >= 19_000, "{rejected} rejected");
        let counted = r
            .metrics
            .capacity_reports
            .with_label_values(&["rejected", "rate_limited"])
            .get();
        assert_eq!(counted, rejected);
        // Normal heartbeats: 100, 150, 200 ms apart, then a 600 ms gap.
        let mut gaps: Vec<u64> = (0..12).map(|i| [100, 150, 200][i % 3]).collect();
        gaps.push(600);
        gaps.extend([200, 100, 150]);
        let mut worst: f64 = 0.0;
        for gap in gaps {
            for step in 1..=gap / 10 {
                r.advance(tick);
                r.refresh();
                let (health, phi) = health_of(&r, "a");
                worst = worst.max(phi.unwrap_or(0.0));
                assert_eq!(
                    health,
                    Health::Healthy,
                    "phi {phi:?} {} ms into a {gap} ms gap",
                    step * 10
                );
            }
            r.report("a", report(10), Feed::Http).unwrap();
            r.refresh();
            let (_, phi) = health_of(&r, "a");
            assert!(phi.unwrap() < 1.0, "right after a heartbeat: {phi:?}");
        }
        eprintln!("after a 20,000-report burst: highest phi {worst:.2} (threshold 8)");
        let st = r.live("a").unwrap().state.lock().unwrap().clone();
        let mean = st.phi.mean_interval_ms().unwrap();
        assert!((100.0..=260.0).contains(&mean), "learned mean {mean} ms");
    }

    #[test]
    fn reports_over_the_rate_limit_are_rejected_and_change_nothing() {
        let r = registry(10_000);
        let max = r.config().max_reports_per_second;
        let (mut kept, mut rejected) = (0, Vec::new());
        for capacity in 1..=2 * max {
            match r.report("a", report(capacity), Feed::Http) {
                Ok(()) => kept = capacity,
                Err(e) => rejected.push(e),
            }
        }
        // A burst of `max`, plus one per 50 ms of (real) time taken.
        assert!((max..max + 10).contains(&kept), "{kept} accepted");
        let e = &rejected[0];
        assert_eq!(e.reason(), "rate_limited");
        assert_eq!(
            e.to_string(),
            "target \"a\" sent more than capacity.max_reports_per_second (20) reports per \
             second; report dropped"
        );
        r.report("b", report(3), Feed::Http)
            .expect("the limit is per target");
        r.refresh();
        assert_eq!(
            r.snapshot().targets[0].capacity,
            kept,
            "rejected reports are not kept"
        );
        r.advance(Duration::from_millis(1000 / u64::from(max)));
        r.report("a", report(8), Feed::Http)
            .expect("the bucket refills at the configured rate");
        r.refresh();
        assert_eq!(r.snapshot().targets[0].capacity, 8);
    }

    #[test]
    fn load_reports_are_coalesced_state_changes_are_published_at_once() {
        // A long interval, so a slow test run cannot make a refresh due.
        let r = registry_with(CapacityConfig {
            refresh_interval_ms: 10_000,
            ..CapacityConfig::default()
        });
        r.report("a", report(10), Feed::Http).unwrap();
        assert_eq!(
            r.snapshot().targets[0].capacity,
            10,
            "first report: at once"
        );
        r.report("a", report(11), Feed::Http).unwrap();
        assert_eq!(
            r.snapshot().targets[0].capacity,
            10,
            "a load change waits for the next refresh"
        );
        let mut draining = report(11);
        draining.draining = true;
        r.report("a", draining, Feed::Http).unwrap();
        let a = &r.snapshot().targets[0];
        assert_eq!(
            (a.health, a.capacity),
            (Health::Degraded, 11),
            "draining: at once"
        );
        r.advance(Duration::from_millis(r.config().refresh_interval_ms));
        let mut more = report(12);
        more.draining = true;
        r.report("a", more, Feed::Http).unwrap();
        assert_eq!(
            r.snapshot().targets[0].capacity,
            12,
            "a refresh was due: the report does it"
        );
    }

    /// 10,000 servers from allowed endpoints try to join: `max_dynamic_targets`
    /// do, the rest are rejected and counted; a report with 1,000 targets
    /// present stays cheap because it does not rebuild the snapshot.
    #[test]
    fn dynamic_targets_are_capped_and_join_at_a_limited_rate() {
        let r = registry_with(CapacityConfig {
            allow_endpoints: vec!["http://127.0.0.1:*/records".into()],
            max_joins_per_second: 10_000,
            ..CapacityConfig::default()
        });
        let max = r.config().max_dynamic_targets;
        let join = |i: u32| {
            let mut j = report(5);
            j.endpoint = Some(format!("http://127.0.0.1:{}/records", 1 + i % 60_000));
            r.report(&format!("dyn-{i}"), j, Feed::Topic)
        };
        let started = Instant::now();
        let mut too_many = 0;
        for i in 0..10_000 {
            if let Err(e) = join(i) {
                assert_eq!(e.reason(), "too_many_targets", "{e}");
                too_many += 1;
            }
        }
        eprintln!("10,000 join attempts: {:?}", started.elapsed());
        r.refresh();
        let dynamic = r.snapshot().targets.iter().filter(|t| t.dynamic).count();
        assert_eq!(dynamic, max);
        assert_eq!(too_many, 10_000 - max);
        let count = |reason| {
            r.metrics
                .capacity_reports
                .with_label_values(&["rejected", reason])
                .get()
        };
        assert_eq!(count("too_many_targets"), (10_000 - max) as u64);
        assert_eq!(r.metrics.capacity_dynamic_targets.get(), max as i64);
        let e = join(20_000).unwrap_err();
        assert!(
            e.to_string()
                .contains("capacity.max_dynamic_targets (1000)"),
            "{e}"
        );

        // One report with 1,000 targets present: no rebuild of its own.
        r.refresh();
        let started = Instant::now();
        r.report("dyn-7", report(6), Feed::Topic).unwrap();
        let one = started.elapsed();
        let started = Instant::now();
        r.refresh();
        let rebuild = started.elapsed();
        eprintln!(
            "with {} targets: one report {one:?}, one snapshot rebuild {rebuild:?}",
            r.snapshot().targets.len()
        );

        // The join rate: a burst of as many as the limit, then rejections.
        let r = registry_with(CapacityConfig {
            allow_endpoints: vec!["http://127.0.0.1:*/records".into()],
            ..CapacityConfig::default()
        });
        let per_second = r.config().max_joins_per_second;
        let results: Vec<_> = (0..100)
            .map(|i| {
                let mut j = report(5);
                j.endpoint = Some(format!("http://127.0.0.1:{}/records", 7000 + i));
                r.report(&format!("burst-{i}"), j, Feed::Http)
            })
            .collect();
        let joined = results.iter().filter(|x| x.is_ok()).count();
        // A burst of as many, plus one per 50 ms of (real) time taken.
        let burst = per_second as usize;
        assert!((burst..burst + 10).contains(&joined), "{joined} joined");
        for e in results.iter().filter_map(|x| x.as_ref().err()) {
            assert_eq!(e.reason(), "join_rate_limited", "{e}");
        }
        r.advance(Duration::from_secs(1));
        let mut j = report(5);
        j.endpoint = Some("http://127.0.0.1:7099/records".into());
        r.report("burst-99", j, Feed::Http)
            .expect("joins again a second later");
    }

    #[test]
    fn report_tokens_come_from_the_target_config() {
        let mut with_token = target("a", 1);
        with_token.report_token = Some("0123456789abcdef".into());
        let r = Registry::new(
            CapacityConfig {
                allow_endpoints: vec!["http://127.0.0.1:*".into()],
                ..CapacityConfig::default()
            },
            &[with_token, target("b", 1)],
            Arc::new(Metrics::new()),
        );
        assert_eq!(r.report_token("a").as_deref(), Some("0123456789abcdef"));
        assert_eq!(r.report_token("b"), None);
        assert_eq!(r.report_token("nope"), None);
        let mut join = report(5);
        join.endpoint = Some("http://127.0.0.1:7001/records".into());
        r.report("dyn-1", join, Feed::Http).unwrap();
        assert_eq!(r.report_token("dyn-1"), None, "dynamic targets have none");
    }
}
