//! The `graft` command line: parse arguments, call the library, print the result.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use graft::api::{DeployRequest, RolloutAction};
use graft::client::AdminClient;
use graft::config::ServeConfig;
use graft::fleet::{FleetEvent, FleetOptions};
use graft::serve::{shutdown_signal, Server};
use tracing_subscriber::EnvFilter;

mod args;

use args::{Cli, Command, FleetCommand};

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
