//! Routes that ship with the release: every request no `[[route]]` takes is routed by the
//! routes of the generation it pins (the canary's or stable's), so its route and its code come
//! from one release, and a release adds, changes or removes endpoints by going live, with no
//! restart and no connection dropped.
//!
//! The request crosses to the handler borrowed, nothing encoded: method, path, query, matched
//! parameters (percent-decoded), headers and the body (read under the body limit). Its context
//! (request id, trace context, deadline) is set for every call the handler makes. A
//! synchronous handler runs on the worker thread; an async one is polled in the request's
//! future and dropped (cancelled) at the deadline or when the client goes away.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use graft_api::http::{HttpHeader, HttpRequest, PathParam};
use graft_host::route::{Lookup, Replied};
use graft_host::{CallError, Host, OwnedPin, RequestContext};
use http_body::Body as _;
use smallvec::SmallVec;
use tracing::Instrument;

use crate::api::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::rollout::{Rollouts, Route as Side};
use crate::worker::link::ServedRoute;
use crate::worker::{Asked, Forward, Forwarded, Serves, Workers};

use super::app::{
    answer_failure, method_not_allowed, not_found, rejected_body, server_error, side_of, stamp,
    HELD_RETRY,
};
use super::conn::Tracking;
use super::listen::Direct;
use super::trace;
use crate::worker::states::NO_ROUTE;

/// What every request to a plugin route shares.
pub(super) struct PluginRoutes {
    pub(super) host: Arc<Host>,
    pub(super) rollouts: Arc<Rollouts>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) workers: Arc<Workers>,
    /// How long a request may run (`route_timeout_ms`).
    pub(super) deadline: Duration,
}

/// The plugins' routes as the listener calls them for every request no `[[route]]` path takes
/// (skipping the router's layers; the router keeps them as its fallback too).
pub(super) fn direct(
    routes: Arc<PluginRoutes>,
    configured: &[crate::config::Route],
) -> Result<Arc<Direct>, String> {
    let mut paths = matchit::Router::new();
    let mut seen = std::collections::HashSet::new();
    for route in configured {
        if seen.insert(route.path.as_str()) {
            paths
                .insert(route.path.clone(), ())
                .map_err(|e| format!("route path {}: {e}", route.path))?;
        }
    }
    Ok(Arc::new(Direct {
        configured: paths,
        serve: Box::new(move |request| Box::pin(serve(State(Arc::clone(&routes)), request))),
    }))
}

