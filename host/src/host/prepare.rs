//! Prepare: the host runs its [pipeline](super::pipeline) on the live generation, and notes a
//! refusal in its [ledger](super::ledger).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{DeployCause, DeployError, Step};
use crate::link::OpenImports;
use crate::live::generation::Generation;
use crate::release::Manifest;
use crate::report::DeployReport;
use crate::status::ReleaseRecord;

use super::ledger::RollbackTo;
use super::pipeline::{Base, From, Plan};
use super::prepared::{Kind, Prepared, Shipped};
use super::Host;

impl Host {
    /// Prepares the release in `dir` against the current generation: every step of a deploy
    /// but the last one, publishing.
    ///
    /// # Errors
    ///
    /// [`DeployError`] naming the step, plugin and file that failed; nothing changed then.
    pub fn prepare(&self, dir: impl AsRef<Path>) -> Result<Prepared, DeployError> {
        let dir = dir.as_ref();
        let span = tracing::info_span!("prepare", release = %crate::bounded::BoundedPath(dir));
        let _entered = span.enter();
        self.prepare_dir(dir, Outcome::Recorded)
    }

    /// Prepares the release in `dir` against the current generation, from its manifest.
    fn prepare_dir(&self, dir: &Path, outcome: Outcome) -> Result<Prepared, DeployError> {
        let plan = self
            .pipeline
            .read_manifest(dir)
            .map(|(m, voucher)| Plan::from_manifest(dir, m, voucher));
        self.prepare_plan(plan, Kind::Deploy, OpenImports::Refuse, None, outcome)
    }

    /// Everything a deploy of the release in `dir` would do short of publishing, against the
    /// live generation, then nothing: the release is dropped (its libraries let go as a
    /// refused one's are). Returns what the deploy would have done (its generation id is used
    /// up). A refusal is not recorded as the last deploy's outcome: nothing was deployed.
    /// Initialisers run, as in any prepare.
    ///
    /// # Errors
    ///
    /// The [`DeployError`] [`Host::deploy`] would return, but for [`Step::Publish`].
    pub fn dry_run(&self, dir: impl AsRef<Path>) -> Result<DeployReport, DeployError> {
        let dir = dir.as_ref();
        let span = tracing::info_span!("dry run", release = %crate::bounded::BoundedPath(dir));
        let _entered = span.enter();
        let prepared = self.prepare_dir(dir, Outcome::Unrecorded)?;
        Ok(prepared.report().clone())
    }

    /// Prepares plugin libraries as a partial release without a manifest: each replaces (or
    /// adds) the plugin of the name it declares, and the rest of the current generation carries
    /// over. What `graft dev` does with each new build.
    ///
    /// There is no checksum to verify: graft hashes each file itself (while writing its staged
    /// copy) and goes through the same steps as [`Host::prepare`].
    ///
    /// # Errors
    ///
    /// As [`Host::prepare`].
    pub fn prepare_libraries(
        &self,
        label: Option<String>,
        libraries: &[PathBuf],
    ) -> Result<Prepared, DeployError> {
        let span = tracing::info_span!("prepare", release = label.as_deref().unwrap_or("builds"));
        let _entered = span.enter();
        let plan = self
            .pipeline
            .check_unsigned_allowed()
            .map(|()| Plan::from_libraries(label, libraries));
        self.prepare_plan(
            plan,
            Kind::Deploy,
            OpenImports::Refuse,
            None,
            Outcome::Recorded,
        )
    }

