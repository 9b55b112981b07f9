//! The link between the front and a worker that serves client connections itself (see
//! `direct.rs`): a second connection to the worker's socket, carrying connections (their
//! descriptors, `SCM_RIGHTS`) and short messages both ways.
//!
//! A message is `u32 length` (of what follows), `u8 kind`, then its fields, little-endian; a
//! message that carries a descriptor is sent with it in one `sendmsg`, so the descriptor comes
//! with the message's first byte, and descriptors arrive in the order of their messages.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The largest message either side accepts (unread bytes of a request head, at most).
const MAX_MESSAGE: usize = 1 << 20;

/// How many descriptors one read may bring.
const MAX_FDS: usize = 16;

/// What the front tells a worker.
#[derive(Debug)]
pub(crate) enum ToWorker {
    /// The memory both see connections' states in ([`super::states`]), `slots` of them; and
    /// the front's number of the worker's generation (its answers carry it).
    Hello {
        states: OwnedFd,
        slots: u32,
        generation: u64,
    },
    /// A client connection to serve, with the bytes already read from it and not parsed.
    Give {
        slot: u32,
        unread: Vec<u8>,
        connection: OwnedFd,
    },
    /// Give every connection back at its next request boundary (the generation changed, a
    /// rollout started, or the worker is being replaced).
    Recall,
}

/// What a worker tells the front.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToFront {
    /// Connection `slot` is back, at a request boundary, with the bytes read and not parsed.
    Returned { slot: u32, unread: Vec<u8> },
    /// Connection `slot` closed (the client went away, an error, a timeout).
    Ended { slot: u32 },
    /// Requests served: for the front's metrics.
    Served(Vec<Served>),
    /// A call on connection `slot` ran past its deadline: the worker gave the connection's
    /// answer up (its state is `TAKEN`), the front answers 503 on it.
    Overdue { slot: u32 },
    /// A call has run past its deadline and the grace period: replace this worker.
    Stuck,
}

/// One request a worker served, as the front counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) route: ServedRoute,
    pub(crate) status: u16,
    pub(crate) micros: u32,
}

/// The route that served a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServedRoute {
    /// `[[route]]` number `n` (from 1, in the config's order: the front has their method and
    /// path).
    Configured(u32),
    /// A plugin's own route: its method and pattern (not the request's path).
    Plugin { method: String, pattern: String },
}

const HELLO: u8 = 1;
const GIVE: u8 = 2;
const RECALL: u8 = 3;
const RETURNED: u8 = 10;
const ENDED: u8 = 11;
const SERVED: u8 = 12;
const OVERDUE: u8 = 13;
const STUCK: u8 = 14;

/// One side of a link.
#[derive(Debug)]
pub(crate) struct Link {
    stream: UnixStream,
    /// Held while a message is written, so messages never interleave.
    writing: tokio::sync::Mutex<()>,
}

/// A link's reading half state: bytes and descriptors received and not taken yet.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    buffer: BytesMut,
    fds: VecDeque<OwnedFd>,
}

impl Link {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `message`; a `Give` is refused (`WouldBlock`, nothing sent) when the link cannot
    /// take it at once (its worker does not read: a stuck worker must not hold up the front's
    /// accept loop, which then serves the connection itself).
    pub(crate) async fn send_to_worker(&self, message: &ToWorker) -> io::Result<()> {
        let mut out = Vec::new();
        let fd = match message {
            ToWorker::Hello {
                states,
                slots,
                generation,
            } => {
                frame(&mut out, HELLO, |out| {
                    out.put_u32_le(*slots);
                    out.put_u64_le(*generation);
                });
                Some(states.as_raw_fd())
            }
            ToWorker::Give {
                slot,
                unread,
                connection,
            } => {
                frame(&mut out, GIVE, |out| {
                    out.put_u32_le(*slot);
                    out.put_slice(unread);
                });
                Some(connection.as_raw_fd())
            }
            ToWorker::Recall => {
                frame(&mut out, RECALL, |_| {});
                None
            }
        };
        if matches!(message, ToWorker::Give { .. }) {
            return self.send_at_once(&out, fd).await;
        }
        self.send(&out, fd).await
    }

