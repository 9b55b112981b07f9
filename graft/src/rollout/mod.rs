//! Staged rollouts: a canary generation serves a slice of the traffic beside the current
//! (stable) one, is compared with it step by step, and is promoted or aborted automatically.
//!
//! The canary is a [`Prepared`] release held here, not in the host: [`Rollouts::start`] prepares
//! the release against the current generation (outside any lock), routes a share of requests to
//! its generation, and promotion is [`Host::publish`]. If stable changes under the canary (a
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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use graft_host::{
    CallSite, DeployError, DeployReport, DisplayChain, Generation, Host, OwnedPin, Prepared, Settle,
};
use serde::Deserialize;

pub use analysis::{AnalysisConfig, Thresholds, Verdict, WindowStats};
pub use plan::{PlanStep, RolloutPlan};
pub use status::{RolloutEvent, RolloutSample, RolloutState, RolloutStatus, Route, SAMPLES_KEPT};

use analysis::{analyze, Counts, SideStats};
use bucket::BUCKETS;
use status::{push_event, push_sample, read_record, write_record};

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

/// What a state change leaves to do once the state's lock is released: writing to disk, which
/// takes milliseconds, or seconds while the disk flushes something else, and must not hold up
/// operators' calls and the analysis meanwhile.
#[derive(Debug, Default)]
#[must_use = "written only by Rollouts::write_down"]
struct ToWrite {
    /// The promoted release's record of live releases.
    settle: Option<Settle>,
    /// The rollout's status, numbered: a write never replaces a newer one.
    status: Option<(u64, RolloutStatus)>,
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

    /// One round of analysis: abort on a breach, step up or promote when a step has passed.
    pub fn tick(&self) {
        let mut state = self.lock();
        let Some(active) = state.as_mut() else {
            return;
        };
        if !active.status.state.is_under_way() {
            return;
        }
        self.sample(active);
        self.analyse(active);
        let to_write = self.publish_snapshot(active);
        drop(state);
        self.write_down(to_write);
    }

    /// Records what each side did since the last sample.
    fn sample(&self, active: &mut Active) {
        let Some(sides) = self.sides.load_full() else {
            return;
        };
        let now = (sides.stable.snapshot(), sides.canary.snapshot());
        let (stable, canary) = (
            now.0.since(&active.sampled.0),
            now.1.since(&active.sampled.1),
        );
        push_sample(&mut active.status, stable.window(), canary.window());
        active.sampled = now;
    }

    fn analyse(&self, active: &mut Active) {
        let stable_now = self.host.pin().id();
        if stable_now != active.status.stable {
            // A release went live by another way; promoting the canary would undo it.
            let reason = format!(
                "stable changed under the canary: generation {stable_now} went live beside the rollout"
            );
            self.finish_abort(active, reason);
            return;
        }
        let (stable, canary) = self.refresh(active);
        let verdict = analyze(&stable, &canary, &active.analysis);
        active.status.last_verdict = Some(verdict.clone());
        let step = active.plan.steps()[active.status.step - 1];
        match verdict {
            Verdict::Breach(reason) => self.finish_abort(active, reason),
            _ if active.status.state == RolloutState::Paused => {}
            _ if active.step_started.elapsed() < step.bake => {}
            Verdict::Inconclusive(reason) => {
                if !active.waiting_logged {
                    active.waiting_logged = true;
                    event(active, "waiting", format!("inconclusive: {reason}"));
                }
            }
            Verdict::Healthy if active.status.step == active.plan.steps().len() => {
                self.finish_promote(active, "every step passed".into());
            }
            Verdict::Healthy => {
                active.status.step += 1;
                let weight = active.plan.steps()[active.status.step - 1].weight;
                self.set_weight(weight);
                active.status.weight = weight;
                let message = format!(
                    "step {} passed; step {} of {}",
                    active.status.step - 1,
                    active.status.step,
                    active.plan.steps().len()
                );
                event(active, "step", message);
                self.restart_step(active);
            }
        }
    }

    /// Each side's counts since `baseline`.
    fn windows(&self, baseline: &(Counts, Counts)) -> (Counts, Counts) {
        match self.sides.load().as_deref() {
            Some(sides) => (
                sides.stable.snapshot().since(&baseline.0),
                sides.canary.snapshot().since(&baseline.1),
            ),
            None => Default::default(),
        }
    }

    /// Updates the status's windows from the counters; returns them.
    fn refresh(&self, active: &mut Active) -> (Counts, Counts) {
        let (stable, canary) = self.windows(&active.baseline);
        active.status.stable_window = stable.window();
        active.status.canary_window = canary.window();
        active.status.step_elapsed_ms =
            u64::try_from(active.step_started.elapsed().as_millis()).unwrap_or(u64::MAX);
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

    /// Publishes the canary as the current generation; aborts instead if the host refuses.
    fn finish_promote(&self, active: &mut Active, reason: String) {
        let Some(prepared) = active.prepared.take() else {
            return self.finish_abort(active, "the canary is gone".into());
        };
        match self.host.go_live(prepared) {
            // Recorded once the state's lock is released (see `ToWrite`).
            Ok((_, settle)) => active.settling = Some(settle),
            Err(error) => {
                let reason = format!("promotion refused: {}", DisplayChain(&error));
                return self.finish_abort(active, reason);
            }
        }
        // The canary is current now: requests still routed to it pin the same generation.
        self.set_weight(0);
        self.canary.store(None);
        self.sides.store(None);
        active.status.state = RolloutState::Promoted;
        active.status.weight = 100;
        event(active, "promoted", reason);
        active.status.weight = 0;
    }

    fn finish_abort(&self, active: &mut Active, reason: String) {
        self.set_weight(0);
        self.canary.store(None);
        self.sides.store(None);
        // Its in-flight requests keep their pins; its libraries go once they finish.
        active.prepared = None;
        active.status.state = RolloutState::Aborted;
        active.status.weight = 0;
        event(active, "aborted", reason);
    }

    fn set_weight(&self, percent: u32) {
        self.weight
            .store(percent.min(100) * (BUCKETS / 100), Ordering::Relaxed);
    }

    /// Publishes the status for readers; returns what to write to disk after a state change,
    /// once the state's lock is released ([`Rollouts::write_down`]).
    fn publish_snapshot(&self, active: &mut Active) -> ToWrite {
        self.snapshot.store(Some(Arc::new(Snapshot {
            status: active.status.clone(),
            baseline: active.baseline.clone(),
            step_started: active.step_started,
        })));
        let changed = std::mem::take(&mut active.unrecorded) && self.record.is_some();
        ToWrite {
            settle: active.settling.take(),
            status: changed.then(|| {
                let change = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
                (change, active.status.clone())
            }),
        }
    }

    /// Writes what a state change left to write: the promoted release's record first (as a
    /// deploy does before it answers), then the rollout's status unless a newer one was
    /// written meanwhile.
    fn write_down(&self, to_write: ToWrite) {
        if let Some(settle) = to_write.settle {
            self.host.settle(settle);
        }
        if let (Some((change, status)), Some(path)) = (to_write.status, &self.record) {
            let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if *recorded < change {
                write_record(path, &status);
                *recorded = change;
            }
        }
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
    push_event(&mut active.status, kind, message);
    active.unrecorded = true;
}
