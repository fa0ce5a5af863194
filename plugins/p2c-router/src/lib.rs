//! `p2c-router`: weighted power-of-two-choices over healthy targets, sticky
//! per key when configured.
//!
//! * **Load-aware (default)**: for each record pick two distinct healthy
//!   targets at random, each in proportion to its capacity × weight, and
//!   send the record to the one with the lower load
//!   `assigned / (capacity × weight)`, where `assigned` counts what this
//!   instance routed recently (halving every 256 records, so the counts
//!   follow the current load while keeping the split proportional), and
//!   `capacity` is the server's live report. The snapshot's in-flight counts
//!   are not used: they arrive a refresh late and move in lane-sized steps
//!   (up to `delivery.max_batch` records per request, whatever the server's
//!   capacity), and every way of adding them tried here pulled the split
//!   15–27% off capacity under load. Slow and failing servers are handled by
//!   the host (circuit breaker, outlier ejection, health). Power of two
//!   choices: Mitzenmacher, "The Power of Two Choices in Randomized Load
//!   Balancing", IEEE TPDS 12(10), 2001.
//! * **Sticky** (`sticky = true`): a record with a key goes to the target that
//!   wins weighted rendezvous hashing of the key (score `-w / ln(u)`, with `u`
//!   the key×target hash mapped to (0, 1) and `w = capacity × weight`;
//!   Schindelhauer & Schomaker, "Weighted distributed hash tables", SPAA 2005).
//!   The same key keeps its target while that target is healthy; when it goes
//!   down only its keys move. Records without a key use the load-aware choice.
//!
//! Degraded targets (draining) get no records while a healthy one exists.
//! With no eligible target the decision is `default` and the host decides.
//!
//!   With `sticky_max_load = c` (at least 1, e.g. 1.25) the loads are
//!   bounded: a key goes to the first target in its rendezvous order whose
//!   recent load per unit of weight stays within c × the mean, so a hot
//!   key's overflow spreads instead of pinning one server (Mirrokni et al.,
//!   "Consistent Hashing with Bounded Loads", SODA 2018).
//!
//! * **Zone-aware** (`local_zone = "eu-west-1a"`): only the targets whose
//!   `zone` is the local one are eligible while at least `zone_min_healthy`
//!   (default 0.5) of that zone's capacity × weight is healthy; below that,
//!   or with no healthy target there, every zone is (after Envoy's
//!   zone-aware routing and its panic threshold). Composes with both modes
//!   above: load-aware and sticky choices run over the eligible targets, so
//!   sticky keys stay in the zone and move across only while it is short.
//!
//! Config (JSON): `{"sticky": false, "sticky_header": null, "seed": 1,
//! "sticky_max_load": null, "local_zone": null, "zone_min_healthy": 0.5}`.
//! `sticky_header` names a header to hash instead of the key.

use cdrs_plugin_sdk::router::{Batch, Decision, Health, Record, Router, RouterOptions, Target};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::Distribution;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Deserialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct P2cConfig {
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    sticky_header: Option<String>,
    #[serde(default = "default_seed")]
    seed: u64,
    /// Sticky with bounded loads: a key goes to the first target in its
    /// rendezvous order whose recent load per unit of weight stays at most
    /// this many times the mean (>= 1; e.g. 1.25). Unset: no bound.
    #[serde(default)]
    sticky_max_load: Option<f64>,
    /// Prefer targets whose `zone` is this one. Unset: no zone preference.
    #[serde(default)]
    local_zone: Option<String>,
    /// Share of the local zone's capacity × weight that must be healthy
    /// for it to take all records, 0..=1. Default 0.5.
    #[serde(default = "default_zone_min_healthy")]
    zone_min_healthy: f64,
}

fn default_zone_min_healthy() -> f64 {
    0.5
}

fn default_seed() -> u64 {
    1
}

/// Records after which this instance's own assignment counts weigh half.
const ASSIGNED_HALF_LIFE: f64 = 256.0;

