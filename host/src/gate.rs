//! The request boundary a migrating publish closes (OTP's suspend, per request).
//!
//! Counted pins ([`OwnedPin`](crate::OwnedPin), taken by [`Host::pin_owned`] and
//! [`Host::try_pin_owned`], and a [`PinCache`](crate::PinCache)'s) are admitted through the gate: a pin is taken first, then the gate
//! is checked, and a pin taken while it is closed is dropped and retried once it opens. A
//! migrating publish closes the gate first, then waits for every counted pin to drop. Both
//! sides order their two steps with `SeqCst` fences, so either the publish sees the pin in
//! flight and waits for it, or the request sees the gate closed and waits: no request runs on
//! the old state after the migration read it.
//!
//! [`Host::pin_owned`]: crate::Host::pin_owned
//! [`Host::try_pin_owned`]: crate::Host::try_pin_owned

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    /// Held by the one publish that closed the gate, for as long as it is closed.
    closer: Mutex<()>,
    waiting: Mutex<()>,
    opened: Condvar,
}

/// The gate closed; opens it again when dropped.
pub(crate) struct Closed<'g> {
    gate: &'g Gate,
    _closer: MutexGuard<'g, ()>,
}

impl Gate {
    /// Closes the gate (waiting for another publish that holds it closed).
    pub(crate) fn close(&self) -> Closed<'_> {
        let closer = self.closer.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Closed {
            gate: self,
            _closer: closer,
        }
    }

    /// Whether a pin just taken may be used: call after taking it.
    #[inline]
    pub(crate) fn admits(&self) -> bool {
        fence(Ordering::SeqCst);
        !self.closed.load(Ordering::SeqCst)
    }

    /// Whether a publish is closing or holding the gate, read cheaply (no fence): a holder of a
    /// counted pin that sees it lets the pin go and passes the gate again ([`Gate::admits`]).
    #[inline]
    pub(crate) fn closing(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Blocks until the gate is open.
    pub(crate) fn wait_open(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while self.closed.load(Ordering::SeqCst) {
            waiting = self.opened.wait(waiting).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        let _waiting = self.gate.waiting.lock().unwrap_or_else(|e| e.into_inner());
        self.gate.closed.store(false, Ordering::SeqCst);
        self.gate.opened.notify_all();
    }
}
