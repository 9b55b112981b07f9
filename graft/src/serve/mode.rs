//! Where a route's plugin calls run: on the runtime's worker thread (inline), or on the
//! blocking pool.
//!
//! A plugin call is synchronous code. Run inline it costs nothing extra, but while it runs the
//! worker thread serves no other request, so a call that sleeps, does I/O or computes for long
//! stalls every connection on that worker (tokio's rule of thumb: no more than 10 to 100 µs
//! between awaits). Run on the blocking pool it never stalls a worker, but each call pays a
//! hand-off to another thread and back (a mutex, two wake-ups), which halves the throughput of
//! a service of fast calls. So each route picks ([`CallMode`]):
//!
//! - `inline`: always on the worker. For exports known to be fast.
//! - `blocking`: always on the pool. For exports that block or run long.
//! - `auto` (the default): measures every call against the inline budget
//!   (`inline_budget_us`, default 100 µs) and keeps a score per route ([`Learned`]): a call over
//!   the budget adds [`SLOW_STEP`], one within it takes one off, and calls run on the pool while
//!   the score is at least [`BLOCKING_AT`]. A route starts on the pool until its first call
//!   within budget; an export that is always slow stays there; a fast one runs inline, where a
//!   rare slow call (a preempted thread, a cold cache) does not move it, but slow calls more
//!   often than about one in sixteen do. The price of `auto`: the slow calls it has not yet
//!   learned about run on a worker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use crate::config::CallMode;

/// What a call over the budget adds to the score.
pub const SLOW_STEP: u32 = 16;
/// The score from which calls run on the pool.
pub const BLOCKING_AT: u32 = 2 * SLOW_STEP;
/// The highest score: an export that turns fast again is inline after this many calls, less
/// [`BLOCKING_AT`].
const MAX_SCORE: u32 = 4 * SLOW_STEP;

/// One `auto` route's learned placement.
#[derive(Debug)]
pub struct Learned {
    budget: Duration,
    score: AtomicU32,
}

impl Learned {
    /// A route not yet measured: its first calls run on the pool.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            score: AtomicU32::new(BLOCKING_AT),
        }
    }

    /// Whether the next call runs on the pool.
    #[inline]
    pub fn blocking(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= BLOCKING_AT
    }

    /// Records how long a call took. A fast call on a route with a zero score writes nothing,
    /// so the common case shares no cache line between workers.
    #[inline]
    pub fn record(&self, took: Duration) {
        let slow = took > self.budget;
        if !slow && self.score.load(Ordering::Relaxed) == 0 {
            return;
        }
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |score| {
                Some(if slow {
                    (score + SLOW_STEP).min(MAX_SCORE)
                } else {
                    score.saturating_sub(1)
                })
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(100);
    const FAST: Duration = Duration::from_micros(5);
    const SLOW: Duration = Duration::from_millis(5);

    #[test]
    fn a_new_route_is_measured_on_the_pool_and_goes_inline_after_a_fast_call() {
        let learned = Learned::new(BUDGET);
        assert!(learned.blocking());
        learned.record(FAST);
        assert!(!learned.blocking());
    }

    #[test]
    fn an_always_slow_export_stays_on_the_pool() {
        let learned = Learned::new(BUDGET);
        for _ in 0..1000 {
            learned.record(SLOW);
            assert!(learned.blocking());
        }
    }

    #[test]
    fn a_rare_slow_call_keeps_a_fast_route_inline_and_frequent_ones_move_it() {
        let learned = Learned::new(BUDGET);
        for i in 0..10_000 {
            learned.record(if i % 100 == 99 { SLOW } else { FAST });
            assert!(!learned.blocking(), "call {i}");
        }
        let moved = (0..100).position(|i| {
            learned.record(if i % 4 == 0 { SLOW } else { FAST });
            learned.blocking()
        });
        assert!(moved.is_some(), "one slow call in four moves the route");
        // Fast again: back inline within MAX_SCORE calls.
        for _ in 0..MAX_SCORE {
            learned.record(FAST);
        }
        assert!(!learned.blocking());
    }
}
