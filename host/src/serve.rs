//! `graft serve`: HTTP routes mapped to plugin exports, and the admin API.
//!
//! Every HTTP request takes an owned pin on the current generation when it starts and runs its
//! export (and every import call the export makes) in that generation, on tokio's blocking pool
//! (plugin calls are synchronous). The response carries `x-graft-generation`. A plugin error or
//! panic becomes a short JSON error (400 for undecodable input, 500 otherwise); the server lives
//! on. On shutdown the listeners stop accepting and in-flight requests finish, bounded by the
//! drain timeout.
//!
//! The admin API listens on its own address, loopback by default; a bearer token is optional on
//! loopback and required on any other address:
//!
//! - `GET /status`: [`Host::status`] as JSON.
//! - `POST /deploy` with `{"dir": "/path/to/release"}` (a directory on the server), or with a
//!   tar bundle of the release as the body (`Content-Type: application/x-tar`; see
//!   [`release::pack_bundle`](crate::release::pack_bundle)): [`Host::deploy`]; 200 with the
//!   report, 422 with `{"error", "step", "plugin", "file"}`, 400 for a bundle that does not unpack.
//! - `POST /rollback`: [`Host::rollback`], answered the same way.
//! - `GET /metrics`: Prometheus text (see the `metrics` module for what it holds).

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, post, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::error::{CallError, DeployError};
use crate::metrics::Metrics;
use crate::rollout::{RolloutConfig, RolloutError, Rollouts, Route as Side};
use crate::{DeployReport, DisplayChain, ErrorKind, Export, Host, UnloadPolicy};

/// How long file events must stop before the watcher reads a release.
const WATCH_SETTLE: Duration = Duration::from_millis(100);

/// The response header naming the generation that served a request.
pub const GENERATION_HEADER: &str = "x-graft-generation";

/// `graft.toml`: what `graft serve` runs. Relative paths are relative to the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Where the service listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where graft keeps staged plugin copies.
    pub data_dir: PathBuf,
    /// A release to deploy at start, unless the data directory records a live release (which
    /// is restored instead).
    #[serde(default)]
    pub release: Option<PathBuf>,
    /// A release directory (or a symlink to one) to watch: what appears there is deployed
    /// (see [`watch`](crate::watch)).
    #[serde(default)]
    pub watch: Option<PathBuf>,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
    /// What happens to libraries no generation uses.
    #[serde(default)]
    pub unload_policy: UnloadPolicy,
    /// Releases kept for rollback.
    #[serde(default = "default_history")]
    pub history: usize,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Staged rollouts: the default plan, the sticky key, the analysis thresholds.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// HTTP routes to exports.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

/// The environment variable that gives the admin token when `graft.toml` sets none (so that a
/// secret need not be written into the file).
pub const ADMIN_TOKEN_ENV: &str = "GRAFT_ADMIN_TOKEN";

/// The admin API's address and token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// Where the admin API listens (loopback by default).
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
    /// A bearer token; required when `listen` is not a loopback address. When the file sets
    /// none, [`ADMIN_TOKEN_ENV`] is read.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin(),
            token: None,
        }
    }
}

/// One HTTP route: a method and path, served by an export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Route {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path (axum syntax).
    pub path: String,
    /// The export contract, `name@N`. Its input is the request body (JSON; `null` when empty).
    pub export: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_drain_ms() -> u64 {
    10_000
}
fn default_history() -> usize {
    5
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The config file could not be read.
    #[error("reading {}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config is malformed or invalid.
    #[error("invalid config {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The host could not start.
    #[error("starting the host in {}", dir.display())]
    Host {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initial release was rejected.
    #[error("deploying the initial release")]
    Deploy(#[source] DeployError),
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
}

impl ServeConfig {
    /// Reads `graft.toml`, resolving relative paths against its directory.
    ///
    /// # Errors
    ///
    /// [`ServeError::ReadConfig`] or [`ServeError::Config`].
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| ServeError::Config {
            path: path.to_owned(),
            reason,
        };
        let mut config: Self =
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.release = config.release.map(|r| base.join(r));
        config.watch = config.watch.map(|w| base.join(w));
        if config.admin.token.is_none() {
            config.admin.token = std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty());
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            return Err(format!(
                "the admin API listens on {}, which is not loopback: set admin.token",
                self.admin.listen
            ));
        }
        for route in &self.routes {
            method_filter(&route.method)?;
            route
                .export
                .parse::<crate::link::Contract>()
                .map_err(|e| e.to_string())?;
            if !route.path.starts_with('/') {
                return Err(format!("route path {:?} must start with /", route.path));
            }
        }
        Ok(())
    }
}

