//! Closing libraries no generation uses any more, off the request path, and checking that they
//! really left the address space.
//!
//! A loaded plugin hands its library to the [`Unloader`] when it
//! drops. A background thread closes it and then reads `/proc/self/maps`: a plugin that started a
//! thread or touched a thread-local with a destructor stays mapped, which is reported (as
//! [`Lingering`]), not crashed on. glibc frees such a library once that thread has exited, at the
//! next `dlclose` of any library; the report clears then.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use libloading::os::unix::Library;
use serde::{Deserialize, Serialize};

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

/// A library to close, and what to call it in reports.
pub(crate) struct Unload {
    pub(crate) library: Library,
    pub(crate) plugin: String,
    pub(crate) version: String,
    pub(crate) path: PathBuf,
}

/// A library that was closed but is still mapped: its plugin pinned it.
#[derive(Debug, Clone)]
pub(crate) struct Lingering {
    pub(crate) plugin: String,
    pub(crate) version: String,
    pub(crate) path: PathBuf,
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
    lingering: Arc<Mutex<Vec<Lingering>>>,
}

impl fmt::Debug for Unloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unloader").finish_non_exhaustive()
    }
}

impl Unloader {
    pub(crate) fn spawn() -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let lingering = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&lingering);
        std::thread::Builder::new()
            .name("graft-unloader".into())
            .spawn(move || run(rx, &record))?;
        Ok(Self { jobs, lingering })
    }

    pub(crate) fn unload(&self, job: Unload) {
        if let Err(mpsc::SendError(Job::Unload(job))) = self.jobs.send(Job::Unload(job)) {
            // The thread is gone (it never is while a clone of `self` exists); unload here.
            close(job);
        }
    }

    /// Waits until every library released before this call has been closed and checked.
    pub(crate) fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Libraries that were closed but are still mapped, re-checked now.
    pub(crate) fn lingering(&self) -> Vec<Lingering> {
        let mut lingering = self.lingering.lock().unwrap_or_else(|e| e.into_inner());
        lingering.retain(|lib| is_mapped(&lib.path));
        lingering.clone()
    }
}

fn run(jobs: mpsc::Receiver<Job>, lingering: &Mutex<Vec<Lingering>>) {
    for job in jobs {
        match job {
            Job::Unload(job) => {
                if let Some(still_mapped) = close(job) {
                    lingering
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(still_mapped);
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Closes the library; returns it as [`Lingering`] if it is still mapped afterwards.
fn close(job: Unload) -> Option<Lingering> {
    let Unload {
        library,
        plugin,
        version,
        path,
    } = job;
    if let Err(error) = library.close() {
        tracing::warn!(%plugin, path = %path.display(), %error, "dlclose failed");
    }
    if is_mapped(&path) {
        tracing::warn!(
            %plugin,
            %version,
            path = %path.display(),
            "library still mapped after unload: the plugin pins itself (a thread, or a \
             thread-local with a destructor); it stays in memory until that thread exits and a \
             later unload lets glibc sweep it"
        );
        Some(Lingering {
            plugin,
            version,
            path,
        })
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
