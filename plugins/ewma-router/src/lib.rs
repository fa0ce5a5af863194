//! `ewma-router`: power of two choices by expected wait, for servers whose
//! speed changes (a slow disk, a noisy neighbour, a GC storm) faster than
//! their reported capacity does.
//!
//! For each record, two healthy targets are drawn in proportion to their
//! capacity and the one with the lower cost wins:
//!
//! ```text
//! cost = max(1, latency ÷ median latency) × (in-flight + 1) ÷ capacity
//! ```
//!
//! `latency` is the host's EWMA of the target's delivery latency
//! (`latency-ewma-us`); `in-flight` the snapshot's (CDRS's own and the
//! server's reported, the larger) plus what this instance routed there
//! since the snapshot, or — when the target's last report is older than
//! `fresh_report_ms` — this instance's own recent assignments alone, since
//! a stale fleet-wide count makes every instance avoid a server, then
//! crowd it, at once (herding). Load per unit of capacity decides among
//! servers that are about as fast as the others (P2C, Mitzenmacher 2001);
//! a server slower than the median counts as that many times more loaded,
//! after Finagle's and Linkerd's "peak EWMA" cost, latency times
//! outstanding requests plus one, but only above the median, because a
//! capacity that matches a server's speed already says it is fast. A
//! target that gets no records has no new latency samples: so that one
//! slow spell does not shut it out for good, its latency relaxes toward
//! the others' median with a half-life of `probe_half_life_records`
//! records routed, and it is tried again.
//!
//! A target whose latency is not known yet counts at the median of the
//! known ones (all unknown: by in-flight ÷ capacity alone). Degraded
//! targets get records only when no healthy one exists; with none
//! eligible the decision is `default` and the host decides.
//!
//! Config (JSON): `{"seed": 1, "probe_half_life_records": 2048,
//! "fresh_report_ms": 500}`.

use cdrs_plugin_sdk::router::{Batch, Decision, Router, RouterOptions, Target};
use policy_kit::Fleet;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::Distribution;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EwmaConfig {
    #[serde(default = "default_seed")]
    seed: u64,
    /// Records routed after which a target's unrefreshed latency is half
    /// way back to the median. Default 2048.
    #[serde(default = "default_half_life")]
    probe_half_life_records: f64,
    /// A target's in-flight count is used while its last capacity report
    /// is at most this old, ms; older, this instance's own recent
    /// assignments stand in for it. Default 500.
    #[serde(default = "default_fresh")]
    fresh_report_ms: u64,
}

fn default_fresh() -> u64 {
    500
}

fn default_seed() -> u64 {
    1
}
fn default_half_life() -> f64 {
    2048.0
}

/// The router state of one instance.
pub struct EwmaRouter {
    rng: Xoshiro256PlusPlus,
    half_life: f64,
    fleet: Fleet,
    alias: Option<WeightedAliasIndex<f64>>,
}

impl EwmaRouter {
    fn parse(config: &str) -> Result<(Self, RouterOptions), String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: EwmaConfig =
            serde_json::from_str(config).map_err(|e| format!("invalid ewma-router config: {e}"))?;
        if !(c.probe_half_life_records >= 1.0 && c.probe_half_life_records.is_finite()) {
            return Err(format!(
                "invalid ewma-router config: probe_half_life_records {} must be at least 1",
                c.probe_half_life_records
            ));
        }
        Ok((
            EwmaRouter {
                rng: Xoshiro256PlusPlus::seed_from_u64(c.seed),
                half_life: c.probe_half_life_records,
                fleet: Fleet::new(c.fresh_report_ms),
                alias: None,
            },
            RouterOptions {
                headers: Vec::new(),
                needs_value: false,
            },
        ))
    }

    fn set_targets(&mut self, targets: &[Target]) {
        self.fleet.update(targets);
        self.alias = WeightedAliasIndex::new(
            self.fleet
                .eligible
                .iter()
                .map(|&i| self.fleet.slots[i as usize].capacity)
                .collect(),
        )
        .ok();
    }

    fn cost(&self, i: u32, median: f64) -> f64 {
        let s = &self.fleet.slots[i as usize];
        let latency = self.fleet.latency(i, median, self.half_life);
        let penalty = if median > 0.0 {
            (latency / median).max(1.0)
        } else {
            1.0
        };
        penalty * (s.load() + 1.0) / s.capacity
    }

    fn pick(&mut self, except: Option<usize>) -> usize {
        let Some(alias) = &self.alias else {
            return 0;
        };
        for _ in 0..16 {
            let j = alias.sample(&mut self.rng);
            if Some(j) != except {
                return j;
            }
        }
        except.map_or(0, |e| (e + 1) % self.fleet.eligible.len())
    }

    fn decide(&mut self, median: f64) -> Decision {
        let i = match self.fleet.eligible.len() {
            0 => return Decision::Default,
            1 => self.fleet.eligible[0],
            _ => {
                let a = self.pick(None);
                let b = self.pick(Some(a));
                let (a, b) = (self.fleet.eligible[a], self.fleet.eligible[b]);
                if self.cost(a, median) <= self.cost(b, median) {
                    a
                } else {
                    b
                }
            }
        };
        self.fleet.assign(i);
        Decision::Route(i)
    }
}

