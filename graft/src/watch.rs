//! Watch mode: hand over a release when its directory, its files or a pointer to it change.
//!
//! [`watch`] follows a path that is a release directory, or a symlink to one (switched with
//! `ln -sfn`), or a directory whose entries are symlinks through a `..data` link (the way
//! Kubernetes updates ConfigMap and projected volumes: a new timestamped directory, then an
//! atomic rename of `..data`). It watches the path's parent directory recursively through
//! notify's debouncer, and once events have settled it resolves where `release.toml` really
//! lives and reads the release from there, so a pointer switched mid-read cannot mix two
//! releases.
//!
//! A release is handed to the caller (which deploys it) only when it is complete: every file
//! the manifest names exists, has the same size and modification time before and after it is
//! read, is a valid shared library, and matches the manifest's sha256. Anything else (a file
//! still being written, an editor's temp file, a manifest being replaced) waits for the next
//! event. A content fingerprint keeps the same release from being handed over twice, and a
//! release that is complete but refused logs one line and is not retried until it changes.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use graft_host::bounded::BoundedPath;
use graft_host::release::{Manifest, MANIFEST};
use graft_host::{sha256_hex, sha256_hex_of, DeployReport};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

/// A running watch; dropping it stops watching.
pub struct Watch {
    /// Owns the event sender: dropping it disconnects the channel, which ends the thread.
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching {}", BoundedPath(path))]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Starts watching `path`; calls `deploy` with the directory of each new complete release found
/// there. The release found at `path` when the watch starts is taken as already deployed.
///
/// `settle` is how long a file's events must stop before it counts as changed (100 ms is a good
/// default). `deploy` says what became of the release: its report, or why it was refused.
///
/// # Errors
///
/// [`WatchError`] if the watch cannot be set up.
pub fn watch(
    path: PathBuf,
    settle: Duration,
    mut deploy: impl FnMut(&Path) -> Result<DeployReport, String> + Send + 'static,
) -> Result<Watch, WatchError> {
    let watch_error = |source| WatchError {
        path: path.clone(),
        source,
    };
    let (events, rx) = mpsc::channel();
    let mut debouncer = new_debouncer(settle, None, move |result: DebounceEventResult| {
        let relevant = result.map_or(true, |events| {
            events
                .iter()
                .any(|e| !e.kind.is_access() && e.paths.iter().any(|p| !is_editor_temp(p)))
        });
        if relevant {
            let _ = events.send(());
        }
    })
    .map_err(watch_error)?;
    let root = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    debouncer
        .watch(root, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    let mut last = ready(&path).ok().map(|r| r.fingerprint);
    let watched = path.clone();
    std::thread::Builder::new()
        .name("graft-watch".into())
        .spawn(move || {
            tracing::info!(path = %watched.display(), "watching for releases");
            let mut waiting_for: Option<String> = None;
            while rx.recv().is_ok() {
                match ready(&watched) {
                    Ok(release) if last.as_ref() == Some(&release.fingerprint) => {}
                    Ok(release) => {
                        waiting_for = None;
                        last = Some(release.fingerprint);
                        match deploy(&release.dir) {
                            Ok(report) => tracing::info!(
                                generation = report.generation,
                                release = %release.dir.display(),
                                go_live_us = u64::try_from(report.go_live.as_micros()).unwrap_or(u64::MAX),
                                "watch: deployed"
                            ),
                            Err(error) => tracing::warn!(
                                release = %release.dir.display(),
                                %error,
                                "watch: release refused; the current one keeps serving"
                            ),
                        }
                    }
                    Err(reason) => {
                        if waiting_for.as_ref() != Some(&reason) {
                            tracing::debug!(path = %watched.display(), %reason, "watch: release not complete yet");
                            waiting_for = Some(reason);
                        }
                    }
                }
            }
        })
        .map_err(|e| watch_error(notify::Error::io(e)))?;
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// A complete release, where it really lives, and what it contains.
struct Ready {
    dir: PathBuf,
    fingerprint: String,
}

/// Resolves the release behind `path` and checks that it is complete; the reason if not.
fn ready(path: &Path) -> Result<Ready, String> {
    let manifest_path =
        std::fs::canonicalize(path.join(MANIFEST)).map_err(|e| format!("no manifest yet: {e}"))?;
    let dir = manifest_path
        .parent()
        .ok_or("manifest without a directory")?
        .to_owned();
    let manifest = Manifest::load(&dir).map_err(|e| graft_host::DisplayChain(&e).to_string())?;
    let mut fingerprint = format!("{manifest:?}");
    for plugin in &manifest.plugins {
        let file = dir.join(&plugin.file);
        let before = stamp(&file)?;
        let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
        let opened = graft_host::input::open_regular(&file).map_err(|e| failed(&e))?;
        let sha256 = sha256_hex_of(&opened).map_err(|e| failed(&e))?;
        if stamp(&file)? != before {
            return Err(format!("{} is still changing", file.display()));
        }
        if sha256 != plugin.sha256 {
            return Err(format!("{} does not match its sha256 yet", file.display()));
        }
        let len = opened.metadata().map_err(|e| failed(&e))?.len();
        graft_host::elf::check_file(&opened, len).map_err(|e| failed(&e))?;
        fingerprint.push_str(&plugin.sha256);
    }
    Ok(Ready {
        dir,
        fingerprint: sha256_hex(fingerprint.as_bytes()),
    })
}

fn stamp(file: &Path) -> Result<(u64, Option<std::time::SystemTime>), String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((meta.len(), meta.modified().ok()))
}

/// Swap, backup and lock files editors write next to the files they save.
pub(crate) fn is_editor_temp(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with(".#")
        || name == "4913"
}
