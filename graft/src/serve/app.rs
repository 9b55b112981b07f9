//! The service: HTTP routes mapped to plugin exports.
//!
//! Every request takes an owned pin when it starts (on the canary or on stable, when a rollout
//! is under way) and runs its export, and every import call the export makes, in that
//! generation: on the worker thread or on tokio's blocking pool, as the route's [`CallMode`]
//! decides (plugin calls are synchronous). The response carries `x-graft-generation`. A plugin error or panic is answered with an [`ApiError`]; the server
//! lives on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodRouter};
use axum::Router;
use graft_host::{CallError, CallSite, Host, OwnedPin, RequestContext};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::api::{ApiError, ErrorCode};
use crate::config::{method_filter, Route};
use crate::metrics::Metrics;
use crate::rollout::{Rollouts, Route as Side};
use crate::worker::link::ServedRoute;

use super::conn::Tracking;
use super::listen::BodyTimeoutError;
use super::mode::{CallMode, Learned};
use crate::worker::{Asked, Calls, Forward, Serves, Workers};

pub use crate::api::GENERATION_HEADER;

/// The request header that forces a side of a rollout (`stable` or `canary`); canary answers
/// carry it too.
pub const ROUTE_HEADER: &str = "x-graft-route";

/// The request header carrying the secret that lets [`ROUTE_HEADER`] force a side
/// (`[rollout] force_token`, else the admin token).
pub const ROUTE_TOKEN_HEADER: &str = "x-graft-route-token";

/// The two headers above, parsed once (a lookup or insert by `&str` parses the name every time).
const GENERATION: HeaderName = HeaderName::from_static(GENERATION_HEADER);
const ROUTE: HeaderName = HeaderName::from_static(ROUTE_HEADER);
const ROUTE_TOKEN: HeaderName = HeaderName::from_static(ROUTE_TOKEN_HEADER);

/// What one route's requests share: cloned (one `Arc`) per request, nothing else is.
struct RouteState {
    rollouts: Arc<Rollouts>,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
    /// Its place among the config's `[[route]]`s: how the front names it to a worker.
    index: usize,
    /// The export, and the route's label (`POST /foo`) in status and errors.
    site: CallSite,
    method: String,
    path: String,
    mode: CallMode,
    /// What `auto` learned of the route's calls.
    learned: Learned,
    /// Slots for calls in flight, and how many, if the route has a limit.
    limit: Option<(Arc<Semaphore>, usize)>,
    /// How long a call may run before the request is answered without it.
    deadline: Option<Duration>,
}

impl RouteState {
    /// Its number among the config's `[[route]]`s, from 1: how a worker names it to its
    /// front (`worker/states.rs`, `worker/link.rs`).
    fn number(&self) -> u32 {
        u32::try_from(self.index + 1).unwrap_or(u32::MAX)
    }
}

impl RouteState {
    /// Whether this request's call runs on the blocking pool.
    fn blocking(&self) -> bool {
        match self.mode {
            CallMode::Inline => false,
            CallMode::Blocking => true,
            CallMode::Auto => self.learned.blocking(),
        }
    }

    /// Waits for a call running as a task of its own, until the route's deadline.
    async fn join(
        &self,
        task: JoinHandle<Result<Vec<u8>, CallError>>,
    ) -> Result<Result<Vec<u8>, CallError>, ApiError> {
        let joined = match self.deadline {
            Some(deadline) => tokio::time::timeout(deadline, task)
                .await
                .map_err(|_| self.late(deadline))?,
            None => task.await,
        };
        joined.map_err(ApiError::from)
    }

    /// Reports an async call cancelled at the route's deadline and the answer for it.
    fn cancelled(&self, deadline: Duration) -> ApiError {
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(route = %self.path, contract = %self.site.export(), deadline_ms,
            "async call past its deadline; cancelled");
        ApiError::new(
            ErrorCode::DeadlineExceeded,
            format!("the call ran past the route's deadline ({deadline_ms} ms, timeout_ms) and was cancelled"),
        )
    }

    /// Reports a call past the route's deadline and the answer for it.
    fn late(&self, deadline: Duration) -> ApiError {
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(route = %self.path, contract = %self.site.export(), deadline_ms,
            "call past its deadline; its result is discarded");
        ApiError::new(
            ErrorCode::DeadlineExceeded,
            format!("the call ran past the route's deadline ({deadline_ms} ms, timeout_ms); its result is discarded"),
        )
    }

