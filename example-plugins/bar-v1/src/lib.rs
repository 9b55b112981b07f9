//! Example plugin `bar`, first build: `bar@1` takes frob@1's one value.

use example_types::{BarOutput, BarV1, Frob1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "bar",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        BarV1 => bar,
    },
}

fn bar(_: &Context<'_>, input: Frob1) -> Result<BarOutput, Error> {
    Ok(BarOutput {
        value: input.x * 2,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
