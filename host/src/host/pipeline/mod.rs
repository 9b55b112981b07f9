//! The pipeline: everything a release needs before it can go live, outside any lock that
//! anything else waits for.
//!
//! The steps, each able to refuse the release with a [`DeployError`] naming itself:
//! manifest → signature (with trusted keys, `vouch.rs`) → checksum → stage → load → check →
//! link → migrate → init → activate. The result is a [`Prepared`] release: a linked,
//! initialised generation nobody pins yet, and the generation it was prepared against.
//!
//! The pipeline owns what loading needs and nothing that serves: the staged copies (and the
//! lock that keeps them from being collected while a prepare stages), the loaded libraries and
//! their unloader, the checksum cache, export handles and generation ids. It reads the live
//! generation it builds on, and the host's history of where plugins came from, only as
//! arguments: what it builds goes live through the [live set](super::live_set), and is
//! recorded by the [ledger](super::ledger).

mod plan;
mod vouch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::carry::{carry_state, carry_tables, TableHome, TableMigration};
use crate::decl::Contract;
use crate::error::{DeployCause, DeployError, Step};
use crate::hook::{Hook, HookFailure};
use crate::ids::Ids;
use crate::init::InitFailure;
use crate::link::{self, LinkError, OpenImports};
use crate::live::calls::Calls;
use crate::live::generation::{Exports, Generation, Held};
use crate::live::route::Routes;
use crate::loader::LoadedPlugin;
use crate::provided::Provided;
use crate::registry::Libraries;
use crate::release::Limits;
use crate::report::{Change, DeployReport, PluginChange};
use crate::services;
use crate::signature::TrustedKey;
use crate::stage::{self, ChecksumCache, StageError, Staging};
use crate::status::{PluginRecord, ReleaseRecord};
use crate::store::Store;
use crate::table::{Committer, TableConfig};
use crate::unload::Unloader;

use super::prepared::{Kind, Prepared, Shipped};

use plan::Planned;
pub(super) use plan::{From, Plan};

/// What the pipeline checks releases against, set by the [`HostBuilder`](crate::HostBuilder).
#[derive(Debug, Clone)]
pub(super) struct PipelineSettings {
    pub(super) init_timeout: Duration,
    pub(super) hook_timeout: Duration,
    pub(super) limits: Limits,
    pub(super) trusted_keys: Vec<TrustedKey>,
    pub(super) tables: TableConfig,
    /// Exports every release must provide, callable with JSON, and who requires each.
    pub(super) required: Vec<(Contract, String)>,
    /// What the host provides plugins (host services as contracts).
    pub(super) provided: Arc<Provided>,
    /// Routes the embedder serves itself (method, pattern, who), which no plugin may claim.
    pub(super) reserved_routes: Vec<(String, String, String)>,
    /// How plugin files are staged.
    pub(super) staging: Staging,
    /// State or a table that cannot be carried over starts fresh (said in the report's
    /// warnings) instead of refusing the release: for development.
    pub(super) fresh_state: bool,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(10),
            hook_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            trusted_keys: Vec::new(),
            tables: TableConfig::default(),
            required: Vec::new(),
            provided: Arc::default(),
            reserved_routes: Vec::new(),
            staging: Staging::Durable,
            fresh_state: false,
        }
    }
}

/// Stages, loads, checks, links, migrates and initialises releases into [`Prepared`] ones.
pub(super) struct Pipeline {
    settings: PipelineSettings,
    exports: Exports,
    libraries: Libraries,
    unloader: Unloader,
    checksums: ChecksumCache,
    /// `DATA/staged`: each plugin file's copy, under a name of its own.
    staging_dir: PathBuf,
    /// Held shared by every prepare while it stages and loads; taken exclusively, and only when
    /// free, to delete staged copies nothing refers to, so none is deleted before it is loaded.
    staging: RwLock<()>,
    /// `DATA/signed`: the signed manifests recorded releases are vouched for by.
    signed_dir: PathBuf,
    /// Generation ids, unique for the life of the data directory.
    ids: Ids,
    /// `DATA/state.redb`, read by the first release a host publishes.
    store: Arc<Store>,
    /// Makes the writes of every-write tables durable before they are acknowledged.
    committer: Arc<Committer>,
}

/// What a build needs from the rest of the host: the live generation it builds on, the calls
/// register its generation counts calls in, and where carried-over plugins came from.
pub(super) struct Base<'a> {
    pub(super) generation: &'a Arc<Generation>,
    pub(super) calls: &'a Arc<Calls>,
    /// The release record's entries for a new generation's plugins (see
    /// [`Ledger::records_of`](super::ledger::Ledger::records_of)).
    pub(super) records: &'a dyn Fn(&Generation, &[Shipped]) -> Vec<PluginRecord>,
}

