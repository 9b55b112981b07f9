//! Sending a request to a worker and reading its answer: HTTP/1.1 over loopback TCP, on
//! keep-alive connections pooled per worker (hyper's client connection, no other layer).

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The largest answer read from a worker (a worker is graft itself: its answers are bounded by
/// what its plugins write; this bounds a runaway one).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Idle connections kept per worker.
const IDLE: usize = 64;

/// The request sent to a worker: the client's, its hop-by-hop headers left out, with `extra`
/// headers (the request id, the trace context).
pub(crate) fn request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    extra: [(&'static str, HeaderValue); 2],
    body: Bytes,
) -> Request<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    let sent = request.headers_mut();
    sent.reserve(headers.len() + 2);
    for (name, value) in headers {
        // Hop-by-hop and framing headers are the connection's own, not the request's.
        let hop = matches!(
            name.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade" | "content-length"
        );
        if !hop {
            sent.append(name, value.clone());
        }
    }
    for (name, value) in extra {
        sent.insert(name, value);
    }
    request
}

/// Why a forwarded request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("connecting to the worker: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the worker's connection failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("reading the worker's answer: {0}")]
    Body(String),
}

/// A worker's pooled connections.
#[derive(Debug)]
pub(crate) struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl Pool {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection ready for a request: an idle one, or a new one.
    async fn connection(&self) -> Result<SendRequest<Body>, ForwardError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(mut sender) if !sender.is_closed() => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(ForwardError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ForwardError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn give_back(&self, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }

    /// Sends one request and reads the whole answer.
    pub(crate) async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Bytes>, ForwardError> {
        let mut sender = self.connection().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ForwardError::Http)?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(Body::new(body), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| ForwardError::Body(e.to_string()))?;
        self.give_back(sender);
        Ok(Response::from_parts(parts, body))
    }
}
