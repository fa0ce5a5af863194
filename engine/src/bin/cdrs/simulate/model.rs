//! The discrete-event model of `cdrs simulate`, in virtual time (ns).
//!
//! Records arrive (Poisson or bursty, keys uniform or Zipf), each at the
//! CDRS instance its key belongs to (as a partition would be). An instance
//! collects them into batches (`batch` records or `linger_ms` after the
//! first) and asks its policy for a target per record against its own
//! view: a [`Snapshot`] rebuilt every `refresh_ms` from the capacity
//! reports it received (sent every `report_every_ms`, arriving
//! `report_delay_ms` late) and its own in-flight counts, as the host's
//! capacity registry builds it. A router plugin sees exactly what it would
//! see in CDRS: the snapshot pushed when its version changes, then the
//! batch. A server serves `concurrency` records at once (service times
//! drawn from its distribution, times a slowdown factor while one is
//! scheduled) and queues the rest first in, first out. A request to a
//! crashed server fails at once: the instance marks it down, as the host
//! does for an unreachable target, and routes the records again; so do the
//! records queued or in service at a server when it crashes. The host's
//! fallback (power of two choices on own in-flight ÷ capacity) places
//! records the policy leaves to it. Each instance keeps an EWMA of every
//! server's delivery latency (send to end of service) for the snapshot's
//! `latency_ewma_us`, as the host does.

use super::scenario::{ArrivalKind, Distribution, Scenario};
use cdrs::capacity::{Health, Snapshot, TargetView};
use cdrs::plugin::router::{Route, RouterPlugin};
use cdrs::record::Record;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

const MS: u64 = 1_000_000;

/// How long records no target can take wait before the next try, ns
/// (`delivery.retry_initial_ms`).
const RETRY_NS: u64 = 50 * MS;

/// After the last arrival, how long records still in the system may take
/// to finish, ns.
const DRAIN_NS: u64 = 120_000 * MS;

/// One policy's choice for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Target(usize),
    /// The host's fallback places it.
    Fallback,
    /// Dropped or dead-lettered by the router.
    Dropped,
}

/// A routing policy under test: a router plugin, or a baseline.
pub trait Policy {
    /// One pick per record against `view` (the instance's snapshot);
    /// `own`: the instance's exact in-flight count per target now.
    fn route(&mut self, view: &Arc<Snapshot>, own: &[u32], records: &[&Record]) -> Vec<Pick>;
}

/// A real router plugin, called through the plugin runtime.
pub struct Plugin(pub RouterPlugin);

impl Policy for Plugin {
    fn route(&mut self, view: &Arc<Snapshot>, _own: &[u32], records: &[&Record]) -> Vec<Pick> {
        self.0
            .route(view, "sim", 0, records)
            .into_iter()
            .map(|r| match r {
                Route::Targets(t) => t.first().map_or(Pick::Fallback, |&i| Pick::Target(i)),
                Route::Default => Pick::Fallback,
                Route::Drop | Route::DeadLetter(_) => Pick::Dropped,
            })
            .collect()
    }
}

/// The built-in baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Random,
    RoundRobin,
    /// Smooth weighted round robin by configured capacity (nginx's).
    WeightedRoundRobin,
    /// The target with the fewest of this instance's records in flight,
    /// unweighted, over all targets.
    LeastInflight,
}

impl Baseline {
    pub const ALL: [Baseline; 4] = [
        Baseline::Random,
        Baseline::RoundRobin,
        Baseline::WeightedRoundRobin,
        Baseline::LeastInflight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Baseline::Random => "random",
            Baseline::RoundRobin => "round-robin",
            Baseline::WeightedRoundRobin => "weighted-round-robin",
            Baseline::LeastInflight => "least-inflight",
        }
    }
}

/// A baseline's state in one instance.
pub struct BaselinePolicy {
    kind: Baseline,
    rng: fastrand::Rng,
    next: usize,
    /// Smooth WRR's current weights.
    current: Vec<i64>,
}

