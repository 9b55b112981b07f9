//! The `graft` command line: parse arguments, call the library, print the result.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use graft::api::{DeployRequest, RolloutAction, RolloutOptions};
use graft::client::AdminClient;
use graft::config::ServeConfig;
use graft::fleet::{FleetEvent, FleetOptions};
use graft::serve::{shutdown_signal, Server};
use tracing_subscriber::EnvFilter;

/// Writes to standard output, returning the write's error: a closed pipe (`graft status |
/// head`) ends the command quietly instead of panicking as `print!` would.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// graft: run a service's logic from plugins and replace it while it serves.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the admin API is: `--admin` (or `GRAFT_ADMIN`), else the `[admin]` of `--config`,
/// else that of `./graft.toml` if there is one, else `http://127.0.0.1:9090`; the token
/// likewise.
#[derive(clap::Args)]
struct Admin {
    /// The admin API's URL [default: http://127.0.0.1:9090].
    #[arg(long, env = "GRAFT_ADMIN")]
    admin: Option<String>,
    /// Its bearer token, if it has one.
    #[arg(long, env = "GRAFT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A server's graft.toml, to take the admin address and token from [default: ./graft.toml,
    /// if it exists and no --admin is given].
    #[arg(long, value_name = "GRAFT_TOML")]
    config: Option<PathBuf>,
}

impl Admin {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let here = Path::new(LOCAL_CONFIG);
        let path = match (&self.config, &self.admin) {
            (Some(path), _) => Some(path.as_path()),
            (None, None) if here.is_file() => Some(here),
            (None, _) => None,
        };
        let config = path
            .map(|path| {
                ServeConfig::load(path).with_context(|| format!("reading {}", path.display()))
            })
            .transpose()?;
        let url = match (&self.admin, &config) {
            (Some(url), _) => url.clone(),
            (None, Some(config)) => {
                let mut addr = config.admin.listen;
                // A server listening on every address is reached on this machine's loopback.
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
            (None, None) => DEFAULT_ADMIN.to_owned(),
        };
        if let Some(token) = &self.token {
            graft::config::check_token(token, "--token (or GRAFT_ADMIN_TOKEN)")
                .map_err(anyhow::Error::msg)?;
        }
        let token = self
            .token
            .clone()
            .or_else(|| config.and_then(|c| c.admin.token));
        Ok(AdminClient::new(&url, token))
    }
}

/// Where the CLI looks for the admin API when nothing says otherwise.
const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// The config the CLI reads when no `--config` or `--admin` is given, if it exists.
const LOCAL_CONFIG: &str = "graft.toml";

/// How a deploy starts a staged rollout.
#[derive(clap::Args)]
struct Rollout {
    /// Start a staged rollout following the server's plan: the release is a canary beside
    /// the current one, and steps up through the plan while its analysis passes.
    #[arg(long)]
    rollout: bool,
    /// Start a staged rollout at this weight: the release serves this percentage of
    /// requests first, then the plan's greater steps.
    #[arg(long, value_name = "PERCENT")]
    canary: Option<u32>,
    /// The rollout's steps (`5:30s,25:30s,50:60s,100`) instead of the server's plan.
    #[arg(long)]
    plan: Option<String>,
    /// Stay until the rollout ends, printing each of its events: exit 0 once promoted, 1 once
    /// aborted (for CI).
    #[arg(long)]
    wait: bool,
    /// This rollout's `min_requests` (canary requests a verdict needs) instead of the server's.
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// This rollout's `max_error_rate` (0.05 is 5%) instead of the server's.
    #[arg(long, value_name = "RATE")]
    max_error_rate: Option<f64>,
    /// This rollout's `max_p99_ratio` (canary p99 against stable's) instead of the server's.
    #[arg(long, value_name = "RATIO")]
    max_p99_ratio: Option<f64>,
    /// This rollout's `p99_slack_ms` instead of the server's.
    #[arg(long, value_name = "MS")]
    p99_slack_ms: Option<u64>,
}

