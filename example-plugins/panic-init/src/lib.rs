//! Test plugin `panic-init`: its initialiser panics.

use graft_api::{Context, Error};

graft_api::contract! {
    /// Never answers: init fails first.
    pub struct NeverV1 = "never@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "panic-init",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        NeverV1 => never,
    },
    init: init,
}

fn init() -> Result<(), Error> {
    panic!("panic-init refuses to start")
}

fn never(_: &Context<'_>, _: String) -> Result<String, Error> {
    Err(Error::new("unreachable: init failed"))
}
