//! Test plugin `counter`, schema 2 like `counter-v2`, whose migrations name schema 1 by a type
//! of its own, `CartStateV1`: the same structure as `CounterV1` under another name, as a build
//! that renamed the old type when it added the new one. State is compared by structure, so the
//! migrations still apply.

use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::StableAbi;
use example_types::counter::{CounterV2, TotalV1};
use graft_api::{Context, Error, State};

/// Schema 1, renamed.
#[repr(C)]
#[derive(StableAbi)]
pub struct CartStateV1 {
    total: AtomicU64,
}

impl State for CartStateV1 {
    const SCHEMA: u32 = 1;
    const PERSIST: bool = true;
    fn init() -> Self {
        Self {
            total: AtomicU64::new(0),
        }
    }
}

graft_api::plugin! {
    name: "counter",
    version: env!("CARGO_PKG_VERSION"),
    state: CounterV2 {
        up CartStateV1 => up,
        down CartStateV1 => down,
    },
    exports: {
        TotalV1 => total,
    },
}

fn up(old: &CartStateV1) -> Result<CounterV2, Error> {
    let new = CounterV2::init();
    new.total
        .store(old.total.load(Ordering::Acquire), Ordering::Relaxed);
    Ok(new)
}

fn down(new: &CounterV2) -> Result<CartStateV1, Error> {
    Ok(CartStateV1 {
        total: AtomicU64::new(new.total.load(Ordering::Acquire)),
    })
}

fn total(ctx: &Context<'_>, _: u32) -> Result<u64, Error> {
    Ok(ctx.state::<CounterV2>()?.total.load(Ordering::Acquire))
}
