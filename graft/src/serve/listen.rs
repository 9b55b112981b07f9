//! Accepting connections: hyper's HTTP/1 server under the limits a public listener needs.
//!
//! - **A connection cap** ([`ConnLimits::max_connections`]): past it the listener stops
//!   accepting (connections wait in the kernel's backlog) instead of running out of file
//!   descriptors, which would also make the admin listener unreachable.
//! - **A header-read timeout** ([`ConnLimits::header_read_timeout`]): a connection must deliver
//!   a complete request head within it, counted from when it was accepted or answered its
//!   previous request. It cuts slowly trickled headers, and it is the idle timeout of
//!   keep-alive connections too.
//! - **A body timeout** ([`ConnLimits::body_timeout`]): a request body must arrive within it,
//!   counted from when the server first waited for it ([`BodyTimeoutError`] past it; the app
//!   answers 408).
//!
//! The header-read timeout costs no timer and no clock read per request: each connection
//! records when it went idle (accepted, or its last response produced; on a clock the sweeper
//! advances) and whether a request is being served, and one sweeper per listener closes, every
//! [`SWEEPS_PER_TIMEOUT`]th of the timeout, the connections idle for longer than it. (hyper's
//! own `header_read_timeout` resets a timer for every request: with it on, `swap-under-load.sh
//! --baseline static` printed ratios well below those without it.) A connection
//! is therefore closed between one and 1.25 timeouts after it went idle. Likewise the body
//! timeout starts a timer only when a body is not already all there: a small body that came
//! with its head costs none.
//!
//! On stop, the listener closes and every connection finishes the request it is serving, then
//! closes (hyper's graceful shutdown).

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tower::Service;

use super::arrival::{LastReceived, Stamped, Wanted};
use crate::shards::Shards;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) max_connections: usize,
    /// At the cap, accept anyway and close the connection idle the longest to make room (the
    /// admin plane: idle connections, with a token or without, cannot lock operators out);
    /// otherwise stop accepting until a connection closes (the app: back-pressure).
    pub(crate) evict_idle_at_cap: bool,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_timeout: Duration,
}

/// How often, per timeout, the sweeper looks for idle connections.
const SWEEPS_PER_TIMEOUT: u32 = 4;

/// How long to wait before accepting again after `accept` failed (out of file descriptors,
/// usually): a connection closing frees one meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the sweeper knows of one connection.
struct Tracked {
    /// Requests being served (0 or 1 on HTTP/1 without pipelining).
    busy: AtomicUsize,
    /// When it last went idle, in milliseconds since the listener started.
    idle_since_ms: AtomicU64,
    /// Closes it: at once (idle), or after its request (`graceful`, on stop).
    close: Notify,
    graceful: AtomicBool,
    /// The listener's coarse clock ([`Connections::coarse_ms`]), held by each connection so
    /// that a request ending reads it without touching anything every connection shares.
    clock: Arc<AtomicU64>,
}

/// The connections of one listener, for the sweeper.
struct Connections {
    started: Instant,
    /// Milliseconds since `started`, as of the sweeper's last tick: the clock requests read,
    /// which costs them no system call.
    coarse_ms: Arc<AtomicU64>,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Connections {
    fn now_ms(&self) -> u64 {
        self.coarse_ms.load(Ordering::Relaxed)
    }

    fn track(&self) -> (u64, Arc<Tracked>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
            graceful: AtomicBool::new(false),
            clock: Arc::clone(&self.coarse_ms),
        });
        self.lock().insert(id, Arc::clone(&tracked));
        (id, tracked)
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connections idle (no request being served) for longer than `timeout`.
    fn sweep(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.coarse_ms.store(now, Ordering::Relaxed);
        for tracked in self.lock().values() {
            let idle_since = tracked.idle_since_ms.load(Ordering::Relaxed);
            if tracked.busy.load(Ordering::Relaxed) == 0
                && now.saturating_sub(idle_since) > timeout_ms
            {
                tracked.close.notify_one();
            }
        }
    }

    /// Closes the connection idle (no request being served) the longest, if any is.
    fn close_longest_idle(&self) {
        let open = self.lock();
        let idle = open
            .values()
            .filter(|t| t.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|t| t.idle_since_ms.load(Ordering::Relaxed));
        if let Some(tracked) = idle {
            tracked.close.notify_one();
        }
    }

