//! The dev loop: rebuild plugin crates when their sources change and deploy every build that
//! compiles, while the server keeps serving.
//!
//! [`DevLoop::run`] builds each crate with `cargo build --message-format=json`, deploys the
//! libraries it produced with [`Host::deploy_libraries`] (the same steps and the same single
//! store as any deploy), then watches the sources and does it again after every change:
//!
//! - What is watched: each crate's directory, and the directory of every path dependency its last
//!   build read (from cargo's dep-info file, so editing a shared types crate rebuilds the plugins
//!   that use it). Build output (`target/`) and editor temp files are ignored; events are
//!   debounced.
//! - A build that fails reports the compiler's messages, and the generation that was serving
//!   keeps serving. So does a build that compiles but is refused (it does not link, its
//!   initialiser fails): the deploy error names the step.
//! - Each reload reports how long the build took and how long after the build the new code was
//!   live ([`DevEvent::Reloaded`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cargo_metadata::diagnostic::DiagnosticLevel;
use cargo_metadata::{Message, TargetKind};
use graft_host::{Change, DeployError, DeployReport, DisplayChain, Host};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};

use crate::config::ServeConfig;
use crate::serve::{ServeError, Server};

/// How long file events must stop before a rebuild starts.
const SETTLE: Duration = Duration::from_millis(50);

/// Rebuilds and redeploys plugin crates as their sources change.
#[derive(Debug, Clone)]
pub struct DevLoop {
    crates: Vec<PathBuf>,
    release: bool,
    cargo: PathBuf,
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
        /// The crates being built.
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
                Some(format!(
                    "reload {reload}: generation {} live ({}); built in {:.2} s, live {:.1} ms \
                     after the build (staged and loaded in {:.1} ms, then linked, initialised \
                     and published in {:.2} ms)",
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
        }
    }
}

