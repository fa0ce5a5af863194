//! The router step: where each record goes.
//!
//! ```text
//!  filter survivors ─► router plugin ─► decide ─► target queues (dispatch)
//!                                         │ no target: parking queue (wait)
//!                                         │   or dead-letter topic
//!  a target failed for good ─► router plugin, failed targets marked down ─► decide
//! ```
//!
//! One decision table ([`decide`]) serves both passes: a router's targets
//! that are down (or failed this record) are left out; if none is left, or
//! the router answered `default`, the host's own policy ([`fallback`])
//! picks one. On the second pass every copy of a key goes where its first
//! copy goes, so a key's records stay together and in offset order.

use crate::capacity::{Health, Snapshot};
use crate::config::WhenNoTarget;
use crate::dispatch::{Destination, Dispatcher, Job, Placed, Reroute};
use crate::metrics::Metrics;
use crate::plugin::router::{Route, RouterPlugin, Targets};
use crate::plugin::slot::Slot;
use crate::record::Record;
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the host does with one record, given the router's answer.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// Deliver to these targets (indexes into the snapshot; empty: no
    /// target can take it now). `defaulted`: the host's policy chose.
    Targets { targets: Targets, defaulted: bool },
    /// The router dropped it.
    Drop,
    /// The router dead-lettered it, for this reason.
    DeadLetter(String),
}

/// The decision table. `route` is the router's answer for a record,
/// `excluded` the targets it already failed at; `extra[t]` counts the
/// records placed on target `t` earlier in this pass (for [`fallback`]).
pub fn decide(view: &Snapshot, extra: &[u32], route: Route, excluded: &[Arc<str>]) -> Placement {
    let allowed = |t: usize| {
        let target = &view.targets[t];
        target.health != Health::Down && !excluded.contains(&target.id)
    };
    let by_host = || Placement::Targets {
        targets: fallback(view, extra).into_iter().collect(),
        defaulted: true,
    };
    match route {
        Route::Targets(ts) => {
            let up: Targets = ts.into_iter().filter(|&t| allowed(t)).collect();
            if up.is_empty() {
                by_host()
            } else {
                Placement::Targets {
                    targets: up,
                    defaulted: false,
                }
            }
        }
        Route::Default => by_host(),
        Route::Drop => Placement::Drop,
        Route::DeadLetter(reason) => Placement::DeadLetter(reason),
    }
}

/// The host's built-in policy (router `default`, a router that chose only
/// down targets, or none that could decide): power of two choices, two
/// healthy targets drawn at random and the one with the lower
/// `(own in-flight + placed in this batch + 1) / (capacity × weight)` wins —
/// CDRS's own counts, so stale or missing heartbeats
/// cannot mislead it (Mitzenmacher, "The Power of Two Choices in Randomized
/// Load Balancing", 2001). Degraded targets only when no healthy one
/// exists. `None` if all are down.
pub fn fallback(snapshot: &Snapshot, extra: &[u32]) -> Option<usize> {
    fallback_with(snapshot, extra, |n| fastrand::usize(..n))
}

/// [`fallback`] drawing its two candidates with `below(n)` (a number in
/// `0..n`): a seeded generator makes it repeatable (`cdrs simulate`).
pub fn fallback_with(
    snapshot: &Snapshot,
    extra: &[u32],
    mut below: impl FnMut(usize) -> usize,
) -> Option<usize> {
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
                let a = below(n);
                let b = (a + 1 + below(n - 1)) % n;
                let (a, b) = (up[a], up[b]);
                return Some(if load(a) <= load(b) { a } else { b });
            }
        }
    }
    None
}

/// A record to look up ([`Routing::lookup`]): what a router can see of a
/// record that is not there yet.
#[derive(Debug, Clone)]
pub struct Probe {
    pub topic: Arc<str>,
    /// The record's partition; `-1` when the caller does not know it.
    pub partition: i32,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Where the key's records in flight are bound, if any are: records of
    /// the key read now follow them there.
    pub bound: Option<Destination>,
}

