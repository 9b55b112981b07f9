//! One plugin's state value in host memory (this module holds the state's `unsafe`: the
//! value's allocation, its copies in and out, and the atomic loads of a live copy).

#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::snapshot::Snapshot;

use super::info::StateInfo;

/// One plugin's state value in host memory, shared by the generations that agree on its type.
pub(crate) struct StateCell {
    pub plugin: String,
    pub schema: u32,
    pub fingerprint: String,
    /// Saved across restarts.
    pub persist: bool,
    layout: Layout,
    /// The value's primitive fields (saved types only).
    leaves: Arc<[(usize, usize)]>,
    ptr: NonNull<u8>,
}

// SAFETY: the value is a `graft_api::State`, which is `Send + Sync`; it holds no pointer.
unsafe impl Send for StateCell {}
// SAFETY: as above.
unsafe impl Sync for StateCell {}

impl StateCell {
    /// A new, zeroed cell for `info`'s type, for its initialiser or a migration to fill.
    pub(crate) fn zeroed(plugin: &str, info: &StateInfo) -> Result<Self, String> {
        Self::alloc(
            plugin,
            info.schema,
            &info.fingerprint,
            info.persist,
            info.layout,
            Arc::clone(&info.leaves),
        )
    }

    fn alloc(
        plugin: &str,
        schema: u32,
        fingerprint: &str,
        persist: bool,
        layout: Layout,
        leaves: Arc<[(usize, usize)]>,
    ) -> Result<Self, String> {
        // A zero-sized state still gets a unique, valid address.
        let layout = Layout::from_size_align(layout.size().max(1), layout.align())
            .map_err(|e| e.to_string())?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| format!("allocating {} bytes of state failed", layout.size()))?;
        Ok(Self {
            plugin: plugin.to_owned(),
            schema,
            fingerprint: fingerprint.to_owned(),
            persist,
            layout,
            leaves,
            ptr,
        })
    }

    /// A cell holding a saved value, with the saved type's size and alignment: the source of
    /// a migration, or the state itself when the schema is the plugin's.
    pub(crate) fn restored(
        plugin: &str,
        saved: &Snapshot,
        info: &StateInfo,
    ) -> Result<Self, String> {
        let layout =
            Layout::from_size_align(saved.bytes.len(), saved.align as usize).map_err(|e| {
                format!(
                    "saved size {} and alignment {}: {e}",
                    saved.bytes.len(),
                    saved.align
                )
            })?;
        // As the plugin's own value, it reads the same fields; as a migration's source, it is
        // only read by the migration.
        let leaves = if saved.schema == info.schema {
            Arc::clone(&info.leaves)
        } else {
            Arc::from([])
        };
        let cell = Self::alloc(
            plugin,
            saved.schema,
            &saved.fingerprint,
            true,
            layout,
            leaves,
        )?;
        // SAFETY: the cell has at least `bytes.len()` bytes (its size is that, or 1 for an
        // empty value) and nothing else refers to it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                saved.bytes.as_ptr(),
                cell.ptr.as_ptr(),
                saved.bytes.len(),
            );
        }
        Ok(cell)
    }

    /// The value's address, for a migration or the plugin's initialiser to write.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether the value has this size and alignment: a saved value must have its type's.
    pub(crate) fn has_layout(&self, layout: Layout) -> Result<(), String> {
        let (size, align) = (self.layout.size(), self.layout.align());
        // A zero-sized type's cell is one byte (see `alloc`).
        let expected = (layout.size().max(1), layout.align());
        if (size, align) == expected {
            Ok(())
        } else {
            Err(format!(
                "the value is {size} bytes aligned to {align}, but its type is {} bytes aligned \
                 to {}",
                layout.size(),
                layout.align()
            ))
        }
    }

    /// The value's bytes, to save. Call it only at a request boundary (nothing writes the value
    /// meanwhile).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut bytes = vec![0; self.layout.size()];
        // SAFETY: the cell holds `layout.size()` bytes, all of them initialised: it was
        // allocated zeroed and its type has no padding (checked at load for saved types).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), bytes.as_mut_ptr(), bytes.len());
        }
        self.snapshot_of(bytes)
    }

    /// The value's bytes, to save, copied while requests may be writing it: each primitive
    /// field read with one atomic load of its own size, as plugins write state through
    /// atomics. Each field is a value it had; fields are not consistent with one another, and
    /// a field a plugin writes without an atomic (behind a lock of its own) may be torn. What a
    /// save does when it could not wait for the requests that may write the value.
    pub(crate) fn snapshot_live(&self) -> Snapshot {
        use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
        let mut bytes = vec![0; self.layout.size()];
        for &(offset, size) in self.leaves.iter() {
            let (Some(out), true) = (
                bytes.get_mut(offset..offset + size),
                offset + size <= self.layout.size(),
            ) else {
                continue;
            };
            // SAFETY: `offset..offset + size` lies inside the value (checked above), and the
            // leaves come from the type's layout, so the field there is a primitive of `size`
            // bytes at an offset aligned for it (repr(C)), in a cell allocated with the type's
            // alignment. Atomics of the same size have the same layout.
            unsafe {
                let at = self.ptr.as_ptr().add(offset);
                match size {
                    1 => out.copy_from_slice(&(*at.cast::<AtomicU8>()).load(Relaxed).to_ne_bytes()),
                    2 => {
                        out.copy_from_slice(&(*at.cast::<AtomicU16>()).load(Relaxed).to_ne_bytes())
                    }
                    4 => {
                        out.copy_from_slice(&(*at.cast::<AtomicU32>()).load(Relaxed).to_ne_bytes())
                    }
                    8 => {
                        out.copy_from_slice(&(*at.cast::<AtomicU64>()).load(Relaxed).to_ne_bytes())
                    }
                    _ => {}
                }
            }
        }
        self.snapshot_of(bytes)
    }

    fn snapshot_of(&self, bytes: Vec<u8>) -> Snapshot {
        Snapshot {
            schema: self.schema,
            align: u32::try_from(self.layout.align()).unwrap_or(u32::MAX),
            fingerprint: self.fingerprint.clone(),
            bytes,
        }
    }
}

