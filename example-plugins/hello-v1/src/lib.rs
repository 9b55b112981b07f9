//! Example plugin `hello`, first build: `hello@1` greets a name.

use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting. Plain `String`s are serde types, not StableAbi ones: the call crosses as JSON.
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
    /// `n + 1`, by value, no encoding: what the dispatch benchmark calls.
    pub struct PingV1 = "ping@1": fn(u64) -> u64;
    /// `ping(n)`, through an import: one plugin-to-plugin call (here to itself).
    pub struct PongV1 = "pong@1": fn(u64) -> u64;
}

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        PING: PingV1,
    },
    exports: {
        HelloV1 => hello,
        PingV1 => ping,
        PongV1 => pong,
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

fn pong(ctx: &Context<'_>, n: u64) -> Result<u64, Error> {
    ctx.call(PING, n)
}
