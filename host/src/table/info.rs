//! What a plugin declares of its tables, copied into host memory at load.

use abi_stable::std_types::{RResult, RSlice, RVec};
use graft_api::ffi::FfiError;
use graft_api::state::Direction;
use graft_api::table::{KeyKind, TableDecl};

use crate::shape::Shape;

/// Migrates one encoded value: decodes it, writes the migrated value's bytes.
pub(crate) type MigrateFn = extern "C" fn(RSlice<'_, u8>, &mut RVec<u8>) -> RResult<(), FfiError>;

/// One table a plugin declares.
#[derive(Debug)]
pub(crate) struct TableInfo {
    pub(crate) name: String,
    pub(crate) key: KeyKind,
    pub(crate) schema: u32,
    pub(crate) shape: Shape,
    pub(crate) migrations: Vec<TableMigrationInfo>,
}

/// One migration of a table's values a plugin carries.
#[derive(Debug)]
pub(crate) struct TableMigrationInfo {
    pub(crate) up: bool,
    pub(crate) schema: u32,
    pub(crate) shape: Shape,
    pub(crate) run: MigrateFn,
}

impl TableInfo {
    /// Reads a declaration (its names and shapes copied out of the library).
    pub(crate) fn read(decl: &TableDecl) -> Result<Self, String> {
        let name = decl.name.as_str().to_owned();
        if !crate::decl::is_valid_name(&name) {
            return Err(format!(
                "a table named {}: names are lowercase letters, digits, dashes and underscores",
                crate::bounded::Bounded(&name)
            ));
        }
        let shape = |describe: extern "C" fn() -> abi_stable::std_types::RString, schema| {
            Shape::of_serde(&describe().into_string())
                .map_err(|e| format!("table {name}, schema {schema}: {e}"))
        };
        let mut migrations = Vec::with_capacity(decl.migrations.len());
        for m in decl.migrations.iter() {
            let up = match m.direction {
                Direction::UP => true,
                Direction::DOWN => false,
                Direction(code) => {
                    return Err(format!(
                        "table {name}: a migration of unknown direction {code}"
                    ))
                }
            };
            migrations.push(TableMigrationInfo {
                up,
                schema: m.schema,
                shape: shape(m.value, m.schema)?,
                run: m.run,
            });
        }
        if !matches!(
            decl.key,
            KeyKind::U64 | KeyKind::U32 | KeyKind::I64 | KeyKind::STRING | KeyKind::BYTES
        ) {
            return Err(format!(
                "table {name}: a key of unknown kind {}",
                decl.key.0
            ));
        }
        Ok(Self {
            shape: shape(decl.value, decl.schema)?,
            name,
            key: decl.key,
            schema: decl.schema,
            migrations,
        })
    }

    /// The migration this build carries from (`up`) or to (down) schema `other`, if any.
    pub(crate) fn migration(&self, up: bool, other: u32) -> Option<&TableMigrationInfo> {
        self.migrations
            .iter()
            .find(|m| m.up == up && m.schema == other)
    }

    /// The schemas this build migrates from and to, for an error: `up from 1, down to 1`.
    pub(crate) fn paths(&self) -> String {
        crate::shape::migration_paths(self.migrations.iter().map(|m| (m.up, m.schema)))
    }
}
