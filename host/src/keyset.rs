//! A set of keys that many threads add to at once and one thread empties: what a table
//! remembers of the keys written since a save (its dirty keys) or since a migration started
//! (its change log).
//!
//! Sharded by the key's hash, each shard a mutex of its own, so that writers rarely meet, and
//! a take empties one shard at a time: a key added while a take runs lands either in what it
//! took or in the set after it, never nowhere.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

/// How many shards.
const SHARDS: usize = 64;

/// A table's key: its bytes, inline up to 24 (integers, short strings: no allocation, and no
/// pointer to follow when the map compares keys), on the heap past that.
pub(crate) type Key = smallvec::SmallVec<[u8; 24]>;

/// One shard: the keys whose hash lands there.
type Shard = Mutex<HashSet<Key>>;

#[derive(Debug)]
pub(crate) struct KeySet {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Default for KeySet {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl KeySet {
    /// Adds `key`.
    pub(crate) fn insert(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        if !shard.contains(key) {
            shard.insert(key.into());
        }
    }

    /// Takes every key out.
    pub(crate) fn take(&self) -> Vec<Key> {
        let mut keys = Vec::new();
        for shard in 0..self.shards.len() {
            keys.extend(std::mem::take(&mut *lock(&self.shards[shard])));
        }
        keys
    }

    /// Takes at most `limit` keys out.
    pub(crate) fn take_some(&self, limit: usize) -> Vec<Key> {
        let mut keys = Vec::new();
        for shard in 0..self.shards.len() {
            let mut shard = lock(&self.shards[shard]);
            while keys.len() < limit {
                let Some(key) = shard.iter().next().cloned() else {
                    break;
                };
                shard.remove(&key);
                keys.push(key);
            }
            if keys.len() >= limit {
                break;
            }
        }
        keys
    }

    /// Puts keys back (after a save that failed).
    pub(crate) fn extend(&self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            let mut shard = self.shard(&key);
            shard.insert(key);
        }
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, HashSet<Key>> {
        let at = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) % self.shards.len();
        lock(&self.shards[at])
    }
}

/// A set is never left half-changed by a panic (nothing inside calls out).
fn lock(shard: &Shard) -> MutexGuard<'_, HashSet<Key>> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_added_from_many_threads_are_taken_once() {
        let set = KeySet::default();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let set = &set;
                s.spawn(move || {
                    for i in 0..1000u16 {
                        set.insert(&[t, (i >> 8) as u8, i as u8]);
                    }
                });
            }
        });
        assert_eq!(set.len(), 4000);
        let some = set.take_some(100);
        assert_eq!(some.len(), 100);
        let rest = set.take();
        assert_eq!(rest.len(), 3900);
        assert_eq!(set.len(), 0);
        set.extend(some);
        assert_eq!(set.len(), 100);
    }
}
