//! When a request's bytes reached this machine: the kernel's receive stamp of the data read
//! last on its connection, for a rollout's latency.
//!
//! A request's latency measured from when its handler starts leaves out the time its bytes
//! waited in the socket while the server was busy with others, which under a load that queues
//! is most of what a client measures. So while a rollout is under way, each connection asks for
//! receive timestamps (`SO_TIMESTAMPNS`: the kernel stamps each packet as it arrives, in
//! `CLOCK_REALTIME`) and reads with `recvmsg` to get the stamp of the bytes read ([`Stamped`]);
//! a request carries [`Arrived`], that stamp carried over to the monotonic clock when its head
//! has been read, and the rollout counts its latency from there. Only then: reading with
//! `recvmsg` and carrying the stamp cost about 9% of the throughput of a trivial route
//! (measured side by side with the same build reading through tokio), a price worth paying
//! while a canary is judged, not always. `/metrics` counts from the handler's start.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Whether stamps are wanted now (a rollout is under way); asked at each read.
pub(crate) type Wanted = Arc<dyn Fn() -> bool + Send + Sync>;

/// A stamp older than this is not believed (the wall clock stepped).
const PLAUSIBLE: Duration = Duration::from_secs(60);

/// When the request's bytes arrived, on the monotonic clock: a request extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

impl Arrived {
    /// When `request` arrived, or `otherwise` if nobody knows.
    pub(crate) fn of<B>(request: &axum::http::Request<B>, otherwise: Instant) -> Instant {
        request
            .extensions()
            .get::<Self>()
            .map_or(otherwise, |a| a.0.min(otherwise))
    }
}

/// A connection's last receive stamp (nanoseconds since the Unix epoch; 0: none).
#[derive(Debug, Default)]
pub(crate) struct LastReceived(AtomicU64);

impl LastReceived {
    /// When the bytes read last arrived, on the monotonic clock.
    pub(crate) fn arrived(&self) -> Option<Arrived> {
        let stamp = self.0.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let waited = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp))
            .ok()
            .filter(|waited| *waited < PLAUSIBLE)?;
        Instant::now().checked_sub(waited).map(Arrived)
    }
}

/// A TCP connection that, while a rollout is under way, is read with `recvmsg`, keeping the
/// receive stamp of what it read; otherwise read as tokio reads it.
pub(crate) struct Stamped {
    stream: TcpStream,
    last: Arc<LastReceived>,
    /// Whether stamps are wanted (none: never).
    wanted: Option<Wanted>,
    /// What was last asked of the socket (stamps on or off).
    asked: bool,
    /// Whether the socket has stamping on (asked, and the kernel agreed).
    stamping: bool,
}

impl std::fmt::Debug for Stamped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamped")
            .field("stream", &self.stream)
            .field("asked", &self.asked)
            .field("stamping", &self.stamping)
            .finish_non_exhaustive()
    }
}

impl Stamped {
    /// `stream`, stamped while `wanted` says so.
    pub(crate) fn new(stream: TcpStream, wanted: Option<Wanted>) -> (Self, Arc<LastReceived>) {
        let last = Arc::new(LastReceived::default());
        let mut stamped = Self {
            stream,
            last: Arc::clone(&last),
            wanted,
            asked: false,
            stamping: false,
        };
        // Before anything arrives: the kernel stamps packets as they come in, and only on a
        // socket that asked already.
        stamped.follow();
        (stamped, last)
    }

    /// The socket, its receive stamps off (it goes to be served elsewhere).
    pub(crate) fn into_inner(self) -> TcpStream {
        if self.stamping {
            set_stamping(&self.stream, false);
        }
        self.stream
    }

