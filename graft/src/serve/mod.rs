//! `graft serve`: HTTP routes mapped to plugin exports ([`app`](self) routes), the admin API on
//! a listener of its own, and the deploys both share.
//!
//! - `app.rs`: the service's routes; each request pins one generation.
//! - `admin.rs`: status, metrics, deploy, rollback, rollouts (see [`api`](crate::api)).
//! - `ui.rs`, `ui.html`: the dashboard the admin API serves at `/ui`, and how a browser signs in.
//! - `deployer.rs`: the one deploy path, for the admin API and watch mode: prepare, then
//!   publish; how concurrent deploys order.
//! - `mode.rs`: where a route's plugin calls run (inline on a worker, or on the blocking pool).
//! - `listen/`: accepting connections under a cap, header-read and body timeouts; handing them
//!   to a worker and taking them back (`one.rs`).
//! - `conn.rs`, `given.rs`: a connection as a worker serves it for its front, and the worker's
//!   side of its link.
//! - `arrival.rs`: when a request's bytes arrived (the kernel's receive stamp), where a
//!   rollout counts its latency from.
//! - `worker_process.rs`: `graft worker`, this server without listeners, serving the requests
//!   its front forwards over its channel (see [`worker`](crate::worker)).
//!
//! The admin API runs on a runtime of its own (one worker thread, its own blocking pool), so
//! app load never delays it.
//!
//! On shutdown the listeners stop accepting and in-flight requests finish, bounded by the drain
//! timeout; then the plugin state that asks to be saved is saved to the data directory (and,
//! with `state_save_interval_ms`, also every so often while serving), so the next start comes
//! back with it.

mod admin;
mod app;
mod arrival;
mod conn;
mod deployer;
mod given;
mod listen;
pub mod mode;
mod routes;
mod trace;
mod ui;
mod worker_process;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use graft_host::{DeployError, DisplayChain, Host};
use tokio::net::{TcpListener, TcpSocket};

pub use app::{GENERATION_HEADER, ROUTE_HEADER, ROUTE_TOKEN_HEADER};
pub use trace::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
pub use worker_process::{run as run_worker, run_preflight};

use deployer::Deployer;
use listen::ConnLimits;

/// How many connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

use crate::api::RolloutOptions;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::rollout::Rollouts;
use crate::shards::Shards;
use crate::worker::Workers;

/// How long file events must stop before the watcher reads a release.
const WATCH_SETTLE: Duration = Duration::from_millis(100);

/// How the directories uploaded bundles are unpacked into are named, in `DATA/uploads`: what a
/// start removes as left over.
const UPLOAD_PREFIX: &str = "upload-";

