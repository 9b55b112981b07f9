//! Where each client connection a worker serves stands, in memory the front and the worker
//! both map: a `u32` per connection (its slot), which the worker's serving moves along and the
//! front reads when the worker crashes, so that it resumes the connections that were between
//! requests and answers the requests that were in flight.
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
use std::sync::atomic::AtomicU32;

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

/// The most slots a link has (a front's `max_connections` is bounded by file descriptors).
pub(crate) const MAX_SLOTS: u32 = 1 << 20;

/// A slot's route word when the request in flight is none of the `[[route]]`s (a plugin's own
/// route), or none was read yet: 0.
pub(crate) const NO_ROUTE: u32 = 0;

/// The shared states: `len` slots, each a state word and a route word (the `[[route]]` the
/// request in flight calls, numbered from 1 in the config's order; [`NO_ROUTE`]).
#[derive(Debug)]
pub(crate) struct States {
    memory: OwnedFd,
    base: NonNull<AtomicU32>,
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
        let bytes = (libc::off_t::from(len) * 2 + 1) * 4;
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
        let bytes = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_mul(2)
            .saturating_add(1)
            .saturating_mul(4);
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
        // SAFETY: a shared mapping of `bytes` bytes (`2 len + 1` words) of a file at least that large; checked
        // for failure below; unmapped in Drop, after which nothing refers to it.
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
        let base = NonNull::new(base.cast::<AtomicU32>()).ok_or_else(io::Error::last_os_error)?;
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
        (slot < self.len).then(|| self.word(slot as usize * 2 + 1))
    }

    /// Slot `slot`'s route word; `None` past the last slot.
    pub(crate) fn route(&self, slot: u32) -> Option<&AtomicU32> {
        (slot < self.len).then(|| self.word(slot as usize * 2 + 2))
    }

    #[allow(unsafe_code)]
    fn word(&self, index: usize) -> &AtomicU32 {
        debug_assert!(index <= self.len as usize * 2);
        // SAFETY: `index` is at most `2 len`, within the mapping of `2 len + 1` words, which is
        // page-aligned (so each u32 is aligned), lives as long as `self`, and is only
        // accessed atomically; AtomicU32 has u32's layout, and any u32 is a valid value.
        unsafe { &*self.base.as_ptr().add(index) }
    }
}

impl Drop for States {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of this length; no reference to it outlives
        // `self` (`get` borrows it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), (self.len as usize * 2 + 1) * 4);
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
        assert!(
            States::open(front.memory().unwrap(), 5).is_err(),
            "fewer bytes than slots"
        );
    }
}
