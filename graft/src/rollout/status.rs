//! What a rollout reports: its state, its events and its status, and the record of it
//! (`DATA/rollout.json`) that a restarted server reads.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::analysis::{Verdict, WindowStats};
use super::plan::PlanStep;

/// How many events a status keeps.
const EVENTS_KEPT: usize = 50;

/// Which side of a rollout a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// The current generation.
    Stable,
    /// The canary.
    Canary,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stable" => Ok(Self::Stable),
            "canary" => Ok(Self::Canary),
            other => Err(format!(
                "unknown route {:?}: stable or canary",
                graft_host::bounded::Bounded(other).to_string()
            )),
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Stepping through its plan.
    Running,
    /// Held at its step by an operator; the analysis still aborts on a breach.
    Paused,
    /// The canary became the current generation.
    Promoted,
    /// The canary was dropped.
    Aborted,
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::Aborted => "aborted",
        })
    }
}

impl RolloutState {
    /// Whether the rollout is still under way (running or paused).
    pub fn is_under_way(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// A state change, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `started`, `step`, `waiting`, `paused`, `resumed`, `promoted`, `aborted`.
    pub event: String,
    /// The canary's weight after the event, in percent.
    pub weight: u32,
    /// Why, in words.
    pub message: String,
    /// Stable's window at the time.
    pub stable: WindowStats,
    /// The canary's window at the time.
    pub canary: WindowStats,
}

/// One analysis interval of a rollout: what each side did during it (not over the step), for a
/// chart of canary against stable over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutSample {
    /// When the interval ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The canary's weight then, in percent.
    pub weight: u32,
    /// Stable during the interval.
    pub stable: WindowStats,
    /// The canary during the interval.
    pub canary: WindowStats,
}

/// How many samples a status keeps (the newest).
pub const SAMPLES_KEPT: usize = 300;

/// A rollout, as `graft rollout status` and `GET /rollout` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RolloutStatus {
    /// Where it is.
    pub state: RolloutState,
    /// The canary's release label.
    pub release: Option<String>,
    /// The stable generation.
    pub stable: u64,
    /// The canary generation.
    pub canary: u64,
    /// The current step, from 1.
    pub step: usize,
    /// The plan's steps.
    pub plan: Vec<PlanStep>,
    /// The canary's weight now, in percent.
    pub weight: u32,
    /// How long the current step has run, in milliseconds.
    pub step_elapsed_ms: u64,
    /// Stable over the current step.
    pub stable_window: WindowStats,
    /// The canary over the current step.
    pub canary_window: WindowStats,
    /// The last analysis.
    pub last_verdict: Option<Verdict>,
    /// State changes, oldest first (the last 50).
    pub events: Vec<RolloutEvent>,
    /// The thresholds it is judged by (the configured ones, or its own).
    #[serde(default)]
    pub analysis: super::AnalysisConfig,
    /// Each analysis interval while it ran, oldest first (the last [`SAMPLES_KEPT`]).
    #[serde(default)]
    pub samples: Vec<RolloutSample>,
}

impl RolloutStatus {
    /// The message of the last event: why it ended, for a finished rollout.
    pub fn last_message(&self) -> &str {
        self.events.last().map_or("", |e| e.message.as_str())
    }
}

/// Appends an event to the status, with the windows as they are, keeping the last
/// [`EVENTS_KEPT`].
pub(super) fn push_event(status: &mut RolloutStatus, kind: &str, message: String) {
    let entry = RolloutEvent {
        at_ms: now_ms(),
        event: kind.to_owned(),
        weight: status.weight,
        message,
        stable: status.stable_window.clone(),
        canary: status.canary_window.clone(),
    };
    status.events.push(entry);
    if status.events.len() > EVENTS_KEPT {
        status.events.remove(0);
    }
}

/// Adds the interval that just ended.
pub(super) fn push_sample(status: &mut RolloutStatus, stable: WindowStats, canary: WindowStats) {
    status.samples.push(RolloutSample {
        at_ms: now_ms(),
        weight: status.weight,
        stable,
        canary,
    });
    if status.samples.len() > SAMPLES_KEPT {
        status.samples.remove(0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes the status to the record (temp file, fsync, rename); a failure is logged.
pub(super) fn write_record(path: &Path, status: &RolloutStatus) {
    let written = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|bytes| graft_host::atomic_file::write(path, &bytes));
    if let Err(error) = written {
        tracing::error!(path = %path.display(), %error, "could not record the rollout");
    }
}

/// The rollout status recorded by the last run, if any; an unreadable record is logged and
/// ignored (it only reports).
pub(super) fn read_record(path: &Path) -> Option<RolloutStatus> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not read the rollout record");
            return None;
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|error| {
            tracing::warn!(path = %path.display(), %error, "ignoring a corrupt rollout record");
        })
        .ok()
}
