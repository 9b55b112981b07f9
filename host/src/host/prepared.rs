//! What the pipeline hands the rest of the host: a [`Prepared`] release, ready to publish.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::carry::{Migration, TableMigration};
use crate::live::generation::Generation;
use crate::loader::LoadedPlugin;
use crate::report::DeployReport;
use crate::status::ReleaseRecord;

/// A release that passed every step before going live: staged, loaded, checked, linked and
/// initialised. [`Host::publish`](crate::Host::publish) makes it current; dropping it lets its
/// libraries go.
///
/// Its [`generation`](Prepared::generation) can also be pinned directly, which is how a staged
/// rollout serves a canary beside the current generation before publishing it.
pub struct Prepared {
    pub(super) generation: Arc<Generation>,
    /// The generation that was current when it was prepared.
    pub(super) base: u64,
    pub(super) kind: Kind,
    pub(super) record: ReleaseRecord,
    pub(super) report: DeployReport,
    pub(super) started: Instant,
    /// Linking and initialising: the first part of the report's `go_live`.
    pub(super) linked: Duration,
    /// The plugins the release shipped (not carried over), with their files.
    pub(super) shipped: Vec<Shipped>,
    /// State migrations publish runs again, on the quiescent state.
    pub(super) migrations: Vec<Migration>,
    /// Table migrations publish catches up and finishes.
    pub(super) table_migrations: Vec<TableMigration>,
    /// The same builds under the same name as the generation it was prepared against.
    pub(super) unchanged: bool,
}

/// One plugin file a prepared release shipped.
#[derive(Debug, Clone)]
pub(crate) struct Shipped {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) file: PathBuf,
    /// What the release record keeps as its source.
    pub(crate) origin: Option<PathBuf>,
    /// What the release record keeps as its voucher.
    pub(crate) voucher: Option<String>,
}

/// What publishing a prepared release does to the history.
#[derive(Debug)]
pub(super) enum Kind {
    /// A new release: pushed onto the history.
    Deploy,
    /// An earlier release, `history[to]`: it and the releases after it leave the history,
    /// and it is pushed again.
    Rollback { to: usize },
    /// The last recorded release, on a fresh host: the recorded history comes back.
    Restore(VecDeque<ReleaseRecord>),
}

impl Prepared {
    /// The prepared generation: linked and initialised, not current.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// The id it will keep when published.
    pub fn id(&self) -> u64 {
        self.generation.id()
    }

    /// The generation it was prepared against: publishing requires it to be current still.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// What the deploy will have done once published (timings so far).
    pub fn report(&self) -> &DeployReport {
        &self.report
    }

    /// When the release is the very one live (the same builds under the same name) and its
    /// base is current still: what [`Host::deploy`](crate::Host::deploy) answers instead of
    /// publishing a copy of the current generation (`unchanged`, the current generation's
    /// id). A rollout's canary is published whatever this says.
    pub fn unchanged(&self, current: u64) -> Option<DeployReport> {
        if !self.unchanged || !matches!(self.kind, Kind::Deploy) || current != self.base {
            return None;
        }
        let mut report = self.report.clone();
        report.generation = self.base;
        report.unchanged = true;
        report.elapsed = self.started.elapsed();
        Some(report)
    }

    pub(crate) fn shipped(&self) -> &[Shipped] {
        &self.shipped
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("generation", &self.generation.id())
            .field("base", &self.base)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}
