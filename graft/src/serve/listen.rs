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
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tower::Service;

use super::arrival::{LastReceived, Stamped, Wanted};
use super::conn::{Conn, Ending, Tracking};
use crate::shards::Shards;
use crate::worker::{Elsewhere, Moving};

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
    /// New, with a sweeper closing those idle longer than `timeout` until `stop`.
    fn start(timeout: Duration, stop: watch::Receiver<bool>) -> Arc<Self> {
        let connections = Arc::new(Self {
            started: Instant::now(),
            coarse_ms: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
        });
        tokio::spawn(sweep(Arc::clone(&connections), timeout, stop));
        connections
    }

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
    /// In a worker serving the connection for its front: where the connection stands (see
    /// `conn.rs`).
    tracking: Option<Tracking>,
}

impl Service1 {
    /// The service for one connection (read stamped while `stamps` says so), and the
    /// connection.
    fn new(
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
struct Serving {
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

/// What the app's listener serves with.
pub(crate) struct App {
    pub(crate) router: Router,
    pub(crate) direct: Option<Arc<Direct>>,
    /// Requests carry when their bytes arrived while this says so (see `arrival.rs`).
    pub(crate) stamps: Option<Wanted>,
    pub(crate) elsewhere: Option<Arc<dyn Elsewhere>>,
}

/// How one connection's serving ended.
enum Outcome {
    Closed,
    /// Left between two requests, to be served elsewhere.
    Left(TcpStream, Bytes),
}

/// When a connection leaves to be served elsewhere, at its next request boundary.
pub(crate) struct Leave {
    /// Changes when it may have to.
    pub(crate) changes: watch::Receiver<u64>,
    /// Whether it has to, asked at a boundary after a change.
    pub(crate) now: Box<dyn Fn() -> bool + Send>,
}

/// Serves one connection until it closes, or leaves between two requests when `leave` says
/// so: hyper is told to shut down only while no request is being served (on a request in
/// flight it would answer `connection: close`), and gives back the socket and the bytes it
/// read but did not parse. In a worker (`tracking`), a request the worker must not serve any
/// more makes the connection leave at once, with that request's bytes and nothing written.
async fn serve_one(
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
                    let parts = connection.into_parts();
                    let (stamped, mut unread) = parts.io.into_inner().into_parts();
                    if !parts.read_buf.is_empty() {
                        let mut joined = bytes::BytesMut::from(&unread[..]);
                        joined.extend_from_slice(&parts.read_buf);
                        unread = joined.freeze();
                    }
                    return Outcome::Left(stamped.into_inner(), unread);
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
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                leaving = true;
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true, then lets open connections finish
/// their requests. Each connection is served from accept to close by one of `shards` in turn
/// ([`Shards::none`]: on the runtime this runs on), unless it is served elsewhere
/// ([`Elsewhere`]: it goes there when accepted, and at a request boundary whenever that opens).
pub(crate) async fn serve(
    listener: TcpListener,
    shards: Arc<Shards>,
    app: App,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
) {
    let http = Arc::new(hyper::server::conn::http1::Builder::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Connections::start(limits.header_read_timeout, stop.clone());
    let (back, mut returned) = mpsc::unbounded_channel::<Moving>();
    if let Some(elsewhere) = &app.elsewhere {
        elsewhere.attach(back.clone());
    }
    let mut tasks = JoinSet::new();
    loop {
        // A connection back from a worker holds its place under the cap already: it is taken
        // while the listener waits for room for a new one.
        let moving = tokio::select! {
            biased;
            Some(moving) = returned.recv() => moving,
            accepted = accept(&listener, &slots, limits.evict_idle_at_cap, &connections) => {
                match accepted {
                    Some(moving) => moving,
                    None => continue,
                }
            }
            () = stopped(stop.clone()) => break,
        };
        let moving = match &app.elsewhere {
            Some(elsewhere) if elsewhere.open() => match elsewhere.take(moving).await {
                Some(moving) => moving,
                None => continue,
            },
            _ => moving,
        };
        let serving = serve_here(
            moving,
            &app,
            Arc::clone(&connections),
            Arc::clone(&http),
            limits.body_timeout,
            back.clone(),
        );
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
}

/// Accepts the next connection under the cap (`None`: accept failed, try again): room first,
/// then the connection; or, at the cap with `evict_idle`, the connection first, then the room
/// of the connection idle the longest. Cancelled while it waits, it holds nothing (an accepted
/// connection is never waited on for room but with `evict_idle`, the admin plane's, which has
/// no connections coming back to race with).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    evict_idle: bool,
    connections: &Connections,
) -> Option<Moving> {
    let early = if evict_idle {
        None
    } else {
        Some(
            Arc::clone(slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        )
    };
    let stream = match listener.accept().await {
        Ok((stream, _)) => stream,
        Err(error) => {
            tracing::warn!(%error, "accept failed; retrying");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let permit = match early {
        Some(permit) => permit,
        None => match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                connections.close_longest_idle();
                Arc::clone(slots)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        },
    };
    // Taken off this runtime's I/O driver, to be registered with the one that serves it (once
    // per connection).
    match stream.into_std() {
        Ok(stream) => Some(Moving {
            stream,
            unread: Bytes::new(),
            permit,
        }),
        Err(error) => {
            tracing::warn!(%error, "could not hand a connection to an app thread");
            None
        }
    }
}

/// Serves a connection of the front's listener: until it closes, or until it leaves for a
/// worker (then it goes back through `back`, to be handed over).
fn serve_here(
    moving: Moving,
    app: &App,
    connections: Arc<Connections>,
    http: Arc<hyper::server::conn::http1::Builder>,
    body_timeout: Duration,
    back: mpsc::UnboundedSender<Moving>,
) -> impl Future<Output = ()> + Send + 'static {
    let (id, tracked) = connections.track();
    let (router, direct, stamps) = (app.router.clone(), app.direct.clone(), app.stamps.clone());
    let leave = app.elsewhere.as_ref().map(|elsewhere| {
        let open = Arc::clone(elsewhere);
        Leave {
            changes: elsewhere.changes(),
            now: Box::new(move || open.open()),
        }
    });
    async move {
        let Moving {
            stream,
            unread,
            permit,
        } = moving;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "an app thread could not take a connection");
                connections.forget(id);
                return;
            }
        };
        let (stream, service) =
            Service1::new(stream, stamps, router, tracked, body_timeout, direct, None);
        let outcome = serve_one(Conn::new(stream, unread, None), service, &http, leave).await;
        connections.forget(id);
        if let Outcome::Left(stream, unread) = outcome {
            match stream.into_std() {
                Ok(stream) => {
                    let _ = back.send(Moving {
                        stream,
                        unread,
                        permit,
                    });
                }
                Err(error) => tracing::warn!(%error, "a connection could not leave its app thread"),
            }
        }
    }
}

/// A connection a worker serves for its front (`worker/direct.rs`): its slot in the shared
/// states, the socket and the bytes read and not parsed.
#[derive(Debug)]
pub(crate) struct Given {
    pub(crate) slot: u32,
    pub(crate) stream: std::net::TcpStream,
    pub(crate) unread: Bytes,
    pub(crate) tracking: Tracking,
}

/// How a connection a worker served ended.
#[derive(Debug)]
pub(crate) enum GivenEnd {
    /// Closed (or its answer taken over by the front).
    Closed { slot: u32 },
    /// Back to the front between two requests, with the bytes read and not parsed.
    Returned { slot: u32, unread: Bytes },
}

/// Serves the connections the front gives a worker (`given`) until `stop`: each until it
/// closes or, once `recall` changes, until its next request boundary; how each ended goes to
/// `ended`. `watch` is told of each connection's requests, for deadlines (see `direct.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_given(
    mut given: mpsc::UnboundedReceiver<Given>,
    router: Router,
    direct: Option<Arc<Direct>>,
    limits: ConnLimits,
    recall: watch::Receiver<u64>,
    ended: mpsc::UnboundedSender<GivenEnd>,
    stop: watch::Receiver<bool>,
) {
    let http = Arc::new(hyper::server::conn::http1::Builder::new());
    let connections = Connections::start(limits.header_read_timeout, stop.clone());
    let mut tasks = JoinSet::new();
    loop {
        let given = tokio::select! {
            Some(given) = given.recv() => given,
            () = stopped(stop.clone()) => break,
            else => break,
        };
        let (id, tracked) = connections.track();
        let (router, direct, http) = (router.clone(), direct.clone(), Arc::clone(&http));
        let (connections, ended) = (Arc::clone(&connections), ended.clone());
        let mut recall = recall.clone();
        recall.mark_unchanged();
        let body_timeout = limits.body_timeout;
        tasks.spawn(async move {
            let Given {
                slot,
                stream,
                unread,
                tracking,
            } = given;
            let Ok(stream) = TcpStream::from_std(stream) else {
                let _ = ended.send(GivenEnd::Closed { slot });
                connections.forget(id);
                return;
            };
            let (stream, service) = Service1::new(
                stream,
                None,
                router,
                tracked,
                body_timeout,
                direct,
                Some(tracking.clone()),
            );
            let leave = Leave {
                changes: recall,
                now: Box::new(|| true),
            };
            let conn = Conn::new(stream, unread, Some(tracking));
            let outcome = serve_one(conn, service, &http, Some(leave)).await;
            connections.forget(id);
            let _ = ended.send(match outcome {
                Outcome::Closed => GivenEnd::Closed { slot },
                Outcome::Left(_, unread) => GivenEnd::Returned { slot, unread },
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    connections.stop_all();
    while tasks.join_next().await.is_some() {}
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
