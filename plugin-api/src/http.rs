//! HTTP routes that ship with a plugin: what a handler receives and returns.
//!
//! A plugin declares its routes in [`plugin!`](crate::plugin):
//!
//! ```ignore
//! graft_api::plugin! {
//!     name: "notes",
//!     version: env!("CARGO_PKG_VERSION"),
//!     exports: {},
//!     routes: {
//!         GET "/notes/{id}" => get_note,
//!         POST "/notes" => create_note,
//!     },
//!     async_routes: {
//!         GET "/notes/{id}/preview" => preview,
//!     },
//! }
//! ```
//!
//! A route belongs to the generation of the release that declared it: it goes live with that
//! release and leaves with it, and a request is routed by the routes of the generation it
//! pinned, so its route and its code always come from one release. Patterns are matchit's
//! (axum's): `/notes/{id}`, `/files/{*path}`; two plugins of one release claiming one method and
//! path refuse the release, naming both.
//!
//! A handler is `fn(&Context<'_>, &Request<'_>) -> Result<Response, Error>` (an `async fn(Context<'static>,
//! Request<'static>) -> Result<Response, Error>` under `async_routes`), and reads like an axum
//! handler: [`Request::param_as`], [`Request::query`], [`Request::json`], [`Request::header`].
//! An [`Error`] still answers with its kind's status (`Error::not_found` 404, a body or
//! parameter that does not decode 400, ...). The request crosses borrowed, without encoding:
//! the method, path, query, matched parameters, headers and (bounded) body point into the
//! host's memory for the duration of the call.

#![allow(unsafe_code)]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use abi_stable::std_types::{RResult, RSlice, RStr, RVec};
use abi_stable::StableAbi;
use async_ffi::FutureExt as _;
use serde::{de::DeserializeOwned, Serialize};

use crate::asynchronous::CatchUnwind;
use crate::error::Error;
use crate::ffi::{Context, ErrorKind, FfiError, FfiFuture};
use crate::runtime::{flatten, panicked};

/// One header of a request, as it crosses: a lowercase name and the raw value.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HttpHeader<'a> {
    /// The name, lowercase (`content-type`).
    pub name: RStr<'a>,
    /// The value's bytes.
    pub value: RSlice<'a, u8>,
}

/// One matched path parameter (`id` of `/notes/{id}`), percent-decoded.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct PathParam<'a> {
    /// The parameter's name in the pattern.
    pub name: RStr<'a>,
    /// Its value in this request's path.
    pub value: RStr<'a>,
}

/// A request as it crosses to a route handler: everything borrowed from the host.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct HttpRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: RStr<'a>,
    /// The path, as the client sent it (percent-encoded).
    pub path: RStr<'a>,
    /// The query string without its `?` (empty when there is none).
    pub query: RStr<'a>,
    /// The route pattern that matched (`/notes/{id}`).
    pub route: RStr<'a>,
    /// The matched path parameters.
    pub params: RSlice<'a, PathParam<'a>>,
    /// The headers, in the order they came.
    pub headers: RSlice<'a, HttpHeader<'a>>,
    /// The body, read in full under the server's body limit.
    pub body: RSlice<'a, u8>,
}

/// A response as it crosses back to the host.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers to send, packed in one buffer (one allocation however many): for each,
    /// the name's length (`u16`, little-endian), the name, the value's length (`u32`), the
    /// value. Read with [`headers_in`].
    pub headers: RVec<u8>,
    /// The body.
    pub body: RVec<u8>,
}

/// The headers packed in `buffer` (see [`HttpResponse::headers`]), name and value; `None` for
/// a buffer that does not parse (a plugin's bug), from where it stops.
pub fn headers_in(buffer: &[u8]) -> impl Iterator<Item = Option<(&[u8], &[u8])>> + '_ {
    let mut rest = buffer;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let entry = (|| {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (name, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
            let (len, tail) = tail.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            let (value, tail) = tail.split_at_checked(len)?;
            Some((name, value, tail))
        })();
        match entry {
            Some((name, value, tail)) => {
                rest = tail;
                Some(Some((name, value)))
            }
            None => {
                rest = &[];
                Some(None)
            }
        }
    })
}