impl BaselinePolicy {
    pub fn new(kind: Baseline, seed: u64) -> BaselinePolicy {
        BaselinePolicy {
            kind,
            rng: fastrand::Rng::with_seed(seed),
            next: 0,
            current: Vec::new(),
        }
    }
}

impl Policy for BaselinePolicy {
    fn route(&mut self, view: &Arc<Snapshot>, own: &[u32], records: &[&Record]) -> Vec<Pick> {
        let up: Vec<usize> = (0..view.targets.len())
            .filter(|&i| view.targets[i].health != Health::Down)
            .collect();
        if up.is_empty() {
            return vec![Pick::Fallback; records.len()];
        }
        let mut placed = vec![0u32; view.targets.len()];
        self.current.resize(view.targets.len(), 0);
        records
            .iter()
            .map(|_| {
                let t = match self.kind {
                    Baseline::Random => up[self.rng.usize(..up.len())],
                    Baseline::RoundRobin => {
                        self.next = self.next.wrapping_add(1);
                        up[self.next % up.len()]
                    }
                    Baseline::WeightedRoundRobin => {
                        let total: i64 = up
                            .iter()
                            .map(|&i| i64::from(view.targets[i].capacity))
                            .sum();
                        for &i in &up {
                            self.current[i] += i64::from(view.targets[i].capacity);
                        }
                        let best = *up
                            .iter()
                            .max_by_key(|&&i| (self.current[i], Reverse(i)))
                            .expect("a target is up");
                        self.current[best] -= total;
                        best
                    }
                    Baseline::LeastInflight => *up
                        .iter()
                        .min_by_key(|&&i| (own[i] + placed[i], i))
                        .expect("a target is up"),
                };
                placed[t] += 1;
                Pick::Target(t)
            })
            .collect()
    }
}

/// What one policy did in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub policy: String,
    /// Sojourn (arrival to end of service) of the records that arrived
    /// after the warm-up, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
    /// p99 of the records that arrived while a scheduled event was on, and
    /// of those that arrived before the first one (the steady state; both
    /// after the warm-up); 0 without events.
    pub p99_during_events_ms: f64,
    pub p99_before_events_ms: f64,
    pub arrived: u64,
    pub completed: u64,
    /// Still unfinished when the drain time ran out (overload).
    pub unfinished: u64,
    pub dropped: u64,
    /// Record sends that failed (crashed server) and were routed again.
    pub rerouted: u64,
    /// Records whose target differed from the previous record of the same
    /// key, and the share of keys that moved at least once.
    pub moves: u64,
    pub keys_moved_fraction: f64,
    /// Per server: busy share of its concurrency over the measured time.
    pub utilisation: Vec<(String, f64)>,
    /// Records a server served per second it was up and per unit of its
    /// capacity: the busiest server's over the mean of all (1.0: each got
    /// its capacity's share).
    pub max_load_over_mean: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive,
    Flush {
        inst: usize,
        gen: u64,
    },
    Done {
        server: usize,
        epoch: u64,
        rec: usize,
    },
    Refresh {
        inst: usize,
    },
    Report {
        server: usize,
    },
    ReportArrives {
        inst: usize,
        server: usize,
        inflight: u32,
        sent: u64,
    },
    Change {
        event: usize,
        start: bool,
    },
}

struct Rec {
    arrived: u64,
    /// When it was last sent to a server.
    sent: u64,
    key: u32,
    inst: usize,
}

/// Weight of the newest sample in the host's delivery-latency EWMA
/// (`capacity::EWMA_ALPHA`, one sample per delivery; here a delivery is
/// one record).
const LATENCY_ALPHA: f64 = 0.2;

struct Server {
    concurrency: u32,
    capacity: u32,
    service_ns: f64,
    distribution: Distribution,
    sigma: f64,
    slowdown: f64,
    crashed: bool,
    epoch: u64,
    in_service: Vec<usize>,
    queue: VecDeque<usize>,
    rng: fastrand::Rng,
    /// Busy slot-ns after the warm-up, and when `in_service` last changed.
    busy_ns: f64,
    last_change: u64,
    served: u64,
    /// ns it was up after the warm-up.
    up_ns: u64,
    up_since: Option<u64>,
}