impl Pipeline {
    /// The pipeline of data directory `data_dir`, whose `staged/` directory exists.
    ///
    /// # Errors
    ///
    /// If the unloader's thread cannot start.
    pub(super) fn new(
        data_dir: &std::path::Path,
        settings: PipelineSettings,
        store: Arc<Store>,
        committer: Arc<Committer>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            unloader: Unloader::spawn(settings.hook_timeout)?,
            settings,
            exports: Exports::default(),
            libraries: Libraries::default(),
            checksums: ChecksumCache::default(),
            staging_dir: data_dir.join(STAGED_DIR),
            staging: RwLock::new(()),
            signed_dir: data_dir.join(vouch::SIGNED_DIR),
            ids: Ids::open(data_dir),
            store,
            committer,
        })
    }

    pub(super) fn exports(&self) -> &Exports {
        &self.exports
    }

    /// The libraries loaded now.
    pub(super) fn libraries(&self) -> &Libraries {
        &self.libraries
    }

    pub(super) fn unloader(&self) -> &Unloader {
        &self.unloader
    }

    pub(super) fn ids(&self) -> &Ids {
        &self.ids
    }

    pub(super) fn hook_timeout(&self) -> Duration {
        self.settings.hook_timeout
    }

    /// Builds `plan` on `base`: stage and load its files, link the new plugin set, carry state
    /// and tables over, run the initialisers and `pre_activate` hooks, and take a generation id
    /// (last, so that a refused release uses none).
    pub(super) fn build(
        &self,
        plan: Plan,
        kind: Kind,
        open: OpenImports,
        base: &Base<'_>,
        started: Instant,
    ) -> Result<Prepared, DeployError> {
        let Base {
            generation: base,
            calls,
            records,
        } = *base;
        let ids_used_up = |cause| DeployError::new(Step::Manifest, None, None, cause);
        self.ids.check().map_err(ids_used_up)?;
        let removed: HashSet<&str> = plan.remove.iter().map(String::as_str).collect();
        let present: HashSet<&str> = base.plugins().map(|p| p.name.as_str()).collect();
        // Removing what is gone already is done: said, not refused (a release that removes a
        // plugin deploys again).
        let mut warnings: Vec<String> = plan
            .remove
            .iter()
            .filter(|name| !present.contains(name.as_str()))
            .map(|name| {
                let warning = format!(
                    "the release removes plugin {}, which generation {} does not have",
                    crate::bounded::Bounded(name),
                    base.id()
                );
                tracing::warn!("{warning}");
                warning
            })
            .collect();

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
            // ships, or for a plugin carried over, its staged copy, and that it was).
            let Some(plugin) = e.importer().map(str::to_owned) else {
                return DeployError::new(Step::Link, None, None, e.into());
            };
            if let Some(s) = shipped.iter().find(|s| *s.plugin.info().name == plugin) {
                return DeployError::new(Step::Link, Some(&plugin), Some(s.file.clone()), e.into());
            }
            let file = set
                .iter()
                .find(|p| *p.info().name == plugin)
                .map(|p| p.path().to_owned());
            let cause = DeployCause::CarriedOver {
                generation: base.id(),
                link: e,
            };
            DeployError::new(Step::Link, Some(&plugin), file, cause)
        })?;
        let (linked, routes) = linked;
        // The first release a host publishes (over the empty generation 0) starts from the
        // state the last run saved.
        let saved = (base.id() == 0).then_some(&*self.store);
        let state = carry_state(base, &set, saved, self.settings.fresh_state)?;
        let settings = |plugin: &str, name: &str| self.settings.tables.of(plugin, name);
        let home = TableHome {
            settings: &settings,
            saved,
            committer: &self.committer,
            fresh: self.settings.fresh_state,
        };
        let tables = carry_tables(base, &set, &home)?;
        warnings.extend(state.warnings.iter().chain(&tables.warnings).cloned());
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
            Arc::clone(calls),
        ));
        let record = ReleaseRecord {
            generation: id,
            name: plan.label.clone(),
            plugins: records(&generation, &shipped),
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
            unchanged: false,
            warnings,
        };
        // The same builds under the same name as what is live: publishing it would only make
        // a copy of the current generation (and a history entry a rollback steps back to).
        let unchanged = base.id() != 0
            && report.release.as_deref() == base.release()
            && report.removed.is_empty()
            && report.plugins.iter().all(|p| p.change == Change::Kept)
            && report.migrated.is_empty();
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
            unchanged,
        })
    }

    /// Stages, loads and checks builds without initialising, linking or publishing them: what
    /// they declare, for `graft pack`. Two builds declaring one plugin are refused.
    pub(super) fn load_declared(&self, libraries: &[PathBuf]) -> Result<Vec<Shipped>, DeployError> {
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
            self.settings.staging,
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
                started(Step::Load, label, &planned.source);
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
                        started(Step::Init, &plugin.info().name, plugin.path());
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

    /// Deletes the staged copies that no live library refers to and are not in `keep` (those of
    /// recorded releases). Skipped while a prepare is staging (the next publish collects them).
    pub(super) fn collect_staged(&self, keep: HashSet<PathBuf>) {
        let Ok(_exclusive) = self.staging.try_write() else {
            tracing::debug!("staged copies not collected: a prepare is staging");
            return;
        };
        let mut keep = keep;
        keep.extend(self.libraries.live().iter().map(|p| p.path().to_owned()));
        let Ok(entries) = std::fs::read_dir(&self.staging_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "so") && !keep.contains(&path) {
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::debug!(path = %path.display(), %error, "could not remove staged copy");
                }
            }
        }
    }
}

/// Runs the `pre_activate` hooks of the shipped plugins, in order, each under `limit`; the first
/// error or overrun vetoes.
fn pre_activate(shipped: &[Shipped], limit: Duration) -> Result<(), DeployError> {
    for Shipped { plugin, file, .. } in shipped {
        started(Step::Activate, &plugin.info().name, file);
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

/// Says (at debug level) that `step` starts running `plugin`'s code, from `file`: the last such
/// event before a process dies names the plugin that took it down (`graft serve` reads them
/// from the preflight process it loads a release in first; see `graft/src/worker/preflight.rs`).
fn started(step: Step, plugin: &str, file: &std::path::Path) {
    tracing::debug!(%step, %plugin, file = %file.display(), "running plugin code");
}

/// Where staged copies are kept, in the data directory.
pub(super) const STAGED_DIR: &str = "staged";
