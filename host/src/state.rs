//! Plugin state held by the host: cells that outlive libraries, and the plan that carries them
//! from one generation to the next (pass through, start fresh, or migrate up or down).
//!
//! A state value is plain data (checked by [`types::plain_data`](crate::types::plain_data) at
//! load): the host allocates it, a plugin function writes it, and the host frees it without
//! calling into any library. A generation holds its plugins' cells; a cell is shared by every
//! generation whose plugin declares the same schema and type, so a release that changes no
//! schema passes its state through as is and needs no pause. A schema change makes a new cell,
//! filled by a migration from the old one: by the newer build's `up` when the schema goes up,
//! by the current build's `down` when it goes down (a rollback). Prepare runs the migration
//! once as a trial, so a failing or panicking migration refuses the release without a pause;
//! publish runs it again on a quiescent state (see `host/publish.rs`).

#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use abi_stable::std_types::utypeid::UTypeId;
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use graft_api::ffi::FfiError;
use graft_api::state::{Direction, StateDecl, StateSlot};

use crate::error::{DeployCause, DeployError, Step};
use crate::generation::Generation;
use crate::hook::ffi_result;
use crate::loader::LoadedPlugin;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::types;

/// What a plugin's library declares about its state, copied into host memory at load.
pub(crate) struct StateInfo {
    pub schema: u32,
    pub type_name: String,
    pub fingerprint: String,
    layout: Layout,
    type_id: UTypeId,
    init: extern "C" fn(to: *mut u8) -> RResult<(), FfiError>,
    pub migrations: Vec<MigrationInfo>,
    /// Saved across restarts ([`graft_api::State::PERSIST`]).
    pub persist: bool,
    /// The value's primitive fields, `(offset, size)`, for a copy taken while plugins write
    /// it (saved types only; see [`StateCell::snapshot_live`]).
    leaves: Arc<[(usize, usize)]>,
}

/// One migration a library carries.
pub(crate) struct MigrationInfo {
    pub up: bool,
    pub schema: u32,
    pub fingerprint: String,
    /// The other schema's type's size and alignment: a saved value migrated from it must have
    /// them.
    pub layout: Layout,
    pub run: extern "C" fn(from: *const u8, to: *mut u8) -> RResult<(), FfiError>,
}

impl StateInfo {
    /// Reads a declaration and checks that every type in it is plain data.
    pub(crate) fn read(decl: &StateDecl) -> Result<Self, String> {
        let described = |layout: &'static TypeLayout, schema: u32| {
            types::plain_data(layout)
                .map_err(|e| format!("state schema {schema} ({}): {e}", layout.full_type()))?;
            Ok::<_, String>(types::layout_fingerprint(layout))
        };
        let layout = Layout::from_size_align(decl.layout.size(), decl.layout.alignment())
            .map_err(|e| format!("state schema {}: {e}", decl.schema))?;
        let leaves = if decl.persist {
            let not_data = |e: String| {
                format!(
                    "state schema {} ({}) asks to be saved, but its bytes are not all data: {e}",
                    decl.schema,
                    decl.layout.full_type()
                )
            };
            types::padding_free(decl.layout).map_err(not_data)?;
            types::leaves(decl.layout).map_err(not_data)?
        } else {
            Vec::new()
        };
        let mut migrations = Vec::with_capacity(decl.migrations.len());
        for m in decl.migrations.iter() {
            let up = match m.direction {
                Direction::UP => true,
                Direction::DOWN => false,
                Direction(code) => return Err(format!("a migration of unknown direction {code}")),
            };
            migrations.push(MigrationInfo {
                up,
                schema: m.schema,
                fingerprint: described(m.layout, m.schema)?,
                layout: Layout::from_size_align(m.layout.size(), m.layout.alignment())
                    .map_err(|e| format!("state schema {}: {e}", m.schema))?,
                run: m.run,
            });
        }
        Ok(Self {
            schema: decl.schema,
            type_name: decl.layout.full_type().to_string(),
            fingerprint: described(decl.layout, decl.schema)?,
            layout,
            type_id: (decl.type_id)(),
            init: decl.init,
            migrations,
            persist: decl.persist,
            leaves: leaves.into(),
        })
    }

    /// The slot of `cell` in a link table of this plugin's generation.
    pub(crate) fn slot(&self, cell: &StateCell) -> StateSlot {
        StateSlot {
            value: cell.ptr.as_ptr(),
            type_id: self.type_id,
        }
    }

    /// A new cell holding the plugin's initial value.
    pub(crate) fn fresh(&self, plugin: &str) -> Result<StateCell, String> {
        let cell = StateCell::zeroed(plugin, self)?;
        ffi_result((self.init)(cell.ptr.as_ptr()))?;
        Ok(cell)
    }

    /// The migration this plugin carries from schema `from` with type `fingerprint`, if any.
    pub(crate) fn up_from(&self, from: u32, fingerprint: &str) -> Option<&MigrationInfo> {
        self.migrations
            .iter()
            .find(|m| m.up && m.schema == from && m.fingerprint == fingerprint)
    }

    /// The migration this plugin carries down to schema `to` with type `fingerprint`, if any.
    pub(crate) fn down_to(&self, to: u32, fingerprint: &str) -> Option<&MigrationInfo> {
        self.migrations
            .iter()
            .find(|m| !m.up && m.schema == to && m.fingerprint == fingerprint)
    }

    /// The schemas this plugin migrates from and to, for an error: `up from 1, down to 1`.
    pub(crate) fn paths(&self) -> String {
        let list: Vec<String> = self
            .migrations
            .iter()
            .map(|m| format!("{} {}", if m.up { "up from" } else { "down to" }, m.schema))
            .collect();
        if list.is_empty() {
            "no migrations".into()
        } else {
            list.join(", ")
        }
    }
}

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
    fn zeroed(plugin: &str, info: &StateInfo) -> Result<Self, String> {
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
    fn restored(plugin: &str, saved: &Snapshot, info: &StateInfo) -> Result<Self, String> {
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

    /// Whether the value has this size and alignment: a saved value must have its type's.
    fn has_layout(&self, layout: Layout) -> Result<(), String> {
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

/// A migration a prepared release runs again at publish, on the quiescent state.
pub(crate) struct Migration {
    pub plugin: String,
    pub from: Arc<StateCell>,
    pub to: Arc<StateCell>,
    /// The library carrying `run`, kept loaded until publish.
    pub carrier: Arc<LoadedPlugin>,
    run: extern "C" fn(from: *const u8, to: *mut u8) -> RResult<(), FfiError>,
    pub up: bool,
}

/// `counter 1 -> 2 (up)`
impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} ({})",
            self.plugin,
            self.from.schema,
            self.to.schema,
            if self.up { "up" } else { "down" }
        )
    }
}

