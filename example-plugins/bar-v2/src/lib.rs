//! Example plugin `bar`, second build: `bar@2` needs the extra element frob@2 returns.

use example_types::{BarOutput, BarV2, Frob2};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "bar",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        BarV2 => bar,
    },
}

fn bar(_: &Context<'_>, input: Frob2) -> Result<BarOutput, Error> {
    Ok(BarOutput {
        value: input.x * 2 + input.extra,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
