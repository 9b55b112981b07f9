//! Test plugin `unlinked`: imports `nothing@1`, which no plugin exports.

use graft_api::{Context, Error};

graft_api::contract! {
    /// What no plugin exports.
    pub struct NothingV1 = "nothing@1": json fn(String) -> String;
    /// Calls `nothing@1`.
    pub struct LonelyV1 = "lonely@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "unlinked",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        NOTHING: NothingV1,
    },
    exports: {
        LonelyV1 => lonely,
    },
}

fn lonely(ctx: &Context<'_>, input: String) -> Result<String, Error> {
    ctx.call(NOTHING, input)
}
