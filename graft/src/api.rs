//! The admin API's wire types, shared by the server, the client, fleet rollouts and the CLI, and
//! [`ApiError`]: the one shape of every error response, admin or app.
//!
//! Requests refuse fields they do not know (a misspelt `"canry": 5` is a 400 that deploys
//! nothing, not a deploy at 100%). Durations are milliseconds (`*_ms` fields).
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `GET /status` | | [`StatusResponse`] |
//! | `POST /deploy` | [`DeployRequest`], or a tar bundle with [`RolloutOptions`] as the query | [`DeployResponse`] |
//! | `POST /rollback` | | [`DeployResponse`] |
//! | `GET /rollout` | | [`RolloutStatus`] |
//! | `POST /rollout/{action}` | [`RolloutAction`] in the path | [`RolloutStatus`] |
//! | `GET /metrics` | | Prometheus text |

use std::fmt;
use std::path::PathBuf;

/// The request and response header with the request's id (the app's requests, and the calls
/// plugins make to the outside).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use graft_host::bounded::{truncate, MAX_MESSAGE};
use graft_host::status::Status;
use graft_host::{CallError, DeployError, DeployReport, DisplayChain, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::rollout::RolloutStatus;

/// The response header naming the generation that served a request.
pub const GENERATION_HEADER: &str = "x-graft-generation";

/// The longest `dir` a deploy request may name, in bytes (Linux's `PATH_MAX`).
pub const MAX_DIR_BYTES: usize = 4096;

/// `POST /deploy` with a JSON body: a release directory on the server's filesystem.
///
/// Its rollout fields are [`RolloutOptions`]' own, written out: serde cannot refuse unknown
/// fields of a struct that flattens another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DeployRequest {
    /// The release directory.
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
    /// This rollout's `min_requests` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// This rollout's `max_error_rate` (0.05 is 5%) instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// This rollout's `max_p99_ratio` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// This rollout's `p99_slack_ms` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_slack_ms: Option<u64>,
    /// Every step short of going live, against what is live, then nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl DeployRequest {
    /// A plain deploy of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }

    /// The same request with these rollout options.
    pub fn with_rollout(mut self, options: RolloutOptions) -> Self {
        self.rollout = options.rollout;
        self.canary = options.canary;
        self.plan = options.plan;
        self.min_requests = options.min_requests;
        self.max_error_rate = options.max_error_rate;
        self.max_p99_ratio = options.max_p99_ratio;
        self.p99_slack_ms = options.p99_slack_ms;
        self.dry_run = options.dry_run;
        self
    }

    /// What it says about a rollout.
    pub fn rollout_options(&self) -> RolloutOptions {
        RolloutOptions {
            rollout: self.rollout,
            canary: self.canary,
            plan: self.plan.clone(),
            min_requests: self.min_requests,
            max_error_rate: self.max_error_rate,
            max_p99_ratio: self.max_p99_ratio,
            p99_slack_ms: self.p99_slack_ms,
            dry_run: self.dry_run,
        }
    }
}

/// Whether and how a deploy starts a staged rollout; the query of `POST /deploy` with a bundle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutOptions {
    /// Start a staged rollout following the server's plan.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollout: bool,
    /// Start at this weight (percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// Follow this plan instead of the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// This rollout's `min_requests` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// This rollout's `max_error_rate` (0.05 is 5%) instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// This rollout's `max_p99_ratio` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// This rollout's `p99_slack_ms` instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_slack_ms: Option<u64>,
    /// Do everything short of going live, against what is live, then nothing
    /// ([`Host::dry_run`](graft_host::Host::dry_run)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl RolloutOptions {
    /// A rollout with these options (`canary` and `plan` each imply one).
    pub fn new(rollout: bool, canary: Option<u32>, plan: Option<String>) -> Self {
        Self {
            rollout,
            canary,
            plan,
            ..Self::default()
        }
    }

    /// The same options with this rollout's own thresholds.
    pub fn with_thresholds(mut self, thresholds: crate::rollout::Thresholds) -> Self {
        self.min_requests = thresholds.min_requests;
        self.max_error_rate = thresholds.max_error_rate;
        self.max_p99_ratio = thresholds.max_p99_ratio;
        self.p99_slack_ms = thresholds.p99_slack_ms;
        self
    }

    /// This rollout's own thresholds.
    pub fn thresholds(&self) -> crate::rollout::Thresholds {
        crate::rollout::Thresholds {
            min_requests: self.min_requests,
            max_error_rate: self.max_error_rate,
            max_p99_ratio: self.max_p99_ratio,
            p99_slack_ms: self.p99_slack_ms,
        }
    }

    /// The same options, as a dry run or not.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Whether a rollout is asked for.
    pub fn wanted(&self) -> bool {
        self.rollout || self.canary.is_some() || self.plan.is_some()
    }
}

