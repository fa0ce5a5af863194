//! Phi accrual failure detector over heartbeat inter-arrival times.
//!
//! Hayashibara, Défago, Yared, Katayama, "The φ Accrual Failure Detector",
//! SRDS 2004. Instead of a yes/no timeout it yields a suspicion level
//! φ = -log10(P(a heartbeat arrives later than now)), assuming normally
//! distributed inter-arrival times. The normal CDF uses the logistic
//! approximation of Akka's `PhiAccrualFailureDetector`; defaults follow Akka
//! and Cassandra: threshold 8, minimum standard deviation 100 ms, at most
//! 1000 samples. As in Akka, an acceptable heartbeat pause is added to the
//! mean before φ is computed.
//!
//! Guarantees against floods: an arrival less than [`MIN_INTERVAL_MS`] after
//! the previous one is not a sample (it only moves the base time), so a burst
//! of reports, or one report arriving on two feeds, teaches the detector
//! nothing; a gap longer than the caller's maximum is an outage, not a
//! sample. The history is bounded ([`MAX_SAMPLES`]).

use std::collections::VecDeque;

/// Akka's and Cassandra's default suspicion threshold.
pub const DEFAULT_THRESHOLD: f64 = crate::config::DEFAULT_PHI_THRESHOLD;
/// Floor of the standard deviation, ms (Akka `min-std-deviation`).
pub const MIN_STD_DEVIATION_MS: f64 = 100.0;
/// Samples kept (Akka `max-sample-size`).
pub const MAX_SAMPLES: usize = 1000;
/// Samples needed before φ is computed at all.
pub const MIN_SAMPLES: usize = 3;
/// Shortest inter-arrival time that counts as a sample, ms. Shorter ones are
/// a burst, a retry or the same report on both feeds, not the server's
/// heartbeat rhythm: a burst of 20,000 reports would otherwise teach the
/// detector a 3 ms interval and mark every target down after it. Well below
/// the shortest report interval in use (50 ms in tests, 200 ms in `cdrs
/// demo`), so it does not affect detection for well-behaved servers. Akka has no
/// such floor: its heartbeats come from its own scheduler, not from the
/// network at large.
pub const MIN_INTERVAL_MS: u64 = 20;

/// Heartbeat history of one target.
#[derive(Debug, Clone, Default)]
pub struct PhiDetector {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last_ms: Option<u64>,
}

