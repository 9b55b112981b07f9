//! A generation's worker slot: the process serving it now (replaced on a restart or a
//! recycle), its state, and its crashes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use graft_host::Generation;

use super::process::Process;
use crate::api::{ApiError, ErrorCode, WorkerState, WorkerStatus};

/// A generation's worker, started, serving, restarting or gone.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(super) generation: Weak<Generation>,
    pub(super) id: u64,
    pub(super) dir: PathBuf,
    pub(super) process: ArcSwapOption<Process>,
    pub(super) state: Mutex<(WorkerState, Option<String>)>,
    pub(super) changed: tokio::sync::Notify,
    pub(super) crashes: Mutex<VecDeque<Instant>>,
    pub(super) restarts: std::sync::atomic::AtomicU64,
    /// [`Kept`]s alive: the generation is about to go live.
    pub(super) kept: std::sync::atomic::AtomicUsize,
}

/// Keeps a generation's worker while its release goes live (see [`Workers::start`]).
#[derive(Debug)]
#[must_use = "the worker is kept only while this lives"]
pub(crate) struct Kept(pub(super) Option<Arc<Slot>>);

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.kept.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Slot {
    pub(super) fn state(&self) -> (WorkerState, Option<String>) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set(&self, state: WorkerState, reason: Option<String>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (state, reason);
        self.changed.notify_waiters();
    }

    /// Records a crash; returns how many fell within `window`.
    pub(super) fn crashed(&self, window: Duration) -> usize {
        let mut crashes = self.crashes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|&at| now.duration_since(at) > window)
        {
            crashes.pop_front();
        }
        crashes.len()
    }

    pub(super) fn stop(&self) {
        self.set(WorkerState::Stopped, None);
        if let Some(process) = self.process.swap(None) {
            process.stop();
        }
        let dir = self.dir.clone();
        // The worker's own files go when it exits; the release links now.
        let _ = std::fs::remove_dir_all(dir.join("release"));
    }

    /// The serving process, waited for (while it starts or restarts) until `deadline`, or
    /// `start_timeout` without one.
    pub(super) async fn serving(
        &self,
        deadline: Option<tokio::time::Instant>,
        start_timeout: Duration,
    ) -> Result<Arc<Process>, ApiError> {
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + start_timeout);
        loop {
            let changed = self.changed.notified();
            if let Some(process) = self.process.load_full() {
                return Ok(process);
            }
            let (state, reason) = self.state();
            if matches!(state, WorkerState::Failed | WorkerState::Stopped) {
                let message = format!(
                    "generation {}'s worker is not serving ({})",
                    self.id,
                    reason.as_deref().unwrap_or("stopped")
                );
                return Err(ApiError::new(ErrorCode::WorkerFailed, message));
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                let message = format!("generation {}'s worker is not serving yet", self.id);
                return Err(ApiError::new(ErrorCode::Unavailable, message));
            }
        }
    }

    pub(super) fn status(&self, window_ms: u64) -> WorkerStatus {
        let (state, reason) = self.state();
        let process = self.process.load_full();
        let window = Duration::from_millis(window_ms);
        let crashes = self
            .crashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|at| at.elapsed() <= window)
            .count();
        WorkerStatus {
            generation: self.id,
            state,
            pid: process.as_ref().map(|p| p.pid),
            uptime_ms: process.as_ref().map_or(0, |p| {
                u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX)
            }),
            in_flight: process
                .as_ref()
                .map_or(0, |p| p.in_flight.load(Ordering::Relaxed)),
            connections: process
                .as_ref()
                .and_then(|p| p.link.as_ref())
                .map_or(0, |link| link.connections()),
            restarts: self.restarts.load(Ordering::Relaxed),
            crashes,
            reason,
        }
    }
}
