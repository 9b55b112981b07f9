//! Pins: how a piece of work holds the generation it started in.
//!
//! A pin keeps its generation, and so the generation's libraries, alive: when the last pin of a
//! replaced generation drops, the generation drops and its libraries are released per the
//! host's [`UnloadPolicy`](crate::UnloadPolicy). Three kinds, by how long the work is and where
//! it runs:
//!
//! | pin | taken by | costs per pin | holds the generation | counted in flight |
//! |---|---|---|---|---|
//! | [`Pin`] | [`Host::pin`](crate::Host::pin) | an `arc_swap` guard: two uncontended atomic operations on the thread's own slot | until dropped (synchronous work only) | no |
//! | [`OwnedPin`] | [`Host::pin_owned`](crate::Host::pin_owned) | an `Arc` clone and a counter, both shared by every core | until dropped (`Send`, crosses `.await`) | yes |
//! | [`PinCache`] | [`Host::pin_cache`](crate::Host::pin_cache) | two relaxed loads and a compare while nothing was published | **until its next pin after a publish, or its drop** | yes, one per cache |
//!
//! A `Pin` is not counted: a counter touched by every call would be shared by every core. A
//! `PinCache` is for a worker that pins in a loop; because it keeps the last generation it saw
//! until it pins again, it counts as one in flight on that generation, so status shows a
//! replaced generation an idle cache still holds, and the unload policy runs when the cache
//! moves on or is dropped. A cache passes the request boundary a migrating publish closes (it
//! lets its count go and waits), but only when it pins: an idle one holds the publish until its
//! drain deadline. Drop a worker's cache when the worker goes idle.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use crate::gate::Gate;
use crate::generation::Generation;

/// A pin on the generation that was current when it was taken; cheap, for synchronous work.
///
/// Backed by an `arc_swap` guard: no reference count is touched in the common case. Do not hold
/// one across an `.await` or for long; use [`OwnedPin`] there.
pub struct Pin(arc_swap::Guard<Arc<Generation>>);

impl Pin {
    #[inline]
    pub(crate) fn new(guard: arc_swap::Guard<Arc<Generation>>) -> Self {
        Self(guard)
    }

    /// Upgrades to an owned pin on the same generation.
    pub fn to_owned_pin(&self) -> OwnedPin {
        OwnedPin::new(Arc::clone(&self.0))
    }
}

impl Deref for Pin {
    type Target = Generation;
    #[inline]
    fn deref(&self) -> &Generation {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pin").field(&self.id()).finish()
    }
}

/// An owned pin (an `Arc` of the generation): `Send`, `'static`, fine across `.await`.
///
/// Every owned pin counts as in flight in [`Host::status`](crate::Host::status) while it lives.
pub struct OwnedPin(Arc<Generation>);

impl OwnedPin {
    /// Pins `generation` (for example a canary held beside the current one) and counts it in
    /// flight.
    pub fn new(generation: Arc<Generation>) -> Self {
        generation.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(generation)
    }
}

impl Clone for OwnedPin {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.0))
    }
}

impl Drop for OwnedPin {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Deref for OwnedPin {
    type Target = Generation;
    #[inline]
    fn deref(&self) -> &Generation {
        &self.0
    }
}

impl fmt::Debug for OwnedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedPin").field(&self.id()).finish()
    }
}

/// A worker's cached pin on the current generation: [`pin`](Self::pin) returns the generation
/// current at that moment, like [`Host::pin`](crate::Host::pin), for one relaxed load and a
/// compare instead of a guard's two atomic read-modify-writes.
///
/// Keeps the generation it last returned alive (and counted in flight) until its next pin after
/// a publish, or its drop: see the [module docs](self) for when to use one.
pub struct PinCache<'h> {
    cache: Cache<&'h ArcSwap<Generation>, Arc<Generation>>,
    gate: &'h Gate,
    /// The generation `cache` holds, counted in flight (admitted through the gate).
    held: OwnedPin,
}

impl<'h> PinCache<'h> {
    pub(crate) fn new(current: &'h ArcSwap<Generation>, gate: &'h Gate) -> Self {
        let mut cache = Cache::new(current);
        let held = OwnedPin::new(Arc::clone(cache.load()));
        let mut this = Self { cache, gate, held };
        this.admit();
        this
    }

    /// The generation current now; it stays valid while the borrow lasts, so one request's
    /// calls all go to it. Waits while a publish that migrates state holds the request
    /// boundary, like [`Host::pin_owned`](crate::Host::pin_owned).
    #[inline]
    pub fn pin(&mut self) -> &Generation {
        let current = self.cache.load();
        if !Arc::ptr_eq(current, &self.held.0) || self.gate.closing() {
            self.admit();
        }
        &self.held.0
    }

    /// Takes a counted pin on the current generation through the gate. The count held so far
    /// is dropped first (parked on an empty generation no publish waits for), so a publish
    /// holding the boundary sees this cache leave the old generation.
    #[cold]
    fn admit(&mut self) {
        self.held = OwnedPin::new(Arc::new(Generation::empty()));
        self.held = loop {
            self.gate.wait_open();
            let candidate = OwnedPin::new(Arc::clone(self.cache.load()));
            if self.gate.admits() {
                break candidate;
            }
        };
    }
}

impl fmt::Debug for PinCache<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinCache").field(&self.held.id()).finish()
    }
}