impl Migration {
    /// Runs it from `from` into `to`, which it overwrites whole: `from` holds the type the
    /// function reads and `to` was allocated for the type it writes (both matched by
    /// fingerprint in [`carry`]), and `carrier` keeps the function's library loaded.
    pub(crate) fn run(&self) -> Result<(), String> {
        ffi_result((self.run)(self.from.ptr.as_ptr(), self.to.ptr.as_ptr()))
    }
}

/// The state of a new plugin set, carried over from the generation it replaces.
pub(crate) struct Carried {
    /// By plugin position.
    pub cells: Vec<Option<Arc<StateCell>>>,
    /// The migrations publish runs again on the quiescent state.
    pub migrations: Vec<Migration>,
}

/// Carries the state of `base` over to the plugin set `set`: passes a cell through where the
/// schema and type agree, starts a fresh one for a plugin `base` holds no state for, and
/// migrates (a trial run, into a new cell) where the schema changed. With `saved` (the first
/// release a host publishes), a plugin `base` holds no state for starts from its saved state
/// instead, if it has some: as it is, or migrated up by the plugin.
pub(crate) fn carry(
    base: &Generation,
    set: &[Arc<LoadedPlugin>],
    saved: Option<&Store>,
) -> Result<Carried, DeployError> {
    let mut carried = Carried {
        cells: Vec::with_capacity(set.len()),
        migrations: Vec::new(),
    };
    for plugin in set {
        let Some(info) = plugin.state() else {
            carried.cells.push(None);
            continue;
        };
        let refuse = Refuse { plugin };
        let found = match base.state_of(&plugin.info().name) {
            Some((old, holder)) => Some((Arc::clone(old), Source::Live(holder))),
            None if info.persist => saved
                .map(|store| restore(store, plugin, info, &refuse))
                .transpose()?
                .flatten(),
            None => None,
        };
        let cell = match found {
            None => Arc::new(info.fresh(&plugin.info().name).map_err(|e| {
                refuse.live(format!("initial value of schema {}: {e}", info.schema))
            })?),
            Some((old, source)) if old.schema == info.schema => {
                pass_through(old, info, &source, &refuse)?
            }
            Some((old, source)) => {
                let migration = migrate(old, &source, plugin, info, &refuse)?;
                let to = Arc::clone(&migration.to);
                carried.migrations.push(migration);
                to
            }
        };
        carried.cells.push(Some(cell));
    }
    Ok(carried)
}

/// Where a value carried over comes from.
enum Source<'a> {
    /// The generation being replaced, where this build holds it.
    Live(&'a Arc<LoadedPlugin>),
    /// The store (its file).
    Saved(&'a Path),
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Live(_) => f.write_str("is live"),
            Self::Saved(path) => write!(f, "was saved in {}", path.display()),
        }
    }
}

