//! Phi accrual failure detector over heartbeat inter-arrival times.
//!
//! Hayashibara, Défago, Yared, Katayama, "The φ Accrual Failure Detector",
//! SRDS 2004. Instead of a yes/no timeout it yields a suspicion level
//! φ = -log10(P(a heartbeat arrives later than now)), assuming normally
//! distributed inter-arrival times. The normal CDF uses the logistic
//! approximation of Akka's `PhiAccrualFailureDetector`; defaults follow Akka
//! and Cassandra: threshold 8, minimum standard deviation 100 ms, at most
//! 1000 samples.

use std::collections::VecDeque;

/// Akka's and Cassandra's default suspicion threshold.
pub const DEFAULT_THRESHOLD: f64 = 8.0;
/// Floor of the standard deviation, ms (Akka `min-std-deviation`).
pub const MIN_STD_DEVIATION_MS: f64 = 100.0;
/// Samples kept (Akka `max-sample-size`).
pub const MAX_SAMPLES: usize = 1000;
/// Samples needed before φ is computed at all.
pub const MIN_SAMPLES: usize = 3;

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
    /// Gaps longer than `max_interval_ms` are outages, not jitter: they reset
    /// the base time without entering the statistics.
    pub fn heartbeat(&mut self, now_ms: u64, max_interval_ms: u64) {
        if let Some(last) = self.last_ms {
            let dt = now_ms.saturating_sub(last);
            if dt <= max_interval_ms {
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
        self.last_ms = Some(now_ms);
    }

    /// φ at `now_ms`; `None` until [`MIN_SAMPLES`] intervals were seen.
    pub fn phi(&self, now_ms: u64) -> Option<f64> {
        let last = self.last_ms?;
        let n = self.intervals.len();
        if n < MIN_SAMPLES {
            return None;
        }
        let mean = self.sum / n as f64;
        let variance = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        let std = variance.sqrt().max(MIN_STD_DEVIATION_MS);
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
        assert!(d.phi(last + 200).unwrap() < 1.0, "on time: low suspicion");
        let late = d.phi(last + 1000).unwrap();
        assert!(
            late > DEFAULT_THRESHOLD,
            "800 ms late with σ≥100 ms: suspected ({late})"
        );
        assert!(
            d.phi(last + 600).unwrap() < d.phi(last + 900).unwrap(),
            "monotonic in silence"
        );
        d.heartbeat(last + 1000, 10_000);
        assert!(
            d.phi(last + 1100).unwrap() < 1.0,
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
            close(d.phi(last + 1000).unwrap(), std::f64::consts::LOG10_2),
            "t = mean: -log10(1/2)"
        );
        assert!(close(d.phi(last + 1200).unwrap(), 1.64283));
        assert!(close(d.phi(last + 1500).unwrap(), 7.29995));
        // Detection time of a dead server at 1 s heartbeats, threshold 8.
        let detect = (1000..5000)
            .find(|t| d.phi(last + t).unwrap() > DEFAULT_THRESHOLD)
            .unwrap();
        assert_eq!(detect, 1523, "suspected 1.523 s after the last heartbeat");
    }

    #[test]
    fn needs_samples_and_ignores_outages() {
        let mut d = PhiDetector::default();
        d.heartbeat(0, 1000);
        d.heartbeat(100, 1000);
        assert_eq!(d.phi(200), None);
        d.heartbeat(200, 1000);
        d.heartbeat(300, 1000);
        d.heartbeat(60_300, 1000); // an outage: not a sample
        assert_eq!(d.intervals.len(), 3);
        assert!(d.phi(60_400).unwrap() < 1.0);
    }
}
