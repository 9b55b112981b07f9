//! Worker processes: generations whose calls run in a process of their own, so that a plugin
//! that crashes (a segfault, an abort, a stack overflow), spins or leaks takes down only its
//! worker, never the front that holds the listeners, the admin plane, routing, rollouts and
//! metrics.
//!
//! `isolation` in `graft.toml` chooses which generations: `none` (every call in this process),
//! `canary` (a rollout's canary in a worker, stable here) or `all`. A worker is `graft worker`
//! serving the generation's plugin set (see `process.rs`), which it verifies, loads, checks,
//! links and initialises itself; the front forwards each request routed to that generation to
//! it (`forward.rs`) and answers with what it says. Semantics are unchanged: a request pins one
//! generation in the front (so a release goes live, drains and is counted as before) and is
//! served by that generation's worker; a worker whose generation is neither current nor the
//! canary, and has no request in flight, is asked to exit: the perfect unload.
//!
//! - **A crash** fails only the worker's requests in flight (502, in the JSON error shape, and
//!   logged with the signal and generation). A canary's crash aborts the rollout at once (the
//!   event names the signal); a stable worker is started again on the same release after a
//!   backoff, and after [`WorkerConfig::crash_limit`] crashes within
//!   [`WorkerConfig::crash_window_ms`] the host rolls back to the previous release.
//! - **A call past its deadline** is answered 503; if it has not returned
//!   [`WorkerConfig::grace_ms`] later, its worker is recycled: a fresh worker of the same
//!   generation takes new requests, and the stuck one is killed once its other requests ended.
//! - **Memory**: [`WorkerConfig::memory_limit_mb`] bounds each worker (`RLIMIT_DATA`); an
//!   allocation past it aborts that worker alone.
//!
//! - **Connections served by the worker** (`direct.rs`): under `all`, while no rollout splits
//!   requests, the current generation's worker serves client connections itself (the front
//!   hands them over on the worker's link, `link.rs`), with the same guarantees: it stops
//!   serving the moment its generation is replaced, a crash fails only the requests in flight
//!   (the front keeps each connection's descriptor and reads its state, `states.rs`), a call
//!   past its deadline is answered 503 by the front, and each request is counted by the front.
//! - **A crash while loading**: the front prepares each release itself too (it routes, pins
//!   and reports with that generation, and never calls into it), so it loads the release
//!   first in a process of its own (`preflight.rs`): one that takes that process down, or
//!   holds it past the start timeout, is refused naming the step, plugin and file whose code
//!   was running, and the front never loads it.
//!
//! What stays in the front for now: a generation whose plugins hold state (cells or tables)
//! runs in the front whatever `isolation` says (each process would keep its own copy of the
//! state, and a canary's writes would be lost), which is logged once per generation and shown
//! in status; and a crash that only happens in the front's own load (not in the preflight's:
//! code that crashes at random) still takes it down.

mod channel;
mod direct;
mod forward;
pub(crate) mod link;
mod preflight;
mod process;
mod slot;
pub(crate) mod states;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use graft_host::{Generation, Host};

pub use crate::config::{Isolation, WorkerConfig};
pub(crate) use channel::{serve as serve_channel, Asked, Calls, Forwarded, Links};

pub(crate) use direct::{Elsewhere, Moving};
pub(crate) use forward::{Forward, Serves};
pub(crate) use process::Ready;
pub(crate) use process::{front_deadline, Spec};
use slot::{Kept, Slot};

use crate::api::{ApiError, ErrorCode, WorkerState, WorkerStatus};
use crate::metrics::Metrics;
use crate::rollout::{Rollouts, Route as Side};
use crate::shards::Shards;
use process::{Ended, Launch, Process};

/// The longest wait before a crashed worker is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a request its worker failed waits for the worker's end to be handled (a crash
/// aborts a canary's rollout before the failed request counts against it).
const CRASH_SETTLES: Duration = Duration::from_millis(200);

/// How often workers no generation needs any more are looked for.
const SWEEP: Duration = Duration::from_millis(100);

/// Why a worker is started.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Its generation's first.
    First,
    /// Again on the same release, after a crash (counted in `restarts`).
    AfterCrash,
    /// In place of one with a call stuck past its deadline and grace.
    Recycle,
}