impl Rollout {
    fn options(&self) -> RolloutOptions {
        let mut thresholds = graft::rollout::Thresholds::default();
        thresholds.min_requests = self.min_requests;
        thresholds.max_error_rate = self.max_error_rate;
        thresholds.max_p99_ratio = self.max_p99_ratio;
        thresholds.p99_slack_ms = self.p99_slack_ms;
        RolloutOptions::new(self.rollout, self.canary, self.plan.clone())
            .with_thresholds(thresholds)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP routes from plugin exports, with the admin API beside them.
    ///
    /// Stops on SIGTERM or Ctrl-C: stops accepting, lets in-flight requests finish (at most the
    /// drain timeout), saves the plugin state that asks for it, exits 0 (non-zero if requests
    /// were abandoned or the save failed).
    Serve {
        /// The config file.
        #[arg(long, default_value = "graft.toml")]
        config: PathBuf,
        /// Deploy what appears in this release directory (or behind this symlink); overrides
        /// the config's `watch`.
        #[arg(long)]
        watch: Option<PathBuf>,
        /// Move the saved state (DATA/state.redb) aside first, to DATA/state.redb.set-aside-TIME,
        /// and start with fresh state: the way out when a start is refused because the saved
        /// state cannot be used. Nothing is deleted.
        #[arg(long)]
        set_aside_state: bool,
    },
    /// Serve one generation's plugins for a front (`isolation` in graft.toml): started by
    /// `graft serve`, not by hand.
    #[command(hide = true)]
    Worker {
        /// The worker's config, written by the front.
        #[arg(long)]
        config: PathBuf,
        /// The Unix socket the front's requests come through.
        #[arg(long)]
        channel: PathBuf,
        /// The most memory the worker may allocate, in MiB.
        #[arg(long)]
        memory_limit_mb: Option<u64>,
    },
    /// Load a release as a deploy would, on a scratch host, and exit: run by `graft serve`
    /// under isolation before it loads a release itself, not by hand.
    #[command(hide = true)]
    Preflight {
        /// The release directory.
        dir: PathBuf,
        /// The most memory it may allocate, in MiB.
        #[arg(long)]
        memory_limit_mb: Option<u64>,
    },
    /// Serve, and rebuild and redeploy plugin crates whenever their sources change.
    ///
    /// Builds every plugin crate with cargo (one build per workspace, all at once), deploys the
    /// libraries on top of the config's release, then watches the sources: a change in any
    /// crate rebuilds every plugin built from it (read with cargo metadata), deployed together
    /// as one release, one line per reload with the build time and how soon after the build the
    /// new code was live. A build that fails shows the compiler's errors, a release that is
    /// refused says why; the previous code keeps serving, and what did not go live is built
    /// again with the next change.
    Dev {
        /// Plugin crates (directories with a Cargo.toml whose `[lib]` is a cdylib), or
        /// workspaces, whose cdylib members are the plugins.
        #[arg(required = true)]
        crates: Vec<PathBuf>,
        /// The config file (routes, addresses, a release to start from).
        #[arg(long, default_value = "graft.toml")]
        config: PathBuf,
        /// Build with --release.
        #[arg(long)]
        release: bool,
        /// Stage builds and save state here. Without it, the config's data_dir; without that,
        /// a fresh directory under cargo's target directory, removed on exit.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// State or a table a new build cannot carry over (its type changed, no migration)
        /// starts fresh, with a warning, instead of refusing the build.
        #[arg(long)]
        fresh_state: bool,
    },
    /// Deploy a release directory to a running server; exits 1 with the reason if it is refused.
    ///
    /// A server on this machine reads the directory itself; to any other address the release is
    /// uploaded as a tar bundle (its manifest and the files it names; checksums are verified by
    /// the server either way).
    Deploy {
        /// The release directory.
        dir: PathBuf,
        /// Upload the release as a bundle even to a server on this machine.
        #[arg(long)]
        upload: bool,
        /// Do everything a deploy does short of going live, on the server, against what is
        /// live (initialisers run), and change nothing: exits 1 with the refusal a deploy
        /// would get.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        rollout: Rollout,
        #[command(flatten)]
        admin: Admin,
    },
    /// Show or steer the staged rollout of a running server.
    Rollout {
        /// What to do.
        #[arg(value_parser = ["status", "pause", "resume", "promote", "abort"])]
        action: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Act on many servers at once.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Make the previous release current again on a running server.
    Rollback {
        /// An earlier release to go back to: a generation id, or a release name (the newest
        /// of the history that went live as it); the previous release if not given.
        #[arg(long, value_name = "GENERATION|RELEASE")]
        to: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Show a running server's generations, plugins and libraries.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Load a release directory or a plugin library without serving it, and report on it.
    ///
    /// Stages, loads, checks, initialises and links exactly as a deploy would. Exits 1 with the
    /// reason when the release would be rejected.
    Check {
        /// A release directory (with release.toml) or a plugin library (.so).
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a release directory from plugin libraries: copies them and writes release.toml
    /// with each plugin's declared name and sha256.
    Pack {
        /// The release directory to write.
        out: PathBuf,
        /// The plugin libraries.
        #[arg(required_unless_present = "remove")]
        libraries: Vec<PathBuf>,
        /// A plugin the release removes from the current generation (repeatable).
        #[arg(long, value_name = "NAME")]
        remove: Vec<String>,
        /// A label for the release.
        #[arg(long)]
        name: Option<String>,
        /// Mark the release complete: it replaces the whole plugin set.
        #[arg(long)]
        complete: bool,
        /// Sign the release with this secret key (as `graft sign` does).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Replace the release OUT holds already.
        #[arg(long)]
        force: bool,
    },
    /// Write a new ed25519 signing key to PATH (mode 0600) and its public key, one line, to
    /// PATH.pub: the line `trusted_keys` in graft.toml takes.
    Keygen {
        /// Where to write the secret key (it must not exist).
        path: PathBuf,
    },
    /// Sign a release directory: writes DIR/release.sig, an ed25519 signature over its
    /// manifest, which pins every file's sha256.
    Sign {
        /// The release directory.
        dir: PathBuf,
        /// The secret key (from `graft keygen`).
        #[arg(long)]
        key: PathBuf,
    },
}

/// What `graft fleet` does.
#[derive(Subcommand)]
enum FleetCommand {
    /// Take a release across the hosts in waves (one host, then 2, 4, 8...): each host runs a
    /// staged rollout with its own analysis, and the next wave starts once every host of this
    /// one promoted. If a host aborts or refuses, stop, and roll back the hosts already updated.
    /// Exits 1 then.
    Rollout {
        /// The hosts file: `[[host]]` entries with `admin` (URL), optional `name` and `token`.
        #[arg(long)]
        hosts: PathBuf,
        /// The release directory; uploaded to every host as a bundle.
        dir: PathBuf,
        /// The canary weight each host starts at (default: its plan's first step).
        #[arg(long, value_name = "PERCENT")]
        canary: Option<u32>,
        /// The plan each host follows (default: its configured plan).
        #[arg(long)]
        plan: Option<String>,
        /// How long a wave may take, in seconds.
        #[arg(long, default_value_t = 1800)]
        wave_timeout: u64,
        /// How long the whole rollout may take, in seconds: past it, the wave under way fails
        /// (its rollouts aborted, the hosts updated before rolled back). No limit by default
        /// but the waves'.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Preflight { .. }) {
        // What its front reads: plain lines on standard output, naming each plugin whose code
        // is about to run (see `graft/src/worker/preflight.rs`).
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn,graft_host::host::pipeline=debug"))
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .init();
    } else {
        // A command that answers once reports its failure once, as its error (a plugin's
        // panic is in it): its log says only what is worse. A server logs warnings too.
        let serving = matches!(
            cli.command,
            Command::Serve { .. } | Command::Worker { .. } | Command::Dev { .. }
        );
        let default = if serving {
            "warn"
        } else {
            "error,graft::plugin=off"
        };
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
            )
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Said already, as the command's output (`check --json`).
        Err(error) if error.is::<Reported>() => ExitCode::FAILURE,
        // The reader of standard output went away (`graft check DIR | head`): nothing to say.
        Err(error) if is_broken_pipe(&error) => ExitCode::from(141),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an error is a write to a closed pipe.
/// `graft check --json`'s output for a release it refuses.
#[derive(serde::Serialize)]
struct CheckRefusal<'a> {
    path: &'a Path,
    /// As the deploy API answers a refusal: `error`, `message`, `step`, `plugin`, `file`.
    error: graft::api::ApiError,
}

/// A failure the command has reported already, as its output.
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported")
    }
}

impl std::error::Error for Reported {}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            watch,
            set_aside_state,
        } => serve(&config, watch, set_aside_state),
        Command::Worker {
            config,
            channel,
            memory_limit_mb,
        } => graft::serve::run_worker(&config, &channel, memory_limit_mb),
        Command::Preflight {
            dir,
            memory_limit_mb,
        } => graft::serve::run_preflight(&dir, memory_limit_mb),
        Command::Dev {
            crates,
            config,
            release,
            data_dir,
            fresh_state,
        } => {
            let config = ServeConfig::load(&config)?;
            let dev = graft::dev::DevLoop::new(crates)?
                .release(release)
                .fresh_state(fresh_state);
            // Said at once: a build under way is not waited for, the server drains first.
            let stopping = async {
                shutdown_signal().await;
                let _ = outln!("graft dev: stopping");
            };
            runtime()?.block_on(graft::dev::serve(
                config,
                dev,
                data_dir,
                stopping,
                |event| {
                    if let Some(line) = event.line() {
                        // Nobody reading (a closed pipe) is no reason to stop the loop.
                        let _ = writeln!(std::io::stdout(), "{line}");
                    }
                },
            ))?;
            Ok(())
        }
        Command::Deploy {
            dir,
            upload,
            dry_run,
            rollout,
            admin,
        } => {
            let client = admin.client()?;
            let options = rollout.options().with_dry_run(dry_run);
            let response = if upload || !client.is_local() {
                let bundle = graft::bundle::pack(&dir)
                    .with_context(|| format!("packing {}", dir.display()))?;
                client.deploy_bundle(&bundle, &options)?
            } else {
                let dir = std::path::absolute(&dir)
                    .with_context(|| format!("resolving {}", dir.display()))?;
                client.deploy(&DeployRequest::new(dir).with_rollout(options))?
            };
            out!("{response}")?;
            match (&response.rollout, rollout.wait) {
                (Some(started), true) => wait_for_rollout(&client, started),
                _ => Ok(()),
            }
        }
        Command::Fleet {
            command:
                FleetCommand::Rollout {
                    hosts,
                    dir,
                    canary,
                    plan,
                    wave_timeout,
                    timeout,
                    json,
                },
        } => {
            let hosts = graft::fleet::read_hosts(&hosts)?;
            let mut options = FleetOptions::default();
            options.canary = canary;
            options.plan = plan;
            options.wave_timeout = std::time::Duration::from_secs(wave_timeout);
            options.timeout = timeout.map(std::time::Duration::from_secs);
            let report = graft::fleet::rollout(&hosts, &dir, &options, &mut |event| match event {
                FleetEvent::Wave { wave, waves, hosts } => {
                    let _ = outln!("wave {wave}/{waves}: {}", hosts.join(", "));
                }
                FleetEvent::Host { host, line } => {
                    let _ = outln!("  {host}: {line}");
                }
                FleetEvent::Stopping { reason } => {
                    let _ = outln!("stopping: {reason}; putting updated hosts back");
                }
                _ => {}
            })
            .with_context(|| format!("rolling out {}", dir.display()))?;
            print_json_or(json, &report)?;
            anyhow::ensure!(report.succeeded, "the fleet rollout failed");
            Ok(())
        }
        Command::Rollout {
            action,
            json,
            admin,
        } => {
            let client = admin.client()?;
            let status = match action.as_str() {
                "status" => client.rollout()?,
                action => {
                    let action = <RolloutAction as clap::ValueEnum>::from_str(action, false)
                        .map_err(anyhow::Error::msg)?;
                    client.rollout_action(action)?
                }
            };
            print_json_or(json, &status)
        }
        Command::Rollback { to, admin } => {
            let client = admin.client()?;
            let answer = match to {
                None => client.rollback()?,
                Some(to) => client.rollback_to(match to.parse::<u64>() {
                    Ok(generation) => graft_host::RollbackTo::Generation(generation),
                    Err(_) => graft_host::RollbackTo::Release(to),
                })?,
            };
            out!("{answer}")?;
            Ok(())
        }
        Command::Status { json, admin } => print_json_or(json, &admin.client()?.status()?),
        Command::Check { path, json } => {
            let checked = graft_host::check::check_with(&path, |builder| {
                graft::serve::provide_services(builder, &Default::default())
            });
            match checked {
                Ok(report) => print_json_or(json, &report),
                // As JSON too: the deploy API's refusal, and the path checked.
                Err(error) if json => {
                    let refusal = CheckRefusal {
                        path: &path,
                        error: graft::api::ApiError::from(&error),
                    };
                    out!("{}", serde_json::to_string_pretty(&refusal)?)?;
                    Err(Reported.into())
                }
                Err(error) => Err(error).with_context(|| format!("checking {}", path.display())),
            }
        }
        Command::Pack {
            out,
            libraries,
            name,
            complete,
            remove,
            sign,
            force,
        } => {
            let manifest = out.join(graft_host::release::MANIFEST);
            anyhow::ensure!(
                force || !manifest.exists(),
                "{} holds a release already ({}): pass --force to replace it",
                out.display(),
                graft_host::release::MANIFEST
            );
            let manifest = (name.as_deref(), complete, remove.as_slice());
            pack(&out, &libraries, manifest)?;
            sign.map_or(Ok(()), |key| signed(&out, &key))
        }
        Command::Keygen { path } => {
            let public = graft::signing::keygen(&path)?;
            outln!(
                "secret key: {}\npublic key: {} ({public})",
                path.display(),
                graft::signing::public_path(&path).display()
            )?;
            Ok(())
        }
        Command::Sign { dir, key } => signed(&dir, &key),
    }
}

