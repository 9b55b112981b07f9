//! Staged rollouts: a canary generation serves a slice of the traffic beside the current
//! (stable) one, is compared with it step by step, and is promoted or aborted automatically.
//!
//! The canary is a [`Prepared`] release held here, not in the host: [`Rollouts::start`] prepares
//! the release against the current generation (outside any lock), routes a share of requests to
//! its generation, and promotion is [`Host::go_live`] (its durable record written after the
//! rollout's lock is released: `steps.rs`). If stable changes under the canary (a
//! deploy or rollback went live by another way), the rollout aborts: promoting would undo that.
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
//!   Readers ([`Rollouts::status`]) see a snapshot published after each change, refreshed from
//!   the counters: they never wait for the analysis, an operator, or a canary being prepared.

mod analysis;
mod bucket;
mod plan;
mod status;
mod steps;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use graft_host::{
    CallSite, DeployError, DeployReport, Generation, Host, OwnedPin, Prepared, Settle,
};
use serde::Deserialize;

pub use analysis::{AnalysisConfig, Thresholds, Verdict, WindowStats};
pub use plan::{PlanStep, RolloutPlan};
pub use status::{RolloutEvent, RolloutSample, RolloutState, RolloutStatus, Route, SAMPLES_KEPT};

use analysis::{Counts, SideStats};
use bucket::BUCKETS;
use status::{push_event, read_record};
use steps::event;

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
    /// The secret a request must carry in `x-graft-route-token` for its `x-graft-route` to
    /// force a side (any client could otherwise pick the canary, or fail it on purpose to
    /// abort the rollout). The admin token if not set; with neither, no request forces a side.
    #[serde(default)]
    pub force_token: Option<String>,
    /// The analysis.
    #[serde(default, flatten)]
    pub analysis: AnalysisConfig,
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
    /// A rollout is under way (or starting): promote or abort it first.
    #[error("a rollout is under way: promote or abort it first")]
    InProgress,
    /// There is no rollout under way.
    #[error("no rollout is under way")]
    NoRollout,
    /// The release migrates plugin state or tables: a canary and stable would each write their
    /// own copy, and the canary's writes would be lost at promotion.
    #[error("the release migrates state or tables ({}): a canary cannot share them with stable across a schema change; deploy it directly", .0.join(", "))]
    MigratesState(Vec<String>),
}

/// The two sides' counters for the rollout under way, found by generation id.
#[derive(Debug)]
struct Sides {
    stable_id: u64,
    canary_id: u64,
    stable: SideStats,
    canary: SideStats,
}

/// The rollout under way, or the last one that ended.
#[derive(Debug)]
struct Active {
    status: RolloutStatus,
    plan: RolloutPlan,
    /// The thresholds it is judged by: the configured ones, or its own.
    analysis: AnalysisConfig,
    step_started: Instant,
    /// Each side's counters when the step started.
    baseline: (Counts, Counts),
    /// Each side's counters at the last sample.
    sampled: (Counts, Counts),
    waiting_logged: bool,
    /// The canary, until it is published (promoted) or dropped (aborted).
    prepared: Option<Prepared>,
    /// A state change not yet written to the record.
    unrecorded: bool,
    /// A promoted canary's durable record, to write once the state's lock is released.
    settling: Option<Settle>,
}

/// What readers see: the status at the last change, and what refreshes its windows.
#[derive(Debug)]
struct Snapshot {
    status: RolloutStatus,
    baseline: (Counts, Counts),
    step_started: Instant,
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
    /// The generation canary requests pin.
    canary: ArcSwapOption<Generation>,
    sides: ArcSwapOption<Sides>,
    /// Set while a canary is being prepared, so a second rollout cannot start meanwhile.
    starting: AtomicBool,
    /// Changed by starts, the analysis and operators, one at a time.
    state: Mutex<Option<Active>>,
    /// Read by status: never waits for the state lock.
    snapshot: ArcSwapOption<Snapshot>,
    /// Where the rollout's status is written at each state change (`DATA/rollout.json`), so a
    /// restarted server knows a rollout was under way.
    record: Option<PathBuf>,
    /// How many status changes were published, and (under its own lock, which the writes take)
    /// the last one written to the record.
    changes: AtomicU64,
    recorded: Mutex<u64>,
}

impl Rollouts {
    /// The rollouts of `host`, with a thread that runs the analysis every
    /// `config.analysis.interval_ms` while the returned handle lives.
    pub fn new(host: Arc<Host>, config: RolloutConfig) -> Arc<Self> {
        Self::with_record(host, config, None)
    }

    /// As [`Rollouts::new`], recording the rollout's status in `record` at each state change.
    /// A rollout the record shows under way was interrupted by a restart: the restarted host
    /// serves stable (a canary is never recorded as live), so it is ended as aborted, saying
    /// so in the log and in its status.
    pub fn recorded(host: Arc<Host>, config: RolloutConfig, record: PathBuf) -> Arc<Self> {
        let previous = read_record(&record);
        let rollouts = Self::with_record(host, config, Some(record));
        if let Some(status) = previous {
            rollouts.carry_over(status);
        }
        rollouts
    }

