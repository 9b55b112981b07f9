//! Example plugin `frob`, second build: `frob@2` returns an extra element (a contract change).

use example_types::{Frob2, FrobV2};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "frob",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        FrobV2 => frob,
    },
}

fn frob(_: &Context<'_>, a: u64) -> Result<Frob2, Error> {
    Ok(Frob2 {
        x: a + 1,
        extra: 10,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
