//! Example plugin `foo`, second build: `foo(a) = bar(frob(a))` over the `@2` contracts.
//!
//! `foo@1` is the entry point. Its input may ask for a pause between the frob call and the bar
//! call (`pause_ms`), or for a gate: after frob returns, foo creates `GATE/frob-done` and waits for
//! `GATE/go` before calling bar. Both make a request straddle a release going live.

use std::path::Path;
use std::time::Duration;

use abi_stable::std_types::{RSome, RString};
use example_types::{BarV2, FooInput, FooOutput, FooV1, FrobV2};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "foo",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        FROB: FrobV2,
        BAR: BarV2,
    },
    exports: {
        FooV1 => foo,
    },
}

fn foo(ctx: &Context<'_>, input: FooInput) -> Result<FooOutput, Error> {
    let frobbed = ctx.call(FROB, input.a)?;
    if input.pause_ms > 0 {
        std::thread::sleep(Duration::from_millis(input.pause_ms));
    }
    if let RSome(gate) = input.gate.as_ref().map(RString::as_str) {
        example_types::wait_at_gate(Path::new(gate)).map_err(Error::new)?;
    }
    let frob_version = frobbed.version.clone();
    let bar = ctx.call(BAR, frobbed)?;
    Ok(FooOutput {
        value: bar.value,
        foo: env!("CARGO_PKG_VERSION").into(),
        bar: bar.version,
        frob: frob_version,
    })
}