    fn with_record(host: Arc<Host>, config: RolloutConfig, record: Option<PathBuf>) -> Arc<Self> {
        let interval = Duration::from_millis(config.analysis.interval_ms.max(10));
        let rollouts = Arc::new(Self {
            host,
            config,
            weight: AtomicU32::new(0),
            salt: AtomicU64::new(0),
            canary: ArcSwapOption::empty(),
            sides: ArcSwapOption::empty(),
            starting: AtomicBool::new(false),
            state: Mutex::new(None),
            snapshot: ArcSwapOption::empty(),
            record,
            changes: AtomicU64::new(0),
            recorded: Mutex::new(0),
        });
        let weak: Weak<Self> = Arc::downgrade(&rollouts);
        // The analysis runs every `interval` on a fixed schedule (the time a round takes does
        // not push the next one back), and also the moment a step's bake time ends, so that a
        // step passes at its bake time rather than up to an interval later.
        let spawned = std::thread::Builder::new()
            .name("graft-rollout".into())
            .spawn(move || {
                let mut next = Instant::now() + interval;
                loop {
                    let Some(rollouts) = weak.upgrade() else {
                        return;
                    };
                    let now = Instant::now();
                    let wake = rollouts
                        .bake_ends()
                        .filter(|&end| end > now && end < next)
                        .unwrap_or(next);
                    drop(rollouts);
                    std::thread::sleep(wake.saturating_duration_since(now));
                    match weak.upgrade() {
                        Some(rollouts) => rollouts.tick(),
                        None => return,
                    }
                    let now = Instant::now();
                    while next <= now {
                        next += interval;
                    }
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

    /// Prepares the release in `dir` as a canary against the current generation and starts
    /// walking `plan` (the configured plan if `None`), at `weight` percent if given.
    ///
    /// # Errors
    ///
    /// [`RolloutError::Plan`] for an invalid weight or plan, [`RolloutError::InProgress`] if a
    /// rollout is under way, [`RolloutError::Deploy`] if the canary is refused.
    pub fn start(
        &self,
        dir: &Path,
        weight: Option<u32>,
        plan: Option<RolloutPlan>,
        thresholds: Thresholds,
    ) -> Result<(DeployReport, RolloutStatus), RolloutError> {
        thresholds.check().map_err(RolloutError::Plan)?;
        let analysis = thresholds.applied_to(&self.config.analysis);
        let plan = plan.unwrap_or_else(|| self.config.plan.clone());
        let plan = match weight {
            Some(w) => plan
                .starting_at(w, Duration::ZERO)
                .map_err(RolloutError::Plan)?,
            None => plan,
        };
        if plan.steps().is_empty() {
            return Err(RolloutError::Plan("no steps".into()));
        }
        {
            let state = self.lock();
            let under_way = state
                .as_ref()
                .is_some_and(|a| a.status.state.is_under_way());
            if under_way || self.starting.swap(true, Ordering::AcqRel) {
                return Err(RolloutError::InProgress);
            }
        }
        // The slow part, with no lock held: readers and operators go on meanwhile.
        let prepared = self.host.prepare(dir);
        let mut state = self.lock();
        self.starting.store(false, Ordering::Release);
        let prepared = prepared?;
        let report = prepared.report().clone();
        if !report.migrated.is_empty() {
            return Err(RolloutError::MigratesState(report.migrated));
        }
        let (stable, canary) = (prepared.base(), prepared.id());
        let sides = Arc::new(Sides {
            stable_id: stable,
            canary_id: canary,
            stable: SideStats::new(),
            canary: SideStats::new(),
        });
        self.canary.store(Some(Arc::clone(prepared.generation())));
        self.sides.store(Some(sides));
        self.salt.store(canary, Ordering::Relaxed);
        let first = plan.steps()[0];
        self.set_weight(first.weight);
        let mut active = Active {
            status: RolloutStatus {
                state: RolloutState::Running,
                release: report.release.clone(),
                stable,
                canary,
                step: 1,
                plan: plan.steps().to_vec(),
                weight: first.weight,
                step_elapsed_ms: 0,
                stable_window: WindowStats::default(),
                canary_window: WindowStats::default(),
                last_verdict: None,
                events: Vec::new(),
                analysis: analysis.clone(),
                samples: Vec::new(),
            },
            plan,
            analysis,
            step_started: Instant::now(),
            baseline: (Counts::default(), Counts::default()),
            sampled: (Counts::default(), Counts::default()),
            waiting_logged: false,
            prepared: Some(prepared),
            unrecorded: true,
            settling: None,
        };
        let message = format!("canary generation {canary} beside stable generation {stable}");
        event(&mut active, "started", message);
        let status = active.status.clone();
        let to_write = self.publish_snapshot(&mut active);
        *state = Some(active);
        drop(state);
        self.write_down(to_write);
        Ok((report, status))
    }

    /// The canary generation of the rollout under way, prepared (not live).
    pub fn canary(&self) -> Option<Arc<Generation>> {
        self.canary.load_full()
    }

    /// The canary generation's id, of the rollout under way.
    pub fn canary_id(&self) -> Option<u64> {
        self.sides.load().as_deref().map(|sides| sides.canary_id)
    }

    /// Aborts the rollout under way if `generation` is its canary, with `reason` as the
    /// event's words (a canary whose worker process crashed). Whether it did.
    pub fn abort_canary(&self, generation: u64, reason: String) -> bool {
        if self.canary_id() != Some(generation) {
            return false;
        }
        self.operate(|rollouts, active| {
            if active.status.canary == generation {
                rollouts.refresh(active);
                rollouts.finish_abort(active, reason);
            }
        })
        .is_ok()
    }

    /// Whether a rollout is under way (a canary takes a share of requests).
    pub fn under_way(&self) -> bool {
        self.weight.load(Ordering::Relaxed) != 0
    }

    /// Routes a request entering through `site`: pins the canary or the current generation.
    /// `key` is the sticky key, `force` an override. Without a rollout under way, every request
    /// goes to stable.
    ///
    /// `None` while a migration or a save holds the site's requests at the boundary: the caller
    /// waits briefly and routes again.
    pub fn route(
        &self,
        site: &CallSite,
        key: Option<&[u8]>,
        force: Option<Route>,
    ) -> Option<(OwnedPin, Route)> {
        if self.to_canary(key, force) {
            if let Some(canary) = self.canary.load_full() {
                let pin = self.host.try_pin_at(canary, site)?;
                return Some((pin, Route::Canary));
            }
        }
        Some((self.host.try_pin_for(site)?, Route::Stable))
    }

    /// The generation a request routed by its own routes goes to (the canary's or stable's, as
    /// [`Rollouts::route`] decides), not pinned yet.
    pub fn pick(&self, key: Option<&[u8]>, force: Option<Route>) -> (Arc<Generation>, Route) {
        if self.to_canary(key, force) {
            if let Some(canary) = self.canary.load_full() {
                return (canary, Route::Canary);
            }
        }
        (self.host.current(), Route::Stable)
    }

    /// Whether a request with sticky key `key` (or forced to a side) goes to the canary.
    fn to_canary(&self, key: Option<&[u8]>, force: Option<Route>) -> bool {
        let weight = self.weight.load(Ordering::Relaxed);
        match force {
            Some(route) => route == Route::Canary,
            None if weight == 0 => false,
            None => bucket::bucket(self.salt.load(Ordering::Relaxed), key) < weight,
        }
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

    /// The rollout under way, or the last one; its windows are read from the counters now.
    pub fn status(&self) -> Option<RolloutStatus> {
        let snapshot = self.snapshot.load_full()?;
        let mut status = snapshot.status.clone();
        if status.state.is_under_way() {
            let (stable, canary) = self.windows(&snapshot.baseline);
            status.stable_window = stable.window();
            status.canary_window = canary.window();
            status.step_elapsed_ms =
                u64::try_from(snapshot.step_started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        Some(status)
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
        let (status, to_write) = match state.as_mut() {
            Some(active) if active.status.state.is_under_way() => {
                act(self, active);
                let to_write = self.publish_snapshot(active);
                (active.status.clone(), to_write)
            }
            _ => return Err(RolloutError::NoRollout),
        };
        drop(state);
        // Answered once written, as before; the next caller does not wait for it.
        self.write_down(to_write);
        Ok(status)
    }

    /// When the current step's bake time ends, for a rollout under way.
    fn bake_ends(&self) -> Option<Instant> {
        let snapshot = self.snapshot.load();
        let snapshot = snapshot.as_deref()?;
        let status = &snapshot.status;
        let step = status.plan.get(status.step.checked_sub(1)?)?;
        status
            .state
            .is_under_way()
            .then(|| snapshot.step_started + step.bake)
    }

    /// Takes a recorded rollout back as the last one; one that was under way is ended here as
    /// aborted: the restarted host serves stable, and its canary is gone.
    fn carry_over(&self, status: RolloutStatus) {
        let mut active = Active {
            analysis: status.analysis.clone(),
            status,
            plan: self.config.plan.clone(),
            step_started: Instant::now(),
            baseline: (Counts::default(), Counts::default()),
            sampled: (Counts::default(), Counts::default()),
            waiting_logged: false,
            prepared: None,
            unrecorded: false,
            settling: None,
        };
        let status = &mut active.status;
        if status.state.is_under_way() {
            let current = self.host.pin().id();
            let message = format!(
                "aborted by a restart: the server stopped while canary generation {} ({}) took {}% at step {}; it restarted on stable (generation {current}); start the rollout again to resume it",
                status.canary,
                status.release.as_deref().unwrap_or("unnamed"),
                status.weight,
                status.step,
            );
            tracing::warn!(canary = status.canary, stable = current, %message, "rollout");
            status.state = RolloutState::Aborted;
            status.weight = 0;
            push_event(status, "aborted", message);
            active.unrecorded = true;
        }
        let to_write = self.publish_snapshot(&mut active);
        *self.lock() = Some(active);
        self.write_down(to_write);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
