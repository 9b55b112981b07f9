//! Fleet rollouts: one release taken across many hosts through their admin APIs, in waves.
//!
//! [`rollout`] uploads the release to each host as a bundle (hosts share no filesystem with the
//! operator) and starts a staged rollout there, so every host runs its own canary analysis on
//! its own traffic. The waves grow: one host first (the canary host), then 2, 4, 8... hosts at
//! once. A wave is done when every host in it has promoted its canary; the next wave starts only
//! then. When a host aborts its canary (or refuses the release, or cannot be reached, or its
//! wave runs out of time), the fleet rollout stops: rollouts still running in that wave are
//! aborted, and every host that already promoted the release is rolled back to the release it
//! had before.
//!
//! The hosts file (`graft fleet rollout --hosts FILE`):
//!
//! ```toml
//! [[host]]
//! name = "eu-1"                          # optional; the admin URL otherwise
//! admin = "http://10.0.0.7:9090"
//! token = "..."                          # optional
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graft_host::DisplayChain;
use serde::{Deserialize, Serialize};

use crate::api::{RolloutAction, RolloutOptions};
use crate::client::AdminClient;
use crate::rollout::{RolloutState, RolloutStatus};

/// One host of the fleet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetHost {
    /// A name for the summary; the admin URL if not given.
    #[serde(default)]
    pub name: Option<String>,
    /// Its admin API.
    pub admin: String,
    /// Its admin token.
    #[serde(default)]
    pub token: Option<String>,
}

impl FleetHost {
    /// The name, or the admin URL.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.admin)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    host: Vec<FleetHost>,
}

/// Why a fleet rollout could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The hosts file could not be read or is invalid.
    #[error("reading the hosts file {}: {reason}", path.display())]
    Hosts {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The release could not be packed.
    #[error("packing the release")]
    Pack(#[from] graft_host::release::ManifestError),
}

/// Reads a hosts file.
///
/// # Errors
///
/// [`FleetError::Hosts`] if it is unreadable, malformed or empty.
pub fn read_hosts(path: &Path) -> Result<Vec<FleetHost>, FleetError> {
    let invalid = |reason: String| FleetError::Hosts {
        path: path.to_owned(),
        reason,
    };
    let text = graft_host::input::read_text_bounded(path, crate::config::MAX_CONFIG_BYTES)
        .map_err(|e| invalid(e.to_string()))?;
    let file: HostsFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
    if file.host.is_empty() {
        return Err(invalid("no [[host]] entries".into()));
    }
    Ok(file.host)
}

/// How a fleet rollout runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetOptions {
    /// The canary weight each host starts at (the host's plan's first step if `None`).
    pub canary: Option<u32>,
    /// The plan each host follows (the host's configured plan if `None`).
    pub plan: Option<String>,
    /// How long a wave may take before it counts as failed.
    pub wave_timeout: Duration,
    /// How long the whole rollout may take: past it, the wave under way counts as failed
    /// (its hosts' rollouts aborted, the hosts updated before rolled back). None: no limit
    /// but the waves'.
    pub timeout: Option<Duration>,
    /// How often the hosts of a wave are polled.
    pub poll: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            canary: None,
            plan: None,
            wave_timeout: Duration::from_secs(30 * 60),
            timeout: None,
            poll: Duration::from_millis(500),
        }
    }
}

/// The waves of `hosts` hosts: 1, then 2, 4, 8... (the last one takes what is left).
pub fn waves(hosts: usize) -> Vec<std::ops::Range<usize>> {
    let mut waves = Vec::new();
    let (mut start, mut size) = (0, 1);
    while start < hosts {
        let end = (start + size).min(hosts);
        waves.push(start..end);
        start = end;
        size *= 2;
    }
    waves
}

/// What became of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostOutcome {
    /// Not reached: an earlier wave failed.
    NotStarted,
    /// Its canary is being analysed.
    Running,
    /// Its canary passed and was promoted, and it stays on the release.
    Promoted,
    /// Its canary was aborted (by its analysis, or because the wave failed elsewhere).
    Aborted,
    /// It refused the release or could not be reached.
    Failed,
    /// It had promoted the release, and was rolled back when a later host failed.
    RolledBack,
}

impl std::fmt::Display for HostOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotStarted => "not started",
            Self::Running => "running",
            Self::Promoted => "promoted",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
            Self::RolledBack => "rolled back",
        })
    }
}