impl Router for EwmaRouter {
    fn init(config: &str) -> Result<(Self, RouterOptions), String> {
        Self::parse(config)
    }

    fn update_targets(&mut self, _version: u64, targets: Vec<Target>) {
        self.set_targets(&targets);
    }

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        self.fleet.decay(batch.len());
        let median = self.fleet.median_latency();
        (0..batch.len()).map(|_| self.decide(median)).collect()
    }
}

cdrs_plugin_sdk::export_router!(EwmaRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use cdrs_plugin_sdk::router::Health;
    use policy_kit::testing::{batch, target};

    /// Records per target over `rounds` batches of 100 (the snapshot pushed
    /// again before each, with nothing in flight).
    fn split(r: &mut EwmaRouter, targets: &[Target], rounds: usize) -> Vec<usize> {
        let mut count = vec![0; targets.len()];
        for v in 0..rounds {
            r.update_targets(v as u64, targets.to_vec());
            for d in r.route(batch(100)) {
                match d {
                    Decision::Route(i) => count[i as usize] += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        count
    }

    #[test]
    fn equal_latency_splits_by_capacity() {
        let (mut r, _) = EwmaRouter::parse("{}").unwrap();
        let t = [
            target("a", 10, 0, 0),
            target("b", 20, 0, 0),
            target("c", 40, 0, 0),
        ];
        let c = split(&mut r, &t, 100);
        let total: usize = c.iter().sum();
        for (i, want) in [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0].iter().enumerate() {
            let got = c[i] as f64 / total as f64;
            assert!((got - want).abs() < 0.05, "{c:?}");
        }
    }

    #[test]
    fn a_slow_target_gets_little_and_is_tried_again_later() {
        let (mut r, _) = EwmaRouter::parse(r#"{"probe_half_life_records": 500}"#).unwrap();
        let slow = [
            target("a", 10, 20_000, 0),
            target("b", 10, 200_000, 0),
            target("c", 10, 20_000, 0),
        ];
        let c = split(&mut r, &slow, 5);
        assert!(c[1] < c[0] / 4 && c[1] < c[2] / 4, "{c:?}");
        // Its latency is not refreshed (no records reached it): it relaxes
        // toward the others' and the target is tried again.
        let c = split(&mut r, &slow, 100);
        assert!(c[1] > 500, "{c:?}");
    }

    #[test]
    fn in_flight_counts_and_own_assignments_steer_away() {
        let (mut r, _) = EwmaRouter::parse("{}").unwrap();
        let busy = [target("a", 10, 10_000, 50), target("b", 10, 10_000, 0)];
        // "b" takes records until it has as many in flight as "a", then
        // they alternate: 50 + 25 of 100.
        let c = split(&mut r, &busy, 1);
        assert_eq!(c, [25, 75]);
    }

    /// A count from a report older than `fresh_report_ms` is the fleet's of
    /// a while ago: this instance's own assignments stand in for it.
    #[test]
    fn a_stale_in_flight_count_is_not_followed() {
        let (mut r, _) = EwmaRouter::parse("{}").unwrap();
        let mut stale = [target("a", 10, 10_000, 50), target("b", 10, 10_000, 0)];
        for t in &mut stale {
            t.report_age_ms = 2_000;
        }
        let c = split(&mut r, &stale, 10);
        assert!(c[0].abs_diff(c[1]) < 100, "{c:?}");
    }

    #[test]
    fn nothing_eligible_is_left_to_the_host_and_bad_config_is_refused() {
        let (mut r, _) = EwmaRouter::parse("").unwrap();
        let mut down = target("a", 10, 0, 0);
        down.health = Health::Down;
        r.update_targets(1, vec![down]);
        assert_eq!(
            r.route(batch(2)),
            vec![Decision::Default, Decision::Default]
        );
        let e = EwmaRouter::parse(r#"{"probe_half_life_records": 0}"#)
            .err()
            .unwrap();
        assert!(
            e.contains("probe_half_life_records 0 must be at least 1"),
            "{e}"
        );
        assert!(EwmaRouter::parse(r#"{"nope": 1}"#)
            .err()
            .unwrap()
            .contains("unknown field"));
    }
}
