//! `prequal-router`: the hot-cold lexicographic rule of Prequal
//! (Wydrowski, Kleinberg, Rumble & Archer, "Load is not what you should
//! balance: Introducing Prequal", NSDI 2024), on the in-flight counts and
//! latencies CDRS already has for every target.
//!
//! For each record, `probes` eligible targets are drawn at random (all of
//! them when there are fewer). A target is *hot* when its requests in
//! flight per unit of capacity exceed the `q_rif` quantile of those of all
//! eligible targets; among the cold ones the lowest estimated latency
//! wins (latencies within `latency_tolerance` of each other count as
//! equal, and the less loaded wins), and when every probe is hot the least
//! loaded wins. Load is what
//! keeps a target out of the choice, latency what makes the choice: a fast
//! server takes work until it is among the busiest, and a slow one gets
//! only what the fast ones cannot take. Prequal counts raw requests in
//! flight; CDRS's targets state their capacity, so the count is taken per
//! unit of it (in simulation, raw counts overloaded the middle server of a
//! 1:2:4 set).
//!
//! Where Prequal probes servers, CDRS's snapshot stands in for the probe
//! pool: `in-flight` is the snapshot's (CDRS's own and the server's
//! reported, the larger) plus what this instance routed there since, or
//! this instance's own recent assignments alone when the target's last
//! report is older than `fresh_report_ms` (a stale fleet-wide count makes
//! every instance avoid a server, then crowd it, at once). `latency` is
//! the host's EWMA of the delivery latency (`latency-ewma-us`). A target
//! that gets no records has no new latency samples; so that one slow spell
//! does not shut it out for good, its latency relaxes toward the others'
//! median with a half-life of `probe_half_life_records` records routed,
//! and it is tried again. A target whose latency is not known yet counts
//! at the median of the known ones.
//!
//! Degraded targets get records only when no healthy one exists; with none
//! eligible the decision is `default` and the host decides.
//!
//! Config (JSON): `{"seed": 1, "probes": 3, "q_rif": 0.75,
//! "latency_tolerance": 0.1, "probe_half_life_records": 2048, "fresh_report_ms": 500}`.

use cdrs_plugin_sdk::router::{Batch, Decision, Router, RouterOptions, Target};
use policy_kit::Fleet;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrequalConfig {
    #[serde(default = "default_seed")]
    seed: u64,
    /// Targets compared per record (Prequal's d). Default 3; at least 2.
    #[serde(default = "default_probes")]
    probes: usize,
    /// Quantile of the in-flight counts above which a target is hot,
    /// 0..=1. Default 0.75 (the paper tunes it within 0.6..0.9).
    #[serde(default = "default_q_rif")]
    q_rif: f64,
    /// Latencies this close (a fraction of the lower) count as equal, and
    /// the less loaded target wins. Default 0.1.
    #[serde(default = "default_tolerance")]
    latency_tolerance: f64,
    /// Records routed after which a target's unrefreshed latency figure is
    /// half way back to the median. Default 2048.
    #[serde(default = "default_half_life")]
    probe_half_life_records: f64,
    /// A target's in-flight count is used while its last capacity report
    /// is at most this old, ms; older, this instance's own recent
    /// assignments stand in for it. Default 500.
    #[serde(default = "default_fresh")]
    fresh_report_ms: u64,
}

fn default_seed() -> u64 {
    1
}
fn default_probes() -> usize {
    3
}
fn default_q_rif() -> f64 {
    0.75
}
fn default_tolerance() -> f64 {
    0.1
}
fn default_half_life() -> f64 {
    2048.0
}
fn default_fresh() -> u64 {
    500
}

/// The router state of one instance.
pub struct PrequalRouter {
    rng: Xoshiro256PlusPlus,
    probes: usize,
    q_rif: f64,
    half_life: f64,
    tolerance: f64,
    fleet: Fleet,
}

