//! A table from one generation to the next: passed through where the schema and value type
//! agree, started fresh for a table the generation replaced did not have (or read back from the
//! store, for the first release a host publishes), or migrated entry by entry where the schema
//! changed.
//!
//! A migration copies while requests run, then catches up: prepare starts logging the keys
//! written to the old table and migrates every entry into a new one (a trial: a value that does
//! not migrate refuses the release with nothing changed). Publish migrates again the keys
//! written since, while the boundary is open, until few are left; then holds the requests that
//! can reach the plugin, drains those in flight, migrates the last few and stores the new
//! generation. The pause grows with the writes during the last round, not with the table.

use std::sync::Arc;

use abi_stable::std_types::{RSlice, RVec};

use crate::error::{DeployCause, DeployError, Refusal, Step};
use crate::hook::ffi_result;
use crate::keyset::KeySet;
use crate::live::generation::Generation;
use crate::loader::LoadedPlugin;
use crate::store::{SavedTable, Store};

use crate::table::Committer;
use crate::table::Table;
use crate::table::TableSettings;
use crate::table::{MigrateFn, TableInfo};

/// The tables of a new plugin set.
#[derive(Debug, Default)]
pub(crate) struct CarriedTables {
    /// By plugin position, then in the order each plugin declares them.
    pub(crate) tables: Vec<Vec<Arc<Table>>>,
    /// The migrations publish finishes.
    pub(crate) migrations: Vec<TableMigration>,
    /// What started empty instead of being refused (with [`TableHome::fresh`]).
    pub(crate) warnings: Vec<String>,
}

/// Where the host keeps what a carry needs besides the generations: the operator's settings
/// and the store.
pub(crate) struct TableHome<'a> {
    /// The settings of table `plugin.table`.
    pub(crate) settings: &'a dyn Fn(&str, &str) -> TableSettings,
    /// The store, to read tables back from: only for the first release a host publishes.
    pub(crate) saved: Option<&'a Store>,
    /// Makes every-write tables durable.
    pub(crate) committer: &'a Arc<Committer>,
    /// A table that cannot be carried over starts empty instead of refusing the release.
    pub(crate) fresh: bool,
}

/// Carries the tables of `base` over to the plugin set `set` (see the module docs).
pub(crate) fn carry(
    base: &Generation,
    set: &[Arc<LoadedPlugin>],
    home: &TableHome<'_>,
) -> Result<CarriedTables, DeployError> {
    let mut carried = CarriedTables::default();
    for plugin in set {
        let mut tables = Vec::with_capacity(plugin.tables().len());
        for info in plugin.tables() {
            let refuse = Refusal {
                plugin: &plugin.info().name,
                file: plugin.path(),
                subject: Some(format!("table {}.{}", plugin.info().name, info.name)),
            };
            let settings = (home.settings)(&plugin.info().name, &info.name);
            let carried_over = match base.table_of(&plugin.info().name, &info.name) {
                Some((old, holder)) if old.schema == info.schema => {
                    if old.fingerprint != info.shape.fingerprint {
                        Err(refuse.live(format!(
                            "schema {} is live with another value type: {}; a changed value \
                             type needs a new schema number and migrations",
                            info.schema,
                            holder_shape(holder, info).map_or_else(
                                || "its type differs".to_owned(),
                                |live| live.differences(
                                    "the live one",
                                    &info.shape,
                                    "this build's"
                                ),
                            )
                        )))
                    } else {
                        Ok(Some(Arc::clone(old)))
                    }
                }
                Some((old, holder)) => {
                    let to = new_table(plugin, info, settings, home.committer)?;
                    TableMigration::start(old, to, plugin, holder, info, &refuse).map(|migration| {
                        let to = Arc::clone(&migration.to);
                        carried.migrations.push(migration);
                        Some(to)
                    })
                }
                None => Ok(None),
            };
            let table = match carried_over {
                Ok(Some(table)) => table,
                Ok(None) => {
                    let table = new_table(plugin, info, settings, home.committer)?;
                    let restored = match (home.saved, settings.durability.is_persisted()) {
                        (Some(store), true) => restore(store, &table, info, &refuse)?,
                        _ => false,
                    };
                    if !restored && settings.durability.is_persisted() {
                        // Whatever the store holds under this name is not this table's.
                        table.replace_saved();
                    }
                    table
                }
                Err(refused) if home.fresh => {
                    let warning = format!(
                        "table {}.{} starts empty (fresh state is on): {}",
                        plugin.info().name,
                        info.name,
                        refused.cause()
                    );
                    tracing::warn!("{warning}");
                    carried.warnings.push(warning);
                    let table = new_table(plugin, info, settings, home.committer)?;
                    if settings.durability.is_persisted() {
                        // The store holds the refused table under this name.
                        table.replace_saved();
                    }
                    table
                }
                Err(refused) => return Err(refused),
            };
            tables.push(table);
        }
        carried.tables.push(tables);
    }
    Ok(carried)
}