/// Per-target view the policy needs, rebuilt on `update-targets`.
struct Slot {
    /// Capacity × weight, at least 1.
    weight: f64,
    id_hash: u64,
    health: Health,
    /// In `local_zone`.
    local: bool,
}

/// The router state of one instance.
pub struct P2cRouter {
    sticky: bool,
    sticky_header: Option<String>,
    /// `sticky_max_load`.
    max_load: Option<f64>,
    local_zone: Option<String>,
    zone_min_healthy: f64,
    /// Xoshiro256++ (Blackman & Vigna, "Scrambled linear pseudorandom
    /// number generators", ACM TOMS 2021): 64-bit operations only. fastrand's
    /// wyrand multiplies in 128 bits, a `__multi3` call per draw on wasm32.
    rng: Xoshiro256PlusPlus,
    slots: Vec<Slot>,
    /// Records this instance routed to each slot, decayed per batch.
    assigned: Vec<f64>,
    /// Indexes of the targets eligible for new records.
    eligible: Vec<u32>,
    /// Draws an index into `eligible` in proportion to its weight in O(1)
    /// (Walker's alias method, A. J. Walker, ACM TOMS 3(3), 1977, as built
    /// by `rand_distr`); `None` while nothing is eligible. A binary search
    /// over prefix sums mispredicts a branch per step on every draw.
    alias: Option<WeightedAliasIndex<f64>>,
}