/// The body of `POST /rollback`: which earlier release (none: the previous one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RollbackRequest {
    /// A generation id (a number) or a release name (a string): the newest earlier release of
    /// the history that went live as it.
    #[serde(default)]
    pub to: graft_host::RollbackTo,
}

impl RollbackRequest {
    /// A rollback to `to`.
    pub fn new(to: graft_host::RollbackTo) -> Self {
        Self { to }
    }
}

/// What `POST /deploy` and `POST /rollback` answer: the deploy, and the rollout it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeployResponse {
    /// What the deploy did (for a rollout, the canary's generation).
    #[serde(flatten)]
    pub report: DeployReport,
    /// The rollout, when the release went live as a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// A dry run: the release was prepared against what is live, and dropped; nothing changed
    /// (the report says what the deploy would have done).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl From<DeployReport> for DeployResponse {
    fn from(report: DeployReport) -> Self {
        Self {
            report,
            rollout: None,
            dry_run: false,
        }
    }
}

/// What `GET /status` answers: the host's status, and the rollout under way or the last one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusResponse {
    /// Generations, libraries, history, last deploy.
    #[serde(flatten)]
    pub host: Status,
    /// The rollout under way, or the last one.
    #[serde(default)]
    pub rollout: Option<RolloutStatus>,
    /// The generations routed under `isolation`: where each runs (see
    /// [`worker`](crate::worker)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerStatus>,
    /// The threads serving the app's connections (`app_threads`, `pin_app_threads`).
    #[serde(default)]
    pub app_threads: AppThreads,
}

/// The threads serving the app's connections, and the CPU each is pinned to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AppThreads {
    /// How many.
    pub count: usize,
    /// Thread `i`'s CPU at `i`, if they are pinned; empty if not.
    #[serde(default)]
    pub pinned_cpus: Vec<usize>,
}

/// A generation routed under `isolation`, and its worker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The front's generation.
    pub generation: u64,
    /// Its worker's state.
    pub state: WorkerState,
    /// The worker's process id, while one serves.
    pub pid: Option<u32>,
    /// How long the serving worker has run, in milliseconds.
    pub uptime_ms: u64,
    /// Requests forwarded to it and not answered yet.
    pub in_flight: usize,
    /// Client connections it serves itself (`[workers] serve_connections`): their requests do
    /// not cross the front, and are not in `in_flight`.
    #[serde(default)]
    pub connections: usize,
    /// How many times a worker of this generation was started again after a crash.
    pub restarts: u64,
    /// Crashes within the crash window (`workers.crash_window_ms`).
    pub crashes: usize,
    /// Why it is in this state (a crash's signal, a start's failure, state in the front).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a generation routed under `isolation` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Its worker is starting; requests wait for it.
    Starting,
    /// Its worker serves.
    Serving,
    /// Its worker crashed (or was recycled) and a new one is starting.
    Restarting,
    /// Its worker crashed or could not start, and is not started again; requests get 502.
    Failed,
    /// Its worker was stopped: the generation is drained.
    Stopped,
    /// It runs in the front: its plugins hold state.
    InFront,
}

/// What `POST /rollout/{action}` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutAction {
    /// Hold the rollout at its step (a breach still aborts it).
    Pause,
    /// Go on from a pause.
    Resume,
    /// Make the canary the stable release now.
    Promote,
    /// Drop the canary now.
    Abort,
}

impl fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        })
    }
}

