//! The analysis: per-side request counters, and the verdict on a step's window.
//!
//! Finished requests are counted per side (requests, errors, an 80-bucket log latency
//! histogram, all relaxed atomics). A window is the difference between two snapshots. The
//! verdict compares the canary's error rate and p99 with absolute limits and with stable's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a canary must do to pass, and how often it is checked. In `graft.toml`: `[rollout]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AnalysisConfig {
    /// Canary requests a window needs before it says anything: fewer is inconclusive.
    pub min_requests: u64,
    /// The canary's error rate may never exceed this (0.05 is 5%).
    pub max_error_rate: f64,
    /// Nor stable's error rate by more than this, when stable had `min_requests` too.
    pub max_error_rate_increase: f64,
    /// The canary's p99 latency may not exceed stable's times this...
    pub max_p99_ratio: f64,
    /// ...unless it is within this many milliseconds of it (fast services are noisy).
    pub p99_slack_ms: u64,
    /// How often the analysis runs, in milliseconds.
    pub interval_ms: u64,
}

/// A rollout's own thresholds, each replacing the configured one it names.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Thresholds {
    /// [`AnalysisConfig::min_requests`].
    pub min_requests: Option<u64>,
    /// [`AnalysisConfig::max_error_rate`].
    pub max_error_rate: Option<f64>,
    /// [`AnalysisConfig::max_p99_ratio`].
    pub max_p99_ratio: Option<f64>,
    /// [`AnalysisConfig::p99_slack_ms`].
    pub p99_slack_ms: Option<u64>,
}

impl Thresholds {
    /// `config` with these thresholds in place of its own.
    pub fn applied_to(&self, config: &AnalysisConfig) -> AnalysisConfig {
        AnalysisConfig {
            min_requests: self.min_requests.unwrap_or(config.min_requests),
            max_error_rate: self.max_error_rate.unwrap_or(config.max_error_rate),
            max_p99_ratio: self.max_p99_ratio.unwrap_or(config.max_p99_ratio),
            p99_slack_ms: self.p99_slack_ms.unwrap_or(config.p99_slack_ms),
            ..config.clone()
        }
    }

    /// Refuses a threshold that cannot be met or means nothing.
    ///
    /// # Errors
    ///
    /// Which one, and why.
    pub fn check(&self) -> Result<(), String> {
        if let Some(rate) = self.max_error_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(format!("max_error_rate {rate} is not between 0 and 1"));
        }
        if let Some(ratio) = self.max_p99_ratio.filter(|r| !r.is_finite() || *r < 1.0) {
            return Err(format!("max_p99_ratio {ratio} is less than 1"));
        }
        if self.min_requests == Some(0) {
            return Err("min_requests 0 would judge a canary on no requests".into());
        }
        Ok(())
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            min_requests: 100,
            max_error_rate: 0.05,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            p99_slack_ms: 5,
            interval_ms: 1000,
        }
    }
}

/// Latency buckets: bucket `i` holds latencies up to 10 µs × 2^((i + 1) / 4), about 19% apart;
/// the last one holds everything above 10 s.
const LATENCY_BUCKETS: usize = 80;

fn latency_bucket(elapsed: Duration) -> usize {
    let micros = elapsed.as_secs_f64() * 1e6;
    if micros <= 10.0 {
        return 0;
    }
    let i = ((micros / 10.0).log2() * 4.0).ceil() as usize;
    i.saturating_sub(1).min(LATENCY_BUCKETS - 1)
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_secs_f64(10e-6 * 2f64.powf((i + 1) as f64 / 4.0))
}

/// Requests, errors and latency of one side, counted from the start of the rollout.
#[derive(Debug)]
pub(super) struct SideStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Vec<AtomicU64>,
}

