//! Preflight: a release is loaded first in a process of its own, so that a plugin that crashes
//! while it *loads or initialises* takes down that process, not the front.
//!
//! Under isolation the front still prepares each release itself (it routes and pins with the
//! generation). Before it does, it runs `graft preflight DIR`: the same pipeline on a scratch
//! host (`graft check`'s, with the front's host services), under the workers' memory limit and
//! start timeout. That process prints, before each plugin's code runs (load, init,
//! `pre_activate`), the step, the plugin and the file; if it is killed by a signal or runs past
//! the timeout, the release is refused naming the last of them, and the front never loads it.
//! A preflight that fails in any other way (a refusal graft caught) lets the front prepare, so
//! that the refusal comes from the front's own pipeline with its usual error.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use graft_host::bounded::{Bounded, BoundedPath};

use super::process::Ended;
use crate::api::{ApiError, ErrorCode};

/// What the preflight process says before a plugin's code runs, as its log line has it.
const RUNNING: &str = "running plugin code";

/// The step, plugin and file whose code ran last in a preflight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) step: String,
    pub(crate) plugin: String,
    pub(crate) file: PathBuf,
}

/// A release that took down (or held past its timeout) the process it was loaded in first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// `killed by SIGSEGV`, or the timeout it ran past.
    pub(crate) how: String,
    /// What was running then, if the process said.
    pub(crate) running: Option<Running>,
}

impl Refused {
    /// The refusal as the deploy's answer: the step, plugin and file, as any refused release.
    pub(crate) fn to_api(&self) -> ApiError {
        let what = match &self.running {
            Some(r) => format!(
                "release rejected at {}, plugin {}, file {}",
                r.step,
                Bounded(&r.plugin),
                BoundedPath(&r.file)
            ),
            None => "release rejected".to_owned(),
        };
        let mut api = ApiError::new(
            ErrorCode::DeployRejected,
            format!(
                "{what}: its plugin code took down the process that loaded the release first \
                 ({}); graft serve did not load it",
                self.how
            ),
        );
        if let Some(running) = &self.running {
            api.step = Some(running.step.clone());
            api.plugin = Some(running.plugin.clone());
            api.file = Some(running.file.clone());
        }
        api
    }
}

/// Loads the release in `dir` in a `graft preflight` child of `binary`, limited to
/// `memory_limit_mb`, for at most `timeout`.
///
/// # Errors
///
/// [`Refused`] if the child was killed by a signal or ran past `timeout` (it is killed then);
/// or, in words, if it could not be started.
pub(crate) fn run(
    binary: &Path,
    dir: &Path,
    memory_limit_mb: Option<u64>,
    timeout: Duration,
) -> Result<(), Result<Refused, String>> {
    let mut command = Command::new(binary);
    command
        .arg("preflight")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove(crate::config::ADMIN_TOKEN_ENV);
    if let Some(limit) = memory_limit_mb {
        command.arg("--memory-limit-mb").arg(limit.to_string());
    }
    let mut child = command
        .spawn()
        .map_err(|e| Err(format!("spawning {} preflight: {e}", binary.display())))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let running: Arc<Mutex<Option<Running>>> = Arc::default();
    let (ended, done) = std::sync::mpsc::channel();
    let said = Arc::clone(&running);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(now) = parse(&line) {
                *said.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
            }
        }
        let _ = ended.send(());
    });
    // Its standard output closes when it ends (or hands it on: it does not).
    let finished = done.recv_timeout(timeout).is_ok();
    if !finished {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| Err(format!("waiting for preflight: {e}")))?;
    let running = running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if !finished {
        let how = format!(
            "it was still running after {} ms, the limit (workers.start_timeout_ms)",
            timeout.as_millis()
        );
        return Err(Ok(Refused { how, running }));
    }
    let ended = Ended::of(status);
    if ended.signal == "exit" {
        return Ok(());
    }
    Err(Ok(Refused {
        how: ended.how,
        running,
    }))
}

/// The step, plugin and file of a preflight's log line saying that plugin code runs.
fn parse(line: &str) -> Option<Running> {
    let (_, fields) = line.split_once(RUNNING)?;
    let field = |name: &str| {
        let start = fields.find(&format!(" {name}="))? + name.len() + 2;
        Some(&fields[start..])
    };
    let word = |name: &str| field(name).map(|v| v.split(' ').next().unwrap_or("").to_owned());
    Some(Running {
        step: word("step")?,
        plugin: word("plugin")?,
        // The last field: a path may have spaces.
        file: PathBuf::from(field("file")?.trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_says_plugin_code_runs_names_its_step_plugin_and_file() {
        let line = "2026-12-06T19:40:00.000000Z DEBUG graft_host::host::pipeline: running plugin \
                    code step=init plugin=hello file=/data/staged/hello 1.so";
        assert_eq!(
            parse(line),
            Some(Running {
                step: "init".into(),
                plugin: "hello".into(),
                file: "/data/staged/hello 1.so".into(),
            })
        );
        assert_eq!(parse("DEBUG something else step=init"), None);
    }
}
