//! Where each client connection a worker serves stands, in memory the front and the worker
//! both map: per connection (its slot) a state word, which the worker's serving moves along and
//! the front reads when the worker crashes, so that it resumes the connections that were between
//! requests and answers the requests that were in flight; the `[[route]]` the request in flight
//! calls (for the front's log); and where the answer being written ends.
//!
//! An answer is complete once its last byte is written, but the worker can only say so after
//! the write returns: a crash in between (the client has the whole answer, and may have sent its
//! next request) would leave the connection marked as answering, and the front would close a
//! connection it could resume. So before the write that ends an answer, the worker marks the
//! slot [`ENDING`] with the kernel's count of the bytes the connection took ([`written`]) as it
//! will be once that write is done (the count when the worker got the connection, plus what it
//! wrote since); after a crash, the front compares it with the kernel's count then.
//!
//! Before the slots, one word says whether the worker serves its connections' requests at all
//! ([`States::serving`]): the front clears it the moment the worker's generation stops being
//! the one to serve (a release went live, a rollout started), and a request that starts after
//! that is not served there: its connection goes back to the front with the request's bytes.
//!
//! A worker is untrusted here: the front reads any value, and a value it does not know counts
//! as [`ANSWERING`] (the connection is closed).

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Between requests: nothing of the next one read. The front may take the connection over.
pub(crate) const CLEAN: u32 = 0;
/// A request (or part of one) read, no byte of its answer written: on a crash, the front
/// answers it 502 and closes the connection.
pub(crate) const IN_REQUEST: u32 = 1;
/// Bytes of an answer written (or the connection's state unknown): on a crash, the front
/// closes the connection.
pub(crate) const ANSWERING: u32 = 2;
/// The worker gave up answering the request in flight (past its deadline): the front answers
/// it, and the worker writes nothing more.
pub(crate) const TAKEN: u32 = 3;
/// The rest of an answer is being written: it is complete once the worker has written as many
/// bytes on the connection as the slot's end word says ([`States::end`]). On a crash, the
/// front resumes the connection if the kernel took that many, and closes it otherwise.
pub(crate) const ENDING: u32 = 4;
/// With [`ANSWERING`] or [`ENDING`]: bytes of the next request were read meanwhile (a crash
/// loses them: that request is in flight).
pub(crate) const READ_AHEAD: u32 = 1 << 8;

/// The most slots a link has (a front's `max_connections` is bounded by file descriptors).
pub(crate) const MAX_SLOTS: u32 = 1 << 20;

/// A slot's route word when the request in flight is none of the `[[route]]`s (a plugin's own
/// route), or none was read yet: 0.
pub(crate) const NO_ROUTE: u32 = 0;

/// Bytes per slot: a state word, a route word (the `[[route]]` the request in flight calls,
/// numbered from 1 in the config's order; [`NO_ROUTE`]), and an end word (`u64`). The serving
/// word takes the first slot's room, so that every end word is aligned.
const SLOT_BYTES: usize = 16;

/// The shared states: `len` slots (see [`SLOT_BYTES`]).
#[derive(Debug)]
pub(crate) struct States {
    memory: OwnedFd,
    base: NonNull<u8>,
    len: u32,
}

