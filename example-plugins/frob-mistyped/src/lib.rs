//! Test plugin `frob`, a mistyped build: it exports `frob@1` returning a string where the
//! shared contract (`example_types::FrobV1`, which `foo-v1` imports) returns a `Frob1`. It is
//! the build whose author changed a contract's output type and forgot to bump the contract:
//! the host refuses it at link, naming `frob@1` and both types, instead of failing on traffic.

use abi_stable::std_types::RString;
use graft_api::{Context, Error};

graft_api::contract! {
    /// `frob@1` as this build declares it: `a + 1`, as text.
    pub struct FrobV1 = "frob@1": fn(u64) -> RString;
}

graft_api::plugin! {
    name: "frob",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        FrobV1 => frob,
    },
}

fn frob(_: &Context<'_>, a: u64) -> Result<RString, Error> {
    Ok(format!("{}", a + 1).into())
}