    /// Calls the export in the pinned generation. The call is timed only when something uses
    /// the time: `auto` learning from it, or a deadline (returned then).
    fn call(&self, pin: &OwnedPin, input: &[u8]) -> (Result<Vec<u8>, CallError>, Option<Duration>) {
        let timed = self.mode == CallMode::Auto || self.deadline.is_some();
        let started = timed.then(Instant::now);
        let result = pin.call_raw(self.site.export(), input);
        let took = started.map(|started| started.elapsed());
        if let (CallMode::Auto, Some(took)) = (self.mode, took) {
            self.learned.record(took);
        }
        (result, took)
    }
}

/// The `[[route]]`s' calls, in the config's order: what a worker runs for the front's calls.
pub(crate) struct RouteCalls(Vec<Arc<RouteState>>);

impl std::fmt::Debug for RouteCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|route| route.site.label()))
            .finish()
    }
}

/// The app's router: one route per `[[route]]`; every other request goes to `fallback` (the
/// routes the pinned generation's plugins declare). And the same routes' calls, for a worker.
pub(super) fn router(
    host: &Host,
    metrics: &Arc<Metrics>,
    rollouts: &Arc<Rollouts>,
    workers: &Arc<Workers>,
    routes: &[Route],
    inline_budget: Duration,
    fallback: MethodRouter,
) -> Result<(Router, RouteCalls), String> {
    let mut by_path: BTreeMap<&str, MethodRouter> = BTreeMap::new();
    let mut calls = Vec::with_capacity(routes.len());
    for (index, route) in routes.iter().enumerate() {
        let state = Arc::new(RouteState {
            rollouts: Arc::clone(rollouts),
            workers: Arc::clone(workers),
            metrics: Arc::clone(metrics),
            index,
            site: CallSite::new(
                host.export(&route.export).map_err(|e| e.to_string())?,
                format!("{} {}", route.method.to_ascii_uppercase(), route.path),
            ),
            method: route.method.to_ascii_uppercase(),
            path: route.path.clone(),
            mode: route.mode,
            learned: Learned::new(inline_budget),
            limit: route
                .max_in_flight
                .map(|n| (Arc::new(Semaphore::new(n)), n)),
            deadline: route.timeout_ms.map(Duration::from_millis),
        });
        calls.push(Arc::clone(&state));
        let handler = on(method_filter(&route.method)?, call_export).with_state(state);
        let merged = match by_path.remove(route.path.as_str()) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(&route.path, merged);
    }
    let router = by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods.fallback(method_not_allowed))
        })
        .fallback_service(fallback);
    Ok((router, RouteCalls(calls)))
}

/// How often a request held at the boundary by a migrating publish tries again.
pub(super) const HELD_RETRY: Duration = Duration::from_micros(200);

/// One HTTP request: route (stable or canary) and pin, call (inline or on the blocking pool),
/// answer with the generation that served it.
async fn call_export(State(route): State<Arc<RouteState>>, mut request: Request) -> Response {
    let started = Instant::now();
    // A rollout counts latency from when the request's bytes arrived (see `arrival.rs`).
    let arrived = super::arrival::Arrived::of(&request, started);
    // In a worker serving its front's connection: its deadline and what it answered go to
    // the front (`given.rs`).
    let tracking = request.extensions_mut().remove::<Tracking>();
    let deadline = match &tracking {
        Some(tracking) => {
            let deadline = route.deadline.map(|d| tracking.front_deadline(d));
            tracking.started(route.number(), deadline.map(|d| started + d));
            deadline
        }
        None => route.deadline,
    };
    // The headers are moved out, not cloned (as axum's `HeaderMap` extractor would); the body
    // is read under the body limit the request carries.
    let headers = std::mem::take(request.headers_mut());
    let body = Bytes::from_request(request, &()).await;
    let context = super::trace::context(&headers, deadline.map(|d| started + d));
    let span = tracing::info_span!(
        "request",
        request_id = %context.id,
        method = %route.method,
        route = %route.path,
        generation = tracing::field::Empty
    );
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return rejected_body(&rejection),
    };
    // A route at its concurrency limit answers at once rather than queue.
    let slot = match &route.limit {
        Some((slots, max)) => match Arc::clone(slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                let message =
                    format!("the route is at its limit of {max} calls in flight (max_in_flight)");
                return ApiError::new(ErrorCode::Overloaded, message).into_response();
            }
        },
        None => None,
    };
    let (key, force) = side_of(&route.rollouts, &headers);
    // Held at the boundary (never failed) while a migration or a save concerns a plugin this
    // route can reach: the pause is a few milliseconds, bounded by the drain deadline.
    let (pin, side) = loop {
        match route.rollouts.route(&route.site, key, force) {
            Some(routed) => break routed,
            None => tokio::time::sleep(HELD_RETRY).await,
        }
    };
    // The headers (and the body, once sent) share hyper's read buffer, which hyper reads the
    // connection's next request into while this one waits: released before waiting, so that
    // the buffer is shared for less time (hyper may still read ahead before this runs).
    drop(headers);
    let generation = pin.id();
    let release = pin.release().map(str::to_owned);
    span.record("generation", generation);
    let (mut response, elapsed) = if let Some(worker) = route.workers.route(pin.generation(), side)
    {
        // The generation runs in a worker process: it answers, the front counts and stamps.
        let forward = Forward {
            asked: Asked::Call { route: route.index },
            body,
            context: &context,
            route: &route.path,
            serves: Serves::Export(pin.generation(), route.site.export()),
        };
        let answer = route
            .workers
            .forward(&worker, forward)
            .instrument(span)
            .await;
        drop((slot, pin));
        let elapsed = started.elapsed();
        let response = forwarded(answer);
        let ok = !response.status().is_server_error();
        route.metrics.request(generation, ok, elapsed);
        (response, elapsed)
    } else {
        let input = if body.is_empty() {
            Bytes::from_static(b"null")
        } else {
            body
        };
        let result = run(&route, pin, input, span, slot, &context).await;
        let elapsed = started.elapsed();
        route
            .metrics
            .request(generation, matches!(result, Ok(Ok(_))), elapsed);
        (answer(result, &context), elapsed)
    };
    let status = response.status();
    route.metrics.route(
        &route.path,
        &route.method,
        side,
        release.as_deref(),
        status,
        elapsed,
    );
    route
        .rollouts
        .record(generation, status.is_server_error(), arrived.elapsed());
    if let Some(tracking) = &tracking {
        let served = ServedRoute::Configured(route.number());
        tracking.served(served, status.as_u16(), elapsed);
    }
    stamp(response.headers_mut(), generation, side);
    super::trace::stamp_id(response.headers_mut(), &context);
    response
}

