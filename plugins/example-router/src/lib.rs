//! `example-router` (Rust): the portable example policy of
//! `sdk/example-policy.md` — weighted power-of-two-choices by capacity and
//! in-flight, sticky per key when configured — with the same decisions as
//! the Python, JavaScript and C examples (the conformance suite checks it).
//!
//! * Power of two choices: Mitzenmacher, "The Power of Two Choices in
//!   Randomized Load Balancing", IEEE TPDS 12(10), 2001. Two distinct
//!   eligible targets are drawn uniformly (xorshift32, Marsaglia, JSS 8(14),
//!   2003); the record goes to the one with the lower
//!   `(inflight + assigned) / (capacity × weight)`.
//! * Sticky: rendezvous hashing (Thaler & Ravishankar, IEEE/ACM ToN 6(1),
//!   1998) of the key with FNV-1a 32 and MurmurHash3's finaliser; a key keeps its target while the
//!   eligible set is unchanged, and only the keys of a lost target move.
//!
//! Config (JSON): `{"sticky": false, "sticky_header": null, "seed": 1}`.

use cdrs_plugin_sdk::router::{Batch, Decision, Health, Record, Router, RouterOptions, Target};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExampleConfig {
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    sticky_header: Option<String>,
    #[serde(default = "default_seed")]
    seed: u32,
}

fn default_seed() -> u32 {
    1
}

/// FNV-1a, 32 bits (offset basis 0x811C9DC5, prime 0x01000193), over `parts`
/// in order. <http://www.isthe.com/chongo/tech/comp/fnv/>
pub fn fnv1a32(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for part in parts {
        for &b in *part {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// MurmurHash3's 32-bit finaliser (Appleby, 2011): FNV-1a alone mixes its
/// last bytes poorly, so rendezvous scores of similar ids correlate.
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
}

/// xorshift32 step (shifts 13, 17, 5): the new state, which is also the output.
pub fn xorshift32(state: &mut u32) -> u32 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x
}

/// The router state of one instance.
pub struct ExampleRouter {
    sticky: bool,
    sticky_header: Option<String>,
    rng: u32,
    targets: Vec<Target>,
    /// Records routed to each target since the last `update-targets`.
    assigned: Vec<u64>,
    /// Indexes of the eligible targets, ascending.
    eligible: Vec<u32>,
}

impl ExampleRouter {
    fn parse(config: &str) -> Result<(Self, RouterOptions), String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        // serde also fills a struct from a JSON array, by position.
        if !config.trim_start().starts_with('{') {
            return Err("invalid example-router config: expected a JSON object".into());
        }
        let c: ExampleConfig = serde_json::from_str(config)
            .map_err(|e| format!("invalid example-router config: {e}"))?;
        if c.seed == 0 {
            return Err("invalid example-router config: `seed` must be 1..=4294967295".into());
        }
        let options = RouterOptions {
            headers: c.sticky_header.iter().cloned().collect(),
            needs_value: false,
        };
        Ok((
            ExampleRouter {
                sticky: c.sticky,
                sticky_header: c.sticky_header,
                rng: c.seed,
                targets: Vec::new(),
                assigned: Vec::new(),
                eligible: Vec::new(),
            },
            options,
        ))
    }

    fn set_targets(&mut self, targets: Vec<Target>) {
        let usable = |t: &Target, h: Health| t.health == h && t.capacity > 0 && t.weight > 0;
        let by = |h: Health| -> Vec<u32> {
            (0..targets.len() as u32)
                .filter(|&i| usable(&targets[i as usize], h))
                .collect()
        };
        self.eligible = by(Health::Healthy);
        if self.eligible.is_empty() {
            self.eligible = by(Health::Degraded);
        }
        self.assigned = vec![0; targets.len()];
        self.targets = targets;
    }

    fn weight(&self, i: u32) -> f64 {
        let t = &self.targets[i as usize];
        f64::from(t.capacity) * f64::from(t.weight)
    }

    fn load(&self, i: u32) -> f64 {
        let inflight = u64::from(self.targets[i as usize].inflight);
        (inflight + self.assigned[i as usize]) as f64 / self.weight(i)
    }

    fn two_choices(&mut self) -> u32 {
        let n = self.eligible.len() as u32;
        if n == 1 {
            return self.eligible[0];
        }
        let p = xorshift32(&mut self.rng) % n;
        let mut q = xorshift32(&mut self.rng) % (n - 1);
        if q >= p {
            q += 1;
        }
        let (a, b) = (self.eligible[p as usize], self.eligible[q as usize]);
        let (la, lb) = (self.load(a), self.load(b));
        if la != lb {
            return if la < lb { a } else { b };
        }
        let (wa, wb) = (self.weight(a), self.weight(b));
        if wa != wb {
            return if wa > wb { a } else { b };
        }
        a.min(b)
    }

    fn rendezvous(&self, key: &[u8]) -> u32 {
        let mut best = (0u32, u32::MAX);
        for &i in &self.eligible {
            let score = fmix32(fnv1a32(&[
                self.targets[i as usize].id.as_bytes(),
                &[0],
                key,
            ]));
            if best.1 == u32::MAX || score > best.0 {
                best = (score, i);
            }
        }
        best.1
    }

    fn sticky_key<'a>(&self, r: &Record<'a>) -> Option<&'a [u8]> {
        if !self.sticky {
            return None;
        }
        match &self.sticky_header {
            Some(h) => r.header(h),
            None => r.key(),
        }
    }

    fn decide(&mut self, r: &Record<'_>) -> Decision {
        if self.eligible.is_empty() {
            return Decision::Default;
        }
        let i = match self.sticky_key(r) {
            Some(key) => self.rendezvous(key),
            None => self.two_choices(),
        };
        self.assigned[i as usize] += 1;
        Decision::Route(i)
    }
}

