//! A client connection as hyper reads and writes it: first the bytes read from it elsewhere and
//! not parsed (a connection that came back from a worker, or went to one), then the socket
//! ([`Stamped`]); and, when a worker serves it, its state in the memory the front reads
//! (`worker/states.rs`), moved along as its requests are read and answered.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::arrival::Stamped;
use crate::worker::link::{Served, ServedRoute};
use crate::worker::states::{ANSWERING, CLEAN, ENDING, IN_REQUEST, READ_AHEAD, TAKEN};

/// What a worker keeps of a connection its front gave it: its state in the shared memory, and
/// what its requests tell the link (`worker/direct.rs`). Cloned into each request (an
/// extension), so the route that serves it can say its deadline and what it answered.
#[derive(Debug, Clone)]
pub(crate) struct Tracking(Arc<Watched>);

#[derive(Debug)]
struct Watched {
    slot: u32,
    link: Arc<dyn LinkSide>,
    /// The whole answer is in hyper's hands: the next completed flush ends it.
    answered: AtomicBool,
    /// The request that started must be served by the front: the connection goes back with
    /// its bytes, nothing written.
    replay: AtomicBool,
    /// When the request being served is past its deadline (set by its route): nanoseconds
    /// after `since`, 0 for none. An atomic, not a lock: set per request, read by the watch.
    deadline: AtomicU64,
    since: Instant,
    /// The kernel's count of bytes written on the connection when the worker got it
    /// (`worker/states.rs`): what its answers' ends count from.
    given_at: Option<u64>,
    /// The request being served has its answer (whether or not it was written).
    done: AtomicBool,
}

/// What a connection's tracking reaches of its worker's link.
pub(crate) trait LinkSide: Send + Sync + std::fmt::Debug {
    /// The connection's state word.
    fn cell(&self, slot: u32) -> &AtomicU32;
    /// The connection's route word (see `worker/states.rs`).
    fn route(&self, slot: u32) -> &AtomicU32;
    /// The connection's end word (see `worker/states.rs`).
    fn end(&self, slot: u32) -> &AtomicU64;
    /// Whether the worker serves requests, or gives its connections back.
    fn serving(&self) -> bool;
    /// A request served: for the front's metrics.
    fn served(&self, served: Served);
    /// The workers' grace period (its deadlines are later than the front's by twice that).
    fn grace(&self) -> Duration;
    /// The front's number of the worker's generation: what its answers say served them.
    fn generation(&self) -> &axum::http::HeaderValue;
}

impl Tracking {
    /// The tracking of the connection in `slot`, whose socket had taken `given_at` bytes to
    /// send when the worker got it ([`crate::worker::states::written`]; `None`: the kernel
    /// did not say, and an answer is never marked as ending).
    pub(crate) fn new(slot: u32, link: Arc<dyn LinkSide>, given_at: Option<u64>) -> Self {
        Self(Arc::new(Watched {
            slot,
            link,
            answered: AtomicBool::new(false),
            replay: AtomicBool::new(false),
            deadline: AtomicU64::new(0),
            since: Instant::now(),
            given_at,
            done: AtomicBool::new(false),
        }))
    }

    fn cell(&self) -> &AtomicU32 {
        self.0.link.cell(self.0.slot)
    }

    /// The whole answer is in hyper's hands.
    pub(crate) fn answered(&self) {
        self.0.answered.store(true, Ordering::Release);
    }

    /// Whether a request starting now is served here; if not, the connection is marked to go
    /// back with the request's bytes.
    pub(crate) fn admit(&self) -> bool {
        if self.0.link.serving() {
            return true;
        }
        self.0.replay.store(true, Ordering::Release);
        false
    }

    pub(crate) fn replaying(&self) -> bool {
        self.0.replay.load(Ordering::Acquire)
    }

    /// The request being served answers 503 at `at`.
    fn deadline(&self, at: Option<Instant>) {
        let nanos = at.map_or(0, |at| {
            let after = at.saturating_duration_since(self.0.since).as_nanos();
            u64::try_from(after).unwrap_or(u64::MAX).max(1)
        });
        self.0.deadline.store(nanos, Ordering::Release);
    }

    /// The front's deadline for a route whose deadline is `deadline` in this worker's config
    /// (later than the front's, see `worker/process.rs`): the one a request it serves itself
    /// is answered at, and carries in its context.
    pub(crate) fn front_deadline(&self, deadline: Duration) -> Duration {
        let grace = u64::try_from(self.0.link.grace().as_millis()).unwrap_or(u64::MAX);
        crate::worker::front_deadline(deadline, grace)
    }