/// The answer to a request whose call ran (or did not: `Err` is the server's own answer).
fn answer(
    result: Result<Result<Vec<u8>, CallError>, ApiError>,
    context: &RequestContext,
) -> Response {
    match result {
        Ok(Ok(output)) => ([(header::CONTENT_TYPE, "application/json")], output).into_response(),
        Ok(Err(error)) => answer_failure(&error, context).into_response(),
        Err(answer) => answer.into_response(),
    }
}

impl Calls for RouteCalls {
    /// In a worker: a call the front routed, pinned and forwarded, run here in this process's
    /// one generation as the front would have run it. The front counts, limits and stamps it.
    fn call(
        &self,
        route: usize,
        context: Arc<RequestContext>,
        body: Bytes,
    ) -> impl std::future::Future<Output = Response> + Send + 'static {
        let route = self.0.get(route).cloned();
        async move {
            let Some(route) = route else {
                return ApiError::new(ErrorCode::NotFound, "no such route").into_response();
            };
            let span = tracing::info_span!(
                "request",
                request_id = %context.id,
                method = %route.method,
                route = %route.path,
            );
            let pin = loop {
                match route.rollouts.route(&route.site, None, None) {
                    Some((pin, _)) => break pin,
                    None => tokio::time::sleep(HELD_RETRY).await,
                }
            };
            let input = if body.is_empty() {
                Bytes::from_static(b"null")
            } else {
                body
            };
            answer(
                run(&route, pin, input, span, None, &context).await,
                &context,
            )
        }
    }
}

/// A worker's answer as the front's response (the front then stamps it), or the front's own
/// answer when the worker gave none.
pub(super) fn forwarded(answer: Result<axum::http::Response<Bytes>, ApiError>) -> Response {
    match answer {
        Ok(answer) => {
            let (parts, body) = answer.into_parts();
            Response::from_parts(parts, axum::body::Body::from(body))
        }
        Err(error) => error.into_response(),
    }
}

/// The answer to a failed call: its kind chooses the status; a server error says only what a
/// client should see (the details are logged under the request id).
pub(super) fn answer_failure(error: &CallError, context: &RequestContext) -> ApiError {
    let mut answer = ApiError::from(error);
    if answer.status().is_server_error() {
        tracing::warn!(request_id = %context.id, error = %graft_host::DisplayChain(error), "request failed");
        answer = server_error(answer.error, context);
    } else {
        tracing::debug!(request_id = %context.id, error = %error, "request refused");
        // The client's own mistake: the plugin's words, without the server's wrapping.
        if let CallError::Plugin { message, .. } = error {
            answer.message =
                graft_host::bounded::truncate(message, graft_host::bounded::MAX_MESSAGE)
                    .into_owned();
        }
    }
    answer
}

