//! The plugin allocator, declared by `plugin!` as this test binary's global allocator (one
//! test, so no other test thread allocates while the arena is switched on), around an allocator
//! that counts.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use graft_api::allocator::{in_arena, in_image};

/// The system allocator, counting what it is asked for.
struct Counting;

static INNER_ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: the system allocator's, passed on.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INNER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

graft_api::plugin! {
    name: "allocator-test",
    version: "0.0.0",
    exports: {},
    allocator: Counting,
}

#[test]
fn only_allocations_made_in_image_land_in_the_arena_and_outgrow_it_onto_the_heap() {
    let before = INNER_ALLOCS.load(Ordering::Relaxed);
    let outside = Box::new(7_u64);
    assert!(!in_arena(std::ptr::from_ref(&*outside).cast()));
    assert!(
        INNER_ALLOCS.load(Ordering::Relaxed) > before,
        "outside the arena, the allocator it wraps allocates"
    );

    let (boxed, mut vec) = in_image(|| (Box::new([1_u8; 24]), vec![1_u32, 2, 3]));
    assert!(in_arena(boxed.as_ptr()), "allocated in image");
    assert!(in_arena(vec.as_ptr().cast()), "allocated in image");
    assert_eq!(vec.as_ptr() as usize % std::mem::align_of::<u32>(), 0);
    let zeroed = in_image(|| vec![0_u64; 4]);
    assert!(in_arena(zeroed.as_ptr().cast()) && zeroed == [0; 4]);

    // Growing outside `in_image` moves the vector to the heap, contents intact.
    vec.extend(4..=400);
    assert!(!in_arena(vec.as_ptr().cast()), "grown onto the heap");
    assert_eq!(vec[..4], [1, 2, 3, 4]);
    assert_eq!(vec.len(), 400);
    drop(boxed); // an arena block: freeing it must not reach `System`

    // An allocation outside `in_image` comes from the heap, and so does one past the arena.
    assert!(!in_arena(Box::new(1_u8).as_ref()));
    let big = in_image(|| vec![0_u8; 64 * 1024]);
    assert!(!in_arena(big.as_ptr()), "past the arena's room");
}
