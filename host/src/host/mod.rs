//! The [`Host`]: the current generation, and the release pipeline around it.
//!
//! A release goes live in two steps, on the model of wasmtime's `Linker` → `InstancePre` →
//! instance:
//!
//! - [`Host::prepare`] (`prepare.rs`) does everything that can fail or take time: manifest,
//!   checksums, staging, load, checks, link, plugin initialisers. It holds no lock anything else
//!   waits for, so many prepares may run at once while requests, status and rollbacks go on. It
//!   returns a [`Prepared`] release, which remembers the generation it was prepared against.
//! - [`Host::publish`] (`publish.rs`) is the one serialised step: if the generation the release
//!   was prepared against is still current, one `ArcSwap` store makes it live and the history is
//!   updated; if another release went live meanwhile, it is refused ([`Step::Publish`]), so it
//!   never silently undoes a rollback or a newer deploy.
//!
//! [`Host::deploy`] is both. Concurrent deploys therefore publish in the order their prepares
//! finish, and a deploy prepared against a generation that is no longer current is refused.

mod prepare;
mod publish;
mod save;
mod vouch;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{de::DeserializeOwned, Serialize};

use crate::bounded::{truncate, MAX_MESSAGE};
use crate::decl::ContractError;
use crate::error::{BuildError, CallError, DeployError, DisplayChain};
use crate::ids::Ids;
use crate::init::InitState;
use crate::live::calls::{CallSite, Calls};
use crate::live::gate::Gate;
use crate::live::generation::{Export, Exports, Generation};
use crate::live::pin::{OwnedPin, Pin, PinCache};
use crate::loader::LoadedPlugin;
use crate::provided::Provided;
use crate::registry::Libraries;
use crate::release::Limits;
use crate::report::DeployReport;
use crate::stage::ChecksumCache;
use crate::status::{
    DeployOutcome, GenerationRole, GenerationStatus, LibraryState, LibraryStatus, PluginStatus,
    ReleaseRecord, Status, TableStatus,
};
use crate::store::Store;
use crate::table::{Committer, TableConfig, TableSettings};
use crate::typed::TypedExport;
use crate::unload::{Released, UnloadPolicy, Unloader};

pub use prepare::Prepared;
pub(crate) use prepare::Shipped;
pub use save::{SavedState, SAVE_HOLD};

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
    exports: Exports,
    libraries: Libraries,
    unloader: Unloader,
    checksums: ChecksumCache,
    staging_dir: PathBuf,
    /// Held shared by every prepare while it stages and loads; taken exclusively, and only when
    /// free, to delete staged copies nothing refers to, so none is deleted before it is loaded.
    staging: RwLock<()>,
    /// `DATA/releases.json`: the releases that went live, the last one current.
    record_path: PathBuf,
    /// The data directory.
    data_dir: PathBuf,
    /// The version of the history last written to `record_path`: writes never go backwards.
    record_written: Mutex<u64>,
    settings: Settings,
    /// The request boundary a migrating publish (or a state save) closes.
    gate: Gate,
    /// The calls in flight on every generation (see [`crate::live::calls`]).
    calls: Arc<Calls>,
    /// `DATA/state.redb`: saved plugin state and persisted tables.
    store: Arc<Store>,
    /// Makes the writes of every-write tables durable before they are acknowledged.
    committer: Arc<Committer>,
    /// Held by one state save at a time, so that an older copy never overwrites a newer one.
    saving: Mutex<()>,
    /// Generation ids, unique for the life of the data directory.
    ids: Ids,
    /// Every generation prepared and not yet dropped, for status.
    generations: Mutex<Vec<Weak<Generation>>>,
    /// What publishing changes, under the one publish lock; never held across I/O or plugin
    /// code.
    book: Mutex<Book>,
}

#[derive(Debug, Clone)]
struct Settings {
    unload_policy: UnloadPolicy,
    history_len: usize,
    init_timeout: Duration,
    hook_timeout: Duration,
    migration_drain: Duration,
    limits: Limits,
    trusted_keys: Vec<crate::signature::TrustedKey>,
    tables: TableConfig,
    /// Exports every release must provide, callable with JSON, and who requires each.
    required: Vec<(crate::decl::Contract, String)>,
    /// What the host provides plugins (host services as contracts).
    provided: Arc<Provided>,
    /// Routes the embedder serves itself (method, pattern, who), which no plugin may claim.
    reserved_routes: Vec<(String, String, String)>,
}

