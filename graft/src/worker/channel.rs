//! The channel between the front and a worker: a Unix socket in the worker's directory, one
//! connection carrying many requests at once, as length-prefixed binary frames.
//!
//! Measured first, on 2 cores (`swap-under-load --isolation all`, the foo service, ratio =
//! isolated / in-process throughput): HTTP/1.1 on loopback TCP, hyper on both sides, 0.385;
//! these frames on a Unix socket, 0.47 to 0.53; calls instead of HTTP requests for `[[route]]`s
//! (below), 0.455 to 0.552 side by side. Each request is one frame appended to the connection's
//! buffer; a writer task sends whatever accumulated in one `write`, a reader task reads answers
//! in large chunks and hands each to its waiting request by id.
//!
//! What costs is wake-ups, not bytes: each batch wakes the worker and then the front's reader,
//! and on this 2-core VM a wake-up on the other core costs far more than one on the same core
//! (one request at a time: 79 µs a round trip isolated against 57 in process; 48 µs with
//! wrk, front and worker pinned to one core). So the channel makes batches as large as it can:
//! one connection, not two (requests spread over two made each write and each read carry half
//! as many); the worker writes its answers as soon as the calls of a read have run, without the
//! yield the front's writer makes (which cost the worker a driver poll and often a wake-up of its
//! other thread per batch); frames are copied out of a read buffer that is reused, not split
//! off it (see [`next_frame`]). Side by side, 8 rounds of 3 s, the
//! previous channel against this one: 0.662 → 0.697 of in-process (plain wrk), 0.611 → 0.653
//! (wrk checking every answer, as `swap-under-load` does). The connection runs on the front's
//! first app thread (`crate::shards`) and, in the worker, on a thread of its own with a runtime
//! of its own (on the same CPU when the front's threads are pinned), so its calls never move
//! between the worker's threads. One connection per app thread, each with its worker thread on
//! its CPU, was measured and dropped: see [`Channel`].
//!
//! A request for a `[[route]]` export is a *call*: the route's number, the request's context and
//! its body, which the worker hands straight to the route's call (no HTTP request is made, no
//! router walked: the front has routed it). A request for a plugin's own route is an HTTP
//! request, which the worker routes as its server would.
//!
//! A frame is `u32 length` (of what follows), `u64 id`, then a request: `u8` kind, the request's
//! context (request id, `u128` trace id, `u64` span id, `u8` flags, `u64` microseconds left
//! before its deadline or `u64::MAX`), then for an HTTP request (kind 0) method, path and
//! query, headers, and for a call (1) `u32` route; then the body. Or an answer: status,
//! headers, body. Strings and bodies are a
//! `u32` length and their bytes; counts are `u32`. All little-endian. A connection that ends
//! fails the requests it carried (the worker crashed: see `mod.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::Router;
use graft_host::{RequestContext, TraceContext};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt as _;

use super::direct::FrontLink;
use super::states::MAX_SLOTS;
use crate::shards::{run_thread, Shards};

/// The largest frame either side accepts (a worker is graft itself; this bounds a broken one).
const MAX_FRAME: usize = 64 << 20;

/// A connection's hello (its first 4 bytes, front to worker) for a thread on any CPU.
const ANY_CPU: u32 = u32::MAX;

/// The hello of a link (`link.rs`), not a channel connection.
const LINK: u32 = u32::MAX - 1;

/// Why a request sent over the channel got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelError {
    #[error("connecting to the worker: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the worker's connection ended before it answered")]
    Closed,
}

type Waiting = oneshot::Sender<Response<Bytes>>;

/// One connection, front side.
#[derive(Debug, Default)]
struct Connection {
    /// Frames not written yet.
    outgoing: Mutex<Vec<u8>>,
    wake_writer: Notify,
    /// Requests sent and not answered, by id; `None` once the connection ended.
    waiting: Mutex<Option<HashMap<u64, Waiting>>>,
    /// Set when the connection ended: its writer then ends too.
    ended: AtomicBool,
}