struct Inst {
    policy: Box<dyn Policy>,
    pending: Vec<usize>,
    flush_gen: u64,
    flush_scheduled: bool,
    own: Vec<u32>,
    /// Last report per server: (in-flight, sent at).
    reported: Vec<Option<(u32, u64)>>,
    /// Marked down (a send failed) at this time, until a later report.
    marked_down: Vec<Option<u64>>,
    view: Arc<Snapshot>,
    waiting: Vec<usize>,
    /// EWMA of the delivery latency per server, µs (0: none yet), as the
    /// host's registry keeps it.
    latency_us: Vec<f64>,
}

/// Runs `scenario` with one policy per instance from `make` (called with
/// the instance's index).
pub fn run(
    scenario: &Scenario,
    name: &str,
    mut make: impl FnMut(usize) -> anyhow::Result<Box<dyn Policy>>,
) -> anyhow::Result<Outcome> {
    let warmup = scenario.warmup_ms() * MS;
    let end = scenario.duration_ms * MS;
    let seed = scenario.seed;
    let mut servers: Vec<Server> = scenario
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| Server {
            concurrency: s.concurrency,
            capacity: s.capacity.unwrap_or(s.concurrency),
            service_ns: s.service_ms * MS as f64,
            distribution: s.distribution,
            sigma: s.sigma,
            slowdown: 1.0,
            crashed: false,
            epoch: 0,
            in_service: Vec::new(),
            queue: VecDeque::new(),
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(i as u64 + 1)),
            busy_ns: 0.0,
            last_change: 0,
            served: 0,
            up_ns: 0,
            up_since: Some(0),
        })
        .collect();
    let n = servers.len();
    let mut insts = Vec::with_capacity(scenario.instances);
    for i in 0..scenario.instances {
        insts.push(Inst {
            policy: make(i)?,
            pending: Vec::new(),
            flush_gen: 0,
            flush_scheduled: false,
            own: vec![0; n],
            reported: vec![None; n],
            marked_down: vec![None; n],
            view: Arc::new(Snapshot::default()),
            waiting: Vec::new(),
            latency_us: vec![0.0; n],
        });
    }
    let mut heap: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, at: u64, ev: Ev| {
        seq += 1;
        heap.push(Reverse((at, seq, ev)));
    };
    let mut arrivals = Arrivals::new(scenario);
    let mut fallback_rng = fastrand::Rng::with_seed(seed.wrapping_add(7));
    let mut recs: Vec<Rec> = Vec::new();
    // (sojourn, arrived during an event, arrived before the first event)
    let mut sojourn: Vec<(u64, bool, bool)> = Vec::new();
    let windows: Vec<(u64, u64)> = scenario
        .events
        .iter()
        .map(|e| (e.at_ms * MS, e.until_ms.map_or(u64::MAX, |u| u * MS)))
        .collect();
    let mut out = Outcome {
        policy: name.to_string(),
        ..Outcome::default()
    };
    let mut last_target: HashMap<u32, usize> = HashMap::new();
    let mut moved: HashSet<u32> = HashSet::new();

    if let Some(t) = arrivals.next() {
        push(&mut heap, t, Ev::Arrive);
    }
    for inst in 0..insts.len() {
        push(&mut heap, 0, Ev::Refresh { inst });
    }
    for server in 0..n {
        push(&mut heap, 0, Ev::Report { server });
    }
    for (event, e) in scenario.events.iter().enumerate() {
        push(&mut heap, e.at_ms * MS, Ev::Change { event, start: true });
        if let Some(u) = e.until_ms {
            push(
                &mut heap,
                u * MS,
                Ev::Change {
                    event,
                    start: false,
                },
            );
        }
    }
    let mut in_system = 0u64;
    let mut now = 0;
    // Records to route (instance, record) after the current event.
    while let Some(Reverse((at, _, ev))) = heap.pop() {
        now = at;
        if now > end && in_system == 0 {
            break;
        }
        if now > end + DRAIN_NS {
            break;
        }
        let mut flush_now: Vec<usize> = Vec::new();
        match ev {
            Ev::Arrive => {
                let key = arrivals.key();
                let inst = key as usize % insts.len();
                recs.push(Rec {
                    arrived: now,
                    sent: now,
                    key,
                    inst,
                });
                in_system += 1;
                out.arrived += 1;
                let i = &mut insts[inst];
                i.pending.push(recs.len() - 1);
                if i.pending.len() >= scenario.batch {
                    flush_now.push(inst);
                } else if !i.flush_scheduled {
                    i.flush_scheduled = true;
                    let gen = i.flush_gen;
                    push(
                        &mut heap,
                        now + (scenario.linger_ms * MS as f64) as u64,
                        Ev::Flush { inst, gen },
                    );
                }
                if let Some(t) = arrivals.next().filter(|t| *t < end) {
                    push(&mut heap, t, Ev::Arrive);
                }
            }
            Ev::Flush { inst, gen } => {
                if insts[inst].flush_gen == gen {
                    flush_now.push(inst);
                }
            }
            Ev::Done { server, epoch, rec } => {
                let s = &mut servers[server];
                if s.epoch != epoch {
                    continue;
                }
                account_busy(s, now, (warmup, end));
                s.in_service.retain(|&r| r != rec);
                let r = &recs[rec];
                let i = &mut insts[r.inst];
                i.own[server] -= 1;
                let sample = (now - r.sent) as f64 / 1_000.0;
                let l = &mut i.latency_us[server];
                *l = if *l == 0.0 {
                    sample
                } else {
                    *l + LATENCY_ALPHA * (sample - *l)
                };
                if r.arrived >= warmup && r.arrived < end {
                    let during = windows
                        .iter()
                        .any(|&(a, b)| r.arrived >= a && r.arrived < b);
                    let before = windows.iter().all(|&(a, _)| r.arrived < a);
                    sojourn.push((now - r.arrived, during, before));
                }
                if now >= warmup && now < end {
                    s.served += 1;
                }
                in_system -= 1;
                out.completed += 1;
                if let Some(next) = s.queue.pop_front() {
                    start(&mut heap, &mut push, s, server, next, now);
                }
            }
            Ev::Refresh { inst } => {
                refresh(&mut insts[inst], &servers, scenario, now);
                push(
                    &mut heap,
                    now + scenario.refresh_ms * MS,
                    Ev::Refresh { inst },
                );
            }
            Ev::Report { server } => {
                let s = &servers[server];
                if !s.crashed {
                    let inflight = (s.in_service.len() + s.queue.len()) as u32;
                    for inst in 0..insts.len() {
                        push(
                            &mut heap,
                            now + scenario.report_delay_ms * MS,
                            Ev::ReportArrives {
                                inst,
                                server,
                                inflight,
                                sent: now,
                            },
                        );
                    }
                }
                push(
                    &mut heap,
                    now + scenario.report_every_ms * MS,
                    Ev::Report { server },
                );
            }
            Ev::ReportArrives {
                inst,
                server,
                inflight,
                sent,
            } => {
                let i = &mut insts[inst];
                i.reported[server] = Some((inflight, sent));
                if i.marked_down[server].is_some_and(|at| sent > at) {
                    i.marked_down[server] = None;
                }
            }
            Ev::Change { event, start: on } => {
                let e = &scenario.events[event];
                let server = scenario
                    .servers
                    .iter()
                    .position(|s| s.id == e.server)
                    .expect("checked with the scenario");
                let s = &mut servers[server];
                if let Some(f) = e.slowdown {
                    s.slowdown = if on { f } else { 1.0 };
                }
                if e.crash {
                    account_busy(s, now, (warmup, end));
                    if on && !s.crashed {
                        s.crashed = true;
                        s.epoch += 1;
                        if let Some(since) = s.up_since.take() {
                            s.up_ns += now.min(end).saturating_sub(since.max(warmup));
                        }
                        let lost: Vec<usize> =
                            s.in_service.drain(..).chain(s.queue.drain(..)).collect();
                        for rec in lost {
                            let inst = recs[rec].inst;
                            let i = &mut insts[inst];
                            i.own[server] -= 1;
                            i.marked_down[server] = Some(now);
                            i.pending.push(rec);
                            out.rerouted += 1;
                            if !flush_now.contains(&inst) {
                                flush_now.push(inst);
                            }
                        }
                    } else if !on && s.crashed {
                        s.crashed = false;
                        s.up_since = Some(now);
                    }
                }
            }
        }
        // Route what is due, as often as failures send records back.
        while let Some(inst) = flush_now.pop() {
            let i = &mut insts[inst];
            i.flush_gen += 1;
            i.flush_scheduled = false;
            let mut todo: Vec<usize> = std::mem::take(&mut i.pending);
            todo.append(&mut i.waiting);
            for chunk in todo.chunks(scenario.batch) {
                let records: Vec<Record> = chunk
                    .iter()
                    .map(|&r| Record {
                        topic: "sim".into(),
                        partition: 0,
                        offset: r as i64,
                        timestamp_ms: None,
                        key: Some(format!("client-{}", recs[r].key).into_bytes()),
                        value: None,
                        headers: Vec::new(),
                    })
                    .collect();
                let refs: Vec<&Record> = records.iter().collect();
                let i = &mut insts[inst];
                let view = i.view.clone();
                let picks = i.policy.route(&view, &i.own, &refs);
                for (&rec, pick) in chunk.iter().zip(picks) {
                    let i = &mut insts[inst];
                    let target = match pick {
                        Pick::Dropped => {
                            out.dropped += 1;
                            in_system -= 1;
                            continue;
                        }
                        Pick::Target(t) if t < n && view.targets[t].health != Health::Down => {
                            Some(t)
                        }
                        _ => fallback(&view, &i.own, &mut fallback_rng),
                    };
                    let Some(t) = target else {
                        i.waiting.push(rec);
                        continue;
                    };
                    if servers[t].crashed {
                        // Refused at once: down in this view, routed again.
                        i.marked_down[t] = Some(now);
                        refresh(i, &servers, scenario, now);
                        i.pending.push(rec);
                        out.rerouted += 1;
                        if !flush_now.contains(&inst) {
                            flush_now.push(inst);
                        }
                        continue;
                    }
                    if recs[rec].arrived >= warmup {
                        let key = recs[rec].key;
                        if last_target.insert(key, t).is_some_and(|p| p != t) {
                            out.moves += 1;
                            moved.insert(key);
                        }
                    }
                    i.own[t] += 1;
                    recs[rec].sent = now;
                    let s = &mut servers[t];
                    if (s.in_service.len() as u32) < s.concurrency {
                        account_busy(s, now, (warmup, end));
                        start(&mut heap, &mut push, s, t, rec, now);
                    } else {
                        s.queue.push_back(rec);
                    }
                }
            }
            let i = &mut insts[inst];
            if !i.waiting.is_empty() && !i.flush_scheduled {
                // No target for them now: try again after a backoff.
                i.flush_scheduled = true;
                let gen = i.flush_gen;
                push(&mut heap, now + RETRY_NS, Ev::Flush { inst, gen });
            }
        }
    }
    let measured_end = now.min(end).max(warmup);
    for s in &mut servers {
        account_busy(s, measured_end, (warmup, end));
        if let Some(since) = s.up_since.take() {
            s.up_ns += measured_end.saturating_sub(since.max(warmup));
        }
    }
    out.unfinished = in_system;
    let span = measured_end.saturating_sub(warmup).max(1) as f64;
    out.utilisation = scenario
        .servers
        .iter()
        .zip(&servers)
        .map(|(cfg, s)| {
            (
                cfg.id.clone(),
                s.busy_ns / (span * f64::from(s.concurrency)),
            )
        })
        .collect();
    let rates: Vec<f64> = servers
        .iter()
        .filter(|s| s.up_ns > 0)
        .map(|s| s.served as f64 / s.up_ns as f64 / f64::from(s.capacity))
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    out.max_load_over_mean = if mean > 0.0 {
        rates.iter().copied().fold(0.0, f64::max) / mean
    } else {
        0.0
    };
    out.keys_moved_fraction = moved.len() as f64 / last_target.len().max(1) as f64;
    let ms = |mut v: Vec<u64>, q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i] as f64 / MS as f64
    };
    let all: Vec<u64> = sojourn.iter().map(|s| s.0).collect();
    out.mean_ms = all.iter().sum::<u64>() as f64 / all.len().max(1) as f64 / MS as f64;
    out.p50_ms = ms(all.clone(), 0.5);
    out.p99_ms = ms(all.clone(), 0.99);
    out.p999_ms = ms(all, 0.999);
    if !windows.is_empty() {
        out.p99_during_events_ms = ms(sojourn.iter().filter(|s| s.1).map(|s| s.0).collect(), 0.99);
        out.p99_before_events_ms = ms(sojourn.iter().filter(|s| s.2).map(|s| s.0).collect(), 0.99);
    }
    Ok(out)
}

