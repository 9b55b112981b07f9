//! One table's entries in host memory: a concurrent map from key bytes to encoded values, its
//! limits, and what it remembers of the keys written (for saves and migrations).
//!
//! The map is a [`DashMap`]: sharded read-write locks, so no global lock on the request path,
//! and the fastest of the maps measured for this (see the README, "State"). No lock is held
//! while plugin code runs: a read clones the value's `Arc` under its shard's lock and hands the
//! bytes to the plugin after; an update reads, lets the plugin decide outside the lock, then
//! applies the decision only if the entry is still what the plugin saw (else it starts over).

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use graft_api::table::KeyKind;

use crate::keyset::{Key, KeySet};

use super::persist::Committer;
use super::settings::{Durability, TableSettings};

/// An encoded value, shared by readers while a writer replaces it.
pub(crate) type Value = Arc<[u8]>;

/// Entries handed out of the map: each key with its value.
pub(crate) type Entries = Vec<(Key, Value)>;

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Past a limit: nothing written.
    Full(String),
    /// Written in memory, but not made durable (an every-write table whose commit failed).
    NotDurable(String),
}

/// What an update's decision is, given the value it saw.
pub(crate) enum Decision {
    /// Leave the entry as it is.
    Keep,
    /// Set this value.
    Put(Vec<u8>),
    /// Remove the entry.
    Remove,
}

/// How many times an update starts over before it decides under the entry's lock.
const OPTIMISTIC_TRIES: usize = 16;

