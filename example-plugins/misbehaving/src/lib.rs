//! Test plugin `misbehaving`: exports that panic (directly or through an import), fail, or
//! behave.

use graft_api::{Context, Error, Import};

graft_api::plugin! {
    name: "misbehaving",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        PANIC: Import<String, String> = "panic@1",
    },
    exports: {
        "relay@1" => relay,
        "panic@1" => panics,
        "fail@1" => fails,
        "echo@1" => echo,
    },
}

/// Calls `panic@1` (its own export) through an import: a panic one call deep.
fn relay(ctx: &Context<'_>, what: String) -> Result<String, Error> {
    ctx.call(PANIC, &what)
}

fn panics(_: &Context<'_>, what: String) -> Result<String, Error> {
    panic!("misbehaving plugin panicked on {what}")
}

fn fails(_: &Context<'_>, what: String) -> Result<String, Error> {
    Err(Error::new(format!("refused {what}")))
}

fn echo(_: &Context<'_>, what: String) -> Result<String, Error> {
    Ok(what)
}
