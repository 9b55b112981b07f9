//! What [`Host::status`](crate::Host::status) reports; serialisable for an admin API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::unload::UnloadPolicy;

/// A snapshot of the host: generations, libraries, release history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The current generation's id.
    pub current: u64,
    /// Every live generation (current, prepared ones not published yet, and replaced ones still
    /// draining), oldest first.
    pub generations: Vec<GenerationStatus>,
    /// Every library mapped by the host.
    pub libraries: Vec<LibraryStatus>,
    /// Releases that went live, oldest first; the last one is current.
    pub history: Vec<ReleaseRecord>,
    /// What happens to a library once no generation uses it.
    pub unload_policy: UnloadPolicy,
    /// The result of the last deploy or rollback.
    pub last_deploy: Option<DeployOutcome>,
    /// Calls in flight (counted pins) on every generation.
    pub in_flight: usize,
    /// The oldest calls in flight, at most 16: a call that runs long (one that cannot be
    /// stopped, past its route's deadline) shows here with its age.
    pub calls: Vec<CallStatus>,
    /// The tables of the current generation's plugins.
    pub tables: Vec<TableStatus>,
}

/// One table held by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TableStatus {
    /// The plugin that declares it.
    pub plugin: String,
    /// Its name.
    pub name: String,
    /// Its value type's schema.
    pub schema: u32,
    /// How many entries it holds.
    pub entries: u64,
    /// How many bytes of keys and encoded values.
    pub bytes: u64,
    /// How it is kept across restarts.
    pub durability: crate::Durability,
    /// Its limits, if any.
    pub max_entries: Option<u64>,
    /// Its limit in bytes, if any.
    pub max_bytes: Option<u64>,
}

/// One call in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallStatus {
    /// The generation it pinned.
    pub generation: u64,
    /// What it is (`POST /cart/{id}`), if its pin was taken for a call site.
    pub label: Option<String>,
    /// Milliseconds since it started.
    pub age_ms: u64,
}

/// `POST /slow on generation 3 for 2400 ms`
impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = crate::bounded::Bounded(self.label.as_deref().unwrap_or("a call"));
        write!(
            f,
            "{label} on generation {} for {} ms",
            self.generation, self.age_ms
        )
    }
}

/// One live generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationStatus {
    /// Its id.
    pub id: u64,
    /// Its release label.
    pub release: Option<String>,
    /// Current, prepared or replaced.
    pub role: GenerationRole,
    /// Its plugins.
    pub plugins: Vec<PluginStatus>,
    /// Owned pins holding it: requests in flight. (Short synchronous pins are not counted:
    /// counting them would put a shared counter on every call.)
    pub in_flight: usize,
    /// Milliseconds since it was prepared.
    pub age_ms: u64,
}

/// What a generation is to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum GenerationRole {
    /// New requests pin it.
    Current,
    /// Prepared and not published (yet): a deploy about to go live, or the canary of a staged
    /// rollout, which requests reach only when routed to it.
    Prepared,
    /// It went live and was replaced since; it lives while requests still hold it.
    Replaced,
}

/// One plugin of a generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LibraryStatus {
    /// The plugin it holds.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The staged file it was loaded from.
    pub path: PathBuf,
    /// Loaded, initialising, abandoned, unloading, or released but pinned in memory by the
    /// plugin.
    pub state: LibraryState,
}

/// Whether a library is in use, starting, or lingering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LibraryState {
    /// Loaded (and initialised, or not needing it yet).
    Loaded,
    /// Its initialiser is running; a deploy is waiting for it.
    Initialising,
    /// Its initialiser ran past a deploy's deadline: the deploy was refused, and the library
    /// stays mapped until the initialiser returns.
    Abandoned,
    /// Closed by the host, but still mapped: the plugin pinned it (a thread or a thread-local).
    Pinned,
    /// Released by the host; its `pre_unload` hook is running (past the hook deadline the host
    /// goes on, and the library is closed when the hook returns).
    Unloading,
}

/// A release that went live: enough to deploy it again (rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The file it was deployed from (a release directory's library, a build), absolute: where
    /// a restart finds it again if the staged copy is gone. `None` in records written before
    /// sources were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The sha256 of the signed manifest that vouches for it, kept in `DATA/signed`; `None`
    /// when the host trusts no signing keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<String>,
}

/// The result of the last deploy or rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeployOutcome {
    /// When it finished, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The generation it published, if it succeeded.
    pub generation: Option<u64>,
    /// The error, if it failed (truncated to [`MAX_MESSAGE`](crate::bounded::MAX_MESSAGE)
    /// bytes).
    pub error: Option<String>,
}
