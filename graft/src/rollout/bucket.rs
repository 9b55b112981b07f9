//! Which bucket of 10,000 a request falls in: from its sticky key, or at random.
//!
//! The hash is specified (FNV-1a over the rollout's salt and the key, then a SplitMix64
//! finaliser), so a key lands in the same bucket on every host, build and version of graft.

/// Buckets of the weight: a weight of 1% is 100 buckets.
pub(super) const BUCKETS: u32 = 10_000;

/// The bucket of `key` under `salt`, or a random one without a key; 0 to 9,999.
pub(super) fn bucket(salt: u64, key: Option<&[u8]>) -> u32 {
    let hash = match key {
        Some(key) => sticky_hash(salt, key),
        None => random(),
    };
    (hash % u64::from(BUCKETS)) as u32
}

/// FNV-1a over the salt and the key, then a SplitMix64 finaliser.
fn sticky_hash(salt: u64, key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(hash)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A per-thread pseudo-random number (no shared state).
fn random() -> u64 {
    thread_local! {
        // std's RandomState is seeded from the OS, and differs per thread and per instance.
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64),
        );
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        splitmix(next)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_lands_in_the_same_bucket_everywhere_and_the_salt_moves_it() {
        // Pinned values (computed independently from the specification): hosts of a fleet, and
        // versions of graft, must agree on them.
        assert_eq!(super::bucket(7, Some(b"user-1")), 2673);
        assert_eq!(super::bucket(8, Some(b"user-1")), 2580);
        assert_eq!(super::bucket(7, Some(b"user-2")), 6137);
        assert!(super::bucket(7, None) < super::BUCKETS);
    }
}
