//! Test plugin `frob`, built from a stale copy of a type: it exports `frob@1` returning its own
//! `Frob1`, whose field `x` is a `u32` where the shared definition (`example_types::Frob1`,
//! which `foo-v1` imports) has a `u64`. The names agree, the layouts do not: the host refuses it
//! at link, naming the field and both its types.

use abi_stable::std_types::RString;
use abi_stable::StableAbi;
use graft_api::{Context, Error};

/// `example_types::Frob1` as an old copy of it has it.
#[repr(C)]
#[derive(StableAbi)]
pub struct Frob1 {
    /// `a + 1`, narrower than the shared definition's.
    pub x: u32,
    /// Version of the frob plugin that ran.
    pub version: RString,
}

graft_api::contract! {
    /// `frob@1` with the stale `Frob1`.
    pub struct FrobV1 = "frob@1": fn(u64) -> Frob1;
}

graft_api::plugin! {
    name: "frob",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        FrobV1 => frob,
    },
}

fn frob(_: &Context<'_>, a: u64) -> Result<Frob1, Error> {
    Ok(Frob1 {
        x: u32::try_from(a + 1).map_err(|_| Error::invalid("too large for this build"))?,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