/// A server error as a client sees it: its code, and the request id the log has the details
/// under.
pub(super) fn server_error(code: ErrorCode, context: &RequestContext) -> ApiError {
    let reason = code.status().canonical_reason().unwrap_or("server error");
    let message = format!(
        "the request failed ({}); the server log has the details under request id {}",
        reason.to_ascii_lowercase(),
        context.id
    );
    ApiError::new(code, message)
}

/// Which side of a rollout a request goes to: its sticky key and the side it forces, if it
/// carries the force token. Without a rollout under way every request goes to stable, and no
/// header is looked at.
pub(super) fn side_of<'h>(
    rollouts: &Rollouts,
    headers: &'h HeaderMap,
) -> (Option<&'h [u8]>, Option<Side>) {
    if !rollouts.under_way() {
        return (None, None);
    }
    let config = rollouts.config();
    let force = headers
        .get(&ROUTE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Side>().ok())
        .filter(|_| {
            // Compared in constant time, as the admin token is.
            let given = headers.get(&ROUTE_TOKEN).map(HeaderValue::as_bytes);
            config.force_token.as_deref().is_some_and(|token| {
                given.is_some_and(|given| {
                    bool::from(subtle::ConstantTimeEq::ct_eq(given, token.as_bytes()))
                })
            })
        });
    let key = sticky_key(
        headers,
        config.sticky_header.as_deref(),
        config.sticky_cookie.as_deref(),
    );
    (key, force)
}

/// Names the generation that answered, and the canary side, on a response.
pub(super) fn stamp(headers: &mut HeaderMap, generation: u64, side: Side) {
    thread_local! {
        /// The header value of the generation this thread answered from last: made once per
        /// generation and thread, cloned per answer (no formatting, no allocation).
        static LAST: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static("0"))) };
    }
    let value = LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != generation {
            *last = (generation, HeaderValue::from(generation));
        }
        last.1.clone()
    });
    headers.insert(GENERATION, value);
    if side == Side::Canary {
        headers.insert(ROUTE, HeaderValue::from_static("canary"));
    }
}

/// Runs the route's call where its mode says, within its deadline. `Err` is the server's own
/// answer: the call ran past its deadline, or panicked in the host. An async call is polled in
/// the request's own future, so it is cancelled (its future dropped, its pin released) at the
/// deadline or when the client goes away; a synchronous call cannot be stopped: past the
/// deadline its result is discarded when it returns, and it keeps its pin (listed in status)
/// and its concurrency slot until then.
async fn run(
    route: &Arc<RouteState>,
    pin: OwnedPin,
    input: Bytes,
    span: tracing::Span,
    slot: Option<OwnedSemaphorePermit>,
    context: &Arc<RequestContext>,
) -> Result<Result<Vec<u8>, CallError>, ApiError> {
    let call = Arc::clone(route);
    if pin.is_async(route.site.export()) {
        // Dropping the call drops the plugin's future before its pin; blocking work it started
        // holds a pin of its own until it returns.
        let call = graft_host::in_request(
            Arc::clone(context),
            pin.into_call_async(route.site.export(), input.to_vec()),
        )
        .instrument(span);
        let result = match route.deadline {
            Some(deadline) => tokio::time::timeout(deadline, call)
                .await
                .map_err(|_| route.cancelled(deadline))?,
            None => call.await,
        };
        drop(slot);
        return Ok(result);
    }
    if route.blocking() {
        let context = Arc::clone(context);
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _entered = span.enter();
            graft_host::with_request(Some(&context), || call.call(&pin, &input).0)
        });
        return route.join(task).await;
    }
    let (result, took) = {
        let _entered = span.enter();
        graft_host::with_request(Some(context), || route.call(&pin, &input))
    };
    drop(slot);
    match (route.deadline, took) {
        (Some(deadline), Some(took)) if took > deadline => Err(route.late(deadline)),
        _ => Ok(result),
    }
}

/// The sticky key of a request: the configured header's value, or the configured cookie's.
fn sticky_key<'a>(
    headers: &'a HeaderMap,
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

/// A body that could not be read (too large, too slow, or the connection failed mid-body).
pub(super) fn rejected_body(rejection: &BytesRejection) -> Response {
    let mut source = std::error::Error::source(rejection);
    while let Some(error) = source {
        if let Some(timeout) = error.downcast_ref::<BodyTimeoutError>() {
            return ApiError::new(ErrorCode::RequestTimeout, timeout.to_string()).into_response();
        }
        source = error.source();
    }
    let code = if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::PayloadTooLarge
    } else {
        ErrorCode::BadRequest
    };
    ApiError::new(code, rejection.body_text()).into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "the route does not take this method",
    )
}