fn method_filter(method: &str) -> Result<MethodFilter, String> {
    let method: Method = method
        .parse()
        .map_err(|_| format!("unknown HTTP method {method:?}"))?;
    MethodFilter::try_from(method.clone()).map_err(|_| format!("unsupported HTTP method {method}"))
}

/// A running server: its addresses, and the way to stop it.
#[derive(Debug)]
pub struct Server {
    host: Arc<Host>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    drain: Duration,
    app: tokio::task::JoinHandle<std::io::Result<()>>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    _watch: Option<crate::watch::Watch>,
}

impl Server {
    /// Starts the host (deploying the configured release) and both listeners.
    ///
    /// # Errors
    ///
    /// [`ServeError`] if the host, the initial release or a listener fails.
    pub async fn start(config: ServeConfig) -> Result<Self, ServeError> {
        let host = Host::builder(&config.data_dir)
            .unload_policy(config.unload_policy)
            .history(config.history)
            .build()
            .map_err(|source| ServeError::Host {
                dir: config.data_dir.clone(),
                source,
            })?;
        let host = Arc::new(host);
        // The last release that went live wins over the configured one: a restart (even after
        // SIGKILL mid-deploy) comes back on what was serving.
        let (h, release) = (Arc::clone(&host), config.release.clone());
        tokio::task::spawn_blocking(move || match h.restore()? {
            Some(report) => Ok(Some(report)),
            None => release.map(|r| h.deploy(r)).transpose(),
        })
        .await
        .expect("deploy does not panic")
        .map_err(ServeError::Deploy)?;
        let metrics = Metrics::new();
        let rollouts = Rollouts::new(Arc::clone(&host), config.rollout.clone());
        let app = app_router(&host, &metrics, &rollouts, &config.routes).map_err(|reason| {
            ServeError::Config {
                path: PathBuf::from("graft.toml"),
                reason,
            }
        })?;
        let uploads = config.data_dir.join("uploads");
        let admin = admin_router(
            Admin {
                host: Arc::clone(&host),
                metrics,
                rollouts,
                uploads,
            },
            config.admin.token.clone(),
        );
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let (app_listener, admin_listener) =
            (bind(config.listen).await?, bind(config.admin.listen).await?);
        let addr = app_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| ServeError::Bind {
                addr: config.admin.listen,
                source,
            })?;

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let app = tokio::spawn(
            axum::serve(app_listener, app)
                .with_graceful_shutdown(until_stopped(stopped.clone()))
                .into_future(),
        );
        let admin = tokio::spawn(
            axum::serve(admin_listener, admin)
                .with_graceful_shutdown(until_stopped(stopped))
                .into_future(),
        );
        let watch = match &config.watch {
            Some(path) => Some(crate::watch::watch(
                Arc::clone(&host),
                path.clone(),
                WATCH_SETTLE,
            )?),
            None => None,
        };
        tracing::info!(%addr, %admin_addr, generation = host.pin().id(), "serving");
        Ok(Self {
            host,
            addr,
            admin_addr,
            drain: Duration::from_millis(config.drain_timeout_ms),
            app,
            admin,
            stop,
            _watch: watch,
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

    /// The host behind the server.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Runs until `signal` completes, then stops accepting and lets in-flight requests finish
    /// (at most the drain timeout). Returns whether everything drained in time.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> bool {
        signal.await;
        self.shutdown().await
    }

    /// Stops accepting, lets in-flight requests finish (at most the drain timeout). Returns
    /// whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        tracing::info!(
            drain_timeout_ms = self.drain.as_millis() as u64,
            "shutting down: draining"
        );
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(self.drain, async {
            let _ = self.app.await;
            let _ = self.admin.await;
        })
        .await
        .is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            tracing::warn!("drain timeout: requests still in flight were abandoned");
        }
        drained
    }
}

/// The request header that forces a side of a rollout: `stable` or `canary`.
pub const ROUTE_HEADER: &str = "x-graft-route";

/// What one route's requests share: cloned (one `Arc`) per request, nothing else is.
struct RouteState {
    rollouts: Arc<Rollouts>,
    metrics: Arc<Metrics>,
    export: Export,
}

fn app_router(
    host: &Arc<Host>,
    metrics: &Arc<Metrics>,
    rollouts: &Arc<Rollouts>,
    routes: &[Route],
) -> Result<Router, String> {
    let mut by_path: BTreeMap<&str, MethodRouter> = BTreeMap::new();
    for route in routes {
        let state = Arc::new(RouteState {
            rollouts: Arc::clone(rollouts),
            metrics: Arc::clone(metrics),
            export: host.export(&route.export).map_err(|e| e.to_string())?,
        });
        let handler = on(method_filter(&route.method)?, call_export).with_state(state);
        let merged = match by_path.remove(route.path.as_str()) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(&route.path, merged);
    }
    Ok(by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        }))
}

