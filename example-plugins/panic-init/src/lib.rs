//! Test plugin `panic-init`: its initialiser panics.

use graft_api::{Context, Error};

graft_api::plugin! {
    name: "panic-init",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        "never@1" => never,
    },
    init: init,
}

fn init() -> Result<(), Error> {
    panic!("panic-init refuses to start")
}

fn never(_: &Context<'_>, _: String) -> Result<String, Error> {
    Err(Error::new("unreachable: init failed"))
}
