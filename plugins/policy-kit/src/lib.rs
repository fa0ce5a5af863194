//! What the latency-aware router plugins (`ewma-router`, `prequal-router`)
//! share: each target as this instance sees it between two snapshots.
//!
//! - **Load**: the snapshot's in-flight count (CDRS's own and the server's
//!   reported, the larger) plus what this instance routed there since, or,
//!   when the target's last capacity report is older than
//!   `fresh_report_ms`, this instance's own recent assignments alone
//!   (halving every [`ASSIGNED_HALF_LIFE`] records): a stale fleet-wide
//!   count makes every instance avoid a server, then crowd it, at once.
//! - **Latency**: the host's EWMA of the delivery latency
//!   (`latency-ewma-us`). A target that gets no records has no new samples,
//!   so an old figure relaxes toward the others' median with a half-life
//!   in records routed ([`Fleet::latency`]), and the target is tried again.
//! - **Eligible**: the healthy targets, or the degraded ones when none is
//!   healthy.

use cdrs_plugin_sdk::router::{Health, Target};

/// Records after which this instance's own assignment counts weigh half
/// (as in `p2c-router`).
pub const ASSIGNED_HALF_LIFE: f64 = 256.0;

/// One target as a policy sees it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub id: String,
    /// Capacity from the snapshot, at least 1.
    pub capacity: f64,
    pub health: Health,
    /// Latency EWMA from the last snapshot, µs (0: not known).
    pub latency_us: f64,
    /// Records routed (to any target) since `latency_us` last changed.
    pub since_change: f64,
    /// Records this instance routed here recently (decayed per batch).
    pub assigned: f64,
    /// In flight at the snapshot plus what this instance assigned since;
    /// `None` when the target's last report is older than `fresh_report_ms`.
    pub inflight: Option<f64>,
}

impl Slot {
    /// Requests in flight as far as this instance can tell (see the module
    /// docs).
    pub fn load(&self) -> f64 {
        self.inflight.unwrap_or(self.assigned)
    }
}

/// All targets of the last snapshot, and the eligible ones.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub slots: Vec<Slot>,
    /// Indexes into `slots` of the targets that may get records.
    pub eligible: Vec<u32>,
    /// Use a target's in-flight count while its last report is at most
    /// this old, ms.
    pub fresh_report_ms: u64,
}

impl Fleet {
    pub fn new(fresh_report_ms: u64) -> Fleet {
        Fleet {
            fresh_report_ms,
            ..Fleet::default()
        }
    }

    /// Takes a new snapshot, keeping each target's (matched by id) own
    /// assignments, and its records since its latency last changed.
    pub fn update(&mut self, targets: &[Target]) {
        let old = std::mem::take(&mut self.slots);
        self.slots = targets
            .iter()
            .map(|t| {
                let latency_us = f64::from(t.latency_ewma_us);
                let before = old.iter().find(|o| o.id == t.id);
                let since_change = before
                    .filter(|o| o.latency_us == latency_us)
                    .map_or(0.0, |o| o.since_change);
                Slot {
                    id: t.id.clone(),
                    capacity: f64::from(t.capacity).max(1.0),
                    health: t.health,
                    latency_us,
                    since_change,
                    assigned: before.map_or(0.0, |o| o.assigned),
                    inflight: (u64::from(t.report_age_ms) <= self.fresh_report_ms)
                        .then_some(f64::from(t.inflight)),
                }
            })
            .collect();
        let by = |h: Health| -> Vec<u32> {
            (0..self.slots.len() as u32)
                .filter(|&i| self.slots[i as usize].health == h)
                .collect()
        };
        self.eligible = by(Health::Healthy);
        if self.eligible.is_empty() {
            self.eligible = by(Health::Degraded);
        }
    }

    /// Ages the own-assignment counts by a batch of `records`.
    pub fn decay(&mut self, records: usize) {
        let decay = 0.5f64.powf(records as f64 / ASSIGNED_HALF_LIFE);
        for s in &mut self.slots {
            s.assigned *= decay;
        }
    }

    /// The median of the known latencies among the eligible targets, µs
    /// (0: none known).
    pub fn median_latency(&self) -> f64 {
        let mut known: Vec<f64> = self
            .eligible
            .iter()
            .map(|&i| self.slots[i as usize].latency_us)
            .filter(|l| *l > 0.0)
            .collect();
        if known.is_empty() {
            return 0.0;
        }
        known.sort_by(f64::total_cmp);
        known[known.len() / 2]
    }

    /// Target `i`'s latency estimate, µs: its figure relaxed toward
    /// `median` with a half-life of `half_life` records routed since it
    /// last changed; `median` when not known yet.
    pub fn latency(&self, i: u32, median: f64, half_life: f64) -> f64 {
        let s = &self.slots[i as usize];
        if s.latency_us > 0.0 {
            median + (s.latency_us - median) * 0.5f64.powf(s.since_change / half_life)
        } else {
            median
        }
    }

    /// Counts one record routed to target `i`.
    pub fn assign(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        s.assigned += 1.0;
        if let Some(n) = &mut s.inflight {
            *n += 1.0;
        }
        for s in &mut self.slots {
            s.since_change += 1.0;
        }
    }
}

/// Targets and batches for the policies' native tests.
pub mod testing {
    use cdrs_plugin_sdk::router::{Batch, Health, Target};

    /// A healthy target with a fresh report.
    pub fn target(id: &str, capacity: u32, latency_us: u32, inflight: u32) -> Target {
        Target {
            id: id.into(),
            zone: None,
            labels: vec![],
            weight: 100,
            capacity,
            inflight,
            queue_depth: 0,
            cpu_permille: 0,
            latency_ewma_us: latency_us,
            error_rate_permille: 0,
            health: Health::Healthy,
            report_age_ms: 0,
        }
    }

    /// `n` keyless records.
    pub fn batch(n: usize) -> Batch {
        let records: Vec<_> = (0..n).map(|i| (i as i64, None, None, &[][..])).collect();
        Batch::of("t", 0, &records)
    }
}