#[derive(Default)]
struct Book {
    /// Releases that went live, oldest first; the last one is current.
    history: VecDeque<ReleaseRecord>,
    /// Libraries kept alive by [`UnloadPolicy::Never`] or [`UnloadPolicy::KeepHistory`], by
    /// SHA-256.
    retained: HashMap<String, Arc<LoadedPlugin>>,
    last_deploy: Option<DeployOutcome>,
    /// Bumped by every publish, so record writes can be ordered.
    version: u64,
}

/// The file, in the data directory, that records the releases that went live.
pub const RECORD: &str = "releases.json";

/// Configures a [`Host`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    data_dir: PathBuf,
    settings: Settings,
}

impl HostBuilder {
    /// What to do with a library once no generation uses it (default
    /// [`UnloadPolicy::KeepHistory`]).
    pub fn unload_policy(mut self, policy: UnloadPolicy) -> Self {
        self.settings.unload_policy = policy;
        self
    }

    /// How many releases to keep for rollback, the current one included (default 5, at least 2).
    pub fn history(mut self, releases: usize) -> Self {
        self.settings.history_len = releases.max(2);
        self
    }

    /// How long a publish that migrates state waits for the requests in flight to finish,
    /// with new ones held at the boundary, before it gives up and refuses the release
    /// (default 1 s).
    pub fn migration_drain(mut self, deadline: Duration) -> Self {
        self.settings.migration_drain = deadline;
        self
    }

    /// How long a deploy waits for its plugins' initialisers (default 10 s). Past it the deploy
    /// is refused at [`Step::Init`](crate::Step::Init); the initialiser, which cannot be stopped,
    /// runs on and its library stays loaded until it returns.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.settings.init_timeout = timeout;
        self
    }

    /// How long a lifecycle hook (`pre_activate`, `post_activate`, `pre_unload`) may run
    /// (default 10 s). A `pre_activate` past it refuses the release at
    /// [`Step::Activate`](crate::Step::Activate); the others are logged. A hook cannot be
    /// stopped: it runs on, and its library stays loaded until it returns.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.settings.hook_timeout = timeout;
        self
    }

    /// The limits on release manifests (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.limits = limits;
        self
    }

    /// The keys releases must be signed with (default none: signatures are not checked). With
    /// any, every release (deploy, rollback, restore) is refused at
    /// [`Step::Signature`](crate::Step::Signature) unless its manifest carries a valid
    /// signature by one of them; see [`signature`](crate::signature).
    pub fn trusted_keys(mut self, keys: Vec<crate::signature::TrustedKey>) -> Self {
        self.settings.trusted_keys = keys;
        self
    }

    /// An export every release must provide so that it can be called with JSON: `by` (`route
    /// POST /foo`) calls it. A release without it is refused at [`Step::Link`](crate::Step::Link),
    /// naming `by`; the first release too, so a mistyped export stops a start.
    pub fn require_export(
        mut self,
        contract: crate::decl::Contract,
        by: impl Into<String>,
    ) -> Self {
        self.settings.required.push((contract, by.into()));
        self
    }

    /// Provides contract `C` (by value or JSON) to plugins, implemented by the host: plugins
    /// import it like any contract, and linking checks their types against `C`'s. What
    /// `implementation` holds (a database pool) lives in the host and outlives every patch.
    ///
    /// # Errors
    ///
    /// When the host provides `C` already.
    pub fn provide<C, F>(mut self, implementation: F) -> Result<Self, String>
    where
        C: graft_api::Contract,
        C::Wire: crate::provided::ProvideWire<C>,
        F: Fn(C::In) -> Result<C::Out, graft_api::Error> + Send + Sync + 'static,
    {
        let provided = self.provided_mut::<C>()?;
        crate::provided::provide::<C, F>(provided, implementation)?;
        Ok(self)
    }

    /// Provides the async contract `C` (`json async fn`) to plugins, implemented by the host:
    /// `implementation` returns a future, polled by the calling plugin's future on the
    /// embedder's runtime (`graft serve`'s HTTP client is one).
    ///
    /// # Errors
    ///
    /// When the host provides `C` already.
    pub fn provide_async<C, F>(mut self, implementation: F) -> Result<Self, String>
    where
        C: graft_api::Contract<Wire = graft_api::contract::AsyncJson>,
        C::In: serde::Serialize + DeserializeOwned,
        C::Out: serde::Serialize + DeserializeOwned,
        F: Fn(C::In) -> crate::provided::ServiceFuture<C::Out> + Send + Sync + 'static,
    {
        let provided = self.provided_mut::<C>()?;
        crate::provided::provide_async::<C, F>(provided, implementation)?;
        Ok(self)
    }

    fn provided_mut<C: graft_api::Contract>(&mut self) -> Result<&mut Provided, String> {
        let contract: crate::decl::Contract = C::NAME.parse().map_err(|e| format!("{e}"))?;
        let provided = Arc::get_mut(&mut self.settings.provided)
            .ok_or("a built host's provided exports cannot change")?;
        if provided.has(&contract) {
            return Err(format!("the host provides {contract} already"));
        }
        Ok(provided)
    }

    /// A route the embedder serves itself (`by`: `graft.toml [[route]] POST /foo`; `method`
    /// `*` for every method): a release whose plugin declares the same method and pattern is
    /// refused at [`Step::Link`](crate::Step::Link), naming both.
    pub fn reserve_route(
        mut self,
        method: impl Into<String>,
        path: impl Into<String>,
        by: impl Into<String>,
    ) -> Self {
        self.settings
            .reserved_routes
            .push((method.into(), path.into(), by.into()));
        self
    }

    /// The settings of every table no [`HostBuilder::table`] names (default: saved when the
    /// server stops, no limits).
    pub fn table_defaults(mut self, settings: TableSettings) -> Self {
        self.settings.tables.defaults = settings;
        self
    }

    /// The settings of table `table` of plugin `plugin`: its durability and limits.
    pub fn table(mut self, plugin: &str, table: &str, settings: TableSettings) -> Self {
        self.settings
            .tables
            .each
            .insert(format!("{plugin}.{table}"), settings);
        self
    }

    /// Creates the host, with the empty generation 0 current, and opens its store of saved
    /// state (`DATA/state.redb`).
    ///
    /// # Errors
    ///
    /// [`BuildError::Io`] if the data directory cannot be created or the unloader thread cannot
    /// start; [`BuildError::Store`] if the saved state is there but cannot be used (damaged,
    /// not a store): the host does not start without it, and leaves it as it is.
    pub fn build(self) -> Result<Host, BuildError> {
        let io = |e| BuildError::Io(self.data_dir.clone(), e);
        let staging_dir = self.data_dir.join("staged");
        std::fs::create_dir_all(&staging_dir).map_err(io)?;
        let store = Arc::new(Store::open(&self.data_dir)?);
        let committer = Committer::new(Arc::clone(&store));
        let unloader = Unloader::spawn(self.settings.hook_timeout).map_err(io)?;
        let calls = Arc::new(Calls::default());
        let empty = Generation::empty(Arc::clone(&calls));
        empty.mark_published();
        Ok(Host {
            current: ArcSwap::from_pointee(empty),
            exports: Exports::default(),
            libraries: Libraries::default(),
            unloader,
            checksums: ChecksumCache::default(),
            staging_dir,
            staging: RwLock::new(()),
            record_path: self.data_dir.join(RECORD),
            data_dir: self.data_dir.clone(),
            record_written: Mutex::new(0),
            settings: self.settings,
            gate: Gate::default(),
            calls,
            store,
            committer,
            saving: Mutex::new(()),
            ids: Ids::open(&self.data_dir),
            generations: Mutex::new(Vec::new()),
            book: Mutex::new(Book::default()),
        })
    }
}

