//! Staged rollouts: a canary generation serves a slice of the traffic beside the current
//! (stable) one, is compared with it step by step, and is promoted or aborted automatically.
//!
//! - **Routing** ([`Rollouts::route`]): each request is routed to the canary or to stable when
//!   it starts, and pins that generation for its whole life. With a sticky key (a header or a
//!   cookie, such as a user id) the key is hashed, with the rollout's salt, into one of 10,000
//!   buckets, and the request goes to the canary when its bucket is below the weight; raising
//!   the weight therefore never moves a key out of the canary. Without a key the bucket is
//!   random. An override ([`Route`]) forces either side, for testing.
//! - **The plan** ([`RolloutPlan`]): steps of weight and bake time, such as
//!   `5:30s,25:30s,50:60s,100`. Passing the last step promotes the canary.
//! - **Analysis** ([`AnalysisConfig`]), on every tick, over the current step's window: the
//!   canary's error rate (plugin errors, panics, 5xx) and p99 latency against stable's. Below
//!   `min_requests` canary requests the verdict is inconclusive, and an inconclusive step waits
//!   however long its bake time has run: too little traffic never passes. A breach aborts at
//!   once: the weight drops to 0, the canary is dropped and drains, and the event records the
//!   numbers. A step passes when its bake time is over and its window is healthy.
//! - Every state change is one structured `tracing` event and is kept in [`RolloutStatus`].

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::{DeployError, DeployReport, Host, OwnedPin};

/// Buckets of the weight: a weight of 1% is 100 buckets.
const BUCKETS: u32 = 10_000;

/// How many events a status keeps.
const EVENTS_KEPT: usize = 50;

/// Which side of a rollout a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// The current generation.
    Stable,
    /// The canary.
    Canary,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stable" => Ok(Self::Stable),
            "canary" => Ok(Self::Canary),
            other => Err(format!("unknown route {other:?}: stable or canary")),
        }
    }
}

/// One step of a rollout plan: the canary's share of traffic and how long it must stay healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    /// Percent of requests routed to the canary (1 to 100).
    pub weight: u32,
    /// How long the step lasts at least.
    #[serde(rename = "bake_ms", serialize_with = "as_millis")]
    pub bake: Duration,
}

/// The steps of a rollout, in order; passing the last one promotes the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RolloutPlan {
    steps: Vec<PlanStep>,
}

impl RolloutPlan {
    /// The steps.
    pub fn steps(&self) -> &[PlanStep] {
        &self.steps
    }

    /// This plan started at `weight` percent: that step first, then the plan's steps of
    /// greater weight.
    pub fn starting_at(&self, weight: u32, bake: Duration) -> Result<Self, String> {
        if !(1..=100).contains(&weight) {
            return Err(format!("a canary weight is 1 to 100 percent, not {weight}"));
        }
        let first = self
            .steps
            .iter()
            .find(|s| s.weight == weight)
            .map_or(bake, |s| s.bake);
        let mut steps = vec![PlanStep {
            weight,
            bake: first,
        }];
        steps.extend(self.steps.iter().filter(|s| s.weight > weight));
        Ok(Self { steps })
    }
}

impl Default for RolloutPlan {
    fn default() -> Self {
        "5:30s,25:30s,50:60s,100"
            .parse()
            .expect("the default plan parses")
    }
}

impl std::str::FromStr for RolloutPlan {
    type Err = String;

    /// `WEIGHT[:BAKE],...`: weights in percent, rising; bake times such as `30s`, `500ms`, `2m`,
    /// `1h` (none: 0).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut steps: Vec<PlanStep> = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (weight, bake) = part.split_once(':').unwrap_or((part, "0s"));
            let weight: u32 = weight
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("step {part:?}: the weight is a percentage"))?;
            if !(1..=100).contains(&weight) {
                return Err(format!("step {part:?}: the weight is 1 to 100"));
            }
            if steps.last().is_some_and(|s| s.weight >= weight) {
                return Err(format!("step {part:?}: weights must rise"));
            }
            let bake = parse_duration(bake.trim()).map_err(|e| format!("step {part:?}: {e}"))?;
            steps.push(PlanStep { weight, bake });
        }
        Ok(Self { steps })
    }
}