/// One HTTP request: route (stable or canary) and pin, call on the blocking pool, answer with
/// the generation that served it.
async fn call_export(
    State(route): State<Arc<RouteState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    // Without a rollout under way every request goes to stable: no header is looked at.
    let (key, force) = if route.rollouts.under_way() {
        let config = route.rollouts.config();
        let force = headers
            .get(ROUTE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Side>().ok());
        let key = sticky_key(
            &headers,
            config.sticky_header.as_deref(),
            config.sticky_cookie.as_deref(),
        );
        (key, force)
    } else {
        (None, None)
    };
    let (pin, side) = route.rollouts.route(key, force);
    let generation = pin.id();
    let input = if body.is_empty() {
        Bytes::from_static(b"null")
    } else {
        body
    };
    let call = Arc::clone(&route);
    let result = tokio::task::spawn_blocking(move || pin.call_raw(&call.export, &input)).await;
    let elapsed = started.elapsed();
    route
        .metrics
        .request(generation, matches!(result, Ok(Ok(_))), elapsed);
    let mut response = match result {
        Ok(Ok(output)) => ([(header::CONTENT_TYPE, "application/json")], output).into_response(),
        Ok(Err(error)) => {
            let status = match error.kind() {
                Some(ErrorKind::BAD_INPUT) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::debug!(generation, error = %error, "request failed");
            (status, Json(CallFailure::from(&error))).into_response()
        }
        Err(join) => {
            let body = CallFailure {
                error: "internal".into(),
                message: join.to_string(),
            };
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    };
    route
        .rollouts
        .record(generation, response.status().is_server_error(), elapsed);
    let headers = response.headers_mut();
    headers.insert(GENERATION_HEADER, HeaderValue::from(generation));
    if side == Side::Canary {
        headers.insert(ROUTE_HEADER, HeaderValue::from_static("canary"));
    }
    response
}

/// The sticky key of a request: the configured header's value, or the configured cookie's.
fn sticky_key<'a>(
    headers: &'a axum::http::HeaderMap,
    header_name: Option<&str>,
    cookie_name: Option<&str>,
) -> Option<&'a [u8]> {
    if let Some(value) = header_name.and_then(|name| headers.get(name)) {
        return Some(value.as_bytes());
    }
    let cookie_name = cookie_name?;
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie_name)
        .map(|(_, value)| value.as_bytes())
}

/// The JSON body of a failed request.
#[derive(Debug, Serialize, Deserialize)]
struct CallFailure {
    error: String,
    message: String,
}

impl From<&CallError> for CallFailure {
    fn from(error: &CallError) -> Self {
        let kind = match error.kind() {
            Some(kind) => kind.to_string(),
            None if matches!(error, CallError::NotExported { .. }) => "not exported".into(),
            None => "codec".into(),
        };
        Self {
            error: kind,
            message: error.to_string(),
        }
    }
}

/// What the admin handlers share.
#[derive(Clone)]
struct Admin {
    host: Arc<Host>,
    metrics: Arc<Metrics>,
    rollouts: Arc<Rollouts>,
    /// Where uploaded bundles are unpacked, each in a directory of its own, removed after the
    /// deploy (its files were staged by then).
    uploads: PathBuf,
}

/// The largest release bundle the admin API accepts.
const MAX_BUNDLE_BYTES: usize = 512 << 20;

fn admin_router(admin: Admin, token: Option<String>) -> Router {
    let router = Router::new()
        .route("/status", axum::routing::get(status))
        .route("/metrics", axum::routing::get(metrics))
        .route("/deploy", post(deploy))
        .route("/rollback", post(rollback))
        .route("/rollout", axum::routing::get(rollout_status))
        .route("/rollout/{action}", post(rollout_action))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BUNDLE_BYTES))
        .with_state(admin);
    match token {
        Some(token) => router.layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => router,
    }
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {token}");
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given == Some(expected.as_str()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "missing or wrong bearer token" })),
        )
            .into_response()
    }
}