/// One host's line in the summary.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HostReport {
    /// The host's label.
    pub host: String,
    /// Its wave, from 1.
    pub wave: usize,
    /// What became of it.
    pub outcome: HostOutcome,
    /// The canary generation it ran, if it got that far.
    pub generation: Option<u64>,
    /// The last word: the verdict, the abort reason, the error.
    pub detail: String,
}

/// The result of a fleet rollout.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FleetReport {
    /// Whether every host promoted the release.
    pub succeeded: bool,
    /// The wave that failed, from 1.
    pub failed_wave: Option<usize>,
    /// Every host, in the order of the hosts file.
    pub hosts: Vec<HostReport>,
}

/// Progress, as it happens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FleetEvent {
    /// A wave starts.
    Wave {
        /// Which, from 1.
        wave: usize,
        /// Of how many.
        waves: usize,
        /// Its hosts.
        hosts: Vec<String>,
    },
    /// A host's rollout changed: a new step, weight, verdict or end.
    Host {
        /// The host.
        host: String,
        /// One line on where it is.
        line: String,
    },
    /// The rollout stopped; hosts are being put back.
    Stopping {
        /// Why.
        reason: String,
    },
}

/// Takes the release in `dir` across `hosts` in waves (see the module docs).
///
/// # Errors
///
/// [`FleetError::Pack`] if the release cannot be packed; everything that happens on the hosts
/// is in the report.
pub fn rollout(
    hosts: &[FleetHost],
    dir: &Path,
    options: &FleetOptions,
    progress: &mut dyn FnMut(FleetEvent),
) -> Result<FleetReport, FleetError> {
    let until = options.timeout.map(|timeout| Instant::now() + timeout);
    let bundle = crate::bundle::pack(dir)?;
    let start = RolloutOptions::new(true, options.canary, options.plan.clone());
    let waves = waves(hosts.len());
    let mut reports: Vec<HostReport> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| HostReport {
            host: host.label().to_owned(),
            wave: waves.iter().position(|w| w.contains(&i)).unwrap_or(0) + 1,
            outcome: HostOutcome::NotStarted,
            generation: None,
            detail: String::new(),
        })
        .collect();
    let clients: Vec<AdminClient> = hosts
        .iter()
        .map(|h| AdminClient::new(&h.admin, h.token.clone()))
        .collect();

    let mut failed_wave = None;
    for (w, wave) in waves.iter().enumerate() {
        progress(FleetEvent::Wave {
            wave: w + 1,
            waves: waves.len(),
            hosts: wave.clone().map(|i| hosts[i].label().to_owned()).collect(),
        });
        let mut running = Vec::new();
        for i in wave.clone() {
            match clients[i].deploy_bundle(&bundle, &start) {
                Ok(started) => {
                    reports[i].generation = Some(started.report.generation);
                    reports[i].outcome = HostOutcome::Running;
                    reports[i].detail = "canary deployed".into();
                    running.push(i);
                }
                Err(error) => {
                    reports[i].outcome = HostOutcome::Failed;
                    reports[i].detail = DisplayChain(&error).to_string();
                    progress(FleetEvent::Host {
                        host: reports[i].host.clone(),
                        line: format!("refused: {}", reports[i].detail),
                    });
                }
            }
        }
        let failed_now = running.len() < wave.len()
            || !watch_wave(&clients, &mut reports, &running, options, until, progress);
        if failed_now {
            failed_wave = Some(w + 1);
            break;
        }
    }

    if let Some(wave) = failed_wave {
        let reason = reports
            .iter()
            .find(|r| matches!(r.outcome, HostOutcome::Aborted | HostOutcome::Failed))
            .map_or_else(
                || match options.timeout {
                    Some(timeout) if until.is_some_and(|until| Instant::now() >= until) => {
                        format!(
                            "wave {wave} did not finish within the fleet's timeout ({} s)",
                            timeout.as_secs_f64()
                        )
                    }
                    _ => format!(
                        "wave {wave} did not finish within the wave timeout ({} s)",
                        options.wave_timeout.as_secs_f64()
                    ),
                },
                |r| format!("{} {}: {}", r.host, r.outcome, r.detail),
            );
        progress(FleetEvent::Stopping { reason });
        for (i, report) in reports.iter_mut().enumerate() {
            if report.outcome == HostOutcome::Running {
                // Still running in the failed wave: stop it. It may have promoted since it was
                // last polled; then the abort finds no rollout, and it is rolled back below.
                match clients[i].rollout_action(RolloutAction::Abort) {
                    Ok(_) => {
                        report.outcome = HostOutcome::Aborted;
                        report.detail = "aborted: the wave failed".into();
                    }
                    Err(error) => {
                        let promoted = clients[i].rollout().is_ok_and(|status| {
                            Some(status.canary) == report.generation
                                && status.state == RolloutState::Promoted
                        });
                        if promoted {
                            report.outcome = HostOutcome::Promoted;
                        } else {
                            report.outcome = HostOutcome::Failed;
                            report.detail = format!("abort failed: {}", DisplayChain(&error));
                        }
                    }
                }
            }
            match report.outcome {
                HostOutcome::Promoted => match clients[i].rollback() {
                    Ok(_) => {
                        report.outcome = HostOutcome::RolledBack;
                        report.detail = "rolled back to its previous release".into();
                    }
                    Err(error) => {
                        report.detail = format!("rollback failed: {}", DisplayChain(&error));
                    }
                },
                HostOutcome::Aborted if report.detail.starts_with("aborted: the wave") => {}
                _ => continue,
            }
            progress(FleetEvent::Host {
                host: report.host.clone(),
                line: report.detail.clone(),
            });
        }
    }
    Ok(FleetReport {
        succeeded: failed_wave.is_none(),
        failed_wave,
        hosts: reports,
    })
}

