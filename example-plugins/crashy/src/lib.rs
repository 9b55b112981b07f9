//! Test plugin `hello`, a build that takes down the process it runs in, by input: what worker
//! isolation exists for. `hello@1` answers like the first build, except for these names:
//!
//! - `"segfault"`: writes through a near-null pointer (address 8, as a field of a null struct
//!   pointer would be): SIGSEGV.
//! - `"abort"`: `std::process::abort()`: SIGABRT.
//! - `"stack-overflow"`: recurses until the thread's guard page (Rust's handler then aborts:
//!   SIGABRT, after "has overflowed its stack").
//! - `"spin"`: loops forever, holding its thread and a core.
//! - `"leak"`: allocates a gigabyte, touches every page, and never frees it.
//!
//! And `"context"` answers with the request's context as the call sees it (its id, its
//! `traceparent`, the milliseconds left), so that a test can see what reached a worker.
//!
//! Its initialiser crashes the process that loads it when the environment says so:
//! `CRASHY_INIT=segfault` or `CRASHY_INIT=abort` (a build that crashes while it loads, which
//! `graft serve` loads first in a process of its own under isolation).

use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting, as JSON (hello-v1's contract, declared again).
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        HelloV1 => hello,
    },
    init: init,
}

fn init() -> Result<(), Error> {
    match std::env::var("CRASHY_INIT").as_deref() {
        Ok("segfault") => segfault(),
        Ok("abort") => std::process::abort(),
        _ => Ok(()),
    }
}

fn hello(ctx: &Context<'_>, name: String) -> Result<String, Error> {
    match name.as_str() {
        "context" => {
            let request = ctx
                .request()
                .ok_or_else(|| Error::new("no request context"))?;
            let left = request.deadline.map(|left| left.as_millis());
            Ok(format!("{} {} {left:?}", request.id, request.traceparent))
        }
        "segfault" => segfault(),
        "abort" => std::process::abort(),
        "stack-overflow" => {
            let depth = recurse(0);
            Ok(format!("recursed {depth} deep")) // never reached
        }
        "spin" => loop {
            std::hint::spin_loop();
        },
        "leak" => {
            let gigabyte = vec![1_u8; 1 << 30];
            let touched = gigabyte
                .iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum::<u64>();
            std::mem::forget(gigabyte);
            Ok(format!("leaked {touched} pages"))
        }
        _ => Ok(format!("hello, {name}")),
    }
}

#[allow(unsafe_code)]
fn segfault() -> ! {
    let field = std::hint::black_box(8_usize) as *mut u64;
    // SAFETY: none; this is the bug the fixture exists to have. Address 8 is never mapped, so
    // the write faults (a null pointer itself would trip the debug precondition check, an abort).
    unsafe { field.write_volatile(1) };
    unreachable!("a write to address 8 returned")
}

/// Recurses with a frame the optimiser cannot drop, until the stack runs out.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 512]);
    recurse(depth + 1).wrapping_add(frame[0])
}