/// A synchronous route handler, as it crosses.
pub type HttpFn =
    extern "C" fn(ctx: &Context<'_>, request: &HttpRequest<'_>) -> RResult<HttpResponse, FfiError>;

/// An async route handler, as it crosses: its future is polled by the host, which keeps the
/// request (and the generation) alive until the future is done or dropped; `'static` only says
/// the future may hold them.
pub type AsyncHttpFn = extern "C" fn(
    ctx: Context<'static>,
    request: &'static HttpRequest<'static>,
) -> FfiFuture<RResult<HttpResponse, FfiError>>;

/// One route a plugin declares: a method, a pattern and its handler (one of the two).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RouteDecl {
    /// The method, uppercase (`GET`).
    pub method: RStr<'static>,
    /// The pattern (`/notes/{id}`).
    pub path: RStr<'static>,
    /// The handler, if it is synchronous (an [`HttpFn`], spelled out for abi_stable's derive).
    pub handler: Option<
        extern "C" fn(
            ctx: &Context<'_>,
            request: &HttpRequest<'_>,
        ) -> RResult<HttpResponse, FfiError>,
    >,
    /// The handler, if it is async (an [`AsyncHttpFn`]).
    pub async_handler: Option<
        extern "C" fn(
            ctx: Context<'static>,
            request: &'static HttpRequest<'static>,
        ) -> FfiFuture<RResult<HttpResponse, FfiError>>,
    >,
}

/// A synchronous route (what `plugin!` writes under `routes`).
pub const fn route(method: &'static str, path: &'static str, handler: HttpFn) -> RouteDecl {
    RouteDecl {
        method: RStr::from_str(method),
        path: RStr::from_str(path),
        handler: Some(handler),
        async_handler: None,
    }
}

/// An async route (what `plugin!` writes under `async_routes`).
pub const fn async_route(
    method: &'static str,
    path: &'static str,
    handler: AsyncHttpFn,
) -> RouteDecl {
    RouteDecl {
        method: RStr::from_str(method),
        path: RStr::from_str(path),
        handler: None,
        async_handler: Some(handler),
    }
}

/// The request a route handler reads: a view of the host's, nothing copied.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    raw: &'a HttpRequest<'a>,
}

impl<'a> Request<'a> {
    /// A view of `raw`.
    pub fn new(raw: &'a HttpRequest<'a>) -> Self {
        Self { raw }
    }

    /// The method (`GET`).
    pub fn method(&self) -> &'a str {
        self.raw.method.as_str()
    }

    /// The path, as the client sent it.
    pub fn path(&self) -> &'a str {
        self.raw.path.as_str()
    }

    /// The route pattern that matched (`/notes/{id}`).
    pub fn route(&self) -> &'a str {
        self.raw.route.as_str()
    }

    /// The query string without its `?`.
    pub fn query_string(&self) -> &'a str {
        self.raw.query.as_str()
    }

    /// The path parameter `name`, if the route's pattern has it.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.raw
            .params
            .as_slice()
            .iter()
            .find(|p| p.name.as_str() == name)
            .map(|p| p.value.as_str())
    }

    /// The path parameter `name`, parsed: a value that does not parse is the client's error
    /// (400), a pattern without the parameter the plugin's (500).
    ///
    /// # Errors
    ///
    /// As above.
    pub fn param_as<T: FromStr>(&self, name: &str) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.param(name).ok_or_else(|| {
            Error::new(format!(
                "the route {} has no path parameter {name}",
                self.route()
            ))
        })?;
        value
            .parse()
            .map_err(|e| Error::bad_request(format!("path parameter {name}: {e}")))
    }

    /// The query string, deserialized (`?limit=10` into a struct with a `limit` field).
    ///
    /// # Errors
    ///
    /// 400 when it does not decode as `T`.
    pub fn query<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_urlencoded::from_str(self.query_string())
            .map_err(|e| Error::bad_request(format!("query: {e}")))
    }

    /// The first value of header `name` (any case), if present and text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Header `name`, parsed: absent is `None`, present but not parsing is the client's error.
    ///
    /// # Errors
    ///
    /// 400 when the header does not parse as `T`.
    pub fn header_as<T: FromStr>(&self, name: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        self.header(name)
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .map_err(|e| Error::bad_request(format!("header {name}: {e}")))
            })
            .transpose()
    }

    /// Every header, in order: lowercase name and raw value.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.raw
            .headers
            .as_slice()
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
    }

    /// The body.
    pub fn body(&self) -> &'a [u8] {
        self.raw.body.as_slice()
    }

    /// The body as JSON.
    ///
    /// # Errors
    ///
    /// 400 when it does not decode as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.body()).map_err(|e| Error::bad_request(format!("body: {e}")))
    }
}

