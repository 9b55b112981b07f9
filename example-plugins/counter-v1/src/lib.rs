//! Example plugin `counter`, schema 1: a total the host keeps across builds.
//!
//! The count lives in host-held state (`state: CounterV1`), not in a `static`: a new build, a
//! rollback or an unloaded library leaves it as it was. `counter-v2` changes the state's
//! schema and carries the migrations both ways.

use std::sync::atomic::Ordering;

use example_types::counter::{CounterV1, IncrV1, TotalV1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV1,
    exports: {
        IncrV1 => incr,
        TotalV1 => total,
    },
}

/// Schema 1 keeps no keys: every increment counts in the total.
fn incr(ctx: &Context<'_>, _key: u32) -> Result<u64, Error> {
    let state: &CounterV1 = ctx.state()?;
    Ok(state.total.fetch_add(1, Ordering::AcqRel) + 1)
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV1>()?.total.load(Ordering::Acquire))
}