/// Where a record with a given key would be delivered now, and why
/// (`GET`/`POST /v1/route`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lookup {
    /// The key, as given (UTF-8, lossy).
    pub key: String,
    pub topic: String,
    /// As given, or where the key's records are in flight; `-1` if neither.
    pub partition: i32,
    /// The target ids a record of this key would be queued on now; empty
    /// when none can take it (it waits or is dead-lettered by
    /// `delivery.when_no_target`) or the router drops or dead-letters it.
    pub targets: Vec<String>,
    /// Why: `router` (the router chose), `host` (the host's fallback
    /// chose: the router answered `default` or only targets that are
    /// down), `in-flight` (records of the key are in flight to that target,
    /// so this one follows them; `router_targets` is the router's own
    /// choice), `parked` (records of the key wait for a target), `drop`,
    /// `dead-letter` (with `reason`), `no-target`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_targets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version of the capacity snapshot the router decided on.
    pub snapshot_version: u64,
}

/// The router step of the pipeline: calls the router plugin, applies
/// [`decide`], and hands the records to the dispatcher.
pub struct Routing {
    router: Arc<Slot<RouterPlugin>>,
    dispatch: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    /// Versions of the derived snapshots given to the router on re-route
    /// (from 2^62, apart from the registry's).
    versions: AtomicU64,
    /// Keys gateways looked up, checked again when the targets change.
    watched: std::sync::Mutex<HashMap<WatchedKey, Watched>>,
    /// `admin.route_watch_ms` and `admin.route_watch_max_keys`.
    watch_ms: AtomicU64,
    watch_max_keys: std::sync::atomic::AtomicUsize,
    /// `[router.shadow]`: offered a sample of the fresh batches.
    shadow: std::sync::OnceLock<Arc<crate::plugin::shadow::Shadow>>,
    /// `GET /v1/plugins/{router}/capture`: the next fresh batches as routed.
    pub capture: crate::plugin::capture::Capture,
}

/// A remembered key: its topic and the key's bytes.
type WatchedKey = (Arc<str>, Vec<u8>);

/// Most moves in one `route.moved` event.
pub const MOVES_PER_EVENT: usize = 200;

/// A looked-up key: the probe (headers and partition as asked) and the
/// targets the last answer named.
struct Watched {
    probe: Probe,
    targets: Vec<String>,
    asked: std::time::Instant,
}

/// One key whose answer changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Move {
    pub key: String,
    pub topic: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

impl Routing {
    pub fn new(
        router: Arc<Slot<RouterPlugin>>,
        dispatch: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
    ) -> Arc<Routing> {
        Arc::new(Routing {
            router,
            dispatch,
            metrics,
            versions: AtomicU64::new(1 << 62),
            watched: Default::default(),
            watch_ms: AtomicU64::new(crate::config::DEFAULT_ROUTE_WATCH_MS),
            watch_max_keys: crate::config::DEFAULT_ROUTE_WATCH_MAX_KEYS.into(),
            shadow: std::sync::OnceLock::new(),
            capture: Default::default(),
        })
    }

    /// Offers fresh batches to `shadow` from now on (once; later calls are
    /// ignored).
    pub fn set_shadow(&self, shadow: Arc<crate::plugin::shadow::Shadow>) {
        let _ = self.shadow.set(shadow);
    }

    /// Remember looked-up keys for `ms` after their last lookup, at most
    /// `max_keys` of them (`admin.route_watch_ms`,
    /// `admin.route_watch_max_keys`).
    pub fn set_watch(&self, ms: u64, max_keys: usize) {
        self.watch_ms.store(ms, Ordering::Relaxed);
        self.watch_max_keys.store(max_keys, Ordering::Relaxed);
    }

