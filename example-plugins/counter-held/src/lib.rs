//! Test plugin `counter`, schema 1 like `counter-v1`, with an increment that is held: `incr@1`
//! and `total@1` as usual, and `incr-held@1`, which increments, then waits at a gate the test
//! opens (or for a minute): a slow request in flight that can write the counter's state.

use std::sync::atomic::Ordering;

use example_types::counter::{CounterV1, IncrV1, TotalV1};
use graft_api::{Context, Error};

graft_api::contract! {
    /// Adds one, then waits at the gate directory given (see `example_types::hold_at_gate`);
    /// returns the new total.
    pub struct IncrHeldV1 = "incr-held@1": json fn(String) -> u64;
}

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV1,
    exports: {
        IncrV1 => incr,
        TotalV1 => total,
        IncrHeldV1 => incr_held,
    },
}

fn incr(ctx: &Context<'_>, _key: u32) -> Result<u64, Error> {
    Ok(ctx
        .state::<CounterV1>()?
        .total
        .fetch_add(1, Ordering::AcqRel)
        + 1)
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV1>()?.total.load(Ordering::Acquire))
}

fn incr_held(ctx: &Context<'_>, gate: String) -> Result<u64, Error> {
    let total = incr(ctx, 0)?;
    example_types::hold_at_gate(std::path::Path::new(&gate), "incremented")
        .map_err(Error::unavailable)?;
    Ok(total)
}
