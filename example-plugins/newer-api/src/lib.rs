//! Test plugin `newer-api`: built against graft-api with one more root-module field than the
//! host knows. The host must reject it by version, before abi_stable's layout check.

use graft_api::{Context, Error};

graft_api::contract! {
    /// A greeting.
    pub struct HelloV1 = "hello@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "newer-api",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        HelloV1 => hello,
    },
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    Ok(format!("hello from the future, {name}"))
}
