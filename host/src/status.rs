//! What [`Host::status`](crate::Host::status) reports; serialisable for the admin API.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use crate::loader::UnloadPolicy;

/// A snapshot of the host: generations, libraries, release history.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The current generation's id.
    pub current: u64,
    /// The canary generation's id, while a staged rollout has one.
    pub canary: Option<u64>,
    /// Every live generation (current, and replaced ones still draining), oldest first.
    pub generations: Vec<GenerationStatus>,
    /// Every library mapped by the host.
    pub libraries: Vec<LibraryStatus>,
    /// Releases that went live, oldest first; the last one is current.
    pub history: Vec<ReleaseRecord>,
    /// What happens to a library once no generation uses it.
    pub unload_policy: UnloadPolicy,
    /// The result of the last deploy or rollback.
    pub last_deploy: Option<DeployOutcome>,
}

/// One live generation.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GenerationStatus {
    /// Its id.
    pub id: u64,
    /// Its release label.
    pub release: Option<String>,
    /// Whether it is the current one.
    pub current: bool,
    /// Whether it is the canary of a staged rollout.
    pub canary: bool,
    /// Its plugins.
    pub plugins: Vec<PluginStatus>,
    /// Pins holding it: every owned pin; for a replaced generation, every pin. (Short synchronous
    /// pins of the current generation are not counted: counting them would put a shared counter
    /// on every call.)
    pub in_flight: usize,
    /// Milliseconds since it was published.
    pub age_ms: u64,
}

/// One plugin of a generation.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The graft API version it was built against.
    pub api_version: String,
    /// SHA-256 of its library.
    pub sha256: String,
}

/// One mapped library.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LibraryStatus {
    /// The plugin it holds.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The staged file it was loaded from.
    pub path: PathBuf,
    /// Loaded, or released but still pinned in memory by the plugin.
    pub state: LibraryState,
}

/// Whether a library is in use or lingering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LibraryState {
    /// Loaded and used by a generation (or kept by the `Never` policy).
    Loaded,
    /// Closed by the host, but still mapped: the plugin pinned it (a thread or a thread-local).
    Pinned,
}

/// A release that went live: enough to deploy it again (rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ReleaseRecord {
    /// The generation it became.
    pub generation: u64,
    /// Its label.
    pub name: Option<String>,
    /// The whole plugin set of that generation.
    pub plugins: Vec<PluginRecord>,
}

/// One plugin of a recorded release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct PluginRecord {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of its library.
    pub sha256: String,
    /// Its staged copy.
    pub staged: PathBuf,
}

/// The result of the last deploy or rollback.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeployOutcome {
    /// When it finished.
    pub at: SystemTime,
    /// The generation it published, if it succeeded.
    pub generation: Option<u64>,
    /// The error, if it failed.
    pub error: Option<String>,
}
