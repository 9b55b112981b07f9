//! Test plugin `slow-hooks`: when `GRAFT_TEST_HOOK_GATE` names a directory holding the file
//! `hold-<hook>`, that hook (`pre_activate`, `post_activate` or `pre_unload`) creates `<hook>-started` there and
//! waits (at most 60 s) for `go`. Tests use it to hold a hook past the host's hook deadline.

use std::path::PathBuf;

use graft_api::{Context, Error};

graft_api::contract! {
    /// Returns its input.
    pub struct HookedV1 = "hooked@1": json fn(String) -> String;
}

graft_api::plugin! {
    name: "slow-hooks",
    version: env!("CARGO_PKG_VERSION"),
    exports: {
        HookedV1 => hooked,
    },
    pre_activate: pre_activate,
    post_activate: post_activate,
    pre_unload: pre_unload,
}

fn pre_activate() -> Result<(), Error> {
    hold("pre_activate")
}

fn post_activate() -> Result<(), Error> {
    hold("post_activate")
}

fn pre_unload() -> Result<(), Error> {
    hold("pre_unload")
}

/// Waits for the test's `go` if the test asked to hold `hook`.
fn hold(hook: &str) -> Result<(), Error> {
    let Some(gate) = std::env::var_os("GRAFT_TEST_HOOK_GATE").map(PathBuf::from) else {
        return Ok(());
    };
    if !gate.join(format!("hold-{hook}")).exists() {
        return Ok(());
    }
    example_types::hold_at_gate(&gate, &format!("{hook}-started")).map_err(Error::new)
}

fn hooked(_: &Context<'_>, input: String) -> Result<String, Error> {
    Ok(input)
}