    /// How long a key is remembered after its last lookup.
    fn watch_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.watch_ms.load(Ordering::Relaxed))
    }

    /// Where records like `probes` would be delivered now: the live router
    /// is called on them exactly as on records read from Kafka (one call
    /// per topic and partition, against the current capacity snapshot),
    /// then the decision table. Nothing is queued and no count of the
    /// host's (in-flight, placed, routed) changes; the calls show in the
    /// router's call metrics. Records have the probe's key and headers, no
    /// value, offset `-1` and the current time as timestamp. Blocking: the
    /// router runs on the calling thread.
    pub fn lookup(&self, probes: &[Probe]) -> Vec<Lookup> {
        let view = self.dispatch.registry.snapshot();
        let router = self.router.current();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let records: Vec<Record> = probes
            .iter()
            .map(|p| Record {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: -1,
                timestamp_ms: Some(now),
                key: Some(p.key.clone()),
                value: None,
                headers: p.headers.clone(),
            })
            .collect();
        let mut groups: BTreeMap<(Arc<str>, i32), Vec<usize>> = BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            groups
                .entry((p.topic.clone(), p.partition))
                .or_default()
                .push(i);
        }
        let mut routes: Vec<Option<Route>> = vec![None; probes.len()];
        for ((topic, partition), at) in groups {
            let refs: Vec<&Record> = at.iter().map(|&i| &records[i]).collect();
            let answers = router.route(&view, &topic, partition, &refs);
            for (i, route) in at.into_iter().zip(answers) {
                routes[i] = Some(route);
            }
        }
        self.router.check_health();
        let ids = |ts: &[usize]| -> Vec<String> {
            ts.iter().map(|&t| view.targets[t].id.to_string()).collect()
        };
        let extra = vec![0u32; view.targets.len()];
        let waits = self.dispatch.delivery.load().cfg.when_no_target == WhenNoTarget::Wait;
        probes
            .iter()
            .zip(routes)
            .map(|(p, route)| {
                let placement = decide(&view, &extra, route.unwrap_or(Route::Default), &[]);
                let (mut targets, mut decision, mut reason) = match placement {
                    Placement::Targets { targets, .. } if targets.is_empty() => {
                        (Vec::new(), "no-target", None)
                    }
                    Placement::Targets { targets, defaulted } => (
                        ids(&targets),
                        if defaulted { "host" } else { "router" },
                        None,
                    ),
                    Placement::Drop => (Vec::new(), "drop", None),
                    Placement::DeadLetter(why) => (Vec::new(), "dead-letter", Some(why)),
                };
                let mut router_targets = None;
                // As in `place`: a single-target record whose key has
                // copies in flight joins them (fan-out copies do not).
                let follows = match decision {
                    "router" | "host" => targets.len() == 1,
                    "no-target" => waits,
                    _ => false,
                };
                if follows {
                    if let Some(bound) = &p.bound {
                        let (to, why) = match bound {
                            Destination::Target(id) => (vec![id.to_string()], "in-flight"),
                            Destination::Parking => (Vec::new(), "parked"),
                        };
                        if to != targets {
                            router_targets = Some(std::mem::replace(&mut targets, to));
                            decision = why;
                            reason = None;
                        }
                    }
                }
                Lookup {
                    key: String::from_utf8_lossy(&p.key).into_owned(),
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    targets,
                    decision,
                    router_targets,
                    reason,
                    snapshot_version: view.version,
                }
            })
            .collect()
    }

    /// Remembers looked-up keys and their first answers, so a change of
    /// targets can tell which moved ([`Routing::recheck`]): a key's
    /// remembered targets change only when a move is announced. Keys are kept
    /// `admin.route_watch_ms` after their last lookup, at most
    /// `admin.route_watch_max_keys` (beyond it, new keys are not remembered).
    pub fn remember(&self, probes: &[Probe], answers: &[Lookup]) {
        let now = std::time::Instant::now();
        let (ttl, max) = (
            self.watch_ttl(),
            self.watch_max_keys.load(Ordering::Relaxed),
        );
        let mut watched = self.watched.lock().expect("watched keys lock");
        if watched.len() + probes.len() > max {
            watched.retain(|_, w| now.duration_since(w.asked) < ttl);
        }
        for (p, a) in probes.iter().zip(answers) {
            let id = (p.topic.clone(), p.key.clone());
            if let Some(w) = watched.get_mut(&id) {
                // Its targets stay the last ones announced: a gateway that
                // asked before a change still needs the `route.moved`.
                w.asked = now;
                continue;
            }
            if watched.len() >= max {
                continue;
            }
            let probe = Probe {
                bound: None,
                ..p.clone()
            };
            watched.insert(
                id,
                Watched {
                    probe,
                    targets: a.targets.clone(),
                    asked: now,
                },
            );
        }
    }

    /// Looks every remembered key up again (as the router maps it, leaving
    /// in-flight bindings aside) and returns those whose targets changed,
    /// remembering the new answer. Forgets keys not looked up for
    /// `admin.route_watch_ms`. Blocking, like [`Routing::lookup`].
    pub fn recheck(&self) -> Vec<Move> {
        let now = std::time::Instant::now();
        let ttl = self.watch_ttl();
        let probes: Vec<Probe> = {
            let mut watched = self.watched.lock().expect("watched keys lock");
            watched.retain(|_, w| now.duration_since(w.asked) < ttl);
            watched.values().map(|w| w.probe.clone()).collect()
        };
        if probes.is_empty() {
            return Vec::new();
        }
        let answers = self.lookup(&probes);
        let mut watched = self.watched.lock().expect("watched keys lock");
        let mut moves = Vec::new();
        for (p, a) in probes.into_iter().zip(answers) {
            let Some(w) = watched.get_mut(&(p.topic.clone(), p.key.clone())) else {
                continue;
            };
            if w.targets != a.targets {
                moves.push(Move {
                    key: a.key,
                    topic: a.topic,
                    from: std::mem::replace(&mut w.targets, a.targets.clone()),
                    to: a.targets,
                });
            }
        }
        moves
    }

    /// Follows the event bus: after each `target.joined`, `target.left` or
    /// `target.health` event (and any that follow within 50 ms), checks
    /// the remembered keys again and publishes their moves as
    /// `route.moved` events, at most [`MOVES_PER_EVENT`] each. Ends when
    /// the bus closes.
    pub fn publish_moves(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        use tokio::sync::broadcast::error::RecvError;
        let events = self.metrics.events.clone();
        let mut sub = events.subscribe(None);
        tokio::spawn(async move {
            if sub.closed {
                return;
            }
            loop {
                let cause = match sub.live.recv().await {
                    Ok(Some(e)) if e.kind.starts_with("target.") => Some(e.id),
                    Ok(Some(_)) => continue,
                    // Fell behind: a target may have changed meanwhile.
                    Err(RecvError::Lagged(_)) => None,
                    Ok(None) | Err(RecvError::Closed) => return,
                };
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let mut causes: Vec<u64> = cause.into_iter().collect();
                while let Ok(e) = sub.live.try_recv() {
                    match e {
                        Some(e) if e.kind.starts_with("target.") => causes.push(e.id),
                        Some(_) => {}
                        None => return,
                    }
                }
                let me = self.clone();
                let Ok(moves) = tokio::task::spawn_blocking(move || me.recheck()).await else {
                    continue;
                };
                let parts = moves.len().div_ceil(MOVES_PER_EVENT);
                for (i, chunk) in moves.chunks(MOVES_PER_EVENT).enumerate() {
                    events.publish(
                        "route.moved",
                        serde_json::json!({
                            "moves": chunk,
                            "part": i + 1,
                            "parts": parts,
                            "after_events": causes,
                        }),
                    );
                }
            }
        })
    }

    /// Finishes a record the router dropped or dead-lettered; the targets
    /// of one it placed.
    async fn settle(&self, j: Job, placement: Placement) -> Option<(Job, Targets, bool)> {
        match placement {
            Placement::Targets { targets, defaulted } => Some((j, targets, defaulted)),
            Placement::Drop => {
                self.metrics.count("router", "dropped", 1);
                j.finish();
                None
            }
            Placement::DeadLetter(reason) => {
                self.dispatch.dead_letter_job(j, "router", &reason).await;
                None
            }
        }
    }

    /// Runs the filter-chain survivors of a fresh batch (one partition,
    /// offset order) through the router and queues them. A keyed record
    /// whose key has copies in flight follows them (same target, same
    /// lane). Records no target can take are parked
    /// (`when_no_target = "wait"`) or dead-lettered.
    pub async fn place(self: &Arc<Self>, jobs: Vec<Job>) {
        let view = self.dispatch.registry.snapshot();
        let router = self.router.current();
        let (topic, partition) = match jobs.first() {
            Some(j) => (j.record.topic.clone(), j.record.partition),
            None => return,
        };
        let refs: Vec<&Record> = jobs.iter().map(|j| &*j.record).collect();
        let routes = tokio::task::block_in_place(|| router.route(&view, &topic, partition, &refs));
        self.router.check_health();
        if self.capture.armed() {
            self.capture
                .offer(&router, &view, (&topic, partition), &refs, &routes);
        }
        if let Some(shadow) = self.shadow.get() {
            shadow.offer(
                &view,
                || jobs.iter().map(|j| j.record.clone()).collect(),
                &routes,
            );
        }
        let mut extra = vec![0u32; view.targets.len()];
        let (mut routed, mut defaulted) = (0, 0);
        let mut unplaced = Vec::new();
        let mut queued: Vec<(Destination, Job)> = Vec::with_capacity(jobs.len());
        for (j, route) in jobs.into_iter().zip(routes) {
            let placement = decide(&view, &extra, route, &j.excluded);
            let Some((mut j, targets, by_host)) = self.settle(j, placement).await else {
                continue;
            };
            if by_host {
                defaulted += 1;
            } else {
                routed += 1;
            }
            if targets.is_empty() {
                unplaced.push(j);
                continue;
            }
            for &t in &targets {
                extra[t] += 1;
            }
            if targets.len() > 1 {
                // Fan-out copies are not bound to their key's route.
                j.key = None;
                j.part.add_copies(j.record.offset, targets.len() as u32 - 1);
            }
            for &t in &targets[1..] {
                let copy = Job::new(j.record.clone(), j.part.clone(), None, j.router.clone())
                    .with_trace(j.trace.clone());
                queued.push((Destination::Target(view.targets[t].id.clone()), copy));
            }
            queued.push((Destination::Target(view.targets[targets[0]].id.clone()), j));
        }
        let reroute: Arc<dyn Reroute> = self.clone();
        if self.dispatch.enqueue_all(queued, &reroute).await.is_err() {
            return;
        }
        self.metrics.count("router", "routed", routed);
        self.metrics.count("router", "defaulted", defaulted);
        let when_no_target = self.dispatch.delivery.load().cfg.when_no_target;
        if when_no_target == WhenNoTarget::Wait {
            // Parked, unless its key has copies in flight: then behind them.
            let parked = unplaced
                .into_iter()
                .map(|j| (Destination::Parking, j))
                .collect();
            let _ = self.dispatch.enqueue_all(parked, &reroute).await;
        } else {
            for j in unplaced {
                let why = "no target can take the record".to_string();
                self.dispatch.dead_letter_job(j, "delivery", &why).await;
            }
        }
    }

    /// Asks the router again where `jobs` (offset order per partition) go,
    /// with their failed targets marked down. All copies of one key go
    /// where its first copy goes (or all wait). Records the router drops or
    /// dead-letters finish here.
    async fn place_again(&self, jobs: Vec<Job>) -> Placed {
        let snapshot = self.dispatch.registry.snapshot();
        let view = if jobs.iter().all(|j| j.excluded.is_empty()) {
            snapshot
        } else {
            let mut view: Snapshot = (*snapshot).clone();
            view.version = self.versions.fetch_add(1, Ordering::Relaxed);
            for t in &mut view.targets {
                if jobs.iter().any(|j| j.excluded.contains(&t.id)) {
                    t.health = Health::Down;
                }
            }
            Arc::new(view)
        };
        // The router is called per partition, as on the first pass.
        let mut by_partition: BTreeMap<(Arc<str>, i32), Vec<Job>> = BTreeMap::new();
        for j in jobs {
            by_partition
                .entry((j.record.topic.clone(), j.record.partition))
                .or_default()
                .push(j);
        }
        let router = self.router.current();
        let mut extra = vec![0u32; view.targets.len()];
        let mut placed = Placed::default();
        for ((topic, partition), jobs) in by_partition {
            let refs: Vec<&Record> = jobs.iter().map(|j| &*j.record).collect();
            let routes =
                tokio::task::block_in_place(|| router.route(&view, &topic, partition, &refs));
            self.router.check_health();
            // Key → where its first copy went (None: waiting).
            let mut keys: HashMap<u64, Option<usize>> = HashMap::new();
            for (j, route) in jobs.into_iter().zip(routes) {
                let placement = match j.key.and_then(|h| keys.get(&h).copied()) {
                    Some(first) => Placement::Targets {
                        targets: first.into_iter().collect(),
                        defaulted: false,
                    },
                    None => decide(&view, &extra, route, &j.excluded),
                };
                let Some((j, targets, _)) = self.settle(j, placement).await else {
                    continue;
                };
                if let Some(h) = j.key {
                    keys.entry(h).or_insert(targets.first().copied());
                }
                if targets.is_empty() {
                    placed.waiting.push(j);
                    continue;
                }
                for &t in &targets {
                    extra[t] += 1;
                }
                j.part.add_copies(j.record.offset, targets.len() as u32 - 1);
                let mut copies: Vec<Job> = targets[1..]
                    .iter()
                    .map(|_| {
                        let mut copy =
                            Job::new(j.record.clone(), j.part.clone(), None, j.router.clone())
                                .with_trace(j.trace.clone());
                        copy.attempts = j.attempts;
                        copy.excluded = j.excluded.clone();
                        copy
                    })
                    .collect();
                copies.insert(0, j);
                for (job, &t) in copies.into_iter().zip(&targets) {
                    let id = &view.targets[t].id;
                    match placed.groups.iter_mut().find(|(g, _)| g == id) {
                        Some((_, js)) => js.push(job),
                        None => placed.groups.push((id.clone(), vec![job])),
                    }
                }
            }
        }
        placed
    }
}

