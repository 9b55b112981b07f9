//! Example plugin `frob`, first build: `frob@1` returns one value.

use example_types::{Frob1, FrobV1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "frob",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        FrobV1 => frob,
    },
}

fn frob(_: &Context<'_>, a: u64) -> Result<Frob1, Error> {
    Ok(Frob1 {
        x: a + 1,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