/// Where a generation runs: in a worker (`Some`) or in the front (`None`: isolation does not
/// cover it, or its plugins hold state).
type Placement = Option<Arc<Slot>>;

/// The worker processes of a front.
#[derive(Debug)]
pub(crate) struct Workers {
    isolation: Isolation,
    config: WorkerConfig,
    binary: PathBuf,
    /// `DATA/workers`: one directory per generation in a worker.
    root: PathBuf,
    spec: Spec,
    host: Arc<Host>,
    rollouts: Arc<Rollouts>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// The front's app threads: each has a connection of its own to each worker.
    shards: Arc<Shards>,
    /// Where each generation routed so far runs; replaced whole on a change (rare), read per
    /// request without a lock.
    placed: ArcSwap<HashMap<u64, Placement>>,
    change: Mutex<()>,
    /// Taken to pick the worker that serves connections, and by a switch of generation.
    direct: Mutex<()>,
    /// Bumped whenever the worker that serves connections may have changed.
    direct_changes: tokio::sync::watch::Sender<u64>,
    /// The pid of the worker that served connections at the last sweep.
    direct_last: std::sync::atomic::AtomicU64,
    /// Where connections back from a worker go to be served by the front's listener.
    back: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Moving>>,
    me: Weak<Workers>,
}

