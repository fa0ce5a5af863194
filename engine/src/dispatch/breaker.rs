//! Circuit breakers with outlier ejection, one per target.
//!
//! ```text
//!  closed ──(N consecutive failures, or failure share ≥ P% over an interval
//!    ▲       with ≥ M requests; unless the ejection cap or panic threshold
//!    │       says no)──► open (target ejected: marked down for base × n)
//!    │                      │ ejection time over
//!    │ probe ok             ▼
//!    └────────────── half-open (one probe request at a time)
//!                           │ probe failed
//!                           └──► open again, n + 1
//! ```
//!
//! `n` is the number of ejections in a row: it drops by one for every
//! `base_ejection_ms` the target stays closed (Envoy's behaviour). Failures
//! a retry could fix (5xx, 408, 429, timeouts, refused connections) and
//! redirects (3xx, not followed) count; other 4xx answers, 413 included,
//! are the target working as designed and count as successes.
//! Defaults and semantics follow Envoy's `outlier_detection`
//! (envoyproxy.io/docs, "Outlier detection" and
//! `config.cluster.v3.OutlierDetection`).

use crate::config::BreakerConfig;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker state of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Ejected until the instant.
    Open(Instant),
    /// Ejection over; `probing` while the probe request is out.
    HalfOpen {
        probing: bool,
    },
}

impl State {
    /// 0 closed, 1 open, 2 half-open (the `cdrs_target_breaker_state` gauge).
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open(_) => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

/// What a lane may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send (breaker closed).
    Send,
    /// Send as the half-open probe; report the outcome with `probe = true`.
    Probe,
    /// Another lane is probing: wait this long and ask again.
    Wait(Duration),
    /// Open: do not send; route the records elsewhere.
    Open,
}

#[derive(Debug)]
struct Breaker {
    state: State,
    consecutive: u32,
    window_start: Instant,
    ok: u32,
    failed: u32,
    /// Ejections in a row (Envoy's multiplier).
    ejections: u32,
    closed_since: Instant,
}

impl Breaker {
    fn new(now: Instant) -> Self {
        Breaker {
            state: State::Closed,
            consecutive: 0,
            window_start: now,
            ok: 0,
            failed: 0,
            ejections: 0,
            closed_since: now,
        }
    }

    fn roll_window(&mut self, cfg: &BreakerConfig, now: Instant) {
        if now.duration_since(self.window_start) >= Duration::from_millis(cfg.interval_ms) {
            self.window_start = now;
            self.ok = 0;
            self.failed = 0;
        }
    }

    fn close(&mut self, now: Instant) {
        self.state = State::Closed;
        self.consecutive = 0;
        self.ok = 0;
        self.failed = 0;
        self.window_start = now;
        self.closed_since = now;
    }
}

/// Why a breaker opened, and for how long the target is ejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    pub duration: Duration,
    pub reason: String,
}

/// All targets' breakers.
#[derive(Debug, Default)]
pub struct Breakers {
    inner: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    /// May a request go to `target` now? Moves open → half-open when the
    /// ejection time is over.
    pub fn admit(&self, target: &str, now: Instant) -> Admit {
        let mut all = self.inner.lock().expect("breakers lock");
        let Some(b) = all.get_mut(target) else {
            return Admit::Send;
        };
        match b.state {
            State::Closed => Admit::Send,
            State::Open(until) if now < until => Admit::Open,
            State::Open(_) | State::HalfOpen { probing: false } => {
                b.state = State::HalfOpen { probing: true };
                Admit::Probe
            }
            State::HalfOpen { probing: true } => Admit::Wait(Duration::from_millis(50)),
        }
    }

    /// Current state of `target`'s breaker.
    pub fn state(&self, target: &str) -> State {
        let all = self.inner.lock().expect("breakers lock");
        all.get(target).map_or(State::Closed, |b| b.state)
    }

    /// A request to `target` succeeded. Returns true if this closed the
    /// breaker (the half-open probe went through).
    pub fn success(&self, cfg: &BreakerConfig, target: &str, now: Instant) -> bool {
        let mut all = self.inner.lock().expect("breakers lock");
        let b = all
            .entry(target.to_string())
            .or_insert_with(|| Breaker::new(now));
        if matches!(b.state, State::HalfOpen { .. }) {
            b.close(now);
            return true;
        }
        b.roll_window(cfg, now);
        b.consecutive = 0;
        b.ok += 1;
        false
    }

