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
use std::ptr::NonNull;
use std::sync::Arc;

use abi_stable::std_types::utypeid::UTypeId;
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use graft_api::ffi::FfiError;
use graft_api::state::{Direction, StateDecl, StateSlot};

use crate::error::{DeployCause, DeployError, Step};
use crate::generation::Generation;
use crate::loader::LoadedPlugin;
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
}

/// One migration a library carries.
pub(crate) struct MigrationInfo {
    pub up: bool,
    pub schema: u32,
    pub fingerprint: String,
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

fn ffi_result(result: RResult<(), FfiError>) -> Result<(), String> {
    match result {
        RResult::ROk(()) => Ok(()),
        RResult::RErr(e) => Err(format!("{}: {}", e.kind, e.message)),
    }
}

/// One plugin's state value in host memory, shared by the generations that agree on its type.
pub(crate) struct StateCell {
    pub plugin: String,
    pub schema: u32,
    pub fingerprint: String,
    layout: Layout,
    ptr: NonNull<u8>,
}

// SAFETY: the value is a `graft_api::State`, which is `Send + Sync`; it holds no pointer.
unsafe impl Send for StateCell {}
// SAFETY: as above.
unsafe impl Sync for StateCell {}

impl StateCell {
    /// A new, zeroed cell for `info`'s type, for its initialiser or a migration to fill.
    fn zeroed(plugin: &str, info: &StateInfo) -> Result<Self, String> {
        // A zero-sized state still gets a unique, valid address.
        let layout = Layout::from_size_align(info.layout.size().max(1), info.layout.align())
            .map_err(|e| e.to_string())?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| format!("allocating {} bytes of state failed", layout.size()))?;
        Ok(Self {
            plugin: plugin.to_owned(),
            schema: info.schema,
            fingerprint: info.fingerprint.clone(),
            layout,
            ptr,
        })
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
/// migrates (a trial run, into a new cell) where the schema changed.
pub(crate) fn carry(base: &Generation, set: &[Arc<LoadedPlugin>]) -> Result<Carried, DeployError> {
    let mut carried = Carried {
        cells: Vec::with_capacity(set.len()),
        migrations: Vec::new(),
    };
    for plugin in set {
        let name = &plugin.info().name;
        let refuse = |message: String| {
            DeployError::new(
                Step::Migrate,
                Some(name),
                Some(plugin.path().to_owned()),
                DeployCause::State(message),
            )
        };
        let Some(info) = plugin.state() else {
            carried.cells.push(None);
            continue;
        };
        let cell = match base.state_of(name) {
            None => Arc::new(
                info.fresh(name)
                    .map_err(|e| refuse(format!("initial value of schema {}: {e}", info.schema)))?,
            ),
            Some((old, _)) if old.schema == info.schema => {
                if old.fingerprint != info.fingerprint {
                    return Err(refuse(format!(
                        "schema {} is live with another type than {}: a changed state type \
                         needs a new schema number and migrations",
                        info.schema, info.type_name
                    )));
                }
                Arc::clone(old)
            }
            Some((old, holder)) => {
                let up = info.schema > old.schema;
                // Up: the newer build carries it; down: the build being replaced does.
                let (carrier, found) = if up {
                    (plugin, info.up_from(old.schema, &old.fingerprint))
                } else {
                    let found = holder
                        .state()
                        .and_then(|h| h.down_to(info.schema, &info.fingerprint));
                    (holder, found)
                };
                let Some(found) = found else {
                    let carrier_paths = carrier.state().map_or_else(String::new, StateInfo::paths);
                    return Err(refuse(format!(
                        "no migration from schema {} to schema {}: {} {} carries {carrier_paths}",
                        old.schema,
                        info.schema,
                        carrier.info().name,
                        carrier.info().version,
                    )));
                };
                let migration = Migration {
                    plugin: name.clone(),
                    from: Arc::clone(old),
                    to: Arc::new(StateCell::zeroed(name, info).map_err(refuse)?),
                    carrier: Arc::clone(carrier),
                    run: found.run,
                    up,
                };
                migration.run().map_err(|e| {
                    refuse(format!(
                        "migration {} from schema {} to {} failed: {e}",
                        if up { "up" } else { "down" },
                        old.schema,
                        info.schema
                    ))
                })?;
                let to = Arc::clone(&migration.to);
                carried.migrations.push(migration);
                to
            }
        };
        carried.cells.push(Some(cell));
    }
    Ok(carried)
}