/// Adds the busy slot-time since the last change, within the measured
/// time (`window`: after the warm-up, before the end).
fn account_busy(s: &mut Server, now: u64, (warmup, end): (u64, u64)) {
    let from = s.last_change.max(warmup);
    let to = now.min(end);
    if to > from {
        s.busy_ns += s.in_service.len() as f64 * (to - from) as f64;
    }
    s.last_change = now;
}

/// Starts serving `rec` at server `index`.
fn start(
    heap: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>,
    push: &mut impl FnMut(&mut BinaryHeap<Reverse<(u64, u64, Ev)>>, u64, Ev),
    s: &mut Server,
    index: usize,
    rec: usize,
    now: u64,
) {
    let mean = s.service_ns * s.slowdown;
    let t = match s.distribution {
        Distribution::Constant => mean,
        Distribution::Exponential => -mean * (1.0 - s.rng.f64()).ln(),
        Distribution::Lognormal => {
            // Mean `mean`: mu = ln(mean) - sigma²/2 (Box–Muller normal).
            let (u1, u2) = (1.0 - s.rng.f64(), s.rng.f64());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean.ln() - s.sigma * s.sigma / 2.0 + s.sigma * z).exp()
        }
    };
    s.in_service.push(rec);
    push(
        heap,
        now + t.max(1.0) as u64,
        Ev::Done {
            server: index,
            epoch: s.epoch,
            rec,
        },
    );
}

