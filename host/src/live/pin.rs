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
//! | [`OwnedPin`] | [`Host::pin_for`](crate::Host::pin_for), [`Host::pin_owned`](crate::Host::pin_owned) | an `Arc` clone (shared by every core) and a registration in the calls in flight (a mutex of the thread's own shard) | until dropped (`Send`, crosses `.await`) | yes, with what it can reach and since when |
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
use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Cache};

use crate::live::calls::{Call, CallSite, LabelId, Reach, Ticket};
use crate::live::gate::Gate;
use crate::live::generation::Generation;

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
/// Every owned pin is a call in flight while it lives: counted in
/// [`Host::status`](crate::Host::status), listed with its age and label, and waited for by a
/// migration or a save that concerns a plugin it can reach.
pub struct OwnedPin {
    generation: Arc<Generation>,
    reach: Reach,
    label: LabelId,
    ticket: Ticket,
}

impl OwnedPin {
    /// Pins `generation` as a call that may reach any of its plugins, and counts it in flight.
    pub fn new(generation: Arc<Generation>) -> Self {
        Self::register(generation, Reach::ALL, 0)
    }

    /// Pins `generation` for a call entering through `site`'s export: it reaches what that
    /// export reaches, and is listed under `site`'s label.
    pub fn for_site(generation: Arc<Generation>, site: &CallSite) -> Self {
        let reach = generation.reach_of(&site.export);
        Self::register(generation, reach, site.label_id)
    }

    pub(crate) fn register(generation: Arc<Generation>, reach: Reach, label: LabelId) -> Self {
        let ticket = generation.calls.register(Call {
            generation: generation.id(),
            reach,
            started: Instant::now(),
            label,
        });
        Self {
            generation,
            reach,
            label,
            ticket,
        }
    }

    /// The pinned generation, shared.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// What the pinned call can reach.
    pub(crate) fn reach(&self) -> Reach {
        self.reach
    }
}

/// Another call in flight on the same generation, reaching the same plugins, under the same
/// label, from now.
impl Clone for OwnedPin {
    fn clone(&self) -> Self {
        Self::register(Arc::clone(&self.generation), self.reach, self.label)
    }
}

impl Drop for OwnedPin {
    fn drop(&mut self) {
        self.generation.calls.release(&self.ticket);
    }
}

impl Deref for OwnedPin {
    type Target = Generation;
    #[inline]
    fn deref(&self) -> &Generation {
        &self.generation
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
    /// The generation `cache` holds, counted in flight (admitted through the gate); `None`
    /// only while it waits at the gate.
    held: Option<OwnedPin>,
}

impl<'h> PinCache<'h> {
    pub(crate) fn new(current: &'h ArcSwap<Generation>, gate: &'h Gate) -> Self {
        let cache = Cache::new(current);
        let mut this = Self {
            cache,
            gate,
            held: None,
        };
        this.admit();
        this
    }

    /// The generation current now; it stays valid while the borrow lasts, so one request's
    /// calls all go to it. Waits while a publish that migrates state holds the request
    /// boundary, like [`Host::pin_owned`](crate::Host::pin_owned).
    #[inline]
    pub fn pin(&mut self) -> &Generation {
        let fresh = match &self.held {
            Some(held) => Arc::ptr_eq(self.cache.load(), &held.generation) && !self.gate.closing(),
            None => false,
        };
        if !fresh {
            self.admit();
        }
        self.held.as_deref().expect("admitted")
    }

    /// Takes a counted pin on the current generation through the gate. The pin held so far is
    /// dropped first, so a closer holding the boundary sees this cache leave the old
    /// generation.
    #[cold]
    fn admit(&mut self) {
        self.held = None;
        self.held = Some(loop {
            let candidate = OwnedPin::new(Arc::clone(self.cache.load()));
            if self.gate.admits(&candidate, candidate.reach()) {
                break candidate;
            }
            drop(candidate);
            self.gate.wait_open();
        });
    }
}

impl fmt::Debug for PinCache<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.held.as_ref().map(|held| held.id());
        f.debug_tuple("PinCache").field(&id).finish()
    }
}
