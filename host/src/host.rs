//! The [`Host`]: the current generation, deploys, rollbacks and status.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{de::DeserializeOwned, Serialize};

use crate::atomic_file;
use crate::error::{CallError, DeployCause, DeployError, Step};
use crate::generation::{Export, Exports, Generation, OwnedPin, Pin};
use crate::link::{self, ContractError, LinkReport};
use crate::loader::{LoadedPlugin, UnloadPolicy, Unloader};
use crate::release::{self, Manifest, StageError, MANIFEST};
use crate::services;
use crate::status::{
    DeployOutcome, GenerationStatus, LibraryState, LibraryStatus, PluginRecord, PluginStatus,
    ReleaseRecord, Status,
};

/// Runs plugins and replaces them while callers keep calling.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let host = graft_host::Host::builder("/var/lib/graft").build()?;
/// host.deploy("releases/v1")?;
/// let foo = host.export("foo@1")?;
///
/// let pin = host.pin(); // one generation for the whole request
/// let out: serde_json::Value = pin.call(&foo, &serde_json::json!({ "a": 1 }))?;
/// # Ok(()) }
/// ```
pub struct Host {
    current: ArcSwap<Generation>,
    /// The canary of a staged rollout: live beside `current` for the requests routed to it.
    canary: ArcSwapOption<Generation>,
    exports: Exports,
    unloader: Unloader,
    staging_dir: PathBuf,
    /// `DATA/releases.json`: the releases that went live, the last one current.
    record_path: PathBuf,
    unload_policy: UnloadPolicy,
    history_len: usize,
    /// Held for the whole of a deploy or rollback: they run one at a time.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_generation: u64,
    /// Releases that went live, oldest first; the last one is current.
    history: VecDeque<ReleaseRecord>,
    /// Every live library by SHA-256, so a build that is still loaded is reused, not reloaded.
    libraries: HashMap<String, Weak<LoadedPlugin>>,
    /// Release files already verified against their checksums.
    checksums: release::ChecksumCache,
    /// Libraries kept alive by [`UnloadPolicy::Never`] or [`UnloadPolicy::KeepHistory`].
    retained: Vec<Arc<LoadedPlugin>>,
    generations: Vec<Weak<Generation>>,
    last_deploy: Option<DeployOutcome>,
    /// The canary's release, recorded in the history once it is promoted.
    canary_record: Option<ReleaseRecord>,
}

/// The file, in the data directory, that records the releases that went live.
pub const RECORD: &str = "releases.json";

/// Configures a [`Host`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    data_dir: PathBuf,
    unload_policy: UnloadPolicy,
    history_len: usize,
}

impl HostBuilder {
    /// What to do with a library once no generation uses it (default
    /// [`UnloadPolicy::KeepHistory`]).
    pub fn unload_policy(mut self, policy: UnloadPolicy) -> Self {
        self.unload_policy = policy;
        self
    }

    /// How many releases to keep for rollback, the current one included (default 5, at least 2).
    pub fn history(mut self, releases: usize) -> Self {
        self.history_len = releases.max(2);
        self
    }

    /// Creates the host, with the empty generation 0 current.
    ///
    /// # Errors
    ///
    /// If the data directory cannot be created or the unloader thread cannot start.
    pub fn build(self) -> std::io::Result<Host> {
        let staging_dir = self.data_dir.join("staged");
        std::fs::create_dir_all(&staging_dir)?;
        Ok(Host {
            current: ArcSwap::from_pointee(Generation::empty()),
            canary: ArcSwapOption::empty(),
            exports: Exports::default(),
            unloader: Unloader::spawn()?,
            staging_dir,
            record_path: self.data_dir.join(RECORD),
            unload_policy: self.unload_policy,
            history_len: self.history_len,
            state: Mutex::new(State {
                next_generation: 1,
                ..State::default()
            }),
        })
    }
}