/// Rebuilds the instance's snapshot as the host's registry does: reported
/// capacity, max(own, reported) in flight, down when marked down or the
/// last report is older than `report_expiry_ms`. A new version only when
/// something a router reads changed.
fn refresh(i: &mut Inst, servers: &[Server], scenario: &Scenario, now: u64) {
    let expiry = scenario.report_expiry_ms * MS;
    let targets: Vec<TargetView> = scenario
        .servers
        .iter()
        .zip(servers)
        .enumerate()
        .map(|(j, (cfg, s))| {
            let report = i.reported[j];
            let stale = report.is_some_and(|(_, sent)| now.saturating_sub(sent) > expiry);
            let down = i.marked_down[j].is_some() || stale;
            let reported_inflight = report.map_or(0, |r| r.0);
            TargetView {
                id: cfg.id.as_str().into(),
                url: format!("http://{}/records", cfg.id).into(),
                zone: None,
                labels: Vec::new(),
                weight: 100,
                capacity: s.capacity,
                inflight: i.own[j].max(reported_inflight),
                own_inflight: i.own[j],
                queue_depth: 0,
                cpu_permille: 0,
                mem_permille: 0,
                latency_p99_ms: 0,
                latency_ewma_us: i.latency_us[j].round() as u32,
                error_rate_permille: 0,
                health: if down { Health::Down } else { Health::Healthy },
                reason: None,
                report_age_ms: report.map(|(_, sent)| now.saturating_sub(sent) / MS),
                feed: None,
                phi: None,
                dynamic: false,
                slow_start_percent: None,
                subscribers: None,
            }
        })
        .collect();
    let same = i.view.targets.len() == targets.len()
        && i.view.targets.iter().zip(&targets).all(|(a, b)| {
            (
                a.capacity,
                a.inflight,
                a.own_inflight,
                a.health,
                a.latency_ewma_us,
            ) == (
                b.capacity,
                b.inflight,
                b.own_inflight,
                b.health,
                b.latency_ewma_us,
            )
        });
    let version = if same {
        i.view.version
    } else {
        i.view.version + 1
    };
    i.view = Arc::new(Snapshot { version, targets });
}

