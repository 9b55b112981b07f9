//! The admin API, on a listener of its own (see [`api`](crate::api) for the wire types).
//!
//! Status, metrics and the rollout's state are read from snapshots taken under short locks that
//! no deploy holds while it works: they answer whatever a deploy, a plugin's initialiser or a
//! rollout is doing. Deploys and rollbacks run on the blocking pool through the
//! [`Deployer`]. A bearer token is optional on loopback and required on any other address.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest as _, MatchedPath, Path, Query, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt as _;
use graft_host::bounded::{Bounded, BoundedPath};
use graft_host::{DisplayChain, Host, RollbackTo};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::Instrument as _;

use super::app::{method_not_allowed, not_found, rejected_body};
use super::deployer::Deployer;
use super::ui;
use crate::api::{
    ApiError, DeployRequest, DeployResponse, ErrorCode, RollbackRequest, RolloutAction,
    RolloutOptions, StatusResponse, MAX_DIR_BYTES,
};
use crate::bundle::BundleLimits;
use crate::metrics::Metrics;
use crate::rollout::{RolloutError, RolloutStatus, Rollouts};

/// The largest JSON request body the admin API accepts (bundles have limits of their own): far
/// past any real deploy request, small enough to read whole before refusing one, so that its
/// client reads the refusal rather than a connection reset.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// What the admin handlers share.
#[derive(Clone)]
pub(super) struct Admin {
    pub(super) host: Arc<Host>,
    pub(super) workers: Arc<crate::worker::Workers>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) rollouts: Arc<Rollouts>,
    pub(super) deployer: Arc<Deployer>,
    /// Where uploaded bundles are unpacked, each in a directory of its own, removed after the
    /// deploy (its files were staged by then).
    pub(super) uploads: PathBuf,
    /// What an uploaded bundle may unpack to.
    pub(super) bundle_limits: BundleLimits,
    /// What `/status` says of the app's threads (fixed at start).
    pub(super) app_threads: crate::api::AppThreads,
}

pub(super) fn router(admin: Admin, token: Option<String>) -> Router {
    let router = Router::new()
        .route("/status", get(status).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .route("/deploy", post(deploy).fallback(method_not_allowed))
        .route("/rollback", post(rollback).fallback(method_not_allowed))
        .route("/rollout", get(rollout_status).fallback(method_not_allowed))
        .route("/ui", get(super::ui::page).fallback(method_not_allowed))
        .route(
            "/rollout/{action}",
            post(rollout_action).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(admin);
    let router = match token {
        Some(token) => router.layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => router,
    };
    router.layer(middleware::from_fn(trace))
}

/// One span per admin request: method and route.
async fn trace(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "admin",
        method = %request.method(),
        route = %Bounded(&route)
    );
    next.run(request).instrument(span).await
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    // Compared in constant time: how long a refusal takes says nothing of the token.
    if ui::credential(&request, &token).is_some() {
        return next.run(request).await;
    }
    if let Some(signed_in) = ui::sign_in(&request, &token) {
        return signed_in;
    }
    let mut refused = if request.uri().path() == "/ui" {
        ui::sign_in_page()
    } else {
        ApiError::new(ErrorCode::Unauthorized, "missing or wrong bearer token").into_response()
    };
    // And the connection is closed: one without the token holds no admin slot.
    refused.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    refused
}

async fn status(State(admin): State<Admin>) -> Json<StatusResponse> {
    Json(StatusResponse {
        host: admin.host.status(),
        rollout: admin.rollouts.status(),
        workers: admin.workers.status(),
        app_threads: admin.app_threads.clone(),
    })
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let text = admin
        .metrics
        .render(&admin.host, admin.rollouts.status().as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// What a deploy's body is, by its `content-type` (compared as RFC 9110 says: the media type
/// case-insensitively, parameters ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `application/json`, or no content type.
    Json,
    /// `application/x-tar`.
    Bundle,
}

impl Body {
    fn of(request: &Request) -> Result<Self, ApiError> {
        let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
            return Ok(Self::Json);
        };
        let essence = value
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Ok(Self::Json)
        } else if essence.eq_ignore_ascii_case("application/x-tar") {
            Ok(Self::Bundle)
        } else {
            let message = format!(
                "a deploy is application/json or application/x-tar, not {:?}",
                Bounded(essence).to_string()
            );
            Err(ApiError::new(ErrorCode::UnsupportedMediaType, message))
        }
    }
}

