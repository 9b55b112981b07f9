//! The channel between the front and a worker: a Unix socket in the worker's directory, two
//! connections each carrying many requests at once, as length-prefixed binary frames.
//!
//! Measured first, on 2 cores (`swap-under-load --isolation all`, the foo service, ratio =
//! isolated / in-process throughput): HTTP/1.1 on loopback TCP, hyper on both sides, 0.385;
//! these frames on a Unix socket, 0.47 to 0.53 (1 to 4 connections: within the noise). Each
//! request is one frame appended to its connection's buffer; a writer task sends whatever
//! accumulated in one `write` (under load, several frames per system call), a reader task reads
//! answers in large chunks and hands each to its waiting request by id. The worker calls its
//! router directly (no HTTP parsing) and answers the same way. What remains is the hop itself
//! (two processes' wake-ups and four system calls per batch) and the worker's own request
//! handling; a shared-memory ring would take the system calls out.
//!
//! A frame is `u32 length` (of what follows), `u64 id`, then a request: method, path and
//! query, headers, body; or an answer: status, headers, body. Strings and bodies are a `u32`
//! length and their bytes; counts are `u32`. All little-endian. A connection that ends fails the
//! requests it carried (the worker crashed: see `mod.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt as _;

/// Connections per worker: requests are spread over them, so that one reader or writer task
/// is never the bottleneck.
const CONNECTIONS: usize = 2;

/// The largest frame either side accepts (a worker is graft itself; this bounds a broken one).
const MAX_FRAME: usize = 64 << 20;

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
#[derive(Debug)]
struct Connection {
    /// Frames not written yet.
    outgoing: Mutex<Vec<u8>>,
    wake_writer: Notify,
    /// Requests sent and not answered, by id; `None` once the connection ended.
    waiting: Mutex<Option<HashMap<u64, Waiting>>>,
}

/// The front's side of a worker's channel.
#[derive(Debug)]
pub(crate) struct Channel {
    connections: Vec<Arc<Connection>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

impl Channel {
    /// Connects to the worker's socket.
    pub(crate) async fn connect(path: &Path) -> Result<Self, ChannelError> {
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let stream = UnixStream::connect(path)
                .await
                .map_err(ChannelError::Connect)?;
            let (reader, writer) = stream.into_split();
            let connection = Arc::new(Connection {
                outgoing: Mutex::new(Vec::new()),
                wake_writer: Notify::new(),
                waiting: Mutex::new(Some(HashMap::new())),
            });
            tokio::spawn(write_loop(Arc::clone(&connection), writer));
            tokio::spawn(read_answers(Arc::clone(&connection), reader));
            connections.push(connection);
        }
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        })
    }

    /// Sends one request (written into a frame at once, from the borrowed parts) and
    /// returns what its answer comes through.
    pub(crate) fn send(&self, request: &Outgoing<'_>) -> Result<Answer, ChannelError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = &self.connections[n];
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

/// A request's answer, to come. Dropped unanswered (the client went away), its id is
/// forgotten when the answer comes.
#[derive(Debug)]
pub(crate) struct Answer(oneshot::Receiver<Response<Bytes>>);

impl Answer {
    pub(crate) async fn get(self) -> Result<Response<Bytes>, ChannelError> {
        self.0.await.map_err(|_| ChannelError::Closed)
    }
}

/// A request as the front forwards it: the client's, with its request id and trace context
/// (which replace any the client sent), hop-by-hop headers left out.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) request_id: &'a str,
    pub(crate) traceparent: &'a str,
    pub(crate) body: &'a [u8],
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes what accumulated in `outgoing` whenever woken, until the connection fails.
async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(connection: Arc<Connection>, mut writer: W) {
    let mut batch = Vec::new();
    loop {
        connection.wake_writer.notified().await;
        // Let the tasks ready on this thread add their frames first: one write carries them all.
        tokio::task::yield_now().await;
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
    'reading: loop {
        while let Some(frame) = next_frame(&mut buffer) {
            let Some((id, answer)) = frame.and_then(decode_answer) else {
                break 'reading;
            };
            let waiting = lock(&connection.waiting)
                .as_mut()
                .and_then(|w| w.remove(&id));
            if let Some(waiting) = waiting {
                let _ = waiting.send(answer);
            }
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
}

/// The next whole frame's body, if `buffer` holds one; `Some(None)` for a frame too large.
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
    let mut frame = buffer.split_to(4 + len);
    let _ = frame.split_to(4);
    Some(Some(frame.freeze()))
}

/// Serves the worker's side on `path` with `router`, until the process ends.
///
/// # Errors
///
/// If the socket cannot be bound.
pub(crate) fn serve(path: &Path, router: Router) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, router.clone()));
        }
    });
    Ok(())
}

