//! The ledger: the releases that went live, in memory and in `DATA/releases.json`.
//!
//! It keeps the history (rollback's target, a restart's fallbacks), the last deploy's outcome,
//! and the libraries the unload policy keeps loaded for the history. Its lock is the publish
//! lock: [`Host::publish`](crate::Host::publish) holds it across the one store that makes a
//! release live, so the history and the current generation change together. The record file is
//! written after the lock, ordered, so an older history never overwrites a newer one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::atomic_file;
use crate::bounded::{truncate, MAX_MESSAGE};
use crate::error::{DeployCause, DeployError, DisplayChain};
use crate::live::generation::Generation;
use crate::loader::LoadedPlugin;
use crate::registry::Libraries;
use crate::status::{DeployOutcome, PluginRecord, ReleaseRecord};
use crate::unload::UnloadPolicy;

use super::prepared::{Kind, Shipped};

/// The file, in the data directory, that records the releases that went live.
pub const RECORD: &str = "releases.json";

/// How much history the ledger keeps, and what it keeps loaded for it.
#[derive(Debug, Clone)]
pub(super) struct LedgerSettings {
    pub(super) unload_policy: UnloadPolicy,
    /// Releases kept for rollback, the current one included (at least 2).
    pub(super) history_len: usize,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            unload_policy: UnloadPolicy::default(),
            history_len: 5,
        }
    }
}

/// The releases that went live, and the record of them in the data directory.
pub(super) struct Ledger {
    settings: LedgerSettings,
    /// `DATA/releases.json`: the releases that went live, the last one current.
    record_path: PathBuf,
    /// The version of the history last written to `record_path`: writes never go backwards.
    record_written: Mutex<u64>,
    /// What publishing changes, under the one publish lock; never held across I/O or plugin
    /// code.
    book: Mutex<Book>,
}

/// The ledger's state under the publish lock.
#[derive(Default)]
pub(super) struct Book {
    /// Releases that went live, oldest first; the last one is current.
    pub(super) history: VecDeque<ReleaseRecord>,
    /// Libraries kept alive by [`UnloadPolicy::Never`] or [`UnloadPolicy::KeepHistory`], by
    /// SHA-256.
    retained: HashMap<String, Arc<LoadedPlugin>>,
    pub(super) last_deploy: Option<DeployOutcome>,
    /// Bumped by every publish, so record writes can be ordered.
    pub(super) version: u64,
}

/// Which earlier release a rollback makes current again.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum RollbackTo {
    /// The release before the current one.
    #[default]
    Previous,
    /// The newest earlier release that went live as this generation.
    Generation(u64),
    /// The newest earlier release of this name.
    Release(String),
}

impl std::fmt::Display for RollbackTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Previous => f.write_str("the previous release"),
            Self::Generation(id) => write!(f, "generation {id}"),
            Self::Release(name) => write!(f, "release {}", crate::bounded::Bounded(name)),
        }
    }
}

impl Book {
    /// The earlier release `to` names, and where it is in the history (the current release,
    /// the last one, is never a target): the newest that matches.
    pub(super) fn rollback_target(&self, to: &RollbackTo) -> Option<(usize, ReleaseRecord)> {
        let earlier = self.history.len().checked_sub(1)?;
        let at = match to {
            RollbackTo::Previous => earlier.checked_sub(1)?,
            RollbackTo::Generation(id) => (0..earlier)
                .rev()
                .find(|&i| self.history[i].generation == *id)?,
            RollbackTo::Release(name) => (0..earlier)
                .rev()
                .find(|&i| self.history[i].name.as_deref() == Some(name))?,
        };
        Some((at, self.history[at].clone()))
    }

    /// The earlier releases, newest first, as a refusal lists them: `generation 3 (v2), ...`.
    pub(super) fn earlier(&self) -> String {
        let earlier = self.history.len().saturating_sub(1);
        let listed: Vec<String> = self
            .history
            .iter()
            .take(earlier)
            .rev()
            .map(|r| {
                format!(
                    "generation {} ({})",
                    r.generation,
                    r.name.as_deref().unwrap_or("-")
                )
            })
            .collect();
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        }
    }
}

impl Ledger {
    /// The ledger of data directory `data_dir`, empty until a release goes live or the record
    /// is read back.
    pub(super) fn new(data_dir: &Path, settings: LedgerSettings) -> Self {
        Self {
            settings,
            record_path: data_dir.join(RECORD),
            record_written: Mutex::new(0),
            book: Mutex::new(Book::default()),
        }
    }

    pub(super) fn record_path(&self) -> &Path {
        &self.record_path
    }

    pub(super) fn unload_policy(&self) -> UnloadPolicy {
        self.settings.unload_policy
    }

