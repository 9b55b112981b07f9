//! Test plugin `unlinked`: imports `nothing@1`, which no plugin exports.

use graft_api::{Context, Error, Import};

graft_api::plugin! {
    name: "unlinked",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        NOTHING: Import<String, String> = "nothing@1",
    },
    exports: {
        "lonely@1" => lonely,
    },
}

fn lonely(ctx: &Context<'_>, input: String) -> Result<String, Error> {
    ctx.call(NOTHING, &input)
}
