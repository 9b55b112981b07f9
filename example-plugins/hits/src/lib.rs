//! Example plugin `hits`: a count per integer key (a page, a user, a SKU) in a table the host
//! holds, its contracts called by value (`u64 -> u64`, no encoding on the call): what the
//! table benchmark measures (`cargo bench -p graft-host --bench tables`).

use example_types::hits::{GetV1, IncrV1, SetV1};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "hits",
    version: env!("CARGO_PKG_VERSION"),
    tables: {
        HITS: Table<u64, u64> = "hits",
    },
    exports: {
        GetV1 => get,
        SetV1 => set,
        IncrV1 => incr,
    },
}

fn get(ctx: &Context<'_>, key: u64) -> Result<u64, Error> {
    Ok(ctx.table(HITS).get(&key)?.unwrap_or(0))
}

fn set(ctx: &Context<'_>, key: u64) -> Result<u64, Error> {
    ctx.table(HITS).insert(&key, &key)?;
    Ok(key)
}

fn incr(ctx: &Context<'_>, key: u64) -> Result<u64, Error> {
    let counted = ctx.table(HITS).update(&key, |n| Some(n.unwrap_or(0) + 1))?;
    Ok(counted.unwrap_or(0))
}