/// Polls the hosts of a wave until every one has promoted (true) or one has not, or the wave's
/// timeout or the whole rollout's deadline (`until`) passed (false).
fn watch_wave(
    clients: &[AdminClient],
    reports: &mut [HostReport],
    running: &[usize],
    options: &FleetOptions,
    until: Option<Instant>,
    progress: &mut dyn FnMut(FleetEvent),
) -> bool {
    let wave_deadline = Instant::now() + options.wave_timeout;
    let deadline = until.map_or(wave_deadline, |until| until.min(wave_deadline));
    let mut last_line: Vec<String> = vec![String::new(); reports.len()];
    loop {
        let mut pending = 0;
        for &i in running {
            if reports[i].outcome != HostOutcome::Running {
                continue;
            }
            let status = match clients[i].rollout() {
                Ok(status) => status,
                Err(error) => {
                    reports[i].outcome = HostOutcome::Failed;
                    reports[i].detail = format!("unreachable: {}", DisplayChain(&error));
                    return false;
                }
            };
            let line = progress_line(&status);
            if line != last_line[i] {
                progress(FleetEvent::Host {
                    host: reports[i].host.clone(),
                    line: line.clone(),
                });
                last_line[i] = line;
            }
            let ours = Some(status.canary) == reports[i].generation;
            match status.state {
                RolloutState::Promoted if ours => {
                    reports[i].outcome = HostOutcome::Promoted;
                    reports[i].detail = status.last_message().to_owned();
                }
                RolloutState::Aborted if ours => {
                    reports[i].outcome = HostOutcome::Aborted;
                    reports[i].detail = status.last_message().to_owned();
                    return false;
                }
                _ => pending += 1,
            }
        }
        if pending == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(options.poll);
    }
}

/// `running step 2/3, canary 25%: 340 requests, 0 errors; healthy`
fn progress_line(status: &RolloutStatus) -> String {
    match status.state {
        RolloutState::Promoted | RolloutState::Aborted => {
            format!("{}: {}", status.state, status.last_message())
        }
        state => format!(
            "{state} step {}/{}, canary {}%: {} requests, {} errors; {}",
            status.step,
            status.plan.len(),
            status.weight,
            status.canary_window.requests,
            status.canary_window.errors,
            status.last_verdict.as_ref().map_or("-", |v| v.kind()),
        ),
    }
}

/// The summary table.
impl std::fmt::Display for FleetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .hosts
            .iter()
            .map(|h| h.host.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            f,
            "{:<width$}  {:>4}  {:<11}  {:>10}  detail",
            "host", "wave", "outcome", "generation"
        )?;
        for host in &self.hosts {
            writeln!(
                f,
                "{:<width$}  {:>4}  {:<11}  {:>10}  {}",
                host.host,
                host.wave,
                host.outcome.to_string(),
                host.generation.map_or("-".into(), |g| g.to_string()),
                host.detail
            )?;
        }
        match self.failed_wave {
            None => writeln!(
                f,
                "fleet rollout succeeded: every host promoted the release"
            ),
            Some(wave) => writeln!(
                f,
                "fleet rollout failed at wave {wave}: hosts that had promoted were rolled back"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn waves_start_with_one_host_and_double() {
        let sizes = |n| super::waves(n).iter().map(|w| w.len()).collect::<Vec<_>>();
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(3), [1, 2]);
        assert_eq!(sizes(10), [1, 2, 4, 3]);
    }
}