impl Connection {
    fn front() -> Self {
        Self {
            waiting: Mutex::new(Some(HashMap::new())),
            ..Self::default()
        }
    }
}

/// The front's side of a worker's channel: one connection, so that each system call carries
/// as many frames as possible, run by the front's first app thread ([`Shards`]) and served in
/// the worker by a thread on the same CPU when that one is pinned.
///
/// Measured against one connection per app thread (each its own worker thread, on its CPU):
/// the requests of 32 client connections spread over two channel connections made batches of
/// one or two frames (the front's threads woke 1.6 times a request, against 0.27 with the
/// pair of single-thread processes that inspired it), and isolated throughput fell from
/// 82k-88k to 61k-64k requests/s.
#[derive(Debug)]
pub(crate) struct Channel {
    connection: Arc<Connection>,
    ids: AtomicU64,
}

impl Channel {
    /// Connects to the worker's socket; the connection runs on the first shard if there is one
    /// (else on the runtime this is called on).
    pub(crate) async fn connect(path: &Path, shards: &Shards) -> Result<Self, ChannelError> {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(ChannelError::Connect)?;
        // The first app thread runs the connection, if there are any.
        let shard = (shards.len() > 0).then_some(0);
        // The hello: which CPU the worker's thread for this connection runs on.
        let cpu = shard
            .and_then(|shard| shards.cpu(shard))
            .and_then(|cpu| u32::try_from(cpu).ok())
            .unwrap_or(ANY_CPU);
        stream
            .write_all(&cpu.to_le_bytes())
            .await
            .map_err(ChannelError::Connect)?;
        let connection = Arc::new(Connection::front());
        let runs = Arc::clone(&connection);
        match shard {
            Some(shard) => {
                // Registered with the shard's I/O driver, on the shard.
                let stream = stream.into_std().map_err(ChannelError::Connect)?;
                shards.handle(shard).spawn(async move {
                    match UnixStream::from_std(stream) {
                        Ok(stream) => run_front(runs, stream),
                        Err(_) => fail_all(&runs),
                    }
                });
            }
            None => run_front(runs, stream),
        }
        Ok(Self {
            connection,
            ids: AtomicU64::new(0),
        })
    }

    /// Connects a link to the worker's socket, for client connections it serves itself, with
    /// `slots` connection states.
    pub(crate) async fn link(
        path: &Path,
        slots: usize,
        generation: u64,
    ) -> Result<FrontLink, ChannelError> {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(ChannelError::Connect)?;
        stream
            .write_all(&LINK.to_le_bytes())
            .await
            .map_err(ChannelError::Connect)?;
        let slots = u32::try_from(slots).unwrap_or(u32::MAX).clamp(1, MAX_SLOTS);
        FrontLink::start(stream, slots, generation)
            .await
            .map_err(ChannelError::Connect)
    }

    /// Sends one request (written into a frame at once, from the borrowed parts) and
    /// returns what its answer comes through.
    pub(crate) fn send(&self, request: &Outgoing<'_>) -> Result<Answer, ChannelError> {
        let connection = &self.connection;
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (answered, answer) = oneshot::channel();
        match lock(&connection.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, answered),
            None => return Err(ChannelError::Closed),
        };
        encode_request(&mut lock(&connection.outgoing), id, request);
        connection.wake_writer.notify_one();
        Ok(Answer(answer))
    }
}

/// Runs a front connection's writer and reader as tasks of the runtime this is called on.
fn run_front(connection: Arc<Connection>, stream: UnixStream) {
    let (reader, writer) = stream.into_split();
    tokio::spawn(write_loop(Arc::clone(&connection), writer, Gather::Yield));
    tokio::spawn(read_answers(connection, reader));
}

