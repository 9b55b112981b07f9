//! The plugin's global allocator: the system's (or one the plugin names), plus a small arena in
//! the plugin's own image for what graft's runtime allocates once per load and can never free.
//!
//! Unloading a library unmaps its statics but not the heap, so an allocation referenced only
//! from a plugin's statics leaks on every reload. graft's own runtime makes two such allocations
//! per load: installing the log forwarder as the image's `tracing` global default, which
//! tracing-core 0.1 keeps on the heap on purpose (the subscriber, leaked as an `Arc`, and its
//! list of dispatchers) with no way to uninstall it. While [`in_image`] runs, allocations come
//! from an arena, a static in the image, and so are unmapped with it: a reload leaves nothing
//! behind (`scripts/soak.sh` measures it).
//!
//! Outside [`in_image`] this is the allocator it wraps ([`System`] unless the plugin names
//! another) plus one relaxed load per allocation and one address comparison per free. `plugin!`
//! declares it as the crate's `#[global_allocator]`, so a plugin that wants another allocator
//! names it there (`allocator: mimalloc::MiMalloc`, a unit struct) instead of declaring its own.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The global allocator `plugin!` declares (see the [module docs](self)): `A`, with graft's
/// once-per-load allocations kept in the image.
#[derive(Debug, Clone, Copy, Default)]
pub struct PluginAllocator<A = System> {
    inner: A,
}

impl<A> PluginAllocator<A> {
    /// `inner`, with the image's arena in front of it.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

/// Arena bytes: what installing the forwarder needs (about 100) with room to spare. Once it is
/// used up, allocations fall back to the heap, as if there were no arena.
const ARENA_SIZE: usize = 1024;

#[repr(C, align(64))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: bytes of the arena are handed out once each, by an atomic bump of `USED`; nothing
// reads or writes the arena except through the pointers handed out.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
/// Bytes of [`ARENA`] handed out; they are never reused, so the rest is still zero.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Whether allocations come from [`ARENA`] (while [`in_image`] runs).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Runs `f` with its allocations placed in the image's arena while it has room.
///
/// The switch is per image, not per thread (a thread-local would cost every allocation a TLS
/// lookup): call it only while no other thread runs this image's code, as in a plugin's first
/// initialisation, before the host has published anything from it. Another thread's allocation
/// landing in the arena meanwhile would be correct anyway, just never reused.
#[doc(hidden)]
pub fn in_image<R>(f: impl FnOnce() -> R) -> R {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            ACTIVE.store(false, Ordering::Release);
        }
    }
    ACTIVE.store(true, Ordering::Release);
    let _off = Off;
    f()
}

/// `layout`'s place in the arena, if it still fits.
fn arena_alloc(layout: Layout) -> Option<*mut u8> {
    let base = ARENA.0.get().cast::<u8>();
    let mut used = USED.load(Ordering::Relaxed);
    loop {
        let start = (base as usize)
            .checked_add(used)?
            .checked_next_multiple_of(layout.align())?
            - base as usize;
        let end = start.checked_add(layout.size())?;
        if end > ARENA_SIZE {
            return None;
        }
        match USED.compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed) {
            // SAFETY: `start + size <= ARENA_SIZE`, so the pointer is inside the arena.
            Ok(_) => return Some(unsafe { base.add(start) }),
            Err(now) => used = now,
        }
    }
}

/// Whether `ptr` points into the arena.
#[doc(hidden)]
pub fn in_arena(ptr: *const u8) -> bool {
    let base = ARENA.0.get().cast::<u8>() as usize;
    (base..base + ARENA_SIZE).contains(&(ptr as usize))
}

// SAFETY: arena pointers are aligned as asked, inside the arena, never handed out twice and
// never passed to `inner`; every other pointer is `inner`'s, and goes back to it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for PluginAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ACTIVE.load(Ordering::Relaxed) {
            if let Some(ptr) = arena_alloc(layout) {
                return ptr;
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ACTIVE.load(Ordering::Relaxed) {
            // Arena bytes are handed out once, so they are still zero.
            if let Some(ptr) = arena_alloc(layout) {
                return ptr;
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // An arena block is freed with the image.
        if !in_arena(ptr.cast_const()) {
            // SAFETY: not an arena pointer, so `inner` allocated it with this layout.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_arena(ptr.cast_const()) {
            // SAFETY: not an arena pointer, so `inner` allocated it with this layout.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`, fits `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_size` is non-zero (the caller's contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least the bytes copied and do not overlap (arena
            // blocks are never handed out twice).
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}
