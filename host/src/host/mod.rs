//! The [`Host`]: a release pipeline, a live set and a ledger, behind one embedding API.
//!
//! The host is three parts, each with one responsibility and its own state:
//!
//! - the [pipeline] (`pipeline/`) turns a release into a [`Prepared`] one: manifest,
//!   signature, checksums, staging, load, checks, link, migrate, init. It owns the staged
//!   copies, the loaded libraries and their unloader, and generation ids; it touches nothing
//!   that serves. `graft worker` runs the same pipeline in its own process.
//! - the [live set](live_set) (`live_set.rs`) holds the current generation, the ones draining
//!   and the request boundary: requests pin there, a publish stores there, a migration or a
//!   save closes the boundary there.
//! - the [ledger] (`ledger.rs`) holds the releases that went live (the history a
//!   rollback and a restart read, `DATA/releases.json`), the last deploy's outcome and the
//!   libraries the unload policy keeps.
//!
//! The host itself only sequences them, on the model of wasmtime's `Linker` → `InstancePre` →
//! instance:
//!
//! - [`Host::prepare`] (`prepare.rs`) runs the pipeline on the live generation. It holds no
//!   lock anything else waits for, so many prepares may run at once while requests, status and
//!   rollbacks go on. It returns a [`Prepared`] release, which remembers the generation it was
//!   prepared against.
//! - [`Host::publish`] (`publish.rs`) is the one serialised step, under the ledger's lock: if
//!   the generation the release was prepared against is still current, one store in the live
//!   set makes it live and the ledger records it; if another release went live meanwhile, it
//!   is refused ([`Step::Publish`](crate::Step::Publish)), so it never silently undoes a
//!   rollback or a newer deploy.
//! - [`Host::save_state`] (`save.rs`) copies plugin state at a request boundary into the store.
//!
//! [`Host::deploy`] is prepare then publish. Concurrent deploys therefore publish in the order
//! their prepares finish, and a deploy prepared against a generation that is no longer current
//! is refused.

mod builder;
mod ledger;
mod live_set;
mod pipeline;
mod prepare;
mod prepared;
mod publish;
mod save;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::decl::ContractError;
use crate::error::{CallError, DeployError};
use crate::init::InitState;
use crate::live::calls::CallSite;
use crate::live::generation::{Export, Generation};
use crate::live::pin::{OwnedPin, Pin, PinCache};
use crate::report::DeployReport;
use crate::status::{
    GenerationRole, GenerationStatus, LibraryState, LibraryStatus, PluginStatus, Status,
    TableStatus,
};
use crate::store::Store;
use crate::table::Committer;
use crate::typed::TypedExport;
use crate::unload::Released;

use ledger::Ledger;
use live_set::LiveSet;
use pipeline::Pipeline;

pub use builder::HostBuilder;
pub use ledger::{RollbackTo, RECORD};
pub(crate) use live_set::MAX_LISTED;
pub use prepared::Prepared;
pub(crate) use prepared::Shipped;
pub use publish::Settle;
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
    /// Stages, loads, checks, links, migrates and initialises releases.
    pipeline: Pipeline,
    /// The current generation, those draining, and the request boundary.
    live: LiveSet,
    /// The releases that went live; its lock is the publish lock.
    ledger: Ledger,
    /// How long a publish that migrates state waits for the calls in flight.
    migration_drain: Duration,
    /// `DATA/state.redb`: saved plugin state and persisted tables.
    store: Arc<Store>,
    /// Makes the writes of every-write tables durable before they are acknowledged.
    committer: Arc<Committer>,
    /// Held by one state save at a time, so that an older copy never overwrites a newer one.
    saving: Mutex<()>,
}

impl Host {
    ///
    /// # Errors
    ///
    /// If `contract` is not of the form `name@N`.
    pub fn export(&self, contract: &str) -> Result<Export, ContractError> {
        self.pipeline.exports().get(contract)
    }

    /// A typed handle on contract `C`, for [`Generation::call_typed`]: calls pass `C`'s values
    /// as they are, after checking that the generation's export has `C`'s types.
    ///
    /// # Errors
    ///
    /// If `C::NAME` is not of the form `name@N`.
    pub fn typed_export<C: graft_api::Contract>(&self) -> Result<TypedExport<C>, ContractError> {
        Ok(TypedExport::new(self.pipeline.exports().get(C::NAME)?))
    }

    /// Pins the current generation for a synchronous piece of work.
    #[inline]
    pub fn pin(&self) -> Pin {
        self.live.pin()
    }

