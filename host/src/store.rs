//! The embedded store: what plugins ask to keep across restarts, in one crash-safe database,
//! `DATA/state.redb` ([redb](https://docs.rs/redb): copy-on-write B-trees, checksummed pages,
//! two commit slots, one fsync per durable commit).
//!
//! It holds the saved state cells (table `cells`: plugin name → a checksummed record of the
//! value's bytes, `snapshot.rs`) and, for each persisted table, its entries. It is opened when
//! the host is built, after a check of a copy of it: redb opens the copy (recovering from a
//! crash as it always does) and verifies every page's checksum. A file that fails, or that
//! redb cannot open, refuses the host naming the file ([`StoreError`]), and is left exactly as
//! it was (redb writes to a file it opens, even one it then finds damaged: hence the copy); it
//! can only be set aside ([`set_aside`]) for a fresh start. redb panicking on a damaged file
//! counts as damaged. Regular reads do not verify checksums: the check at start is what does.
//!
//! A data directory from before the store (saved state in `DATA/state/<plugin>.state` files)
//! is imported once, when the store is created; the old files stay where they are.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::bounded::{Bounded, BoundedPath};
use crate::keyset::Key;
use crate::snapshot::{self, Snapshot};

/// The store's file, in the data directory.
pub const STORE_FILE: &str = "state.redb";

/// The lock file beside it, which the host holds locked while the store is open.
const LOCK_FILE: &str = "state.redb.lock";

const CELLS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("cells");

/// Each persisted table's description: `plugin/table` → [`TableMeta`] as JSON.
const TABLES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tables");

/// The redb table holding the entries of table `label` (`plugin/table`): key bytes → the
/// value's schema (4 bytes, little-endian) and its encoded bytes.
fn entries_table(label: &str) -> String {
    format!("t/{label}")
}

/// What the store records of a persisted table: its key kind, and the value type of each
/// schema its entries were written in (an entry carries its schema).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TableMeta {
    pub(crate) key: u8,
    pub(crate) schemas: std::collections::BTreeMap<u32, String>,
}

/// A persisted table read back: its description and entries, each with its schema.
#[derive(Debug, Default)]
pub(crate) struct SavedTable {
    pub(crate) meta: TableMeta,
    pub(crate) entries: Vec<(Key, u32, Vec<u8>)>,
}

/// What one save writes of one table.
#[derive(Debug)]
pub(crate) struct TableWrite {
    /// `plugin/table`.
    pub(crate) label: String,
    pub(crate) key: u8,
    pub(crate) schema: u32,
    pub(crate) fingerprint: String,
    /// Drop what the store holds of the table first.
    pub(crate) replace: bool,
    /// Keys and their values now (`None`: removed).
    pub(crate) entries: Vec<(Key, Option<std::sync::Arc<[u8]>>)>,
    /// Where, in `entries`, the keys written again after a migration start (the others were
    /// dirty).
    pub(crate) rewritten_from: usize,
}

/// One durable transaction: cells (the whole set, if given), table writes, and the persisted
/// tables to keep (if given: the others are dropped).
#[derive(Debug, Default)]
pub(crate) struct Save<'a> {
    pub(crate) cells: Option<&'a [(String, Snapshot)]>,
    pub(crate) tables: Vec<TableWrite>,
    pub(crate) keep_tables: Option<Vec<String>>,
}

/// The store could not be opened: the host refuses to start rather than start without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The saved state cannot be used (damaged, not a store, an old state file that does not
    /// check out).
    #[error("the saved state in {} cannot be used: {}; graft leaves it as it is: set it aside (graft serve --set-aside-state) to start with fresh state", BoundedPath(.path), Bounded(.reason))]
    Unusable {
        /// The store's file (or the old state file that could not be imported).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another host (in this process or another) has the store open: one host per data
    /// directory.
    #[error("the saved state in {} is open in another graft host: one host per data directory", BoundedPath(.path))]
    InUse {
        /// The store's file.
        path: PathBuf,
    },
}