/// What a successful deploy or rollback did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeployReport {
    /// The generation now current.
    pub generation: u64,
    /// The release label.
    pub release: Option<String>,
    /// The new generation's plugins and what happened to each.
    pub plugins: Vec<PluginChange>,
    /// Plugins the new generation no longer has.
    pub removed: Vec<String>,
    /// How imports were bound.
    pub link: LinkReport,
    /// From the start of the deploy to the store that made it live.
    pub elapsed: Duration,
    /// Of `elapsed`, reading, hashing and durably staging the files, then loading and checking
    /// them: bound by file size and disk (each staged copy is fsynced).
    pub staging: Duration,
    /// Of `elapsed`, linking, initialising and the store: the step from "everything is loaded"
    /// to "new requests run the new code".
    pub go_live: Duration,
}

/// One plugin of a new generation.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginChange {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What the release did to it.
    pub change: Change,
}

/// What a release did to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Change {
    /// New in this generation.
    Added,
    /// A new build replaced the previous one.
    Replaced,
    /// Carried over unchanged (or shipped again with identical bytes).
    Kept,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Replaced => "replaced",
            Self::Kept => "kept",
        })
    }
}

/// One plugin file a deploy loads.
struct Planned {
    /// The name the manifest gives it, which the library must declare; `None` for a build
    /// deployed by [`Host::deploy_libraries`], which goes by the name it declares.
    name: Option<String>,
    source: PathBuf,
    /// The manifest's checksum, which the file must match; `None` for a build graft made.
    sha256: Option<String>,
}

/// Where a deploy publishes its generation.
#[derive(Clone, Copy)]
enum Slot {
    Current,
    Canary,
}

struct Plan {
    label: Option<String>,
    complete: bool,
    remove: Vec<String>,
    plugins: Vec<Planned>,
}

impl Host {
    /// Starts configuring a host that stages plugin copies under `data_dir`.
    pub fn builder(data_dir: impl Into<PathBuf>) -> HostBuilder {
        HostBuilder {
            data_dir: data_dir.into(),
            unload_policy: UnloadPolicy::default(),
            history_len: 5,
        }
    }

    /// A handle on an export contract (`name@N`), for [`Generation::call`] and [`Host::call`].
    ///
    /// # Errors
    ///
    /// If `contract` is not of the form `name@N`.
    pub fn export(&self, contract: &str) -> Result<Export, ContractError> {
        self.exports.get(contract)
    }

    /// Pins the current generation for a synchronous piece of work.
    #[inline]
    pub fn pin(&self) -> Pin {
        Pin::new(self.current.load())
    }

    /// Pins the current generation with an owned handle (for async work; counted in flight).
    pub fn pin_owned(&self) -> OwnedPin {
        OwnedPin::new(self.current.load_full())
    }

