//! HTTP routes that ship with a release (one of the host's modules with `unsafe` code).
//!
//! A plugin declares its routes (`GET /notes/{id}` and a handler) in its root module; the host
//! reads them when it loads the plugin (a bad method or pattern refuses the plugin, naming it),
//! and gathers them per generation when a release links: two plugins claiming one method and
//! path, or patterns the router cannot tell apart, refuse the release at
//! [`Step::Link`](crate::Step::Link), naming both. A generation's [`Routes`] never change; a
//! request finds its route in the generation it pinned, so its route and its code come from one
//! release, and a release adds, changes or removes endpoints by going live.
//!
//! Patterns are matchit's (the router axum uses): `/notes/{id}`, `/files/{*rest}`.
//!
//! Calling a handler: a synchronous one runs at once; an async one returns a future, polled
//! under the request's pin like an async export's (see `async_call`), and dropped
//! before the pin. The response is copied into host memory before the call returns, so nothing
//! the plugin allocated outlives the pin.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use abi_stable::std_types::RResult;
use graft_api::ffi::{Context, FfiError, FfiFuture};
use graft_api::http::{HttpRequest, HttpResponse};
use graft_api::ErrorKind;

use crate::decl::RouteSpec;
use crate::declared_routes::RouteHandler;
pub use crate::declared_routes::{check_pattern, METHODS};
use crate::error::CallError;
use crate::link::LinkProblem;
use crate::live::calls::{intern, LabelId};
use crate::live::generation::Generation;
use crate::live::pin::OwnedPin;

/// One route of a generation.
pub struct RouteEntry {
    spec: RouteSpec,
    /// The plugin's position in the generation, and its name.
    pub(crate) plugin: u32,
    plugin_name: Arc<str>,
    handler: RouteHandler,
    /// `GET /notes/{id}`, numbered for the calls in flight.
    label: Arc<str>,
    pub(crate) label_id: LabelId,
}

impl RouteEntry {
    /// The method (`GET`).
    pub fn method(&self) -> &str {
        &self.spec.method
    }

    /// The pattern (`/notes/{id}`).
    pub fn pattern(&self) -> &str {
        &self.spec.path
    }

    /// The plugin that serves it.
    pub fn plugin(&self) -> &str {
        &self.plugin_name
    }

    /// `GET /notes/{id}`: how status and metrics name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What a pin for a request to it needs ([`OwnedPin::for_route`]).
    pub fn site(&self) -> RouteSite {
        RouteSite {
            plugin: self.plugin,
            label_id: self.label_id,
        }
    }
}

impl fmt::Debug for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteEntry")
            .field("route", &self.label)
            .field("plugin", &self.plugin_name)
            .finish_non_exhaustive()
    }
}

/// The routes of one generation.
pub struct Routes {
    /// Pattern to its slot.
    router: matchit::Router<usize>,
    /// Each pattern's slot: the entries of its methods.
    slots: Vec<Vec<usize>>,
    patterns: HashMap<String, usize>,
    entries: Vec<RouteEntry>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            router: matchit::Router::new(),
            slots: Vec::new(),
            patterns: HashMap::new(),
            entries: Vec::new(),
        }
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

/// What a generation's routes say about a request.
#[derive(Debug)]
pub enum Lookup<'r, 'p> {
    /// A route serves it.
    Found(Route<'r, 'p>),
    /// A route has the path, not the method.
    MethodNotAllowed,
    /// No route has the path.
    NotFound,
}

/// A route that matched a request, with its path parameters (as the client sent them,
/// percent-encoded).
pub struct Route<'r, 'p> {
    pub(crate) entry: &'r RouteEntry,
    params: matchit::Params<'r, 'p>,
}

impl<'r, 'p> Route<'r, 'p> {
    /// The route.
    pub fn entry(&self) -> &'r RouteEntry {
        self.entry
    }

    /// The matched parameters, name and raw value.
    pub fn params(&self) -> impl Iterator<Item = (&'r str, &'p str)> + '_ {
        self.params.iter()
    }
}

impl fmt::Debug for Route<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Route").field(&self.entry.label).finish()
    }
}