impl StoreError {
    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            Self::Unusable { path, .. } | Self::InUse { path } => path,
        }
    }
}

/// Why a save did not reach the store. What was saved before stays as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreWriteError {
    /// The store's file was moved or replaced while the host ran: nothing is written where a
    /// restart would not find it.
    #[error("{} is no longer the file this host opened (it was moved or replaced while the host ran): nothing is written where a restart would not find it", BoundedPath(.0))]
    Replaced(PathBuf),
    /// The embedded database refused the write (a full disk, an I/O error, ...).
    #[error("the store refused the write: {0}")]
    Database(#[from] redb::Error),
    /// A table's description could not be encoded.
    #[error("encoding a table's description: {0}")]
    Encode(#[from] serde_json::Error),
    /// The database panicked (on a damaged file, most likely); what it said.
    #[error("the store failed writing ({})", Bounded(.0))]
    Panicked(String),
}

/// The open store.
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
    /// The file's device and inode when it was opened: a save refuses to write into a file
    /// that is no longer at `path` (moved aside or replaced while the host ran), where a restart
    /// would never find what it wrote.
    identity: (u64, u64),
    /// `DATA/state.redb.lock`, locked (`flock`) while the store is open; after the database,
    /// so that it is released last.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store in `data_dir`, creating it (and importing old state files) if there is
    /// none.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the file exists and cannot be opened or fails redb's integrity check,
    /// or an old state file cannot be imported.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(STORE_FILE);
        let existed = path.exists();
        let error = |reason: String| StoreError::Unusable {
            path: path.clone(),
            reason,
        };
        // One host per data directory, across processes: a store another host has open is
        // reported as such rather than checked while it is written.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join(LOCK_FILE))
            .map_err(|e| error(format!("creating its lock file: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse { path: path.clone() })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(error(format!("locking its lock file: {e}")))
            }
        }
        if existed {
            check_copy(&path, data_dir).map_err(error)?;
        }
        let db = guarded(panicked_reading, || {
            match Database::builder().create(&path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(None),
                opened => opened.map(Some).map_err(|e| e.to_string()),
            }
        })
        .map_err(error)?
        .ok_or_else(|| StoreError::InUse { path: path.clone() })?;
        let identity = identity(&path).map_err(|e| error(format!("reading it: {e}")))?;
        let store = Self {
            db,
            path,
            identity,
            _lock: lock,
        };
        if !existed {
            store.import_state_files(&data_dir.join(snapshot::DIR))?;
        }
        Ok(store)
    }

    /// The store's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `plugin`'s saved state cell, if there is one. The error says what is wrong with it (the
    /// caller names the store).
    pub(crate) fn read_cell(&self, plugin: &str) -> Result<Option<Snapshot>, StoreReadError> {
        guarded(StoreReadError::Panicked, || {
            let read = self.db.begin_read().map_err(redb::Error::from)?;
            let cells = match read.open_table(CELLS) {
                Ok(cells) => cells,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            let Some(record) = cells.get(plugin).map_err(redb::Error::from)? else {
                return Ok(None);
            };
            Ok(Some(Snapshot::decode(record.value())?))
        })
    }

    /// Writes these cells, and removes the saved cells of plugins not among them (so that a
    /// restart does not bring back the state of a plugin that was no longer live), in one
    /// durable transaction.
    ///
    /// # Errors
    ///
    /// If the transaction fails; what was saved before stays as it was.
    #[cfg(test)]
    pub(crate) fn write_cells(&self, cells: &[(String, Snapshot)]) -> Result<(), StoreWriteError> {
        self.save(&Save {
            cells: Some(cells),
            ..Save::default()
        })
    }

    /// Writes one save in one durable transaction (committed and fsynced when this returns).
    ///
    /// # Errors
    ///
    /// If the transaction fails; what was saved before stays as it was.
    pub(crate) fn save(&self, save: &Save<'_>) -> Result<(), StoreWriteError> {
        match identity(&self.path) {
            Ok(now) if now == self.identity => {}
            _ => return Err(StoreWriteError::Replaced(self.path.clone())),
        }
        catch_unwind(AssertUnwindSafe(|| {
            let write = self.db.begin_write().map_err(redb::Error::from)?;
            if let Some(cells) = save.cells {
                write_cells(&write, cells)?;
            }
            for table in &save.tables {
                write_table(&write, table)?;
            }
            if let Some(keep) = &save.keep_tables {
                drop_tables_but(&write, keep)?;
            }
            write.commit().map_err(redb::Error::from)?;
            Ok(())
        }))
        .unwrap_or_else(|payload| Err(StoreWriteError::Panicked(panic_message(payload.as_ref()))))
    }

    /// Persisted table `label` (`plugin/table`) as saved, if it was.
    pub(crate) fn read_table(&self, label: &str) -> Result<Option<SavedTable>, StoreReadError> {
        guarded(StoreReadError::Panicked, || {
            let read = self.db.begin_read().map_err(redb::Error::from)?;
            let meta = match read.open_table(TABLES) {
                Ok(tables) => match tables.get(label).map_err(redb::Error::from)? {
                    Some(meta) => {
                        serde_json::from_slice::<TableMeta>(meta.value()).map_err(|source| {
                            StoreReadError::TableMeta {
                                table: label.to_owned(),
                                source,
                            }
                        })?
                    }
                    None => return Ok(None),
                },
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            let name = entries_table(label);
            let definition: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&name);
            let mut saved = SavedTable {
                meta,
                entries: Vec::new(),
            };
            let entries = match read.open_table(definition) {
                Ok(entries) => entries,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(saved)),
                Err(e) => return Err(redb::Error::from(e).into()),
            };
            for entry in entries.iter().map_err(redb::Error::from)? {
                let (key, value) = entry.map_err(redb::Error::from)?;
                let value = value.value();
                let (schema, bytes) = value
                    .split_first_chunk::<4>()
                    .ok_or_else(|| StoreReadError::EntryWithoutSchema(label.to_owned()))?;
                saved.entries.push((
                    key.value().into(),
                    u32::from_le_bytes(*schema),
                    bytes.to_vec(),
                ));
            }
            Ok(Some(saved))
        })
    }

    /// Imports the state files of a data directory from before the store, once, when the store
    /// is created.
    fn import_state_files(&self, dir: &Path) -> Result<(), StoreError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut cells = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(plugin) = name.to_str().and_then(snapshot::plugin_of) else {
                continue;
            };
            let refused = |reason: String| StoreError::Unusable {
                path: entry.path(),
                reason,
            };
            let saved = snapshot::read(dir, plugin).map_err(|e| refused(e.to_string()))?;
            if let Some(saved) = saved {
                cells.push((plugin.to_owned(), saved));
            }
        }
        if cells.is_empty() {
            return Ok(());
        }
        self.save(&Save {
            cells: Some(&cells),
            ..Save::default()
        })
        .map_err(|error| StoreError::Unusable {
            path: self.path.clone(),
            reason: error.to_string(),
        })?;
        tracing::info!(from = %dir.display(), cells = cells.len(), "imported saved state files into the store");
        Ok(())
    }
}

