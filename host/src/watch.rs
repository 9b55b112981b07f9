//! Watch mode: deploy a release when its directory, its files or a pointer to it change.
//!
//! [`watch`] follows a path that is a release directory, or a symlink to one (switched with
//! `ln -sfn`), or a directory whose entries are symlinks through a `..data` link (the way
//! Kubernetes updates ConfigMap and projected volumes: a new timestamped directory, then an
//! atomic rename of `..data`). It watches the path's parent directory recursively with `notify`,
//! and after events have settled it resolves where `release.toml` really lives and reads the
//! release from there, so a pointer switched mid-read cannot mix two releases.
//!
//! A release is deployed only when it is complete: every file the manifest names exists, has
//! the same size and modification time before and after it is read, is a valid shared library,
//! and matches the manifest's sha256. Anything else (a file still being written, an editor's
//! temp file, a manifest being replaced) waits for the next event. A content fingerprint
//! (manifest and checksums) keeps the same release from being deployed twice, and a release
//! that is complete but refused logs one line and is not retried until it changes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use crate::release::{self, Manifest, MANIFEST};
use crate::{DisplayChain, Host};

/// A running watch; dropping it stops watching.
#[derive(Debug)]
pub struct Watch {
    /// Owns the event sender: dropping it disconnects the channel, which ends the thread.
    _watcher: notify::RecommendedWatcher,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching {}", path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Starts watching `path` and deploying to `host` what appears there. The release found at
/// `path` when the watch starts is taken as already deployed.
///
/// `settle` is how long events must stop before the release is read (100 ms is a good default).
///
/// # Errors
///
/// [`WatchError`] if the watch cannot be set up.
pub fn watch(host: Arc<Host>, path: PathBuf, settle: Duration) -> Result<Watch, WatchError> {
    let (events, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.map_or(true, |e| e.paths.iter().any(|p| !is_editor_temp(p)));
        if relevant {
            let _ = events.send(());
        }
    })
    .map_err(|source| WatchError {
        path: path.clone(),
        source,
    })?;
    let root = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|source| WatchError {
            path: path.clone(),
            source,
        })?;
    let mut last = ready(&path).ok().map(|r| r.fingerprint);
    std::thread::Builder::new()
        .name("graft-watch".into())
        .spawn(move || {
            tracing::info!(path = %path.display(), "watching for releases");
            let mut waiting_for: Option<String> = None;
            loop {
                // Wait for an event, then until none has come for `settle`.
                if rx.recv().is_err() {
                    return;
                }
                loop {
                    match rx.recv_timeout(settle) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                match ready(&path) {
                    Ok(release) if last.as_ref() == Some(&release.fingerprint) => {}
                    Ok(release) => {
                        waiting_for = None;
                        last = Some(release.fingerprint);
                        match host.deploy(&release.dir) {
                            Ok(report) => tracing::info!(
                                generation = report.generation,
                                release = %release.dir.display(),
                                go_live_us = report.go_live.as_micros() as u64,
                                "watch: deployed"
                            ),
                            Err(error) => tracing::warn!(
                                release = %release.dir.display(),
                                error = %DisplayChain(&error),
                                "watch: release refused; the current one keeps serving"
                            ),
                        }
                    }
                    Err(reason) => {
                        if waiting_for.as_ref() != Some(&reason) {
                            tracing::debug!(path = %path.display(), %reason, "watch: release not complete yet");
                            waiting_for = Some(reason);
                        }
                    }
                }
            }
        })
        .map_err(|e| WatchError { path: PathBuf::new(), source: notify::Error::io(e) })?;
    Ok(Watch { _watcher: watcher })
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
    let manifest = Manifest::load(&dir).map_err(|e| DisplayChain(&e).to_string())?;
    let mut fingerprint = format!("{manifest:?}");
    for plugin in &manifest.plugins {
        let file = dir.join(&plugin.file);
        let before = stamp(&file)?;
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if stamp(&file)? != before {
            return Err(format!("{} is still changing", file.display()));
        }
        if release::sha256_hex(&bytes) != plugin.sha256 {
            return Err(format!("{} does not match its sha256 yet", file.display()));
        }
        crate::elf::check(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        fingerprint.push_str(&plugin.sha256);
    }
    Ok(Ready {
        dir,
        fingerprint: release::sha256_hex(fingerprint.as_bytes()),
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