/// Why a crate did not build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// cargo could not be run.
    #[error("running {cargo} for {}", krate.display())]
    Spawn {
        /// The cargo executable.
        cargo: String,
        /// The crate.
        krate: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The compiler reported errors (already printed to standard error as they came).
    #[error("{} does not compile: {errors} error(s)", krate.display())]
    Compile {
        /// The crate.
        krate: PathBuf,
        /// How many error messages the compiler gave.
        errors: usize,
    },
    /// The crate built, but produced no `cdylib`.
    #[error("{} builds no cdylib: add `crate-type = [\"cdylib\"]` to its [lib] section", krate.display())]
    NoLibrary {
        /// The crate.
        krate: PathBuf,
    },
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
    /// A crate directory has no `Cargo.toml`.
    #[error("{} is not a crate directory (no Cargo.toml)", path.display())]
    NotACrate {
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

/// One crate's successful build.
struct Build {
    libraries: Vec<PathBuf>,
    /// The source directories it was built from (the crate's and its path dependencies').
    roots: BTreeSet<PathBuf>,
    /// Where cargo puts its output (events there are ignored).
    target_dir: Option<PathBuf>,
}

impl DevLoop {
    /// A dev loop for these crate directories, built in the debug profile.
    ///
    /// # Errors
    ///
    /// [`DevError::NotACrate`] if a directory has no `Cargo.toml`.
    pub fn new(crates: Vec<PathBuf>) -> Result<Self, DevError> {
        let crates = crates
            .into_iter()
            .map(|dir| match std::fs::canonicalize(&dir) {
                Ok(dir) if dir.join("Cargo.toml").is_file() => Ok(dir),
                _ => Err(DevError::NotACrate { path: dir }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            crates,
            release: false,
            cargo: std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from),
        })
    }

    /// Builds with `--release` instead.
    pub fn release(mut self, release: bool) -> Self {
        self.release = release;
        self
    }

    /// Builds every crate and deploys the builds, then again whenever their sources change.
    /// Returns when `stop` says so (checked between events) or the watch ends.
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
            path: self.crates[0].clone(),
            source,
        })?;
        let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
        let mut ignored: BTreeSet<PathBuf> = BTreeSet::new();
        // Which crates each watched root belongs to: a change there rebuilds those crates.
        let mut roots_of: Vec<BTreeSet<PathBuf>> = self
            .crates
            .iter()
            .map(|c| BTreeSet::from([c.clone()]))
            .collect();
        let mut dirty: BTreeSet<usize> = (0..self.crates.len()).collect();
        // Crates whose last build was refused at link: a change that spans crates (an export's
        // new contract in one, its importer's in another) lands once every side is saved, so
        // they are built and deployed again, together with the next change.
        let mut unlinked: BTreeSet<usize> = BTreeSet::new();
        let mut reload = 0;
        loop {
            // Watch before building: a change saved during the build is seen, and builds again.
            for root in roots_of.iter().flatten() {
                if watched.insert(root.clone()) {
                    watcher
                        .watch(root, RecursiveMode::Recursive)
                        .map_err(|source| DevError::Watch {
                            path: root.clone(),
                            source,
                        })?;
                }
            }
            if !dirty.is_empty() {
                reload += 1;
                dirty.append(&mut unlinked);
                let crates: Vec<usize> = std::mem::take(&mut dirty).into_iter().collect();
                let (builds, refused_at_link) = self.reload(host, reload, &crates, report);
                if refused_at_link {
                    unlinked.extend(crates.iter().copied());
                }
                for (i, build) in builds {
                    roots_of[i].extend(build.roots);
                    ignored.extend(build.target_dir);
                }
                continue;
            }
            // Wait for a relevant change (the debouncer has let each settle for `SETTLE`).
            let mut changed = Vec::new();
            while changed.is_empty() {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(path) => {
                        changed.extend(Some(path).filter(|p| is_source_change(p, &ignored)))
                    }
                    Err(RecvTimeoutError::Timeout) if stop() => return Ok(()),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            changed.extend(rx.try_iter().filter(|p| is_source_change(p, &ignored)));
            for (i, roots) in roots_of.iter().enumerate() {
                if changed
                    .iter()
                    .any(|path| roots.iter().any(|r| path.starts_with(r)))
                {
                    dirty.insert(i);
                }
            }
        }
    }

    /// Builds `crates` and deploys what they produced, all or nothing. Returns the builds, and
    /// whether the deploy was refused at link.
    fn reload(
        &self,
        host: &Arc<Host>,
        reload: u64,
        crates: &[usize],
        report: &mut dyn FnMut(DevEvent),
    ) -> (Vec<(usize, Build)>, bool) {
        report(DevEvent::Building {
            reload,
            crates: crates.iter().map(|&i| self.crates[i].clone()).collect(),
        });
        let started = Instant::now();
        let mut builds = Vec::new();
        for &i in crates {
            match self.build(&self.crates[i]) {
                Ok(build) => builds.push((i, build)),
                Err(error) => {
                    report(DevEvent::BuildFailed {
                        reload,
                        build: started.elapsed(),
                        error,
                        serving: host.pin().id(),
                    });
                    return (builds, false);
                }
            }
        }
        let build = started.elapsed();
        let built = Instant::now();
        let libraries: Vec<PathBuf> = builds
            .iter()
            .flat_map(|(_, b)| b.libraries.iter().cloned())
            .collect();
        let deploying = Instant::now();
        let mut refused_at_link = false;
        match host.deploy_libraries(Some(format!("dev-{reload}")), &libraries) {
            Ok(deployed) => {
                // `elapsed` runs from the start of the deploy to the store.
                let live_after_build = deploying.duration_since(built) + deployed.elapsed;
                report(DevEvent::Reloaded {
                    reload,
                    build,
                    live_after_build,
                    report: deployed,
                });
            }
            Err(error) => {
                refused_at_link = error.step() == graft_host::Step::Link;
                report(DevEvent::DeployFailed {
                    reload,
                    build,
                    error,
                    serving: host.pin().id(),
                });
            }
        }
        (builds, refused_at_link)
    }

    /// Runs `cargo build` for one crate; compiler messages go to standard error.
    fn build(&self, krate: &Path) -> Result<Build, BuildError> {
        let manifest = krate.join("Cargo.toml");
        let format = if std::io::stderr().is_terminal() {
            "--message-format=json-diagnostic-rendered-ansi"
        } else {
            "--message-format=json"
        };
        let mut command = Command::new(&self.cargo);
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg(format)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.release {
            command.arg("--release");
        }
        let spawn_error = |source| BuildError::Spawn {
            cargo: self.cargo.display().to_string(),
            krate: krate.to_owned(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (mut libraries, mut errors, mut success) = (Vec::new(), 0, false);
        for message in Message::parse_stream(BufReader::new(stdout)).map_while(Result::ok) {
            match message {
                Message::CompilerMessage(message) => {
                    if message.message.level == DiagnosticLevel::Error {
                        errors += 1;
                    }
                    if let Some(rendered) = &message.message.rendered {
                        eprint!("{rendered}");
                    }
                }
                Message::CompilerArtifact(artifact)
                    if artifact.manifest_path.as_std_path() == manifest
                        && artifact.target.kind.contains(&TargetKind::CDyLib) =>
                {
                    libraries.extend(
                        artifact
                            .filenames
                            .iter()
                            .filter(|f| f.as_str().ends_with(std::env::consts::DLL_SUFFIX))
                            .map(|f| f.clone().into_std_path_buf()),
                    );
                }
                Message::BuildFinished(finished) => success = finished.success,
                _ => {}
            }
        }
        let status = child.wait().map_err(spawn_error)?;
        if !(success && status.success()) {
            return Err(BuildError::Compile {
                krate: krate.to_owned(),
                errors,
            });
        }
        if libraries.is_empty() {
            return Err(BuildError::NoLibrary {
                krate: krate.to_owned(),
            });
        }
        let dep_info = libraries[0].with_extension("d");
        let target_dir = libraries[0]
            .parent()
            .and_then(Path::parent)
            .map(Path::to_owned);
        let mut roots = BTreeSet::from([krate.to_owned()]);
        roots.extend(path_dependency_roots(&dep_info));
        Ok(Build {
            libraries,
            roots,
            target_dir,
        })
    }
}

/// The package directories of the local sources a build read, from cargo's dep-info file
/// (`target/debug/libNAME.d`, Makefile syntax). Registry and toolchain sources are left out:
/// only directories with a `Cargo.toml` that are not under `CARGO_HOME` or the sysroot count.
fn path_dependency_roots(dep_info: &Path) -> BTreeSet<PathBuf> {
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return BTreeSet::new();
    };
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")));
    let excluded: Vec<PathBuf> = cargo_home.into_iter().chain(rustup_home).collect();
    let mut roots = BTreeSet::new();
    for file in dep_info_files(&text) {
        let file = PathBuf::from(file);
        if !file.is_absolute() || excluded.iter().any(|e| file.starts_with(e)) {
            continue;
        }
        if let Some(root) = file
            .ancestors()
            .skip(1)
            .find(|d| d.join("Cargo.toml").is_file())
        {
            roots.insert(root.to_owned());
        }
    }
    roots
}

/// The prerequisites of the first rule of a dep-info file (`target: dep dep\ with\ space ...`).
fn dep_info_files(text: &str) -> Vec<String> {
    let Some(line) = text.lines().next() else {
        return Vec::new();
    };
    let Some((_, deps)) = line.split_once(": ") else {
        return Vec::new();
    };
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    files.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(current);
    }
    files
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
/// what `graft dev` does. Builds are staged in `data_dir`, or in a fresh temporary directory
/// (in `/dev/shm` when there is one, where flushing costs nothing) removed on return. Every
/// event goes to `report`, [`DevEvent::Serving`] first.
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
    let _scratch = match data_dir {
        Some(dir) => {
            config.data_dir = dir;
            None
        }
        None => {
            let shm = Path::new("/dev/shm");
            let base = if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            };
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
    fn dep_info_prerequisites_unescape_spaces() {
        let text = "/t/debug/libx.so: /src/a\\ b/lib.rs /src/c.rs\n\n/src/c.rs:\n";
        assert_eq!(
            super::dep_info_files(text),
            ["/src/a b/lib.rs", "/src/c.rs"]
        );
    }

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