impl Reroute for Routing {
    fn route_again(&self, jobs: Vec<Job>) -> BoxFuture<'_, Placed> {
        Box::pin(self.place_again(jobs))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capacity::TargetView;

    pub(crate) fn target(id: &str, capacity: u32, own_inflight: u32, health: Health) -> TargetView {
        TargetView {
            id: id.into(),
            url: format!("http://127.0.0.1:1/{id}").into(),
            zone: None,
            labels: Vec::new(),
            weight: 1,
            capacity,
            inflight: 0,
            own_inflight,
            queue_depth: 0,
            cpu_permille: 0,
            mem_permille: 0,
            latency_p99_ms: 0,
            latency_ewma_us: 0,
            error_rate_permille: 0,
            health,
            reason: None,
            report_age_ms: None,
            feed: None,
            phi: None,
            dynamic: false,
            slow_start_percent: None,
            subscribers: None,
        }
    }

    fn snapshot(targets: Vec<TargetView>) -> Snapshot {
        Snapshot {
            version: 1,
            targets,
        }
    }

    fn routed(targets: &[usize]) -> Placement {
        Placement::Targets {
            targets: targets.iter().copied().collect(),
            defaulted: false,
        }
    }

    /// Every row of the decision table.
    #[test]
    fn the_decision_table() {
        let view = snapshot(vec![
            target("a", 100, 0, Health::Healthy),
            target("b", 100, 0, Health::Down),
            target("c", 100, 0, Health::Degraded),
        ]);
        let extra = [0; 3];
        let none: &[Arc<str>] = &[];
        let route = |ts: &[usize]| Route::Targets(ts.iter().copied().collect());
        // The router's targets, down ones left out (degraded ones kept).
        assert_eq!(
            decide(&view, &extra, route(&[0, 1, 2]), none),
            routed(&[0, 2])
        );
        // Only down targets, or `default`: the host's policy, healthy first.
        let by_host = Placement::Targets {
            targets: smallvec::smallvec![0],
            defaulted: true,
        };
        assert_eq!(decide(&view, &extra, route(&[1]), none), by_host);
        assert_eq!(decide(&view, &extra, Route::Default, none), by_host);
        // A target this record already failed at counts as down.
        let failed_a: &[Arc<str>] = &["a".into()];
        assert_eq!(
            decide(&view, &extra, route(&[0, 2]), failed_a),
            routed(&[2])
        );
        assert_eq!(
            decide(&view, &extra, Route::Drop, none),
            Placement::Drop,
            "drop"
        );
        assert_eq!(
            decide(&view, &extra, Route::DeadLetter("bad".into()), none),
            Placement::DeadLetter("bad".into())
        );
        // Nothing up: no target (the caller parks or dead-letters).
        let all_down = snapshot(vec![target("a", 100, 0, Health::Down)]);
        assert_eq!(
            decide(&all_down, &[0], Route::Default, none),
            Placement::Targets {
                targets: Targets::new(),
                defaulted: true
            }
        );
    }