/// The host's fallback ([`cdrs::route::fallback_with`]), seeded; the
/// records placed since the snapshot count as its `extra`.
fn fallback(view: &Snapshot, own: &[u32], rng: &mut fastrand::Rng) -> Option<usize> {
    let extra: Vec<u32> = view
        .targets
        .iter()
        .zip(own)
        .map(|(t, &o)| o.saturating_sub(t.own_inflight))
        .collect();
    cdrs::route::fallback_with(view, &extra, |n| rng.usize(..n))
}

/// The scenario's arrivals, as the simulation draws them: (time from the
/// start, ns; key), up to `duration_ms`.
pub fn schedule(scenario: &Scenario) -> Vec<(u64, u32)> {
    let end = scenario.duration_ms * MS;
    let mut a = Arrivals::new(scenario);
    let mut out = Vec::new();
    while let Some(t) = a.next().filter(|t| *t < end) {
        out.push((t, a.key()));
    }
    out
}

/// Arrival times and keys, from the scenario's seed.
struct Arrivals {
    rng: fastrand::Rng,
    /// Mean gap between arrivals while arriving, ns.
    gap_ns: f64,
    /// Bursty: (burst length, cycle length) ns.
    burst: Option<(f64, f64)>,
    /// Time spent arriving so far, ns (bursty: only the bursts count).
    t: f64,
    /// Cumulative key popularity (Zipf), or empty for uniform keys.
    cdf: Vec<f64>,
    keys: usize,
    /// `--trace`: the captured arrivals, the next one's index, and the key
    /// of the arrival `next` returned last.
    trace: Option<(std::sync::Arc<super::scenario::Trace>, usize, u32)>,
}

