//! The request boundary a migrating publish, or a state save, closes (OTP's suspend, per
//! request, and only for the requests concerned).
//!
//! Counted pins ([`OwnedPin`](crate::OwnedPin), taken by [`Host::pin_for`],
//! [`Host::pin_owned`] and their `try_` forms, and a [`PinCache`](crate::PinCache)'s) are
//! admitted through the gate: a pin is taken (registered in flight) first, then the gate is
//! checked, and a pin taken while the gate holds it is dropped and retried once the gate opens.
//! A closer names the plugins it holds; a pin is held only if its call can reach one of them
//! ([`Reach`]), so requests that cannot touch a migrating plugin never pause. The closer then
//! waits for every registered call that can reach them to end. Both sides order their two steps
//! with `SeqCst` fences, so either the closer sees the call in flight and waits for it, or the
//! request sees the gate closed and waits: no request runs on the old state after the
//! migration read it.
//!
//! [`Host::pin_for`]: crate::Host::pin_for
//! [`Host::pin_owned`]: crate::Host::pin_owned

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::live::calls::Reach;
use crate::live::generation::Generation;

#[derive(Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    /// The plugins the gate holds while it is closed (set before `closed`, cleared after).
    held: Mutex<Vec<String>>,
    /// Held by the one closer that closed the gate, for as long as it is closed.
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
    /// Closes the gate for the calls that can reach `plugins` (waiting for another closer that
    /// holds it).
    pub(crate) fn close(&self, plugins: Vec<String>) -> Closed<'_> {
        let closer = self.closer.lock().unwrap_or_else(|e| e.into_inner());
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = plugins;
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Closed {
            gate: self,
            _closer: closer,
        }
    }

    /// Whether a pin just taken on `generation`, reaching `reach`, may be used: call after
    /// taking it.
    ///
    /// A pin on a generation a migrating release replaced is refused too: the request loaded
    /// it before the switch and registered after the closer stopped waiting, so the gate it
    /// sees open is the one the switch reopened. The closer retires the old generation before
    /// it opens the gate, so a request that sees the gate open again sees the retirement.
    #[inline]
    pub(crate) fn admits(&self, generation: &Generation, reach: Reach) -> bool {
        fence(Ordering::SeqCst);
        let passes =
            !self.closed.load(Ordering::SeqCst) || self.admits_while_closed(generation, reach);
        passes && !generation.is_retired()
    }

    /// Whether the gate, closed now, lets a call reaching `reach` on `generation` through: it
    /// does if the call cannot reach a held plugin.
    #[cold]
    fn admits_while_closed(&self, generation: &Generation, reach: Reach) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        !reach.touches(generation.mask_of(held.iter().map(String::as_str)))
    }

    /// Whether a closer is closing or holding the gate, read cheaply (no fence): a holder of a
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
        self.gate
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.gate.opened.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_generation_a_migrating_release_replaced_is_never_admitted_again() {
        let gate = Gate::default();
        let (old, new) = (
            Generation::empty(Arc::default()),
            Generation::empty(Arc::default()),
        );
        assert!(gate.admits(&old, Reach::ALL));
        // The switch: closed, the old generation retired, opened again. A request that loaded
        // the old generation before the switch and registers only now sees the gate open, and
        // must still be turned away (to take the new one).
        let closed = gate.close(vec!["counter".into()]);
        old.retire();
        drop(closed);
        assert!(!gate.admits(&old, Reach::ALL));
        assert!(!gate.admits(&old, Reach::NONE), "whatever it reaches");
        assert!(gate.admits(&new, Reach::ALL));
    }
}