    /// Calls an export in the current generation: `self.pin().call(export, input)`.
    ///
    /// # Errors
    ///
    /// See [`Generation::call`].
    pub fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        export: &Export,
        input: &I,
    ) -> Result<O, CallError> {
        self.pin().call(export, input)
    }

    /// Calls an export with raw JSON in the current generation.
    ///
    /// # Errors
    ///
    /// See [`Generation::call_raw`].
    #[inline]
    pub fn call_raw(&self, export: &Export, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.pin().call_raw(export, input)
    }

    /// Deploys the release in `dir`: stage, load, check, link, initialise, then one atomic store.
    ///
    /// # Errors
    ///
    /// [`DeployError`] naming the step, plugin and file that failed. Nothing changes then: the
    /// current generation keeps serving.
    pub fn deploy(&self, dir: impl AsRef<Path>) -> Result<DeployReport, DeployError> {
        let dir = dir.as_ref();
        let span = tracing::info_span!("deploy", release = %dir.display());
        let _entered = span.enter();
        let mut state = self.lock_state();
        let result = self
            .no_rollout()
            .and_then(|()| Self::plan_dir(dir))
            .and_then(|plan| self.apply(&mut state, plan, Slot::Current));
        self.push_history(&mut state, &result);
        self.finish(&mut state, result)
    }

    /// Deploys the release in `dir` as the canary of a staged rollout: the same steps as
    /// [`Host::deploy`] (a partial release builds on the current generation), but the store
    /// publishes it beside the current generation instead of in its place. Requests reach it
    /// only through [`Host::pin_canary`]; [`Host::promote_canary`] makes it current and
    /// [`Host::abort_canary`] drops it. The record of live releases keeps naming the current
    /// release until the canary is promoted, so a restart comes back on the stable one.
    ///
    /// # Errors
    ///
    /// As [`Host::deploy`], and [`DeployCause::RolloutInProgress`] if there is a canary already.
    pub fn deploy_canary(&self, dir: impl AsRef<Path>) -> Result<DeployReport, DeployError> {
        let dir = dir.as_ref();
        let span = tracing::info_span!("deploy_canary", release = %dir.display());
        let _entered = span.enter();
        let mut state = self.lock_state();
        let result = self
            .no_rollout()
            .and_then(|()| Self::plan_dir(dir))
            .and_then(|plan| self.apply(&mut state, plan, Slot::Canary));
        if let Ok((_, record)) = &result {
            state.canary_record = Some(record.clone());
        }
        if let Err(error) = &result {
            tracing::warn!(error = %DisplayChain(error), "canary rejected");
        }
        Self::note_outcome(&mut state, &result);
        result.map(|(report, _)| report)
    }

    /// Makes the canary the current generation: one store, after which every new request sees
    /// it; the old current generation drains. Records the canary's release as live. Returns the
    /// promoted generation's id, or `None` if there is no canary.
    pub fn promote_canary(&self) -> Option<u64> {
        let mut state = self.lock_state();
        let canary = self.canary.load_full()?;
        self.current.store(Arc::clone(&canary));
        self.canary.store(None);
        if let Some(record) = state.canary_record.take() {
            self.push_record(&mut state, record);
        }
        tracing::info!(generation = canary.id(), "canary promoted: current");
        self.after_live(&mut state);
        Some(canary.id())
    }

    /// Drops the canary: no new request reaches it, and its libraries are let go once its
    /// in-flight requests finish. Returns its id, or `None` if there is no canary.
    pub fn abort_canary(&self) -> Option<u64> {
        let mut state = self.lock_state();
        let canary = self.canary.swap(None)?;
        state.canary_record = None;
        tracing::info!(generation = canary.id(), "canary dropped");
        Some(canary.id())
    }

    /// Pins the canary generation, if a rollout has one.
    pub fn pin_canary(&self) -> Option<OwnedPin> {
        self.canary.load_full().map(OwnedPin::new)
    }

    /// The canary generation's id, if a rollout has one.
    pub fn canary_id(&self) -> Option<u64> {
        self.canary.load().as_ref().map(|g| g.id())
    }

    fn no_rollout(&self) -> Result<(), DeployError> {
        match self.canary_id() {
            Some(generation) => Err(DeployError::new(
                Step::Manifest,
                None,
                None,
                DeployCause::RolloutInProgress(generation),
            )),
            None => Ok(()),
        }
    }

    /// The plan of the release in `dir`, from its manifest.
    fn plan_dir(dir: &Path) -> Result<Plan, DeployError> {
        let manifest = Manifest::load(dir).map_err(|e| {
            DeployError::new(Step::Manifest, None, Some(dir.join(MANIFEST)), e.into())
        })?;
        Ok(Plan {
            label: manifest.name,
            complete: manifest.complete,
            remove: manifest.remove,
            plugins: manifest
                .plugins
                .into_iter()
                .map(|p| Planned {
                    source: dir.join(&p.file),
                    name: Some(p.name),
                    sha256: Some(p.sha256),
                })
                .collect(),
        })
    }

    /// Deploys plugin libraries as a partial release without a manifest: each replaces (or
    /// adds) the plugin of the name it declares, and the rest of the current generation carries
    /// over. What [`dev`](crate::dev) does with each new build.
    ///
    /// There is no checksum to verify: graft hashes each file itself (while writing its staged
    /// copy) and goes through the same steps and the same single store as [`Host::deploy`].
    ///
    /// # Errors
    ///
    /// As [`Host::deploy`].
    pub fn deploy_libraries(
        &self,
        label: Option<String>,
        libraries: &[PathBuf],
    ) -> Result<DeployReport, DeployError> {
        let span = tracing::info_span!("deploy", release = label.as_deref().unwrap_or("builds"));
        let _entered = span.enter();
        let mut state = self.lock_state();
        let plan = Plan {
            label,
            complete: false,
            remove: Vec::new(),
            plugins: libraries
                .iter()
                .map(|source| Planned {
                    name: None,
                    source: source.clone(),
                    sha256: None,
                })
                .collect(),
        };
        let result = self
            .no_rollout()
            .and_then(|()| self.apply(&mut state, plan, Slot::Current));
        self.push_history(&mut state, &result);
        self.finish(&mut state, result)
    }

    fn push_history(
        &self,
        state: &mut State,
        result: &Result<(DeployReport, ReleaseRecord), DeployError>,
    ) {
        if let Ok((_, record)) = result {
            self.push_record(state, record.clone());
        }
    }

    /// Appends a release that went live to the history, which keeps the last `history_len`.
    fn push_record(&self, state: &mut State, record: ReleaseRecord) {
        state.history.push_back(record);
        while state.history.len() > self.history_len {
            state.history.pop_front();
        }
    }

    /// Makes the previous release current again, as an all-or-nothing deploy of its plugin set.
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`] with no earlier release; otherwise as [`Host::deploy`].
    pub fn rollback(&self) -> Result<DeployReport, DeployError> {
        let span = tracing::info_span!("rollback");
        let _entered = span.enter();
        let mut state = self.lock_state();
        let result = match state
            .history
            .len()
            .checked_sub(2)
            .map(|i| state.history[i].clone())
        {
            None => Err(DeployError::new(
                Step::Manifest,
                None,
                None,
                DeployCause::NothingToRollBack,
            )),
            Some(target) => self
                .no_rollout()
                .and_then(|()| self.apply(&mut state, Self::plan_from(&target), Slot::Current)),
        };
        if let Ok((_, record)) = &result {
            // The rolled-back release leaves the history; its predecessor becomes the top again.
            state.history.pop_back();
            state.history.pop_back();
            state.history.push_back(record.clone());
        }
        self.finish(&mut state, result)
    }

    fn finish(
        &self,
        state: &mut State,
        result: Result<(DeployReport, ReleaseRecord), DeployError>,
    ) -> Result<DeployReport, DeployError> {
        match &result {
            Ok((report, _)) => {
                tracing::info!(
                    generation = report.generation,
                    release = report.release.as_deref().unwrap_or(""),
                    elapsed_us = report.elapsed.as_micros() as u64,
                    go_live_us = report.go_live.as_micros() as u64,
                    "release live"
                );
                self.after_live(state);
            }
            Err(error) => tracing::warn!(error = %DisplayChain(error), "release rejected"),
        }
        Self::note_outcome(state, &result);
        result.map(|(report, _)| report)
    }

    /// Bookkeeping once a new current generation is live: the record of live releases, the
    /// libraries the unload policy holds, the staged copies nothing refers to any more.
    fn after_live(&self, state: &mut State) {
        self.write_record(state);
        if self.unload_policy == UnloadPolicy::KeepHistory {
            Self::retain_history(state);
        }
        self.collect_staged(state);
    }

    /// Remembers the result of the last deploy, for status.
    fn note_outcome(
        state: &mut State,
        result: &Result<(DeployReport, ReleaseRecord), DeployError>,
    ) {
        state.last_deploy = Some(DeployOutcome {
            at: SystemTime::now(),
            generation: result.as_ref().ok().map(|(r, _)| r.generation),
            error: result.as_ref().err().map(|e| DisplayChain(e).to_string()),
        });
    }

    /// The pipeline every deploy and rollback goes through. Publishes only if every step passed.
    fn apply(
        &self,
        state: &mut State,
        plan: Plan,
        slot: Slot,
    ) -> Result<(DeployReport, ReleaseRecord), DeployError> {
        let started = Instant::now();
        let current = self.current.load_full();

        for name in &plan.remove {
            if !current.plugins().any(|p| &p.name == name) {
                let cause = DeployCause::RemoveUnknown(name.clone());
                return Err(DeployError::new(Step::Manifest, Some(name), None, cause));
            }
        }

        // Stage, load, check.
        let mut incoming: Vec<(Arc<LoadedPlugin>, bool)> = Vec::new();
        for planned in &plan.plugins {
            let (plugin, fresh) = self.stage_and_load(state, planned)?;
            if let Some(name) = planned.name.as_ref().filter(|n| **n != plugin.info().name) {
                let declared = plugin.info().name.clone();
                let cause = DeployCause::NameMismatch { declared };
                return Err(DeployError::new(
                    Step::Check,
                    Some(name),
                    Some(planned.source.clone()),
                    cause,
                ));
            }
            if incoming
                .iter()
                .any(|(p, _)| p.info().name == plugin.info().name)
            {
                let cause = DeployCause::DuplicatePlugin(plugin.info().name.clone());
                return Err(DeployError::new(
                    Step::Check,
                    Some(&plugin.info().name),
                    Some(planned.source.clone()),
                    cause,
                ));
            }
            incoming.push((plugin, fresh));
        }

        let staged = Instant::now();

        // The new plugin set: what carries over, then what the release ships.
        let shipped = |name: &str| incoming.iter().any(|(p, _)| p.info().name == name);
        let mut set: Vec<Arc<LoadedPlugin>> = if plan.complete {
            Vec::new()
        } else {
            current
                .loaded()
                .iter()
                .filter(|p| !shipped(&p.info().name) && !plan.remove.contains(&p.info().name))
                .cloned()
                .collect()
        };
        set.extend(incoming.iter().map(|(p, _)| Arc::clone(p)));

        // Link the whole set.
        let linked = link::link(set.iter().map(|p| (p.info(), p.exports().map(|(_, f)| f))))
            .map_err(|e| DeployError::new(Step::Link, None, None, e.into()))?;

        // Initialise what was freshly loaded.
        for (plugin, fresh) in &incoming {
            if *fresh {
                plugin.init(services::host_api()).map_err(|message| {
                    DeployError::new(
                        Step::Init,
                        Some(&plugin.info().name),
                        Some(plugin.path().to_owned()),
                        DeployCause::Init(message),
                    )
                })?;
            }
        }

        // Publish: one store.
        let id = state.next_generation;
        let generation = Arc::new(Generation::new(
            id,
            plan.label.clone(),
            linked,
            set,
            &self.exports,
        ));
        match slot {
            Slot::Current => self.current.store(Arc::clone(&generation)),
            Slot::Canary => self.canary.store(Some(Arc::clone(&generation))),
        }
        let (elapsed, go_live) = (started.elapsed(), staged.elapsed());
        state.next_generation += 1;

        // Bookkeeping, after the release is live.
        state.generations.retain(|g| g.strong_count() > 0);
        state.generations.push(Arc::downgrade(&generation));
        for (plugin, fresh) in &incoming {
            if *fresh {
                state
                    .libraries
                    .insert(plugin.sha256().to_owned(), Arc::downgrade(plugin));
                if self.unload_policy == UnloadPolicy::Never {
                    state.retained.push(Arc::clone(plugin));
                }
            }
        }
        state.libraries.retain(|_, p| p.strong_count() > 0);

        let previous: HashMap<&str, &str> = current
            .loaded()
            .iter()
            .map(|p| (&*p.info().name, p.sha256()))
            .collect();
        let plugins = generation
            .loaded()
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
            .collect();
        let removed = current
            .plugins()
            .filter(|old| !generation.plugins().any(|new| new.name == old.name))
            .map(|p| p.name.clone())
            .collect();
        let record = ReleaseRecord {
            generation: id,
            name: plan.label.clone(),
            plugins: generation
                .loaded()
                .iter()
                .map(|p| PluginRecord {
                    name: p.info().name.clone(),
                    version: p.info().version.clone(),
                    sha256: p.sha256().to_owned(),
                    staged: p.path().to_owned(),
                })
                .collect(),
        };
        let report = DeployReport {
            generation: id,
            release: plan.label,
            plugins,
            removed,
            link: generation.link_report().clone(),
            elapsed,
            staging: elapsed - go_live,
            go_live,
        };
        Ok((report, record))
    }

    /// Stages one plugin file and loads it, or reuses the library already loaded from the same
    /// build. Returns the plugin and whether it was freshly loaded (and so needs `init`).
    fn stage_and_load(
        &self,
        state: &mut State,
        planned: &Planned,
    ) -> Result<(Arc<LoadedPlugin>, bool), DeployError> {
        let name = planned.name.as_deref();
        let file = Some(planned.source.clone());
        // A build has no manifest name yet: its staged copy is named after its file.
        let stem = planned.source.file_stem().map(|s| s.to_string_lossy());
        let label = name
            .or_else(|| stem.as_deref().map(|s| s.strip_prefix("lib").unwrap_or(s)))
            .unwrap_or("plugin");
        let (staged, sha256) = release::stage(
            &self.staging_dir,
            label,
            &planned.source,
            planned.sha256.as_deref(),
            &mut state.checksums,
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
            DeployError::new(step, name, file.clone(), cause)
        })?;
        let (plugin, fresh) = match state.libraries.get(&sha256).and_then(Weak::upgrade) {
            Some(loaded) => (loaded, false),
            None => {
                let loaded = LoadedPlugin::load(&staged, &sha256, &self.unloader).map_err(|e| {
                    let step = if e.is_check() {
                        Step::Check
                    } else {
                        Step::Load
                    };
                    DeployError::new(step, name, file.clone(), e.into())
                })?;
                (Arc::new(loaded), true)
            }
        };
        Ok((plugin, fresh))
    }

    /// Stages, loads, checks and initialises plugins without linking or publishing them; what
    /// `graft check` runs on a scratch host. `(name, file, sha256)` each.
    pub(crate) fn load_for_check(
        &self,
        plugins: &[(String, PathBuf, String)],
    ) -> Result<Vec<Arc<LoadedPlugin>>, DeployError> {
        let mut state = self.lock_state();
        let mut loaded = Vec::new();
        for (name, source, sha256) in plugins {
            let planned = Planned {
                name: Some(name.clone()),
                source: source.clone(),
                sha256: Some(sha256.clone()),
            };
            let (plugin, _) = self.stage_and_load(&mut state, &planned)?;
            plugin.init(services::host_api()).map_err(|message| {
                DeployError::new(
                    Step::Init,
                    Some(name),
                    Some(source.clone()),
                    DeployCause::Init(message),
                )
            })?;
            loaded.push(plugin);
        }
        Ok(loaded)
    }

    /// Makes the last release recorded in the data directory current again: what a restarted
    /// host does first. Returns `None` when there is no record (a fresh data directory).
    ///
    /// The record is written only after a release went live, so a host killed in the middle of
    /// a deploy comes back on the last release that was live, never on a half-deployed one.
    ///
    /// # Errors
    ///
    /// [`DeployError`] if the record is unreadable or its release no longer deploys (for
    /// example a staged copy was deleted: its checksum no longer matches).
    pub fn restore(&self) -> Result<Option<DeployReport>, DeployError> {
        let span = tracing::info_span!("restore", record = %self.record_path.display());
        let _entered = span.enter();
        let file = || Some(self.record_path.clone());
        let text = match std::fs::read_to_string(&self.record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DeployError::new(
                    Step::Manifest,
                    None,
                    file(),
                    DeployCause::Io("reading the release record".into(), e),
                ))
            }
        };
        let history: VecDeque<ReleaseRecord> = serde_json::from_str(&text).map_err(|e| {
            DeployError::new(
                Step::Manifest,
                None,
                file(),
                DeployCause::Record(e.to_string()),
            )
        })?;
        let Some(last) = history.back().cloned() else {
            return Ok(None);
        };
        let mut state = self.lock_state();
        let result = self.apply(&mut state, Self::plan_from(&last), Slot::Current);
        if let Ok((_, record)) = &result {
            state.history = history;
            state.history.pop_back();
            state.history.push_back(record.clone());
        }
        self.finish(&mut state, result).map(Some)
    }

    fn plan_from(record: &ReleaseRecord) -> Plan {
        Plan {
            label: record.name.clone(),
            complete: true,
            remove: Vec::new(),
            plugins: record
                .plugins
                .iter()
                .map(|p| Planned {
                    name: Some(p.name.clone()),
                    source: p.staged.clone(),
                    sha256: Some(p.sha256.clone()),
                })
                .collect(),
        }
    }

    /// [`UnloadPolicy::KeepHistory`]: holds the libraries of the releases in the history, and
    /// lets go of the rest (each is closed once no generation uses it).
    fn retain_history(state: &mut State) {
        let kept: std::collections::HashSet<&str> = state
            .history
            .iter()
            .flat_map(|r| r.plugins.iter().map(|p| p.sha256.as_str()))
            .collect();
        state.retained = state
            .libraries
            .iter()
            .filter(|(sha, _)| kept.contains(sha.as_str()))
            .filter_map(|(_, plugin)| plugin.upgrade())
            .collect();
    }

    /// Writes the history to `DATA/releases.json` (temp file, fsync, rename).
    fn write_record(&self, state: &State) {
        let result = serde_json::to_vec_pretty(&state.history)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_file::write(&self.record_path, &bytes));
        if let Err(error) = result {
            // The release is live; only a restart would miss it. Say so loudly.
            tracing::error!(path = %self.record_path.display(), %error, "could not record the live release");
        }
    }

    /// Deletes staged copies that no live library and no recorded release refers to.
    fn collect_staged(&self, state: &State) {
        let keep: Vec<PathBuf> = state
            .history
            .iter()
            .flat_map(|r| r.plugins.iter().map(|p| p.staged.clone()))
            .chain(
                state
                    .libraries
                    .values()
                    .filter_map(Weak::upgrade)
                    .map(|p| p.path().to_owned()),
            )
            .collect();
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

    /// The host's generations, libraries and history.
    pub fn status(&self) -> Status {
        let state = self.lock_state();
        let current = self.current.load_full();
        let canary = self.canary_id();
        let generations: Vec<GenerationStatus> = std::iter::once(Arc::clone(&current))
            .chain(
                state
                    .generations
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|g| g.id() != current.id()),
            )
            .map(|generation| {
                let is_current = generation.id() == current.id();
                let is_canary = canary == Some(generation.id());
                // References that are not pins: `current` (above), the ArcSwap's if current or
                // canary, and the one this iterator holds.
                let host_refs = match (is_current, is_canary) {
                    (true, _) => 3,
                    (false, true) => 2,
                    (false, false) => 1,
                };
                GenerationStatus {
                    id: generation.id(),
                    release: generation.release().map(str::to_owned),
                    current: is_current,
                    canary: is_canary,
                    plugins: generation
                        .loaded()
                        .iter()
                        .map(|p| PluginStatus {
                            name: p.info().name.clone(),
                            version: p.info().version.clone(),
                            api_version: p.info().api_version.clone(),
                            sha256: p.sha256().to_owned(),
                        })
                        .collect(),
                    in_flight: Arc::strong_count(&generation).saturating_sub(host_refs),
                    age_ms: generation.age().as_millis() as u64,
                }
            })
            .collect();
        let mut generations = generations;
        generations.sort_by_key(|g| g.id);
        let mut libraries: Vec<LibraryStatus> = state
            .libraries
            .values()
            .filter_map(Weak::upgrade)
            .map(|p| LibraryStatus {
                plugin: p.info().name.clone(),
                version: p.info().version.clone(),
                path: p.path().to_owned(),
                state: LibraryState::Loaded,
            })
            .collect();
        libraries.extend(self.unloader.lingering());
        libraries.sort_by(|a, b| a.path.cmp(&b.path));
        Status {
            current: current.id(),
            canary,
            generations,
            libraries,
            history: state.history.iter().cloned().collect(),
            unload_policy: self.unload_policy,
            last_deploy: state.last_deploy.clone(),
        }
    }

    /// Waits until every library released so far has been closed and checked.
    ///
    /// Libraries are closed off the request path, by a background thread; tests and tools that
    /// want to observe an unload call this first.
    pub fn flush_unloads(&self) {
        self.unloader.flush();
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-published state: publishing is one store.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("current", &self.current.load().id())
            .field("staging_dir", &self.staging_dir)
            .field("unload_policy", &self.unload_policy)
            .finish_non_exhaustive()
    }
}

/// Displays an error and its sources, `outer: inner: innermost`.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
