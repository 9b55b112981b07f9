//! What a plugin's library declares about its state, copied into host memory at load.

use std::alloc::Layout;
use std::sync::Arc;

use abi_stable::std_types::utypeid::UTypeId;
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use graft_api::ffi::FfiError;
use graft_api::state::{Direction, StateDecl, StateSlot};

use crate::hook::ffi_result;
use crate::shape::Shape;
use crate::types;

use super::cell::StateCell;

/// What a plugin's library declares about its state.
pub(crate) struct StateInfo {
    pub schema: u32,
    /// The type's structure (names of types do not count, field names do).
    pub shape: Shape,
    /// `shape`'s fingerprint.
    pub fingerprint: String,
    /// The fingerprint hosts gave the type before shapes (its layout, names included): what a
    /// value saved by them carries.
    pub legacy: String,
    pub(crate) layout: Layout,
    type_id: UTypeId,
    init: extern "C" fn(to: *mut u8) -> RResult<(), FfiError>,
    pub migrations: Vec<MigrationInfo>,
    /// Saved across restarts ([`graft_api::State::PERSIST`]).
    pub persist: bool,
    /// The value's primitive fields, `(offset, size)`, for a copy taken while plugins write
    /// it (saved types only; see [`StateCell::snapshot_live`]).
    pub(super) leaves: Arc<[(usize, usize)]>,
}

/// One migration a library carries.
pub(crate) struct MigrationInfo {
    pub up: bool,
    pub schema: u32,
    /// The other schema's type's structure.
    pub shape: Shape,
    /// The fingerprint hosts gave the other type before shapes.
    pub legacy: String,
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
            Ok::<_, String>((Shape::of_layout(layout), types::layout_fingerprint(layout)))
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
            let (shape, legacy) = described(m.layout, m.schema)?;
            migrations.push(MigrationInfo {
                up,
                schema: m.schema,
                shape,
                legacy,
                layout: Layout::from_size_align(m.layout.size(), m.layout.alignment())
                    .map_err(|e| format!("state schema {}: {e}", m.schema))?,
                run: m.run,
            });
        }
        let (shape, legacy) = described(decl.layout, decl.schema)?;
        Ok(Self {
            schema: decl.schema,
            fingerprint: shape.fingerprint.clone(),
            shape,
            legacy,
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
            value: cell.ptr(),
            type_id: self.type_id,
        }
    }

    /// A new cell holding the plugin's initial value.
    pub(crate) fn fresh(&self, plugin: &str) -> Result<StateCell, String> {
        let cell = StateCell::zeroed(plugin, self)?;
        ffi_result((self.init)(cell.ptr()))?;
        Ok(cell)
    }

    /// The migration this plugin carries up from schema `other` (`up`) or down to it, if any.
    pub(crate) fn migration(&self, up: bool, other: u32) -> Option<&MigrationInfo> {
        self.migrations
            .iter()
            .find(|m| m.up == up && m.schema == other)
    }

    /// The fingerprint a saved value's `fingerprint` stands for now: hosts before shapes saved
    /// the legacy one, of this type or of a migration's.
    pub(crate) fn current_fingerprint<'a>(&'a self, fingerprint: &'a str) -> &'a str {
        if fingerprint == self.legacy {
            return &self.fingerprint;
        }
        self.migrations
            .iter()
            .find(|m| m.legacy == fingerprint)
            .map_or(fingerprint, |m| &m.shape.fingerprint)
    }

    /// The schemas this build migrates from and to, for an error: `up from 1, down to 1`.
    pub(crate) fn paths(&self) -> String {
        crate::shape::migration_paths(self.migrations.iter().map(|m| (m.up, m.schema)))
    }
}
