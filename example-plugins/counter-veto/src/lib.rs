//! Test plugin `counter`, schema 2 like `counter-v2`, whose `pre_activate` hook panics: the
//! panic is contained and the release refused at the activate step.

use std::sync::atomic::Ordering;

use example_types::counter::{CounterV2, TotalV1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV2,
    exports: {
        TotalV1 => total,
    },
    pre_activate: pre_activate,
}

fn pre_activate() -> Result<(), Error> {
    panic!("not today")
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV2>()?.total.load(Ordering::Acquire))
}