    #[test]
    fn fallback_prefers_healthy_then_degraded() {
        let degraded_only = snapshot(vec![
            target("a", 100, 0, Health::Down),
            target("b", 100, 0, Health::Degraded),
        ]);
        assert_eq!(fallback(&degraded_only, &[0, 0]), Some(1));
        let mixed = snapshot(vec![
            target("a", 100, 0, Health::Degraded),
            target("b", 100, 0, Health::Healthy),
        ]);
        for _ in 0..100 {
            assert_eq!(fallback(&mixed, &[0, 0]), Some(1));
        }
        assert_eq!(fallback(&snapshot(Vec::new()), &[]), None);
    }

    /// With two candidates both are drawn, so the less loaded one always
    /// wins, counting CDRS's own in-flight records, those placed earlier in
    /// the pass, and capacity.
    #[test]
    fn fallback_picks_the_less_loaded_of_two() {
        let busy_a = snapshot(vec![
            target("a", 100, 50, Health::Healthy),
            target("b", 100, 10, Health::Healthy),
        ]);
        let bigger_b = snapshot(vec![
            target("a", 100, 10, Health::Healthy),
            target("b", 400, 20, Health::Healthy),
        ]);
        for _ in 0..100 {
            assert_eq!(fallback(&busy_a, &[0, 0]), Some(1));
            assert_eq!(fallback(&busy_a, &[0, 60]), Some(0));
            assert_eq!(fallback(&bigger_b, &[0, 0]), Some(1));
        }
    }