impl Routes {
    /// Gathers the routes of `plugins` (name and routes, in position order). `reserved` are
    /// routes the embedder serves itself (method or `*` for every method, pattern, who:
    /// `graft.toml [[route]]`), which no plugin may claim. Returns every conflict at once.
    pub(crate) fn build<'a, P, R>(
        plugins: P,
        reserved: &[(String, String, String)],
    ) -> Result<Self, Vec<LinkProblem>>
    where
        P: IntoIterator<Item = (&'a str, R)>,
        R: IntoIterator<Item = (&'a RouteSpec, RouteHandler)>,
    {
        let mut routes = Self::default();
        let mut problems = Vec::new();
        // Method and pattern to who claimed them first.
        let mut claimed: HashMap<(String, String), String> = reserved
            .iter()
            .map(|(method, path, by)| ((method.clone(), path.clone()), by.clone()))
            .collect();
        for (position, (name, declared)) in plugins.into_iter().enumerate() {
            let name: Arc<str> = Arc::from(name);
            for (spec, handler) in declared {
                let key = (spec.method.clone(), spec.path.clone());
                let any = ("*".to_owned(), spec.path.clone());
                if let Some(other) = claimed.get(&key).or_else(|| claimed.get(&any)) {
                    problems.push(LinkProblem::RouteConflict {
                        plugin: name.to_string(),
                        route: spec.to_string(),
                        why: format!("{other} routes it too"),
                    });
                    continue;
                }
                let slot = match routes.patterns.get(&spec.path) {
                    Some(&slot) => slot,
                    None => {
                        let slot = routes.slots.len();
                        if let Err(error) = routes.router.insert(spec.path.clone(), slot) {
                            let other = match &error {
                                matchit::InsertError::Conflict { with } => routes
                                    .entries
                                    .iter()
                                    .find(|e| e.spec.path == *with)
                                    .map_or_else(
                                        || format!("route {with}"),
                                        |e| format!("{} of plugin {}", e.label, e.plugin_name),
                                    ),
                                _ => "the router's rules".into(),
                            };
                            problems.push(LinkProblem::RouteConflict {
                                plugin: name.to_string(),
                                route: spec.to_string(),
                                why: format!("the router cannot tell it from {other} ({error})"),
                            });
                            continue;
                        }
                        routes.patterns.insert(spec.path.clone(), slot);
                        routes.slots.push(Vec::new());
                        slot
                    }
                };
                claimed.insert(key, format!("plugin {name}"));
                routes.slots[slot].push(routes.entries.len());
                let label: Arc<str> = Arc::from(spec.to_string());
                routes.entries.push(RouteEntry {
                    spec: spec.clone(),
                    plugin: u32::try_from(position).expect("fewer than 2^32 plugins"),
                    plugin_name: Arc::clone(&name),
                    handler,
                    label_id: intern(&label),
                    label,
                });
            }
        }
        if problems.is_empty() {
            Ok(routes)
        } else {
            Err(problems)
        }
    }

    /// The route that serves `method` and `path`, if any.
    pub fn find<'r, 'p>(&'r self, method: &str, path: &'p str) -> Lookup<'r, 'p> {
        let Ok(found) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        match self.slots[*found.value]
            .iter()
            .map(|&i| &self.entries[i])
            .find(|e| e.spec.method == method)
        {
            Some(entry) => Lookup::Found(Route {
                entry,
                params: found.params,
            }),
            None => Lookup::MethodNotAllowed,
        }
    }

    /// Every route, in plugin order.
    pub fn iter(&self) -> impl Iterator<Item = &RouteEntry> {
        self.entries.iter()
    }

    /// Whether the generation serves no route.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A handler's response, still in the plugin's memory: read it (and copy what you keep)
/// while the pin it was called under lives, which the borrow ensures; dropping it frees it
/// through the plugin's allocator.
pub struct Replied<'a> {
    response: HttpResponse,
    _pin: PhantomData<&'a OwnedPin>,
}

impl Replied<'_> {
    /// The status code, as the plugin set it (the embedder checks it is a valid one).
    pub fn status(&self) -> u16 {
        self.response.status
    }

    /// The headers, as the plugin set them, name and value; `None` where the plugin's buffer
    /// stops making sense (a bug of the plugin's, which the embedder answers as one).
    pub fn headers(&self) -> impl Iterator<Item = Option<(&[u8], &[u8])>> {
        graft_api::http::headers_in(self.response.headers.as_slice())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.response.body.as_slice()
    }
}

impl fmt::Debug for Replied<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replied")
            .field("status", &self.response.status)
            .finish_non_exhaustive()
    }
}

/// What a request to a route enters through, for its pin: the route's plugin and label.
#[derive(Debug, Clone, Copy)]
pub struct RouteSite {
    plugin: u32,
    label_id: LabelId,
}