/// `POST /deploy`: a JSON [`DeployRequest`], or a tar bundle with [`RolloutOptions`] as the
/// query. A bundle is unpacked as it arrives (never held in memory whole), within the
/// configured [`BundleLimits`]. A JSON deploy takes its options in the body and no query (one
/// would be ignored: `?canary=5` must not go live at 100%), and only as a JSON object.
async fn deploy(
    State(admin): State<Admin>,
    query: Result<Query<RolloutOptions>, QueryRejection>,
    request: Request,
) -> Result<Json<DeployResponse>, Response> {
    let body = match Body::of(&request) {
        Ok(body) => body,
        Err(refused) => {
            drain(request.into_body(), admin.bundle_limits.max_bytes).await;
            return Err(refused.into_response());
        }
    };
    let (source, options) = if body == Body::Bundle {
        let options = match query {
            Ok(Query(options)) => options,
            Err(rejection) => {
                let message = format!("invalid deploy query: {}", rejection.body_text());
                drain(request.into_body(), admin.bundle_limits.max_bytes).await;
                return Err(ApiError::bad_request(message).into_response());
            }
        };
        // Read on the blocking thread that unpacks it, chunk by chunk as it arrives; an error
        // (the client went away, the body timed out) stops the unpacking.
        let stream = request
            .into_body()
            .into_data_stream()
            .map_err(io::Error::other);
        let reader = SyncIoBridge::new(StreamReader::new(stream));
        (Source::Bundle(Box::new(reader)), options)
    } else {
        if let Some(query) = request.uri().query().filter(|q| !q.is_empty()) {
            let message = format!(
                "a JSON deploy takes its options in the body, not the query ({:?}); only a tar \
                 bundle's deploy has a query",
                Bounded(query).to_string()
            );
            return Err(ApiError::bad_request(message).into_response());
        }
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|rejection| rejected_body(&rejection))?;
        let expected =
            "expected {\"dir\": PATH, \"rollout\"?, \"canary\"?, \"plan\"?, \"dry_run\"?} or a tar bundle";
        // serde would take a struct from an array too (`["dir", true]` starting a rollout).
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !object {
            let message = format!("{expected}: the body is not a JSON object");
            return Err(ApiError::bad_request(message).into_response());
        }
        let request: DeployRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("{expected}: {e}")).into_response())?;
        if request.dir.as_os_str().len() > MAX_DIR_BYTES {
            let message = format!(
                "dir {} is longer than the {MAX_DIR_BYTES} bytes a path may have",
                BoundedPath(&request.dir)
            );
            return Err(ApiError::bad_request(message).into_response());
        }
        let options = request.rollout_options();
        (Source::Dir(request.dir), options)
    };
    // Runs on the blocking pool. If this handler is dropped (its client went away) while the
    // release prepares, the deployer sees the channel closed and does not publish.
    let (done, answer) = tokio::sync::oneshot::channel();
    let deployer = Arc::clone(&admin.deployer);
    let (uploads, limits) = (admin.uploads.clone(), admin.bundle_limits);
    tokio::task::spawn_blocking(move || {
        let gone = || done.is_closed();
        let result = match source {
            Source::Dir(dir) => deployer.deploy(&dir, &options, &gone),
            Source::Bundle(bundle) => {
                let upload = Upload {
                    uploads: &uploads,
                    limits,
                };
                upload.deploy(&deployer, bundle, &options, &gone)
            }
        };
        if let Err(Ok(report)) = done.send(result) {
            tracing::warn!(
                generation = report.report.generation,
                release = report.report.release.as_deref().unwrap_or(""),
                "release live; its client went away before the answer"
            );
        }
    });
    match answer.await {
        Ok(result) => result.map(Json).map_err(IntoResponse::into_response),
        Err(_) => {
            Err(ApiError::internal("the deploy task ended without an answer").into_response())
        }
    }
}