/// One table of one plugin, at one schema: shared by every generation whose plugin declares
/// the same table with the same value type.
pub(crate) struct Table {
    pub(crate) plugin: String,
    pub(crate) name: String,
    pub(crate) key_kind: KeyKind,
    pub(crate) schema: u32,
    pub(crate) fingerprint: String,
    pub(crate) settings: TableSettings,
    map: DashMap<Key, Value>,
    entries: AtomicU64,
    bytes: AtomicU64,
    /// Keys written since the last save (persisted tables).
    dirty: Option<Arc<KeySet>>,
    /// The keys the table this one migrated from had still to save, taken over with it.
    inherited: Mutex<Vec<Arc<KeySet>>>,
    /// Keys to write again to the store in this table's schema (after a migration), a batch
    /// at a time.
    rewrite: KeySet,
    /// Whether every key is to be written again: turned into `rewrite` by the next save, off
    /// the request path (after a migration, with requests held, it is only this flag).
    rewrite_everything: AtomicBool,
    /// Whether the store holds entries of this table that must be dropped first (it starts
    /// empty where an older table of the same name was saved).
    replace_saved: AtomicBool,
    /// Whether nothing of this table may reach the store yet: a table a migration up made,
    /// from its publish until the record of live releases names the build that reads its
    /// schema (see `host/publish.rs`).
    store_held: AtomicBool,
    /// The change logs of migrations being prepared from this table.
    logs: ArcSwap<Vec<Arc<KeySet>>>,
    /// Makes writes durable before they are acknowledged (every-write tables).
    committer: Option<Arc<Committer>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Table {
    pub(crate) fn new(
        plugin: &str,
        name: &str,
        key_kind: KeyKind,
        schema: u32,
        fingerprint: &str,
        settings: TableSettings,
        committer: Option<Arc<Committer>>,
    ) -> Self {
        Self {
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            key_kind,
            schema,
            fingerprint: fingerprint.to_owned(),
            settings,
            map: DashMap::new(),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dirty: settings
                .durability
                .is_persisted()
                .then(|| Arc::new(KeySet::default())),
            inherited: Mutex::default(),
            rewrite: KeySet::default(),
            rewrite_everything: AtomicBool::new(false),
            replace_saved: AtomicBool::new(false),
            store_held: AtomicBool::new(false),
            logs: ArcSwap::from_pointee(Vec::new()),
            committer: committer.filter(|_| settings.durability == Durability::EveryWrite),
        }
    }

    /// `plugin.table`, as errors and status name it.
    pub(crate) fn label(&self) -> String {
        format!("{}.{}", self.plugin, self.name)
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Value> {
        self.map.get(key).map(|value| Arc::clone(&value))
    }

    /// How many entries.
    pub(crate) fn len(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// How many bytes of keys and values.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Sets `key` to `value`; returns whether it replaced a value.
    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> Result<bool, Refusal> {
        // A key already there is replaced in place, its key not copied.
        if let Some(mut entry) = self.map.get_mut(key) {
            self.account(key, Some(entry.value()), Some(value))?;
            *entry = value.into();
            drop(entry);
            self.written(key)?;
            return Ok(true);
        }
        let replaced = match self.map.entry(key.into()) {
            Entry::Occupied(mut entry) => {
                self.account(key, Some(entry.get()), Some(value))?;
                entry.insert(value.into());
                true
            }
            Entry::Vacant(entry) => {
                self.account(key, None, Some(value))?;
                entry.insert(value.into());
                false
            }
        };
        self.written(key)?;
        Ok(replaced)
    }

    /// Removes `key`; returns whether there was a value.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<bool, Refusal> {
        let Some((key, old)) = self.map.remove(key) else {
            return Ok(false);
        };
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(weight(&key, &old), Ordering::Relaxed);
        self.written(&key)?;
        Ok(true)
    }

    /// Changes the value under `key` to what `decide` makes of the value there; returns whether
    /// a value is there after. `decide` runs outside any lock, again if the entry changed
    /// meanwhile; after [`OPTIMISTIC_TRIES`] such runs, once under the entry's lock.
    pub(crate) fn update(
        &self,
        key: &[u8],
        mut decide: impl FnMut(Option<&[u8]>) -> Decision,
    ) -> Result<bool, Refusal> {
        for _ in 0..OPTIMISTIC_TRIES {
            let seen = self.get(key);
            let decision = decide(seen.as_deref());
            if let Decision::Keep = decision {
                return Ok(seen.is_some());
            }
            let entry = self.map.entry(key.into());
            let unchanged = match (&entry, &seen) {
                (Entry::Occupied(now), Some(seen)) => Arc::ptr_eq(now.get(), seen),
                (Entry::Vacant(_), None) => true,
                _ => false,
            };
            if unchanged {
                let present = self.apply(entry, key, decision)?;
                self.written(key)?;
                return Ok(present);
            }
        }
        // Contended: decide under the lock, once.
        let entry = self.map.entry(key.into());
        let current = match &entry {
            Entry::Occupied(now) => Some(Arc::clone(now.get())),
            Entry::Vacant(_) => None,
        };
        let decision = decide(current.as_deref());
        let present = match decision {
            Decision::Keep => current.is_some(),
            decision => {
                let present = self.apply(entry, key, decision)?;
                self.written(key)?;
                present
            }
        };
        Ok(present)
    }

    /// Applies a decision to an entry, locked; returns whether a value is there after.
    fn apply(
        &self,
        entry: Entry<'_, Key, Value>,
        key: &[u8],
        decision: Decision,
    ) -> Result<bool, Refusal> {
        match (entry, decision) {
            (entry, Decision::Keep) => Ok(matches!(entry, Entry::Occupied(_))),
            (Entry::Occupied(mut entry), Decision::Put(value)) => {
                self.account(key, Some(entry.get()), Some(&value))?;
                entry.insert(value.into());
                Ok(true)
            }
            (Entry::Vacant(entry), Decision::Put(value)) => {
                self.account(key, None, Some(&value))?;
                entry.insert(value.into());
                Ok(true)
            }
            (Entry::Occupied(entry), Decision::Remove) => {
                self.account(key, Some(entry.get()), None)?;
                entry.remove();
                Ok(false)
            }
            (Entry::Vacant(_), Decision::Remove) => Ok(false),
        }
    }

    /// At most `limit` entries, and whether there are more: collected under one shard's read
    /// lock at a time, handed out after.
    pub(crate) fn scan(&self, limit: usize) -> (Entries, bool) {
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for entry in &self.map {
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push((entry.key().clone(), Arc::clone(entry.value())));
        }
        (entries, more)
    }

    /// Every key, for a migration or a rewrite.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.map.iter().map(|entry| entry.key().clone()).collect()
    }

    /// Sets or removes `key` as a migration or a restore does: no limit, not remembered as
    /// written, no durability wait (the caller makes the whole table durable its own way).
    pub(crate) fn put_raw(&self, key: &[u8], value: Option<Vec<u8>>) {
        let old = match value {
            Some(value) => {
                let added = weight(key, &value);
                let old = self.map.insert(key.into(), value.into());
                self.bytes.fetch_add(added, Ordering::Relaxed);
                if old.is_none() {
                    self.entries.fetch_add(1, Ordering::Relaxed);
                }
                old
            }
            None => {
                let old = self.map.remove(key).map(|(_, old)| old);
                if old.is_some() {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                }
                old
            }
        };
        if let Some(old) = old {
            self.bytes.fetch_sub(weight(key, &old), Ordering::Relaxed);
        }
    }

    /// Checks a change of the entry under `key` from `old` to `new` against the limits and
    /// counts it; called with the entry locked, so counts and entries agree.
    fn account(&self, key: &[u8], old: Option<&Value>, new: Option<&[u8]>) -> Result<(), Refusal> {
        let old_weight = old.map_or(0, |old| weight(key, old));
        let new_weight = new.map_or(0, |new| weight(key, new));
        if new_weight == old_weight {
            // Nothing to count: no counter every writer shares is touched.
        } else if new_weight > old_weight {
            let grown = self
                .bytes
                .fetch_add(new_weight - old_weight, Ordering::Relaxed)
                + new_weight
                - old_weight;
            if let Some(max) = self.settings.max_bytes.filter(|max| grown > *max) {
                self.bytes
                    .fetch_sub(new_weight - old_weight, Ordering::Relaxed);
                return Err(Refusal::Full(format!(
                    "table {} is at its limit of {max} bytes (max_bytes)",
                    self.label()
                )));
            }
        } else {
            self.bytes
                .fetch_sub(old_weight - new_weight, Ordering::Relaxed);
        }
        match (old, new) {
            (None, Some(_)) => {
                let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(max) = self.settings.max_entries.filter(|max| entries > *max) {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                    self.bytes.fetch_sub(new_weight, Ordering::Relaxed);
                    return Err(Refusal::Full(format!(
                        "table {} is at its limit of {max} entries (max_entries)",
                        self.label()
                    )));
                }
            }
            (Some(_), None) => {
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }

    /// After a write of `key` (its entry unlocked): remembers the key for the next save and
    /// for migrations being prepared, and for an every-write table, waits until it is durable.
    fn written(&self, key: &[u8]) -> Result<(), Refusal> {
        if let Some(dirty) = &self.dirty {
            dirty.insert(key);
        }
        // Ordered against a migration that starts logging, then reads the map: either it sees
        // this write, or this write sees its log.
        fence(Ordering::SeqCst);
        for log in self.logs.load().iter() {
            log.insert(key);
        }
        match &self.committer {
            Some(committer) => committer
                .durable()
                .map_err(|e| Refusal::NotDurable(format!("{}: {e}", self.label()))),
            None => Ok(()),
        }
    }

    /// Starts logging the keys written, for a migration; the log ends when its last holder
    /// drops it (see [`Table::end_log`]).
    pub(crate) fn start_log(&self) -> Arc<KeySet> {
        let log = Arc::new(KeySet::default());
        self.logs.rcu(|logs| {
            let mut logs = Vec::clone(logs);
            logs.push(Arc::clone(&log));
            logs
        });
        fence(Ordering::SeqCst);
        log
    }

    /// Stops filling `log`.
    pub(crate) fn end_log(&self, log: &Arc<KeySet>) {
        self.logs.rcu(|logs| {
            logs.iter()
                .filter(|l| !Arc::ptr_eq(l, log))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// The keys written since the last save, taken (persisted tables), with those the table it
    /// migrated from had still to save.
    pub(crate) fn take_dirty(&self) -> Vec<Key> {
        let mut keys = self.dirty.as_deref().map(KeySet::take).unwrap_or_default();
        let inherited =
            std::mem::take(&mut *self.inherited.lock().unwrap_or_else(|e| e.into_inner()));
        for set in inherited {
            keys.extend(set.take());
        }
        keys
    }

    /// Takes over the keys `old` (the table this one migrated from) had still to save: a
    /// pointer, not a copy, so it costs nothing while requests are held.
    pub(crate) fn inherit_dirty(&self, old: &Table) {
        if let (Some(_), Some(dirty)) = (&self.dirty, &old.dirty) {
            let mut inherited = self.inherited.lock().unwrap_or_else(|e| e.into_inner());
            inherited.push(Arc::clone(dirty));
            inherited.extend(
                old.inherited
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain(..),
            );
        }
    }

    /// Puts keys back for the next save (one that failed).
    pub(crate) fn put_back_dirty(&self, keys: Vec<Key>) {
        if let Some(dirty) = &self.dirty {
            dirty.extend(keys);
        }
    }

    /// Marks every entry to be written again to the store (after a migration changed their
    /// schema): a flag, which the next save turns into keys.
    pub(crate) fn rewrite_all(&self) {
        self.rewrite_everything.store(true, Ordering::Release);
    }

    /// At most `limit` keys still to be written again.
    pub(crate) fn take_rewrite(&self, limit: usize) -> Vec<Key> {
        if self.rewrite_everything.swap(false, Ordering::AcqRel) {
            for key in self.keys() {
                self.rewrite.insert(&key);
            }
        }
        self.rewrite.take_some(limit)
    }

    /// Puts keys back into what is still to be written again.
    pub(crate) fn put_back_rewrite(&self, keys: Vec<Key>) {
        self.rewrite.extend(keys);
    }

    /// Marks what the store holds under this table's name as to be dropped by the next save:
    /// it is not this table's (or a failed save is to drop it again).
    pub(crate) fn replace_saved(&self) {
        self.replace_saved.store(true, Ordering::Release);
    }

    /// Whether the next save is to drop what the store holds first; the mark is taken.
    pub(crate) fn take_replace_saved(&self) -> bool {
        self.replace_saved.swap(false, Ordering::AcqRel)
    }

    /// Keeps this table's writes out of the store until [`Table::release_store`].
    pub(crate) fn hold_store(&self) {
        self.store_held.store(true, Ordering::Release);
    }

    /// Lets this table's writes reach the store again.
    pub(crate) fn release_store(&self) {
        self.store_held.store(false, Ordering::Release);
    }

    /// Whether this table's writes are kept out of the store for now.
    pub(crate) fn is_store_held(&self) -> bool {
        self.store_held.load(Ordering::Acquire)
    }

    /// Whether keys are still to be written again.
    pub(crate) fn rewrite_pending(&self) -> bool {
        self.rewrite_everything.load(Ordering::Acquire) || self.rewrite.len() > 0
    }
}

/// What an entry counts against `max_bytes`: its key and its encoded value.
fn weight(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(settings: TableSettings) -> Table {
        Table::new("kv", "entries", KeyKind::BYTES, 1, "fp", settings, None)
    }

    #[test]
    fn writes_are_counted_and_limits_refuse_without_writing() {
        let t = table(
            TableSettings::new(Durability::Memory)
                .max_entries(2)
                .max_bytes(20),
        );
        assert_eq!(t.insert(b"a", b"1234"), Ok(false));
        assert_eq!(t.insert(b"a", b"12345"), Ok(true));
        assert_eq!(t.insert(b"b", b"1"), Ok(false));
        assert_eq!((t.len(), t.bytes()), (2, 8));
        let full = t.insert(b"c", b"1").unwrap_err();
        assert!(
            matches!(&full, Refusal::Full(m) if m.contains("2 entries (max_entries)")),
            "{full:?}"
        );
        let full = t.insert(b"a", &[0; 30]).unwrap_err();
        assert!(
            matches!(&full, Refusal::Full(m) if m.contains("20 bytes")),
            "{full:?}"
        );
        assert_eq!((t.len(), t.bytes()), (2, 8), "nothing written past a limit");
        assert_eq!(t.remove(b"a"), Ok(true));
        assert_eq!(t.remove(b"a"), Ok(false));
        assert_eq!((t.len(), t.bytes()), (1, 2));
    }

    #[test]
    fn concurrent_updates_lose_no_increment() {
        let t = table(TableSettings::new(Durability::Memory));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        t.update(b"n", |seen| {
                            let n = seen.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                            Decision::Put((n + 1).to_le_bytes().to_vec())
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(t.get(b"n").unwrap()[..], 8000u64.to_le_bytes());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_log_sees_every_key_written_while_it_runs() {
        let t = table(TableSettings::new(Durability::OnStop));
        t.insert(b"before", b"x").unwrap();
        let log = t.start_log();
        t.insert(b"during", b"x").unwrap();
        t.remove(b"before").unwrap();
        t.end_log(&log);
        t.insert(b"after", b"x").unwrap();
        let mut logged = log.take();
        logged.sort();
        assert_eq!(
            logged,
            [Key::from_slice(b"before"), Key::from_slice(b"during")]
        );
        assert_eq!(t.take_dirty().len(), 3);
        let (some, more) = t.scan(1);
        assert_eq!((some.len(), more), (1, true));
    }
}
