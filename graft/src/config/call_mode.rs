//! A route's `mode` (see [`mode`](crate::serve::mode)).

use serde::Deserialize;

/// Where a route's calls run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallMode {
    /// On the worker thread that serves the request.
    Inline,
    /// On the blocking pool.
    Blocking,
    /// Inline while the route's calls stay within the inline budget, on the pool otherwise.
    #[default]
    Auto,
}