impl Drop for Channel {
    fn drop(&mut self) {
        // Nothing more is sent: the writer ends and lets go of the socket (the reader ends
        // when the worker closes its side).
        end(&self.connection);
    }
}

/// A request's answer, to come. Dropped unanswered (the client went away), its id is
/// forgotten when the answer comes.
#[derive(Debug)]
pub(crate) struct Answer(oneshot::Receiver<Response<Bytes>>);

impl Answer {
    pub(crate) async fn get(self) -> Result<Response<Bytes>, ChannelError> {
        self.0.await.map_err(|_| ChannelError::Closed)
    }
}

/// A request as the front forwards it.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) asked: Asked<'a>,
    pub(crate) context: &'a RequestContext,
    pub(crate) body: &'a [u8],
}

/// What a forwarded request asks of the worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Asked<'a> {
    /// The client's HTTP request, for the worker to route: sent with the front's request id and
    /// trace context (which replace any the client sent), hop-by-hop headers left out.
    Http {
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    },
    /// A call of the export of `[[route]]` number `route` (in the config's order, which the
    /// worker's config keeps).
    Call { route: usize },
}

/// On an HTTP request a worker serves: the context the front gave it (its id, its trace
/// context, its deadline), which the request is served in rather than one made anew.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded(pub(crate) Arc<RequestContext>);

/// What the worker does with a call: its routes' exports, called as the front would call them
/// in process.
pub(crate) trait Calls: Send + Sync + 'static {
    /// Calls route `route`'s export with `body` in the request `context`, and answers.
    fn call(
        &self,
        route: usize,
        context: Arc<RequestContext>,
        body: Bytes,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When a writer, woken, writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gather {
    /// After the other tasks ready now have run: the front's requests come from many tasks
    /// (one per client connection), and one write then carries them all.
    Yield,
    /// At once: the worker's answers to the calls of one read are all written before the writer
    /// runs ([`run_calls`]), and a yield costs the runtime a poll of its driver (a system call)
    /// and often another thread woken: measured, 35,612 `futex` and 70,137 `epoll_wait` calls
    /// in the worker over 4 s of load with it, 702 and 42,507 without.
    Now,
}

/// Writes what accumulated in `outgoing` whenever woken, until the connection fails.
async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    connection: Arc<Connection>,
    mut writer: W,
    gather: Gather,
) {
    let mut batch = Vec::new();
    loop {
        connection.wake_writer.notified().await;
        if connection.ended.load(Ordering::Acquire) {
            return;
        }
        if gather == Gather::Yield {
            tokio::task::yield_now().await;
        }
        loop {
            std::mem::swap(&mut batch, &mut *lock(&connection.outgoing));
            if batch.is_empty() {
                break;
            }
            if writer.write_all(&batch).await.is_err() {
                fail_all(&connection);
                return;
            }
            batch.clear();
        }
    }
}

