//! One worker process: started with the generation's plugin set, asked to stop, killed.
//!
//! A worker is `graft worker --config DIR/graft.toml`: a `graft serve` of its own on a loopback
//! port, whose release is the front generation's plugin set (symlinks to the front's staged
//! copies, each pinned by its sha256 in a complete manifest, so the worker verifies, loads,
//! checks, links and initialises exactly what the front did). It prints one line,
//! `{"listen": ADDR}`, once it serves; it stops when asked (SIGTERM: it drains and exits), when
//! its standard input closes (the front is gone), or when it is killed.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use graft_host::Generation;
use serde::{Deserialize, Serialize};

use super::channel::Channel;
use super::direct::FrontLink;
use crate::config::HttpClientConfig;
use crate::config::Route;
use crate::shards::Shards;

/// What a worker serves with: the front's serving settings, written as the worker's
/// `graft.toml` (the fields keep `graft.toml`'s names).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spec {
    drain_timeout_ms: u64,
    init_timeout_ms: u64,
    hook_timeout_ms: u64,
    max_connections: usize,
    header_read_timeout_ms: u64,
    body_timeout_ms: u64,
    route_timeout_ms: u64,
    inline_budget_us: u64,
    http_client: HttpClientConfig,
    workers: WorkersSpec,
    #[serde(rename = "route")]
    routes: Vec<Route>,
}

/// The worker's `[workers]`: the grace period, by which its own deadlines are later than the
/// front's (see [`front_deadline`]).
#[derive(Debug, Clone, Serialize)]
struct WorkersSpec {
    grace_ms: u64,
}

/// How much later than the front's a worker's deadlines are, by the grace period.
fn deadline_slack(grace_ms: u64) -> u64 {
    grace_ms.saturating_mul(2)
}

/// The front's deadline of a request a worker serves itself (`direct.rs`), from the worker's
/// own deadline for it (which [`Spec::of`] made later by twice the grace).
pub(crate) fn front_deadline(worker_deadline: Duration, grace_ms: u64) -> Duration {
    worker_deadline.saturating_sub(Duration::from_millis(deadline_slack(grace_ms)))
}

impl Spec {
    /// `[[route]]` number `index` (from 0), as the front's config says it.
    pub(crate) fn route(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The most connections the front serves at once.
    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The front's serving settings, but for its deadlines. The front answers a request 503 at
    /// its deadline and recycles the worker if the call is still running `grace_ms` later; the
    /// worker's own deadlines come later still (by twice the grace), so that it never answers
    /// first and hides a call that runs on.
    pub(crate) fn of(config: &crate::config::ServeConfig) -> Self {
        let later = |ms: u64| ms.saturating_add(deadline_slack(config.workers.grace_ms));
        let mut routes = config.routes.clone();
        for route in &mut routes {
            route.timeout_ms = route.timeout_ms.map(later);
        }
        Self {
            drain_timeout_ms: config.drain_timeout_ms,
            init_timeout_ms: config.init_timeout_ms,
            hook_timeout_ms: config.hook_timeout_ms,
            max_connections: config.max_connections,
            header_read_timeout_ms: config.header_read_timeout_ms,
            body_timeout_ms: config.body_timeout_ms,
            route_timeout_ms: later(config.route_timeout_ms),
            inline_budget_us: config.inline_budget_us,
            http_client: config.http_client.clone(),
            workers: WorkersSpec {
                grace_ms: config.workers.grace_ms,
            },
            routes,
        }
    }
}

/// The worker's `graft.toml`: [`Spec`] and where it lives.
#[derive(Serialize)]
struct WorkerToml<'a> {
    data_dir: &'a str,
    release: &'a str,
    #[serde(flatten)]
    spec: &'a Spec,
}

/// The line a worker prints once it serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// Its channel's socket (a worker binds no other: see `serve/worker_process.rs`).
    pub(crate) channel: PathBuf,
}

/// A running worker.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) channel: Channel,
    /// Its link, when it may serve client connections itself (`direct.rs`).
    pub(crate) link: Option<std::sync::Arc<FrontLink>>,
    /// Requests forwarded to it and not answered yet.
    pub(crate) in_flight: AtomicUsize,
    /// Of those, the ones whose client was answered 503 at their deadline.
    pub(crate) overdue: AtomicUsize,
    /// Set when graft stops or kills it: its end is no crash.
    pub(crate) stopping: AtomicBool,
    pub(crate) started: Instant,
    /// Its standard input: closing it tells the worker the front is gone.
    stdin: Mutex<Option<ChildStdin>>,
    /// How it ended, once it did (and what it ending led to was done).
    ended: std::sync::OnceLock<Ended>,
    ended_notify: tokio::sync::Notify,
    /// Dropped by [`Process::placed`]: until then its end is not handled (a child that ends at
    /// once must not be handled before its starter put it where the handling looks for it).
    placing: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// `SIGSEGV`, ..., or `exit N`.
    pub(crate) how: String,
    /// The signal's name alone, or `exit`: the crash metric's label.
    pub(crate) signal: String,
}

