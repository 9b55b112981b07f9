//! `isolation` and `[workers]`: which generations run in worker processes, and how those are
//! run (see [`worker`](crate::worker)).

use std::path::PathBuf;

use serde::Deserialize;

/// Which generations run in worker processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// None: every call runs in the front.
    #[default]
    None,
    /// A rollout's canary.
    Canary,
    /// Every generation.
    All,
}

/// `[workers]` in `graft.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The `graft` executable workers run (default: the running one).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// How long a worker may take to serve after it is started (default 10 s).
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// How long a call past its deadline may still run before its worker is recycled
    /// (default 1 s).
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// How many crashes of the stable generation's worker within `crash_window_ms` roll the
    /// host back to the previous release (default 3).
    #[serde(default = "default_crash_limit")]
    pub crash_limit: usize,
    /// See `crash_limit` (default 60 s).
    #[serde(default = "default_crash_window_ms")]
    pub crash_window_ms: u64,
    /// The first wait before a crashed stable worker is started again; doubled for each crash
    /// in the window, at most 5 s (default 100 ms).
    #[serde(default = "default_restart_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// The most memory a worker may allocate (its `RLIMIT_DATA`), in MiB. No limit by default.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// Under `isolation = "all"`, while no rollout is under way, the current generation's
    /// worker serves client connections itself (the front hands them over) instead of the
    /// front forwarding each request (default true). With false, every request is forwarded.
    #[serde(default = "default_serve_connections")]
    pub serve_connections: bool,
}

fn default_serve_connections() -> bool {
    true
}

fn default_start_timeout_ms() -> u64 {
    10_000
}
fn default_grace_ms() -> u64 {
    1_000
}
fn default_crash_limit() -> usize {
    3
}
fn default_crash_window_ms() -> u64 {
    60_000
}
fn default_restart_backoff_ms() -> u64 {
    100
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            binary: None,
            start_timeout_ms: default_start_timeout_ms(),
            grace_ms: default_grace_ms(),
            crash_limit: default_crash_limit(),
            crash_window_ms: default_crash_window_ms(),
            restart_backoff_ms: default_restart_backoff_ms(),
            serve_connections: default_serve_connections(),
            memory_limit_mb: None,
        }
    }
}