/// Follows the rollout that `started` began until it ends, printing each event as it comes.
///
/// # Errors
///
/// If it was aborted (its reason), or another rollout replaced it, or the server cannot be
/// asked.
fn wait_for_rollout(
    client: &AdminClient,
    started: &graft::rollout::RolloutStatus,
) -> anyhow::Result<()> {
    use graft::rollout::{RolloutEvent, RolloutState};
    let key = |e: &RolloutEvent| (e.at_ms, e.event.clone(), e.message.clone());
    let since = started.events.first().map_or(0, |e| e.at_ms);
    let mut last = started.events.last().map(key);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = client.rollout()?;
        anyhow::ensure!(
            now.canary == started.canary,
            "another rollout (canary generation {}) replaced this one",
            now.canary
        );
        // The events after the last one said (all kept, if it is no longer among them).
        let from = last
            .as_ref()
            .and_then(|last| now.events.iter().rposition(|e| key(e) == *last))
            .map_or(0, |at| at + 1);
        for event in &now.events[from..] {
            let at = event.at_ms.saturating_sub(since) as f64 / 1000.0;
            outln!(
                "+{at:.1}s {} (canary {}%): {}",
                event.event,
                event.weight,
                event.message
            )?;
        }
        last = now.events.last().map(key).or(last);
        match now.state {
            RolloutState::Promoted => return Ok(()),
            RolloutState::Aborted => {
                anyhow::bail!("rollout aborted: {}", now.last_message())
            }
            RolloutState::Running | RolloutState::Paused => {}
        }
    }
}