impl Ended {
    pub(crate) fn of(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match status.signal() {
            Some(signal) => {
                let name = signal_name(signal);
                Self {
                    how: format!("killed by {name}"),
                    signal: name,
                }
            }
            None => Self {
                how: format!("exited with status {}", status.code().unwrap_or(-1)),
                signal: "exit".into(),
            },
        }
    }
}

/// `SIGSEGV` for 11, ...: the usual names, the number otherwise.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Writes the directory a generation's workers start from: `release/`, symlinks to the front's
/// staged libraries and a complete manifest pinning their sha256.
///
/// # Errors
///
/// If the directory cannot be written.
pub(crate) fn write_release(dir: &Path, generation: &Generation) -> std::io::Result<()> {
    let release = dir.join("release");
    std::fs::create_dir_all(&release)?;
    let mut manifest = String::from("complete = true\n");
    if let Some(name) = generation.release() {
        manifest.push_str(&format!(
            "name = {}\n",
            toml::Value::String(name.to_owned())
        ));
    }
    for (name, staged, sha256) in generation.libraries() {
        let file = format!("lib{name}.so");
        std::os::unix::fs::symlink(std::path::absolute(staged)?, release.join(&file))?;
        manifest.push_str(&format!(
            "\n[[plugin]]\nname = \"{name}\"\nfile = \"{file}\"\nsha256 = \"{sha256}\"\n"
        ));
    }
    graft_host::atomic_file::write(
        &release.join(graft_host::release::MANIFEST),
        manifest.as_bytes(),
    )
}

/// How to start a worker.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub(crate) binary: &'a Path,
    /// Written by [`write_release`].
    pub(crate) dir: &'a Path,
    pub(crate) spec: &'a Spec,
    pub(crate) memory_limit_mb: Option<u64>,
    pub(crate) timeout: Duration,
    /// The front's runtime: the channel connects from it.
    pub(crate) runtime: &'a tokio::runtime::Handle,
    /// The front's app threads: the channel's connection runs on the first.
    pub(crate) shards: &'a Shards,
    /// With a link for client connections, of this many slots (the front's `max_connections`).
    pub(crate) link_slots: Option<usize>,
    /// The generation it serves, as the front numbers it.
    pub(crate) generation: u64,
}