impl Arrivals {
    fn new(s: &Scenario) -> Arrivals {
        let a = &s.arrivals;
        let (rate, burst) = match a.kind {
            ArrivalKind::Poisson => (a.rate_per_s, None),
            ArrivalKind::Bursty => {
                let on = a.burst_ms * MS as f64;
                (
                    a.rate_per_s * a.burst_factor,
                    Some((on, on * a.burst_factor)),
                )
            }
        };
        let cdf = if a.zipf > 0.0 {
            let mut acc = 0.0;
            let mut c: Vec<f64> = (1..=a.keys)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(a.zipf);
                    acc
                })
                .collect();
            for x in &mut c {
                *x /= acc;
            }
            c
        } else {
            Vec::new()
        };
        Arrivals {
            rng: fastrand::Rng::with_seed(s.seed),
            gap_ns: 1e9 / rate,
            burst,
            t: 0.0,
            cdf,
            keys: a.keys,
            trace: a.trace.clone().map(|t| (t, 0, 0)),
        }
    }

    /// The next arrival time, ns.
    fn next(&mut self) -> Option<u64> {
        if let Some((trace, i, key)) = &mut self.trace {
            let n = trace.times_ns.len();
            let lap = (*i / n) as u64;
            *key = trace.keys[*i % n];
            let at = lap * trace.span_ns + trace.times_ns[*i % n];
            *i += 1;
            return Some(at);
        }
        self.t += -self.gap_ns * (1.0 - self.rng.f64()).ln();
        let real = match self.burst {
            None => self.t,
            Some((on, cycle)) => (self.t / on).floor() * cycle + self.t % on,
        };
        Some(real as u64)
    }

    /// The key of the arrival: uniform, or Zipf by the cumulative table.
    fn key(&mut self) -> u32 {
        if let Some((_, _, key)) = &self.trace {
            return *key;
        }
        if self.cdf.is_empty() {
            return self.rng.usize(..self.keys) as u32;
        }
        let u = self.rng.f64();
        self.cdf.partition_point(|&c| c < u).min(self.keys - 1) as u32
    }
}
