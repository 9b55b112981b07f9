//! The dev loop: rebuild plugin crates when their sources change and deploy every build that
//! compiles, while the server keeps serving.
//!
//! [`DevLoop::run`] reads the crate graph (`graph.rs`: which plugin crates there are, and which
//! local crates each is built from), builds every plugin (`build.rs`: one `cargo build` per
//! workspace, all at once), deploys the libraries as one release with
//! [`Host::deploy_libraries`] (the same steps and the same single store as any deploy), then
//! watches the sources and does it again after every change:
//!
//! - A change in a crate rebuilds every plugin crate built from it (a shared types crate: all
//!   its users), together, and deploys them as one release; a changed `Cargo.toml` reads the
//!   graph again and rebuilds every plugin.
//! - What did not go live stays pending: a build that fails (the compiler's messages are
//!   shown) or a release that is refused (it does not link, its initialiser fails: the error
//!   names the step) leaves the generation that was serving serving, and the next change
//!   builds and deploys its own crates *and* the pending ones. So a change that spans crates
//!   (a new field in a shared type, an export's new contract and its importer) lands, as one
//!   release, once every side compiles, with no manual step.
//! - Build output (cargo's target directories) and editor temp files are ignored; events are
//!   debounced.
//! - Each reload reports how long the build took and how long after the build the new code was
//!   live ([`DevEvent::Reloaded`]). [`serve`] stages builds with
//!   [`Staging::Development`] (a hard link, nothing flushed),
//!   and with `fresh_state`, state a new build cannot carry over starts fresh.

mod build;
mod graph;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graft_host::{Change, DeployError, DeployReport, DisplayChain, Host, Staging};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};

use crate::config::ServeConfig;
use crate::serve::{ServeError, Server};

pub use build::BuildError;
use graph::Graph;

/// How long file events must stop before a rebuild starts.
const SETTLE: Duration = Duration::from_millis(50);

/// Rebuilds and redeploys plugin crates as their sources change.
#[derive(Debug, Clone)]
pub struct DevLoop {
    /// The crate or workspace directories given.
    paths: Vec<PathBuf>,
    release: bool,
    fresh_state: bool,
    cargo: PathBuf,
    /// As read at the start; [`run`](Self::run) reads it again when a manifest changes.
    graph: Arc<Graph>,
    /// Directories whose changes are never sources (the server's data directory).
    ignored: BTreeSet<PathBuf>,
}

/// What the dev loop did; [`DevLoop::run`] reports each to its caller.
#[derive(Debug)]
#[non_exhaustive]
pub enum DevEvent {
    /// The server is up ([`serve`] only).
    Serving {
        /// The service's address.
        addr: std::net::SocketAddr,
        /// The admin API's address.
        admin_addr: std::net::SocketAddr,
    },
    /// Sources changed; a build started.
    Building {
        /// Which reload this is (1 for the first build).
        reload: u64,
        /// The plugin crates being built (their directories).
        crates: Vec<PathBuf>,
    },
    /// Every crate built and the builds are live.
    Reloaded {
        /// Which reload this is.
        reload: u64,
        /// How long the builds took.
        build: Duration,
        /// From the end of the build to the new generation being current.
        live_after_build: Duration,
        /// The deploy.
        report: DeployReport,
    },
    /// A crate did not compile; the serving generation keeps serving.
    BuildFailed {
        /// Which reload this is.
        reload: u64,
        /// How long the build took.
        build: Duration,
        /// Why.
        error: BuildError,
        /// The generation that keeps serving.
        serving: u64,
    },
    /// The builds compiled but the release was refused; the serving generation keeps serving.
    DeployFailed {
        /// Which reload this is.
        reload: u64,
        /// How long the build took.
        build: Duration,
        /// Why.
        error: DeployError,
        /// The generation that keeps serving.
        serving: u64,
    },
    /// A `Cargo.toml` changed and the crate graph could not be read again; the graph read
    /// before is kept.
    GraphFailed {
        /// Why.
        error: DevError,
    },
}