/// The rollout's status, in the data directory, so a restart knows one was under way.
const ROLLOUT_RECORD: &str = "rollout.json";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The host could not start (its data directory, or saved state it cannot use).
    #[error("starting the host in {}", dir.display())]
    Host {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: graft_host::BuildError,
    },
    /// The last live release cannot use the saved state: the server does not start on another
    /// release instead (it would serve without that state), and leaves the state as it is.
    #[error("restoring the last live release")]
    SavedState(#[source] DeployError),
    /// The initial release was rejected.
    #[error("deploying the initial release")]
    Deploy(#[source] DeployError),
    /// No recorded release restored, and there is no configured release to fall back to.
    #[error(
        "restoring the last live release: no recorded release deploys and no release is configured"
    )]
    Restore(#[source] DeployError),
    /// No recorded release restored, and the configured release was rejected too.
    #[error("restoring the last live release failed ({restore}), and so did deploying the configured release")]
    RestoreAndDeploy {
        /// Why the last live release did not restore.
        restore: String,
        /// Why the configured release was rejected.
        #[source]
        deploy: Box<DeployError>,
    },
    /// A route is invalid.
    #[error("invalid route: {0}")]
    Route(String),
    /// The watched path could not be watched.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// A listener could not bind.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config sets no `data_dir`.
    #[error("graft.toml sets no data_dir: graft serve keeps its staged copies, release record and saved state there")]
    NoDataDir,
    /// The host services (the outbound HTTP client) could not start.
    #[error("starting the host services")]
    Services(#[source] crate::outbound::ServicesError),
    /// The admin plane's runtime could not start.
    #[error("starting the admin runtime")]
    AdminRuntime(#[source] std::io::Error),
    /// Worker processes cannot be started (the executable is not found).
    #[error("setting up worker processes: {0}")]
    Workers(String),
    /// The app's threads could not start.
    #[error("starting the app's threads")]
    AppThreads(#[source] std::io::Error),
}

/// A running server: its addresses, and the way to stop it.
#[derive(Debug)]
pub struct Server {
    host: Arc<Host>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    drain: Duration,
    workers: Arc<Workers>,
    /// What serves the app's requests (also on a worker's channel), and its `[[route]]`s'
    /// calls (which a worker runs for the front).
    router: axum::Router,
    calls: Arc<app::RouteCalls>,
    /// In a worker: what serves the client connections its front gives it.
    links: crate::worker::Links,
    app: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    _watch: Option<crate::watch::Watch>,
    /// The app's threads (connections and worker channels run on them); stopped when the last
    /// user lets go.
    _shards: Arc<Shards>,
    /// Declared last: stopped after everything that runs on it.
    _admin_runtime: AdminRuntime,
}

/// What plugins' async exports wait on: tokio's timer and blocking pool (created when first
/// polled, so on the runtime that polls them). `graft serve` installs it; so can any embedder
/// of graft-host on tokio (`graft_host::set_async_services`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioServices;

impl graft_host::AsyncServices for TokioServices {
    fn sleep(&self, duration: Duration) -> graft_host::BoxFuture {
        Box::pin(async move { tokio::time::sleep(duration).await })
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send>) -> graft_host::BoxFuture {
        Box::pin(async move {
            if let Err(error) = tokio::task::spawn_blocking(work).await {
                tracing::error!(%error, "a plugin's blocking work did not complete");
            }
        })
    }
}

/// The admin plane's runtime: one worker thread and a small blocking pool of its own. Shut
/// down in the background when dropped, so dropping it inside async code is fine.
#[derive(Debug)]
struct AdminRuntime(Option<tokio::runtime::Runtime>);

impl AdminRuntime {
    fn start() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(16)
            .thread_name("graft-admin")
            .enable_all()
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for AdminRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Provides what `graft serve` offers plugins as contracts: the outbound HTTP client
/// (`graft.http.fetch@1`). `graft check` provides the same, so a release that imports it checks
/// as it will deploy.
///
/// # Errors
///
/// When the client cannot start.
pub fn provide_services(
    builder: graft_host::HostBuilder,
    http_client: &crate::outbound::HttpClientConfig,
) -> Result<graft_host::HostBuilder, crate::outbound::ServicesError> {
    Arc::new(Outbound::new(http_client.clone())?).provide(builder)
}

/// Binds a listener on the runtime entered now (as `TcpListener::bind` does: address reuse, a
/// backlog of 1024 connections).
/// The limits of the app's and the admin plane's connections.
struct Limits {
    app: ConnLimits,
    admin: ConnLimits,
}

fn listen_limits(config: &ServeConfig) -> Limits {
    let app = ConnLimits {
        max_connections: config.max_connections,
        evict_idle_at_cap: false,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        body_timeout: Duration::from_millis(config.body_timeout_ms),
    };
    let admin = ConnLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        evict_idle_at_cap: true,
        ..app
    };
    Limits { app, admin }
}

fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bound = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    };
    bound().map_err(|source| ServeError::Bind { addr, source })
}

impl Server {
    /// Starts the host (restoring the last live release, or deploying the configured one) and
    /// both listeners.
    ///
    /// # Errors
    ///
    /// [`ServeError`] if the host, the initial release or a listener fails.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        if config.data_dir.as_os_str().is_empty() {
            return Err(ServeError::NoDataDir);
        }
        let mut builder = Host::builder(&config.data_dir).table_defaults(config.table_defaults);
        for (contract, route) in config.routed_exports() {
            builder = builder.require_export(contract, route);
        }
        for route in &config.routes {
            let by = format!(
                "graft.toml [[route]] {} {}",
                route.method.to_ascii_uppercase(),
                route.path
            );
            builder = builder.reserve_route("*", &route.path, by);
        }
        builder = provide_services(builder, &config.http_client).map_err(ServeError::Services)?;
        for table in &config.tables {
            let (plugin, name) = table.name.split_once('.').unwrap_or_default();
            builder = builder.table(plugin, name, table.settings(config.table_defaults));
        }
        let host = builder
            .unload_policy(config.unload_policy)
            .history(config.history)
            .init_timeout(Duration::from_millis(config.init_timeout_ms))
            .hook_timeout(Duration::from_millis(config.hook_timeout_ms))
            .migration_drain(Duration::from_millis(config.migration_drain_ms))
            .limits(config.limits)
            .trusted_keys(config.trusted_keys.clone())
            .staging(config.staging)
            .fresh_state(config.fresh_state)
            .build()
            .map_err(|source| ServeError::Host {
                dir: config.data_dir.clone(),
                source,
            })?;
        let host = Arc::new(host);
        // Plugins' async exports wait on this runtime (once per process; a second server in
        // the same process finds them installed).
        graft_host::set_async_services(Arc::new(TokioServices));
        // The last release that went live wins over the configured one: a restart (even after
        // SIGKILL mid-deploy) comes back on what was serving.
        let (h, release) = (Arc::clone(&host), config.release.clone());
        tokio::task::spawn_blocking(move || initial_release(&h, release))
            .await
            .expect("the initial deploy does not panic")?;
        remove_uploads(&config.data_dir.join("uploads"));
        let metrics = match config.headless {
            true => Metrics::for_worker(),
            false => Metrics::new(),
        };
        // A worker has no listener: its channel's threads are started per connection.
        let shards = Arc::new(if config.headless {
            Shards::none()
        } else {
            let threads = match config.app_threads {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                n => n,
            };
            Shards::start(threads, config.pin_app_threads).map_err(ServeError::AppThreads)?
        });
        let inline_budget = Duration::from_micros(config.inline_budget_us);
        let rollouts = Rollouts::recorded(
            Arc::clone(&host),
            config.rollout.clone(),
            config.data_dir.join(ROLLOUT_RECORD),
        );
        let workers = Workers::new(
            config.isolation,
            config.workers.clone(),
            &config.data_dir,
            crate::worker::Spec::of(&config),
            Arc::clone(&host),
            Arc::clone(&rollouts),
            Arc::clone(&metrics),
            tokio::runtime::Handle::current(),
            Arc::clone(&shards),
        )
        .map_err(ServeError::Workers)?;
        // Under `isolation = "all"` the restored release's worker serves before the server
        // does: one that cannot start is a start that fails, not a server answering 502.
        let (w, current) = (Arc::clone(&workers), host.current());
        tokio::task::spawn_blocking(move || {
            w.start(&current, crate::rollout::Route::Stable).map(drop)
        })
        .await
        .expect("starting a worker does not panic")
        .map_err(ServeError::Workers)?;
        let deployer = Arc::new(Deployer {
            host: Arc::clone(&host),
            rollouts: Arc::clone(&rollouts),
            metrics: Arc::clone(&metrics),
            workers: Arc::clone(&workers),
        });
        let plugin_routes = Arc::new(routes::PluginRoutes {
            host: Arc::clone(&host),
            rollouts: Arc::clone(&rollouts),
            metrics: Arc::clone(&metrics),
            workers: Arc::clone(&workers),
            deadline: Duration::from_millis(config.route_timeout_ms),
        });
        let (app, calls) = app::router(
            &host,
            &metrics,
            &rollouts,
            &workers,
            &config.routes,
            inline_budget,
            axum::routing::any(routes::serve).with_state(Arc::clone(&plugin_routes)),
        )
        .map_err(ServeError::Route)?;
        let direct = routes::direct(plugin_routes, &config.routes).map_err(ServeError::Route)?;
        let limits = listen_limits(&config);
        let admin = admin::router(
            admin::Admin {
                host: Arc::clone(&host),
                workers: Arc::clone(&workers),
                metrics,
                rollouts: Arc::clone(&rollouts),
                deployer: Arc::clone(&deployer),
                uploads: config.data_dir.join("uploads"),
                bundle_limits: config.admin.bundle_limits(),
                app_threads: shards.describe(),
            },
            config.admin.token.clone(),
        );
        // The admin plane runs on a runtime of its own (its own worker thread and blocking
        // pool), so no load on the app, however slow its plugin calls, delays status, metrics,
        // deploys or rollbacks.
        let admin_runtime = AdminRuntime::start().map_err(ServeError::AdminRuntime)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let router = app.clone();
        let links = given::links(
            app.clone(),
            Arc::clone(&direct),
            limits.app,
            Duration::from_millis(config.workers.grace_ms),
            stopped.clone(),
        );
        let (app, admin, addr, admin_addr) = if config.headless {
            // A worker: its front reaches it through its channel only, and nothing else can.
            let (app, admin) = (
                tokio::spawn(async {}),
                admin_runtime.handle().spawn(async {}),
            );
            (app, admin, config.listen, config.admin.listen)
        } else {
            let (app_listener, addr) = bind(config.listen)?;
            let (admin_listener, admin_addr) = {
                let _in_admin = admin_runtime.handle().enter();
                bind(config.admin.listen)?
            };
            let app = tokio::spawn(listen::serve(
                app_listener,
                Arc::clone(&shards),
                listen::App {
                    router: app,
                    direct: Some(direct),
                    // Stamped while a rollout is under way: it counts latency from arrival.
                    stamps: Some(Arc::new(move || rollouts.under_way())),
                    elsewhere: workers.elsewhere(),
                },
                limits.app,
                stopped.clone(),
            ));
            let admin = admin_runtime.handle().spawn(listen::serve(
                admin_listener,
                Arc::new(Shards::none()),
                listen::App {
                    router: admin,
                    direct: None,
                    stamps: None,
                    elsewhere: None,
                },
                limits.admin,
                stopped,
            ));
            (app, admin, addr, admin_addr)
        };
        admin_runtime
            .handle()
            .spawn(Arc::clone(&workers).sweep_until(stop.subscribe()));
        if config.state_save_interval_ms > 0 {
            let every = Duration::from_millis(config.state_save_interval_ms);
            let saving = save_state_every(Arc::clone(&host), every, stop.subscribe());
            admin_runtime.handle().spawn(saving);
        }
        let watch = match &config.watch {
            Some(path) => Some(crate::watch::watch(
                path.clone(),
                WATCH_SETTLE,
                move |dir| {
                    deployer
                        .deploy(dir, &RolloutOptions::default(), &|| false)
                        .map(|response| response.report)
                        .map_err(|error| error.message)
                },
            )?),
            None => None,
        };
        tracing::info!(%addr, %admin_addr, generation = host.pin().id(),
            app_threads = shards.len(), pinned = shards.pinned(), "serving");
        Ok(Self {
            host,
            addr,
            admin_addr,
            drain: Duration::from_millis(config.drain_timeout_ms),
            workers,
            router,
            calls: Arc::new(calls),
            links,
            app,
            admin,
            stop,
            _watch: watch,
            _shards: shards,
            _admin_runtime: admin_runtime,
        })
    }

    /// The service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The router that serves the app's requests.
    pub(crate) fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// The `[[route]]`s' calls, for the requests a front forwards to this worker.
    pub(crate) fn calls(&self) -> Arc<app::RouteCalls> {
        Arc::clone(&self.calls)
    }

    /// What serves the client connections a front gives this worker.
    pub(crate) fn links(&self) -> crate::worker::Links {
        self.links.clone()
    }

    /// The host behind the server.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Runs until `signal` completes, then stops as [`Server::shutdown`] does.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Stopped {
        signal.await;
        self.shutdown().await
    }

    /// Stops accepting, lets in-flight requests finish (at most the drain timeout), then saves
    /// the plugin state that asks for it, whatever is still in flight (a save never waits for
    /// a slow call: see [`Host::save_state`]).
    pub async fn shutdown(self) -> Stopped {
        tracing::info!(
            drain_timeout_ms = u64::try_from(self.drain.as_millis()).unwrap_or(u64::MAX),
            "shutting down: draining"
        );
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(self.drain, async {
            let _ = self.app.await;
            let _ = self.admin.await;
        })
        .await
        .is_ok();
        self.workers.stop_all();
        let abandoned = self.host.in_flight();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!(
                abandoned,
                "drain timeout: requests still in flight were abandoned"
            );
        }
        let saved = save_state(Arc::clone(&self.host)).await;
        Stopped {
            drained,
            abandoned,
            saved,
        }
    }
}