impl PhiDetector {
    /// Records a heartbeat at `now_ms` (any monotonic millisecond clock).
    /// An arrival less than [`MIN_INTERVAL_MS`] after the previous one only
    /// moves the base time. Gaps longer than `max_interval_ms` are outages,
    /// not jitter: they reset the base time without entering the statistics.
    pub fn heartbeat(&mut self, now_ms: u64, max_interval_ms: u64) {
        if let Some(last) = self.last_ms {
            let dt = now_ms.saturating_sub(last);
            if (MIN_INTERVAL_MS..=max_interval_ms).contains(&dt) {
                let dt = dt as f64;
                self.intervals.push_back(dt);
                self.sum += dt;
                self.sum_sq += dt * dt;
                if self.intervals.len() > MAX_SAMPLES {
                    let old = self.intervals.pop_front().expect("non-empty");
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
        }
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
    }

    /// φ at `now_ms`; `None` until [`MIN_SAMPLES`] intervals were seen.
    /// `acceptable_pause_ms` is added to the mean interval (Akka
    /// `acceptable-heartbeat-pause`): silence that long beyond the usual
    /// rhythm raises no suspicion yet.
    pub fn phi(&self, now_ms: u64, acceptable_pause_ms: u64) -> Option<f64> {
        let last = self.last_ms?;
        let n = self.intervals.len();
        if n < MIN_SAMPLES {
            return None;
        }
        let mean = self.sum / n as f64;
        let variance = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        let std = variance.sqrt().max(MIN_STD_DEVIATION_MS);
        let mean = mean + acceptable_pause_ms as f64;
        let t = now_ms.saturating_sub(last) as f64;
        let y = (t - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let phi = if t > mean {
            -(e / (1.0 + e)).log10()
        } else {
            -(1.0 - 1.0 / (1.0 + e)).log10()
        };
        Some(if phi.is_finite() { phi } else { f64::MAX })
    }

    /// Mean of the learned inter-arrival times, ms; `None` without samples.
    pub fn mean_interval_ms(&self) -> Option<f64> {
        (!self.intervals.is_empty()).then(|| self.sum / self.intervals.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence_and_falls_with_a_heartbeat() {
        let mut d = PhiDetector::default();
        for i in 0..20 {
            d.heartbeat(i * 200, 10_000);
        }
        let last = 19 * 200;
        assert!(
            d.phi(last + 200, 0).unwrap() < 1.0,
            "on time: low suspicion"
        );
        let late = d.phi(last + 1000, 0).unwrap();
        assert!(
            late > DEFAULT_THRESHOLD,
            "800 ms late with σ≥100 ms: suspected ({late})"
        );
        assert!(
            d.phi(last + 600, 0).unwrap() < d.phi(last + 900, 0).unwrap(),
            "monotonic in silence"
        );
        d.heartbeat(last + 1000, 10_000);
        assert!(
            d.phi(last + 1100, 0).unwrap() < 1.0,
            "fresh heartbeat clears suspicion"
        );
    }

    /// Hand-computed with the same formula: regular 1 s heartbeats give
    /// mean 1000 ms, σ floored at 100 ms; y = (t - 1000) / 100,
    /// e = exp(-y(1.5976 + 0.070566 y²)), φ = -log10(e / (1 + e)).
    #[test]
    fn phi_matches_hand_computed_values() {
        let mut d = PhiDetector::default();
        for i in 0..10 {
            d.heartbeat(i * 1000, 60_000);
        }
        let last = 9000;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(
            close(d.phi(last + 1000, 0).unwrap(), std::f64::consts::LOG10_2),
            "t = mean: -log10(1/2)"
        );
        assert!(close(d.phi(last + 1200, 0).unwrap(), 1.64283));
        assert!(close(d.phi(last + 1500, 0).unwrap(), 7.29995));
        // Detection time of a dead server at 1 s heartbeats, threshold 8.
        let detect = (1000..5000)
            .find(|t| d.phi(last + t, 0).unwrap() > DEFAULT_THRESHOLD)
            .unwrap();
        assert_eq!(detect, 1523, "suspected 1.523 s after the last heartbeat");
    }

    #[test]
    fn needs_samples_and_ignores_outages() {
        let mut d = PhiDetector::default();
        d.heartbeat(0, 1000);
        d.heartbeat(100, 1000);
        assert_eq!(d.phi(200, 0), None);
        d.heartbeat(200, 1000);
        d.heartbeat(300, 1000);
        d.heartbeat(60_300, 1000); // an outage: not a sample
        assert_eq!(d.intervals.len(), 3);
        assert!(d.phi(60_400, 0).unwrap() < 1.0);
    }

    /// A burst of 20,000 arrivals within ~60 ms (a report flood) between
    /// regular 200 ms heartbeats: the detector keeps the real rhythm.
    /// Without [`MIN_INTERVAL_MS`] the burst would fill the history with 0
    /// and 1 ms samples (mean < 1 ms).
    #[test]
    fn a_burst_teaches_nothing() {
        let mut clean = PhiDetector::default();
        let mut flooded = PhiDetector::default();
        for i in 0..20 {
            clean.heartbeat(i * 200, 10_000);
            flooded.heartbeat(i * 200, 10_000);
        }
        for i in 0..20_000u64 {
            flooded.heartbeat(3850 + i * 3 / 1000, 10_000);
        }
        for i in 20..40 {
            clean.heartbeat(i * 200, 10_000);
            flooded.heartbeat(i * 200, 10_000);
        }
        let mean = flooded.mean_interval_ms().unwrap();
        assert!(flooded.intervals.len() <= 41, "{}", flooded.intervals.len());
        assert!((190.0..=200.0).contains(&mean), "learned mean {mean} ms");
        let last = 39 * 200;
        for t in [200, 400, 600] {
            let (c, f) = (
                clean.phi(last + t, 0).unwrap(),
                flooded.phi(last + t, 0).unwrap(),
            );
            assert!((c - f).abs() < 0.5, "at +{t} ms: clean {c}, flooded {f}");
            assert!(f < DEFAULT_THRESHOLD, "at +{t} ms: {f}");
        }
    }

    /// The pause shifts detection by exactly its length (Akka adds it to
    /// the mean); CDRS's default at its usual 200 ms reports detects a
    /// silent server in about 0.8 s.
    #[test]
    fn the_acceptable_pause_delays_detection_by_its_length() {
        let detect = |every: u64, pause: u64| {
            let mut d = PhiDetector::default();
            for i in 0..20 {
                d.heartbeat(i * every, 60_000);
            }
            let last = 19 * every;
            (0..10_000)
                .find(|t| d.phi(last + t, pause).unwrap() > DEFAULT_THRESHOLD)
                .unwrap()
        };
        assert_eq!(detect(1000, 0), 1523);
        assert_eq!(detect(1000, 500), 2023);
        let pause = crate::config::DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE_MS;
        assert_eq!(detect(200, pause), 723 + pause);
        assert_eq!(detect(50, pause), 573 + pause);
    }
}
