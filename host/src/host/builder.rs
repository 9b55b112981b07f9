//! [`HostBuilder`]: a host's settings, each going to the part of the host that uses it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::BuildError;
use crate::provided::ProvideError;
use crate::release::Limits;
use crate::stage::Staging;
use crate::store::Store;
use crate::table::{Committer, TableSettings};
use crate::unload::UnloadPolicy;

use super::ledger::{Ledger, LedgerSettings};
use super::live_set::LiveSet;
use super::pipeline::{Pipeline, PipelineSettings, STAGED_DIR};
use super::Host;

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
        self.settings.ledger.unload_policy = policy;
        self
    }

    /// How many releases to keep for rollback, the current one included (default 5, at least 2).
    pub fn history(mut self, releases: usize) -> Self {
        self.settings.ledger.history_len = releases.max(2);
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
        self.settings.pipeline.init_timeout = timeout;
        self
    }

    /// How long a lifecycle hook (`pre_activate`, `post_activate`, `pre_unload`) may run
    /// (default 10 s). A `pre_activate` past it refuses the release at
    /// [`Step::Activate`](crate::Step::Activate); the others are logged. A hook cannot be
    /// stopped: it runs on, and its library stays loaded until it returns.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.settings.pipeline.hook_timeout = timeout;
        self
    }

    /// The limits on release manifests (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.pipeline.limits = limits;
        self
    }

    /// The keys releases must be signed with (default none: signatures are not checked). With
    /// any, every release (deploy, rollback, restore) is refused at
    /// [`Step::Signature`](crate::Step::Signature) unless its manifest carries a valid
    /// signature by one of them; see [`signature`](crate::signature).
    pub fn trusted_keys(mut self, keys: Vec<crate::signature::TrustedKey>) -> Self {
        self.settings.pipeline.trusted_keys = keys;
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
        self.settings.pipeline.required.push((contract, by.into()));
        self
    }

    /// Provides contract `C` (by value or JSON) to plugins, implemented by the host: plugins
    /// import it like any contract, and linking checks their types against `C`'s. What
    /// `implementation` holds (a database pool) lives in the host and outlives every patch.
    ///
    /// # Errors
    ///
    /// [`ProvideError::AlreadyProvided`] when the host provides `C` already; the others when
    /// `C` is not a contract plugins can import.
    pub fn provide<C, F>(mut self, implementation: F) -> Result<Self, ProvideError>
    where
        C: graft_api::Contract,
        C::Wire: crate::provided::ProvideWire<C>,
        F: Fn(C::In) -> Result<C::Out, graft_api::Error> + Send + Sync + 'static,
    {
        let provided = Arc::make_mut(&mut self.settings.pipeline.provided);
        crate::provided::provide::<C, F>(provided, implementation)?;
        Ok(self)
    }

    /// Provides the async contract `C` (`json async fn`) to plugins, implemented by the host:
    /// `implementation` returns a future, polled by the calling plugin's future on the
    /// embedder's runtime (`graft serve`'s HTTP client is one).
    ///
    /// # Errors
    ///
    /// As [`HostBuilder::provide`].
    pub fn provide_async<C, F>(mut self, implementation: F) -> Result<Self, ProvideError>
    where
        C: graft_api::Contract<Wire = graft_api::contract::AsyncJson>,
        C::In: serde::Serialize + DeserializeOwned,
        C::Out: serde::Serialize + DeserializeOwned,
        F: Fn(C::In) -> crate::provided::ServiceFuture<C::Out> + Send + Sync + 'static,
    {
        let provided = Arc::make_mut(&mut self.settings.pipeline.provided);
        crate::provided::provide_async::<C, F>(provided, implementation)?;
        Ok(self)
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
            .pipeline
            .reserved_routes
            .push((method.into(), path.into(), by.into()));
        self
    }

    /// The settings of every table no [`HostBuilder::table`] names (default: saved when the
    /// server stops, no limits).
    pub fn table_defaults(mut self, settings: TableSettings) -> Self {
        self.settings.pipeline.tables.defaults = settings;
        self
    }

    /// The settings of table `table` of plugin `plugin`: its durability and limits.
    pub fn table(mut self, plugin: &str, table: &str, settings: TableSettings) -> Self {
        self.settings
            .pipeline
            .tables
            .each
            .insert(format!("{plugin}.{table}"), settings);
        self
    }

    /// How plugin files are staged (default [`Staging::Durable`]; [`Staging::Development`]
    /// for a development loop).
    pub fn staging(mut self, staging: Staging) -> Self {
        self.settings.pipeline.staging = staging;
        self
    }

    /// For development: a plugin's state or table that cannot be carried over to a new build
    /// (its type changed under the same schema, or no migration leads to the new schema) starts
    /// fresh, said in the deploy report's warnings, instead of refusing the release. Off by
    /// default: in production a release that would lose state is refused.
    pub fn fresh_state(mut self, fresh: bool) -> Self {
        self.settings.pipeline.fresh_state = fresh;
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
        std::fs::create_dir_all(self.data_dir.join(STAGED_DIR)).map_err(io)?;
        let store = Arc::new(Store::open(&self.data_dir)?);
        let committer = Committer::new(Arc::clone(&store));
        let pipeline = Pipeline::new(
            &self.data_dir,
            self.settings.pipeline,
            Arc::clone(&store),
            Arc::clone(&committer),
        )
        .map_err(io)?;
        Ok(Host {
            pipeline,
            live: LiveSet::new(),
            ledger: Ledger::new(&self.data_dir, self.settings.ledger),
            migration_drain: self.settings.migration_drain,
            store,
            committer,
            saving: Mutex::new(()),
        })
    }
}

impl Host {
    /// Starts configuring a host that stages plugin copies under `data_dir`.
    pub fn builder(data_dir: impl Into<PathBuf>) -> HostBuilder {
        HostBuilder {
            data_dir: data_dir.into(),
            settings: Settings {
                pipeline: PipelineSettings::default(),
                ledger: LedgerSettings::default(),
                migration_drain: Duration::from_secs(1),
            },
        }
    }
}

/// Everything a [`HostBuilder`] sets, by the part of the host it goes to.
#[derive(Debug, Clone)]
struct Settings {
    pipeline: PipelineSettings,
    ledger: LedgerSettings,
    /// How long a migrating publish waits for the calls in flight (the host's own).
    migration_drain: Duration,
}

#[cfg(test)]
mod tests {
    use graft_api::services::{FetchError, FetchResponse, HttpFetchV1};

    use super::*;
    use crate::provided::ServiceFuture;

    type Fetched = Result<FetchResponse, FetchError>;

    fn fetch() -> impl Fn(graft_api::services::FetchRequest) -> ServiceFuture<Fetched> {
        |_| Box::pin(async { Err(graft_api::Error::new("unused")) })
    }

    #[test]
    fn a_contract_is_provided_once_and_a_clone_of_the_builder_may_provide_too() {
        let builder = Host::builder("/nonexistent")
            .provide_async::<HttpFetchV1, _>(fetch())
            .expect("provided once");
        let twice = builder.clone().provide_async::<HttpFetchV1, _>(fetch());
        assert!(
            matches!(twice, Err(ProvideError::AlreadyProvided(ref c)) if c == "graft.http.fetch@1"),
            "{twice:?}"
        );
        // A clone shares what was provided before it, and may provide more without touching
        // the original's (before, it failed: the two shared one `Arc`).
        let fresh = Host::builder("/nonexistent");
        let _clone = fresh.clone();
        fresh
            .provide_async::<HttpFetchV1, _>(fetch())
            .expect("a builder that was cloned provides");
    }
}
