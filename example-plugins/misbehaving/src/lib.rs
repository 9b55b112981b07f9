//! Test plugin `misbehaving`: exports that panic, fail, or behave.

use graft_api::{Context, Error};

graft_api::plugin! {
    name: "misbehaving",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        "panic@1" => panics,
        "fail@1" => fails,
        "echo@1" => echo,
    },
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
