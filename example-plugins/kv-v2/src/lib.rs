//! Example plugin `kv`, schema 2: the store of `kv-v1`, whose entries also count how many times
//! their key was put.
//!
//! The value type changed, so the table's schema did (`EntryV2::SCHEMA` is 2), and this build
//! carries both migrations, each a function of one entry: `up` from schema 1 (deploying it over
//! `kv-v1`) and `down` back to it (deploying `kv-v1` over it: a rollback). The host runs them
//! on every entry while requests go on, and holds only the requests that can reach `kv` for the
//! last few entries written meanwhile.

use example_types::kv::{CountV1, EntryV1, EntryV2, GetManyV1, GetV1, Put, PutV1, MAX_MANY};
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "kv",
    version: env!("CARGO_PKG_VERSION"),
    tables: {
        ENTRIES: Table<String, EntryV2> = "entries" {
            up EntryV1 => up,
            down EntryV1 => down,
        },
    },
    exports: {
        PutV1 => put,
        GetV1 => get,
        GetManyV1 => get_many,
        CountV1 => count,
    },
}

fn up(old: EntryV1) -> Result<EntryV2, Error> {
    Ok(old.into())
}

fn down(new: EntryV2) -> Result<EntryV1, Error> {
    Ok(new.into())
}

fn put(ctx: &Context<'_>, put: Put) -> Result<bool, Error> {
    // One read-modify-write: the closure may run again if another request changed the entry
    // meanwhile, so it only computes. Past the table's limits `?` answers 507 (kv-v1 maps a
    // full table to a 503 of its own instead).
    let mut replaced = false;
    ctx.table(ENTRIES).update(&put.key, |old| {
        replaced = old.is_some();
        Some(EntryV2 {
            value: put.value.clone(),
            puts: old.map_or(0, |old| old.puts) + 1,
        })
    })?;
    Ok(replaced)
}

fn get(ctx: &Context<'_>, key: String) -> Result<String, Error> {
    match ctx.table(ENTRIES).get(&key)? {
        Some(entry) => Ok(entry.value),
        None => Err(Error::not_found(format!("no key {key}"))),
    }
}

fn get_many(ctx: &Context<'_>, keys: Vec<String>) -> Result<Vec<Option<String>>, Error> {
    if keys.len() > MAX_MANY {
        return Err(Error::invalid(format!("at most {MAX_MANY} keys at once")));
    }
    let entries = ctx.table(ENTRIES);
    keys.iter()
        .map(|key| Ok(entries.get(key)?.map(|entry| entry.value)))
        .collect()
}

fn count(ctx: &Context<'_>, _: Option<u8>) -> Result<u64, Error> {
    Ok(ctx.table(ENTRIES).len())
}