impl P2cRouter {
    fn parse(config: &str) -> Result<(Self, RouterOptions), String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: P2cConfig =
            serde_json::from_str(config).map_err(|e| format!("invalid p2c-router config: {e}"))?;
        if let Some(f) = c.sticky_max_load.filter(|f| !(*f >= 1.0 && f.is_finite())) {
            return Err(format!(
                "invalid p2c-router config: sticky_max_load {f} must be at least 1 (e.g. 1.25)"
            ));
        }
        if !(0.0..=1.0).contains(&c.zone_min_healthy) {
            return Err(format!(
                "invalid p2c-router config: zone_min_healthy {} must be within 0..=1",
                c.zone_min_healthy
            ));
        }
        let options = RouterOptions {
            headers: c.sticky_header.iter().cloned().collect(),
            needs_value: false,
        };
        Ok((
            P2cRouter {
                sticky: c.sticky,
                sticky_header: c.sticky_header,
                max_load: c.sticky_max_load,
                local_zone: c.local_zone,
                zone_min_healthy: c.zone_min_healthy,
                rng: Xoshiro256PlusPlus::seed_from_u64(c.seed),
                slots: Vec::new(),
                assigned: Vec::new(),
                eligible: Vec::new(),
                alias: None,
            },
            options,
        ))
    }

    fn set_targets(&mut self, targets: &[Target]) {
        // In-flight counts change the snapshot version every refresh under
        // load: keep the assigned counts while the target list is the same
        // one, or the split would only follow the in-flight counts (which
        // lag and depend on each target's batch latency).
        let same = self.slots.len() == targets.len()
            && self
                .slots
                .iter()
                .zip(targets)
                .all(|(s, t)| s.id_hash == xxh3_64(t.id.as_bytes()));
        self.slots = targets
            .iter()
            .map(|t| Slot {
                weight: (f64::from(t.capacity) * f64::from(t.weight)).max(1.0),
                id_hash: xxh3_64(t.id.as_bytes()),
                health: t.health,
                local: self.local_zone.is_some() && t.zone == self.local_zone,
            })
            .collect();
        if !same {
            self.assigned = vec![0.0; self.slots.len()];
        }
        let by = |h: Health| -> Vec<u32> {
            (0..self.slots.len() as u32)
                .filter(|&i| self.slots[i as usize].health == h)
                .collect()
        };
        self.eligible = by(Health::Healthy);
        if self.eligible.is_empty() {
            self.eligible = by(Health::Degraded);
        }
        self.prefer_local_zone();
        // Weights are at least 1 and finite, so this fails only for an
        // empty list (or one too large for f64 sums, then: uniform draws).
        self.alias = WeightedAliasIndex::new(
            self.eligible
                .iter()
                .map(|&i| self.slots[i as usize].weight)
                .collect(),
        )
        .or_else(|_| WeightedAliasIndex::new(vec![1.0; self.eligible.len()]))
        .ok();
    }

    /// Narrows `eligible` to the local zone while enough of it is healthy.
    fn prefer_local_zone(&mut self) {
        if self.local_zone.is_none() {
            return;
        }
        let weight = |healthy_only: bool| -> f64 {
            self.slots
                .iter()
                .filter(|s| s.local && (!healthy_only || s.health == Health::Healthy))
                .map(|s| s.weight)
                .sum()
        };
        let (healthy, total) = (weight(true), weight(false));
        if healthy > 0.0 && healthy >= self.zone_min_healthy * total {
            self.eligible.retain(|&i| self.slots[i as usize].local);
        }
    }

    fn load(&self, i: u32) -> f64 {
        self.assigned[i as usize] / self.slots[i as usize].weight
    }

    fn least_loaded_of_two(&mut self) -> u32 {
        let n = self.eligible.len();
        if n == 1 {
            return self.eligible[0];
        }
        // Candidates are drawn in proportion to capacity × weight, not
        // uniformly: when the load signal is noisy (in-flight counts lag by a
        // refresh) the choice then falls back to the capacity split instead
        // of drifting towards equal shares.
        let a = self.pick_weighted(None);
        let b = self.pick_weighted(Some(a));
        let (a, b) = (self.eligible[a], self.eligible[b]);
        // Ties go to the heavier target so equal loads fill by weight.
        match self.load(a).total_cmp(&self.load(b)) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal
                if self.slots[a as usize].weight >= self.slots[b as usize].weight =>
            {
                a
            }
            std::cmp::Ordering::Equal => b,
        }
    }

    /// An index into `eligible`, drawn with probability proportional to the
    /// target's weight, never `except` (drawn again: the second draw then
    /// follows weight among the others).
    fn pick_weighted(&mut self, except: Option<usize>) -> usize {
        let Some(alias) = &self.alias else {
            return 0;
        };
        for _ in 0..16 {
            let j = alias.sample(&mut self.rng);
            if Some(j) != except {
                return j;
            }
        }
        // One target holds nearly all the weight: take a neighbour.
        except.map_or(0, |e| (e + 1) % self.eligible.len())
    }

    /// The key's weighted rendezvous score at slot `i`.
    fn score(&self, key: &[u8], i: u32) -> f64 {
        let slot = &self.slots[i as usize];
        let h = xxh3_64_with_seed(key, slot.id_hash);
        // Map to (0, 1): top 53 bits, offset by half a step so never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -slot.weight / u.ln()
    }

    fn rendezvous(&self, key: &[u8]) -> u32 {
        let Some(factor) = self.max_load else {
            let mut best = (f64::NEG_INFINITY, self.eligible[0]);
            for &i in &self.eligible {
                let score = self.score(key, i);
                if score > best.0 {
                    best = (score, i);
                }
            }
            return best.1;
        };
        // Bounded loads (Mirrokni, Thorup & Zadimoghaddam, "Consistent
        // Hashing with Bounded Loads", SODA 2018), over the rendezvous
        // order: the first target whose load with this record stays within
        // `factor` × the mean; a key keeps its target while that target is
        // not overloaded, and only its overflow moves.
        let mut order: Vec<(f64, u32)> = self
            .eligible
            .iter()
            .map(|&i| (self.score(key, i), i))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (assigned, weight) = self.eligible.iter().fold((0.0, 0.0), |(a, w), &i| {
            (
                a + self.assigned[i as usize],
                w + self.slots[i as usize].weight,
            )
        });
        let cap = factor * (assigned + 1.0) / weight;
        order
            .iter()
            .find(|(_, i)| {
                (self.assigned[*i as usize] + 1.0) / self.slots[*i as usize].weight <= cap
            })
            .map_or(order[0].1, |(_, i)| *i)
    }

    fn sticky_key<'a>(&self, r: &Record<'a>) -> Option<&'a [u8]> {
        match &self.sticky_header {
            Some(h) => r.header(h),
            None => r.key(),
        }
    }

    fn decide(&mut self, r: &Record<'_>) -> Decision {
        if self.eligible.is_empty() {
            return Decision::Default;
        }
        let i = match self.sticky.then(|| self.sticky_key(r)).flatten() {
            Some(key) => self.rendezvous(key),
            None => self.least_loaded_of_two(),
        };
        self.assigned[i as usize] += 1.0;
        Decision::Route(i)
    }
}

