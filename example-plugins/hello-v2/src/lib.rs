//! Example plugin `hello`, second build: the same contract, a different answer.

use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting. Plain `String`s are serde types, not StableAbi ones: the call crosses as JSON.
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
    /// `n + 1`, by value, no encoding: what the dispatch benchmark calls.
    pub struct PingV1 = "ping@1": fn(u64) -> u64;
}

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        HelloV1 => hello,
        PingV1 => ping,
    },
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    graft_api::tracing::debug!(%name, "greeting");
    Ok(format!("hello v2, {name}!"))
}

/// A trivial export, for measuring dispatch cost (`host/benches/dispatch.rs`).
fn ping(_: &Context<'_>, n: u64) -> Result<u64, Error> {
    Ok(n.wrapping_add(1))
}
