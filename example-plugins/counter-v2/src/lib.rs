//! Example plugin `counter`, schema 2: the total and a count per key.
//!
//! It declares its state with the migrations from and back to schema 1: deploying it over
//! `counter-v1` runs `up`; deploying `counter-v1` over it (a rollback) runs `down`, so the
//! total carries both ways and nothing stale comes back.

use std::sync::atomic::Ordering;

use example_types::counter::{CounterV1, CounterV2, IncrV1, KeyCountV1, TotalV1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV2 {
        up CounterV1 => up,
        down CounterV1 => down,
    },
    exports: {
        IncrV1 => incr,
        TotalV1 => total,
        KeyCountV1 => key_count,
    },
    pre_activate: pre_activate,
}

fn up(old: &CounterV1) -> Result<CounterV2, Error> {
    Ok(CounterV2::from_v1(old))
}

fn down(new: &CounterV2) -> Result<CounterV1, Error> {
    Ok(new.to_v1())
}

/// A place for checks before this build takes traffic: a failing one vetoes the release.
fn pre_activate() -> Result<(), Error> {
    Ok(())
}

fn incr(ctx: &Context<'_>, key: u32) -> Result<u64, Error> {
    let state: &CounterV2 = ctx.state()?;
    state.key(key)?.fetch_add(1, Ordering::AcqRel);
    Ok(state.total.fetch_add(1, Ordering::AcqRel) + 1)
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV2>()?.total.load(Ordering::Acquire))
}

fn key_count(ctx: &Context<'_>, key: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV2>()?.key(key)?.load(Ordering::Acquire))
}
