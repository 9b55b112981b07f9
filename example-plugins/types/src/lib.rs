//! The values the foo/bar/frob example plugins pass to each other, shared with the tests.
//!
//! `foo(a) = bar(frob(a))`. Contract 1: frob returns one value and bar doubles it. Contract 2:
//! frob also returns an extra element and bar adds it. Every output records the versions of the
//! plugins that produced it, so a test can see whether one request mixed two releases.

use serde::{Deserialize, Serialize};

/// The input of `foo@1`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FooInput {
    /// The argument.
    pub a: u64,
    /// Milliseconds to sleep between the frob call and the bar call.
    #[serde(default)]
    pub pause_ms: u64,
    /// A directory: after frob, create `frob-done` there and wait for `go` before calling bar.
    #[serde(default)]
    pub gate: Option<String>,
}

/// The output of `foo@1`: the value and who computed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FooOutput {
    /// `bar(frob(a))`.
    pub value: u64,
    /// Version of the foo plugin that ran.
    pub foo: String,
    /// Version of the bar plugin that ran.
    pub bar: String,
    /// Version of the frob plugin that ran.
    pub frob: String,
}

impl FooOutput {
    /// Whether foo, bar and frob came from builds with different major versions.
    pub fn is_mixed(&self) -> bool {
        let major = |v: &str| v.split('.').next().unwrap_or_default().to_owned();
        major(&self.foo) != major(&self.bar) || major(&self.bar) != major(&self.frob)
    }
}

/// The output of `frob@1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frob1 {
    /// `a + 1`.
    pub x: u64,
    /// Version of the frob plugin that ran.
    pub version: String,
}

/// The output of `frob@2`: one more element than `frob@1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frob2 {
    /// `a + 1`.
    pub x: u64,
    /// The element contract 2 added.
    pub extra: u64,
    /// Version of the frob plugin that ran.
    pub version: String,
}

/// The output of `bar@1` and `bar@2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BarOutput {
    /// The value.
    pub value: u64,
    /// Version of the bar plugin that ran.
    pub version: String,
}

/// What foo does at a gate (see [`FooInput::gate`]): signal that frob was called by creating
/// `GATE/frob-done`, then wait (at most 60 s) for the test to create `GATE/go`.
///
/// # Errors
///
/// When the marker cannot be written or the gate never opens.
pub fn wait_at_gate(gate: &std::path::Path) -> Result<(), String> {
    use std::time::{Duration, Instant};
    std::fs::write(gate.join("frob-done"), b"")
        .map_err(|e| format!("writing the gate marker: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gate.join("go").exists() {
        if Instant::now() > deadline {
            return Err("gate never opened".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