    /// [`Link::send`], unless the message's first bytes cannot be written at once.
    async fn send_at_once(&self, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        let busy = || io::Error::from(io::ErrorKind::WouldBlock);
        let _writing = self.writing.try_lock().map_err(|_| busy())?;
        let sent = self
            .stream
            .try_io(Interest::WRITABLE, || send_with_fd(&self.stream, bytes, fd))?;
        // The descriptor went with the first bytes: the rest must follow, before any other
        // message.
        self.write_rest(&bytes[sent..], None).await
    }

    pub(crate) async fn send_to_front(&self, message: &ToFront) -> io::Result<()> {
        let mut out = Vec::new();
        encode_to_front(&mut out, message);
        self.send(&out, None).await
    }

    /// [`Link::send_to_front`] from a thread that is not the runtime's (the worker's watch on
    /// deadlines, which must get through while plugin calls hold every runtime thread).
    pub(crate) fn send_to_front_blocking(&self, message: &ToFront) -> io::Result<()> {
        let mut out = Vec::new();
        encode_to_front(&mut out, message);
        let _writing = self.writing.blocking_lock();
        let mut bytes = &out[..];
        while !bytes.is_empty() {
            match send_with_fd(&self.stream, bytes, None) {
                Ok(sent) => bytes = &bytes[sent..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn send(&self, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        let _writing = self.writing.lock().await;
        self.write_rest(bytes, fd).await
    }

    /// Writes `bytes` (with `fd` on the first), the writing lock held.
    async fn write_rest(&self, mut bytes: &[u8], mut fd: Option<RawFd>) -> io::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self
                .stream
                .try_io(Interest::WRITABLE, || send_with_fd(&self.stream, bytes, fd))
            {
                Ok(sent) => {
                    // The descriptor went with the first byte.
                    fd = None;
                    bytes = &bytes[sent..];
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads until a whole message is there; `None` when the link closed.
    async fn next_raw(&self, incoming: &mut Incoming) -> io::Result<Option<(u8, BytesMut)>> {
        loop {
            if incoming.buffer.len() >= 5 {
                let len =
                    u32::from_le_bytes(incoming.buffer[..4].try_into().expect("4 bytes")) as usize;
                if len == 0 || len > MAX_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a link message of {len} bytes"),
                    ));
                }
                if incoming.buffer.len() >= 4 + len {
                    incoming.buffer.advance(4);
                    let mut message = incoming.buffer.split_to(len);
                    let kind = message.get_u8();
                    return Ok(Some((kind, message)));
                }
            }
            self.stream.readable().await?;
            let mut chunk = [0_u8; 16 << 10];
            match self.stream.try_io(Interest::READABLE, || {
                recv_with_fds(&self.stream, &mut chunk, &mut incoming.fds)
            }) {
                Ok(0) => return Ok(None),
                Ok(n) => incoming.buffer.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The next message from the front; `None` when the link closed.
    pub(crate) async fn next_from_front(
        &self,
        incoming: &mut Incoming,
    ) -> io::Result<Option<ToWorker>> {
        let Some((kind, mut message)) = self.next_raw(incoming).await? else {
            return Ok(None);
        };
        let mut fd = || {
            incoming.fds.pop_front().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message without its descriptor",
                )
            })
        };
        let message = match kind {
            HELLO if message.len() >= 12 => ToWorker::Hello {
                slots: message.get_u32_le(),
                generation: message.get_u64_le(),
                states: fd()?,
            },
            GIVE if message.len() >= 4 => ToWorker::Give {
                slot: message.get_u32_le(),
                unread: message.to_vec(),
                connection: fd()?,
            },
            RECALL => ToWorker::Recall,
            _ => return Err(invalid(kind)),
        };
        Ok(Some(message))
    }

    /// The next message from the worker; `None` when the link closed.
    pub(crate) async fn next_from_worker(
        &self,
        incoming: &mut Incoming,
    ) -> io::Result<Option<ToFront>> {
        let Some((kind, message)) = self.next_raw(incoming).await? else {
            return Ok(None);
        };
        decode_to_front(kind, message).map(Some)
    }
}

fn invalid(kind: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a link message of kind {kind}, or too short"),
    )
}

fn frame(out: &mut Vec<u8>, kind: u8, fields: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(kind);
    fields(out);
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

fn encode_to_front(out: &mut Vec<u8>, message: &ToFront) {
    match message {
        ToFront::Returned { slot, unread } => frame(out, RETURNED, |out| {
            out.put_u32_le(*slot);
            out.put_slice(unread);
        }),
        ToFront::Ended { slot } => frame(out, ENDED, |out| out.put_u32_le(*slot)),
        ToFront::Served(served) => frame(out, SERVED, |out| {
            for one in served {
                match &one.route {
                    ServedRoute::Configured(number) => out.put_u32_le(*number),
                    ServedRoute::Plugin { method, pattern } => {
                        out.put_u32_le(0);
                        put_str(out, method);
                        put_str(out, pattern);
                    }
                }
                out.put_u16_le(one.status);
                out.put_u32_le(one.micros);
            }
        }),
        ToFront::Overdue { slot } => frame(out, OVERDUE, |out| out.put_u32_le(*slot)),
        ToFront::Stuck => frame(out, STUCK, |_| {}),
    }
}

fn decode_to_front(kind: u8, mut message: BytesMut) -> io::Result<ToFront> {
    let slot = |message: &mut BytesMut| {
        if message.len() < 4 {
            return Err(invalid(kind));
        }
        Ok(message.get_u32_le())
    };
    let string = |message: &mut BytesMut| {
        if message.len() < 4 {
            return Err(invalid(kind));
        }
        let len = message.get_u32_le() as usize;
        if message.len() < len {
            return Err(invalid(kind));
        }
        String::from_utf8(message.split_to(len).to_vec()).map_err(|_| invalid(kind))
    };
    Ok(match kind {
        RETURNED => ToFront::Returned {
            slot: slot(&mut message)?,
            unread: message.to_vec(),
        },
        ENDED => ToFront::Ended {
            slot: slot(&mut message)?,
        },
        SERVED => {
            let mut served = Vec::new();
            while !message.is_empty() {
                let route = match slot(&mut message)? {
                    0 => ServedRoute::Plugin {
                        method: string(&mut message)?,
                        pattern: string(&mut message)?,
                    },
                    number => ServedRoute::Configured(number),
                };
                if message.len() < 6 {
                    return Err(invalid(kind));
                }
                served.push(Served {
                    route,
                    status: message.get_u16_le(),
                    micros: message.get_u32_le(),
                });
            }
            ToFront::Served(served)
        }
        OVERDUE => ToFront::Overdue {
            slot: slot(&mut message)?,
        },
        STUCK => ToFront::Stuck,
        _ => return Err(invalid(kind)),
    })
}

/// `sendmsg` of `bytes`, with `fd` attached if there is one.
#[allow(unsafe_code)]
fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut control = [0_u8; 64];
    // SAFETY: msghdr is plain data (zeroed: no name, no control). `iov` points at `bytes`,
    // which outlives the call, and sendmsg only reads it. With a descriptor, `control` (64
    // bytes, room for CMSG_SPACE of one int, 24) holds one control message written through
    // CMSG_FIRSTHDR/CMSG_DATA of a header whose msg_controllen says so.
    let sent = unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let int = std::mem::size_of::<libc::c_int>() as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(int) as usize;
            let header = libc::CMSG_FIRSTHDR(&raw const msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(int) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>(), fd);
        }
        libc::sendmsg(
            stream.as_raw_fd(),
            &raw const msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// `recvmsg` into `buffer`; the descriptors that came with it are appended to `fds`.
#[allow(unsafe_code)]
fn recv_with_fds(
    stream: &UnixStream,
    buffer: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let int = std::mem::size_of::<libc::c_int>();
    let mut control = [0_u8; 256];
    // SAFETY: as in `send_with_fd`: `iov` points at `buffer`, which recvmsg writes at most
    // `buffer.len()` bytes of; `control` (256 bytes, room for CMSG_SPACE of MAX_FDS ints, 80)
    // receives the control messages, which are walked with CMSG_FIRSTHDR/CMSG_NXTHDR within
    // the msg_controllen the kernel set. Each SCM_RIGHTS descriptor is a new one, ours to own
    // (MSG_CMSG_CLOEXEC: not inherited by processes we start).
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE((MAX_FDS * int) as u32) as usize;
        let read = libc::recvmsg(
            stream.as_raw_fd(),
            &raw mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
        let mut header = libc::CMSG_FIRSTHDR(&raw const msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let len = (*header).cmsg_len as usize - (data as usize - header as usize);
                for i in 0..len / int {
                    let fd = std::ptr::read_unaligned(data.add(i * int).cast::<libc::c_int>());
                    fds.push_back(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&raw const msg, header);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[tokio::test]
    async fn a_connection_crosses_with_its_unread_bytes_and_messages_keep_their_order() {
        let (front, worker) = UnixStream::pair().unwrap();
        let (front, worker) = (Link::new(front), Link::new(worker));
        // A TCP connection to hand over: its client writes, the worker reads it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // A message that waits for the link first (a give is refused while it cannot be
        // written at once, as on a link not seen writable yet).
        front.send_to_worker(&ToWorker::Recall).await.unwrap();
        front
            .send_to_worker(&ToWorker::Give {
                slot: 7,
                unread: b"GET / HT".to_vec(),
                connection: OwnedFd::from(accepted),
            })
            .await
            .unwrap();
        let mut incoming = Incoming::default();
        assert!(matches!(
            worker.next_from_front(&mut incoming).await.unwrap(),
            Some(ToWorker::Recall)
        ));
        let Some(ToWorker::Give {
            slot,
            unread,
            connection,
        }) = worker.next_from_front(&mut incoming).await.unwrap()
        else {
            panic!("a give");
        };
        assert_eq!((slot, &unread[..]), (7, &b"GET / HT"[..]));
        let mut served = std::net::TcpStream::from(connection);
        client.write_all(b"TP/1.1\r\n").unwrap();
        let mut got = [0; 8];
        served.read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"TP/1.1\r\n",
            "the descriptor is the client's connection"
        );

        let messages = [
            ToFront::Served(vec![
                Served {
                    route: ServedRoute::Configured(2),
                    status: 200,
                    micros: 41,
                },
                Served {
                    route: ServedRoute::Plugin {
                        method: "GET".into(),
                        pattern: "/notes/{id}".into(),
                    },
                    status: 404,
                    micros: 7,
                },
            ]),
            ToFront::Returned {
                slot: 7,
                unread: b"partial".to_vec(),
            },
            ToFront::Ended { slot: 3 },
            ToFront::Overdue { slot: 4 },
            ToFront::Stuck,
        ];
        for message in &messages {
            worker.send_to_front(message).await.unwrap();
        }
        drop(worker);
        let mut incoming = Incoming::default();
        for message in &messages {
            assert_eq!(
                front
                    .next_from_worker(&mut incoming)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(message)
            );
        }
        assert!(front
            .next_from_worker(&mut incoming)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_broken_message_is_refused() {
        let (front, mut worker) = UnixStream::pair().unwrap();
        let front = Link::new(front);
        // Kind 99, and a length past the bound.
        tokio::io::AsyncWriteExt::write_all(&mut worker, &[1, 0, 0, 0, 99])
            .await
            .unwrap();
        let mut incoming = Incoming::default();
        assert!(front.next_from_worker(&mut incoming).await.is_err());
        let (front, mut worker) = UnixStream::pair().unwrap();
        let front = Link::new(front);
        tokio::io::AsyncWriteExt::write_all(&mut worker, &u32::MAX.to_le_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut worker, &[0])
            .await
            .unwrap();
        assert!(front
            .next_from_worker(&mut Incoming::default())
            .await
            .is_err());
    }
}