/// How a server stopped.
#[derive(Debug)]
#[must_use]
pub struct Stopped {
    /// Whether every request finished within the drain timeout.
    pub drained: bool,
    /// Calls still in flight when the state was saved (those the drain timeout abandoned).
    pub abandoned: usize,
    /// Whether the plugin state that asks to be saved was saved (or the error, with its
    /// causes); the previous save stays when it was not.
    pub saved: Result<(), String>,
}

impl Stopped {
    /// Whether it stopped cleanly: drained, and saved.
    pub fn is_clean(&self) -> bool {
        self.drained && self.saved.is_ok()
    }
}

/// What a starting server serves first: the last live release restored (falling back through
/// the history, see [`Host::restore`]), else the configured release.
fn initial_release(host: &Host, release: Option<PathBuf>) -> Result<(), ServeError> {
    let restore = match host.restore() {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => None,
        Err(error) if error.is_saved_state() => return Err(ServeError::SavedState(error)),
        Err(error) => Some(error),
    };
    let Some(release) = release else {
        return restore.map_or(Ok(()), |error| Err(ServeError::Restore(error)));
    };
    if let Some(error) = &restore {
        tracing::error!(
            error = %DisplayChain(error),
            release = %release.display(),
            "restoring: no recorded release deploys; falling back to the configured release"
        );
    }
    match (host.deploy(&release), restore) {
        (Ok(_), _) => Ok(()),
        (Err(deploy), Some(restore)) => Err(ServeError::RestoreAndDeploy {
            restore: DisplayChain(&restore).to_string(),
            deploy: Box::new(deploy),
        }),
        (Err(deploy), None) => Err(ServeError::Deploy(deploy)),
    }
}