    /// A request to `target` failed in a way a retry could fix, or was
    /// answered with a redirect. Returns the
    /// ejection if this opened the breaker. `targets` are the ids of the
    /// targets that exist now: breakers of others (removed by a reload, or
    /// dynamic targets gone silent) are forgotten, so they neither count
    /// toward the ejection cap nor the panic threshold.
    pub fn failure(
        &self,
        cfg: &BreakerConfig,
        target: &str,
        targets: &HashSet<&str>,
        now: Instant,
    ) -> Option<Ejection> {
        let mut all = self.inner.lock().expect("breakers lock");
        all.retain(|id, _| targets.contains(id.as_str()));
        let ejected = all
            .values()
            .filter(|b| matches!(b.state, State::Open(u) if now < u))
            .count();
        let targets = targets.len();
        let b = all
            .entry(target.to_string())
            .or_insert_with(|| Breaker::new(now));
        let reason = match b.state {
            State::Open(_) => return None,
            State::HalfOpen { .. } => "half-open probe failed".to_string(),
            State::Closed => {
                b.roll_window(cfg, now);
                b.consecutive += 1;
                b.failed += 1;
                let total = b.ok + b.failed;
                if b.consecutive >= cfg.consecutive_failures {
                    format!("{} consecutive failures", b.consecutive)
                } else if total >= cfg.min_requests.max(1)
                    && b.failed * 100 >= cfg.failure_percent * total
                {
                    format!("{} of {} requests failed", b.failed, total)
                } else {
                    return None;
                }
            }
        };
        let half_open = matches!(b.state, State::HalfOpen { .. });
        if !half_open && !may_eject(cfg, ejected, targets) {
            return None;
        }
        let base = Duration::from_millis(cfg.base_ejection_ms);
        if !half_open {
            // One ejection forgiven per base interval spent closed.
            let closed_for = now.duration_since(b.closed_since);
            let forgiven = (closed_for.as_millis() / base.as_millis().max(1)) as u32;
            b.ejections = b.ejections.saturating_sub(forgiven);
        }
        b.ejections += 1;
        let duration = base
            .saturating_mul(b.ejections)
            .min(Duration::from_millis(cfg.max_ejection_ms));
        // Validation bounds ejection times to a day; `checked_add` keeps a
        // larger one from overflowing `Instant` (it then ends at the
        // largest time this clock can tell, about as good as never).
        let until = now.checked_add(duration).unwrap_or_else(|| far_future(now));
        b.state = State::Open(until);
        b.consecutive = 0;
        Some(Ejection { duration, reason })
    }
}

/// The latest instant after `now` that can be represented, halving the
/// step until it fits.
fn far_future(now: Instant) -> Instant {
    let mut step = Duration::from_secs(u64::MAX / 4);
    loop {
        if let Some(t) = now.checked_add(step) {
            return t;
        }
        step /= 2;
    }
}