/// Reads answers and hands each to its request, until the connection ends; then fails the
/// requests still waiting.
async fn read_answers(connection: Arc<Connection>, mut reader: tokio::net::unix::OwnedReadHalf) {
    let mut buffer = bytes::BytesMut::with_capacity(64 << 10);
    // Reused from read to read: the answers of one read, then their waiting requests, taken
    // from the map under one lock and answered after it.
    let (mut answers, mut answering) = (Vec::new(), Vec::new());
    loop {
        let mut broken = false;
        while let Some(frame) = next_frame(&mut buffer) {
            match frame.and_then(decode_answer) {
                Some(answer) => answers.push(answer),
                None => {
                    broken = true;
                    break;
                }
            }
        }
        if let Some(waiting) = lock(&connection.waiting).as_mut() {
            answering.extend(
                answers
                    .drain(..)
                    .filter_map(|(id, answer)| Some((waiting.remove(&id)?, answer))),
            );
        }
        answers.clear();
        for (waiting, answer) in answering.drain(..) {
            let _ = waiting.send(answer);
        }
        if broken {
            break;
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    fail_all(&connection);
}

fn fail_all(connection: &Connection) {
    // Dropping the senders fails every waiting request.
    drop(lock(&connection.waiting).take());
    end(connection);
}

/// Ends the connection's writer (which lets go of its socket).
fn end(connection: &Connection) {
    connection.ended.store(true, Ordering::Release);
    connection.wake_writer.notify_one();
}

/// The next whole frame's body, if `buffer` holds one; `Some(None)` for a frame too large.
///
/// The frame is copied out (frames are small), so that `buffer` is never shared and reads reuse
/// its memory; a frame split off it kept it shared while the frame lived, and a read could
/// then not reuse it. (Reasoned, not measured apart: side by side with the other changes of
/// this batch, the copy's own effect was within the noise.)
fn next_frame(buffer: &mut bytes::BytesMut) -> Option<Option<Bytes>> {
    if buffer.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes(buffer[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Some(None);
    }
    if buffer.len() < 4 + len {
        buffer.reserve(4 + len - buffer.len());
        return None;
    }
    let frame = Bytes::copy_from_slice(&buffer[4..4 + len]);
    bytes::Buf::advance(buffer, 4 + len);
    Some(Some(frame))
}

/// Serves the worker's side on `path`: HTTP requests with `router`, calls with `calls`, until
/// the process ends. The front's connection is served by a thread of its own, with a runtime
/// of its own (its calls never move to another thread), on the CPU its hello names if it
/// names one (the CPU of the front's thread that runs it).
///
/// # Errors
///
/// If the socket cannot be bound.
pub(crate) fn serve<C: Calls>(
    path: &Path,
    router: Router,
    calls: Arc<C>,
    links: Links,
) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        let mut count = 0_usize;
        while let Ok((stream, _)) = listener.accept().await {
            let (router, calls, links) = (router.clone(), Arc::clone(&calls), links.clone());
            tokio::spawn(start_connection(count, stream, router, calls, links));
            count += 1;
        }
    });
    Ok(())
}

/// What serves a link (a connection whose hello is a link's: see `link.rs`).
#[derive(Clone)]
pub(crate) struct Links(pub(crate) Arc<dyn Fn(UnixStream) + Send + Sync>);

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links")
    }
}

/// Reads a connection's hello and starts the thread that serves it.
async fn start_connection<C: Calls>(
    index: usize,
    mut stream: UnixStream,
    router: Router,
    calls: Arc<C>,
    links: Links,
) {
    let mut hello = [0; 4];
    if stream.read_exact(&mut hello).await.is_err() {
        return;
    }
    let cpu = match u32::from_le_bytes(hello) {
        LINK => return (links.0)(stream),
        ANY_CPU => None,
        cpu => usize::try_from(cpu).ok(),
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "could not take the front's connection off the runtime");
            return;
        }
    };
    let served = async move {
        match UnixStream::from_std(stream) {
            Ok(stream) => serve_connection(stream, router, calls).await,
            Err(error) => tracing::error!(%error, "could not serve the front's connection"),
        }
    };
    let name = format!("graft-channel-{index}");
    let started = tokio::task::spawn_blocking(move || run_thread(name, cpu, served)).await;
    if let Ok(Err(error)) = started {
        tracing::error!(%error, "could not start a thread for the front's connection");
    }
}