/// A new, empty table for `info`, registered with the committer if it is every-write.
fn new_table(
    plugin: &LoadedPlugin,
    info: &TableInfo,
    settings: TableSettings,
    committer: &Arc<Committer>,
) -> Result<Arc<Table>, DeployError> {
    let table = Arc::new(Table::new(
        &plugin.info().name,
        &info.name,
        info.key,
        info.schema,
        &info.shape.fingerprint,
        settings,
        Some(Arc::clone(committer)),
    ));
    if settings.durability == crate::table::Durability::EveryWrite {
        committer.register(&table).map_err(|e| {
            DeployError::new(
                Step::Migrate,
                Some(&plugin.info().name),
                None,
                DeployCause::Io("starting the committer of every-write tables".into(), e),
            )
        })?;
    }
    Ok(table)
}

/// The shape of the live table's value type, as the build holding it declares it.
fn holder_shape<'h>(holder: &'h LoadedPlugin, info: &TableInfo) -> Option<&'h crate::shape::Shape> {
    holder.table(&info.name).map(|t| &t.shape)
}

/// A table's entries migrated to a new schema: copied at prepare, caught up at publish (see
/// the module docs). Dropping it stops the log; the new table is let go with it unless a
/// published generation holds it.
pub(crate) struct TableMigration {
    pub(crate) plugin: String,
    pub(crate) name: String,
    from: Arc<Table>,
    to: Arc<Table>,
    /// The library carrying `run`, kept loaded until publish.
    pub(crate) carrier: Arc<LoadedPlugin>,
    run: MigrateFn,
    pub(crate) up: bool,
    /// The keys written to `from` since the copy started.
    log: Arc<KeySet>,
}

impl std::fmt::Debug for TableMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TableMigration({self})")
    }
}

/// `kv.entries 1 -> 2 (up)`
impl std::fmt::Display for TableMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} {} -> {} ({})",
            self.plugin,
            self.name,
            self.from.schema,
            self.to.schema,
            if self.up { "up" } else { "down" }
        )
    }
}

impl TableMigration {
    /// Finds the migration from `from`'s schema to `info`'s (up: the new build carries it;
    /// down: the build being replaced, `holder`, does), starts logging and copies every entry.
    fn start(
        from: &Arc<Table>,
        to: Arc<Table>,
        plugin: &Arc<LoadedPlugin>,
        holder: &Arc<LoadedPlugin>,
        info: &TableInfo,
        refuse: &Refusal<'_>,
    ) -> Result<Self, DeployError> {
        let up = info.schema > from.schema;
        let (carrier, found) = if up {
            (plugin, info.migration(true, from.schema))
        } else {
            let held = holder.table(&info.name);
            (holder, held.and_then(|t| t.migration(false, info.schema)))
        };
        let Some(found) = found else {
            let carries = carrier
                .table(&info.name)
                .map_or_else(|| "no migrations".to_owned(), TableInfo::paths);
            return Err(refuse.live(format!(
                "no migration from schema {} to schema {}: {} {} carries {carries}",
                from.schema,
                info.schema,
                carrier.info().name,
                carrier.info().version
            )));
        };
        // The migration's other type must be the one live (up) or the one wanted (down).
        let (expected_fingerprint, expected) = if up {
            (&from.fingerprint, "the live one")
        } else {
            (&info.shape.fingerprint, "this build's")
        };
        if &found.shape.fingerprint != expected_fingerprint {
            let other = if up {
                holder_shape(holder, info)
                    .map(|live| live.differences(expected, &found.shape, "the migration's"))
            } else {
                Some(
                    info.shape
                        .differences(expected, &found.shape, "the migration's"),
                )
            };
            return Err(refuse.live(format!(
                "the migration {} schema {} is for another value type than {expected}: {}",
                if up { "up from" } else { "down to" },
                found.schema,
                other.unwrap_or_else(|| "its type differs".into())
            )));
        }
        let migration = Self {
            plugin: plugin.info().name.clone(),
            name: info.name.clone(),
            log: from.start_log(),
            from: Arc::clone(from),
            to,
            carrier: Arc::clone(carrier),
            run: found.run,
            up,
        };
        for key in migration.from.keys() {
            migration.migrate_key(&key).map_err(|e| refuse.live(e))?;
        }
        Ok(migration)
    }

