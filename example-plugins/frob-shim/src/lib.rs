//! Compatibility shim `frob-shim`: provides the old contract `frob@1` on top of `frob@2`, so
//! callers that still import `frob@1` keep linking when a release replaces frob with its second
//! build.

use example_types::{Frob1, Frob2, FrobV1, FrobV2};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "frob-shim",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        FROB2: FrobV2,
    },
    exports: {
        FrobV1 => frob_v1,
    },
}

fn frob_v1(ctx: &Context<'_>, a: u64) -> Result<Frob1, Error> {
    let Frob2 {
        x,
        extra: _,
        version,
    } = ctx.call(FROB2, a)?;
    Ok(Frob1 { x, version })
}