impl SideStats {
    pub(super) fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(super) fn record(&self, failed: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[latency_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A snapshot of one side's counters.
#[derive(Debug, Clone, Default)]
pub(super) struct Counts {
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

impl Counts {
    /// What happened between `earlier` and this snapshot.
    pub(super) fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now - then)
                .collect(),
        }
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile, as the upper bound of its bucket.
    fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper(i));
            }
        }
        None
    }

    pub(super) fn window(&self) -> WindowStats {
        WindowStats {
            requests: self.requests,
            errors: self.errors,
            error_rate: self.error_rate(),
            p99_ms: self.p99().map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

/// One side's figures over the current window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WindowStats {
    /// Requests.
    pub requests: u64,
    /// Failed requests (plugin errors, panics, 5xx).
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// The 99th percentile latency in milliseconds (the upper bound of its histogram bucket).
    pub p99_ms: Option<f64>,
}

/// What the analysis says of a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    /// Not enough canary requests yet to say anything.
    Inconclusive(String),
    /// Within every threshold.
    Healthy,
    /// A threshold was crossed.
    Breach(String),
}

impl Verdict {
    /// `inconclusive`, `healthy` or `breach`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Inconclusive(_) => "inconclusive",
            Self::Healthy => "healthy",
            Self::Breach(_) => "breach",
        }
    }

    /// Why, unless it is healthy.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Inconclusive(reason) | Self::Breach(reason) => Some(reason),
            Self::Healthy => None,
        }
    }
}

/// The verdict on a step's window.
pub(super) fn analyze(stable: &Counts, canary: &Counts, config: &AnalysisConfig) -> Verdict {
    if canary.requests < config.min_requests {
        return Verdict::Inconclusive(format!(
            "{} canary requests of the {} needed",
            canary.requests, config.min_requests
        ));
    }
    let rate = canary.error_rate();
    if rate > config.max_error_rate {
        return Verdict::Breach(format!(
            "canary error rate {:.2}% above the {:.2}% allowed",
            rate * 100.0,
            config.max_error_rate * 100.0
        ));
    }
    if stable.requests >= config.min_requests {
        let stable_rate = stable.error_rate();
        if rate > stable_rate + config.max_error_rate_increase {
            return Verdict::Breach(format!(
                "canary error rate {:.2}% against stable's {:.2}%",
                rate * 100.0,
                stable_rate * 100.0
            ));
        }
        if let (Some(c), Some(s)) = (canary.p99(), stable.p99()) {
            let limit = s
                .mul_f64(config.max_p99_ratio)
                .max(s + Duration::from_millis(config.p99_slack_ms));
            if c > limit {
                return Verdict::Breach(format!(
                    "canary p99 {:.2} ms against stable's {:.2} ms (limit {:.2} ms)",
                    c.as_secs_f64() * 1e3,
                    s.as_secs_f64() * 1e3,
                    limit.as_secs_f64() * 1e3
                ));
            }
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_bound_their_latencies() {
        for micros in [1, 10, 11, 100, 999, 5_000, 123_456, 9_000_000] {
            let d = Duration::from_micros(micros);
            let i = latency_bucket(d);
            assert!(d <= bucket_upper(i), "{d:?} in bucket {i}");
            if i > 0 {
                assert!(d > bucket_upper(i - 1), "{d:?} belongs below bucket {i}");
            }
        }
    }

    fn counts(requests: u64, errors: u64, latency: Duration) -> Counts {
        let mut buckets = vec![0; LATENCY_BUCKETS];
        buckets[latency_bucket(latency)] = requests;
        Counts {
            requests,
            errors,
            latency: buckets,
        }
    }

    #[test]
    fn the_analysis_needs_enough_requests_and_catches_errors_and_latency() {
        let config = AnalysisConfig::default();
        let fast = Duration::from_millis(2);
        let stable = counts(1000, 0, fast);
        assert!(matches!(
            analyze(&stable, &counts(99, 50, fast), &config),
            Verdict::Inconclusive(_)
        ));
        assert_eq!(
            analyze(&stable, &counts(100, 0, fast), &config),
            Verdict::Healthy
        );
        assert!(matches!(
            analyze(&stable, &counts(100, 20, fast), &config),
            Verdict::Breach(r) if r.contains("error rate")
        ));
        // 2 ms against 40 ms: past both the ratio and the slack.
        assert!(matches!(
            analyze(&stable, &counts(100, 0, Duration::from_millis(40)), &config),
            Verdict::Breach(r) if r.contains("p99")
        ));
        // Within the slack: not a breach.
        assert_eq!(
            analyze(&stable, &counts(100, 0, Duration::from_millis(5)), &config),
            Verdict::Healthy
        );
    }
}