/// Starts a worker (with a config and a data directory of its own in the launch directory),
/// and waits until it serves, at most `timeout`. `on_exit` is called, on a thread of its own,
/// when it ends, with a function that makes its end known to the requests waiting for it
/// ([`Process::ended`]): `on_exit` calls it once the end is handled as far as those requests
/// need (logged, a canary's rollout aborted), before slower work (a restart, a rollback); it is
/// called after `on_exit` in any case.
///
/// # Errors
///
/// Why it could not start, in words (it ended, said nothing in time, or could not be spawned).
pub(crate) fn start(
    launch: &Launch<'_>,
    on_exit: impl FnOnce(&std::sync::Arc<Process>, &Ended, &dyn Fn()) + Send + 'static,
) -> Result<std::sync::Arc<Process>, String> {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let data = format!("data-{n}");
    let config = launch.dir.join(format!("graft-{n}.toml"));
    let socket = std::path::absolute(launch.dir.join(format!("channel-{n}.sock")))
        .map_err(|e| format!("{}: {e}", launch.dir.display()))?;
    // A Unix socket's path has room for 107 bytes.
    if socket.as_os_str().len() > 100 {
        return Err(format!(
            "the worker's socket path {} is longer than a Unix socket allows: use a shorter data_dir",
            socket.display()
        ));
    }
    write_config(&config, &data, launch.spec)
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let mut command = Command::new(launch.binary);
    command
        .arg("worker")
        .arg("--config")
        .arg(&config)
        .arg("--channel")
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove(crate::config::ADMIN_TOKEN_ENV);
    if let Some(limit) = launch.memory_limit_mb {
        command.arg("--memory-limit-mb").arg(limit.to_string());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("spawning {} worker: {e}", launch.binary.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let (said, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = said.send(line);
    });
    let line = ready.recv_timeout(launch.timeout);
    let ready = match &line {
        Ok(line) => serde_json::from_str::<Ready>(line.trim()).ok(),
        Err(_) => None,
    };
    let files = [config, launch.dir.join(&data), socket];
    let channel = match &ready {
        Some(ready) => launch
            .runtime
            .block_on(async {
                let channel = Channel::connect(&ready.channel, launch.shards).await?;
                let link = match launch.link_slots {
                    Some(slots) => Some(std::sync::Arc::new(
                        Channel::link(&ready.channel, slots, launch.generation).await?,
                    )),
                    None => None,
                };
                Ok::<_, super::channel::ChannelError>((channel, link))
            })
            .map_err(|e| e.to_string()),
        None => Err(String::new()),
    };
    let (Some(_), Ok((channel, link))) = (&ready, channel) else {
        let _ = child.kill();
        let how = child.wait().map(Ended::of).map(|e| e.how);
        remove(&files);
        return Err(match (line, how) {
            (Err(_), _) => format!(
                "worker pid {pid} did not serve within {} ms (workers.start_timeout_ms)",
                launch.timeout.as_millis()
            ),
            (Ok(_), Ok(how)) if ready.is_none() => {
                format!("worker pid {pid} {how} while it prepared the release")
            }
            (Ok(_), Ok(_)) => format!("worker pid {pid} served but its channel did not connect"),
            (Ok(_), Err(e)) => format!("worker pid {pid} ended while it prepared: {e}"),
        });
    };
    let (placing, placed) = std::sync::mpsc::channel();
    let process = std::sync::Arc::new(Process {
        pid,
        channel,
        link,
        in_flight: AtomicUsize::new(0),
        overdue: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        started: Instant::now(),
        stdin: Mutex::new(child.stdin.take()),
        ended: std::sync::OnceLock::new(),
        ended_notify: tokio::sync::Notify::new(),
        placing: Mutex::new(Some(placing)),
    });
    // The waiter holds the process for as long as the child lives: what it reports on is
    // never gone, however early the child ends.
    let waited = std::sync::Arc::clone(&process);
    wait_in_background(child, files, move |ended| {
        // Its starter placed it (or gave up on it) first.
        let _ = placed.recv();
        let known = || {
            let _ = waited.ended.set(ended.clone());
            waited.ended_notify.notify_waiters();
        };
        on_exit(&waited, &ended, &known);
        known();
    });
    Ok(process)
}

fn remove(files: &[PathBuf]) {
    for file in files {
        let _ = std::fs::remove_dir_all(file).or_else(|_| std::fs::remove_file(file));
    }
}

/// Waits for the child on a thread of its own, then removes its config and data and reports.
fn wait_in_background(
    mut child: Child,
    files: [PathBuf; 3],
    on_exit: impl FnOnce(Ended) + Send + 'static,
) {
    std::thread::Builder::new()
        .name(format!("graft-worker-{}", child.id()))
        .spawn(move || {
            let ended = match child.wait() {
                Ok(status) => Ended::of(status),
                Err(e) => Ended {
                    how: format!("could not be waited for: {e}"),
                    signal: "unknown".into(),
                },
            };
            remove(&files);
            on_exit(ended);
        })
        .expect("spawning a thread");
}

impl Process {
    /// How it ended, waited for at most `within` (a request it failed waits for its crash
    /// to be handled: logged, and a canary's rollout aborted, before the request counts).
    pub(crate) async fn ended(&self, within: Duration) -> Option<Ended> {
        let notified = self.ended_notify.notified();
        if let Some(ended) = self.ended.get() {
            return Some(ended.clone());
        }
        let _ = tokio::time::timeout(within, notified).await;
        self.ended.get().cloned()
    }

    /// Says it was put where its end is handled from (a slot): only then is its end handled.
    /// Its starter must call this once, whatever it did with it.
    pub(crate) fn placed(&self) {
        drop(
            self.placing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Asks it to drain and exit (SIGTERM); its end is no crash.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.signal(libc::SIGTERM);
        drop(
            self.stdin
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Kills it at once (SIGKILL); its end is no crash.
    pub(crate) fn kill(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.signal(libc::SIGKILL);
    }

    #[allow(unsafe_code)]
    fn signal(&self, signal: i32) {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        // SAFETY: kill(2) has no memory effects. The pid is our child's, not reaped before
        // `stopping` is set (the waiting thread reaps it), so it names no other process.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Writes a worker's `graft.toml`: its data directory, the release beside it, and the front's
/// serving settings (it binds no listener: see `serve/worker_process.rs`).
fn write_config(path: &Path, data_dir: &str, spec: &Spec) -> std::io::Result<()> {
    let text = toml::to_string(&WorkerToml {
        data_dir,
        release: "release",
        spec,
    })
    .map_err(std::io::Error::other)?;
    graft_host::atomic_file::write(path, text.as_bytes())
}