impl Host {
    /// Starts configuring a host that stages plugin copies under `data_dir`.
    pub fn builder(data_dir: impl Into<PathBuf>) -> HostBuilder {
        HostBuilder {
            data_dir: data_dir.into(),
            settings: Settings {
                unload_policy: UnloadPolicy::default(),
                history_len: 5,
                init_timeout: Duration::from_secs(10),
                hook_timeout: Duration::from_secs(10),
                migration_drain: Duration::from_secs(1),
                limits: Limits::default(),
                trusted_keys: Vec::new(),
                tables: TableConfig::default(),
                required: Vec::new(),
                provided: Arc::default(),
                reserved_routes: Vec::new(),
            },
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

    /// A typed handle on contract `C`, for [`Generation::call_typed`]: calls pass `C`'s values
    /// as they are, after checking that the generation's export has `C`'s types.
    ///
    /// # Errors
    ///
    /// If `C::NAME` is not of the form `name@N`.
    pub fn typed_export<C: graft_api::Contract>(&self) -> Result<TypedExport<C>, ContractError> {
        Ok(TypedExport::new(self.exports.get(C::NAME)?))
    }

    /// Pins the current generation for a synchronous piece of work.
    #[inline]
    pub fn pin(&self) -> Pin {
        Pin::new(self.current.load())
    }

    /// A pin cache for a worker that pins in a loop: each [`PinCache::pin`] returns the
    /// generation current then, for two relaxed loads and a compare. It holds the last
    /// generation it returned until it pins again after a publish (see [`crate::live::pin`]), and
    /// passes the request boundary a migrating publish closes, like [`Host::pin_owned`].
    pub fn pin_cache(&self) -> PinCache<'_> {
        PinCache::new(&self.current, &self.gate)
    }

    /// Pins the current generation for a request entering through `site` (an owned handle,
    /// for async work; a call in flight, listed under the site's label).
    ///
    /// Waits while a migration or a save holds the request boundary for a plugin the site's
    /// export can reach (bounded by the drain deadline plus the migration itself); requests
    /// that cannot reach it pass. [`Host::try_pin_for`] does not wait. Code that writes plugin
    /// state pins with this (or [`Host::pin_owned`]), not with [`Host::pin`]: migrations and
    /// saves wait for counted pins only.
    pub fn pin_for(&self, site: &CallSite) -> OwnedPin {
        loop {
            if let Some(pin) = self.try_pin_for(site) {
                return pin;
            }
            self.gate.wait_open();
        }
    }

    /// The current generation, not counted in flight: to look at (its routes, its release)
    /// before pinning it for a call with [`Host::try_admit`].
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// [`Host::pin_for`] without waiting: `None` while the request boundary holds the site's
    /// requests (async callers retry after a short sleep).
    pub fn try_pin_for(&self, site: &CallSite) -> Option<OwnedPin> {
        self.try_pin_at(self.current.load_full(), site)
    }

    /// Pins `generation` (a canary's, held beside the current one) for a request entering
    /// through `site`, through the request boundary like [`Host::try_pin_for`].
    pub fn try_pin_at(&self, generation: Arc<Generation>, site: &CallSite) -> Option<OwnedPin> {
        self.try_admit(OwnedPin::for_site(generation, site))
    }

    /// Pins the current generation for work that may reach any plugin (an owned handle,
    /// counted in flight): held at the boundary by every migration and save. Prefer
    /// [`Host::pin_for`] for requests that enter through one export.
    pub fn pin_owned(&self) -> OwnedPin {
        loop {
            if let Some(pin) = self.try_pin_owned() {
                return pin;
            }
            self.gate.wait_open();
        }
    }

    /// [`Host::pin_owned`] without waiting: `None` while a migration or a save holds the
    /// request boundary.
    pub fn try_pin_owned(&self) -> Option<OwnedPin> {
        self.try_admit(OwnedPin::new(self.current.load_full()))
    }

    /// Lets a counted pin taken some other way through the request boundary: `None`, the pin
    /// dropped, while the boundary holds a plugin the pin can reach.
    pub fn try_admit(&self, pin: OwnedPin) -> Option<OwnedPin> {
        self.gate.admits(&pin, pin.reach()).then_some(pin)
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

    /// Calls a typed export in the current generation and returns a host-owned copy of its
    /// output (see [`Returned`](crate::Returned)): the convenient form. Hot paths pin once and
    /// call [`Generation::call_typed`] through the pin, which copies nothing.
    ///
    /// # Errors
    ///
    /// See [`Generation::call_typed`].
    pub fn call_typed<C: graft_api::Contract>(
        &self,
        export: &TypedExport<C>,
        input: C::In,
    ) -> Result<C::Out, CallError>
    where
        C::Out: Clone,
        C::Wire: graft_api::contract::CallWire<C::In, C::Out>,
    {
        Ok(self.pin().call_typed(export, input)?.cloned())
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

    /// Deploys the release in `dir`: [`Host::prepare`], then [`Host::publish`].
    ///
    /// # Errors
    ///
    /// [`DeployError`] naming the step, plugin and file that failed. Nothing changes then: the
    /// current generation keeps serving.
    pub fn deploy(&self, dir: impl AsRef<Path>) -> Result<DeployReport, DeployError> {
        let prepared = self.prepare(dir)?;
        self.publish(prepared)
    }

    /// Deploys plugin libraries as a partial release without a manifest:
    /// [`Host::prepare_libraries`], then [`Host::publish`]. What `graft dev` does with each build.
    ///
    /// # Errors
    ///
    /// As [`Host::deploy`].
    pub fn deploy_libraries(
        &self,
        label: Option<String>,
        libraries: &[PathBuf],
    ) -> Result<DeployReport, DeployError> {
        let prepared = self.prepare_libraries(label, libraries)?;
        self.publish(prepared)
    }

    /// Makes the previous release current again, as an all-or-nothing deploy of its plugin set:
    /// [`Host::prepare_rollback`], then [`Host::publish`].
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`](crate::DeployCause::NothingToRollBack) with no earlier
    /// release; otherwise as [`Host::deploy`].
    pub fn rollback(&self) -> Result<DeployReport, DeployError> {
        let prepared = self.prepare_rollback()?;
        self.publish(prepared)
    }

    /// The host's generations, libraries and history: a snapshot taken under short locks that
    /// no prepare holds while it works, so it answers whatever a deploy is doing.
    pub fn status(&self) -> Status {
        let current = self.current.load_full();
        let calls = self.calls.matching(|_| true);
        let (history, last_deploy) = {
            let book = self.lock_book();
            (
                book.history.iter().cloned().collect(),
                book.last_deploy.clone(),
            )
        };
        let mut generations: Vec<GenerationStatus> = self
            .live_generations()
            .into_iter()
            .chain(std::iter::once(Arc::clone(&current)))
            .map(|generation| GenerationStatus {
                id: generation.id(),
                release: generation.release().map(str::to_owned),
                role: if generation.id() == current.id() {
                    GenerationRole::Current
                } else if generation.is_published() {
                    GenerationRole::Replaced
                } else {
                    GenerationRole::Prepared
                },
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
                in_flight: calls
                    .iter()
                    .filter(|c| c.generation == generation.id())
                    .count(),
                age_ms: u64::try_from(generation.age().as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        generations.sort_by_key(|g| g.id);
        generations.dedup_by_key(|g| g.id);
        let mut libraries: Vec<LibraryStatus> = self
            .libraries
            .live()
            .iter()
            .map(|p| LibraryStatus {
                plugin: p.info().name.clone(),
                version: p.info().version.clone(),
                path: p.path().to_owned(),
                state: match p.init_cell().state() {
                    InitState::Running { abandoned: true } => LibraryState::Abandoned,
                    InitState::Running { abandoned: false } => LibraryState::Initialising,
                    InitState::NotStarted | InitState::Done(_) => LibraryState::Loaded,
                },
            })
            .collect();
        let released = |state| {
            move |l: Released| LibraryStatus {
                plugin: l.plugin,
                version: l.version,
                path: l.path,
                state,
            }
        };
        let unloader = &self.unloader;
        libraries.extend(
            unloader
                .unloading()
                .into_iter()
                .map(released(LibraryState::Unloading)),
        );
        libraries.extend(
            unloader
                .lingering()
                .into_iter()
                .map(released(LibraryState::Pinned)),
        );
        libraries.sort_by(|a, b| a.path.cmp(&b.path));
        Status {
            current: current.id(),
            generations,
            libraries,
            history,
            unload_policy: self.settings.unload_policy,
            last_deploy,
            in_flight: calls.len(),
            calls: crate::live::calls::oldest(calls, publish::MAX_LISTED),
            tables: current
                .tables()
                .map(|t| TableStatus {
                    plugin: t.plugin.clone(),
                    name: t.name.clone(),
                    schema: t.schema,
                    entries: t.len(),
                    bytes: t.bytes(),
                    durability: t.settings.durability,
                    max_entries: t.settings.max_entries,
                    max_bytes: t.settings.max_bytes,
                })
                .collect(),
        }
    }

    /// Waits until every library released so far has been closed and checked.
    ///
    /// Libraries are closed off the request path, by a background thread; tests and tools that
    /// want to observe an unload call this first.
    pub fn flush_unloads(&self) {
        self.unloader.flush();
    }

    /// Generations prepared and still alive (the current one, replaced ones draining, prepared
    /// ones not published).
    fn live_generations(&self) -> Vec<Arc<Generation>> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.retain(|g| g.strong_count() > 0);
        generations.iter().filter_map(Weak::upgrade).collect()
    }

    /// Remembers a generation for status until it drops.
    fn track(&self, generation: &Arc<Generation>) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.retain(|g| g.strong_count() > 0);
        generations.push(Arc::downgrade(generation));
    }

    /// Logs a refused release and records it as the last deploy's outcome; returns it.
    /// Records a refusal as the last deploy's outcome and deletes the staged copies it left
    /// (nothing live or recorded refers to them once its libraries were let go).
    fn refused(&self, error: DeployError) -> DeployError {
        let error = self.noted(error);
        let history = self.lock_book().history.clone();
        self.collect_staged(&history);
        error
    }

    /// Records a refusal as the last deploy's outcome, deleting nothing: what a restore does
    /// while earlier recorded releases, not in the history yet, may still be tried.
    fn noted(&self, error: DeployError) -> DeployError {
        tracing::warn!(error = %DisplayChain(&error), "release rejected");
        self.lock_book().last_deploy = Some(outcome(None, Some(&error)));
        error
    }

    fn lock_book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves no half-published state: publishing is one store.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
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

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("current", &self.current.load().id())
            .field("staging_dir", &self.staging_dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