/// Whether one more target may be ejected: at most `max_ejection_percent`
/// of the targets (but always at least one), and never below
/// `panic_threshold_percent` of the targets left.
fn may_eject(cfg: &BreakerConfig, ejected: usize, targets: usize) -> bool {
    if targets == 0 {
        return false;
    }
    let cap = (targets * cfg.max_ejection_percent as usize / 100).max(1);
    let left = targets - (ejected + 1).min(targets);
    ejected < cap && left * 100 >= cfg.panic_threshold_percent as usize * targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig::default()
    }

    /// Target ids `a`..`j`.
    const TEN: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];

    fn fleet<'a>(ids: &[&'a str]) -> HashSet<&'a str> {
        ids.iter().copied().collect()
    }

    #[test]
    fn five_consecutive_failures_eject_for_base_times_n() {
        let ten = fleet(&TEN);
        let (c, b, t0) = (cfg(), Breakers::default(), Instant::now());
        for i in 0..4 {
            assert_eq!(b.failure(&c, "a", &ten, t0), None, "failure {i}");
        }
        let e = b.failure(&c, "a", &ten, t0).expect("opens on the 5th");
        assert_eq!(e.duration, Duration::from_secs(30));
        assert_eq!(b.admit("a", t0), Admit::Open);
        // After the ejection: one probe at a time.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit("a", t1), Admit::Probe);
        assert!(matches!(b.admit("a", t1), Admit::Wait(_)));
        // Probe fails: open again for 2 × base.
        let e = b.failure(&c, "a", &ten, t1).expect("reopens");
        assert_eq!(e.duration, Duration::from_secs(60));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.admit("a", t2), Admit::Probe);
        b.success(&c, "a", t2);
        assert_eq!(b.state("a"), State::Closed);
        assert_eq!(b.admit("a", t2), Admit::Send);
        // Closed for 2 × base forgives both ejections: next one is base again.
        let t3 = t2 + Duration::from_secs(60);
        for _ in 0..4 {
            b.failure(&c, "a", &ten, t3);
        }
        assert_eq!(
            b.failure(&c, "a", &ten, t3).map(|e| e.duration),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn ejection_time_is_capped() {
        let ten = fleet(&TEN);
        let c = BreakerConfig {
            consecutive_failures: 1,
            base_ejection_ms: 100_000,
            ..cfg()
        };
        let (b, mut now) = (Breakers::default(), Instant::now());
        let mut last = Duration::ZERO;
        for _ in 0..5 {
            last = b.failure(&c, "a", &ten, now).expect("opens").duration;
            now += last;
            assert_eq!(b.admit("a", now), Admit::Probe);
        }
        assert_eq!(last, Duration::from_millis(c.max_ejection_ms));
    }

    #[test]
    fn failure_share_over_an_interval_opens() {
        let ten = fleet(&TEN);
        // Only the failure share can open it here.
        let c = BreakerConfig {
            consecutive_failures: 1000,
            ..cfg()
        };
        let (b, t0) = (Breakers::default(), Instant::now());
        // 6 of 7 requests fail (86% ≥ 85%).
        let mut opened = None;
        for i in 0..100 {
            if i % 7 == 0 {
                b.success(&c, "a", t0);
            } else if let Some(e) = b.failure(&c, "a", &ten, t0) {
                opened = Some((i, e));
                break;
            }
        }
        let (i, e) = opened.expect("opened by failure share");
        assert!(e.reason.contains("requests failed"), "{}", e.reason);
        assert!(i >= 50, "not before min_requests, opened at {i}");
        // A new interval starts from zero.
        let b = Breakers::default();
        for _ in 0..40 {
            assert!(b.failure(&c, "a", &ten, t0).is_none());
        }
        let t1 = t0 + Duration::from_millis(c.interval_ms);
        for _ in 0..40 {
            assert!(b.failure(&c, "a", &ten, t1).is_none());
        }
    }

    #[test]
    fn ejection_cap_and_panic_threshold() {
        let c = BreakerConfig {
            consecutive_failures: 1,
            ..cfg()
        };
        let (b, now) = (Breakers::default(), Instant::now());
        // 10% of 3 targets rounds to 0: one may still be ejected.
        let three = fleet(&["a", "b", "c"]);
        assert!(b.failure(&c, "a", &three, now).is_some());
        assert!(b.failure(&c, "b", &three, now).is_none(), "cap reached");
        assert_eq!(b.admit("b", now), Admit::Send);
        // A single target is never ejected: nothing would be left (panic).
        let solo = Breakers::default();
        assert!(solo.failure(&c, "x", &fleet(&["x"]), now).is_none());
        // 50% lets 5 of 10 go, the 6th would leave 40% < 50%.
        let c = BreakerConfig {
            max_ejection_percent: 100,
            ..c
        };
        let many = Breakers::default();
        let ten = fleet(&TEN);
        let opened = TEN
            .iter()
            .filter(|id| many.failure(&c, id, &ten, now).is_some())
            .count();
        assert_eq!(opened, 5);
    }

    /// A target replaced by a reload (`a` → `z`, the same failing server)
    /// must not hold the one ejection slot of three targets for ever: its
    /// breaker is forgotten, and `z` is ejected after the usual failures.
    #[test]
    fn breakers_of_removed_targets_are_forgotten() {
        let c = cfg();
        let (b, now) = (Breakers::default(), Instant::now());
        let before = fleet(&["a", "b", "c"]);
        for _ in 0..4 {
            assert!(b.failure(&c, "a", &before, now).is_none());
        }
        assert!(b.failure(&c, "a", &before, now).is_some(), "a ejected");
        let after = fleet(&["z", "b", "c"]);
        for i in 0..4 {
            assert!(b.failure(&c, "z", &after, now).is_none(), "failure {i}");
        }
        let e = b.failure(&c, "z", &after, now);
        assert!(
            e.is_some(),
            "z ejected after 5 failures, a no longer counts"
        );
        assert_eq!(b.state("a"), State::Closed, "a's breaker was forgotten");
    }

    /// Ejection times too large for the clock saturate instead of
    /// overflowing (validation refuses them, this is the second line).
    #[test]
    fn huge_ejection_times_do_not_overflow() {
        let c = BreakerConfig {
            consecutive_failures: 1,
            base_ejection_ms: u64::MAX,
            max_ejection_ms: u64::MAX,
            ..cfg()
        };
        let (b, now) = (Breakers::default(), Instant::now());
        let e = b.failure(&c, "a", &fleet(&TEN), now).expect("opens");
        assert_eq!(e.duration, Duration::from_millis(u64::MAX));
        assert_eq!(
            b.admit("a", now + Duration::from_secs(86_400 * 365)),
            Admit::Open
        );
    }
}
