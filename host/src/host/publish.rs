//! Publish: the one serialised step, and the bookkeeping after a release went live.
//!
//! Under the publish lock (the [ledger](super::ledger)'s), and nothing slow: check that the
//! release was prepared against the generation still current, store it in the
//! [live set](super::live_set), update the history and the libraries the unload policy keeps.
//! After the lock ([`Settle`], which a caller may defer past a lock of its own): write the
//! record of live releases (temp file, fsync, rename; ordered, so an
//! older history never overwrites a newer one) and delete staged copies nothing refers to.

use std::collections::VecDeque;
use std::time::Instant;

use crate::carry::{Migration, TableMigration};
use crate::error::{DeployCause, DeployError, Step};
use crate::hook::Hook;
use crate::live::gate::Closed;
use crate::report::DeployReport;
use crate::status::ReleaseRecord;

use super::pipeline::From;
use super::prepared::{Prepared, Shipped};
use super::Host;

/// How many times a migrating publish catches up on the table entries written since its copy,
/// at most, before it holds the boundary.
const CATCH_UP_ROUNDS: usize = 8;

/// How few entries left to catch up are few enough to catch up while requests are held.
const CATCH_UP_HELD: usize = 1024;

/// What a release that went live leaves to do: the durable record of live releases (and the
/// tables a migration left to write before or after it), the staged copies nothing refers to
/// any more, the `post_activate` hooks. [`Host::settle`] does it; until then a restart comes
/// back on the release before.
#[must_use = "the release is live but not recorded until it is settled (Host::settle)"]
#[derive(Debug)]
pub struct Settle {
    version: u64,
    history: VecDeque<ReleaseRecord>,
    table_migrations: Vec<TableMigration>,
    shipped: Vec<Shipped>,
}

impl Host {
    /// Makes a prepared release the current generation: one atomic store, after which every new
    /// pin gets it while pins already taken keep theirs; then records it durably ([`Settle`]).
    ///
    /// # Errors
    ///
    /// [`Step::Publish`] with [`DeployCause::Stale`] if another release went live after this
    /// one was prepared: publishing it would undo that one (a rollback, or a newer deploy)
    /// without anyone asking. Nothing changes then; prepare it again to build on what is live.
    pub fn publish(&self, prepared: Prepared) -> Result<DeployReport, DeployError> {
        let (report, settle) = self.go_live(prepared)?;
        self.settle(settle);
        Ok(report)
    }

    /// [`Host::publish`]'s first part: the release is current when this returns, and what is
    /// left (a disk's fsync: milliseconds, or seconds on a busy disk) is returned, for a caller
    /// that holds a lock of its own to do after releasing it. Records settled out of order keep
    /// the newest: an older one never overwrites a newer.
    ///
    /// # Errors
    ///
    /// As [`Host::publish`]; nothing changes then.
    pub fn go_live(&self, prepared: Prepared) -> Result<(DeployReport, Settle), DeployError> {
        let publishing = Instant::now();
        let Prepared {
            generation,
            base,
            kind,
            record,
            mut report,
            started,
            linked,
            shipped,
            migrations,
            table_migrations,
            unchanged: _,
        } = prepared;
        // A release that migrates state or tables holds the requests that can reach the
        // migrating plugins at the boundary from here until the store (or the refusal) below:
        // `closed` opens the gate when dropped.
        let closed = if migrations.is_empty() && table_migrations.is_empty() {
            None
        } else {
            Some(self.quiesce_and_migrate(&migrations, &table_migrations)?)
        };
        let mut book = self.ledger.lock();
        let current = self.live.current_id();
        if current != base {
            drop(book);
            drop(closed);
            let cause = DeployCause::Stale {
                prepared_against: base,
                current,
            };
            return Err(self.refused(DeployError::new(Step::Publish, None, None, cause)));
        }
        let replaced = self.live.swap(&generation);
        if let Some((closed, paused)) = closed {
            // Before the gate opens: a request that loaded the old generation and passes the
            // reopened gate must find it retired, and take the new one.
            replaced.retire();
            drop(closed);
            report.pause = paused.elapsed();
        }
        drop(replaced);

        report.elapsed = started.elapsed();
        report.go_live = linked + publishing.elapsed();
        let libraries = self.pipeline.libraries();
        let (version, history) =
            self.ledger
                .went_live(&mut book, kind, record, &generation, libraries);
        drop(book);

        tracing::info!(
            generation = report.generation,
            release = report.release.as_deref().unwrap_or(""),
            elapsed_us = u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
            go_live_us = u64::try_from(report.go_live.as_micros()).unwrap_or(u64::MAX),
            "release live"
        );
        let settle = Settle {
            version,
            history,
            table_migrations,
            shipped,
        };
        Ok((report, settle))
    }

