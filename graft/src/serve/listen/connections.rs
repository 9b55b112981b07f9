//! The connections of one listener, for the header-read timeout: each records when it went
//! idle and whether a request is being served, on a clock the sweeper advances, and one sweeper
//! per listener closes, every [`SWEEPS_PER_TIMEOUT`]th of the timeout, those idle for longer
//! than it (see `mod.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::stopped;

/// How often, per timeout, the sweeper looks for idle connections.
const SWEEPS_PER_TIMEOUT: u32 = 4;

/// What the sweeper knows of one connection.
pub(super) struct Tracked {
    /// Requests being served (0 or 1 on HTTP/1 without pipelining).
    pub(super) busy: AtomicUsize,
    /// Whether a request was ever served on it (by this server).
    pub(super) served: AtomicBool,
    /// When it last went idle, in milliseconds since the listener started.
    pub(super) idle_since_ms: AtomicU64,
    /// Closes it: at once (idle), or after its request (`graceful`, on stop).
    pub(super) close: Notify,
    pub(super) graceful: AtomicBool,
    /// The listener's coarse clock ([`Connections::coarse_ms`]), held by each connection so
    /// that a request ending reads it without touching anything every connection shares.
    pub(super) clock: Arc<AtomicU64>,
}

/// The connections of one listener, for the sweeper.
pub(super) struct Connections {
    started: Instant,
    /// Milliseconds since `started`, as of the sweeper's last tick: the clock requests read,
    /// which costs them no system call.
    coarse_ms: Arc<AtomicU64>,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Connections {
    /// New, with a sweeper closing those idle longer than `timeout` until `stop`.
    pub(super) fn start(timeout: Duration, stop: watch::Receiver<bool>) -> Arc<Self> {
        let connections = Arc::new(Self {
            started: Instant::now(),
            coarse_ms: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
        });
        tokio::spawn(sweep(Arc::clone(&connections), timeout, stop));
        connections
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.coarse_ms.load(Ordering::Relaxed)
    }

    pub(super) fn track(&self) -> (u64, Arc<Tracked>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            busy: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
            graceful: AtomicBool::new(false),
            clock: Arc::clone(&self.coarse_ms),
        });
        self.lock().insert(id, Arc::clone(&tracked));
        (id, tracked)
    }

    pub(super) fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connections idle (no request being served) for longer than `timeout`.
    pub(super) fn sweep(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.coarse_ms.store(now, Ordering::Relaxed);
        for tracked in self.lock().values() {
            let idle_since = tracked.idle_since_ms.load(Ordering::Relaxed);
            if tracked.busy.load(Ordering::Relaxed) == 0
                && now.saturating_sub(idle_since) > timeout_ms
            {
                tracked.close.notify_one();
            }
        }
    }

    /// Closes the connection idle (no request being served) the longest, if any is.
    pub(super) fn close_longest_idle(&self) {
        let open = self.lock();
        let idle = open
            .values()
            .filter(|t| t.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|t| t.idle_since_ms.load(Ordering::Relaxed));
        if let Some(tracked) = idle {
            tracked.close.notify_one();
        }
    }

    /// Asks every connection to finish the request it is serving and close.
    pub(super) fn stop_all(&self) {
        for tracked in self.lock().values() {
            tracked.graceful.store(true, Ordering::Relaxed);
            tracked.close.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes idle connections until `stop`.
pub(super) async fn sweep(
    connections: Arc<Connections>,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let every = (timeout / SWEEPS_PER_TIMEOUT).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => connections.sweep(timeout),
            () = stopped(stop.clone()) => return,
        }
    }
}
