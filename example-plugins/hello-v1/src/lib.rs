//! Example plugin `hello`, first build: `hello@1` greets a name.

use graft_api::{Context, Error};

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        "hello@1" => hello,
        "ping@1" => ping,
    },
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    graft_api::tracing::debug!(%name, "greeting");
    Ok(format!("hello, {name}"))
}

/// A trivial export, for measuring dispatch cost (`host/benches/dispatch.rs`).
fn ping(_: &Context<'_>, n: u64) -> Result<u64, Error> {
    Ok(n.wrapping_add(1))
}
