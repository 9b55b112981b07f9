//! Test plugin `counter`, schema 3, whose migration from schema 2 panics: the release must be
//! refused with the state as it was.

use std::sync::atomic::AtomicU64;

use abi_stable::StableAbi;
use example_types::counter::{CounterV2, TotalV1};
use graft_api::{Context, Error, State};

/// Schema 3.
#[repr(C)]
#[derive(StableAbi)]
pub struct CounterV3 {
    total: AtomicU64,
    generation: u32,
}

impl State for CounterV3 {
    const SCHEMA: u32 = 3;
    fn init() -> Self {
        Self {
            total: AtomicU64::new(0),
            generation: 3,
        }
    }
}

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV3 {
        up CounterV2 => up,
    },
    exports: {
        TotalV1 => total,
    },
}

fn up(_: &CounterV2) -> Result<CounterV3, Error> {
    panic!("this migration is broken")
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    let state: &CounterV3 = ctx.state()?;
    Ok(state.total.load(std::sync::atomic::Ordering::Acquire) + u64::from(state.generation))
}
