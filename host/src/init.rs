//! Plugin initialisers, run once per loaded library, on a thread of their own, under a deadline.
//!
//! An initialiser is plugin code: it may take as long as it likes, and nothing can stop it. So a
//! deploy never runs it on its own thread and never waits for it under a lock. The first deploy
//! that needs a library initialised starts the initialiser on a fresh thread ([`InitCell::claim`],
//! then [`InitCell::finish`] from that thread); every deploy that needs it waits until it is done
//! or until its own deadline ([`InitCell::wait`]). Past the deadline the deploy is refused and the
//! initialiser is *abandoned*: it keeps running (the thread holds the library, so its code stays
//! mapped), status reports it, and the library is let go once it returns.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Where a library's initialiser is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitState {
    /// Nobody needed it yet.
    NotStarted,
    /// Running on its thread; `abandoned` once a deploy stopped waiting for it.
    Running {
        /// Whether a deploy gave up waiting (its deadline passed).
        abandoned: bool,
    },
    /// Returned: `Ok`, or the plugin's error (a panic included).
    Done(Result<(), String>),
}

/// Why waiting for an initialiser did not end in success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitFailure {
    /// It returned an error or panicked.
    Failed(String),
    /// It was still running at the deadline.
    TimedOut,
}

/// The initialiser state of one loaded library.
#[derive(Debug)]
pub(crate) struct InitCell {
    state: Mutex<InitState>,
    changed: Condvar,
}

impl Default for InitCell {
    fn default() -> Self {
        Self {
            state: Mutex::new(InitState::NotStarted),
            changed: Condvar::new(),
        }
    }
}

impl InitCell {
    /// Claims the run: `true` for exactly one caller, who must then run the initialiser and call
    /// [`InitCell::finish`].
    pub(crate) fn claim(&self) -> bool {
        let mut state = self.lock();
        if *state == InitState::NotStarted {
            *state = InitState::Running { abandoned: false };
            true
        } else {
            false
        }
    }

    /// Records what the initialiser returned and wakes every waiter.
    pub(crate) fn finish(&self, result: Result<(), String>) {
        *self.lock() = InitState::Done(result);
        self.changed.notify_all();
    }

    /// Waits until the initialiser has returned, or until `deadline`; past it, the run is marked
    /// abandoned.
    pub(crate) fn wait(&self, deadline: Instant) -> Result<(), InitFailure> {
        let mut state = self.lock();
        loop {
            match &mut *state {
                InitState::Done(Ok(())) => return Ok(()),
                InitState::Done(Err(message)) => return Err(InitFailure::Failed(message.clone())),
                InitState::NotStarted => {
                    return Err(InitFailure::Failed(
                        "the initialiser was never started".into(),
                    ))
                }
                InitState::Running { abandoned } => {
                    let now = Instant::now();
                    if now >= deadline {
                        *abandoned = true;
                        return Err(InitFailure::TimedOut);
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Where the initialiser is now.
    pub(crate) fn state(&self) -> InitState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, InitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_claim_wins_waiters_see_the_result_and_a_late_one_is_abandoned() {
        let cell = Arc::new(InitCell::default());
        assert!(cell.claim());
        assert!(!cell.claim(), "a second claim loses");
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(cell.wait(soon), Err(InitFailure::TimedOut));
        assert_eq!(cell.state(), InitState::Running { abandoned: true });

        let finisher = Arc::clone(&cell);
        let thread = std::thread::spawn(move || finisher.finish(Err("no config".into())));
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            cell.wait(later),
            Err(InitFailure::Failed("no config".into()))
        );
        thread.join().unwrap();
    }
}