/// Removes what uploads a previous run left (a server killed while it unpacked one).
fn remove_uploads(uploads: &Path) {
    let Ok(entries) = std::fs::read_dir(uploads) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(UPLOAD_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed an upload left by an earlier run")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove a leftover upload")
            }
        }
    }
}

/// Saves the plugin state that asks for it; a failure is logged and returned (the previous
/// save stays).
async fn save_state(host: Arc<Host>) -> Result<(), String> {
    save(host, Host::save_state).await
}

/// Runs a save on the blocking pool; a failure is logged and returned.
async fn save(
    host: Arc<Host>,
    how: fn(&Host) -> Result<graft_host::SavedState, graft_host::SaveStateError>,
) -> Result<(), String> {
    let failed = match tokio::task::spawn_blocking(move || how(&host)).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(error)) => graft_host::DisplayChain(&error).to_string(),
        Err(error) => format!("saving plugin state panicked: {error}"),
    };
    tracing::error!(error = %failed, "saving plugin state failed");
    Err(failed)
}

/// Saves the plugin state every `every` until the server stops.
async fn save_state_every(
    host: Arc<Host>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is now
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                // State and the interval tables (the others are saved when the server stops). A
                // failure is logged; the previous save stays and the next tick tries again.
                let _ = save(Arc::clone(&host), Host::save_periodic).await;
            }
            // The sender only ever sends `true` (stop), or is dropped.
            _ = stop.changed() => return,
        }
    }
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