impl DevEvent {
    /// The one line `graft dev` prints for this event (none for a build starting): what went
    /// live and how fast, or why nothing did.
    pub fn line(&self) -> Option<String> {
        match self {
            Self::Serving { addr, admin_addr } => Some(format!(
                "graft dev: serving on http://{addr}, admin on http://{admin_addr}"
            )),
            Self::Building { .. } => None,
            Self::Reloaded {
                reload,
                build,
                live_after_build,
                report,
            } => {
                let plugins: Vec<String> = report
                    .plugins
                    .iter()
                    .filter(|p| p.change != Change::Kept)
                    .map(|p| format!("{} {} {}", p.name, p.version, p.change))
                    .collect();
                let warnings: String = report
                    .warnings
                    .iter()
                    .map(|w| format!("; warning: {w}"))
                    .collect();
                Some(format!(
                    "reload {reload}: generation {} live ({}); built in {:.2} s, live {:.1} ms \
                     after the build (staged and loaded in {:.1} ms, then linked, initialised \
                     and published in {:.2} ms){warnings}",
                    report.generation,
                    if plugins.is_empty() {
                        "no change".into()
                    } else {
                        plugins.join(", ")
                    },
                    build.as_secs_f64(),
                    live_after_build.as_secs_f64() * 1e3,
                    report.staging.as_secs_f64() * 1e3,
                    report.go_live.as_secs_f64() * 1e3,
                ))
            }
            Self::BuildFailed {
                reload,
                build,
                error,
                serving,
            } => Some(format!(
                "reload {reload}: build failed after {:.2} s: {}; generation {serving} keeps serving",
                build.as_secs_f64(),
                DisplayChain(error)
            )),
            Self::DeployFailed {
                reload,
                build,
                error,
                serving,
            } => Some(format!(
                "reload {reload}: built in {:.2} s but refused: {}; generation {serving} keeps serving",
                build.as_secs_f64(),
                DisplayChain(error)
            )),
            Self::GraphFailed { error } => Some(format!(
                "the crate graph could not be read again: {}; the one read before is kept",
                DisplayChain(error)
            )),
        }
    }
}

/// Why the dev loop could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The scratch data directory or the loop's thread could not be made.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The loop's thread panicked.
    #[error("the dev loop panicked")]
    Panicked,
    /// A directory has no `Cargo.toml`.
    #[error("{} is not a crate or workspace directory (no Cargo.toml)", path.display())]
    NotACrate {
        /// The directory.
        path: PathBuf,
    },
    /// `cargo metadata` failed for a directory.
    #[error("reading the crate graph of {}: {reason}", path.display())]
    Metadata {
        /// The directory.
        path: PathBuf,
        /// What cargo said.
        reason: String,
    },
    /// A crate is not a plugin (its library is no `cdylib`), or a workspace has none.
    #[error("{} has no plugin crate: add `crate-type = [\"cdylib\"]` to a crate's [lib] section", path.display())]
    NotAPlugin {
        /// The directory.
        path: PathBuf,
    },
    /// The sources could not be watched.
    #[error("watching {}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
}

impl DevLoop {
    /// A dev loop for these directories (plugin crates, or workspaces whose `cdylib` members
    /// are the plugins), built in the debug profile. Reads their crate graph with
    /// `cargo metadata`.
    ///
    /// # Errors
    ///
    /// [`DevError::NotACrate`] if a directory has no `Cargo.toml`, [`DevError::Metadata`] if
    /// cargo cannot read it, [`DevError::NotAPlugin`] if it holds no plugin crate.
    pub fn new(paths: Vec<PathBuf>) -> Result<Self, DevError> {
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .map(|dir| match std::fs::canonicalize(&dir) {
                Ok(dir) if dir.join("Cargo.toml").is_file() => Ok(dir),
                _ => Err(DevError::NotACrate { path: dir }),
            })
            .collect::<Result<_, _>>()?;
        let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        let graph = Arc::new(Graph::load(&cargo, &paths)?);
        Ok(Self {
            paths,
            release: false,
            fresh_state: false,
            cargo,
            graph,
            ignored: BTreeSet::new(),
        })
    }