    /// A pin cache for a worker that pins in a loop: each [`PinCache::pin`] returns the
    /// generation current then, for two relaxed loads and a compare. It holds the last
    /// generation it returned until it pins again after a publish (see [`crate::live::pin`]), and
    /// passes the request boundary a migrating publish closes, like [`Host::pin_owned`].
    pub fn pin_cache(&self) -> PinCache<'_> {
        self.live.pin_cache()
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
        self.live.pin_waiting(|| self.try_pin_for(site))
    }

    /// The current generation, not counted in flight: to look at (its routes, its release)
    /// before pinning it for a call with [`Host::try_admit`].
    pub fn current(&self) -> Arc<Generation> {
        self.live.current()
    }

    /// Has `told` called with each generation made current, right after the atomic store
    /// (under the publish lock: it must be quick, and must not deploy). For an embedder that
    /// serves some requests outside [`Host::pin`], such as `graft serve` with worker
    /// processes, to stop serving the replaced generation at once. Set once: `false` if it was
    /// set before (and `told` is dropped).
    pub fn on_switch(&self, told: impl Fn(&Arc<Generation>) + Send + Sync + 'static) -> bool {
        self.live.on_switch(Box::new(told))
    }

    /// [`Host::pin_for`] without waiting: `None` while the request boundary holds the site's
    /// requests (async callers retry after a short sleep).
    pub fn try_pin_for(&self, site: &CallSite) -> Option<OwnedPin> {
        self.try_pin_at(self.live.current(), site)
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
        self.live.pin_waiting(|| self.try_pin_owned())
    }

    /// [`Host::pin_owned`] without waiting: `None` while a migration or a save holds the
    /// request boundary.
    pub fn try_pin_owned(&self) -> Option<OwnedPin> {
        self.try_admit(OwnedPin::new(self.live.current()))
    }

    /// Lets a counted pin taken some other way through the request boundary: `None`, the pin
    /// dropped, while the boundary holds a plugin the pin can reach.
    pub fn try_admit(&self, pin: OwnedPin) -> Option<OwnedPin> {
        self.live.try_admit(pin)
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
        self.publish_changed(prepared)
    }

    /// Publishes `prepared`, unless it is the very release live (then its report says
    /// `unchanged`, and nothing is published).
    fn publish_changed(&self, prepared: Prepared) -> Result<DeployReport, DeployError> {
        if let Some(report) = prepared.unchanged(self.live.current_id()) {
            tracing::info!(
                generation = report.generation,
                "release unchanged: live already"
            );
            return Ok(report);
        }
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
        self.publish_changed(prepared)
    }

    /// Makes the previous release current again, as an all-or-nothing deploy of its plugin set:
    /// [`Host::prepare_rollback`], then [`Host::publish`].
    ///
    /// # Errors
    ///
    /// [`DeployCause::NothingToRollBack`](crate::DeployCause::NothingToRollBack) with no earlier
    /// release; otherwise as [`Host::deploy`].
    pub fn rollback(&self) -> Result<DeployReport, DeployError> {
        self.rollback_to(&RollbackTo::Previous)
    }

    /// Makes the earlier release `to` names current again (the newest of the history that
    /// matches), as an all-or-nothing deploy of its plugin set:
    /// [`Host::prepare_rollback_to`], then [`Host::publish`]. It and the releases after it
    /// leave the history, and it is pushed again.
    ///
    /// # Errors
    ///
    /// [`DeployCause::NoSuchRelease`](crate::DeployCause::NoSuchRelease) (listing the history)
    /// if no earlier release matches; otherwise as [`Host::deploy`].
    pub fn rollback_to(&self, to: &RollbackTo) -> Result<DeployReport, DeployError> {
        let prepared = self.prepare_rollback_to(to)?;
        self.publish(prepared)
    }

    /// The host's generations, libraries and history: a snapshot taken under short locks that
    /// no prepare holds while it works, so it answers whatever a deploy is doing.
    pub fn status(&self) -> Status {
        let current = self.live.current();
        let calls = self.live.calls().matching(|_| true);
        let (history, last_deploy) = {
            let book = self.ledger.lock();
            (
                book.history.iter().cloned().collect(),
                book.last_deploy.clone(),
            )
        };
        let mut generations: Vec<GenerationStatus> = self
            .live
            .generations()
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
            .pipeline
            .libraries()
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
        let unloader = self.pipeline.unloader();
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
            unload_policy: self.ledger.unload_policy(),
            last_deploy,
            in_flight: calls.len(),
            calls: crate::live::calls::oldest(calls, MAX_LISTED),
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
        self.pipeline.unloader().flush();
    }

    /// Records a refusal as the last deploy's outcome and deletes the staged copies it left
    /// (nothing live or recorded refers to them once its libraries were let go). Returns it.
    fn refused(&self, error: DeployError) -> DeployError {
        let error = self.noted(error);
        self.collect_left_staged();
        error
    }

    /// Deletes the staged copies a refused prepare left.
    fn collect_left_staged(&self) {
        let history = self.ledger.lock().history.clone();
        self.collect_staged(&history);
    }

    /// Records a refusal as the last deploy's outcome, deleting nothing: what a restore does
    /// while earlier recorded releases, not in the history yet, may still be tried.
    fn noted(&self, error: DeployError) -> DeployError {
        self.ledger.note_refusal(&error);
        error
    }

    /// Deletes the staged copies that neither a live library nor a release of `history` (nor,
    /// before the first publish, of the record on disk) refers to.
    fn collect_staged(&self, history: &std::collections::VecDeque<crate::status::ReleaseRecord>) {
        if let Some(keep) = self.ledger.staged_in_use(history) {
            self.pipeline.collect_staged(keep);
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("current", &self.live.current_id())
            .field("record", &self.ledger.record_path())
            .finish_non_exhaustive()
    }
}