    /// Does what a release that went live left to do (see [`Settle`]).
    pub fn settle(&self, settle: Settle) {
        let Settle {
            version,
            history,
            table_migrations,
            shipped,
        } = settle;
        // The store stays readable by the build the record names: a table migrated down is
        // written in its new schema before the record names the older build; one migrated up
        // keeps its writes out of the store until the record names the newer build, then is
        // written in its schema. The deploy answers once both are done.
        let persisted = table_migrations.iter().filter(|m| m.persisted());
        let (ups, downs): (Vec<_>, Vec<_>) = persisted.partition(|m| m.up);
        for migration in &downs {
            self.rewrite_now(migration.target());
        }
        self.ledger.write_record(version, &history);
        for migration in &ups {
            migration.target().release_store();
            self.committer.wake();
            self.rewrite_now(migration.target());
        }
        self.collect_staged(&history);
        self.pipeline.collect_signed(&history);
        for Shipped { plugin, .. } in &shipped {
            let limit = self.pipeline.hook_timeout();
            if let Err(failure) = plugin.run_hook_within(Hook::PostActivate, limit) {
                tracing::warn!(plugin = %plugin.info().name, ?failure, "post_activate hook failed");
            }
        }
    }

    /// Closes the request boundary for the requests that can reach a migrating plugin, waits
    /// (until the drain deadline) for those in flight to end, then runs the migrations on the
    /// quiescent state. Returns the closed gate and when it closed; any failure opens it again
    /// and refuses the release, state untouched (the migrations wrote only into new cells).
    fn quiesce_and_migrate(
        &self,
        migrations: &[Migration],
        tables: &[TableMigration],
    ) -> Result<(Closed<'_>, Instant), DeployError> {
        let failed = |migration: &TableMigration, e: String| {
            let cause = DeployCause::State(e);
            let file = Some(migration.carrier.path().to_owned());
            self.refused(DeployError::new(
                Step::Migrate,
                Some(&migration.plugin),
                file,
                cause,
            ))
        };
        let catch_up = || {
            let mut written = 0;
            for migration in tables {
                written += migration.catch_up().map_err(|e| failed(migration, e))?;
            }
            Ok::<_, DeployError>(written)
        };
        // Table entries written since the copy: caught up while the boundary is open, until
        // few are left for the pause.
        for _ in 0..CATCH_UP_ROUNDS {
            if catch_up()? <= CATCH_UP_HELD {
                break;
            }
        }
        let mut plugins: Vec<String> = migrations.iter().map(|m| m.plugin.clone()).collect();
        plugins.extend(tables.iter().map(|m| m.plugin.clone()));
        plugins.sort();
        plugins.dedup();
        let limit = self.migration_drain;
        let (closed, paused) = self.live.quiesce(plugins, limit).map_err(|in_flight| {
            let cause = DeployCause::MigrationDrain { limit, in_flight };
            self.refused(DeployError::new(Step::Migrate, None, None, cause))
        })?;
        catch_up()?;
        for migration in tables {
            migration.finish();
        }
        for migration in migrations {
            if let Err(e) = migration.run() {
                drop(closed);
                let carrier = &migration.carrier;
                let cause = DeployCause::State(format!("migration {migration} failed: {e}"));
                return Err(self.refused(DeployError::new(
                    Step::Migrate,
                    Some(&migration.plugin),
                    Some(carrier.path().to_owned()),
                    cause,
                )));
            }
        }
        Ok((closed, paused))
    }

    /// Requests in flight: the counted pins (owned pins and pin caches) on every generation.
    pub fn in_flight(&self) -> usize {
        self.live.calls().total()
    }

    /// Makes the last release recorded in the data directory current again: what a restarted
    /// host does first. Returns `None` when there is no record (a fresh data directory).
    ///
    /// The record is written only after a release went live, so a host killed in the middle of
    /// a deploy comes back on the last release that was live, never on a half-deployed one.
    /// Generation ids go on past every id handed out in this data directory.
    ///
    /// Restoring falls back, loudly (a warning for each attempt that fails): the last live
    /// release from its staged copies, then from the files it was deployed from, then each
    /// earlier release of the history the same way, newest first. The history kept is the one
    /// up to the release restored. A release refused because of saved state it cannot use
    /// ([`DeployError::is_saved_state`]) stops the fallback: that error is returned, and no
    /// other release serves without the state.
    ///
    /// # Errors
    ///
    /// [`DeployError`] if the record is unreadable, or if no recorded release deploys: then the
    /// error of the last live release from its staged copies.
    pub fn restore(&self) -> Result<Option<DeployReport>, DeployError> {
        let span = tracing::info_span!("restore", record = %self.ledger.record_path().display());
        let _entered = span.enter();
        let history = self.read_record()?;
        let mut newest_error = None;
        for at in (0..history.len()).rev() {
            let record = &history[at];
            for from in [From::Staged, From::Sources] {
                if from == From::Sources && !record.plugins.iter().any(|p| p.source.is_some()) {
                    continue;
                }
                let restored = self
                    .prepare_recorded(&history, at, from)
                    .and_then(|prepared| self.publish(prepared));
                match restored {
                    Ok(report) => {
                        if newest_error.is_some() {
                            tracing::warn!(
                                generation = report.generation,
                                recorded = record.generation,
                                ?from,
                                "restored a fallback: not the last live release from its staged copies"
                            );
                        }
                        return Ok(Some(report));
                    }
                    // Saved state this release cannot use: no other release is tried, since it
                    // would serve without that state (or another app's).
                    Err(error) if error.is_saved_state() => return Err(error),
                    Err(error) => {
                        tracing::warn!(
                            recorded = record.generation,
                            ?from,
                            error = %crate::DisplayChain(&error),
                            "restoring: this recorded release does not deploy, trying the next"
                        );
                        newest_error.get_or_insert(error);
                    }
                }
            }
        }
        newest_error.map_or(Ok(None), Err)
    }
}
