//! Example plugin `foo`, first build: `foo(a) = bar(frob(a))` over the `@1` contracts.
//!
//! `foo@1` is the entry point. Its input may ask for a pause between the frob call and the bar
//! call (`pause_ms`), or for a gate: after frob returns, foo creates `GATE/frob-done` and waits for
//! `GATE/go` before calling bar. Both make a request straddle a release going live.

use std::path::Path;
use std::time::Duration;

use example_types::{BarOutput, FooInput, FooOutput, Frob1};
use graft_api::{Context, Error, Import};

graft_api::plugin! {
    name: "foo",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        FROB: Import<u64, Frob1> = "frob@1",
        BAR: Import<Frob1, BarOutput> = "bar@1",
    },
    exports: {
        "foo@1" => foo,
    },
}

fn foo(ctx: &Context<'_>, input: FooInput) -> Result<FooOutput, Error> {
    let frobbed = ctx.call(FROB, &input.a)?;
    if input.pause_ms > 0 {
        std::thread::sleep(Duration::from_millis(input.pause_ms));
    }
    if let Some(gate) = &input.gate {
        example_types::wait_at_gate(Path::new(gate)).map_err(Error::new)?;
    }
    let frob_version = frobbed.version.clone();
    let bar = ctx.call(BAR, &frobbed)?;
    Ok(FooOutput {
        value: bar.value,
        foo: env!("CARGO_PKG_VERSION").to_owned(),
        bar: bar.version,
        frob: frob_version,
    })
}
