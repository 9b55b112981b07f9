//! Example plugin `hello`, second build: the same contract, a different answer.

use graft_api::{Context, Error};

graft_api::plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        "hello@1" => hello,
    },
}

fn hello(_: &Context<'_>, name: String) -> Result<String, Error> {
    graft_api::tracing::debug!(%name, "greeting");
    Ok(format!("hello v2, {name}!"))
}
