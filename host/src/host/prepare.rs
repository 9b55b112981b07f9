//! Prepare: everything a release needs before it can go live, outside any lock that anything
//! else waits for.
//!
//! The steps, each able to refuse the release with a [`DeployError`] naming itself:
//! manifest → signature (with trusted keys, `vouch.rs`) → checksum → stage → load → check →
//! link → init. The result is a [`Prepared`] release: a linked, initialised generation nobody
//! pins yet, and the generation it was prepared against.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::carry::{carry_state, carry_tables, Migration, TableHome, TableMigration};
use crate::error::{DeployCause, DeployError, Step};
use crate::hook::{Hook, HookFailure};
use crate::init::InitFailure;
use crate::link::{self, LinkError, OpenImports};
use crate::live::generation::{Generation, Held};
use crate::live::route::Routes;
use crate::loader::LoadedPlugin;
use crate::release::Manifest;
use crate::report::{Change, DeployReport, PluginChange};
use crate::services;
use crate::stage::{self, StageError};
use crate::status::{PluginRecord, ReleaseRecord};

use super::Host;

/// A release that passed every step before going live: staged, loaded, checked, linked and
/// initialised. [`Host::publish`] makes it current; dropping it lets its libraries go.
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
    /// The release before the current one: the current one leaves the history.
    Rollback,
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

/// What a prepare loads: from a manifest, a list of builds, or a recorded release.
pub(crate) struct Plan {
    pub(crate) label: Option<String>,
    pub(crate) complete: bool,
    pub(crate) remove: Vec<String>,
    pub(crate) plugins: Vec<Planned>,
}

/// One plugin file a prepare loads.
pub(crate) struct Planned {
    /// The name the manifest gives it, which the library must declare; `None` for a build,
    /// which goes by the name it declares.
    name: Option<String>,
    source: PathBuf,
    /// The manifest's checksum, which the file must match; `None` for a build graft made.
    sha256: Option<String>,
    /// Where the plugin came from, as the release record keeps it (for a recorded release, the
    /// file it was first deployed from, not the staged copy it loads).
    origin: Option<PathBuf>,
    /// The sha256 of the signed manifest that vouches for it, if signatures are required.
    voucher: Option<String>,
}

/// Where a recorded release is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum From {
    /// The staged copies in the data directory.
    Staged,
    /// The files each plugin was deployed from (its staged copy where none was recorded).
    Sources,
}

impl Plan {
    /// The plan of the release in `dir`, from its manifest.
    pub(crate) fn from_manifest(dir: &Path, manifest: Manifest, voucher: Option<String>) -> Self {
        Self {
            label: manifest.name,
            complete: manifest.complete,
            remove: manifest.remove,
            plugins: manifest
                .plugins
                .into_iter()
                .map(|p| {
                    let source = dir.join(&p.file);
                    Planned {
                        origin: std::path::absolute(&source).ok(),
                        voucher: voucher.clone(),
                        source,
                        name: Some(p.name),
                        sha256: Some(p.sha256),
                    }
                })
                .collect(),
        }
    }

    /// A partial release of builds without a manifest: each goes by the name it declares.
    pub(crate) fn from_libraries(label: Option<String>, libraries: &[PathBuf]) -> Self {
        Self {
            label,
            complete: false,
            remove: Vec::new(),
            plugins: libraries
                .iter()
                .map(|source| Planned {
                    name: None,
                    source: source.clone(),
                    sha256: None,
                    origin: std::path::absolute(source).ok(),
                    voucher: None,
                })
                .collect(),
        }
    }