// SAFETY: the mapping is only ever accessed through atomics, from any thread.
#[allow(unsafe_code)]
unsafe impl Send for States {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for States {}

impl States {
    /// New memory for `len` slots, all [`CLEAN`] (the front's side).
    ///
    /// # Errors
    ///
    /// If the memory cannot be made or mapped.
    #[allow(unsafe_code)]
    pub(crate) fn create(len: u32) -> io::Result<Self> {
        // SAFETY: memfd_create takes a NUL-terminated name, and returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"graft-connections".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let memory = unsafe { OwnedFd::from_raw_fd(fd) };
        let bytes = (libc::off_t::from(len) + 1) * SLOT_BYTES as libc::off_t;
        // SAFETY: ftruncate on a descriptor we own; the memory reads as zeros (CLEAN).
        if unsafe { libc::ftruncate(memory.as_raw_fd(), bytes) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::open(memory, len)
    }

    /// Maps memory the front made (the worker's side).
    ///
    /// # Errors
    ///
    /// If it cannot be mapped, or is smaller than `len` slots.
    #[allow(unsafe_code)]
    pub(crate) fn open(memory: OwnedFd, len: u32) -> io::Result<Self> {
        let bytes = mapped(len);
        // SAFETY: fstat writes into a stat we own.
        let size = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(memory.as_raw_fd(), &raw mut stat) != 0 {
                return Err(io::Error::last_os_error());
            }
            usize::try_from(stat.st_size).unwrap_or(0)
        };
        if len == 0 || len > MAX_SLOTS || size < bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("connection states of {size} bytes for {len} slots"),
            ));
        }
        // SAFETY: a shared mapping of `bytes` bytes (`len + 1` slots) of a file at least that
        // large; checked for failure below; unmapped in Drop, after which nothing refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memory.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { memory, base, len })
    }

    /// The memory, to send to a worker.
    pub(crate) fn memory(&self) -> io::Result<OwnedFd> {
        self.memory.try_clone()
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Whether the worker serves requests (not 0), or gives its connections back.
    pub(crate) fn serving(&self) -> &AtomicU32 {
        self.word(0)
    }

    /// Slot `slot`'s state; `None` past the last slot.
    pub(crate) fn get(&self, slot: u32) -> Option<&AtomicU32> {
        (slot < self.len).then(|| self.word((slot as usize + 1) * SLOT_BYTES))
    }

    /// Slot `slot`'s route word; `None` past the last slot.
    pub(crate) fn route(&self, slot: u32) -> Option<&AtomicU32> {
        (slot < self.len).then(|| self.word((slot as usize + 1) * SLOT_BYTES + 4))
    }

    /// Slot `slot`'s end word: the kernel's count of bytes written on the connection
    /// ([`written`]) once the answer being written ([`ENDING`]) is; `None` past the last slot.
    #[allow(unsafe_code)]
    pub(crate) fn end(&self, slot: u32) -> Option<&AtomicU64> {
        (slot < self.len).then(|| {
            let offset = (slot as usize + 1) * SLOT_BYTES + 8;
            // SAFETY: within the mapping (slot < len, `len + 1` slots mapped), 8-aligned (the
            // mapping is page-aligned, slots are 16 bytes, the word is at 8 in its slot),
            // living as long as `self`, and only accessed atomically; any u64 is valid.
            unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
        })
    }

    #[allow(unsafe_code)]
    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= mapped(self.len));
        // SAFETY: `offset` is within the mapping of `len + 1` slots and 4-aligned (the mapping
        // is page-aligned), lives as long as `self`, and is only accessed atomically; AtomicU32
        // has u32's layout, and any u32 is a valid value.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }
}

/// The bytes mapped for `len` slots.
fn mapped(len: u32) -> usize {
    usize::try_from(len)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
        .saturating_mul(SLOT_BYTES)
}

/// How many bytes `stream` ever took to send (acknowledged by the peer, or still queued), from
/// an origin fixed for the connection: the difference of two counts is what was written
/// between them, whoever wrote it. `None` if the kernel does not say (it needs Linux 4.1's
/// `tcpi_bytes_acked`), or the count kept moving.
#[allow(unsafe_code)]
pub(crate) fn written(stream: &std::net::TcpStream) -> Option<u64> {
    let fd = stream.as_raw_fd();
    let acked = || {
        // SAFETY: tcp_info is plain data (all zeros is valid); getsockopt writes at most
        // `length` bytes into it and says how many it wrote.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut length = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).ok()?;
        // SAFETY: as above; `fd` is open (borrowed from `stream`).
        let done = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut length,
            )
        };
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + size_of::<u64>();
        (done == 0 && usize::try_from(length).ok()? >= needed).then_some(info.tcpi_bytes_acked)
    };
    // Acknowledgements move bytes from the queue to the acknowledged count between the two
    // reads: a count read between two equal acknowledged counts is consistent.
    for _ in 0..16 {
        let before = acked()?;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int; `fd` is open.
        if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) } != 0 {
            return None;
        }
        if acked()? == before {
            return before.checked_add(u64::try_from(queued).ok()?);
        }
    }
    None
}

impl Drop for States {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of this length; no reference to it outlives
        // `self` (`get` borrows it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), mapped(self.len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn both_sides_see_each_others_states_and_a_short_memory_is_refused() {
        let front = States::create(4).unwrap();
        let worker = States::open(front.memory().unwrap(), 4).unwrap();
        worker.get(2).unwrap().store(IN_REQUEST, Ordering::Release);
        assert_eq!(front.get(2).unwrap().load(Ordering::Acquire), IN_REQUEST);
        assert_eq!(front.get(1).unwrap().load(Ordering::Acquire), CLEAN);
        assert!(front.get(4).is_none());
        worker
            .end(3)
            .unwrap()
            .store(u64::MAX - 1, Ordering::Release);
        assert_eq!(front.end(3).unwrap().load(Ordering::Acquire), u64::MAX - 1);
        assert_eq!(front.route(3).unwrap().load(Ordering::Acquire), NO_ROUTE);
        assert_eq!(front.get(3).unwrap().load(Ordering::Acquire), CLEAN);
        assert!(
            States::open(front.memory().unwrap(), 5).is_err(),
            "fewer bytes than slots"
        );
    }

    #[test]
    fn the_kernels_count_of_bytes_written_moves_by_what_either_copy_of_a_socket_writes() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let before = written(&server).expect("Linux says");
        let mut copy = server.try_clone().unwrap();
        copy.write_all(&[7; 1000]).unwrap();
        assert_eq!(
            written(&server),
            Some(before + 1000),
            "queued or acknowledged"
        );
        let mut read = vec![0; 1000];
        client.read_exact(&mut read).unwrap();
        assert_eq!(written(&server), Some(before + 1000), "read by the peer");
    }
}