    /// Over many picks among equal targets, each gets a fair share.
    #[test]
    fn fallback_spreads_equal_targets() {
        let view = snapshot(
            (0..4)
                .map(|i| target(&format!("t{i}"), 100, 0, Health::Healthy))
                .collect(),
        );
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[fallback(&view, &[0; 4]).expect("a target")] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..=1300).contains(&c)),
            "{counts:?}"
        );
    }

    /// `Routing::lookup` on the real sticky P2C router: each key gets the
    /// router's answer, the same every time; a key with records in flight
    /// is named where they are bound (`in-flight`, the router's own choice
    /// kept apart) or as waiting (`parked`); once a target is down only its
    /// keys move, and none is looked up there.
    #[test]
    fn lookups_follow_the_router_and_in_flight_bindings() {
        use crate::capacity::{CapacityReport, Feed, Registry};
        use crate::config::{CapacityConfig, DeliveryConfig, PluginRuntimeConfig, TargetConfig};
        use crate::dispatch::Delivery;
        use crate::plugin::slot::RollbackPolicy;
        use crate::plugin::Runtime;
        use crate::sink::kafka::DeadLetterSink;
        use std::time::Duration;

        let metrics = Arc::new(Metrics::new());
        let ids = ["a", "b", "c"];
        let configs: Vec<TargetConfig> = ids
            .iter()
            .map(|id| TargetConfig::new(*id, format!("http://127.0.0.1:1/{id}"), 100))
            .collect();
        let registry = Arc::new(Registry::new(
            CapacityConfig::default(),
            &configs,
            metrics.clone(),
        ));
        for id in ids {
            registry
                .report(id, CapacityReport::new(100), Feed::Http)
                .unwrap();
        }
        let brokers = crate::testkit::kafka::leaked_mock(&[("dlq", 1)])
            .expect("mock cluster")
            .bootstrap_servers();
        let dispatch = Arc::new(Dispatcher::new(
            registry.clone(),
            Delivery::standalone(&DeliveryConfig::default()).expect("delivery"),
            DeadLetterSink::new(&brokers, "dlq", &BTreeMap::new()).expect("dead-letter producer"),
            metrics.clone(),
            brokers,
            BTreeMap::new(),
        ));
        let dir = std::env::var_os("CDRS_PLUGIN_DIR").map_or_else(
            || {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/wasm32-wasip2/plugin")
            },
            std::path::PathBuf::from,
        );
        let runtime = Runtime::new(&PluginRuntimeConfig {
            instances: 1,
            ..Default::default()
        })
        .unwrap();
        let router = RouterPlugin::load(
            &runtime,
            &crate::testkit::demo_router(&dir, true),
            metrics.clone(),
        )
        .expect("p2c_router.wasm (scripts/dev.sh plugins)");
        let policy = RollbackPolicy {
            faults: 100,
            window: Duration::from_secs(10),
        };
        let slot = Arc::new(Slot::new(router, "config", policy, Default::default()));
        let routing = Routing::new(slot, dispatch, metrics.clone());
        let probe = |key: &str, bound: Option<Destination>| Probe {
            topic: "trades".into(),
            partition: -1,
            key: key.as_bytes().to_vec(),
            headers: Vec::new(),
            bound,
        };
        let keys: Vec<String> = (0..60).map(|i| format!("client-{i}")).collect();
        let ask = || routing.lookup(&keys.iter().map(|k| probe(k, None)).collect::<Vec<_>>());
        let first = ask();
        assert_eq!(first, ask(), "the same answers twice");
        for l in &first {
            assert_eq!((l.decision, l.targets.len()), ("router", 1), "{l:?}");
        }
        let on = |t: &str| first.iter().filter(|l| l.targets[0] == t).count();
        assert!(ids.iter().all(|t| on(t) > 0), "{first:?}");

        // Bound elsewhere than the router would choose: follows the binding.
        let k = &first[0];
        let other = ids.iter().find(|t| **t != k.targets[0]).unwrap();
        let bound = routing.lookup(&[probe(&k.key, Some(Destination::Target((*other).into())))]);
        assert_eq!(bound[0].decision, "in-flight");
        assert_eq!(bound[0].targets, [other.to_string()]);
        assert_eq!(bound[0].router_targets.as_deref(), Some(&k.targets[..]));
        // Bound where the router chooses anyway: the router's answer.
        let same = routing.lookup(&[probe(
            &k.key,
            Some(Destination::Target(k.targets[0].as_str().into())),
        )]);
        assert_eq!(same[0], *k);
        let parked = routing.lookup(&[probe(&k.key, Some(Destination::Parking))]);
        assert_eq!((parked[0].decision, parked[0].targets.len()), ("parked", 0));

        let probes: Vec<Probe> = keys.iter().map(|k| probe(k, None)).collect();
        routing.remember(&probes, &first);
        assert!(routing.recheck().is_empty(), "nothing changed yet");

        // "c" down: only its keys move, none to "c".
        registry.eject("c", Duration::from_secs(60), "test");
        // A lookup after the change does not hide the move from gateways
        // that asked before it.
        routing.remember(&probes, &ask());
        let moves = routing.recheck();
        let on_c: Vec<&String> = first
            .iter()
            .filter(|l| l.targets == ["c"])
            .map(|l| &l.key)
            .collect();
        assert_eq!(
            moves.iter().map(|m| &m.key).collect::<Vec<_>>().len(),
            on_c.len()
        );
        for m in &moves {
            assert!(on_c.contains(&&m.key), "{m:?}");
            assert_eq!(m.from, ["c"]);
            assert_ne!(m.to, ["c"]);
        }
        assert!(routing.recheck().is_empty(), "each move announced once");
        let after = ask();
        for (was, now) in first.iter().zip(&after) {
            assert_ne!(now.targets, ["c"], "{now:?}");
            if was.targets != ["c"] {
                assert_eq!(was.targets, now.targets, "{} moved", was.key);
            }
        }
        assert!(after[0].snapshot_version > first[0].snapshot_version);

        // `admin.route_watch_ms`: keys not looked up for that long are
        // forgotten; `admin.route_watch_max_keys`: at most that many kept.
        routing.set_watch(1, 10);
        std::thread::sleep(Duration::from_millis(5));
        assert!(routing.recheck().is_empty());
        routing.set_watch(600_000, 10);
        routing.remember(&probes, &after);
        registry.eject("b", Duration::from_secs(60), "test");
        let moves = routing.recheck();
        let first_ten_on_b = after[..10].iter().filter(|l| l.targets == ["b"]).count();
        assert_eq!(moves.len(), first_ten_on_b, "{moves:?}");
        assert!(
            moves.iter().all(|m| keys[..10].contains(&m.key)),
            "{moves:?}"
        );
    }
}