/// The refusals of one plugin's state: about a live value ([`DeployCause::State`]) or a saved
/// one ([`DeployCause::SavedState`], which a restart does not fall back from).
struct Refuse<'a> {
    plugin: &'a LoadedPlugin,
}

impl Refuse<'_> {
    fn error(&self, cause: DeployCause) -> DeployError {
        DeployError::new(
            Step::Migrate,
            Some(&self.plugin.info().name),
            Some(self.plugin.path().to_owned()),
            cause,
        )
    }

    fn live(&self, message: String) -> DeployError {
        self.error(DeployCause::State(message))
    }

    fn from(&self, source: &Source<'_>, message: String) -> DeployError {
        match source {
            Source::Live(_) => self.live(message),
            Source::Saved(path) => self.error(DeployCause::SavedState {
                path: path.to_path_buf(),
                reason: message,
            }),
        }
    }
}

/// The value as it is, for a build of the same schema: the same type, at the type's size.
fn pass_through(
    old: Arc<StateCell>,
    info: &StateInfo,
    source: &Source<'_>,
    refuse: &Refuse<'_>,
) -> Result<Arc<StateCell>, DeployError> {
    if old.fingerprint != info.fingerprint {
        return Err(refuse.from(
            source,
            format!(
                "schema {} {source} with another type than {}: a changed state type needs a new \
                 schema number and migrations",
                info.schema, info.type_name
            ),
        ));
    }
    old.has_layout(info.layout)
        .map_err(|e| refuse.from(source, format!("schema {} {source}, but {e}", info.schema)))?;
    Ok(old)
}

/// The migration of `old` to `plugin`'s schema, run once as a trial into a new cell: up by the
/// newer build, which carries it; down by the build being replaced (a saved value has no such
/// build loaded).
fn migrate(
    old: Arc<StateCell>,
    source: &Source<'_>,
    plugin: &Arc<LoadedPlugin>,
    info: &StateInfo,
    refuse: &Refuse<'_>,
) -> Result<Migration, DeployError> {
    let up = info.schema > old.schema;
    let holder = match source {
        Source::Live(holder) => Some(*holder),
        Source::Saved(_) => None,
    };
    let (carrier, found) = if up {
        (Some(plugin), info.up_from(old.schema, &old.fingerprint))
    } else {
        let found = holder
            .and_then(|h| h.state())
            .and_then(|h| h.down_to(info.schema, &info.fingerprint));
        (holder, found)
    };
    if let (true, Some(found)) = (up, found) {
        old.has_layout(found.layout)
            .map_err(|e| refuse.from(source, format!("schema {} {source}, but {e}", old.schema)))?;
    }
    let (Some(carrier), Some(found)) = (carrier, found) else {
        let carries = carrier.map_or_else(
            || format!("the value {source}, and no build that could migrate it down is loaded"),
            |c| {
                let paths = c.state().map_or_else(String::new, StateInfo::paths);
                format!("{} {} carries {paths}", c.info().name, c.info().version)
            },
        );
        return Err(refuse.from(
            source,
            format!(
                "no migration from schema {} to schema {}: {carries}",
                old.schema, info.schema,
            ),
        ));
    };
    let name = &plugin.info().name;
    let migration = Migration {
        plugin: name.clone(),
        to: Arc::new(StateCell::zeroed(name, info).map_err(|e| refuse.live(e))?),
        from: old,
        carrier: Arc::clone(carrier),
        run: found.run,
        up,
    };
    migration.run().map_err(|e| {
        refuse.from(
            source,
            format!(
                "migration {} from schema {} to {} failed: {e}",
                if up { "up" } else { "down" },
                migration.from.schema,
                info.schema
            ),
        )
    })?;
    Ok(migration)
}

/// `plugin`'s saved value in the store, if it has one.
fn restore<'s>(
    store: &'s Store,
    plugin: &LoadedPlugin,
    info: &StateInfo,
    refuse: &Refuse<'_>,
) -> Result<Option<(Arc<StateCell>, Source<'s>)>, DeployError> {
    let name = &plugin.info().name;
    let source = Source::Saved(store.path());
    let unusable = |e: String| refuse.from(&source, format!("the value of plugin {name}: {e}"));
    let Some(saved) = store.read_cell(name).map_err(unusable)? else {
        return Ok(None);
    };
    let cell = StateCell::restored(name, &saved, info).map_err(unusable)?;
    tracing::info!(plugin = %name, schema = saved.schema, store = %store.path().display(), "restoring saved state");
    Ok(Some((Arc::new(cell), source)))
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

    const DECL: StateDecl = graft_api::state::state_decl::<Counts>(&[]);

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
