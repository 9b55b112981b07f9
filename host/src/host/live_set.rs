//! The live set: the generation current now, the ones still draining, and the request boundary
//! in front of them.
//!
//! Requests pin here (one atomic load, or two relaxed loads for a [`PinCache`]); a publish
//! stores here, once; a migration or a state save closes the boundary here for the requests
//! that can reach the plugins it touches, and waits for the calls in flight on every
//! generation to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::live::calls::{self, Call, Calls};
use crate::live::gate::{Closed, Gate};
use crate::live::generation::Generation;
use crate::live::pin::{OwnedPin, Pin, PinCache};
use crate::status::CallStatus;

/// How many calls in flight a refusal or a status lists at most (the oldest).
pub(crate) const MAX_LISTED: usize = 16;

/// What is told of each generation made current ([`crate::Host::on_switch`]).
pub(super) type Switched = Box<dyn Fn(&Arc<Generation>) + Send + Sync>;

/// The current generation, the generations still alive, and the request boundary.
pub(super) struct LiveSet {
    current: ArcSwap<Generation>,
    /// The request boundary a migrating publish (or a state save) closes.
    gate: Gate,
    /// The calls in flight on every generation (see [`crate::live::calls`]).
    calls: Arc<Calls>,
    /// Every generation prepared and not yet dropped, for status and for the calls a
    /// migration waits for.
    generations: Mutex<Vec<Weak<Generation>>>,
    /// Told of each generation made current, right after the store.
    switched: std::sync::OnceLock<Switched>,
}

impl LiveSet {
    /// A live set with the empty generation 0 current.
    pub(super) fn new() -> Self {
        let calls = Arc::new(Calls::default());
        let empty = Generation::empty(Arc::clone(&calls));
        empty.mark_published();
        Self {
            current: ArcSwap::from_pointee(empty),
            gate: Gate::default(),
            calls,
            generations: Mutex::new(Vec::new()),
            switched: std::sync::OnceLock::new(),
        }
    }

    /// Sets what is told of each generation made current (once; `false` if it was set).
    pub(super) fn on_switch(&self, told: Switched) -> bool {
        self.switched.set(told).is_ok()
    }

    /// The calls register every generation of this set counts its calls in.
    pub(super) fn calls(&self) -> &Arc<Calls> {
        &self.calls
    }

    #[inline]
    pub(super) fn pin(&self) -> Pin {
        Pin::new(self.current.load())
    }

    pub(super) fn pin_cache(&self) -> PinCache<'_> {
        PinCache::new(&self.current, &self.gate)
    }

    pub(super) fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub(super) fn current_id(&self) -> u64 {
        self.current.load().id()
    }

    /// Lets a counted pin through the request boundary: `None`, the pin dropped, while the
    /// boundary holds a plugin the pin can reach.
    pub(super) fn try_admit(&self, pin: OwnedPin) -> Option<OwnedPin> {
        self.gate.admits(&pin, pin.reach()).then_some(pin)
    }

    /// Pins what `try_pin` returns, waiting at the boundary while it returns `None`.
    pub(super) fn pin_waiting(&self, try_pin: impl Fn() -> Option<OwnedPin>) -> OwnedPin {
        loop {
            if let Some(pin) = try_pin() {
                return pin;
            }
            self.gate.wait_open();
        }
    }

    /// Makes `generation` current: one atomic store. Returns the generation it replaced.
    pub(super) fn swap(&self, generation: &Arc<Generation>) -> Arc<Generation> {
        generation.mark_published();
        let replaced = self.current.swap(Arc::clone(generation));
        if let Some(told) = self.switched.get() {
            told(generation);
        }
        replaced
    }

    /// Generations prepared and still alive (the current one, replaced ones draining, prepared
    /// ones not published).
    pub(super) fn generations(&self) -> Vec<Arc<Generation>> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.retain(|g| g.strong_count() > 0);
        generations.iter().filter_map(Weak::upgrade).collect()
    }

    /// Remembers a generation until it drops.
    pub(super) fn track(&self, generation: &Arc<Generation>) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.retain(|g| g.strong_count() > 0);
        generations.push(Arc::downgrade(generation));
    }

    /// Closes the request boundary for the calls that can reach `plugins` and waits for those
    /// in flight to end, until `limit`. Returns the closed gate and when it closed, or (the
    /// gate open again) the calls still in flight at the deadline, oldest first.
    pub(super) fn quiesce(
        &self,
        plugins: Vec<String>,
        limit: Duration,
    ) -> Result<(Closed<'_>, Instant), Vec<CallStatus>> {
        let names = plugins.clone();
        let closed = self.gate.close(plugins);
        let paused = Instant::now();
        let deadline = paused + limit;
        loop {
            let reaching = self.calls_reaching(&names);
            if reaching.is_empty() {
                return Ok((closed, paused));
            }
            if Instant::now() >= deadline {
                return Err(calls::oldest(reaching, MAX_LISTED));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The calls in flight, on any generation, that can reach a plugin named in `plugins`.
    fn calls_reaching(&self, plugins: &[String]) -> Vec<Call> {
        let mut generations = self.generations();
        generations.push(self.current.load_full());
        let masks: HashMap<u64, u64> = generations
            .iter()
            .map(|g| (g.id(), g.mask_of(plugins.iter().map(String::as_str))))
            .collect();
        self.calls.matching(|call| {
            // A generation not found cannot be: a call's pin keeps its generation alive, and
            // every generation but the empty first one is tracked. Assume the worst.
            let mask = masks.get(&call.generation).copied().unwrap_or(u64::MAX);
            call.reach.touches(mask)
        })
    }
}