/// One request to a route some plugin of the pinned generation declares.
pub(super) async fn serve(State(routes): State<Arc<PluginRoutes>>, request: Request) -> Response {
    let started = Instant::now();
    // A rollout counts latency from when the request's bytes arrived (see `arrival.rs`).
    let arrived = super::arrival::Arrived::of(&request, started);
    let mut request = request;
    let http_method = request.method().clone();
    let uri = std::mem::take(request.uri_mut());
    let headers = std::mem::take(request.headers_mut());
    // In a worker serving its front's connection: its deadline and what it answered go to
    // the front (`given.rs`).
    let tracking = request.extensions_mut().remove::<Tracking>();
    let deadline = match &tracking {
        Some(tracking) => {
            let deadline = tracking.front_deadline(routes.deadline);
            tracking.started(NO_ROUTE, Some(started + deadline));
            deadline
        }
        None => routes.deadline,
    };
    // In a worker, the request is served in the context its front made for it.
    let context = match request.extensions_mut().remove::<Forwarded>() {
        Some(Forwarded(context)) => context,
        None => trace::context(&headers, Some(started + deadline)),
    };
    // The body first: a slow client must not hold a generation (and a migration) while it
    // sends.
    let body = if request.body().is_end_stream() {
        Bytes::new() // a GET, most often: nothing to read
    } else {
        match Bytes::from_request(request, &()).await {
            Ok(body) => body,
            Err(rejection) => return rejected_body(&rejection),
        }
    };
    let (key, force) = side_of(&routes.rollouts, &headers);
    let (method, path) = (http_method.as_str(), uri.path());
    // Held at the boundary (never failed) while a migration or a save concerns a plugin the
    // route can reach.
    let (pin, side) = loop {
        let (generation, side) = routes.rollouts.pick(key, force);
        let site = match generation.routes().find(method, path) {
            Lookup::Found(route) => route.entry().site(),
            Lookup::MethodNotAllowed => {
                let answer = method_not_allowed().await.into_response();
                return stamped(answer, &generation, side, &context);
            }
            Lookup::NotFound => {
                return stamped(
                    not_found().await.into_response(),
                    &generation,
                    side,
                    &context,
                )
            }
        };
        match routes.host.try_admit(OwnedPin::for_route(generation, site)) {
            Some(pin) => break (pin, side),
            None => tokio::time::sleep(HELD_RETRY).await,
        }
    };
    let Lookup::Found(route) = pin.routes().find(method, path) else {
        unreachable!("the pinned generation routed this request a moment ago");
    };
    let entry = route.entry();
    let span = tracing::info_span!(
        "request",
        request_id = %context.id,
        method,
        route = entry.pattern(),
        generation = pin.id()
    );
    let served = Served {
        pattern: entry.pattern(),
        method,
        pin: &pin,
        side,
        started,
        arrived,
        tracking: tracking.as_ref(),
    };
    if let Some(worker) = routes.workers.route(pin.generation(), side) {
        // The generation runs in a worker process: it answers, the front counts and stamps.
        let forward = Forward {
            asked: Asked::Http {
                method: &http_method,
                uri: &uri,
                headers: &headers,
            },
            body,
            context: &context,
            route: entry.label(),
            serves: Serves::Plugin(entry.plugin()),
        };
        let answer = routes
            .workers
            .forward(&worker, forward)
            .instrument(span)
            .await;
        let response = super::app::forwarded(answer);
        return counted(&routes, response, &served, &context);
    }
    // On the stack for the usual few parameters and headers: no allocation per request.
    let params: SmallVec<[(&str, Cow<'_, str>); 4]> = match route
        .params()
        .map(|(name, raw)| {
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map(|value| (name, value))
        })
        .collect::<Result<_, _>>()
    {
        Ok(params) => params,
        Err(_) => {
            let error = ApiError::new(
                ErrorCode::BadRequest,
                "a path parameter is not UTF-8 once decoded",
            );
            return stamped(error.into_response(), &pin, side, &context);
        }
    };
    let params: SmallVec<[PathParam<'_>; 4]> = params
        .iter()
        .map(|(name, value)| PathParam {
            name: (*name).into(),
            value: value.as_ref().into(),
        })
        .collect();
    let header_list: SmallVec<[HttpHeader<'_>; 16]> = headers
        .iter()
        .map(|(name, value)| HttpHeader {
            name: name.as_str().into(),
            value: value.as_bytes().into(),
        })
        .collect();
    let raw = HttpRequest {
        method: method.into(),
        path: path.into(),
        query: uri.query().unwrap_or_default().into(),
        route: entry.pattern().into(),
        params: params.as_slice().into(),
        headers: header_list.as_slice().into(),
        body: body.as_ref().into(),
    };
    let call =
        span.in_scope(|| graft_host::with_request(Some(&context), || pin.call_route(&route, &raw)));
    let result = if call.is_done() {
        call.await
    } else {
        let call = graft_host::in_request(Arc::clone(&context), call).instrument(span.clone());
        match tokio::time::timeout(routes.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(late(&routes, &context, pin.id(), entry.label())),
        }
    };
    let response = match result {
        Ok(reply) => into_response(&reply, entry.label(), &context),
        Err(error) => span.in_scope(|| answer_failure(&error, &context).into_response()),
    };
    counted(&routes, response, &served, &context)
}

/// Where a request was answered: the route's pattern and method, the pinned generation, the
/// side, when its handler started and when its bytes arrived.
struct Served<'a> {
    pattern: &'a str,
    method: &'a str,
    /// In a worker serving its front's connection: told what was answered.
    tracking: Option<&'a Tracking>,
    pin: &'a OwnedPin,
    side: Side,
    started: Instant,
    arrived: Instant,
}

/// Counts an answered request (per route, per generation, for the rollout) and stamps it.
fn counted(
    routes: &PluginRoutes,
    response: Response,
    served: &Served<'_>,
    context: &RequestContext,
) -> Response {
    let elapsed = served.started.elapsed();
    let (pin, status) = (served.pin, response.status());
    routes.metrics.route(
        served.pattern,
        served.method,
        served.side,
        pin.release(),
        status,
        elapsed,
    );
    routes
        .metrics
        .request(pin.id(), !status.is_server_error(), elapsed);
    routes
        .rollouts
        .record(pin.id(), status.is_server_error(), served.arrived.elapsed());
    if let Some(tracking) = served.tracking {
        let route = ServedRoute::Plugin {
            method: served.method.to_owned(),
            pattern: served.pattern.to_owned(),
        };
        tracking.served(route, status.as_u16(), elapsed);
    }
    stamped(response, pin, served.side, context)
}

/// The error a call past the request's deadline is answered with (the async call was dropped,
/// which cancels it).
fn late(
    routes: &PluginRoutes,
    context: &RequestContext,
    generation: u64,
    route: &str,
) -> CallError {
    let deadline_ms = u64::try_from(routes.deadline.as_millis()).unwrap_or(u64::MAX);
    tracing::warn!(request_id = %context.id, route, deadline_ms, "route handler past its deadline; cancelled");
    CallError::Plugin {
        contract: format!("route {route}"),
        generation,
        kind: graft_host::ErrorKind::UNAVAILABLE,
        message: format!("past the request's deadline ({deadline_ms} ms, route_timeout_ms)"),
    }
}

/// A handler's reply as an HTTP response (copied out of the plugin's memory); one that is not
/// valid HTTP is the plugin's bug (500).
fn into_response(reply: &Replied<'_>, route: &str, context: &RequestContext) -> Response {
    let Ok(status) = StatusCode::from_u16(reply.status()) else {
        let status = reply.status();
        tracing::error!(request_id = %context.id, route, status, "a route handler answered an invalid status");
        return invalid_reply(context);
    };
    let mut response = Response::new(axum::body::Body::from(Bytes::copy_from_slice(reply.body())));
    *response.status_mut() = status;
    let map = response.headers_mut();
    // Room for a few of the handler's headers and the three graft adds.
    map.reserve(8);
    for header in reply.headers() {
        let parsed = header.and_then(|(name, value)| {
            Some((
                HeaderName::from_bytes(name).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                map.append(name, value);
            }
            None => {
                let name = header.map(|(name, _)| String::from_utf8_lossy(name).into_owned());
                let name = graft_host::bounded::Bounded(name.as_deref().unwrap_or("?")).to_string();
                tracing::error!(request_id = %context.id, route, header = %name, "a route handler set an invalid header");
                return invalid_reply(context);
            }
        }
    }
    response
}

fn invalid_reply(context: &RequestContext) -> Response {
    server_error(ErrorCode::BadOutput, context).into_response()
}

/// Adds the generation, the side and the request id to a response.
fn stamped(
    mut response: Response,
    generation: &graft_host::Generation,
    side: Side,
    context: &RequestContext,
) -> Response {
    stamp(response.headers_mut(), generation.id(), side);
    trace::stamp_id(response.headers_mut(), context);
    response
}
