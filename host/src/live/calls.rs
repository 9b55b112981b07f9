//! The calls in flight: every counted pin ([`OwnedPin`](crate::OwnedPin)) is registered here
//! for as long as it lives, with its generation, what it can reach and when it started.
//!
//! A publish that migrates state, and a save that copies it, must wait only for the requests
//! that can touch the plugins concerned: a request entering through an export reaches the
//! exporting plugin and, transitively, every plugin whose exports it imports (the link graph
//! says which: [`Reach`]). The registry is what they wait on, and what status and refusals
//! name ("`POST /slow` on generation 3, for 2.4 s").
//!
//! Registering costs one uncontended mutex per pin and per drop: the registry is sharded, and
//! a thread registers in its own shard (calls that move between threads, as async tasks do,
//! release from wherever they end).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use slab::Slab;

use crate::live::generation::Export;
use crate::status::CallStatus;

/// The plugins a call can reach, by position in its generation: bit `i` for the plugin at
/// position `i`. A generation of more than 64 plugins gives every call [`Reach::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reach(pub(crate) u64);

impl Reach {
    /// Every plugin: what a pin that names no export may reach.
    pub(crate) const ALL: Self = Self(u64::MAX);
    /// No plugin (a call to an export its generation does not have).
    pub(crate) const NONE: Self = Self(0);

    /// Whether the call can reach a plugin of `plugins` (a mask of positions).
    pub(crate) fn touches(self, plugins: u64) -> bool {
        self.0 & plugins != 0
    }
}

/// What a request is about to call, for the host to admit it and account for it: the export it
/// enters through and a label naming it in status and errors (`POST /cart/{id}`). Made once
/// per route and cloned for nothing: requests borrow it.
///
/// A pin taken for a call site ([`Host::pin_for`](crate::Host::pin_for)) is held at the
/// request boundary only while a migration or a save concerns a plugin the export can reach;
/// a plain [`Host::pin_owned`](crate::Host::pin_owned) is held by all of them.
#[derive(Debug, Clone)]
pub struct CallSite {
    pub(crate) export: Export,
    label: Arc<str>,
    /// The label's number in [`LABELS`]: what a call registers.
    pub(crate) label_id: LabelId,
}

impl CallSite {
    /// A call site for `export`, named `label` in status and errors.
    pub fn new(export: Export, label: impl Into<Arc<str>>) -> Self {
        let label = label.into();
        Self {
            export,
            label_id: intern(&label),
            label,
        }
    }

    /// The export requests enter through.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A call site's label, by number (0: none). Labels are interned once per call site, so a
/// call registers a number and touches no counter other calls share (an `Arc`'s would be).
pub(crate) type LabelId = u32;

/// Every call site label seen in this process, numbered from 1.
static LABELS: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());

fn labels() -> MutexGuard<'static, Vec<Arc<str>>> {
    LABELS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The number of `label`, numbering it if it is new.
pub(crate) fn intern(label: &Arc<str>) -> LabelId {
    let mut labels = labels();
    let at = match labels.iter().position(|l| l == label) {
        Some(at) => at,
        None => {
            labels.push(Arc::clone(label));
            labels.len() - 1
        }
    };
    LabelId::try_from(at + 1).unwrap_or(0)
}

/// One call in flight.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) generation: u64,
    pub(crate) reach: Reach,
    pub(crate) started: Instant,
    pub(crate) label: LabelId,
}

impl Call {
    pub(crate) fn status(&self, now: Instant) -> CallStatus {
        let label = match self.label {
            0 => None,
            id => labels().get(id as usize - 1).map(|l| l.to_string()),
        };
        CallStatus {
            generation: self.generation,
            label,
            age_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

/// A registered call's place in the registry; given back when the call ends.
#[derive(Debug)]
pub(crate) struct Ticket {
    shard: usize,
    key: usize,
}

/// The registry of calls in flight of one host (shared by its generations).
#[derive(Debug)]
pub(crate) struct Calls {
    shards: Box<[Mutex<Slab<Call>>]>,
}

/// How many shards: enough that threads rarely share one.
const SHARDS: usize = 32;

impl Default for Calls {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Slab::new())).collect(),
        }
    }
}

impl Calls {
    /// Registers a call; [`Calls::release`] with the ticket ends it.
    pub(crate) fn register(&self, call: Call) -> Ticket {
        let shard = home_shard();
        let key = self.lock(shard).insert(call);
        Ticket { shard, key }
    }

    /// Ends a registered call.
    pub(crate) fn release(&self, ticket: &Ticket) {
        self.lock(ticket.shard).try_remove(ticket.key);
    }

    /// Every call in flight for which `keep` holds.
    pub(crate) fn matching(&self, mut keep: impl FnMut(&Call) -> bool) -> Vec<Call> {
        let mut found = Vec::new();
        for shard in 0..self.shards.len() {
            found.extend(
                self.lock(shard)
                    .iter()
                    .map(|(_, c)| c)
                    .filter(|c| keep(c))
                    .cloned(),
            );
        }
        found
    }

    /// How many calls are in flight on `generation`.
    pub(crate) fn count(&self, generation: u64) -> usize {
        (0..self.shards.len())
            .map(|shard| {
                self.lock(shard)
                    .iter()
                    .filter(|(_, c)| c.generation == generation)
                    .count()
            })
            .sum()
    }

    /// How many calls are in flight in all.
    pub(crate) fn total(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).len()).sum()
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Slab<Call>> {
        // A slab is never left half-updated by a panic (insert and remove do not call out).
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shard this thread registers in: assigned round robin at its first call.
fn home_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HOME.with(|home| {
        if home.get() == usize::MAX {
            home.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        home.get()
    })
}

/// The oldest calls first, at most `limit` of them, as status shows them.
pub(crate) fn oldest(mut calls: Vec<Call>, limit: usize) -> Vec<CallStatus> {
    calls.sort_by_key(|c| c.started);
    let now = Instant::now();
    calls.iter().take(limit).map(|c| c.status(now)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(generation: u64, reach: u64) -> Call {
        Call {
            generation,
            reach: Reach(reach),
            started: Instant::now(),
            label: intern(&Arc::from("POST /x")),
        }
    }

    #[test]
    fn calls_are_counted_until_released_from_any_thread() {
        let calls = Arc::new(Calls::default());
        let a = calls.register(call(1, 0b01));
        let b = calls.register(call(2, 0b10));
        assert_eq!((calls.count(1), calls.count(2), calls.total()), (1, 1, 2));
        let moved = Arc::clone(&calls);
        std::thread::spawn(move || moved.release(&b))
            .join()
            .unwrap();
        assert_eq!((calls.count(2), calls.total()), (0, 1));
        assert_eq!(calls.matching(|c| c.reach.touches(0b01)).len(), 1);
        calls.release(&a);
        assert_eq!(calls.total(), 0);
    }

    #[test]
    fn status_lists_the_oldest_first() {
        let calls = Calls::default();
        let old = call(1, 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let young = Call {
            label: intern(&Arc::from("GET /y")),
            ..call(1, 1)
        };
        calls.register(young);
        calls.register(old);
        let listed = oldest(calls.matching(|_| true), 1);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label.as_deref(), Some("POST /x"));
    }
}