    /// The request that started at `started` calls `[[route]]` number `route` (from 1; or
    /// none: `NO_ROUTE`) and is answered at `deadline` (the front's): for the watch on
    /// deadlines, and for the front's log if the worker ends during it.
    pub(crate) fn started(&self, route: u32, deadline: Option<Instant>) {
        self.0
            .link
            .route(self.0.slot)
            .store(route, Ordering::Release);
        self.0.done.store(false, Ordering::Release);
        self.deadline(deadline);
    }

    /// The request being served has its answer.
    pub(crate) fn done(&self) {
        self.0.done.store(true, Ordering::Release);
    }

    /// Whether the request given up to the front (past its deadline) still has no answer: its
    /// call still runs (or its answer came too late to tell).
    pub(crate) fn runs_on(&self) -> bool {
        self.cell().load(Ordering::Acquire) == TAKEN && !self.0.done.load(Ordering::Acquire)
    }

    /// The deadline of the request being served, if it has one.
    pub(crate) fn deadline_at(&self) -> Option<Instant> {
        match self.0.deadline.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.0.since + Duration::from_nanos(nanos)),
        }
    }

    /// A request served, by `route`.
    pub(crate) fn served(&self, route: ServedRoute, status: u16, took: Duration) {
        self.0.link.served(Served {
            route,
            status,
            micros: u32::try_from(took.as_micros()).unwrap_or(u32::MAX),
        });
    }

    /// Gives the request in flight up to the front (past its deadline): whether it was in
    /// flight and no byte of its answer written (then nothing more is written here).
    pub(crate) fn take(&self) -> bool {
        self.cell()
            .compare_exchange(IN_REQUEST, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn slot(&self) -> u32 {
        self.0.slot
    }

    /// Says the front's number of the generation on an answer that names one (the worker
    /// numbers its own generations from 1).
    pub(crate) fn stamp(&self, headers: &mut axum::http::HeaderMap) {
        if let Some(value) = headers.get_mut(crate::api::GENERATION_HEADER) {
            value.clone_from(self.0.link.generation());
        }
    }
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct Conn {
    stamped: Stamped,
    unread: Bytes,
    tracking: Option<Tracking>,
    /// With tracking: what was read since the last answer was written (the request to replay
    /// if it goes back to the front unserved).
    since_answer: BytesMut,
    /// With tracking: how many of `since_answer`'s bytes were read before the answer being
    /// written began (those of its request; later ones are the next request's).
    answer_mark: usize,
    /// With tracking: the kernel's count of bytes written on the connection (from when the
    /// worker got it, on), if it said.
    written: Option<u64>,
}

impl Conn {
    pub(crate) fn new(stamped: Stamped, unread: Bytes, tracking: Option<Tracking>) -> Self {
        if let Some(tracking) = &tracking {
            let state = if unread.is_empty() { CLEAN } else { IN_REQUEST };
            tracking.cell().store(state, Ordering::Release);
        }
        let written = tracking.as_ref().and_then(|tracking| tracking.0.given_at);
        Self {
            stamped,
            unread,
            tracking,
            since_answer: BytesMut::new(),
            answer_mark: 0,
            written,
        }
    }

    /// The socket, and what was read and not parsed yet (to go with it elsewhere).
    pub(crate) fn into_parts(self) -> (Stamped, Bytes) {
        (self.stamped, self.unread)
    }

    /// The socket, and every byte read since the last answer (the request to replay), then
    /// what was never read.
    pub(crate) fn into_replay(self) -> (Stamped, Bytes) {
        let mut bytes = self.since_answer;
        bytes.extend_from_slice(&self.unread);
        (self.stamped, bytes.freeze())
    }

    /// Marks a write of `len` bytes about to happen: answering, or ending the answer if hyper
    /// has all of it (then this write is of all the rest: hyper writes a tracked connection
    /// from one flat buffer, see [`Conn::is_write_vectored`]); an error if the answer is the
    /// front's now.
    fn writing(&mut self, len: usize) -> io::Result<()> {
        let Some(tracking) = &self.tracking else {
            return Ok(());
        };
        let phase = match self.written {
            Some(written) if tracking.0.answered.load(Ordering::Acquire) => {
                let end = written.saturating_add(len as u64);
                let slot = tracking.0.slot;
                tracking.0.link.end(slot).store(end, Ordering::Release);
                ENDING
            }
            _ => ANSWERING,
        };
        let cell = tracking.cell();
        let mut state = cell.load(Ordering::Acquire);
        loop {
            let (now, read_ahead) = (state & !READ_AHEAD, state & READ_AHEAD);
            if now == TAKEN {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the front answers this request",
                ));
            }
            if now == phase {
                return Ok(());
            }
            match cell.compare_exchange(
                state,
                phase | read_ahead,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if now != ANSWERING && now != ENDING {
                        // The answer's first byte: what was read so far is its request's.
                        self.answer_mark = self.since_answer.len();
                    }
                    return Ok(());
                }
                Err(changed) => state = changed,
            }
        }
    }

    /// Counts `written` bytes written.
    fn wrote(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let (Poll::Ready(Ok(n)), Some(count)) = (&written, &mut self.written) {
            *count = count.saturating_add(*n as u64);
        }
        written
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            let given = this.unread.split_to(n);
            if this.tracking.is_some() {
                this.since_answer.extend_from_slice(&given);
            }
            buf.put_slice(&given);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stamped).poll_read(cx, buf);
        if let (Some(tracking), Poll::Ready(Ok(()))) = (&this.tracking, &read) {
            if buf.filled().len() > before {
                this.since_answer.extend_from_slice(&buf.filled()[before..]);
                // Bytes of a request: in flight from here; while an answer is written, the
                // next request's (read ahead).
                let _ =
                    tracking
                        .cell()
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| match state {
                            CLEAN => Some(IN_REQUEST),
                            ANSWERING | ENDING => Some(state | READ_AHEAD),
                            _ => None,
                        });
            }
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(buf.len())?;
        let written = Pin::new(&mut this.stamped).poll_write(cx, buf);
        this.wrote(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(bufs.iter().map(|buf| buf.len()).sum())?;
        let written = Pin::new(&mut this.stamped).poll_write_vectored(cx, bufs);
        this.wrote(written)
    }

    /// Not when tracked: hyper then writes from one flat buffer, so the write after an answer's
    /// end is in its hands is of all the rest (see [`Conn::writing`]).
    fn is_write_vectored(&self) -> bool {
        self.tracking.is_none() && self.stamped.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.stamped).poll_flush(cx);
        if let (Some(tracking), Poll::Ready(Ok(()))) = (&this.tracking, &flushed) {
            if tracking.0.answered.swap(false, Ordering::AcqRel) {
                // The answer is all written: between requests, or in the next one if bytes of
                // it were read meanwhile.
                let _ =
                    tracking
                        .cell()
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                            match state & !READ_AHEAD {
                                ANSWERING | ENDING if state & READ_AHEAD != 0 => Some(IN_REQUEST),
                                ANSWERING | ENDING => Some(CLEAN),
                                _ => None,
                            }
                        });
                let mark = std::mem::take(&mut this.answer_mark).min(this.since_answer.len());
                bytes::Buf::advance(&mut this.since_answer, mark);
                tracking.deadline(None);
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stamped).poll_shutdown(cx)
    }
}