impl<'de> Deserialize<'de> for RolloutPlan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

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

/// `[rollout]` in `graft.toml`: the default plan, the sticky key and the analysis.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutConfig {
    /// The plan a rollout follows unless it is given one.
    #[serde(default)]
    pub plan: RolloutPlan,
    /// A request header whose value keeps a client on one side (for example `x-user-id`).
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// Or a cookie.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// The analysis.
    #[serde(default, flatten)]
    pub analysis: AnalysisConfig,
}

/// Requests, errors and latency of one side, counted from the start of the rollout.
#[derive(Debug)]
struct SideStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Vec<AtomicU64>,
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

impl SideStats {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, failed: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[latency_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
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
struct Counts {
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

impl Counts {
    /// What happened between `earlier` and this snapshot.
    fn since(&self, earlier: &Counts) -> Counts {
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

    fn window(&self) -> WindowStats {
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

/// The two sides' counters for the rollout under way, found by generation id.
#[derive(Debug)]
struct Sides {
    stable_id: u64,
    canary_id: u64,
    stable: SideStats,
    canary: SideStats,
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

fn analyze(stable: &Counts, canary: &Counts, config: &AnalysisConfig) -> Verdict {
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

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Stepping through its plan.
    Running,
    /// Held at its step by an operator; the analysis still aborts on a breach.
    Paused,
    /// The canary became the current generation.
    Promoted,
    /// The canary was dropped.
    Aborted,
}

/// A state change, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `started`, `step`, `waiting`, `paused`, `resumed`, `promoted`, `aborted`.
    pub event: String,
    /// The canary's weight after the event, in percent.
    pub weight: u32,
    /// Why, in words.
    pub message: String,
    /// Stable's window at the time.
    pub stable: WindowStats,
    /// The canary's window at the time.
    pub canary: WindowStats,
}

/// A rollout, as `graft rollout status` and `GET /rollout` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutStatus {
    /// Where it is.
    pub state: RolloutState,
    /// The canary's release label.
    pub release: Option<String>,
    /// The stable generation.
    pub stable: u64,
    /// The canary generation.
    pub canary: u64,
    /// The current step, from 1.
    pub step: usize,
    /// The plan's steps as `(weight, bake_ms)`.
    pub plan: Vec<(u32, u64)>,
    /// The canary's weight now, in percent.
    pub weight: u32,
    /// How long the current step has run, in milliseconds.
    pub step_elapsed_ms: u64,
    /// Stable over the current step.
    pub stable_window: WindowStats,
    /// The canary over the current step.
    pub canary_window: WindowStats,
    /// The last analysis.
    pub last_verdict: Option<Verdict>,
    /// State changes, oldest first (the last 50).
    pub events: Vec<RolloutEvent>,
}

/// Why a rollout could not start or be acted on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The canary release was refused.
    #[error("deploying the canary")]
    Deploy(#[from] DeployError),
    /// The plan or weight is invalid.
    #[error("invalid rollout plan: {0}")]
    Plan(String),
    /// There is no rollout under way.
    #[error("no rollout is under way")]
    NoRollout,
}

/// The rollout under way.
#[derive(Debug)]
struct Active {
    status: RolloutStatus,
    plan: RolloutPlan,
    step_started: Instant,
    /// Each side's counters when the step started.
    baseline: (Counts, Counts),
    waiting_logged: bool,
}

/// A server's staged rollouts: the router, the analysis and the state machine.
#[derive(Debug)]
pub struct Rollouts {
    host: Arc<Host>,
    config: RolloutConfig,
    /// The canary's weight in buckets (0 to 10,000).
    weight: AtomicU32,
    /// Mixed into sticky keys, so that each rollout picks its own slice of keys.
    salt: AtomicU64,
    sides: ArcSwapOption<Sides>,
    /// The rollout under way, or the last one that ended.
    state: Mutex<Option<Active>>,
}

impl Rollouts {
    /// The rollouts of `host`, with a thread that runs the analysis every
    /// `config.analysis.interval_ms` while the returned handle lives.
    pub fn new(host: Arc<Host>, config: RolloutConfig) -> Arc<Self> {
        let interval = Duration::from_millis(config.analysis.interval_ms.max(10));
        let rollouts = Arc::new(Self {
            host,
            config,
            weight: AtomicU32::new(0),
            salt: AtomicU64::new(0),
            sides: ArcSwapOption::empty(),
            state: Mutex::new(None),
        });
        let weak: Weak<Self> = Arc::downgrade(&rollouts);
        let spawned = std::thread::Builder::new()
            .name("graft-rollout".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                match weak.upgrade() {
                    Some(rollouts) => rollouts.tick(),
                    None => return,
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the rollout analysis thread");
        }
        rollouts
    }

    /// The configuration.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// Deploys `dir` as a canary and starts walking `plan` (the configured plan if `None`),
    /// starting at `weight` percent if given.
    ///
    /// # Errors
    ///
    /// [`RolloutError::Plan`] for an invalid weight, [`RolloutError::Deploy`] if the canary is
    /// refused (among others because a rollout is under way).
    pub fn start(
        &self,
        dir: &Path,
        weight: Option<u32>,
        plan: Option<RolloutPlan>,
    ) -> Result<(DeployReport, RolloutStatus), RolloutError> {
        let plan = plan.unwrap_or_else(|| self.config.plan.clone());
        let plan = match weight {
            Some(w) => plan
                .starting_at(w, Duration::ZERO)
                .map_err(RolloutError::Plan)?,
            None => plan,
        };
        if plan.steps.is_empty() {
            return Err(RolloutError::Plan("no steps".into()));
        }
        let mut state = self.lock();
        let report = self.host.deploy_canary(dir)?;
        let stable = self.host.pin().id();
        let sides = Arc::new(Sides {
            stable_id: stable,
            canary_id: report.generation,
            stable: SideStats::new(),
            canary: SideStats::new(),
        });
        self.sides.store(Some(Arc::clone(&sides)));
        self.salt.store(report.generation, Ordering::Relaxed);
        let first = plan.steps[0];
        self.set_weight(first.weight);
        let mut active = Active {
            status: RolloutStatus {
                state: RolloutState::Running,
                release: report.release.clone(),
                stable,
                canary: report.generation,
                step: 1,
                plan: plan
                    .steps
                    .iter()
                    .map(|s| (s.weight, s.bake.as_millis() as u64))
                    .collect(),
                weight: first.weight,
                step_elapsed_ms: 0,
                stable_window: WindowStats::default(),
                canary_window: WindowStats::default(),
                last_verdict: None,
                events: Vec::new(),
            },
            plan,
            step_started: Instant::now(),
            baseline: (Counts::default(), Counts::default()),
            waiting_logged: false,
        };
        let message = format!(
            "canary generation {} beside stable generation {stable}",
            report.generation
        );
        event(&mut active, "started", message);
        let status = active.status.clone();
        *state = Some(active);
        Ok((report, status))
    }

    /// Whether a rollout is under way (a canary takes a share of requests).
    pub fn under_way(&self) -> bool {
        self.weight.load(Ordering::Relaxed) != 0
    }

    /// Routes a request: pins the canary or the current generation. `key` is the sticky key,
    /// `force` an override. Without a rollout under way, every request goes to stable.
    pub fn route(&self, key: Option<&[u8]>, force: Option<Route>) -> (OwnedPin, Route) {
        let weight = self.weight.load(Ordering::Relaxed);
        let to_canary = match force {
            Some(route) => route == Route::Canary,
            None if weight == 0 => false,
            None => self.bucket(key) < weight,
        };
        if to_canary {
            if let Some(pin) = self.host.pin_canary() {
                return (pin, Route::Canary);
            }
        }
        (self.host.pin_owned(), Route::Stable)
    }

    /// The bucket of a key (or a random one), 0 to 9,999.
    fn bucket(&self, key: Option<&[u8]>) -> u32 {
        let hash = match key {
            Some(key) => sticky_hash(self.salt.load(Ordering::Relaxed), key),
            None => random(),
        };
        (hash % u64::from(BUCKETS)) as u32
    }

    /// Counts a finished request for the analysis.
    pub fn record(&self, generation: u64, failed: bool, elapsed: Duration) {
        let sides = self.sides.load();
        if let Some(sides) = sides.as_deref() {
            if generation == sides.canary_id {
                sides.canary.record(failed, elapsed);
            } else if generation == sides.stable_id {
                sides.stable.record(failed, elapsed);
            }
        }
    }

    /// The rollout under way, or the last one.
    pub fn status(&self) -> Option<RolloutStatus> {
        let mut state = self.lock();
        let active = state.as_mut()?;
        if matches!(
            active.status.state,
            RolloutState::Running | RolloutState::Paused
        ) {
            self.refresh(active);
        }
        Some(active.status.clone())
    }

    /// Holds the rollout at its step (a breach still aborts it).
    ///
    /// # Errors
    ///
    /// [`RolloutError::NoRollout`].
    pub fn pause(&self) -> Result<RolloutStatus, RolloutError> {
        self.operate(|rollouts, active| {
            active.status.state = RolloutState::Paused;
            rollouts.refresh(active);
            event(active, "paused", "paused by an operator".into());
        })
    }

    /// Lets a paused rollout go on; its step's bake time starts over.
    ///
    /// # Errors
    ///
    /// [`RolloutError::NoRollout`].
    pub fn resume(&self) -> Result<RolloutStatus, RolloutError> {
        self.operate(|rollouts, active| {
            active.status.state = RolloutState::Running;
            rollouts.restart_step(active);
            event(active, "resumed", "resumed by an operator".into());
        })
    }

    /// Promotes the canary now, whatever step the rollout is at.
    ///
    /// # Errors
    ///
    /// [`RolloutError::NoRollout`].
    pub fn promote(&self) -> Result<RolloutStatus, RolloutError> {
        self.operate(|rollouts, active| {
            rollouts.refresh(active);
            rollouts.finish_promote(active, "promoted by an operator".into());
        })
    }

    /// Aborts the rollout: the canary's weight drops to 0 and it is dropped.
    ///
    /// # Errors
    ///
    /// [`RolloutError::NoRollout`].
    pub fn abort(&self) -> Result<RolloutStatus, RolloutError> {
        self.operate(|rollouts, active| {
            rollouts.refresh(active);
            rollouts.finish_abort(active, "aborted by an operator".into());
        })
    }

    fn operate(&self, act: impl FnOnce(&Self, &mut Active)) -> Result<RolloutStatus, RolloutError> {
        let mut state = self.lock();
        match state.as_mut() {
            Some(active)
                if matches!(
                    active.status.state,
                    RolloutState::Running | RolloutState::Paused
                ) =>
            {
                act(self, active);
                Ok(active.status.clone())
            }
            _ => Err(RolloutError::NoRollout),
        }
    }

    /// One round of analysis: abort on a breach, step up or promote when a step has passed.
    pub fn tick(&self) {
        let mut state = self.lock();
        let Some(active) = state.as_mut() else {
            return;
        };
        if !matches!(
            active.status.state,
            RolloutState::Running | RolloutState::Paused
        ) {
            return;
        }
        if self.host.canary_id() != Some(active.status.canary) {
            // The canary went away without us (the host was driven directly).
            self.finish_abort(active, "the canary is no longer deployed".into());
            return;
        }
        let (stable, canary) = self.refresh(active);
        let verdict = analyze(&stable, &canary, &self.config.analysis);
        active.status.last_verdict = Some(verdict.clone());
        match verdict {
            Verdict::Breach(reason) => self.finish_abort(active, reason),
            _ if active.status.state == RolloutState::Paused => {}
            _ if active.step_started.elapsed() < active.plan.steps[active.status.step - 1].bake => {
            }
            Verdict::Inconclusive(reason) => {
                if !active.waiting_logged {
                    active.waiting_logged = true;
                    event(active, "waiting", format!("inconclusive: {reason}"));
                }
            }
            Verdict::Healthy if active.status.step == active.plan.steps.len() => {
                self.finish_promote(active, "every step passed".into());
            }
            Verdict::Healthy => {
                active.status.step += 1;
                let weight = active.plan.steps[active.status.step - 1].weight;
                self.set_weight(weight);
                active.status.weight = weight;
                let message = format!(
                    "step {} passed; step {} of {}",
                    active.status.step - 1,
                    active.status.step,
                    active.plan.steps.len()
                );
                event(active, "step", message);
                self.restart_step(active);
            }
        }
    }

    /// Updates the status's windows from the counters; returns them.
    fn refresh(&self, active: &mut Active) -> (Counts, Counts) {
        let (stable, canary) = match self.sides.load().as_deref() {
            Some(sides) => (
                sides.stable.snapshot().since(&active.baseline.0),
                sides.canary.snapshot().since(&active.baseline.1),
            ),
            None => Default::default(),
        };
        active.status.stable_window = stable.window();
        active.status.canary_window = canary.window();
        active.status.step_elapsed_ms = active.step_started.elapsed().as_millis() as u64;
        (stable, canary)
    }

    /// Starts the current step's window afresh.
    fn restart_step(&self, active: &mut Active) {
        if let Some(sides) = self.sides.load().as_deref() {
            active.baseline = (sides.stable.snapshot(), sides.canary.snapshot());
        }
        active.step_started = Instant::now();
        active.waiting_logged = false;
    }

    fn finish_promote(&self, active: &mut Active, reason: String) {
        self.set_weight(0);
        self.host.promote_canary();
        self.sides.store(None);
        active.status.state = RolloutState::Promoted;
        active.status.weight = 100;
        event(active, "promoted", reason);
        active.status.weight = 0;
    }

    fn finish_abort(&self, active: &mut Active, reason: String) {
        self.set_weight(0);
        self.host.abort_canary();
        self.sides.store(None);
        active.status.state = RolloutState::Aborted;
        active.status.weight = 0;
        event(active, "aborted", reason);
    }

    fn set_weight(&self, percent: u32) {
        self.weight
            .store(percent.min(100) * (BUCKETS / 100), Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records a state change in the status and logs it as one event.
fn event(active: &mut Active, kind: &str, message: String) {
    let status = &active.status;
    tracing::info!(
        event = kind,
        canary = status.canary,
        stable = status.stable,
        step = status.step,
        weight = status.weight,
        canary_requests = status.canary_window.requests,
        canary_errors = status.canary_window.errors,
        canary_p99_ms = status.canary_window.p99_ms.unwrap_or(0.0),
        stable_requests = status.stable_window.requests,
        stable_errors = status.stable_window.errors,
        stable_p99_ms = status.stable_window.p99_ms.unwrap_or(0.0),
        %message,
        "rollout"
    );
    let entry = RolloutEvent {
        at_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        event: kind.to_owned(),
        weight: status.weight,
        message,
        stable: status.stable_window.clone(),
        canary: status.canary_window.clone(),
    };
    let events = &mut active.status.events;
    events.push(entry);
    if events.len() > EVENTS_KEPT {
        events.remove(0);
    }
}

/// FNV-1a over the salt and the key, then a SplitMix64 finaliser: stable across hosts, builds
/// and versions of graft, so a key lands in the same bucket everywhere.
fn sticky_hash(salt: u64, key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(hash)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A per-thread pseudo-random number (no shared state).
fn random() -> u64 {
    thread_local! {
        // std's RandomState is seeded from the OS, and differs per thread and per instance.
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64),
        );
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        splitmix(next)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_say_why() {
        let plan: RolloutPlan = "5:30s, 25:500ms,50:1m,100".parse().unwrap();
        let steps: Vec<(u32, Duration)> = plan.steps().iter().map(|s| (s.weight, s.bake)).collect();
        assert_eq!(
            steps,
            [
                (5, Duration::from_secs(30)),
                (25, Duration::from_millis(500)),
                (50, Duration::from_secs(60)),
                (100, Duration::ZERO)
            ]
        );
        assert!("25,5".parse::<RolloutPlan>().unwrap_err().contains("rise"));
        assert!("0:1s".parse::<RolloutPlan>().is_err());
        assert!("5:1d".parse::<RolloutPlan>().is_err());
        let from_10 = plan.starting_at(10, Duration::ZERO).unwrap();
        let weights: Vec<u32> = from_10.steps().iter().map(|s| s.weight).collect();
        assert_eq!(weights, [10, 25, 50, 100]);
    }

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
