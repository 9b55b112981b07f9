//! What a deploy, a rollback or a restore did: [`DeployReport`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::LinkReport;

/// What a successful deploy or rollback did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeployReport {
    /// The generation now current.
    pub generation: u64,
    /// The release label.
    pub release: Option<String>,
    /// The new generation's plugins and what happened to each.
    pub plugins: Vec<PluginChange>,
    /// Plugins the new generation no longer has.
    pub removed: Vec<String>,
    /// How imports were bound.
    pub link: LinkReport,
    /// From the start of the prepare to the store that made it live.
    #[serde(rename = "elapsed_ms", with = "crate::millis")]
    pub elapsed: Duration,
    /// Of `elapsed`, reading, hashing and durably staging the files, then loading and checking
    /// them: bound by file size and disk (each staged copy is fsynced).
    #[serde(rename = "staging_ms", with = "crate::millis")]
    pub staging: Duration,
    /// Linking, initialising, and the publish step: from "everything is loaded" to "new requests
    /// run the new code", not counting time the prepared release waited to be published.
    #[serde(rename = "go_live_ms", with = "crate::millis")]
    pub go_live: Duration,
    /// The state and table migrations the release ran: `counter 1 -> 2 (up)`, `kv.entries 1
    /// -> 2 (up)`.
    #[serde(default)]
    pub migrated: Vec<String>,
    /// How many table entries the migrations carried over.
    #[serde(default)]
    pub entries_migrated: u64,
    /// How long the requests that can reach a migrating plugin were held at the boundary (zero
    /// when no schema changed; other requests are never held).
    #[serde(rename = "pause_ms", with = "crate::millis", default)]
    pub pause: Duration,
    /// The release is live already (the same plugin builds under the same name): nothing was
    /// published, and `generation` is the current one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// What the release asked that was done already (a plugin to remove that is gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `generation 2 live: release v2; foo 2.0.0 (replaced), bar 1.0.0 (kept)`
impl fmt::Display for DeployReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unchanged {
            return write!(
                f,
                "generation {} unchanged: release {} is live already",
                self.generation,
                self.release.as_deref().unwrap_or("-")
            );
        }
        write!(
            f,
            "generation {} live: release {}; ",
            self.generation,
            self.release.as_deref().unwrap_or("-")
        )?;
        for (i, p) in self.plugins.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {} ({})", p.name, p.version, p.change)?;
        }
        if !self.removed.is_empty() {
            write!(f, "; removed {}", self.removed.join(", "))?;
        }
        if !self.migrated.is_empty() {
            write!(
                f,
                "; state migrated: {} (requests held {:.3} ms)",
                self.migrated.join(", "),
                self.pause.as_secs_f64() * 1e3
            )?;
        }
        for warning in &self.warnings {
            write!(f, "; warning: {warning}")?;
        }
        Ok(())
    }
}

/// One plugin of a new generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginChange {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What the release did to it.
    pub change: Change,
}

/// What a release did to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Change {
    /// New in this generation.
    Added,
    /// A new build replaced the previous one.
    Replaced,
    /// Carried over unchanged (or shipped again with identical bytes).
    Kept,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Replaced => "replaced",
            Self::Kept => "kept",
        })
    }
}