impl OwnedPin {
    /// Pins `generation` for a request routed to one of its routes (`site`, from
    /// [`RouteEntry::site`]): it reaches what the route's plugin reaches, and is listed under
    /// the route's label.
    pub fn for_route(generation: Arc<Generation>, site: RouteSite) -> Self {
        let reach = generation.reach_of_plugin(site.plugin);
        Self::register(generation, reach, site.label_id)
    }

    /// Calls the handler of `route` (found in this pin's generation) with `request`: a
    /// synchronous handler runs at once, on this thread; an async one is polled by the
    /// caller's runtime, and dropped (before the pin) if the returned future is.
    ///
    /// # Errors
    ///
    /// [`CallError::Plugin`] (named after the route) when the handler failed or panicked;
    /// [`CallError::NotExported`] if `route` is not one of this generation's.
    pub fn call_route<'a>(
        &'a self,
        route: &Route<'_, '_>,
        request: &'a HttpRequest<'a>,
    ) -> RouteCall<'a> {
        // The same entry, borrowed from this pin's generation (for `'a`): found by its
        // address, and only there, since a route of another generation must not be called
        // in this one.
        let entries = &self.routes().entries;
        let at = std::ptr::from_ref(route.entry)
            .addr()
            .wrapping_sub(entries.as_ptr().addr())
            / std::mem::size_of::<RouteEntry>().max(1);
        let Some(entry) = entries.get(at).filter(|e| std::ptr::eq(*e, route.entry)) else {
            return RouteCall {
                done: Some(Err(CallError::NotExported {
                    contract: format!("route {}", route.entry.label),
                    generation: self.id(),
                })),
                future: None,
                pin: self,
                label: "",
                _request: PhantomData,
            };
        };
        let mut call = RouteCall {
            done: None,
            future: None,
            pin: self,
            label: &entry.label,
            _request: PhantomData,
        };
        let ctx = Context {
            table: self.link_table(),
            plugin: entry.plugin,
        };
        match entry.handler {
            RouteHandler::Sync(handler) => {
                call.done = Some(call.finish(handler(&ctx, request)));
            }
            RouteHandler::Async(handler) => {
                // SAFETY: the future is polled and dropped only inside this `RouteCall`, which
                // borrows both the pin (whose generation owns the link table) and `request` for
                // `'a`, and drops the future first: both outlive it, so the context and the
                // request may say `'static` to the plugin.
                let (ctx, request) = unsafe {
                    (
                        std::mem::transmute::<Context<'_>, Context<'static>>(ctx),
                        &*std::ptr::from_ref(request).cast::<HttpRequest<'static>>(),
                    )
                };
                call.future = Some(crate::live::async_call::polling(self, || {
                    handler(ctx, request)
                }));
            }
        }
        call
    }
}

type RouteFuture = FfiFuture<RResult<HttpResponse, FfiError>>;

/// A route handler's call (see [`OwnedPin::call_route`]): done already, or the plugin's future.
pub struct RouteCall<'a> {
    done: Option<Result<Replied<'a>, CallError>>,
    future: Option<RouteFuture>,
    pin: &'a OwnedPin,
    /// The route's label, for errors.
    label: &'a str,
    _request: PhantomData<&'a HttpRequest<'a>>,
}

impl<'a> RouteCall<'a> {
    fn finish(&self, result: RResult<HttpResponse, FfiError>) -> Result<Replied<'a>, CallError> {
        match result {
            RResult::ROk(response) => Ok(Replied {
                response,
                _pin: PhantomData,
            }),
            RResult::RErr(err) => Err(CallError::Plugin {
                contract: format!("route {}", self.label),
                generation: self.pin.id(),
                kind: err.kind,
                message: err.message.into_string(),
            }),
        }
    }

    /// Whether the handler already returned (a synchronous one).
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }
}

impl<'a> Future for RouteCall<'a> {
    type Output = Result<Replied<'a>, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(done) = this.done.take() {
            return Poll::Ready(done);
        }
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(Err(CallError::Plugin {
                contract: format!("route {}", this.label),
                generation: this.pin.id(),
                kind: ErrorKind::INTERNAL,
                message: "polled after it returned".into(),
            }));
        };
        let pin = this.pin;
        let result = match crate::live::async_call::polling(pin, || Pin::new(future).poll(cx)) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let done = crate::live::async_call::polling(pin, || this.finish(result));
        let future = this.future.take();
        crate::live::async_call::polling(pin, || drop(future));
        Poll::Ready(done)
    }
}

