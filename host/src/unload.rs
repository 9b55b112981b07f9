//! Closing libraries no generation uses any more, off the request path, and checking that they
//! really left the address space.
//!
//! A loaded plugin hands its library to the [`Unloader`] when it drops. A background thread runs
//! the plugin's `pre_unload` hook, if it has one, under the hook deadline, closes the library and then reads `/proc/self/maps`: a plugin that started a
//! thread or touched a thread-local with a destructor stays mapped, which is reported (as
//! lingering), not crashed on. glibc frees such a library once that thread has exited, at the
//! next `dlclose` of any library; the report clears then.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use graft_api::ffi::HookFn;
use libloading::os::unix::Library;
use serde::{Deserialize, Serialize};

use crate::deadline::{self, Outcome};
use crate::hook::ffi_result;

/// What to do with a plugin's library once no generation uses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnloadPolicy {
    /// Keep the libraries of the releases in the rollback history loaded (the default): a
    /// rollback to any of them, or deploying one of them again, reuses its libraries instead of
    /// loading them anew. A library is closed once it has left the history and its last
    /// generation has drained, so memory stays bounded by the history length.
    #[default]
    KeepHistory,
    /// Close the library as soon as the last generation using it has drained.
    WhenDrained,
    /// Keep every library loaded while the host runs: instant rollback to any earlier build,
    /// at the price of memory that grows with every new build.
    Never,
}

/// A library to close, the plugin's `pre_unload` hook to run first, and what to call it in
/// reports.
pub(crate) struct Unload {
    pub(crate) library: Library,
    pub(crate) pre_unload: Option<HookFn>,
    pub(crate) plugin: String,
    pub(crate) version: String,
    pub(crate) path: PathBuf,
}

/// A library named in a report: the plugin it holds, its version and its staged file.
#[derive(Debug, Clone)]
pub(crate) struct Released {
    pub(crate) plugin: String,
    pub(crate) version: String,
    pub(crate) path: PathBuf,
}

impl Released {
    fn of(job: &Unload) -> Self {
        Self {
            plugin: job.plugin.clone(),
            version: job.version.clone(),
            path: job.path.clone(),
        }
    }
}

enum Job {
    Unload(Unload),
    Flush(mpsc::SyncSender<()>),
}

/// Closes libraries off the request path and records whether they really left memory.
///
/// Cloned into every loaded plugin; the background thread ends when the last clone is gone.
#[derive(Clone)]
pub(crate) struct Unloader {
    jobs: mpsc::Sender<Job>,
    reports: Arc<Reports>,
}

/// What the unloader reports to status.
#[derive(Default)]
struct Reports {
    /// Closed, but still mapped: the plugin pinned its library.
    lingering: Mutex<Vec<Released>>,
    /// Released, its `pre_unload` hook still running.
    unloading: Mutex<Vec<Released>>,
}

impl Reports {
    fn close(&self, job: Unload) {
        if let Some(still_mapped) = close(job) {
            lock(&self.lingering).push(still_mapped);
        }
    }
}

fn lock<T>(list: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Unloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unloader").finish_non_exhaustive()
    }
}

impl Unloader {
    /// Starts the unloader thread; each `pre_unload` hook gets `hook_timeout`.
    pub(crate) fn spawn(hook_timeout: Duration) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let reports = Arc::new(Reports::default());
        let theirs = Arc::clone(&reports);
        std::thread::Builder::new()
            .name("graft-unloader".into())
            .spawn(move || run(rx, &theirs, hook_timeout))?;
        Ok(Self { jobs, reports })
    }

    pub(crate) fn unload(&self, job: Unload) {
        if let Err(mpsc::SendError(Job::Unload(job))) = self.jobs.send(Job::Unload(job)) {
            // The thread is gone (it never is while a clone of `self` exists); unload here.
            close(job);
        }
    }

    /// Waits until every library released before this call has been closed and checked, or
    /// handed to a `pre_unload` hook past its deadline.
    pub(crate) fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Libraries that were closed but are still mapped, re-checked now.
    pub(crate) fn lingering(&self) -> Vec<Released> {
        let mut lingering = lock(&self.reports.lingering);
        lingering.retain(|lib| is_mapped(&lib.path));
        lingering.clone()
    }

    /// Libraries released whose `pre_unload` hook is still running.
    pub(crate) fn unloading(&self) -> Vec<Released> {
        lock(&self.reports.unloading).clone()
    }
}

fn run(jobs: mpsc::Receiver<Job>, reports: &Arc<Reports>, hook_timeout: Duration) {
    for job in jobs {
        match job {
            Job::Unload(job) => match job.pre_unload {
                Some(hook) => pre_unload_then_close(job, hook, hook_timeout, reports),
                None => reports.close(job),
            },
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Runs the plugin's `pre_unload` hook under its deadline, then closes the library. A hook past
/// its deadline keeps the library (its thread owns it) and closes it when it returns; the
/// unloader goes on with the next library meanwhile. Status shows the library as unloading
/// while its hook runs.
fn pre_unload_then_close(job: Unload, hook: HookFn, limit: Duration, reports: &Arc<Reports>) {
    let released = Released::of(&job);
    lock(&reports.unloading).push(released.clone());
    let finish = {
        let reports = Arc::clone(reports);
        move |job: Unload, result: Result<(), String>| {
            if let Err(error) = result {
                tracing::warn!(plugin = %job.plugin, %error, "pre_unload hook failed");
            }
            lock(&reports.unloading).retain(|r| r.path != job.path);
            reports.close(job);
        }
    };
    let late = {
        let finish = finish.clone();
        move |(job, result): (Unload, Result<(), String>)| {
            tracing::warn!(plugin = %job.plugin, "pre_unload hook returned after its deadline");
            finish(job, result);
        }
    };
    let ran = move || {
        let result = ffi_result(hook());
        (job, result)
    };
    match deadline::run_within("graft-pre-unload", limit, ran, late) {
        Outcome::Done((job, result)) => finish(job, result),
        Outcome::TimedOut => tracing::warn!(
            plugin = %released.plugin,
            limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            "pre_unload hook still running at its deadline; its library is closed when it returns"
        ),
    }
}

/// Closes the library; returns it as lingering if it is still mapped afterwards.
fn close(job: Unload) -> Option<Released> {
    let released = Released::of(&job);
    if let Err(error) = job.library.close() {
        tracing::warn!(plugin = %released.plugin, path = %released.path.display(), %error, "dlclose failed");
    }
    let Released {
        plugin,
        version,
        path,
    } = &released;
    if is_mapped(path) {
        tracing::warn!(
            %plugin,
            %version,
            path = %path.display(),
            "library still mapped after unload: the plugin pins itself (a thread, or a \
             thread-local with a destructor); it stays in memory until that thread exits and a \
             later unload lets glibc sweep it"
        );
        Some(released)
    } else {
        tracing::debug!(%plugin, %version, path = %path.display(), "library unloaded");
        None
    }
}

/// Whether a file is mapped into this process, per `/proc/self/maps`.
pub fn is_mapped(path: &Path) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let path = path.to_string_lossy();
    maps.lines().any(|line| {
        // address perms offset dev inode [path]; the path may end in " (deleted)".
        let mapped = line
            .splitn(6, ' ')
            .nth(5)
            .map(str::trim_start)
            .unwrap_or_default();
        mapped == path || mapped.strip_suffix(" (deleted)") == Some(&*path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_itself_is_mapped_and_a_random_path_is_not() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(is_mapped(&exe));
        assert!(!is_mapped(Path::new("/nonexistent/graft/lib.so")));
    }
}
