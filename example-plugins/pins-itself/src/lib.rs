//! Test plugin `pins-itself`: what a plugin must not do. Its export fills a `thread_local!` that
//! has a destructor; glibc then keeps the library mapped until the calling thread exits, even
//! after the host closes it. The host must report that, not crash.

use std::cell::RefCell;

use graft_api::{Context, Error};

graft_api::contract! {
    /// Remembers its input in a thread-local; returns how many it remembers.
    pub struct RememberV1 = "remember@1": json fn(String) -> usize;
}

graft_api::plugin! {
    name: "pins-itself",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        RememberV1 => remember,
    },
}

thread_local! {
    static SEEN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn remember(_: &Context<'_>, what: String) -> Result<usize, Error> {
    Ok(SEEN.with(|seen| {
        seen.borrow_mut().push(what);
        seen.borrow().len()
    }))
}