impl Drop for RouteCall<'_> {
    fn drop(&mut self) {
        // The plugin's future first (its drop runs plugin code), while the pin holds the
        // generation and the request is still borrowed.
        let future = self.future.take();
        crate::live::async_call::polling(self.pin, || drop(future));
    }
}

impl fmt::Debug for RouteCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCall")
            .field("route", &self.label)
            .field("generation", &self.pin.id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use graft_api::http::HttpResponse;

    extern "C" fn handler(_: &Context<'_>, _: &HttpRequest<'_>) -> RResult<HttpResponse, FfiError> {
        RResult::ROk(HttpResponse {
            status: 204,
            headers: abi_stable::std_types::RVec::new(),
            body: abi_stable::std_types::RVec::new(),
        })
    }

    fn spec(route: &str) -> RouteSpec {
        let (method, path) = route.split_once(' ').unwrap();
        RouteSpec {
            method: method.into(),
            path: path.into(),
            is_async: false,
        }
    }

    /// Builds the routes of plugins given as (name, routes).
    fn build(
        plugins: &[(&str, &[&str])],
        reserved: &[(&str, &str, &str)],
    ) -> Result<Routes, Vec<String>> {
        let specs: Vec<(&str, Vec<RouteSpec>)> = plugins
            .iter()
            .map(|(name, routes)| (*name, routes.iter().map(|r| spec(r)).collect()))
            .collect();
        let reserved: Vec<(String, String, String)> = reserved
            .iter()
            .map(|(m, p, b)| ((*m).into(), (*p).into(), (*b).into()))
            .collect();
        let declared = specs.iter().map(|(name, specs)| {
            (
                *name,
                specs.iter().map(|s| (s, RouteHandler::Sync(handler))),
            )
        });
        Routes::build(declared, &reserved)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_request_finds_its_route_its_parameters_or_why_not() {
        let routes = build(
            &[
                (
                    "notes",
                    &["GET /notes/{id}", "PUT /notes/{id}", "GET /notes"],
                ),
                ("files", &["GET /files/{*rest}"]),
            ],
            &[],
        )
        .unwrap();
        let Lookup::Found(route) = routes.find("PUT", "/notes/7") else {
            panic!("PUT /notes/7 is routed");
        };
        assert_eq!(
            (route.entry().plugin(), route.entry().label()),
            ("notes", "PUT /notes/{id}")
        );
        assert_eq!(route.params().collect::<Vec<_>>(), [("id", "7")]);
        let Lookup::Found(route) = routes.find("GET", "/files/a/b%20c") else {
            panic!("a wildcard takes the rest");
        };
        assert_eq!(route.params().collect::<Vec<_>>(), [("rest", "a/b%20c")]);
        assert!(matches!(
            routes.find("DELETE", "/notes/7"),
            Lookup::MethodNotAllowed
        ));
        assert!(matches!(routes.find("GET", "/nowhere"), Lookup::NotFound));
        assert_eq!(routes.iter().count(), 4);
    }

    #[test]
    fn a_route_claimed_twice_or_that_the_router_cannot_tell_apart_names_both() {
        let problems =
            build(&[("a", &["GET /x"]), ("b", &["GET /x", "POST /x"])], &[]).unwrap_err();
        assert_eq!(
            problems,
            ["plugin b routes GET /x, but plugin a routes it too"]
        );

        let problems =
            build(&[("a", &["GET /n/{id}"]), ("b", &["POST /n/{key}"])], &[]).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(
                "plugin b routes POST /n/{key}, but the router cannot tell it from GET /n/{id} of plugin a"
            ),
            "{problems:?}"
        );

        let reserved = [("*", "/foo", "graft.toml [[route]] POST /foo")];
        let problems = build(&[("a", &["GET /foo"])], &reserved).unwrap_err();
        assert_eq!(
            problems,
            ["plugin a routes GET /foo, but graft.toml [[route]] POST /foo routes it too"]
        );
    }

    #[test]
    fn patterns_are_checked_as_the_router_takes_them() {
        for good in ["/", "/notes/{id}", "/files/{*rest}", "/a/{x}/b"] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("notes", "must start with /"),
            ("/:id", "a capture is written {name}"),
            ("/*rest", "a capture is written {name}"),
            ("/{a}{b}", "route path"),
            ("/{", "route path"),
        ] {
            let error = check_pattern(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let long = format!("/{}", "x".repeat(1 << 20));
        assert!(check_pattern(&long).unwrap_err().len() < 512);
    }
}
