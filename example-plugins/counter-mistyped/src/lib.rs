//! Test plugin `counter`, schema 2 like `counter-v2`, whose migration up from schema 1 reads a
//! type of another structure than schema 1's (`total` is 32 bits wide here, 64 in
//! `CounterV1`): refused at step migrate, saying which field differs.

use std::sync::atomic::{AtomicU32, Ordering};

use abi_stable::StableAbi;
use example_types::counter::{CounterV2, TotalV1};
use graft_api::{Context, Error, State};

/// What this build wrongly believes schema 1 is.
#[repr(C)]
#[derive(StableAbi)]
pub struct NarrowCounter {
    total: AtomicU32,
}

impl State for NarrowCounter {
    const SCHEMA: u32 = 1;
    fn init() -> Self {
        Self {
            total: AtomicU32::new(0),
        }
    }
}

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV2 {
        up NarrowCounter => up,
    },
    exports: {
        TotalV1 => total,
    },
}

fn up(old: &NarrowCounter) -> Result<CounterV2, Error> {
    let new = CounterV2::init();
    new.total.store(
        u64::from(old.total.load(Ordering::Acquire)),
        Ordering::Relaxed,
    );
    Ok(new)
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV2>()?.total.load(Ordering::Acquire))
}
