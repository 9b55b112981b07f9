//! The outbound HTTP client `graft serve` provides plugins, as the contract
//! [`HttpFetchV1`].
//!
//! One `reqwest` client for the life of the server: its connection pool lives in the host, so
//! connections to an upstream are reused across patches (a plugin's library, unloaded at a
//! patch, could not keep one). A fetch runs on the server's runtime, polled by the calling
//! plugin's future. It may reach only the hosts `[http_client] allow` lists; it is bounded by
//! the connect timeout, the total timeout (or the plugin's shorter one, or the request's
//! deadline, whichever comes first) and `max_response_bytes`; and it sends the request's
//! `traceparent` and `x-request-id` on.

use std::sync::Arc;
use std::time::Duration;

use graft_api::services::{FetchError, FetchRequest, FetchResponse, HttpFetchV1};
use graft_host::HostBuilder;

pub use crate::config::HttpClientConfig;

/// Why the host services could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServicesError {
    /// The HTTP client could not start (its TLS backend).
    #[error("starting the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The host refused the service.
    #[error(transparent)]
    Provide(#[from] graft_host::ProvideError),
}

/// The client and its rules.
#[derive(Debug)]
pub struct Outbound {
    client: reqwest::Client,
    config: HttpClientConfig,
}

impl Outbound {
    /// A client with these settings.
    ///
    /// # Errors
    ///
    /// [`ServicesError::Client`] when the TLS backend cannot start.
    pub fn new(config: HttpClientConfig) -> Result<Self, ServicesError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ServicesError::Client)?;
        Ok(Self { client, config })
    }

    /// Provides [`HttpFetchV1`] to the host's plugins.
    ///
    /// # Errors
    ///
    /// [`ServicesError::Provide`] when the host provides the contract already.
    pub fn provide(self: &Arc<Self>, builder: HostBuilder) -> Result<HostBuilder, ServicesError> {
        let this = Arc::clone(self);
        builder
            .provide_async::<HttpFetchV1, _>(move |request| {
                // Read now, on the calling plugin's thread: the future runs in its polls.
                let context = graft_host::current_request();
                let this = Arc::clone(&this);
                Box::pin(async move { Ok(this.fetch(request, context.as_deref()).await) })
            })
            .map_err(ServicesError::Provide)
    }

    /// Whether `host` (with `port`) is allowed.
    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        self.config
            .allow
            .iter()
            .any(|allowed| match allowed.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => {
                    h.eq_ignore_ascii_case(host)
                        && port.map(|port| port.to_string()).as_deref() == Some(p)
                }
                _ => allowed.eq_ignore_ascii_case(host),
            })
    }

    /// One fetch, under the rules.
    pub async fn fetch(
        &self,
        request: FetchRequest,
        context: Option<&graft_host::RequestContext>,
    ) -> Result<FetchResponse, FetchError> {
        let invalid = |message: String| FetchError::InvalidRequest { message };
        let url = reqwest::Url::parse(&request.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "url scheme {} (http or https)",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_or_known_default();
        if !self.allows(&host, port) {
            let host = match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            };
            return Err(FetchError::NotAllowed { host });
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| invalid(format!("method {:?}", request.method)))?;
        let mut timeout = Duration::from_millis(self.config.timeout_ms);
        if let Some(ms) = request.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        if let Some(left) = context.and_then(graft_host::RequestContext::remaining) {
            timeout = timeout.min(left);
        }
        let mut builder = self.client.request(method, url).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(context) = context {
            builder = builder
                .header(crate::api::TRACEPARENT_HEADER, context.trace.traceparent())
                .header(crate::api::REQUEST_ID_HEADER, &context.id);
        }
        let timed_out = || FetchError::Timeout {
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let failed = |error: reqwest::Error| {
            if error.is_timeout() {
                timed_out()
            } else if error.is_connect() {
                FetchError::Connect {
                    message: error_chain(&error),
                }
            } else if error.is_builder() {
                invalid(error_chain(&error))
            } else {
                FetchError::Failed {
                    message: error_chain(&error),
                }
            }
        };
        let mut response = builder.body(request.body).send().await.map_err(failed)?;
        let limit = self.config.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err(FetchError::TooLarge { limit });
        }
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchResponse {
            status,
            headers,
            body,
        })
    }
}

/// An error and its causes, on one line (reqwest's own message says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    graft_host::bounded::truncate(&text, 512).into_owned()
}