/// One connection from the front: each request runs in a task of its own, its answer written
/// with whatever else is ready.
async fn serve_connection(stream: UnixStream, router: Router) {
    let (mut reader, writer) = stream.into_split();
    let connection = Arc::new(Connection {
        outgoing: Mutex::new(Vec::new()),
        wake_writer: Notify::new(),
        waiting: Mutex::new(None),
    });
    tokio::spawn(write_loop(Arc::clone(&connection), writer));
    let mut buffer = bytes::BytesMut::with_capacity(64 << 10);
    loop {
        while let Some(frame) = next_frame(&mut buffer) {
            let Some((id, request)) = frame.and_then(decode_request) else {
                return;
            };
            let (connection, router) = (Arc::clone(&connection), router.clone());
            tokio::spawn(async move {
                let answer = match router.oneshot(request).await {
                    Ok(answer) => answer,
                    Err(never) => match never {},
                };
                let (parts, body) = answer.into_parts();
                let body = axum::body::to_bytes(body, MAX_FRAME)
                    .await
                    .unwrap_or_default();
                {
                    let mut outgoing = lock(&connection.outgoing);
                    encode_answer(&mut outgoing, id, parts.status, &parts.headers, &body);
                }
                connection.wake_writer.notify_one();
            });
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
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
        put_bytes(out, request.method.as_str().as_bytes());
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        put_bytes(out, path.as_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut count = 2_u32;
        put_bytes(out, b"x-request-id");
        put_bytes(out, request.request_id.as_bytes());
        put_bytes(out, b"traceparent");
        put_bytes(out, request.traceparent.as_bytes());
        for (name, value) in request.headers {
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
        put_bytes(out, request.body);
    });
}

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

    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.u32()?;
        self.take(len)
    }

    fn headers(&mut self) -> Option<HeaderMap> {
        let count = self.u32()?;
        let mut headers = HeaderMap::with_capacity(count.min(256));
        for _ in 0..count {
            let name = HeaderName::from_bytes(&self.bytes()?).ok()?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

fn decode_request(frame: Bytes) -> Option<(u64, Request<Body>)> {
    let mut fields = Fields { frame, at: 0 };
    let id = u64::from_le_bytes(fields.take(8)?[..].try_into().ok()?);
    let method = Method::from_bytes(&fields.bytes()?).ok()?;
    let uri = Uri::from_maybe_shared(fields.bytes()?).ok()?;
    let headers = fields.headers()?;
    let body = fields.bytes()?;
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some((id, request))
}

fn decode_answer(frame: Bytes) -> Option<(u64, Response<Bytes>)> {
    let mut fields = Fields { frame, at: 0 };
    let id = u64::from_le_bytes(fields.take(8)?[..].try_into().ok()?);
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
        let request = Outgoing {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            request_id: "abc",
            traceparent: "00-1-2-01",
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
        let (id, decoded) = decode_request(frames[0].clone()).unwrap();
        assert_eq!(id, 42);
        assert_eq!(decoded.method(), Method::POST);
        assert_eq!(decoded.uri(), "/notes/7?full=1");
        let accept: Vec<_> = decoded.headers().get_all("accept").iter().collect();
        assert_eq!(accept, ["a", "b"]);
        assert_eq!(
            decoded.headers()["x-request-id"],
            "abc",
            "the front's id wins"
        );
        assert_eq!(decoded.headers()["traceparent"], "00-1-2-01");
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
}
