//! Example plugin `kv`, schema 1: a key-value store whose entries live in a table the host
//! holds.
//!
//! The entries are not in a `static` or in the plugin's state: they are in the host's table
//! `kv.entries`, which outlives every build, every rollback and every unloaded library, and
//! which the operator may keep across restarts (`[tables."kv.entries"]` in `graft.toml`).
//! `kv-v2` adds a field to the entries and carries the migrations both ways.

use example_types::kv::{CountV1, EntryV1, GetManyV1, GetV1, Put, PutV1, MAX_MANY};
use graft_api::table::TableError;
use graft_api::{Context, Error};

graft_api::plugin! {
    name: "kv",
    version: env!("CARGO_PKG_VERSION"),
    tables: {
        ENTRIES: Table<String, EntryV1> = "entries",
    },
    exports: {
        PutV1 => put,
        GetV1 => get,
        GetManyV1 => get_many,
        CountV1 => count,
    },
}

fn put(ctx: &Context<'_>, put: Put) -> Result<bool, Error> {
    let entry = EntryV1 { value: put.value };
    match ctx.table(ENTRIES).insert(&put.key, &entry) {
        Ok(replaced) => Ok(replaced),
        // The operator's limit: the client may retry once keys were removed.
        Err(TableError::Full(why)) => Err(Error::unavailable(why)),
        Err(other) => Err(other.into()),
    }
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