    /// Migrates the entry under `key` (or its removal) from the old table into the new one.
    fn migrate_key(&self, key: &[u8]) -> Result<(), String> {
        let value = match self.from.get(key) {
            Some(value) => {
                let mut out = RVec::new();
                ffi_result((self.run)(RSlice::from_slice(&value), &mut out)).map_err(|e| {
                    format!(
                        "migration {self} failed for the entry under key {}: {e}",
                        crate::bounded::Bounded(&String::from_utf8_lossy(key))
                    )
                })?;
                Some(out.into_vec())
            }
            None => None,
        };
        self.to.put_raw(key, value);
        Ok(())
    }

    /// Migrates again the keys written to the old table since the last catch-up; returns how
    /// many.
    pub(crate) fn catch_up(&self) -> Result<usize, String> {
        let keys = self.log.take();
        for key in &keys {
            self.migrate_key(key)?;
        }
        Ok(keys.len())
    }

    /// After the last catch-up, with the requests that could write the old table drained: the
    /// new table takes over what the old one had still to save, and will write every entry
    /// again in its own schema; a table migrated up keeps its writes out of the store until the
    /// record names its build (see `host/publish.rs`). Flags and pointers: nothing here grows
    /// with the table.
    pub(crate) fn finish(&self) {
        self.to.inherit_dirty(&self.from);
        if self.persisted() {
            self.to.rewrite_all();
            if self.up {
                self.to.hold_store();
            }
        }
    }

    /// Whether the migrated table is kept in the store.
    pub(crate) fn persisted(&self) -> bool {
        self.to.settings.durability.is_persisted()
    }

    /// The new table.
    pub(crate) fn target(&self) -> &Arc<Table> {
        &self.to
    }

    /// How many entries the new table holds.
    pub(crate) fn entries(&self) -> u64 {
        self.to.len()
    }
}

impl Drop for TableMigration {
    fn drop(&mut self) {
        self.from.end_log(&self.log);
    }
}

/// Reads table `info` back from the store into `table`; returns whether the store had it.
/// Entries of an older schema go through this build's `up`.
fn restore(
    store: &Store,
    table: &Arc<Table>,
    info: &TableInfo,
    refuse: &Refusal<'_>,
) -> Result<bool, DeployError> {
    let label = crate::table::store_label(table);
    let saved = store
        .read_table(&label)
        .map_err(|e| refuse.saved(store.path(), e.to_string()))?;
    let Some(SavedTable { meta, entries }) = saved else {
        return Ok(false);
    };
    if meta.key != info.key.0 {
        return Err(refuse.saved(
            store.path(),
            format!(
                "its keys were saved as {}, this build's are {}",
                graft_api::table::KeyKind(meta.key).name(),
                info.key.name()
            ),
        ));
    }
    let mut migrated = Vec::new();
    for (key, schema, value) in entries {
        let saved_fingerprint = meta.schemas.get(&schema).map(String::as_str);
        let value = if schema == info.schema {
            if saved_fingerprint != Some(info.shape.fingerprint.as_str()) {
                return Err(refuse.saved(
                    store.path(),
                    format!(
                        "schema {schema} was saved with another value type than this build's \
                         {} (a changed value type needs a new schema number and migrations)",
                        info.shape.text
                    ),
                ));
            }
            value
        } else if schema < info.schema {
            let Some(up) = info.migration(true, schema) else {
                return Err(refuse.saved(
                    store.path(),
                    format!(
                        "entries of schema {schema} are saved and this build carries {}",
                        info.paths()
                    ),
                ));
            };
            if saved_fingerprint != Some(up.shape.fingerprint.as_str()) {
                return Err(refuse.saved(
                    store.path(),
                    format!(
                        "schema {schema} was saved with another value type than this build's \
                         migration up from it reads ({})",
                        up.shape.text
                    ),
                ));
            }
            let mut out = RVec::new();
            ffi_result((up.run)(RSlice::from_slice(&value), &mut out)).map_err(|e| {
                refuse.saved(
                    store.path(),
                    format!("migrating a saved entry up from schema {schema} failed: {e}"),
                )
            })?;
            migrated.push(key.clone());
            out.into_vec()
        } else {
            return Err(refuse.saved(
                store.path(),
                format!(
                    "entries of schema {schema} are saved, newer than this build's {}: only a \
                     build of schema {schema} can migrate them down (start on it, then roll \
                     back)",
                    info.schema
                ),
            ));
        };
        table.put_raw(&key, Some(value));
    }
    table.put_back_rewrite(migrated);
    tracing::info!(table = %label, entries = table.len(), store = %store.path().display(), "restoring a saved table");
    Ok(true)
}