    /// Changes under `dir` rebuild nothing (the server's data directory, should it be inside
    /// a crate: staging a build there would otherwise start the next one).
    pub fn ignore(mut self, dir: &Path) -> Self {
        self.ignored
            .insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()));
        self
    }

    /// Builds with `--release` instead.
    pub fn release(mut self, release: bool) -> Self {
        self.release = release;
        self
    }

    /// State or a table a new build cannot carry over starts fresh instead of refusing the
    /// build (see [`HostBuilder::fresh_state`](graft_host::HostBuilder::fresh_state)); applied
    /// by [`serve`].
    pub fn fresh_state(mut self, fresh: bool) -> Self {
        self.fresh_state = fresh;
        self
    }

    /// Builds every plugin crate and deploys the builds, then again whenever their sources
    /// change (see the module docs). Returns when `stop` says so (checked between events) or
    /// the watch ends.
    ///
    /// Compiler messages go to standard error as cargo prints them; everything else is
    /// reported through `report`.
    ///
    /// # Errors
    ///
    /// [`DevError::Watch`] if the sources cannot be watched.
    pub fn run(
        &self,
        host: &Arc<Host>,
        stop: &dyn Fn() -> bool,
        report: &mut dyn FnMut(DevEvent),
    ) -> Result<(), DevError> {
        let (events, rx) = mpsc::channel::<PathBuf>();
        // notify reports every open of a file (cargo's reads of the sources among them):
        // only changes count.
        let mut watcher = new_debouncer(SETTLE, None, move |result: DebounceEventResult| {
            for event in result.into_iter().flatten() {
                if !event.kind.is_access() {
                    for path in &event.paths {
                        let _ = events.send(path.clone());
                    }
                }
            }
        })
        .map_err(|source| DevError::Watch {
            path: self.paths[0].clone(),
            source,
        })?;
        let mut watch = |path: &Path, mode| {
            watcher.watch(path, mode).map_err(|source| DevError::Watch {
                path: path.to_owned(),
                source,
            })
        };
        let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
        let mut graph = Arc::clone(&self.graph);
        // What has not gone live since it changed (by position in `graph`): built and deployed
        // again, with whatever changes next, until it does.
        let mut pending: BTreeSet<usize> = (0..graph.plugins.len()).collect();
        let mut changed_since_last_try = true;
        let mut reload = 0;
        loop {
            // Watch before building: a change saved during the build is seen, and builds again.
            for dir in graph.dirs() {
                if watched.insert(dir.to_owned()) {
                    watch(dir, RecursiveMode::Recursive)?;
                }
            }
            for root in graph.roots().filter_map(Path::parent) {
                if watched.insert(root.to_owned()) {
                    watch(root, RecursiveMode::NonRecursive)?;
                }
            }
            if changed_since_last_try && !pending.is_empty() {
                reload += 1;
                if self.reload(host, reload, &graph, &pending, report) {
                    pending.clear();
                }
                changed_since_last_try = false;
            }
            // Wait for a relevant change (the debouncer has let each settle for `SETTLE`).
            let mut changed = Vec::new();
            while changed.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(path) => changed.extend(Some(path).filter(|p| self.is_source(p, &graph))),
                    Err(RecvTimeoutError::Timeout) if stop() => return Ok(()),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            changed.extend(rx.try_iter().filter(|p| self.is_source(p, &graph)));
            if changed.iter().any(|p| p.ends_with("Cargo.toml")) {
                // The graph itself may have changed: read it again, rebuild everything (cargo
                // skips what is fresh).
                match Graph::load(&self.cargo, &self.paths) {
                    Ok(read) => {
                        graph = Arc::new(read);
                        pending = (0..graph.plugins.len()).collect();
                        changed_since_last_try = true;
                    }
                    Err(error) => report(DevEvent::GraphFailed { error }),
                }
            }
            let affected: BTreeSet<usize> =
                changed.iter().flat_map(|p| graph.affected(p)).collect();
            changed_since_last_try |= !affected.is_empty();
            pending.extend(affected);
        }
    }

    /// Whether a change of `path` can change a build.
    fn is_source(&self, path: &Path, graph: &Graph) -> bool {
        is_source_change(path, &graph.target_dirs)
            && !self.ignored.iter().any(|dir| path.starts_with(dir))
    }

    /// Builds the `pending` plugins and deploys what they produced as one release. Returns
    /// whether it went live.
    fn reload(
        &self,
        host: &Arc<Host>,
        reload: u64,
        graph: &Graph,
        pending: &BTreeSet<usize>,
        report: &mut dyn FnMut(DevEvent),
    ) -> bool {
        let plugins: Vec<&graph::Plugin> = pending.iter().map(|&i| &graph.plugins[i]).collect();
        report(DevEvent::Building {
            reload,
            crates: plugins.iter().map(|p| p.dir.clone()).collect(),
        });
        let started = Instant::now();
        let libraries = match build::build(&self.cargo, self.release, &plugins) {
            Ok(libraries) => libraries,
            Err(error) => {
                report(DevEvent::BuildFailed {
                    reload,
                    build: started.elapsed(),
                    error,
                    serving: host.pin().id(),
                });
                return false;
            }
        };
        let build = started.elapsed();
        match host.deploy_libraries(Some(format!("dev-{reload}")), &libraries) {
            Ok(deployed) => {
                // The deploy starts as the build ends; its `elapsed` runs to the store.
                let live_after_build = deployed.elapsed;
                report(DevEvent::Reloaded {
                    reload,
                    build,
                    live_after_build,
                    report: deployed,
                });
                true
            }
            Err(error) => {
                report(DevEvent::DeployFailed {
                    reload,
                    build,
                    error,
                    serving: host.pin().id(),
                });
                false
            }
        }
    }
}