impl Workers {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        isolation: Isolation,
        config: WorkerConfig,
        data_dir: &std::path::Path,
        spec: Spec,
        host: Arc<Host>,
        rollouts: Arc<Rollouts>,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        shards: Arc<Shards>,
    ) -> Result<Arc<Self>, String> {
        let binary = match &config.binary {
            Some(binary) => binary.clone(),
            None => {
                std::env::current_exe().map_err(|e| format!("finding the graft executable: {e}"))?
            }
        };
        let root = data_dir.join("workers");
        // What a killed front left behind: its workers exited when their input closed.
        let _ = std::fs::remove_dir_all(&root);
        let switching = Arc::clone(&host);
        let workers = Arc::new_cyclic(|me: &Weak<Self>| Self {
            isolation,
            config,
            binary,
            root,
            spec,
            host,
            rollouts,
            metrics,
            runtime,
            shards,
            placed: ArcSwap::default(),
            change: Mutex::new(()),
            direct: Mutex::new(()),
            direct_changes: tokio::sync::watch::Sender::new(0),
            direct_last: std::sync::atomic::AtomicU64::new(0),
            back: std::sync::OnceLock::new(),
            me: me.clone(),
        });
        if isolation == Isolation::All {
            // Right after each store: the replaced generation's worker stops serving at once.
            let me = Arc::downgrade(&workers);
            switching.on_switch(move |generation| {
                if let Some(workers) = me.upgrade() {
                    workers.placement_changed(Some(generation.id()));
                }
            });
        }
        Ok(workers)
    }

    /// The worker serving `generation` when a request routed to `side` pinned it, if it runs in
    /// one: started (in the background) the first time a generation is routed.
    #[inline]
    pub(crate) fn route(&self, generation: &Arc<Generation>, side: Side) -> Option<Arc<Slot>> {
        match (self.isolation, side) {
            (Isolation::None, _) | (Isolation::Canary, Side::Stable) => None,
            _ => match self.placed.load().get(&generation.id()) {
                Some(placed) => placed.clone(),
                None => self.place(generation),
            },
        }
    }

    /// Loads the release in `dir` first in a process of its own (`graft preflight`) when the
    /// generation it becomes would run in a worker for `side`: a plugin that crashes while it
    /// loads or initialises takes that process down, and the release is refused, before the
    /// front loads it. See `preflight.rs`.
    ///
    /// # Errors
    ///
    /// The refusal: the step, plugin and file whose code was running, and the signal (or the
    /// timeout it ran past); or why the process could not start.
    pub(crate) fn preflight(&self, dir: &std::path::Path, side: Side) -> Result<(), ApiError> {
        if matches!(
            (self.isolation, side),
            (Isolation::None, _) | (Isolation::Canary, Side::Stable)
        ) {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.start_timeout_ms);
        match preflight::run(&self.binary, dir, self.config.memory_limit_mb, timeout) {
            Ok(()) => Ok(()),
            Err(Ok(refused)) => {
                let answer = refused.to_api();
                tracing::warn!(release = %dir.display(), error = %answer.message, "release rejected at preflight");
                Err(answer)
            }
            Err(Err(why)) => Err(ApiError::new(
                ErrorCode::DeployRejected,
                format!("the release could not be loaded first in a process of its own: {why}"),
            )),
        }
    }

    /// Starts `generation`'s worker (unless it runs in the front) and waits until it serves:
    /// before a release goes live, so that one whose worker cannot start is refused. The
    /// worker is kept while the returned [`Kept`] lives, even though nothing routes to its
    /// generation yet (it is published after this returns).
    ///
    /// # Errors
    ///
    /// Why the worker could not start.
    pub(crate) fn start(&self, generation: &Arc<Generation>, side: Side) -> Result<Kept, String> {
        let Some(slot) = self.route(generation, side) else {
            return Ok(Kept(None));
        };
        slot.kept.fetch_add(1, Ordering::SeqCst);
        let kept = Kept(Some(Arc::clone(&slot)));
        loop {
            match slot.state() {
                (WorkerState::Starting | WorkerState::Restarting, _) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                (WorkerState::Failed | WorkerState::Stopped, why) => {
                    return Err(why.unwrap_or_else(|| "the worker stopped".into()))
                }
                (WorkerState::Serving | WorkerState::InFront, _) => return Ok(kept),
            }
        }
    }

    /// Decides where a generation routed for the first time runs, and starts its worker.
    #[cold]
    fn place(&self, generation: &Arc<Generation>) -> Option<Arc<Slot>> {
        let _change = self.change.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(placed) = self.placed.load().get(&generation.id()) {
            return placed.clone();
        }
        let stateful: Vec<&str> = generation.stateful_plugins().collect();
        let placed = if stateful.is_empty() {
            let slot = Arc::new(Slot {
                generation: Arc::downgrade(generation),
                id: generation.id(),
                dir: self.root.join(format!("gen-{}", generation.id())),
                process: ArcSwapOption::empty(),
                state: Mutex::new((WorkerState::Starting, None)),
                changed: tokio::sync::Notify::new(),
                crashes: Mutex::default(),
                restarts: std::sync::atomic::AtomicU64::new(0),
                kept: std::sync::atomic::AtomicUsize::new(0),
            });
            match process::write_release(&slot.dir, generation) {
                Ok(()) => {
                    let (me, starting) = (self.me.clone(), Arc::clone(&slot));
                    std::thread::spawn(move || {
                        if let Some(me) = me.upgrade() {
                            me.launch(&starting, Start::First);
                        }
                    });
                }
                Err(error) => {
                    let why = format!("writing {}: {error}", slot.dir.display());
                    slot.set(WorkerState::Failed, Some(why));
                }
            }
            Some(slot)
        } else {
            tracing::warn!(
                generation = generation.id(),
                plugins = %stateful.join(", "),
                "generation runs in the front despite `isolation`: its plugins hold state, which \
                 a worker would keep a copy of"
            );
            None
        };
        let mut map = HashMap::clone(&self.placed.load());
        map.insert(generation.id(), placed.clone());
        self.placed.store(Arc::new(map));
        placed
    }

    /// Starts a process for `slot`; on failure the slot is failed (and its requests answered
    /// 502).
    fn launch(&self, slot: &Arc<Slot>, start: Start) {
        let launch = Launch {
            binary: &self.binary,
            dir: &slot.dir,
            spec: &self.spec,
            memory_limit_mb: self.config.memory_limit_mb,
            timeout: Duration::from_millis(self.config.start_timeout_ms),
            runtime: &self.runtime,
            shards: &self.shards,
            link_slots: (self.isolation == Isolation::All && self.config.serve_connections)
                .then_some(self.spec.max_connections()),
            generation: slot.id,
        };
        let (me, watched) = (self.me.clone(), Arc::downgrade(slot));
        let started = process::start(&launch, move |process, ended, known| {
            if let (Some(me), Some(slot)) = (me.upgrade(), watched.upgrade()) {
                me.exited(&slot, process, ended, known);
            }
        });
        match started {
            Ok(process) => {
                tracing::info!(generation = slot.id, pid = process.pid, "worker serving");
                // Counted before the process is seen: a request it serves finds it in status.
                match start {
                    Start::First => {}
                    Start::AfterCrash => {
                        slot.restarts.fetch_add(1, Ordering::Relaxed);
                        self.metrics.workers().restarted();
                    }
                    Start::Recycle => self.metrics.workers().recycled(),
                }
                slot.process.store(Some(Arc::clone(&process)));
                slot.set(WorkerState::Serving, None);
                self.count_running();
                if let Some(me) = self.me.upgrade() {
                    me.follow_link(slot, &process);
                }
                // Its end, however soon, is handled from here on: it finds it in the slot.
                process.placed();
                self.placement_changed(None);
            }
            Err(why) => {
                tracing::error!(generation = slot.id, %why, "worker could not start");
                slot.set(WorkerState::Failed, Some(why));
            }
        }
    }

    /// A worker ended. Asked to (stopped, recycled): nothing more. Otherwise a crash: logged,
    /// a canary's rollout aborted, then (its end made `known` to the requests that wait for
    /// it) a stable worker restarted, or the release rolled back.
    fn exited(&self, slot: &Arc<Slot>, process: &Arc<Process>, ended: &Ended, known: &dyn Fn()) {
        let current = slot.process.load_full();
        if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, process)) {
            slot.process.store(None);
        }
        self.count_running();
        if process.stopping.load(Ordering::SeqCst) {
            slot.changed.notify_waiters();
            return;
        }
        self.metrics.workers().crashed(&ended.signal);
        let how = &ended.how;
        tracing::error!(
            generation = slot.id,
            pid = process.pid,
            how = %how,
            in_flight = process.in_flight.load(Ordering::Relaxed),
            "worker crashed: its requests in flight fail with 502"
        );
        let crashes = slot.crashed(Duration::from_millis(self.config.crash_window_ms));
        let reason = format!("the canary's worker (pid {}) crashed: {how}", process.pid);
        if self.rollouts.abort_canary(slot.id, reason) {
            slot.set(WorkerState::Failed, Some(format!("crashed: {how}")));
            return;
        }
        let current = self.host.current().id() == slot.id;
        if !current || self.isolation != Isolation::All {
            slot.set(WorkerState::Failed, Some(format!("crashed: {how}")));
            return;
        }
        known();
        if crashes >= self.config.crash_limit {
            let why = format!(
                "crashed {crashes} times within {} ms (workers.crash_limit): rolling back",
                self.config.crash_window_ms
            );
            tracing::error!(generation = slot.id, %why, "worker crash loop");
            slot.set(WorkerState::Failed, Some(why));
            match self.host.rollback() {
                Ok(report) => tracing::warn!(
                    generation = report.generation,
                    "rolled back after the worker crash loop"
                ),
                Err(error) => {
                    tracing::error!(error = %graft_host::DisplayChain(&error), "rollback after the worker crash loop refused")
                }
            }
            return;
        }
        slot.set(WorkerState::Restarting, Some(format!("crashed: {how}")));
        let shift = u32::try_from(crashes.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        let backoff = Duration::from_millis(self.config.restart_backoff_ms)
            .saturating_mul(1 << shift)
            .min(MAX_BACKOFF);
        std::thread::sleep(backoff);
        if slot.state().0 != WorkerState::Restarting {
            return; // stopped meanwhile
        }
        self.launch(slot, Start::AfterCrash);
    }

    /// Replaces `stuck` (a worker with a call past its deadline and grace) by a fresh worker of
    /// the same generation, then kills it once its other requests ended.
    fn recycle(&self, slot: &Arc<Slot>, stuck: &Arc<Process>) {
        {
            let _change = self.change.lock().unwrap_or_else(PoisonError::into_inner);
            let current = slot.process.load_full();
            if !current.is_some_and(|p| Arc::ptr_eq(&p, stuck))
                || slot.state().0 != WorkerState::Serving
            {
                return; // already replaced, crashed or stopped
            }
            slot.set(
                WorkerState::Restarting,
                Some("recycled: a call ran past its deadline and grace".into()),
            );
        }
        tracing::warn!(
            generation = slot.id,
            pid = stuck.pid,
            grace_ms = self.config.grace_ms,
            "recycling a worker: a call ran past its deadline and grace"
        );
        stuck.stopping.store(true, Ordering::SeqCst);
        self.launch(slot, Start::Recycle);
        // The connections it serves itself come back (all but the stuck call's, which the
        // front answered), to go to its successor.
        if let Some(link) = &stuck.link {
            link.close_serving(&self.runtime, link);
        }
        let drain = Duration::from_secs(10);
        let since = Instant::now();
        // Its requests forwarded and not overdue answered, and its connections back (the
        // one with the stuck call was answered by the front).
        while (stuck.in_flight.load(Ordering::SeqCst) > stuck.overdue.load(Ordering::SeqCst)
            || stuck.link.as_ref().is_some_and(|link| link.holds()))
            && since.elapsed() < drain
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        stuck.kill();
    }

    /// Stops the workers of generations nothing routes to any more and no request holds; and
    /// notices a change of the worker that serves connections (a rollout started or ended).
    fn sweep(&self) {
        let target = self
            .direct_target()
            .map_or(0, |(_, process, _)| u64::from(process.pid));
        if self.direct_last.swap(target, Ordering::SeqCst) != target {
            self.placement_changed(None);
        }
        let placed = self.placed.load_full();
        let canary = self.rollouts.canary_id();
        let current = self.host.current().id();
        let gone: Vec<u64> = placed
            .iter()
            .filter(|(&id, slot)| {
                let routed =
                    canary == Some(id) || (self.isolation == Isolation::All && current == id);
                let kept = slot
                    .as_ref()
                    .is_some_and(|slot| slot.kept.load(Ordering::SeqCst) > 0);
                let held = slot
                    .as_ref()
                    .and_then(|slot| slot.generation.upgrade())
                    .is_some_and(|g| g.in_flight() > 0);
                // Connections it serves itself go back at their next request boundary first.
                let serving = slot.as_ref().is_some_and(|slot| {
                    slot.process
                        .load()
                        .as_ref()
                        .and_then(|p| p.link.as_ref())
                        .is_some_and(|link| link.holds())
                });
                let held = held || serving;
                !routed && !kept && !held
            })
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        let _change = self.change.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = HashMap::clone(&self.placed.load());
        for id in gone {
            if let Some(Some(slot)) = map.remove(&id) {
                slot.stop();
                tracing::info!(generation = id, "worker stopped: its generation is drained");
            }
        }
        self.placed.store(Arc::new(map));
    }

    /// Sweeps every [`SWEEP`] until `stop`.
    pub(crate) async fn sweep_until(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.isolation == Isolation::None {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP) => {
                    let me = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || me.sweep()).await;
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Stops every worker (the front is stopping).
    pub(crate) fn stop_all(&self) {
        let _change = self.change.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in self.placed.load().values().flatten() {
            slot.stop();
        }
        self.placed.store(Arc::default());
    }

    /// What status shows of each generation routed under isolation.
    pub(crate) fn status(&self) -> Vec<WorkerStatus> {
        let mut workers: Vec<WorkerStatus> = self
            .placed
            .load()
            .iter()
            .map(|(&generation, placed)| match placed {
                None => WorkerStatus {
                    generation,
                    state: WorkerState::InFront,
                    pid: None,
                    uptime_ms: 0,
                    in_flight: 0,
                    connections: 0,
                    restarts: 0,
                    crashes: 0,
                    reason: Some("its plugins hold state".into()),
                },
                Some(slot) => slot.status(self.config.crash_window_ms),
            })
            .collect();
        workers.sort_by_key(|w| w.generation);
        workers
    }

    fn count_running(&self) {
        let running = self
            .placed
            .load()
            .values()
            .flatten()
            .filter(|slot| slot.process.load().is_some())
            .count();
        self.metrics.workers().set_running(running);
    }
}