    /// Asks every connection to finish the request it is serving and close.
    fn stop_all(&self) {
        for tracked in self.lock().values() {
            tracked.graceful.store(true, Ordering::Relaxed);
            tracked.close.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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
struct Service1 {
    /// This connection's handle on the router. hyper calls the service by `&self`, the router
    /// wants `&mut self` (it does not keep the borrow): a `RefCell` lends it, where a clone per
    /// request would touch a reference count every connection shares.
    router: RefCell<Router>,
    tracked: Arc<Tracked>,
    body_timeout: Duration,
    direct: Option<Arc<Direct>>,
    /// When this connection's last bytes arrived.
    received: Arc<LastReceived>,
}

/// A request being served: the router's future (or the direct handler's), and the connection
/// marked busy until it is done (or dropped).
struct Serving {
    response: Answer,
    tracked: Arc<Tracked>,
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
        match &mut self.response {
            Answer::Router(future) => Pin::new(future).poll(cx),
            Answer::Direct(future) => future.as_mut().poll(cx).map(Ok),
        }
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
        let timeout = self.body_timeout;
        let mut request = request.map(|body| Body::new(TimedBody::new(body, timeout)));
        if let Some(arrived) = self.received.arrived() {
            request.extensions_mut().insert(arrived);
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
        }
    }
}

/// Serves `router` on `listener` (and, for a request none of its paths match, `direct`) until
/// `stop` turns true, then lets open connections finish their requests. Each connection is
/// served from accept to close by one of `shards` in turn ([`Shards::none`]: on the runtime
/// this runs on). While `stamps` says so, requests carry when their bytes arrived (see
/// `arrival.rs`).
pub(crate) async fn serve(
    listener: TcpListener,
    shards: Arc<Shards>,
    router: Router,
    direct: Option<Arc<Direct>>,
    stamps: Option<Wanted>,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) {
    let http = hyper::server::conn::http1::Builder::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Arc::new(Connections {
        started: Instant::now(),
        coarse_ms: Arc::new(AtomicU64::new(0)),
        next_id: AtomicU64::new(0),
        open: Mutex::default(),
    });
    let sweeper = tokio::spawn(sweep(
        Arc::clone(&connections),
        limits.header_read_timeout,
        stop.clone(),
    ));
    let mut tasks = JoinSet::new();
    let acquire = |slots: &Arc<Semaphore>, stop: &watch::Receiver<bool>| {
        let (slots, stop) = (Arc::clone(slots), stop.clone());
        async move {
            tokio::select! {
                slot = slots.acquire_owned() => Some(slot.expect("the semaphore is never closed")),
                () = stopped(stop) => None,
            }
        }
    };
    loop {
        let early = if limits.evict_idle_at_cap {
            None
        } else {
            let Some(slot) = acquire(&slots, &stop).await else {
                break;
            };
            Some(slot)
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stopped(stop.clone()) => break,
        };
        let slot = match early {
            Some(slot) => slot,
            None => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    connections.close_longest_idle();
                    let Some(slot) = acquire(&slots, &stop).await else {
                        break;
                    };
                    slot
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (id, tracked) = connections.track();
        let (router, direct, stamps, http) =
            (router.clone(), direct.clone(), stamps.clone(), http.clone());
        let body_timeout = limits.body_timeout;
        let connections = Arc::clone(&connections);
        // Taken off this runtime's I/O driver and registered with its shard's there (once per
        // connection; the admin plane's, without shards, come back to this one).
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "could not hand a connection to an app thread");
                connections.forget(id);
                continue;
            }
        };
        // The connection is polled on every wake-up, the close signal only when notified: one
        // `Notify` per connection carries both the sweeper's close and the listener's stop, so
        // serving a request touches nothing other connections share.
        let serving = async move {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "an app thread could not take a connection");
                    connections.forget(id);
                    return;
                }
            };
            let (stream, received) = Stamped::new(stream, stamps);
            let service = Service1 {
                router: RefCell::new(router),
                tracked: Arc::clone(&tracked),
                body_timeout,
                direct,
                received,
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                biased;
                result = connection.as_mut() => result,
                () = tracked.close.notified() => {
                    if tracked.graceful.load(Ordering::Relaxed) {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
            connections.forget(id);
            drop(slot);
        };
        match shards.next() {
            Some(shard) => tasks.spawn_on(serving, shard),
            None => tasks.spawn(serving),
        };
        // Reap the tasks that ended, so the set does not grow with every connection served.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    connections.stop_all();
    while tasks.join_next().await.is_some() {}
    sweeper.abort();
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

/// Closes idle connections until `stop`.
async fn sweep(connections: Arc<Connections>, timeout: Duration, stop: watch::Receiver<bool>) {
    let every = (timeout / SWEEPS_PER_TIMEOUT).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => connections.sweep(timeout),
            () = stopped(stop.clone()) => return,
        }
    }
}

/// Completes once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
