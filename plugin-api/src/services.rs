//! Contracts the host provides: import them like any contract.
//!
//! `graft serve` provides [`HttpFetchV1`], an outbound HTTP client: its connection pool lives
//! in the host and survives every patch; it calls only the hosts `graft.toml` allows
//! (`[http_client] allow`), within connect and total timeouts and the request's deadline, reads
//! at most a bounded response, and sends the request's `traceparent` and `x-request-id` on.
//!
//! ```ignore
//! use graft_api::services::{FetchRequest, HttpFetchV1};
//!
//! graft_api::plugin! {
//!     name: "preview",
//!     version: env!("CARGO_PKG_VERSION"),
//!     imports: { FETCH: HttpFetchV1 },
//!     exports: {},
//!     async_routes: { GET "/preview" => preview },
//! }
//!
//! async fn preview(ctx: Context<'static>, _: Request<'static>) -> Result<Response, Error> {
//!     let page = ctx.call_async(FETCH, FetchRequest::get("http://upstream/page")).await??;
//!     Ok(Response::text(page.text()))
//! }
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Error;

crate::contract! {
    /// An HTTP request to the outside, made by the host's client.
    pub struct HttpFetchV1 = "graft.http.fetch@1":
        json async fn(FetchRequest) -> Result<FetchResponse, FetchError>;
}

/// A request to the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// `http://host:port/path?query` (or `https`).
    pub url: String,
    /// Headers to send (the host adds `traceparent` and `x-request-id`).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body to send.
    #[serde(default)]
    pub body: Vec<u8>,
    /// A total timeout shorter than the host's, if any.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl FetchRequest {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// The same request with one more header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The answer from the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The status code.
    pub status: u16,
    /// The headers, in order (values that are not text are left out).
    pub headers: Vec<(String, String)>,
    /// The body, at most the host's `max_response_bytes`.
    pub body: Vec<u8>,
}

impl FetchResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Errors
    ///
    /// When it does not decode as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::new(format!("upstream body: {e}")))
    }

    /// Header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a fetch did not get an answer: typed, so a plugin matches on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "error")]
pub enum FetchError {
    /// `graft.toml`'s `[http_client] allow` does not list the URL's host.
    NotAllowed {
        /// The host (and port) refused.
        host: String,
    },
    /// The request is malformed (URL, method, header).
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// No connection could be made.
    Connect {
        /// Why.
        message: String,
    },
    /// No complete answer within the timeout (or the request's deadline).
    Timeout {
        /// The timeout that ran out.
        after_ms: u64,
    },
    /// The answer's body is larger than the host accepts.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// Anything else that failed on the way.
    Failed {
        /// What.
        message: String,
    },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAllowed { host } => write!(f, "the host's allow-list does not list {host}"),
            Self::InvalidRequest { message } => write!(f, "invalid request: {message}"),
            Self::Connect { message } => write!(f, "could not connect: {message}"),
            Self::Timeout { after_ms } => write!(f, "no answer within {after_ms} ms"),
            Self::TooLarge { limit } => write!(f, "the answer is larger than {limit} bytes"),
            Self::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

impl std::error::Error for FetchError {}
