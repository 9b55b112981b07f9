//! Test plugin `misbehaving`: exports that panic (directly or through an import), fail, fail
//! with a kind of error the caller can act on, break an import's JSON, or behave.

use abi_stable::std_types::RString;
use graft_api::{Context, Error};

graft_api::contract! {
    /// Calls `panic@1` with its input.
    pub struct RelayV1 = "relay@1": fn(RString) -> RString;
    /// Panics.
    pub struct PanicV1 = "panic@1": fn(RString) -> RString;
    /// Fails with a plugin error.
    pub struct FailV1 = "fail@1": fn(RString) -> RString;
    /// Returns its input.
    pub struct EchoV1 = "echo@1": fn(RString) -> RString;
    /// Fails with the kind its input names: `not-found`, `conflict`, `invalid`, `unavailable`.
    pub struct RefuseV1 = "refuse@1": fn(RString) -> RString;
    /// Halves a number; JSON, so a NaN (encoded as `null`) fails to decode on its way in.
    pub struct HalfV1 = "half@1": json fn(f64) -> f64;
    /// Calls `half@1` with a NaN: an import whose JSON breaks between two plugins.
    pub struct NanV1 = "nan@1": fn(RString) -> f64;
}

graft_api::plugin! {
    name: "misbehaving",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        PANIC: PanicV1,
        HALF: HalfV1,
    },
    exports: {
        RelayV1 => relay,
        PanicV1 => panics,
        FailV1 => fails,
        EchoV1 => echo,
        RefuseV1 => refuse,
        HalfV1 => half,
        NanV1 => nan,
    },
}

/// Calls `panic@1` (its own export) through an import: a panic one call deep.
fn relay(ctx: &Context<'_>, what: RString) -> Result<RString, Error> {
    ctx.call(PANIC, what)
}

fn panics(_: &Context<'_>, what: RString) -> Result<RString, Error> {
    panic!("misbehaving plugin panicked on {what}")
}

fn fails(_: &Context<'_>, what: RString) -> Result<RString, Error> {
    Err(Error::new(format!("refused {what}")))
}

fn echo(_: &Context<'_>, what: RString) -> Result<RString, Error> {
    Ok(what)
}

fn refuse(_: &Context<'_>, kind: RString) -> Result<RString, Error> {
    Err(match kind.as_str() {
        "not-found" => Error::not_found("no such thing"),
        "conflict" => Error::conflict("it changed meanwhile"),
        "invalid" => Error::invalid("a number was expected"),
        "unavailable" => Error::unavailable("try again later"),
        other => Error::new(format!("unknown kind {other}")),
    })
}

fn half(_: &Context<'_>, x: f64) -> Result<f64, Error> {
    Ok(x / 2.0)
}

fn nan(ctx: &Context<'_>, _: RString) -> Result<f64, Error> {
    ctx.call(HALF, f64::NAN)
}