impl PrequalRouter {
    fn parse(config: &str) -> Result<(Self, RouterOptions), String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: PrequalConfig = serde_json::from_str(config)
            .map_err(|e| format!("invalid prequal-router config: {e}"))?;
        if c.probes < 2 {
            return Err(format!(
                "invalid prequal-router config: probes {} must be at least 2",
                c.probes
            ));
        }
        if !(0.0..=1.0).contains(&c.q_rif) {
            return Err(format!(
                "invalid prequal-router config: q_rif {} must be within 0..=1",
                c.q_rif
            ));
        }
        if !(c.probe_half_life_records >= 1.0 && c.probe_half_life_records.is_finite()) {
            return Err(format!(
                "invalid prequal-router config: probe_half_life_records {} must be at least 1",
                c.probe_half_life_records
            ));
        }
        if !(0.0..=1.0).contains(&c.latency_tolerance) {
            return Err(format!(
                "invalid prequal-router config: latency_tolerance {} must be within 0..=1",
                c.latency_tolerance
            ));
        }
        Ok((
            PrequalRouter {
                rng: Xoshiro256PlusPlus::seed_from_u64(c.seed),
                probes: c.probes,
                q_rif: c.q_rif,
                half_life: c.probe_half_life_records,
                tolerance: c.latency_tolerance,
                fleet: Fleet::new(c.fresh_report_ms),
            },
            RouterOptions {
                headers: Vec::new(),
                needs_value: false,
            },
        ))
    }

    /// Target `i`'s requests in flight per unit of capacity.
    fn load(&self, i: u32) -> f64 {
        let s = &self.fleet.slots[i as usize];
        s.load() / s.capacity
    }

    /// The `q_rif` quantile of the eligible targets' in-flight counts per
    /// unit of capacity.
    fn hot_threshold(&self) -> f64 {
        let mut rif: Vec<f64> = self.fleet.eligible.iter().map(|&i| self.load(i)).collect();
        if rif.is_empty() {
            return 0.0;
        }
        rif.sort_by(f64::total_cmp);
        let at = (self.q_rif * (rif.len() - 1) as f64).floor() as usize;
        rif[at.min(rif.len() - 1)]
    }

    /// Draws `probes` distinct eligible positions (a partial Fisher-Yates
    /// shuffle of `eligible`, which is reordered in place).
    fn draw(&mut self) -> usize {
        let n = self.fleet.eligible.len();
        let d = self.probes.min(n);
        for k in 0..d {
            let j = k + (self.rng.next_u64() % (n - k) as u64) as usize;
            self.fleet.eligible.swap(k, j);
        }
        d
    }

    fn decide(&mut self, median: f64, hot: f64) -> Decision {
        if self.fleet.eligible.is_empty() {
            return Decision::Default;
        }
        let d = self.draw();
        let mut best_cold: Option<(f64, u32)> = None;
        let mut least_hot: Option<(f64, u32)> = None;
        for k in 0..d {
            let i = self.fleet.eligible[k];
            let load = self.load(i);
            if load <= hot {
                // An unrefreshed figure relaxes toward the median, so the
                // target is tried again and measured anew.
                let l = self.fleet.latency(i, median, self.half_life);
                let better = match best_cold {
                    None => true,
                    Some((b, j)) if (l - b).abs() <= self.tolerance * l.min(b) => {
                        load < self.load(j)
                    }
                    Some((b, _)) => l < b,
                };
                if better {
                    best_cold = Some((l, i));
                }
            } else if least_hot.is_none_or(|(b, _)| load < b) {
                least_hot = Some((load, i));
            }
        }
        let i = best_cold
            .or(least_hot)
            .map_or(self.fleet.eligible[0], |(_, i)| i);
        self.fleet.assign(i);
        Decision::Route(i)
    }
}

impl Router for PrequalRouter {
    fn init(config: &str) -> Result<(Self, RouterOptions), String> {
        Self::parse(config)
    }

    fn update_targets(&mut self, _version: u64, targets: Vec<Target>) {
        self.fleet.update(&targets);
    }

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        self.fleet.decay(batch.len());
        let median = self.fleet.median_latency();
        (0..batch.len())
            .map(|_| {
                let hot = self.hot_threshold();
                self.decide(median, hot)
            })
            .collect()
    }
}