fn write_cells(
    write: &redb::WriteTransaction,
    cells: &[(String, Snapshot)],
) -> Result<(), StoreWriteError> {
    let mut table = write.open_table(CELLS).map_err(redb::Error::from)?;
    let stale: Vec<String> = table
        .iter()
        .map_err(redb::Error::from)?
        .filter_map(Result::ok)
        .map(|(plugin, _)| plugin.value().to_owned())
        .filter(|plugin| !cells.iter().any(|(p, _)| p == plugin))
        .collect();
    for plugin in stale {
        table.remove(plugin.as_str()).map_err(redb::Error::from)?;
    }
    for (plugin, snapshot) in cells {
        table
            .insert(plugin.as_str(), snapshot.encode().as_slice())
            .map_err(redb::Error::from)?;
    }
    Ok(())
}

fn write_table(write: &redb::WriteTransaction, table: &TableWrite) -> Result<(), StoreWriteError> {
    let name = entries_table(&table.label);
    let definition: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&name);
    let mut tables = write.open_table(TABLES).map_err(redb::Error::from)?;
    let mut meta = match tables
        .get(table.label.as_str())
        .map_err(redb::Error::from)?
    {
        Some(meta) if !table.replace => serde_json::from_slice(meta.value()).unwrap_or_default(),
        _ => TableMeta::default(),
    };
    if table.replace {
        write.delete_table(definition).map_err(redb::Error::from)?;
    }
    meta.key = table.key;
    meta.schemas.insert(table.schema, table.fingerprint.clone());
    let meta = serde_json::to_vec(&meta)?;
    tables
        .insert(table.label.as_str(), meta.as_slice())
        .map_err(redb::Error::from)?;
    let mut entries = write.open_table(definition).map_err(redb::Error::from)?;
    let mut tagged = Vec::new();
    for (key, value) in &table.entries {
        match value {
            Some(value) => {
                tagged.clear();
                tagged.extend_from_slice(&table.schema.to_le_bytes());
                tagged.extend_from_slice(value);
                entries
                    .insert(&**key, tagged.as_slice())
                    .map_err(redb::Error::from)?;
            }
            None => {
                entries.remove(&**key).map_err(redb::Error::from)?;
            }
        }
    }
    Ok(())
}