/// Signs the release in `dir` and says so.
fn signed(dir: &Path, key: &Path) -> anyhow::Result<()> {
    let public =
        graft::signing::sign(dir, key).with_context(|| format!("signing {}", dir.display()))?;
    outln!("{}: signed by {public}", dir.display())?;
    Ok(())
}

/// Prints `value` as JSON, or as its table.
fn print_json_or<T: serde::Serialize + std::fmt::Display>(
    json: bool,
    value: &T,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        out!("{value}")?;
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn serve(config: &Path, watch: Option<PathBuf>, set_aside_state: bool) -> anyhow::Result<()> {
    let mut config = ServeConfig::load(config)?;
    if set_aside_state {
        let moved = graft_host::store::set_aside(&config.data_dir).with_context(|| {
            format!(
                "setting aside the saved state in {}",
                config.data_dir.display()
            )
        })?;
        match moved {
            Some(aside) => tracing::warn!(
                aside = %aside.display(),
                "saved state set aside: starting with fresh state"
            ),
            None => tracing::info!("no saved state to set aside"),
        }
    }
    if let Some(watch) = watch {
        config.watch = Some(
            std::path::absolute(&watch)
                .with_context(|| format!("resolving {}", watch.display()))?,
        );
    }
    let runtime = runtime()?;
    let stopped = runtime.block_on(async {
        let server = Server::start(config).await?;
        outln!(
            "graft: serving on http://{}, admin on http://{}",
            server.addr(),
            server.admin_addr()
        )?;
        anyhow::Ok(server.run_until(shutdown_signal()).await)
    })?;
    // Plugin calls and deploys still running cannot be stopped, and tokio would wait for them:
    // give them a moment, then exit anyway.
    runtime.shutdown_timeout(EXIT_MARGIN);
    if let Err(error) = &stopped.saved {
        anyhow::bail!("saving plugin state failed: {error}");
    }
    anyhow::ensure!(
        stopped.drained,
        "{} request(s) still in flight at the drain deadline were abandoned (drain_timeout_ms); \
         the plugin state was saved",
        stopped.abandoned
    );
    Ok(())
}

/// How long a stopping server waits, after the drain deadline, for work it cannot stop.
const EXIT_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// `graft pack`: names each library by what it declares (read without running any plugin
/// code but the libraries' own loaders), then writes the release: its label, whether it is
/// complete, and the plugins it removes.
fn pack(
    out: &Path,
    libraries: &[PathBuf],
    (name, complete, remove): (Option<&str>, bool, &[String]),
) -> anyhow::Result<()> {
    let declared = graft_host::check::declarations(libraries).context("reading the libraries")?;
    let plugins: Vec<(&str, &Path)> = declared
        .iter()
        .zip(libraries)
        .map(|(d, library)| (d.info.name.as_str(), library.as_path()))
        .collect();
    graft_host::release::write_release(out, name, complete, &plugins, remove)
        .with_context(|| format!("writing release {}", out.display()))?;
    let removing = if remove.is_empty() {
        String::new()
    } else {
        format!(", removing {}", remove.join(", "))
    };
    outln!(
        "{}: release with {} plugin(s){removing}",
        out.display(),
        plugins.len()
    )?;
    Ok(())
}