impl Drop for StateCell {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout; the type has no drop glue (the API
        // refuses to compile one that has), so freeing the memory is all there is to do.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for StateCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCell")
            .field("plugin", &self.plugin)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use abi_stable::StableAbi;
    use graft_api::State;

    use super::*;

    #[repr(C)]
    #[derive(StableAbi)]
    struct Counts {
        total: AtomicU64,
        by_key: [AtomicU64; 8],
    }

    impl State for Counts {
        const SCHEMA: u32 = 2;
        const PERSIST: bool = true;
        fn init() -> Self {
            Self {
                total: AtomicU64::new(0),
                by_key: Default::default(),
            }
        }
    }

    const DECL: graft_api::state::StateDecl = graft_api::state::state_decl::<Counts>(&[]);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]

        /// A saved value whose record checks out (schema, type, checksum) but whose length or
        /// alignment is not its type's is never used as the value.
        #[test]
        fn a_saved_value_of_another_layout_is_never_used(len in 0usize..256, align in proptest::sample::select(vec![1u32, 2, 4, 8, 16])) {
            let info = StateInfo::read(&DECL).unwrap();
            let saved = Snapshot {
                schema: info.schema,
                align,
                fingerprint: info.fingerprint.clone(),
                bytes: vec![7; len],
            };
            let cell = StateCell::restored("counts", &saved, &info).unwrap();
            let fits = len == std::mem::size_of::<Counts>() && align as usize == std::mem::align_of::<Counts>();
            proptest::prop_assert_eq!(cell.has_layout(info.layout).is_ok(), fits);
        }
    }

    #[test]
    fn a_live_copy_reads_every_field_of_the_value() {
        let info = StateInfo::read(&DECL).unwrap();
        let cell = info.fresh("counts").unwrap();
        // SAFETY: the cell holds a `Counts` (its initialiser wrote one).
        let value = unsafe { &*cell.ptr.as_ptr().cast::<Counts>() };
        value.total.store(5, std::sync::atomic::Ordering::Relaxed);
        value.by_key[7].store(9, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(cell.snapshot_live(), cell.snapshot());
        assert_eq!(cell.snapshot().bytes[64..72], 9u64.to_ne_bytes());
    }
}