/// Reads and drops a request body, up to `limit` bytes: an upload refused before it is read,
/// so that its client reads the answer rather than a connection reset.
async fn drain(body: axum::body::Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
        read = read.saturating_add(chunk.len() as u64);
        if read > limit {
            break;
        }
    }
}

/// Where a deploy's release comes from.
enum Source {
    Dir(PathBuf),
    /// A tar bundle, read as it arrives.
    Bundle(Box<dyn io::Read + Send>),
}

/// Where and within what limits uploads are unpacked.
struct Upload<'a> {
    uploads: &'a std::path::Path,
    limits: BundleLimits,
}

impl Upload<'_> {
    /// Unpacks a bundle into a directory of its own, deploys it, removes the directory.
    fn deploy(
        &self,
        deployer: &Deployer,
        bundle: impl io::Read,
        options: &RolloutOptions,
        gone: &dyn Fn() -> bool,
    ) -> Result<DeployResponse, ApiError> {
        static UPLOADS: AtomicU64 = AtomicU64::new(0);
        let n = UPLOADS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{}-{n}", super::UPLOAD_PREFIX, std::process::id());
        let dir = self.uploads.join(name);
        let mut bundle = bundle;
        let unpacked = crate::bundle::unpack(&mut bundle, &dir, self.limits);
        // What the unpacking left unread (a refused bundle's rest, the archive's end) is read
        // and dropped, up to the size limit, so that the client reads the answer rather than a
        // connection reset in the middle of its upload.
        let _ = io::copy(&mut bundle.take(self.limits.max_bytes), &mut io::sink());
        let result = match unpacked {
            Ok(()) => deployer.deploy(&dir, options, gone),
            Err(error) if error.is_too_large() => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                DisplayChain(&error),
            )),
            Err(error) => Err(ApiError::bad_request(DisplayChain(&error))),
        };
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// `POST /rollback`: to the previous release, or with a JSON [`RollbackRequest`] body, to the
/// earlier release of a generation id or a name.
async fn rollback(
    State(admin): State<Admin>,
    body: Bytes,
) -> Result<Json<DeployResponse>, ApiError> {
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackTo::Previous
    } else {
        serde_json::from_slice::<Option<RollbackRequest>>(&body)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "expected nothing, null or {{\"to\": GENERATION or RELEASE}}: {e}"
                ))
            })?
            .map(|request| request.to)
            .unwrap_or_default()
    };
    let deployer = Arc::clone(&admin.deployer);
    tokio::task::spawn_blocking(move || deployer.rollback(&to))
        .await?
        .map(Json)
}

async fn rollout_status(State(admin): State<Admin>) -> Result<Json<RolloutStatus>, ApiError> {
    admin
        .rollouts
        .status()
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no rollout has run"))
}

async fn rollout_action(
    State(admin): State<Admin>,
    action: Result<Path<RolloutAction>, PathRejection>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let Path(action) = action.map_err(|_| {
        ApiError::new(
            ErrorCode::NotFound,
            "rollout actions: pause, resume, promote, abort",
        )
    })?;
    let rollouts = Arc::clone(&admin.rollouts);
    tokio::task::spawn_blocking(move || match action {
        RolloutAction::Pause => rollouts.pause(),
        RolloutAction::Resume => rollouts.resume(),
        RolloutAction::Promote => rollouts.promote(),
        RolloutAction::Abort => rollouts.abort(),
    })
    .await?
    .map(Json)
    .map_err(|error: RolloutError| ApiError::new(ErrorCode::Conflict, DisplayChain(&error)))
}
