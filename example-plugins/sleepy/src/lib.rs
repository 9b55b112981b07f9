//! Example plugin `sleepy`: an async export.
//!
//! `sleep@1` takes a number of milliseconds, waits that long on the host's timer and returns
//! the number. While it waits it holds no thread: the host's runtime polls its future, and
//! the request's generation stays pinned until it is done. A plugin waits on the host
//! (`graft_api::sleep`, `graft_api::blocking`), never on a runtime of its own.
//!
//! `naps@1` shows the two other async tools: an async import call (`ctx.call_async`, here to
//! this plugin's own `sleep@1`, bound at link like any import) and blocking work handed to the
//! host's pool (`graft_api::blocking`).

use std::time::Duration;

use graft_api::{Context, Error};

graft_api::contract! {
    /// Waits the given number of milliseconds (at most a minute), then returns it.
    pub struct SleepV1 = "sleep@1": json async fn(u64) -> u64;
    /// Sleeps each number of milliseconds in turn (through `sleep@1`), then adds them up on
    /// the host's blocking pool; returns the sum.
    pub struct NapsV1 = "naps@1": json async fn(Vec<u64>) -> u64;
}

graft_api::plugin! {
    name: "sleepy",
    version: env!("CARGO_PKG_VERSION"),
    imports: {
        SLEEP: SleepV1,
    },
    exports: {},
    async_exports: {
        SleepV1 => sleep,
        NapsV1 => naps,
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

async fn naps(ctx: Context<'static>, naps: Vec<u64>) -> Result<u64, Error> {
    for &millis in &naps {
        ctx.call_async(SLEEP, millis).await?;
    }
    // Stands for work that blocks (file I/O, a long computation): it runs on the host's
    // blocking pool while this future waits, holding no runtime thread.
    graft_api::blocking(move || naps.iter().sum()).await
}