/// The response a route handler returns: a status, headers and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    /// Packed as they cross (see [`HttpResponse::headers`]).
    headers: Vec<u8>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `value` as JSON, status 200, `content-type: application/json`.
    ///
    /// # Errors
    ///
    /// When `value` cannot be encoded (a map with non-string keys).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        // Room for a small document up front: growing from nothing reallocates several times.
        let mut body = Vec::with_capacity(256);
        serde_json::to_writer(&mut body, value)
            .map_err(|e| Error::with_kind(ErrorKind::BAD_OUTPUT, e))?;
        Ok(Self::new(200)
            .header("content-type", "application/json")
            .body(body))
    }

    /// `text`, status 200, `content-type: text/plain; charset=utf-8`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(200)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into().into_bytes())
    }

    /// The same response with another status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same response with one more header. A name longer than 64 KiB or a value longer
    /// than 4 GiB is cut there (the host refuses such a header: the answer is a 500).
    #[must_use]
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Self {
        let (name, value) = (name.as_ref().as_bytes(), value.as_ref());
        let name = &name[..name.len().min(usize::from(u16::MAX))];
        let value = &value[..value.len().min(u32::MAX as usize)];
        if self.headers.is_empty() {
            self.headers.reserve(128);
        }
        self.headers
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.headers.extend_from_slice(name);
        self.headers
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.headers.extend_from_slice(value);
        self
    }

    /// The same response with this body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of header `name` (any case), if set.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        headers_in(&self.headers)
            .map_while(|h| h)
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    fn into_ffi(self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.into(),
            body: self.body.into(),
        }
    }
}

/// Runs a synchronous handler at the boundary, its panic caught (what `plugin!` writes).
#[inline]
pub fn run_route<F>(
    ctx: &Context<'_>,
    request: &HttpRequest<'_>,
    handler: F,
) -> RResult<HttpResponse, FfiError>
where
    F: FnOnce(&Context<'_>, &Request<'_>) -> Result<Response, Error>,
{
    let result = catch_unwind(AssertUnwindSafe(|| {
        handler(ctx, &Request::new(request)).map(Response::into_ffi)
    }));
    flatten(result).into()
}

/// Runs an async handler at the boundary: every poll's panic caught (what `plugin!` writes).
pub fn run_async_route<F, Fut>(
    ctx: Context<'static>,
    request: &'static HttpRequest<'static>,
    handler: F,
) -> FfiFuture<RResult<HttpResponse, FfiError>>
where
    F: FnOnce(Context<'static>, Request<'static>) -> Fut,
    Fut: Future<Output = Result<Response, Error>> + Send + 'static,
{
    let future = catch_unwind(AssertUnwindSafe(|| handler(ctx, Request::new(request))));
    async move {
        let result = match future {
            Ok(future) => match CatchUnwind(future).await {
                Ok(Ok(response)) => Ok(response.into_ffi()),
                Ok(Err(err)) => Err(err.into_ffi()),
                Err(payload) => Err(panicked(payload)),
            },
            Err(payload) => Err(panicked(payload)),
        };
        RResult::from(result)
    }
    .into_ffi()
}