    /// Takes the publish lock.
    pub(super) fn lock(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves no half-published state: publishing is one store.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The history of live releases recorded in the data directory, oldest first: empty for a
    /// fresh data directory.
    pub(super) fn read_record(&self) -> Result<VecDeque<ReleaseRecord>, DeployCause> {
        recorded_history(&self.record_path)
    }

    /// Records a refused release as the last deploy's outcome, and logs it.
    pub(super) fn note_refusal(&self, error: &DeployError) {
        tracing::warn!(error = %DisplayChain(error), "release rejected");
        self.lock().last_deploy = Some(outcome(None, Some(error)));
    }

    /// Updates the book for release `record`, of generation `published`, that just went live:
    /// its history (as `kind` says), the libraries the unload policy keeps, the last deploy's
    /// outcome and the version. Returns the version and the history to write.
    pub(super) fn went_live(
        &self,
        book: &mut Book,
        kind: Kind,
        record: ReleaseRecord,
        published: &Generation,
        libraries: &Libraries,
    ) -> (u64, VecDeque<ReleaseRecord>) {
        match kind {
            Kind::Deploy => {}
            Kind::Rollback { to } => {
                // The releases after the target leave the history; the target is pushed again.
                book.history.truncate(to);
            }
            Kind::Restore(history) => {
                book.history = history;
                book.history.pop_back();
            }
        }
        book.history.push_back(record);
        while book.history.len() > self.settings.history_len {
            book.history.pop_front();
        }
        self.retain(book, published, libraries);
        book.last_deploy = Some(outcome(Some(published.id()), None));
        book.version += 1;
        (book.version, book.history.clone())
    }

    /// Holds the libraries the unload policy keeps; the rest are let go, each closed once no
    /// generation uses it.
    fn retain(&self, book: &mut Book, published: &Generation, libraries: &Libraries) {
        match self.settings.unload_policy {
            UnloadPolicy::WhenDrained => {}
            UnloadPolicy::Never => {
                for plugin in published.loaded() {
                    book.retained
                        .entry(plugin.sha256().to_owned())
                        .or_insert_with(|| Arc::clone(plugin));
                }
            }
            UnloadPolicy::KeepHistory => {
                let kept: HashSet<&str> = book
                    .history
                    .iter()
                    .flat_map(|r| r.plugins.iter().map(|p| p.sha256.as_str()))
                    .collect();
                let retained: HashMap<String, _> = kept
                    .into_iter()
                    .filter_map(|sha| Some((sha.to_owned(), libraries.get(sha)?)))
                    .collect();
                book.retained = retained;
            }
        }
    }

    /// Writes the history to `DATA/releases.json` (temp file, fsync, rename), unless a newer
    /// one was written already.
    pub(super) fn write_record(&self, version: u64, history: &VecDeque<ReleaseRecord>) {
        let mut written = self
            .record_written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *written >= version {
            return;
        }
        let result = serde_json::to_vec_pretty(history)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_file::write(&self.record_path, &bytes));
        match result {
            Ok(()) => *written = version,
            // The release is live; only a restart would miss it. Say so loudly.
            Err(error) => tracing::error!(
                path = %self.record_path.display(),
                %error,
                "could not record the live release"
            ),
        }
    }

    /// The release record's entries for a new generation's plugins. Where each came from (its
    /// source, its voucher) is what the release shipped it with, or for a plugin carried over,
    /// what the history says (read under one lock).
    pub(super) fn records_of(
        &self,
        generation: &Generation,
        shipped: &[Shipped],
    ) -> Vec<PluginRecord> {
        let book = self.lock();
        generation
            .loaded()
            .iter()
            .map(|p| {
                let sha256 = p.sha256();
                let (source, signed) = match shipped.iter().find(|s| s.plugin.sha256() == sha256) {
                    Some(s) => (s.origin.clone(), s.voucher.clone()),
                    None => book
                        .history
                        .iter()
                        .rev()
                        .flat_map(|r| &r.plugins)
                        .find(|r| r.sha256 == sha256)
                        .map_or((None, None), |r| (r.source.clone(), r.signed.clone())),
                };
                PluginRecord {
                    name: p.info().name.clone(),
                    version: p.info().version.clone(),
                    sha256: sha256.to_owned(),
                    staged: p.path().to_owned(),
                    source,
                    signed,
                }
            })
            .collect()
    }

    /// The staged copies the releases of `history` refer to, and until this host published a
    /// release, those of the record on disk too (a refused start leaves every copy it names for
    /// the next start). `None` if that record cannot be read: nothing may be deleted then.
    pub(super) fn staged_in_use(
        &self,
        history: &VecDeque<ReleaseRecord>,
    ) -> Option<HashSet<PathBuf>> {
        let on_disk = if self.lock().version == 0 {
            recorded_history(&self.record_path).ok()?
        } else {
            VecDeque::new()
        };
        Some(
            history
                .iter()
                .chain(&on_disk)
                .flat_map(|r| r.plugins.iter().map(|p| p.staged.clone()))
                .collect(),
        )
    }
}

/// The last deploy's outcome, its error truncated to [`MAX_MESSAGE`] bytes.
fn outcome(generation: Option<u64>, error: Option<&DeployError>) -> DeployOutcome {
    DeployOutcome {
        at_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        generation,
        error: error.map(|e| truncate(&DisplayChain(e).to_string(), MAX_MESSAGE).into_owned()),
    }
}

/// The history of live releases in the record at `path`, oldest first: empty if there is none.
fn recorded_history(path: &Path) -> Result<VecDeque<ReleaseRecord>, DeployCause> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(e) => return Err(DeployCause::Io("reading the release record".into(), e)),
    };
    serde_json::from_str(&text).map_err(|e| DeployCause::Record(e.to_string()))
}