impl Router for P2cRouter {
    fn init(config: &str) -> Result<(Self, RouterOptions), String> {
        Self::parse(config)
    }

    fn update_targets(&mut self, _version: u64, targets: Vec<Target>) {
        self.set_targets(&targets);
    }

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        // Decay by records, not batches, so small batches (a slow stream)
        // keep as much history as large ones.
        let decay = 0.5f64.powf(batch.len() as f64 / ASSIGNED_HALF_LIFE);
        for a in &mut self.assigned {
            *a *= decay;
        }
        batch.records().map(|r| self.decide(&r)).collect()
    }
}

cdrs_plugin_sdk::export_router!(P2cRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, capacity: u32, health: Health) -> Target {
        Target {
            id: id.into(),
            zone: None,
            labels: vec![],
            weight: 100,
            capacity,
            inflight: 0,
            queue_depth: 0,
            cpu_permille: 0,
            latency_ewma_us: 0,
            error_rate_permille: 0,
            health,
            report_age_ms: 0,
        }
    }

    fn batch(n: usize, keyed: bool) -> Batch {
        let keys: Vec<String> = (0..n).map(|i| format!("client-{}", i % 500)).collect();
        let records: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as i64, keyed.then_some(k.as_bytes()), None, &[][..]))
            .collect();
        Batch::of("t", 0, &records)
    }

    fn shares(r: &mut P2cRouter, keyed: bool) -> [usize; 3] {
        let mut count = [0; 3];
        for _ in 0..100 {
            for d in r.route(batch(100, keyed)) {
                match d {
                    Decision::Route(i) => count[i as usize] += 1,
                    other => panic!("unexpected decision {other:?}"),
                }
            }
        }
        count
    }

    fn three(r: &mut P2cRouter, third: Health) {
        let t = vec![
            target("a", 1, Health::Healthy),
            target("b", 2, Health::Healthy),
            target("c", 4, third),
        ];
        r.update_targets(1, t);
    }

    #[test]
    fn load_aware_split_follows_capacity() {
        let (mut r, _) = P2cRouter::parse("{}").unwrap();
        three(&mut r, Health::Healthy);
        let c = shares(&mut r, false);
        let total = 10_000.0;
        for (i, want) in [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0].iter().enumerate() {
            let got = c[i] as f64 / total;
            assert!(
                (got - want).abs() < 0.05,
                "target {i}: {got} vs {want} ({c:?})"
            );
        }
    }

    /// Targets are re-pushed every refresh under load (in-flight counts
    /// change the version): the split must still follow capacity, batch by
    /// batch, not start over each time.
    #[test]
    fn split_follows_capacity_across_frequent_target_updates() {
        let (mut r, _) = P2cRouter::parse("{}").unwrap();
        let mut c = [0usize; 3];
        for v in 0..200 {
            r.update_targets(
                v,
                vec![
                    target("a", 1, Health::Healthy),
                    target("b", 2, Health::Healthy),
                    target("c", 4, Health::Healthy),
                ],
            );
            for d in r.route(batch(50, false)) {
                if let Decision::Route(i) = d {
                    c[i as usize] += 1;
                }
            }
        }
        for (i, want) in [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0].iter().enumerate() {
            let got = c[i] as f64 / 10_000.0;
            assert!(
                (got - want).abs() < 0.05,
                "target {i}: {got} vs {want} ({c:?})"
            );
        }
    }

    /// The host reports each target's in-flight records a refresh late and
    /// in lane-sized steps: they must not pull the split away from capacity.
    #[test]
    fn split_follows_capacity_with_lagging_inflight_counts() {
        for in_flight_total in [100.0, 1000.0, 5000.0, 20000.0] {
            let (mut r, _) = P2cRouter::parse("{}").unwrap();
            let caps = [1u32, 2, 4];
            let mut inflight = [0u32; 3];
            let mut total = [0usize; 3];
            for v in 0..400 {
                let mut t: Vec<Target> = caps
                    .iter()
                    .zip(["a", "b", "c"])
                    .map(|(c, id)| target(id, *c, Health::Healthy))
                    .collect();
                for (t, f) in t.iter_mut().zip(inflight) {
                    t.inflight = f;
                }
                r.update_targets(v, t);
                let mut round = [0usize; 3];
                for d in r.route(batch(100, false)) {
                    if let Decision::Route(i) = d {
                        round[i as usize] += 1;
                    }
                }
                for i in 0..3 {
                    total[i] += round[i];
                    inflight[i] = (round[i] as f64 / 100.0 * in_flight_total) as u32;
                }
            }
            let n: usize = total.iter().sum();
            for (i, want) in [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0].iter().enumerate() {
                let got = total[i] as f64 / n as f64;
                assert!(
                    (got / want - 1.0).abs() < 0.10,
                    "in flight {in_flight_total}: target {i}: {got:.3} vs {want:.3} ({total:?})"
                );
            }
        }
    }

    #[test]
    fn sticky_keeps_keys_and_moves_only_those_of_a_down_target() {
        let (mut r, opts) = P2cRouter::parse(r#"{"sticky":true}"#).unwrap();
        assert!(opts.headers.is_empty());
        three(&mut r, Health::Healthy);
        let before = r.route(batch(500, true));
        let again = r.route(batch(500, true));
        assert_eq!(before, again, "same keys, same targets");
        three(&mut r, Health::Down);
        let after = r.route(batch(500, true));
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, Decision::Route(2), "down target gets nothing");
            if *b != Decision::Route(2) {
                assert_eq!(a, b, "keys of live targets stay put");
            }
        }
    }

    #[test]
    fn no_eligible_target_defers_to_host() {
        let (mut r, _) = P2cRouter::parse("{}").unwrap();
        r.update_targets(1, vec![target("a", 1, Health::Down)]);
        assert_eq!(r.route(batch(1, false)), vec![Decision::Default]);
    }

    #[test]
    fn rejects_unknown_config_keys() {
        assert!(P2cRouter::parse(r#"{"stiky":true}"#).is_err());
        let e = P2cRouter::parse(r#"{"sticky":true,"sticky_max_load":0.5}"#)
            .err()
            .unwrap();
        assert!(e.contains("sticky_max_load 0.5 must be at least 1"), "{e}");
    }

    /// One hot key among cold ones: unbounded, its target takes all its
    /// records; bounded at 1.25, no target gets more than 1.25× its share
    /// (plus one record), and cold keys mostly stay where rendezvous puts
    /// them.
    #[test]
    fn bounded_loads_spread_a_hot_key_and_keep_cold_keys_put() {
        let hot_batch = |n: usize| {
            let keys: Vec<String> = (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        "hot".into()
                    } else {
                        format!("cold-{i}")
                    }
                })
                .collect();
            let records: Vec<_> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (i as i64, Some(k.as_bytes()), None, &[][..]))
                .collect();
            Batch::of("t", 0, &records)
        };
        let targets = |r: &mut P2cRouter| {
            r.update_targets(
                1,
                (0..4)
                    .map(|i| target(&format!("t{i}"), 10, Health::Healthy))
                    .collect(),
            )
        };
        let count = |r: &mut P2cRouter| {
            let mut c = [0usize; 4];
            for _ in 0..20 {
                for d in r.route(hot_batch(200)) {
                    if let Decision::Route(i) = d {
                        c[i as usize] += 1;
                    }
                }
            }
            c
        };
        let (mut plain, _) = P2cRouter::parse(r#"{"sticky":true}"#).unwrap();
        targets(&mut plain);
        let c = count(&mut plain);
        assert!(
            *c.iter().max().unwrap() > 2_000,
            "the hot key pins one target: {c:?}"
        );
        let (mut bounded, _) =
            P2cRouter::parse(r#"{"sticky":true,"sticky_max_load":1.25}"#).unwrap();
        targets(&mut bounded);
        let c = count(&mut bounded);
        let mean = c.iter().sum::<usize>() as f64 / 4.0;
        assert!(*c.iter().max().unwrap() as f64 <= 1.3 * mean, "{c:?}");
        // A cold key seen once per batch: mostly on its rendezvous target.
        let (mut r2, _) = P2cRouter::parse(r#"{"sticky":true}"#).unwrap();
        targets(&mut r2);
        let free = r2.route(hot_batch(200));
        let held = bounded.route(hot_batch(200));
        let same = free
            .iter()
            .zip(&held)
            .skip(1)
            .step_by(2)
            .filter(|(a, b)| a == b)
            .count();
        assert!(same >= 70, "{same} of 100 cold keys kept their target");
    }

    fn zoned(id: &str, zone: &str, health: Health) -> Target {
        Target {
            zone: Some(zone.into()),
            ..target(id, 10, health)
        }
    }

    fn counts(r: &mut P2cRouter, targets: Vec<Target>, keyed: bool) -> Vec<usize> {
        let mut count = vec![0; targets.len()];
        r.update_targets(1, targets);
        for d in r.route(batch(1000, keyed)) {
            match d {
                Decision::Route(i) => count[i as usize] += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        count
    }

    /// The local zone takes every record while at least half its capacity
    /// is healthy; below that (or with none healthy) every zone does.
    #[test]
    fn the_local_zone_is_preferred_until_it_is_short() {
        for sticky in [false, true] {
            let config = format!(r#"{{"local_zone": "a", "sticky": {sticky}}}"#);
            let (mut r, _) = P2cRouter::parse(&config).unwrap();
            let fleet = |a2: Health, a3: Health| {
                vec![
                    zoned("a1", "a", Health::Healthy),
                    zoned("a2", "a", a2),
                    zoned("a3", "a", a3),
                    zoned("b1", "b", Health::Healthy),
                    target("unzoned", 10, Health::Healthy),
                ]
            };
            let c = counts(&mut r, fleet(Health::Healthy, Health::Healthy), sticky);
            assert!(c[..3].iter().all(|&n| n > 200), "{sticky}: {c:?}");
            assert_eq!(c[3] + c[4], 0, "{sticky}: {c:?}");
            // Two thirds down: one third healthy is below 0.5: spill over.
            let c = counts(&mut r, fleet(Health::Down, Health::Down), sticky);
            assert_eq!(c[1] + c[2], 0, "{sticky}: {c:?}");
            assert!(c[3] > 200 && c[4] > 200, "{sticky}: {c:?}");
            // One of three down: two thirds healthy: stay in the zone.
            let c = counts(&mut r, fleet(Health::Down, Health::Healthy), sticky);
            assert_eq!((c[1], c[3], c[4]), (0, 0, 0), "{sticky}: {c:?}");
        }
        let e = P2cRouter::parse(r#"{"zone_min_healthy": 2}"#)
            .err()
            .unwrap();
        assert!(e.contains("zone_min_healthy 2 must be within 0..=1"), "{e}");
    }
}