/// What kind of error a response is; each has its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed: not JSON, an unknown field, an invalid value (400).
    BadRequest,
    /// The export could not decode the request body as its input (400).
    BadInput,
    /// A bearer token is required and was missing or wrong (401).
    Unauthorized,
    /// No such route or resource, or the plugin found nothing by that name (404).
    NotFound,
    /// The route exists, not for this method (405).
    MethodNotAllowed,
    /// The request conflicts with what is under way, such as a rollout, or with the plugin's
    /// state (409).
    Conflict,
    /// The body is larger than the server accepts (413).
    PayloadTooLarge,
    /// The request body is of a content type the endpoint does not take (415).
    UnsupportedMediaType,
    /// The request body did not arrive within `body_timeout_ms` (408).
    RequestTimeout,
    /// The route is at its concurrency limit (`max_in_flight`); retry later (503).
    Overloaded,
    /// The call ran past the route's deadline (`timeout_ms`); its result was discarded (503).
    DeadlineExceeded,
    /// The release was refused at a step; the previous release keeps serving (422).
    DeployRejected,
    /// The plugin found the request's content invalid (422).
    Invalid,
    /// The plugin cannot serve now; retry later (503).
    Unavailable,
    /// A table the plugin writes is at its limit of entries or bytes; nothing was written
    /// (507).
    TableFull,
    /// The plugin returned an error (500).
    Plugin,
    /// The plugin panicked; the panic was caught at the boundary (500).
    Panic,
    /// The plugin's output could not be encoded (500).
    BadOutput,
    /// A plugin called an import that is not bound (500).
    UnboundImport,
    /// The serving generation does not export the route's contract (500).
    NotExported,
    /// The worker process serving the request's generation failed (crashed) or is not
    /// serving (502).
    WorkerFailed,
    /// Something failed inside the server (500).
    Internal,
    /// A code this client does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::BadInput => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::DeployRejected | Self::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable | Self::Overloaded | Self::DeadlineExceeded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TableFull => StatusCode::INSUFFICIENT_STORAGE,
            Self::WorkerFailed => StatusCode::BAD_GATEWAY,
            Self::Plugin
            | Self::Panic
            | Self::BadOutput
            | Self::UnboundImport
            | Self::NotExported
            | Self::Internal
            | Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Every error response, admin or app: `{"error": CODE, "message": ...}`, plus the step, plugin
/// and file of a refused release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ApiError {
    /// What kind of error.
    pub error: ErrorCode,
    /// What went wrong, in words (at most [`MAX_MESSAGE`] bytes).
    pub message: String,
    /// For a refused release: the step that refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a refused release: the plugin concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// For a refused release: the file concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl ApiError {
    /// An error of this code; the message is truncated to [`MAX_MESSAGE`] bytes.
    pub fn new(error: ErrorCode, message: impl fmt::Display) -> Self {
        Self {
            error,
            message: truncate(&message.to_string(), MAX_MESSAGE).into_owned(),
            step: None,
            plugin: None,
            file: None,
        }
    }

    /// A malformed request.
    pub fn bad_request(message: impl fmt::Display) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A failure inside the server.
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.error.status()
    }
}

impl From<&DeployError> for ApiError {
    fn from(error: &DeployError) -> Self {
        let mut api = Self::new(ErrorCode::DeployRejected, DisplayChain(error));
        api.step = Some(error.step().to_string());
        api.plugin = error.plugin().map(str::to_owned);
        api.file = error
            .file()
            .filter(|f| f.as_os_str().len() <= MAX_DIR_BYTES)
            .map(ToOwned::to_owned);
        api
    }
}

impl From<&CallError> for ApiError {
    /// A plugin's error kind chooses the answer: `not found` 404, `conflict` 409, `invalid`
    /// 422, `unavailable` 503, the route's own input failing to decode 400, anything else 500.
    fn from(error: &CallError) -> Self {
        let code = match error {
            CallError::NotExported { .. } => ErrorCode::NotExported,
            CallError::Plugin { kind, .. } => match *kind {
                ErrorKind::BAD_INPUT => ErrorCode::BadInput,
                ErrorKind::NOT_FOUND => ErrorCode::NotFound,
                ErrorKind::CONFLICT => ErrorCode::Conflict,
                ErrorKind::INVALID => ErrorCode::Invalid,
                ErrorKind::UNAVAILABLE => ErrorCode::Unavailable,
                ErrorKind::TABLE_FULL => ErrorCode::TableFull,
                ErrorKind::PANIC => ErrorCode::Panic,
                ErrorKind::BAD_OUTPUT => ErrorCode::BadOutput,
                ErrorKind::UNBOUND_IMPORT => ErrorCode::UnboundImport,
                ErrorKind::NOT_EXPORTED => ErrorCode::NotExported,
                ErrorKind::INTERNAL => ErrorCode::Internal,
                _ => ErrorCode::Plugin,
            },
            CallError::Decode { .. } => ErrorCode::BadOutput,
            _ => ErrorCode::Internal,
        };
        Self::new(code, DisplayChain(error))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(format!("a server task failed: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_unknown_codes_are_read() {
        let err = serde_json::from_str::<DeployRequest>(r#"{"dir": "v2", "canry": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `canry`"), "{err}");
        let error: ApiError =
            serde_json::from_str(r#"{"error": "from-the-future", "message": "m"}"#).unwrap();
        assert_eq!(error.error, ErrorCode::Unknown);
    }

    #[test]
    fn a_message_is_bounded() {
        let error = ApiError::bad_request("x".repeat(10 << 20));
        assert!(error.message.len() < MAX_MESSAGE + 64);
    }
}