    /// Turns the socket's receive stamps on or off as wanted, asking the kernel only when that
    /// changes (a refusal is not asked again at every read); off, the last stamp is forgotten
    /// (it would grow stale).
    fn follow(&mut self) {
        let wanted = self.wanted.as_ref().is_some_and(|wanted| wanted());
        if wanted == self.asked {
            return;
        }
        self.asked = wanted;
        if wanted {
            self.stamping = set_stamping(&self.stream, true);
        } else {
            if self.stamping {
                set_stamping(&self.stream, false);
            }
            self.stamping = false;
            self.last.0.store(0, Ordering::Relaxed);
        }
    }
}

/// Asks the kernel for receive stamps on `stream`, or stops; whether it agreed.
#[allow(unsafe_code)] // setsockopt: no safe wrapper in the crates graft uses
fn set_stamping(stream: &TcpStream, on: bool) -> bool {
    let on = libc::c_int::from(on);
    // SAFETY: a valid socket, and a c_int option of the size given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "no receive timestamps");
    }
    set == 0
}

/// One `recvmsg` into `buffer`: the bytes read, and the kernel's stamp of them (ns) if any.
#[allow(unsafe_code)] // recvmsg and its control messages: no safe wrapper in the crates graft uses
fn receive(fd: i32, buffer: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // Room for one timespec message, aligned as cmsghdr needs.
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket, message points at buffers that outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut message, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                let nanos = u64::try_from(time.tv_sec)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000_000))
                    .and_then(|ns| ns.checked_add(u64::try_from(time.tv_nsec).ok()?));
                stamp = nanos.filter(|&ns| ns != 0);
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    #[allow(unsafe_code)] // reading into the unfilled part of tokio's buffer, as TcpStream does
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.follow();
        if !this.stamping {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let fd = this.stream.as_raw_fd();
            // SAFETY: `receive` only writes initialised bytes, and `assume_init` covers only
            // the `n` it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            match this
                .stream
                .try_io(Interest::READABLE, || receive(fd, unfilled))
            {
                Ok((n, stamp)) => {
                    if let Some(stamp) = stamp {
                        this.last.0.store(stamp, Ordering::Relaxed);
                    }
                    // SAFETY: the kernel wrote `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A client, and the server's end of its connection stamped while `wanted` says so, once
    /// the kernel stamps packets: it turns stamping on for the whole system a moment after the
    /// first socket asks (a deferred static key), and until then packets come unstamped.
    async fn stamped_pair(wanted: Wanted) -> (TcpStream, Stamped, Arc<LastReceived>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut server, last) = Stamped::new(server, Some(wanted));
        assert!(last.arrived().is_none(), "nothing read yet");
        let mut buffer = [0; 8];
        for _ in 0..200 {
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buffer).await.unwrap(), 1);
            if last.arrived().is_some() {
                return (client, server, last);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the kernel never stamped a packet");
    }

    #[tokio::test]
    async fn bytes_read_carry_the_time_they_arrived_not_the_time_they_were_read() {
        let (mut client, mut server, last) = stamped_pair(Arc::new(|| true)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // Read well after the bytes arrived: the stamp says when they arrived.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let read_at = Instant::now();
        let mut buffer = [0; 64];
        let n = server.read(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"GET / HTTP/1.1\r\n\r\n");
        let arrived = last.arrived().expect("a receive stamp").0;
        let waited = read_at.duration_since(arrived);
        assert!(
            waited >= Duration::from_millis(250),
            "arrived {waited:?} before it was read"
        );

        // Writes pass through.
        server.write_all(b"ok").await.unwrap();
        let n = client.read(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"ok");
    }

    #[tokio::test]
    async fn unwanted_no_stamp_is_kept_and_reads_work_as_ever() {
        let wanted = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let asked = Arc::clone(&wanted);
        let (mut client, mut server, last) =
            stamped_pair(Arc::new(move || asked.load(Ordering::Relaxed))).await;
        // The rollout ended: the stamp is forgotten, reads go on.
        wanted.store(false, Ordering::Relaxed);
        client.write_all(b"two").await.unwrap();
        let mut buffer = [0; 8];
        assert_eq!(server.read(&mut buffer).await.unwrap(), 3);
        assert!(last.arrived().is_none());
    }
}