    /// A recorded release again, whole, from its staged copies or from the files they were
    /// deployed from; either way each file must still have the recorded checksum.
    fn from_record(record: &ReleaseRecord, from: From) -> Self {
        Self {
            label: record.name.clone(),
            complete: true,
            remove: Vec::new(),
            plugins: record
                .plugins
                .iter()
                .map(|p| Planned {
                    name: Some(p.name.clone()),
                    source: match (from, &p.source) {
                        (From::Sources, Some(source)) => source.clone(),
                        _ => p.staged.clone(),
                    },
                    sha256: Some(p.sha256.clone()),
                    origin: p.source.clone(),
                    voucher: p.signed.clone(),
                })
                .collect(),
        }
    }
}

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
        let plan = self
            .read_manifest(dir)
            .map(|(m, voucher)| Plan::from_manifest(dir, m, voucher));
        self.prepare_plan(plan, Kind::Deploy, OpenImports::Refuse, None)
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
            .check_unsigned_allowed()
            .map(|()| Plan::from_libraries(label, libraries));
        self.prepare_plan(plan, Kind::Deploy, OpenImports::Refuse, None)
    }

    /// Prepares the release before the current one, whole, from its staged copies (reusing the
    /// libraries still loaded).
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`] with no earlier release; otherwise as
    /// [`Host::prepare`].
    pub fn prepare_rollback(&self) -> Result<Prepared, DeployError> {
        let span = tracing::info_span!("prepare", release = "rollback");
        let _entered = span.enter();
        // The history and the current generation are read together: a publish changes both
        // under the same lock.
        let (target, base) = {
            let book = self.lock_book();
            let target = book
                .history
                .len()
                .checked_sub(2)
                .map(|i| book.history[i].clone());
            (target, self.current.load_full())
        };
        let plan = target
            .as_ref()
            .ok_or_else(|| {
                DeployError::new(Step::Manifest, None, None, DeployCause::NothingToRollBack)
            })
            .and_then(|record| {
                self.verify_record(record)?;
                Ok(Plan::from_record(record, From::Staged))
            });
        self.prepare_plan(plan, Kind::Rollback, OpenImports::Refuse, Some(base))
    }

    /// The history of live releases recorded in the data directory, oldest first: empty for a
    /// fresh data directory. Generation ids go on past every id it holds.
    pub(super) fn read_record(&self) -> Result<VecDeque<ReleaseRecord>, DeployError> {
        let history = recorded_history(&self.record_path).map_err(|cause| {
            let file = Some(self.record_path.clone());
            self.refused(DeployError::new(Step::Manifest, None, file, cause))
        })?;
        // A record written before ids were reserved in `DATA/generations`: go on past it too.
        let next = history
            .iter()
            .map(|r| r.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        self.ids.at_least(next);
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
            .verify_record(&history[at])
            .map(|()| Plan::from_record(&history[at], from));
        let kept = history.iter().take(at + 1).cloned().collect();
        self.prepare_plan(plan, Kind::Restore(kept), OpenImports::Refuse, None)
    }

    /// Prepares what `graft check` checks: a release directory, or a single library. A partial
    /// release (or a lone library) may leave imports open, bound to stubs; a complete one must
    /// link on its own.
    pub(crate) fn prepare_check(
        &self,
        path: &Path,
    ) -> Result<(Prepared, Option<Manifest>), DeployError> {
        if path.is_dir() {
            let (manifest, voucher) = self.read_manifest(path)?;
            let open = if manifest.complete {
                OpenImports::Refuse
            } else {
                OpenImports::Stub
            };
            let mut plan = Plan::from_manifest(path, manifest.clone(), voucher);
            // The scratch host has nothing to remove; the report lists what the release would.
            plan.remove.clear();
            let prepared = self.prepare_plan(Ok(plan), Kind::Deploy, open, None)?;
            Ok((prepared, Some(manifest)))
        } else {
            let plan = Plan::from_libraries(None, &[path.to_owned()]);
            let prepared = self.prepare_plan(Ok(plan), Kind::Deploy, OpenImports::Stub, None)?;
            Ok((prepared, None))
        }
    }

    /// The pipeline every release goes through before it can be published. `base` is the
    /// generation to build on (the current one if `None`). A failure is logged and recorded as
    /// the last deploy's outcome.
    fn prepare_plan(
        &self,
        plan: Result<Plan, DeployError>,
        kind: Kind,
        open: OpenImports,
        base: Option<Arc<Generation>>,
    ) -> Result<Prepared, DeployError> {
        let started = Instant::now();
        let base = base.unwrap_or_else(|| self.current.load_full());
        let restoring = matches!(kind, Kind::Restore(_));
        plan.and_then(|plan| self.build(plan, kind, open, &base, started))
            .map_err(|error| {
                if restoring {
                    self.noted(error)
                } else {
                    self.refused(error)
                }
            })
    }

    fn build(
        &self,
        plan: Plan,
        kind: Kind,
        open: OpenImports,
        base: &Arc<Generation>,
        started: Instant,
    ) -> Result<Prepared, DeployError> {
        let ids_used_up = |cause| DeployError::new(Step::Manifest, None, None, cause);
        self.ids.check().map_err(ids_used_up)?;
        let removed: HashSet<&str> = plan.remove.iter().map(String::as_str).collect();
        let present: HashSet<&str> = base.plugins().map(|p| p.name.as_str()).collect();
        for name in &plan.remove {
            if !present.contains(name.as_str()) {
                let cause = DeployCause::RemoveUnknown(name.clone());
                return Err(DeployError::new(Step::Manifest, Some(name), None, cause));
            }
        }

        let shipped = self.stage_and_load_all(&plan)?;
        let staged = Instant::now();

        // The new plugin set: what carries over, then what the release ships.
        let names: HashSet<&str> = shipped.iter().map(|s| &*s.plugin.info().name).collect();
        let mut set: Vec<Arc<LoadedPlugin>> = if plan.complete {
            Vec::new()
        } else {
            base.loaded()
                .iter()
                .filter(|p| !names.contains(&*p.info().name) && !removed.contains(&*p.info().name))
                .cloned()
                .collect()
        };
        set.extend(shipped.iter().map(|s| Arc::clone(&s.plugin)));

        let linked = link::link(
            set.iter().map(|p| (p.info(), p.exports().map(|(_, f)| f))),
            &self.settings.provided,
            open,
        )
        .and_then(|linked| {
            // `graft check` of a partial release (imports left open) cannot know what the
            // generation it lands on will export: required exports are a deploy's question.
            if open == OpenImports::Refuse {
                link::check_required(&linked, &self.settings.required)?;
            }
            Ok(linked)
        })
        .and_then(|linked| {
            let declared = set.iter().map(|p| (p.info().name.as_str(), p.routes()));
            let routes = Routes::build(declared, &self.settings.reserved_routes)
                .map_err(|problems| LinkError { problems })?;
            Ok((linked, routes))
        })
        .map_err(|e| {
            // Named: the first importer that cannot link, and its file (the one the release
            // ships, or for a plugin carried over, its staged copy).
            let plugin = e.importer().map(str::to_owned);
            let file = plugin.as_deref().and_then(|name| {
                let shipped = shipped.iter().find(|s| &*s.plugin.info().name == name);
                shipped.map(|s| s.file.clone()).or_else(|| {
                    set.iter()
                        .find(|p| &*p.info().name == name)
                        .map(|p| p.path().to_owned())
                })
            });
            DeployError::new(Step::Link, plugin.as_deref(), file, e.into())
        })?;
        let (linked, routes) = linked;
        // The first release a host publishes (over the empty generation 0) starts from the
        // state the last run saved.
        let saved = (base.id() == 0).then_some(&*self.store);
        let state = carry_state(base, &set, saved)?;
        let settings = |plugin: &str, name: &str| self.settings.tables.of(plugin, name);
        let home = TableHome {
            settings: &settings,
            saved,
            committer: &self.committer,
        };
        let tables = carry_tables(base, &set, &home)?;
        self.initialise(&shipped)?;
        pre_activate(&shipped, self.settings.hook_timeout)?;
        let linked_in = staged.elapsed();

        // Taken last, so that a refused release uses no id.
        let id = self.ids.next().map_err(ids_used_up)?;
        let generation = Arc::new(Generation::new(
            id,
            plan.label.clone(),
            linked,
            set,
            Held {
                states: state.cells,
                tables: tables.tables,
                routes,
            },
            &self.exports,
            Arc::clone(&self.calls),
        ));
        self.track(&generation);
        let record = ReleaseRecord {
            generation: id,
            name: plan.label.clone(),
            plugins: self.records_of(&generation, &shipped),
        };
        let report = DeployReport {
            generation: id,
            release: plan.label,
            plugins: changes(base, &generation),
            removed: removed_from(base, &generation),
            link: generation.link_report().clone(),
            elapsed: started.elapsed(),
            staging: staged - started,
            go_live: linked_in,
            migrated: state
                .migrations
                .iter()
                .map(ToString::to_string)
                .chain(tables.migrations.iter().map(ToString::to_string))
                .collect(),
            entries_migrated: tables.migrations.iter().map(TableMigration::entries).sum(),
            pause: Duration::ZERO,
        };
        Ok(Prepared {
            generation,
            base: base.id(),
            kind,
            record,
            report,
            started,
            linked: linked_in,
            shipped,
            migrations: state.migrations,
            table_migrations: tables.migrations,
        })
    }

    /// The release record's entries for a new generation's plugins. Where each came from (its
    /// source, its voucher) is what the release shipped it with, or for a plugin carried over,
    /// what the history says (read under one lock).
    fn records_of(&self, generation: &Generation, shipped: &[Shipped]) -> Vec<PluginRecord> {
        let book = self.lock_book();
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

    /// Stages, loads and checks builds without initialising, linking or publishing them: what
    /// they declare, for `graft pack`. Two builds declaring one plugin are refused.
    pub(crate) fn load_declared(&self, libraries: &[PathBuf]) -> Result<Vec<Shipped>, DeployError> {
        self.stage_and_load_all(&Plan::from_libraries(None, libraries))
    }

    /// Stages, loads and checks every file of the plan. Holds the staging lock shared, so no
    /// staged copy is collected between being written and being loaded.
    fn stage_and_load_all(&self, plan: &Plan) -> Result<Vec<Shipped>, DeployError> {
        let _staging = self.staging.read().unwrap_or_else(|e| e.into_inner());
        let mut shipped: Vec<Shipped> = Vec::with_capacity(plan.plugins.len());
        let mut names = HashSet::with_capacity(plan.plugins.len());
        for planned in &plan.plugins {
            let plugin = self.stage_and_load(planned)?;
            let file = || Some(planned.source.clone());
            let declared = &plugin.info().name;
            if let Some(name) = planned.name.as_ref().filter(|n| *n != declared) {
                let cause = DeployCause::NameMismatch {
                    declared: declared.clone(),
                };
                return Err(DeployError::new(Step::Check, Some(name), file(), cause));
            }
            if !names.insert(declared.clone()) {
                let cause = DeployCause::DuplicatePlugin(declared.clone());
                return Err(DeployError::new(Step::Check, Some(declared), file(), cause));
            }
            shipped.push(Shipped {
                plugin,
                file: planned.source.clone(),
                origin: planned.origin.clone(),
                voucher: planned.voucher.clone(),
            });
        }
        Ok(shipped)
    }

    /// Stages one plugin file and loads it, or reuses the library already loaded from the same
    /// build.
    fn stage_and_load(&self, planned: &Planned) -> Result<Arc<LoadedPlugin>, DeployError> {
        let name = planned.name.as_deref();
        let file = || Some(planned.source.clone());
        // A build has no manifest name yet: its staged copy is named after its file.
        let stem = planned.source.file_stem().map(|s| s.to_string_lossy());
        let label = name
            .or_else(|| stem.as_deref().map(|s| s.strip_prefix("lib").unwrap_or(s)))
            .filter(|l| crate::decl::is_valid_name(l))
            .unwrap_or("plugin");
        let (staged, sha256) = stage::stage(
            &self.staging_dir,
            label,
            &planned.source,
            planned.sha256.as_deref(),
            &self.checksums,
        )
        .map_err(|e| {
            let (step, cause) = match e {
                StageError::Read(source) => (
                    Step::Stage,
                    DeployCause::Io("reading the plugin file".into(), source),
                ),
                StageError::Checksum { expected, actual } => {
                    (Step::Checksum, DeployCause::Checksum { expected, actual })
                }
                StageError::Elf(e) => (Step::Load, DeployCause::NotALibrary(e)),
                StageError::Write(source) => (
                    Step::Stage,
                    DeployCause::Io("writing the staged copy".into(), source),
                ),
            };
            DeployError::new(step, name, file(), cause)
        })?;
        self.libraries
            .get_or_load(&sha256, || {
                LoadedPlugin::load(&staged, &sha256, &self.unloader)
            })
            .map_err(|e| {
                let step = if e.is_check() {
                    Step::Check
                } else {
                    Step::Load
                };
                DeployError::new(step, name, file(), e.into())
            })
    }

    /// Runs the initialisers of the shipped plugins that have not run, in order, on a thread of
    /// their own (one per prepare: it exits when they are done, so a thread-local a plugin
    /// touches in its initialiser does not pin its library to a long-lived thread), and waits
    /// for all of them until one deadline ([`HostBuilder::init_timeout`]).
    ///
    /// [`HostBuilder::init_timeout`]: super::HostBuilder::init_timeout
    fn initialise(&self, shipped: &[Shipped]) -> Result<(), DeployError> {
        let deadline = Instant::now() + self.settings.init_timeout;
        let claimed: Vec<Arc<LoadedPlugin>> = shipped
            .iter()
            .filter(|s| s.plugin.init_cell().claim())
            .map(|s| Arc::clone(&s.plugin))
            .collect();
        if !claimed.is_empty() {
            let running = claimed.clone();
            let spawned = std::thread::Builder::new()
                .name("graft-init".into())
                .spawn(move || {
                    for plugin in running {
                        let result = plugin.run_init(services::host_api());
                        plugin.init_cell().finish(result);
                    }
                });
            if let Err(error) = spawned {
                for plugin in &claimed {
                    let message = format!("could not start a thread for it: {error}");
                    plugin.init_cell().finish(Err(message));
                }
            }
        }
        for (i, Shipped { plugin, .. }) in shipped.iter().enumerate() {
            let Err(failure) = plugin.init_cell().wait(deadline) else {
                continue;
            };
            // Nobody waits for this one or the ones after it any more: those still running are
            // abandoned (a wait that is already past its deadline marks them so).
            for other in &shipped[i..] {
                if other.plugin.init_cell().wait(Instant::now()) == Err(InitFailure::TimedOut) {
                    tracing::warn!(
                        plugin = %other.plugin.info().name,
                        path = %other.plugin.path().display(),
                        "initialiser abandoned: the deploy stopped waiting for it; its library \
                         stays loaded until it returns"
                    );
                }
            }
            let cause = match failure {
                InitFailure::Failed(message) => DeployCause::Init(message),
                InitFailure::TimedOut => DeployCause::InitTimeout(self.settings.init_timeout),
            };
            return Err(DeployError::new(
                Step::Init,
                Some(&plugin.info().name),
                Some(plugin.path().to_owned()),
                cause,
            ));
        }
        Ok(())
    }
}

/// Runs the `pre_activate` hooks of the shipped plugins, in order, each under `limit`; the first
/// error or overrun vetoes.
fn pre_activate(shipped: &[Shipped], limit: Duration) -> Result<(), DeployError> {
    for Shipped { plugin, .. } in shipped {
        plugin
            .run_hook_within(Hook::PreActivate, limit)
            .map_err(|failure| {
                let cause = match failure {
                    HookFailure::Failed(veto) => DeployCause::Veto(veto),
                    HookFailure::TimedOut => DeployCause::HookTimeout {
                        hook: Hook::PreActivate.name(),
                        limit,
                    },
                };
                DeployError::new(
                    Step::Activate,
                    Some(&plugin.info().name),
                    Some(plugin.path().to_owned()),
                    cause,
                )
            })?;
    }
    Ok(())
}

/// The plugins of `base` that `new` no longer has.
fn removed_from(base: &Generation, new: &Generation) -> Vec<String> {
    let kept: HashSet<&str> = new.plugins().map(|p| p.name.as_str()).collect();
    base.plugins()
        .filter(|old| !kept.contains(old.name.as_str()))
        .map(|p| p.name.clone())
        .collect()
}

/// What a new generation did to each of its plugins, compared with `base`.
fn changes(base: &Generation, new: &Generation) -> Vec<PluginChange> {
    let previous: HashMap<&str, &str> = base
        .loaded()
        .iter()
        .map(|p| (&*p.info().name, p.sha256()))
        .collect();
    new.loaded()
        .iter()
        .map(|p| PluginChange {
            name: p.info().name.clone(),
            version: p.info().version.clone(),
            change: match previous.get(&*p.info().name) {
                None => Change::Added,
                Some(sha) if *sha == p.sha256() => Change::Kept,
                Some(_) => Change::Replaced,
            },
        })
        .collect()
}

/// The history of live releases in the record at `path`, oldest first: empty if there is none.
pub(super) fn recorded_history(path: &Path) -> Result<VecDeque<ReleaseRecord>, DeployCause> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(e) => return Err(DeployCause::Io("reading the release record".into(), e)),
    };
    serde_json::from_str(&text).map_err(|e| DeployCause::Record(e.to_string()))
}
