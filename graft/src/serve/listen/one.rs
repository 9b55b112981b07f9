//! Serving one connection: hyper's HTTP/1 connection over the router, the connection marked
//! busy while a request is served, a body timeout, and moving the connection elsewhere between
//! two requests (see [`serve_one`]).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::Service;

use super::connections::Tracked;
use crate::serve::arrival::{LastReceived, Stamped, Wanted};
use crate::serve::conn::{Conn, Ending, Tracking};

/// What takes the requests none of the router's own routes match, called directly rather than
/// as the router's fallback: the routes plugins declare. A request to those skips the router's
/// layers (its path lookup, parameter extensions, two boxed services), which cost about a
/// tenth of a small request.
pub(crate) struct Direct {
    /// The router's own paths.
    pub(crate) configured: matchit::Router<()>,
    /// Serves one request.
    #[allow(clippy::type_complexity)]
    pub(crate) serve:
        Box<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>,
}

/// The router, as hyper calls it for one connection: marks the connection busy while a request
/// is served.
pub(super) struct Service1 {
    /// This connection's handle on the router. hyper calls the service by `&self`, the router
    /// wants `&mut self` (it does not keep the borrow): a `RefCell` lends it, where a clone per
    /// request would touch a reference count every connection shares.
    router: RefCell<Router>,
    tracked: Arc<Tracked>,
    body_timeout: Duration,
    direct: Option<Arc<Direct>>,
    /// When this connection's last bytes arrived.
    received: Arc<LastReceived>,
    /// In a worker serving the connection for its front: where the connection stands (see
    /// `conn.rs`).
    tracking: Option<Tracking>,
}

impl Service1 {
    /// The service for one connection (read stamped while `stamps` says so), and the
    /// connection.
    pub(super) fn new(
        stream: TcpStream,
        stamps: Option<Wanted>,
        router: Router,
        tracked: Arc<Tracked>,
        body_timeout: Duration,
        direct: Option<Arc<Direct>>,
        tracking: Option<Tracking>,
    ) -> (Stamped, Self) {
        let (stream, received) = Stamped::new(stream, stamps);
        let service = Self {
            router: RefCell::new(router),
            tracked,
            body_timeout,
            direct,
            received,
            tracking,
        };
        (stream, service)
    }
}

/// A request being served: the router's future (or the direct handler's), and the connection
/// marked busy until it is done (or dropped).
pub(super) struct Serving {
    response: Answer,
    tracked: Arc<Tracked>,
    tracking: Option<Tracking>,
}