async fn status(State(Admin { host, rollouts, .. }): State<Admin>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let mut status = serde_json::to_value(host.status()).unwrap_or_default();
        status["rollout"] = serde_json::to_value(rollouts.status()).unwrap_or_default();
        status
    })
    .await;
    match result {
        Ok(status) => Json(status).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The body of `POST /deploy` (for a bundle, `rollout`, `canary` and `plan` are query
/// parameters).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeployRequest {
    /// A release directory on the server's filesystem.
    pub dir: PathBuf,
    /// Start a staged rollout with the release as the canary (implied by `canary` or `plan`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollout: bool,
    /// The canary's first weight (percent) instead of the plan's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// The rollout's plan (`5:30s,25:30s,100`) instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The query of `POST /deploy` with a bundle: what [`DeployRequest`] says besides `dir`.
#[derive(Debug, Default, Deserialize)]
struct BundleParams {
    #[serde(default)]
    rollout: bool,
    canary: Option<u32>,
    plan: Option<String>,
}

async fn rollout_status(State(Admin { rollouts, .. }): State<Admin>) -> Response {
    match rollouts.status() {
        Some(status) => Json(status).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no rollout has run" })),
        )
            .into_response(),
    }
}

async fn rollout_action(
    State(Admin { rollouts, .. }): State<Admin>,
    axum::extract::Path(action): axum::extract::Path<String>,
) -> Response {
    let result = tokio::task::spawn_blocking(move || match action.as_str() {
        "pause" => Some(rollouts.pause()),
        "resume" => Some(rollouts.resume()),
        "promote" => Some(rollouts.promote()),
        "abort" => Some(rollouts.abort()),
        _ => None,
    })
    .await;
    match result {
        Ok(Some(Ok(status))) => Json(status).into_response(),
        Ok(Some(Err(error))) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": DisplayChain(&error).to_string() })),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "rollout actions: pause, resume, promote, abort" })),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(
    State(Admin {
        host,
        metrics,
        rollouts,
        ..
    }): State<Admin>,
) -> Response {
    match tokio::task::spawn_blocking(move || metrics.render(&host, rollouts.status().as_ref()))
        .await
    {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn deploy(
    State(admin): State<Admin>,
    params: Query<BundleParams>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let is_bundle = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/x-tar"));
    if !is_bundle {
        let request: DeployRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return bad_request(format!("expected {{\"dir\": PATH}} or a tar bundle: {e}"))
            }
        };
        let result = tokio::task::spawn_blocking(move || deploy_dir(&admin, &request)).await;
        return result.unwrap_or_else(|e| internal(&e));
    }
    let Query(params) = params;
    let mut request = DeployRequest {
        dir: PathBuf::new(),
        rollout: params.rollout,
        canary: params.canary,
        plan: params.plan,
    };
    let result = tokio::task::spawn_blocking(move || {
        static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request.dir = admin
            .uploads
            .join(format!("upload-{}-{n}", std::process::id()));
        let response = match crate::release::unpack_bundle(&body, &request.dir) {
            Ok(()) => deploy_dir(&admin, &request),
            Err(error) => bad_request(DisplayChain(&error).to_string()),
        };
        let _ = std::fs::remove_dir_all(&request.dir);
        response
    })
    .await;
    result.unwrap_or_else(|e| internal(&e))
}

/// Deploys a release directory, or starts a rollout with it as the canary.
fn deploy_dir(admin: &Admin, request: &DeployRequest) -> Response {
    if !request.rollout && request.canary.is_none() && request.plan.is_none() {
        return deploy_response(&admin.metrics, Ok(admin.host.deploy(&request.dir)));
    }
    let plan = match request.plan.as_deref().map(str::parse).transpose() {
        Ok(plan) => plan,
        Err(reason) => return bad_request(format!("invalid rollout plan: {reason}")),
    };
    match admin.rollouts.start(&request.dir, request.canary, plan) {
        Ok((report, rollout)) => {
            admin.metrics.deploy(Some(report.go_live));
            let mut body = serde_json::to_value(&report).unwrap_or_default();
            body["rollout"] = serde_json::to_value(rollout).unwrap_or_default();
            Json(body).into_response()
        }
        Err(RolloutError::Deploy(error)) => deploy_response(&admin.metrics, Ok(Err(error))),
        Err(error) => bad_request(DisplayChain(&error).to_string()),
    }
}

fn internal(error: &tokio::task::JoinError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
}

fn bad_request(error: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

async fn rollback(State(Admin { host, metrics, .. }): State<Admin>) -> Response {
    let result = tokio::task::spawn_blocking(move || host.rollback()).await;
    deploy_response(&metrics, result)
}

/// The body of a rejected deploy or rollback.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployRejection {
    /// The whole error chain, one line.
    pub error: String,
    /// The step that failed.
    pub step: String,
    /// The plugin concerned.
    pub plugin: Option<String>,
    /// The file concerned.
    pub file: Option<PathBuf>,
}

fn deploy_response(
    metrics: &Metrics,
    result: Result<Result<DeployReport, DeployError>, tokio::task::JoinError>,
) -> Response {
    if let Ok(result) = &result {
        metrics.deploy(result.as_ref().ok().map(|r| r.go_live));
    }
    match result {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(error)) => {
            let body = DeployRejection {
                error: DisplayChain(&error).to_string(),
                step: error.step().to_string(),
                plugin: error.plugin().map(str::to_owned),
                file: error.file().map(Path::to_owned),
            };
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