impl Router for ExampleRouter {
    fn init(config: &str) -> Result<(Self, RouterOptions), String> {
        Self::parse(config)
    }

    fn update_targets(&mut self, _version: u64, targets: Vec<Target>) {
        self.set_targets(targets);
    }

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        batch.records().map(|r| self.decide(&r)).collect()
    }
}

cdrs_plugin_sdk::export_router!(ExampleRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, capacity: u32, inflight: u32, health: Health) -> Target {
        Target {
            id: id.into(),
            zone: None,
            labels: vec![],
            weight: 100,
            capacity,
            inflight,
            queue_depth: 0,
            cpu_permille: 0,
            latency_ewma_us: 0,
            error_rate_permille: 0,
            health,
            report_age_ms: 0,
        }
    }

    fn router(config: &str, targets: Vec<Target>) -> ExampleRouter {
        let (mut r, _) = ExampleRouter::init(config).unwrap();
        r.update_targets(1, targets);
        r
    }

    fn route_keys(r: &mut ExampleRouter, keys: &[Option<&[u8]>]) -> Vec<Decision> {
        let records: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as i64, *k, None, &[][..]))
            .collect();
        r.route(Batch::of("t", 0, &records))
    }

    #[test]
    fn hash_and_rng_match_the_spec() {
        assert_eq!(fnv1a32(&[b"a"]), 0xE40C_292C);
        assert_eq!(fnv1a32(&[b"a", b"b"]), fnv1a32(&[b"ab"]));
        assert_eq!(fmix32(0), 0);
        assert_eq!(fmix32(1), 0x514E_28B7);
        let mut s = 1;
        let first: Vec<u32> = (0..3).map(|_| xorshift32(&mut s)).collect();
        assert_eq!(first, [270369, 67634689, 2647435461]);
    }

    #[test]
    fn config_is_checked() {
        for bad in [
            r#"{"seed": 0}"#,
            r#"{"seed": 4294967296}"#,
            r#"{"seed": true}"#,
            r#"{"sticky": 1}"#,
            r#"{"colour": "red"}"#,
            "[]",
        ] {
            assert!(ExampleRouter::init(bad).is_err(), "{bad} accepted");
        }
        let (_, options) =
            ExampleRouter::init(r#"{"sticky": true, "sticky_header": "x-client"}"#).unwrap();
        assert_eq!(options.headers, ["x-client"]);
        assert!(ExampleRouter::init("").is_ok());
    }

    #[test]
    fn down_and_draining_targets_get_nothing_while_a_healthy_one_exists() {
        let mut r = router(
            "{}",
            vec![
                target("a", 100, 0, Health::Down),
                target("b", 100, 0, Health::Degraded),
                target("c", 100, 0, Health::Healthy),
                target("d", 0, 0, Health::Healthy),
            ],
        );
        let d = route_keys(&mut r, &[None; 50]);
        assert!(d.iter().all(|d| *d == Decision::Route(2)), "{d:?}");
        // Only draining ones left: they take the records; none at all: default.
        r.update_targets(
            2,
            vec![
                target("a", 100, 0, Health::Down),
                target("b", 100, 0, Health::Degraded),
            ],
        );
        assert_eq!(route_keys(&mut r, &[None]), [Decision::Route(1)]);
        r.update_targets(3, vec![]);
        assert_eq!(route_keys(&mut r, &[None]), [Decision::Default]);
    }

    #[test]
    fn split_follows_capacity_and_inflight() {
        let mut r = router(
            "{}",
            vec![
                target("a", 100, 0, Health::Healthy),
                target("b", 300, 0, Health::Healthy),
            ],
        );
        let d = route_keys(&mut r, &[None; 400]);
        let to_b = d.iter().filter(|d| **d == Decision::Route(1)).count();
        assert!((290..=310).contains(&to_b), "b got {to_b} of 400");
        // A target already full of in-flight records gets none until the others catch up.
        let mut r = router(
            "{}",
            vec![
                target("a", 100, 100, Health::Healthy),
                target("b", 100, 0, Health::Healthy),
            ],
        );
        let d = route_keys(&mut r, &[None; 100]);
        assert!(d.iter().all(|d| *d == Decision::Route(1)), "{d:?}");
    }

    #[test]
    fn sticky_keys_keep_their_target_and_only_a_lost_targets_keys_move() {
        let targets = || {
            vec![
                target("a", 100, 0, Health::Healthy),
                target("b", 100, 0, Health::Healthy),
                target("c", 100, 0, Health::Healthy),
            ]
        };
        let keys: Vec<Vec<u8>> = (0..60)
            .map(|i| format!("client-{i}").into_bytes())
            .collect();
        let keys: Vec<Option<&[u8]>> = keys.iter().map(|k| Some(k.as_slice())).collect();
        let mut r = router(r#"{"sticky": true}"#, targets());
        let first = route_keys(&mut r, &keys);
        assert_eq!(first, route_keys(&mut r, &keys), "same keys, same targets");
        let mut down = targets();
        down[1].health = Health::Down;
        r.update_targets(2, down);
        let after = route_keys(&mut r, &keys);
        for (before, after) in first.iter().zip(&after) {
            assert_ne!(*after, Decision::Route(1));
            if *before != Decision::Route(1) {
                assert_eq!(before, after, "a key of a live target moved");
            }
        }
    }
}
