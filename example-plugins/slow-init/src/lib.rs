//! Test plugin `slow-init`: when `GRAFT_TEST_INIT_GATE` names a directory, its initialiser
//! creates `init-started` there and waits (at most 60 s) for `go`. A test uses it to kill the host
//! while a deploy is in its init step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use graft_api::{Context, Error};

graft_api::contract! {
    /// Returns its input.
    pub struct SlowV1 = "slow@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "slow-init",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        SlowV1 => slow,
    },
    init: init,
}

fn init() -> Result<(), Error> {
    let Some(gate) = std::env::var_os("GRAFT_TEST_INIT_GATE").map(PathBuf::from) else {
        return Ok(());
    };
    std::fs::write(gate.join("init-started"), b"")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gate.join("go").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn slow(_: &Context<'_>, input: String) -> Result<String, Error> {
    Ok(input)
}
