//! Test plugin `abort-build`: an ordinary plugin, built with `panic = "abort"` (see its
//! Cargo.toml). The host refuses it at load and `graft check` refuses it: a panic in it could
//! not be caught at the boundary and would abort the whole host.

use graft_api::{Context, Error};

graft_api::contract! {
    /// Panics: under `panic = "abort"`, the end of the process that loaded it.
    pub struct BoomV1 = "boom@1": fn(u64) -> u64;
}

graft_api::plugin! {
    name: "abort-build",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        BoomV1 => boom,
    },
}

fn boom(_: &Context<'_>, n: u64) -> Result<u64, Error> {
    panic!("boom {n}")
}