    /// Prepares the release before the current one, whole, from its staged copies (reusing the
    /// libraries still loaded).
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`] with no earlier release; otherwise as
    /// [`Host::prepare`].
    pub fn prepare_rollback(&self) -> Result<Prepared, DeployError> {
        self.prepare_rollback_to(&RollbackTo::Previous)
    }

    /// Prepares the earlier release `to` names, whole, from its staged copies: the newest of
    /// the history that matches (the current release excluded).
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`] if no earlier release matches; otherwise as
    /// [`Host::prepare`].
    pub fn prepare_rollback_to(&self, to: &RollbackTo) -> Result<Prepared, DeployError> {
        let span = tracing::info_span!("prepare", release = "rollback", to = %to);
        let _entered = span.enter();
        // The history and the current generation are read together: a publish changes both
        // under the same lock.
        let (target, earlier, base) = {
            let book = self.ledger.lock();
            (
                book.rollback_target(to),
                book.earlier(),
                self.live.current(),
            )
        };
        let Some((at, record)) = target else {
            let cause = match to {
                RollbackTo::Previous => DeployCause::NothingToRollBack,
                _ => DeployCause::NoSuchRelease {
                    wanted: to.to_string(),
                    earlier,
                },
            };
            let error = DeployError::new(Step::Manifest, None, None, cause);
            let plan = Err(error);
            let kind = Kind::Rollback { to: 0 };
            return self.prepare_plan(
                plan,
                kind,
                OpenImports::Refuse,
                Some(base),
                Outcome::Recorded,
            );
        };
        let plan = self
            .pipeline
            .verify_record(&record)
            .map(|()| Plan::from_record(&record, From::Staged));
        let kind = Kind::Rollback { to: at };
        self.prepare_plan(
            plan,
            kind,
            OpenImports::Refuse,
            Some(base),
            Outcome::Recorded,
        )
    }

    /// The history of live releases recorded in the data directory, oldest first: empty for a
    /// fresh data directory. Generation ids go on past every id it holds.
    pub(super) fn read_record(&self) -> Result<VecDeque<ReleaseRecord>, DeployError> {
        let history = self.ledger.read_record().map_err(|cause| {
            let file = Some(self.ledger.record_path().to_owned());
            self.refused(DeployError::new(Step::Manifest, None, file, cause))
        })?;
        // A record written before ids were reserved in `DATA/generations`: go on past it too.
        let next = history
            .iter()
            .map(|r| r.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        self.pipeline.ids().at_least(next);
        Ok(history)
    }

    /// Prepares the recorded release `history[at]` again, loaded `from` its staged copies or
    /// its sources, to be published with the history up to it (what came after it is dropped:
    /// it did not restore).
    pub(super) fn prepare_recorded(
        &self,
        history: &VecDeque<ReleaseRecord>,
        at: usize,
        from: From,
    ) -> Result<Prepared, DeployError> {
        let plan = self
            .pipeline
            .verify_record(&history[at])
            .map(|()| Plan::from_record(&history[at], from));
        let kept = history.iter().take(at + 1).cloned().collect();
        self.prepare_plan(
            plan,
            Kind::Restore(kept),
            OpenImports::Refuse,
            None,
            Outcome::Recorded,
        )
    }

    /// Prepares what `graft check` checks: a release directory, or a single library. A partial
    /// release (or a lone library) may leave imports open, bound to stubs; a complete one must
    /// link on its own.
    pub(crate) fn prepare_check(
        &self,
        path: &Path,
    ) -> Result<(Prepared, Option<Manifest>), DeployError> {
        if path.is_dir() {
            let (manifest, voucher) = self.pipeline.read_manifest(path)?;
            let open = if manifest.complete {
                OpenImports::Refuse
            } else {
                OpenImports::Stub
            };
            let mut plan = Plan::from_manifest(path, manifest.clone(), voucher);
            // The scratch host has nothing to remove; the report lists what the release would.
            plan.remove.clear();
            let prepared =
                self.prepare_plan(Ok(plan), Kind::Deploy, open, None, Outcome::Recorded)?;
            Ok((prepared, Some(manifest)))
        } else {
            let plan = Plan::from_libraries(None, &[path.to_owned()]);
            let prepared = self.prepare_plan(
                Ok(plan),
                Kind::Deploy,
                OpenImports::Stub,
                None,
                Outcome::Recorded,
            )?;
            Ok((prepared, None))
        }
    }

    /// Stages, loads and checks builds without initialising, linking or publishing them: what
    /// they declare, for `graft pack`. Two builds declaring one plugin are refused.
    pub(crate) fn load_declared(&self, libraries: &[PathBuf]) -> Result<Vec<Shipped>, DeployError> {
        self.pipeline.load_declared(libraries)
    }

    /// Runs the pipeline on `plan`. `base` is the generation to build on (the current one if
    /// `None`). The generation built is tracked by the live set from then on; a failure is
    /// logged and recorded as the last deploy's outcome.
    fn prepare_plan(
        &self,
        plan: Result<Plan, DeployError>,
        kind: Kind,
        open: OpenImports,
        base: Option<Arc<Generation>>,
        outcome: Outcome,
    ) -> Result<Prepared, DeployError> {
        let started = Instant::now();
        let base = base.unwrap_or_else(|| self.live.current());
        let restoring = matches!(kind, Kind::Restore(_));
        let records = |generation: &Generation, shipped: &[Shipped]| {
            self.ledger.records_of(generation, shipped)
        };
        let base = Base {
            generation: &base,
            calls: self.live.calls(),
            records: &records,
        };
        plan.and_then(|plan| self.pipeline.build(plan, kind, open, &base, started))
            .inspect(|prepared| self.live.track(&prepared.generation))
            .map_err(|error| match outcome {
                Outcome::Unrecorded => {
                    self.collect_left_staged();
                    error
                }
                Outcome::Recorded if restoring => self.noted(error),
                Outcome::Recorded => self.refused(error),
            })
    }
}

/// Whether a prepare's refusal is the last deploy's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Recorded,
    /// A dry run's: nothing was deployed.
    Unrecorded,
}