/// One connection from the front: an HTTP request runs in a task of its own, the calls of one
/// read in one task ([`run_calls`]); each answer is written with whatever else is ready.
async fn serve_connection<C: Calls>(stream: UnixStream, router: Router, calls: Arc<C>) {
    let (mut reader, writer) = stream.into_split();
    let connection = Arc::new(Connection::default());
    tokio::spawn(write_loop(Arc::clone(&connection), writer, Gather::Now));
    // The front closed the connection (or broke it): the writer ends with it.
    let _ending = Ending(Arc::clone(&connection));
    let mut buffer = bytes::BytesMut::with_capacity(64 << 10);
    loop {
        let mut batch = Vec::new();
        while let Some(frame) = next_frame(&mut buffer) {
            let Some((id, request)) = frame.and_then(decode_request) else {
                return;
            };
            match request {
                Incoming::Http(request) => {
                    let answer = router.clone().oneshot(request);
                    tokio::spawn(reply(Arc::clone(&connection), id, async move {
                        match answer.await {
                            Ok(answer) => answer,
                            Err(never) => match never {},
                        }
                    }));
                }
                Incoming::Call {
                    route,
                    context,
                    body,
                } => batch.push((id, route, context, body)),
            }
        }
        if !batch.is_empty() {
            tokio::spawn(run_calls(
                Arc::clone(&connection),
                Arc::clone(&calls),
                batch,
            ));
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Ends a worker connection's writer when dropped (its reader returned).
struct Ending(Arc<Connection>);

impl Drop for Ending {
    fn drop(&mut self) {
        end(&self.0);
    }
}

/// The calls that came in one read, run by one task: most (a route called inline) are done
/// when first polled, and answered at once; the others go on as tasks of their own.
async fn run_calls<C: Calls>(
    connection: Arc<Connection>,
    calls: Arc<C>,
    batch: Vec<(u64, usize, Arc<RequestContext>, Bytes)>,
) {
    for (id, route, context, body) in batch {
        let call = calls.call(route, context, body);
        let mut answer = Box::pin(reply(Arc::clone(&connection), id, call));
        let mut polled = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        if answer.as_mut().poll(&mut polled).is_pending() {
            tokio::spawn(answer);
        }
    }
}

/// Writes the answer `answer` comes to as request `id`'s, with whatever else is ready.
async fn reply(connection: Arc<Connection>, id: u64, answer: impl Future<Output = Response<Body>>) {
    let (parts, body) = answer.await.into_parts();
    let body = axum::body::to_bytes(body, MAX_FRAME)
        .await
        .unwrap_or_default();
    encode_answer(
        &mut lock(&connection.outgoing),
        id,
        parts.status,
        &parts.headers,
        &body,
    );
    connection.wake_writer.notify_one();
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Writes a frame: its length, then what `body` writes.
fn frame(out: &mut Vec<u8>, id: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_le_bytes());
    body(out);
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.extend_from_slice(
        &u32::try_from(headers.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

fn encode_request(out: &mut Vec<u8>, id: u64, request: &Outgoing<'_>) {
    frame(out, id, |out| {
        out.push(match request.asked {
            Asked::Http { .. } => HTTP,
            Asked::Call { .. } => CALL,
        });
        let context = request.context;
        put_bytes(out, context.id.as_bytes());
        out.extend_from_slice(&context.trace.trace_id.to_le_bytes());
        out.extend_from_slice(&context.trace.span_id.to_le_bytes());
        out.push(context.trace.flags);
        let left = context.remaining().map_or(u64::MAX, |left| {
            u64::try_from(left.as_micros()).unwrap_or(u64::MAX - 1)
        });
        out.extend_from_slice(&left.to_le_bytes());
        match request.asked {
            Asked::Http {
                method,
                uri,
                headers,
            } => {
                put_bytes(out, method.as_str().as_bytes());
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                put_bytes(out, path.as_bytes());
                let count_at = out.len();
                out.extend_from_slice(&[0; 4]);
                let mut count = 2_u32;
                put_bytes(out, b"x-request-id");
                put_bytes(out, context.id.as_bytes());
                put_bytes(out, b"traceparent");
                put_bytes(out, context.trace.traceparent().as_bytes());
                for (name, value) in headers {
                    let skip = matches!(
                        name.as_str(),
                        "connection"
                            | "keep-alive"
                            | "transfer-encoding"
                            | "te"
                            | "upgrade"
                            | "content-length"
                            | "x-request-id"
                            | "traceparent"
                    );
                    if !skip {
                        put_bytes(out, name.as_str().as_bytes());
                        put_bytes(out, value.as_bytes());
                        count += 1;
                    }
                }
                out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            }
            Asked::Call { route } => {
                out.extend_from_slice(&u32::try_from(route).unwrap_or(u32::MAX).to_le_bytes());
            }
        }
        put_bytes(out, request.body);
    });
}

/// A request's kinds on the wire.
const HTTP: u8 = 0;
const CALL: u8 = 1;

fn encode_answer(out: &mut Vec<u8>, id: u64, status: StatusCode, headers: &HeaderMap, body: &[u8]) {
    frame(out, id, |out| {
        out.extend_from_slice(&status.as_u16().to_le_bytes());
        put_headers(out, headers);
        put_bytes(out, body);
    });
}

/// Reads a frame's fields in order; every read is bounds-checked.
struct Fields {
    frame: Bytes,
    at: usize,
}

impl Fields {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.frame.len())?;
        let taken = self.frame.slice(self.at..end);
        self.at = end;
        Some(taken)
    }

    fn u32(&mut self) -> Option<usize> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes(bytes[..].try_into().ok()?) as usize)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?[..].try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()?;
        self.take(len)
    }

    fn headers(&mut self) -> Option<HeaderMap> {
        let count = self.u32()?;
        // Room for the headers the front stamps an answer with, so that stamping never grows
        // the map.
        let mut headers = HeaderMap::with_capacity(count.min(256) + 3);
        for _ in 0..count {
            let name = HeaderName::from_bytes(&self.bytes()?).ok()?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

/// A request as the worker reads it.
enum Incoming {
    Http(Request<Body>),
    Call {
        route: usize,
        context: Arc<RequestContext>,
        body: Bytes,
    },
}

fn decode_request(frame: Bytes) -> Option<(u64, Incoming)> {
    let mut fields = Fields { frame, at: 0 };
    let id = fields.u64()?;
    let kind = fields.take(1)?[0];
    let context = Arc::new(RequestContext {
        id: String::from_utf8(fields.bytes()?.to_vec()).ok()?,
        trace: TraceContext {
            trace_id: u128::from_le_bytes(fields.take(16)?[..].try_into().ok()?),
            span_id: fields.u64()?,
            flags: fields.take(1)?[0],
        },
        deadline: match fields.u64()? {
            u64::MAX => None,
            left => Instant::now().checked_add(Duration::from_micros(left)),
        },
    });
    let incoming = match kind {
        HTTP => {
            let method = Method::from_bytes(&fields.bytes()?).ok()?;
            let uri = Uri::from_maybe_shared(fields.bytes()?).ok()?;
            let headers = fields.headers()?;
            let mut request = Request::new(Body::from(fields.bytes()?));
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            request.extensions_mut().insert(Forwarded(context));
            Incoming::Http(request)
        }
        CALL => Incoming::Call {
            route: fields.u32()?,
            context,
            body: fields.bytes()?,
        },
        _ => return None,
    };
    Some((id, incoming))
}

fn decode_answer(frame: Bytes) -> Option<(u64, Response<Bytes>)> {
    let mut fields = Fields { frame, at: 0 };
    let id = fields.u64()?;
    let status =
        StatusCode::from_u16(u16::from_le_bytes(fields.take(2)?[..].try_into().ok()?)).ok()?;
    let headers = fields.headers()?;
    let body = fields.bytes()?;
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Some((id, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_cross_byte_for_byte_and_a_cut_frame_is_waited_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("the client's"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.append("accept", HeaderValue::from_static("a"));
        headers.append("accept", HeaderValue::from_static("b"));
        let uri = Uri::from_static("/notes/7?full=1");
        let context = RequestContext {
            id: "abc".into(),
            trace: TraceContext {
                trace_id: 1,
                span_id: 2,
                flags: 1,
            },
            deadline: None,
        };
        let request = Outgoing {
            asked: Asked::Http {
                method: &Method::POST,
                uri: &uri,
                headers: &headers,
            },
            context: &context,
            body: b"{\"a\": 1}",
        };
        let mut out = Vec::new();
        encode_request(&mut out, 42, &request);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        encode_answer(&mut out, 43, StatusCode::CREATED, &headers, b"[1]");

        // Fed one byte at a time: no frame until it is whole.
        let mut buffer = bytes::BytesMut::new();
        let mut frames = Vec::new();
        for byte in out {
            buffer.extend_from_slice(&[byte]);
            if let Some(frame) = next_frame(&mut buffer) {
                frames.push(frame.unwrap());
            }
        }
        assert_eq!(frames.len(), 2);
        let (id, Incoming::Http(decoded)) = decode_request(frames[0].clone()).unwrap() else {
            panic!("an HTTP request decodes as one");
        };
        assert_eq!(id, 42);
        let forwarded = decoded.extensions().get::<Forwarded>().unwrap();
        assert_eq!(*forwarded.0, context, "served in the front's context");
        assert_eq!(decoded.method(), Method::POST);
        assert_eq!(decoded.uri(), "/notes/7?full=1");
        let accept: Vec<_> = decoded.headers().get_all("accept").iter().collect();
        assert_eq!(accept, ["a", "b"]);
        assert_eq!(
            decoded.headers()["x-request-id"],
            "abc",
            "the front's id wins"
        );
        assert_eq!(
            decoded.headers()["traceparent"],
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
        assert!(
            decoded.headers().get("connection").is_none(),
            "hop-by-hop: left out"
        );
        let (id, answer) = decode_answer(frames[1].clone()).unwrap();
        assert_eq!((id, answer.status()), (43, StatusCode::CREATED));
        assert_eq!(answer.headers()["content-type"], "application/json");
        assert_eq!(answer.body().as_ref(), b"[1]");
        // A frame cut short inside is refused, not read past its end.
        assert!(decode_answer(frames[1].slice(..frames[1].len() - 1)).is_none());
    }

    #[test]
    fn a_call_crosses_with_its_route_context_and_deadline() {
        let context = RequestContext {
            id: "req-7".into(),
            trace: TraceContext {
                trace_id: u128::MAX - 5,
                span_id: 99,
                flags: 1,
            },
            deadline: Some(Instant::now() + Duration::from_secs(60)),
        };
        let call = |context| Outgoing {
            asked: Asked::Call { route: 3 },
            context,
            body: b"[1, 2]",
        };
        let mut out = Vec::new();
        encode_request(&mut out, 7, &call(&context));
        let no_deadline = RequestContext {
            deadline: None,
            ..context.clone()
        };
        encode_request(&mut out, 8, &call(&no_deadline));
        let mut buffer = bytes::BytesMut::from(&out[..]);
        let first = next_frame(&mut buffer).unwrap().unwrap();
        let second = next_frame(&mut buffer).unwrap().unwrap();

        let (
            id,
            Incoming::Call {
                route,
                context: got,
                body,
            },
        ) = decode_request(first.clone()).unwrap()
        else {
            panic!("a call decodes as one");
        };
        assert_eq!((id, route, &body[..]), (7, 3, &b"[1, 2]"[..]));
        assert_eq!((got.id.as_str(), got.trace), ("req-7", context.trace));
        let left = got.remaining().unwrap();
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        let (_, Incoming::Call { context: got, .. }) = decode_request(second).unwrap() else {
            panic!("a call decodes as one");
        };
        assert_eq!(got.deadline, None);
        // Cut anywhere, a call is refused rather than read past its end.
        for end in 0..first.len() {
            assert!(decode_request(first.slice(..end)).is_none(), "cut at {end}");
        }
    }
}