/// A response body that tells [`Tracking`] when hyper has taken its last frame.
pub(crate) struct Ending<B> {
    inner: B,
    tracking: Tracking,
}

impl<B> Ending<B> {
    pub(crate) fn new(inner: B, tracking: Tracking) -> Self {
        Self { inner, tracking }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Ending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.tracking.answered();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.tracking.answered();
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A link's side kept in memory: one slot.
    #[derive(Debug, Default)]
    struct Words {
        state: AtomicU32,
        route: AtomicU32,
        end: AtomicU64,
        closed: AtomicBool,
        served: Mutex<Vec<Served>>,
    }

    impl LinkSide for Words {
        fn cell(&self, _: u32) -> &AtomicU32 {
            &self.state
        }
        fn route(&self, _: u32) -> &AtomicU32 {
            &self.route
        }
        fn end(&self, _: u32) -> &AtomicU64 {
            &self.end
        }
        fn serving(&self) -> bool {
            !self.closed.load(Ordering::Acquire)
        }
        fn served(&self, served: Served) {
            self.served.lock().unwrap().push(served);
        }
        fn grace(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn generation(&self) -> &axum::http::HeaderValue {
            static SEVEN: axum::http::HeaderValue = axum::http::HeaderValue::from_static("7");
            &SEVEN
        }
    }

    /// A connection as a worker serves it; the client's end, and the front's descriptor.
    async fn pair(
        unread: &'static [u8],
    ) -> (
        tokio::net::TcpStream,
        Conn,
        Tracking,
        Arc<Words>,
        std::net::TcpStream,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let front = std::os::fd::AsFd::as_fd(&server)
            .try_clone_to_owned()
            .map(std::net::TcpStream::from)
            .unwrap();
        let words = Arc::new(Words::default());
        let given_at = crate::worker::states::written(&front);
        let tracking = Tracking::new(0, Arc::clone(&words) as Arc<dyn LinkSide>, given_at);
        let (stamped, _) = Stamped::new(server, None);
        let conn = Conn::new(stamped, Bytes::from_static(unread), Some(tracking.clone()));
        (client, conn, tracking, words, front)
    }

    #[tokio::test]
    async fn a_connections_state_follows_its_requests_and_a_taken_answer_is_not_written() {
        let (mut client, mut conn, tracking, words, _) = pair(b"").await;
        let state = || words.state.load(Ordering::Acquire);
        assert_eq!(state(), CLEAN);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buffer = [0; 64];
        let _ = conn.read(&mut buffer).await.unwrap();
        assert_eq!(state(), IN_REQUEST, "bytes of a request read");
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(state(), ANSWERING);
        conn.flush().await.unwrap();
        assert_eq!(state(), ANSWERING, "the answer is not all handed over yet");
        tracking.answered();
        conn.flush().await.unwrap();
        assert_eq!(state(), CLEAN, "answered and flushed: between requests");
        assert!(!tracking.take(), "nothing in flight to give up");

        client
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let _ = conn.read(&mut buffer).await.unwrap();
        assert!(tracking.take(), "given up to the front");
        assert_eq!(state(), TAKEN);
        let refused = conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::BrokenPipe);
        assert!(tracking.runs_on(), "no answer came");
        tracking.done();
        assert!(!tracking.runs_on());
    }

    #[tokio::test]
    async fn a_request_the_worker_may_not_serve_goes_back_with_every_byte_read_since_the_answer() {
        let (mut client, mut conn, tracking, words, _) = pair(b"POST /a HT").await;
        assert_eq!(
            words.state.load(Ordering::Acquire),
            IN_REQUEST,
            "a request's start given"
        );
        let mut buffer = [0; 4];
        conn.read_exact(&mut buffer).await.unwrap();
        client.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut rest = [0; 64];
        let mut read = 0;
        while read < 14 {
            read += conn.read(&mut rest[read..]).await.unwrap();
        }
        assert!(tracking.admit(), "serving: admitted");
        words.closed.store(true, Ordering::Release);
        assert!(!tracking.admit(), "replaced: not admitted");
        assert!(tracking.replaying());
        let (_, replay) = conn.into_replay();
        assert_eq!(&replay[..], b"POST /a HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn the_write_that_ends_an_answer_says_where_it_ends_and_a_request_read_meanwhile_is_kept()
    {
        let (mut client, mut conn, tracking, words, front) = pair(b"").await;
        let state = || words.state.load(Ordering::Acquire);
        let given = crate::worker::states::written(&front).unwrap();
        assert_eq!(tracking.0.given_at, Some(given));
        assert!(
            !conn.is_write_vectored(),
            "one flat buffer: the last write is all the rest"
        );
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buffer = [0; 64];
        let _ = conn.read(&mut buffer).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(
            state(),
            ANSWERING,
            "the answer's end not in hyper's hands yet"
        );
        tracking.answered();
        conn.write_all(b"content-length: 0\r\n\r\n").await.unwrap();
        assert_eq!(
            state(),
            ENDING,
            "the last write returned, its flush not done"
        );
        let end = words.end.load(Ordering::Acquire);
        assert_eq!(end, given + 17 + 21);
        let now = crate::worker::states::written(&front);
        assert_eq!(now, Some(end), "what the front compares after a crash");

        // The client's next request, read before the worker said the answer was written.
        client.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = conn.read(&mut buffer).await.unwrap();
        assert_eq!(state(), ENDING | READ_AHEAD);
        conn.flush().await.unwrap();
        assert_eq!(state(), IN_REQUEST, "answered, and the next request read");
        words.closed.store(true, Ordering::Release);
        assert!(!tracking.admit());
        let (_, replay) = conn.into_replay();
        assert_eq!(
            &replay[..],
            b"GET /b HTTP/1.1\r\n\r\n",
            "the next request, whole"
        );
    }
}