/// Whether a changed path can change a build: not build output, not an editor's temp file, not
/// the lock file cargo itself rewrites.
fn is_source_change(path: &Path, ignored: &BTreeSet<PathBuf>) -> bool {
    !crate::watch::is_editor_temp(path)
        && path.file_name().is_none_or(|name| name != "Cargo.lock")
        && !ignored.iter().any(|dir| path.starts_with(dir))
        && !path.components().any(|c| c.as_os_str() == "target")
}

/// Serves `config` and runs `dev` beside it until `shutdown` completes (or the loop ends):
/// what `graft dev` does. Builds are staged in `data_dir`, else in the config's `data_dir`
/// (where saved state survives the dev server), else in a fresh directory under cargo's target
/// directory (on its filesystem, so that a build is staged as a hard link), removed on return.
/// Staging is [`Staging::Development`]. Every event goes to `report`, [`DevEvent::Serving`]
/// first.
///
/// # Errors
///
/// [`DevError`] if the server or the loop cannot start, or the loop fails.
pub async fn serve(
    mut config: ServeConfig,
    dev: DevLoop,
    data_dir: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    mut report: impl FnMut(DevEvent) + Send + 'static,
) -> Result<(), DevError> {
    config.staging = Staging::Development;
    config.fresh_state = dev.fresh_state;
    let _scratch = match data_dir {
        Some(dir) => {
            config.data_dir = dir;
            None
        }
        None if !config.data_dir.as_os_str().is_empty() => None,
        None => {
            let base = dev
                .graph
                .target_dirs
                .first()
                .filter(|dir| std::fs::create_dir_all(dir).is_ok())
                .cloned()
                .unwrap_or_else(std::env::temp_dir);
            let scratch = tempfile::Builder::new()
                .prefix("graft-dev-")
                .tempdir_in(&base)
                .map_err(|source| DevError::Io {
                    what: format!("creating a data directory in {}", base.display()),
                    source,
                })?;
            config.data_dir = scratch.path().to_owned();
            Some(scratch)
        }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DevError::Io {
        what: format!("creating the data directory {}", config.data_dir.display()),
        source,
    })?;
    let dev = dev.ignore(&config.data_dir);
    let server = Server::start(config).await?;
    report(DevEvent::Serving {
        addr: server.addr(),
        admin_addr: server.admin_addr(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (host, stopping) = (Arc::clone(server.host()), Arc::clone(&stop));
    let watching = std::thread::Builder::new()
        .name("graft-dev".into())
        .spawn(move || dev.run(&host, &|| stopping.load(Ordering::Relaxed), &mut report))
        .map_err(|source| DevError::Io {
            what: "starting the dev loop".into(),
            source,
        })?;
    let ended = async {
        while !watching.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = ended => {}
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.shutdown().await;
    if watching.is_finished() {
        watching.join().map_err(|_| DevError::Panicked)??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_output_and_editor_files_are_not_source_changes() {
        let ignored = std::collections::BTreeSet::from([std::path::PathBuf::from("/w/out")]);
        let change = |p: &str| super::is_source_change(std::path::Path::new(p), &ignored);
        assert!(change("/w/plugin/src/lib.rs"));
        assert!(!change("/w/out/debug/libx.so"));
        assert!(!change("/w/plugin/target/debug/libx.so"));
        assert!(!change("/w/plugin/src/.lib.rs.swp"));
        assert!(!change("/w/plugin/src/lib.rs~"));
        assert!(!change("/w/plugin/Cargo.lock"));
    }
}
