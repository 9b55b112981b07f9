//! Example plugin `sleepy`: an async export.
//!
//! `sleep@1` takes a number of milliseconds, waits that long on the host's timer and returns
//! the number. While it waits it holds no thread: the host's runtime polls its future, and
//! the request's generation stays pinned until it is done. A plugin waits on the host
//! (`graft_api::sleep`, `graft_api::blocking`), never on a runtime of its own.

use std::time::Duration;

use graft_api::{Context, Error};

graft_api::contract! {
    /// Waits the given number of milliseconds (at most a minute), then returns it.
    pub struct SleepV1 = "sleep@1": json async fn(u64) -> u64;
}

graft_api::plugin! {
    name: "sleepy",
    version: env!("CARGO_PKG_VERSION"),
    exports: {},
    async_exports: {
        SleepV1 => sleep,
    },
}

/// The longest wait a request may ask for.
const MAX_MILLIS: u64 = 60_000;

async fn sleep(_: Context<'static>, millis: u64) -> Result<u64, Error> {
    if millis > MAX_MILLIS {
        return Err(Error::invalid(format!(
            "{millis} ms is more than {MAX_MILLIS}"
        )));
    }
    graft_api::sleep(Duration::from_millis(millis)).await?;
    Ok(millis)
}