/// Drops the persisted tables not in `keep` (labels `plugin/table`).
fn drop_tables_but(write: &redb::WriteTransaction, keep: &[String]) -> Result<(), StoreWriteError> {
    let mut tables = write.open_table(TABLES).map_err(redb::Error::from)?;
    let stale: Vec<String> = tables
        .iter()
        .map_err(redb::Error::from)?
        .filter_map(Result::ok)
        .map(|(label, _)| label.value().to_owned())
        .filter(|label| !keep.contains(label))
        .collect();
    for label in stale {
        tables.remove(label.as_str()).map_err(redb::Error::from)?;
        let name = entries_table(&label);
        let definition: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new(&name);
        write.delete_table(definition).map_err(redb::Error::from)?;
    }
    Ok(())
}

/// Moves the store of `data_dir` aside (to `state.redb.set-aside-SECONDS`), so that the host
/// starts with fresh state; returns where it went, or `None` if there was no store. Nothing is
/// deleted.
///
/// # Errors
///
/// If the file cannot be renamed.
pub fn set_aside(data_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = data_dir.join(format!("{STORE_FILE}.set-aside-{seconds}"));
    let mut n = 1;
    while aside.exists() {
        aside = data_dir.join(format!("{STORE_FILE}.set-aside-{seconds}-{n}"));
        n += 1;
    }
    std::fs::rename(&path, &aside)?;
    crate::atomic_file::sync_dir(data_dir)?;
    Ok(Some(aside))
}