cdrs_plugin_sdk::export_router!(PrequalRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use cdrs_plugin_sdk::router::Health;
    use policy_kit::testing::{batch, target};

    /// Records per target over `rounds` batches of `size` (the snapshot
    /// pushed again before each).
    fn split(r: &mut PrequalRouter, targets: &[Target], rounds: usize, size: usize) -> Vec<usize> {
        let mut count = vec![0; targets.len()];
        for v in 0..rounds {
            r.update_targets(v as u64, targets.to_vec());
            for d in r.route(batch(size)) {
                match d {
                    Decision::Route(i) => count[i as usize] += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        count
    }

    /// The fastest cold target takes records until it is among the most
    /// loaded; then the next fastest does.
    #[test]
    fn the_fastest_cold_target_wins_until_it_is_hot() {
        let (mut r, _) = PrequalRouter::parse("{}").unwrap();
        let t = [
            target("slow", 10, 40_000, 0),
            target("medium", 10, 20_000, 0),
            target("fast", 10, 10_000, 0),
        ];
        // One record: everything is cold, the fastest wins.
        assert_eq!(split(&mut r, &t, 1, 1), [0, 0, 1]);
        // Ten: "fast" is hot as soon as it has more than the median (0),
        // so "medium" takes the next; then they alternate, and "slow"
        // takes one only when both others are above it.
        let c = split(&mut r, &t, 1, 10);
        assert!(c[2] >= c[1] && c[1] > c[0], "{c:?}");
        assert!(c[0] <= 3, "{c:?}");
    }

    /// Hotness is in-flight per unit of capacity: a target with four times
    /// the capacity holds four times the records before it is hot.
    #[test]
    fn capacity_scales_what_counts_as_hot() {
        let (mut r, _) = PrequalRouter::parse("{}").unwrap();
        let t = [
            target("big", 40, 10_000, 40),
            target("small", 10, 10_000, 9),
        ];
        // Per unit: big 1.0, small 0.9: small is cold and takes records
        // until it passes 1.0, then they share.
        let c = split(&mut r, &t, 1, 1);
        assert_eq!(c, [0, 1]);
    }

    #[test]
    fn a_slow_target_gets_little_and_is_tried_again_later() {
        let (mut r, _) = PrequalRouter::parse(r#"{"probe_half_life_records": 500}"#).unwrap();
        let slow = [
            target("a", 10, 20_000, 0),
            target("b", 10, 400_000, 0),
            target("c", 10, 20_000, 0),
        ];
        let c = split(&mut r, &slow, 5, 100);
        assert!(c[1] < c[0] / 4 && c[1] < c[2] / 4, "{c:?}");
        // Its latency is not refreshed (no records reached it): it relaxes
        // toward the others' and the target is tried again.
        let c = split(&mut r, &slow, 100, 100);
        assert!(c[1] > 1000, "{c:?}");
    }

    /// A count from a report older than `fresh_report_ms` is the fleet's of
    /// a while ago: this instance's own assignments stand in for it.
    #[test]
    fn a_stale_in_flight_count_is_not_followed() {
        let (mut r, _) = PrequalRouter::parse("{}").unwrap();
        let mut stale = [target("a", 10, 10_000, 50), target("b", 10, 10_000, 0)];
        for t in &mut stale {
            t.report_age_ms = 2_000;
        }
        let c = split(&mut r, &stale, 10, 100);
        assert!(c[0].abs_diff(c[1]) < 100, "{c:?}");
    }

    #[test]
    fn nothing_eligible_is_left_to_the_host_and_bad_config_is_refused() {
        let (mut r, _) = PrequalRouter::parse("").unwrap();
        let mut down = target("a", 10, 0, 0);
        down.health = Health::Down;
        r.update_targets(1, vec![down]);
        assert_eq!(
            r.route(batch(2)),
            vec![Decision::Default, Decision::Default]
        );
        for (config, error) in [
            (r#"{"probes": 1}"#, "probes 1 must be at least 2"),
            (r#"{"q_rif": 1.5}"#, "q_rif 1.5 must be within 0..=1"),
            (
                r#"{"latency_tolerance": -1}"#,
                "latency_tolerance -1 must be within 0..=1",
            ),
            (
                r#"{"probe_half_life_records": 0}"#,
                "probe_half_life_records 0 must be at least 1",
            ),
            (r#"{"nope": 1}"#, "unknown field"),
        ] {
            let e = PrequalRouter::parse(config).err().unwrap();
            assert!(e.contains(error), "{config}: {e}");
        }
    }
}
