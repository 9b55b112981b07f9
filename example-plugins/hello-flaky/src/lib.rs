//! Test plugin `hello`, a third build that fails now and then: the bad canary of the rollout
//! tests. `hello@1` fails one call in `HELLO_FAIL_EVERY` (read at init; 5 when unset, so 20% of
//! calls; 0 never fails), and answers like the first build otherwise.

use std::sync::atomic::{AtomicU64, Ordering};

use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting, as JSON (the same contract as hello-v1's, declared again: the host checks
    /// that both declarations have the same types).
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

static FAIL_EVERY: AtomicU64 = AtomicU64::new(5);
static CALLS: AtomicU64 = AtomicU64::new(0);

fn init() -> Result<(), Error> {
    if let Ok(every) = std::env::var("HELLO_FAIL_EVERY") {
        let every = every
            .parse()
            .map_err(|_| Error::new(format!("HELLO_FAIL_EVERY={every:?} is not a number")))?;
        FAIL_EVERY.store(every, Ordering::Relaxed);
    }
    Ok(())
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    let every = FAIL_EVERY.load(Ordering::Relaxed);
    let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    if every > 0 && n.is_multiple_of(every) {
        return Err(Error::new(format!("call {n} fails (one in {every})")));
    }
    Ok(format!("hello, {name}"))
}