/// The device and inode of the file at `path`.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Checks the store at `path` on a copy of it (in `dir`, removed after): redb opens it,
/// recovering from a crash as it always does, then verifies every page's checksum.
fn check_copy(path: &Path, dir: &Path) -> Result<(), String> {
    let copy = dir.join(format!(".{STORE_FILE}.check-{}", std::process::id()));
    std::fs::copy(path, &copy).map_err(|e| format!("reading it: {e}"))?;
    let checked = guarded(panicked_reading, || {
        let mut db = Database::builder()
            .create(&copy)
            .map_err(|e| e.to_string())?;
        match db.check_integrity() {
            Ok(true) => Ok(()),
            Ok(false) => Err(
                "a page's checksum does not match (redb could only repair it by \
                              dropping what it held)"
                    .into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    });
    let _ = std::fs::remove_file(&copy);
    checked
}

/// Runs a store operation with redb's panics caught: a panic reading a damaged file is the
/// file's fault, reported (by `panicked`, given what the panic said) as such, not a crash of
/// the host.
fn guarded<T, E>(
    panicked: impl FnOnce(String) -> E,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(panicked(panic_message(payload.as_ref()))))
}

/// What [`check_copy`] says of a panic.
fn panicked_reading(message: String) -> String {
    format!("the store failed reading it ({})", Bounded(&message))
}

/// Why saved state could not be read from the store (the caller names the store).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreReadError {
    #[error(transparent)]
    Database(#[from] redb::Error),
    /// A saved cell's record.
    #[error(transparent)]
    Cell(#[from] crate::snapshot::SnapshotError),
    #[error("the description of table {table}: {source}")]
    TableMeta {
        table: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("an entry of table {0} without its schema")]
    EntryWithoutSchema(String),
    /// redb panicked reading it (what the panic said).
    #[error("the store failed reading it ({})", Bounded(.0))]
    Panicked(String),
}

/// What a caught panic said, if it said it in words.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(schema: u32) -> Snapshot {
        Snapshot {
            schema,
            align: 8,
            fingerprint: "abc123".into(),
            bytes: (0..72).collect(),
        }
    }

    #[test]
    fn cells_read_back_and_a_write_replaces_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_cell("a").unwrap(), None);
        store
            .write_cells(&[("a".into(), snapshot(1)), ("b".into(), snapshot(2))])
            .unwrap();
        store.write_cells(&[("b".into(), snapshot(3))]).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_cell("a").unwrap(), None);
        assert_eq!(store.read_cell("b").unwrap(), Some(snapshot(3)));
    }

    #[test]
    fn a_store_moved_away_while_open_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_cells(&[("a".into(), snapshot(1))]).unwrap();
        std::fs::rename(dir.path().join(STORE_FILE), dir.path().join("elsewhere")).unwrap();
        let error = store.write_cells(&[("a".into(), snapshot(2))]).unwrap_err();
        assert!(matches!(error, StoreWriteError::Replaced(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("no longer the file this host opened"),
            "{error}"
        );
    }

    #[test]
    fn a_store_open_in_another_host_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        first.write_cells(&[("a".into(), snapshot(1))]).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(matches!(error, StoreError::InUse { .. }), "{error}");
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn old_state_files_are_imported_once_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        snapshot::write_all(
            &dir.path().join(snapshot::DIR),
            &[("c".into(), snapshot(4))],
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_cell("c").unwrap(), Some(snapshot(4)));
        assert!(dir.path().join("state/c.state").exists());
    }

    #[test]
    fn a_damaged_store_is_refused_and_left_exactly_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_cells(&[("counter".into(), snapshot(2))])
            .unwrap();
        drop(store);
        let path = dir.path().join(STORE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let record = bytes.windows(8).position(|w| w == b"GRAFTST1").unwrap();
        bytes[record + 40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(matches!(&error, StoreError::Unusable { .. }), "{error}");
        assert_eq!(error.path(), path);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "not written to");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, [STORE_FILE, LOCK_FILE], "no copy left behind");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]

        /// A byte flipped anywhere in the file: the store refuses to open, or the cell is
        /// refused, or it reads back as it was; never another value, never a panic.
        #[test]
        fn a_flipped_byte_is_refused_or_harmless(at in proptest::prelude::any::<proptest::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            store.write_cells(&[("counter".into(), snapshot(2))]).unwrap();
            drop(store);
            let path = dir.path().join(STORE_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(store) = Store::open(dir.path()) {
                match store.read_cell("counter") {
                    Ok(read) => proptest::prop_assert_eq!(read, Some(snapshot(2)), "byte {}", at),
                    Err(error) => proptest::prop_assert!(error.to_string().len() < 600, "{}", error),
                }
            }
        }
    }

    #[test]
    fn a_file_that_is_not_a_store_refuses_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE), vec![7u8; 10_000]).unwrap();
        let error = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("state.redb cannot be used") && error.contains("--set-aside-state"),
            "{error}"
        );
        let aside = set_aside(dir.path()).unwrap().unwrap();
        assert!(aside.exists() && !dir.path().join(STORE_FILE).exists());
        Store::open(dir.path()).unwrap();
        assert_eq!(set_aside(&dir.path().join("nothing")).unwrap(), None);
    }
}