// The router's future stays inline, as it was before plugins had routes: boxing it would cost
// every `[[route]]` request an allocation.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Router(RouteFuture<Infallible>),
    Direct(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Serving {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match &mut self.response {
            Answer::Router(future) => ready!(Pin::new(future).poll(cx)),
            Answer::Direct(future) => Ok(ready!(future.as_mut().poll(cx))),
        };
        Poll::Ready(match &self.tracking {
            Some(tracking) => answer.map(|mut answer| {
                tracking.done();
                tracking.stamp(answer.headers_mut());
                let tracking = tracking.clone();
                answer.map(|body| Body::new(Ending::new(body, tracking)))
            }),
            None => answer,
        })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let now = self.tracked.clock.load(Ordering::Relaxed);
        self.tracked.idle_since_ms.store(now, Ordering::Relaxed);
        self.tracked.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::service::Service<Request<Incoming>> for Service1 {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Serving;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.tracked.busy.fetch_add(1, Ordering::Relaxed);
        self.tracked.served.store(true, Ordering::Relaxed);
        let timeout = self.body_timeout;
        let mut request = request.map(|body| Body::new(TimedBody::new(body, timeout)));
        if let Some(arrived) = self.received.arrived() {
            request.extensions_mut().insert(arrived);
        }
        if let Some(tracking) = &self.tracking {
            if !tracking.admit() {
                // Not served here: the connection goes back with this request (`serve_one`).
                return Serving {
                    response: Answer::Direct(Box::pin(std::future::pending())),
                    tracked: Arc::clone(&self.tracked),
                    tracking: None,
                };
            }
            request.extensions_mut().insert(tracking.clone());
        }
        let response = match &self.direct {
            Some(direct) if direct.configured.at(request.uri().path()).is_err() => {
                Answer::Direct((direct.serve)(request))
            }
            _ => Answer::Router(self.router.borrow_mut().call(request)),
        };
        Serving {
            response,
            tracked: Arc::clone(&self.tracked),
            tracking: self.tracking.clone(),
        }
    }
}

/// How one connection's serving ended.
pub(super) enum Outcome {
    Closed,
    /// Left between two requests, to be served elsewhere.
    Left(TcpStream, Bytes),
}

/// When a connection leaves to be served elsewhere, at its next request boundary.
pub(super) struct Leave {
    /// Changes when it may have to.
    pub(super) changes: watch::Receiver<u64>,
    /// Whether it has to, asked at a boundary after a change.
    pub(super) now: Box<dyn Fn() -> bool + Send>,
}

/// A connection hyper let go of between two requests: the socket, and the bytes read and not
/// parsed (those of the connection's own buffer, then hyper's).
fn left(parts: hyper::server::conn::http1::Parts<TokioIo<Conn>, Service1>) -> Outcome {
    let (stamped, mut unread) = parts.io.into_inner().into_parts();
    if !parts.read_buf.is_empty() {
        let mut joined = bytes::BytesMut::from(&unread[..]);
        joined.extend_from_slice(&parts.read_buf);
        unread = joined.freeze();
    }
    Outcome::Left(stamped.into_inner(), unread)
}

/// Serves one connection until it closes, or leaves between two requests when `leave` says
/// so: hyper is told to shut down only while no request is being served (on a request in
/// flight it would answer `connection: close`), and gives back the socket and the bytes it
/// read but did not parse. In a worker (`tracking`), a request the worker must not serve any
/// more makes the connection leave at once, with that request's bytes and nothing written.
pub(super) async fn serve_one(
    conn: Conn,
    service: Service1,
    http: &hyper::server::conn::http1::Builder,
    mut leave: Option<Leave>,
) -> Outcome {
    let tracked = Arc::clone(&service.tracked);
    let tracking = service.tracking.clone();
    let mut connection = http.serve_connection(TokioIo::new(conn), service);
    // Asked to leave at the next boundary; leaving (hyper told to shut down); closing.
    let (mut wanted, mut leaving, mut closing) = (false, false, false);
    loop {
        let changed = async {
            match leave.as_mut() {
                Some(leave) => leave.changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let at_boundary = |wanted: bool| wanted && tracked.busy.load(Ordering::Acquire) == 0;
        let polled = std::future::poll_fn(|cx| match connection.poll_without_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            // Something to do between polls: a request to give back, or a boundary reached.
            Poll::Pending
                if tracking.as_ref().is_some_and(Tracking::replaying)
                    || (at_boundary(wanted) && !leaving && !closing) =>
            {
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        });
        tokio::select! {
            biased;
            result = polled => match result {
                Some(Err(error)) => {
                    tracing::debug!(%error, "connection ended with an error");
                    return Outcome::Closed;
                }
                Some(Ok(())) if !leaving => return Outcome::Closed,
                Some(Ok(())) => {
                    return left(connection.into_parts());
                }
                None if tracking.as_ref().is_some_and(Tracking::replaying) => {
                    // Nothing was written for the request that started: it goes back whole.
                    let parts = connection.into_parts();
                    let (stamped, replay) = parts.io.into_inner().into_replay();
                    return Outcome::Left(stamped.into_inner(), replay);
                }
                None => {}
            },
            () = tracked.close.notified(), if !closing => {
                if !tracked.graceful.load(Ordering::Relaxed) {
                    return Outcome::Closed;
                }
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                (closing, leaving) = (true, false);
            }
            open = changed, if !leaving && !closing => {
                if open {
                    wanted = true;
                } else {
                    leave = None;
                }
            }
        }
        if at_boundary(wanted) && !leaving && !closing {
            wanted = false;
            if leave.as_ref().is_some_and(|leave| (leave.now)()) {
                if !tracked.served.load(Ordering::Relaxed) {
                    // No request yet: hyper has written nothing, and does not count itself
                    // idle before its first request (told to shut down, it would answer that
                    // one with `connection: close`). The socket goes as it is, with what hyper
                    // read of a request.
                    return left(connection.into_parts());
                }
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                leaving = true;
            }
        }
    }
}

/// A request body that must arrive within a timeout, counted from when it was first waited
/// for: a body already all there starts no timer.
struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
        }
    }
}

/// A request body that did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within body_timeout_ms")]
pub(crate) struct BodyTimeoutError;

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Error = hyper::Error> + Unpin,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => return Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {}
        }
        let timeout = this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeoutError.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
