//! Plugin code that nothing can stop (lifecycle hooks), run on a thread of its own under a
//! deadline.
//!
//! The caller waits until the code returns or its limit passes. Past the limit the caller moves
//! on and the code runs on: whatever the closure captured (an `Arc` of its plugin, or the library
//! itself) keeps the code mapped, and when it returns its value goes to `late` instead of the
//! caller. The same rule as initialisers ([`crate::init`]), for code that runs more than once.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What waiting for the code ended with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<T> {
    /// It returned in time.
    Done(T),
    /// It was still running at the deadline; its value will go to `late`.
    TimedOut,
}

enum Slot<T> {
    Waiting,
    Done(T),
    /// The caller stopped waiting.
    Abandoned,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    returned: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `code` on a new thread named `name` and waits for it at most `limit`. If it returns
/// later, `late` gets its value on that thread. If no thread can be started, `code` runs here,
/// without a deadline (logged).
pub(crate) fn run_within<T: Send + 'static>(
    name: &str,
    limit: Duration,
    code: impl FnOnce() -> T + Send + 'static,
    late: impl FnOnce(T) + Send + 'static,
) -> Outcome<T> {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot::Waiting),
        returned: Condvar::new(),
    });
    let theirs = Arc::clone(&shared);
    // `code` moves into the thread only if it starts; the closure is kept to run it here if not.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() -> T + Send>>(1);
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let Ok(code) = rx.recv() else { return };
            let value = code();
            let mut slot = theirs.lock();
            if matches!(*slot, Slot::Abandoned) {
                drop(slot);
                late(value);
            } else {
                *slot = Slot::Done(value);
                theirs.returned.notify_all();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, thread = name, "could not start a thread; running without a deadline");
        return Outcome::Done(code());
    }
    // The thread is waiting for it: the send cannot fail.
    let _ = tx.send(Box::new(code));

    let deadline = Instant::now() + limit;
    let mut slot = shared.lock();
    loop {
        match std::mem::replace(&mut *slot, Slot::Waiting) {
            Slot::Done(value) => return Outcome::Done(value),
            Slot::Waiting | Slot::Abandoned => {}
        }
        let now = Instant::now();
        if now >= deadline {
            *slot = Slot::Abandoned;
            return Outcome::TimedOut;
        }
        slot = shared
            .returned
            .wait_timeout(slot, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn code_that_returns_in_time_gives_its_value_to_the_caller() {
        let outcome = run_within("t", Duration::from_secs(5), || 7, |_| panic!("not late"));
        assert_eq!(outcome, Outcome::Done(7));
    }

    #[test]
    fn code_past_its_deadline_runs_on_and_hands_its_value_to_late() {
        let (release, wait) = mpsc::channel::<()>();
        let (late_tx, late_rx) = mpsc::channel();
        let outcome = run_within(
            "t",
            Duration::from_millis(20),
            move || {
                wait.recv().unwrap();
                8
            },
            move |v| late_tx.send(v).unwrap(),
        );
        assert_eq!(outcome, Outcome::TimedOut);
        release.send(()).unwrap();
        assert_eq!(late_rx.recv_timeout(Duration::from_secs(5)), Ok(8));
    }
}
