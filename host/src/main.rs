//! The `graft` command line: parse arguments, call the library, print the result.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// graft: run a service's logic from plugins and replace it while it serves.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the admin API is.
#[derive(clap::Args)]
struct Admin {
    /// The admin API's URL.
    #[arg(long, env = "GRAFT_ADMIN", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Its bearer token, if it has one.
    #[arg(long, env = "GRAFT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Admin {
    fn client(&self) -> graft_host::client::AdminClient {
        graft_host::client::AdminClient::new(&self.admin, self.token.clone())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP routes from plugin exports, with the admin API beside them.
    ///
    /// Stops on SIGTERM or Ctrl-C: stops accepting, lets in-flight requests finish (at most the
    /// drain timeout), exits 0.
    Serve {
        /// The config file.
        #[arg(long, default_value = "graft.toml")]
        config: PathBuf,
        /// Deploy what appears in this release directory (or behind this symlink); overrides
        /// the config's `watch`.
        #[arg(long)]
        watch: Option<PathBuf>,
    },
    /// Serve, and rebuild and redeploy plugin crates whenever their sources change.
    ///
    /// Builds each crate with cargo, deploys the libraries on top of the config's release, then
    /// watches the sources: every build that compiles goes live, one line per reload with the
    /// build time and how soon after the build the new code was live. A build that fails shows
    /// the compiler's errors, and the previous code keeps serving.
    Dev {
        /// The plugin crates: directories with a Cargo.toml whose `[lib]` is a cdylib.
        #[arg(required = true)]
        crates: Vec<PathBuf>,
        /// The config file (routes, addresses, a release to start from).
        #[arg(long, default_value = "graft.toml")]
        config: PathBuf,
        /// Build with --release.
        #[arg(long)]
        release: bool,
        /// Stage builds here instead of in a fresh temp directory (in /dev/shm when there is
        /// one), which is removed on exit.
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
        #[command(flatten)]
        admin: Admin,
    },
    /// Show or steer the staged rollout of a running server.
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        action: RolloutAction,
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
        #[arg(required = true)]
        libraries: Vec<PathBuf>,
        /// A label for the release.
        #[arg(long)]
        name: Option<String>,
        /// Mark the release complete: it replaces the whole plugin set.
        #[arg(long)]
        complete: bool,
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
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `graft rollout` does.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RolloutAction {
    /// Step, weights, per-generation figures, last verdict and events.
    Status,
    /// Hold the rollout at its step (a breach still aborts it).
    Pause,
    /// Go on from a pause.
    Resume,
    /// Make the canary the stable release now.
    Promote,
    /// Drop the canary now.
    Abort,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, watch } => serve(&config, watch)?,
        Command::Dev {
            crates,
            config,
            release,
            data_dir,
        } => dev(&config, crates, release, data_dir)?,
        Command::Deploy {
            dir,
            upload,
            rollout,
            canary,
            plan,
            admin,
        } => {
            let client = admin.client();
            let rollout = rollout || canary.is_some() || plan.is_some();
            let report = if upload || !is_local(&admin.admin) {
                let bundle = graft_host::release::pack_bundle(&dir)
                    .with_context(|| format!("packing {}", dir.display()))?;
                if rollout {
                    client.deploy_bundle_canary(&bundle, canary, plan.as_deref())?
                } else {
                    client.deploy_bundle(&bundle)?
                }
            } else {
                let dir = std::path::absolute(&dir)
                    .with_context(|| format!("resolving {}", dir.display()))?;
                if rollout {
                    client.deploy_canary(&dir, canary, plan.as_deref())?
                } else {
                    client.deploy(&dir)?
                }
            };
            if report["rollout"].is_object() {
                println!(
                    "generation {} deployed as a canary: release {}",
                    report["generation"],
                    str_of(&report["release"])
                );
                print!("{}", rollout_table(&report["rollout"]));
            } else {
                println!("{}", deploy_line(&report));
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
                    json,
                },
        } => {
            use graft_host::fleet::{self, FleetEvent, FleetOptions};
            let hosts = fleet::read_hosts(&hosts)?;
            let mut options = FleetOptions::default();
            options.canary = canary;
            options.plan = plan;
            options.wave_timeout = std::time::Duration::from_secs(wave_timeout);
            let report = fleet::rollout(&hosts, &dir, &options, &mut |event| match event {
                FleetEvent::Wave { wave, waves, hosts } => {
                    println!("wave {wave}/{waves}: {}", hosts.join(", "));
                }
                FleetEvent::Host { host, line } => println!("  {host}: {line}"),
                FleetEvent::Stopping { reason } => {
                    println!("stopping: {reason}; putting updated hosts back");
                }
                _ => {}
            })
            .with_context(|| format!("rolling out {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fleet::summary(&report));
            }
            if !report.succeeded {
                anyhow::bail!("the fleet rollout failed");
            }
        }
        Command::Rollout {
            action,
            json,
            admin,
        } => {
            let client = admin.client();
            let status = match action {
                RolloutAction::Status => client.rollout()?,
                RolloutAction::Pause => client.rollout_action("pause")?,
                RolloutAction::Resume => client.rollout_action("resume")?,
                RolloutAction::Promote => client.rollout_action("promote")?,
                RolloutAction::Abort => client.rollout_action("abort")?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", rollout_table(&status));
            }
        }
        Command::Rollback { admin } => {
            let report = admin.client().rollback()?;
            println!("{}", deploy_line(&report));
        }
        Command::Status { json, admin } => {
            let status = admin.client().status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status_table(&status));
            }
        }
        Command::Check { path, json } => {
            let report = graft_host::check::check(&path)
                .with_context(|| format!("checking {}", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
        Command::Pack {
            out,
            libraries,
            name,
            complete,
        } => {
            let mut named = Vec::new();
            for library in &libraries {
                let report = graft_host::check::check(library)
                    .with_context(|| format!("checking {}", library.display()))?;
                named.push((report.plugins[0].info.name.clone(), library.as_path()));
            }
            let plugins: Vec<(&str, &std::path::Path)> =
                named.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            graft_host::release::write_release(&out, name.as_deref(), complete, &plugins)
                .with_context(|| format!("writing release {}", out.display()))?;
            println!(
                "{}: release with {} plugin(s)",
                out.display(),
                plugins.len()
            );
        }
    }
    Ok(())
}

fn serve(config: &std::path::Path, watch: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = graft_host::serve::ServeConfig::load(config)?;
    if let Some(watch) = watch {
        config.watch = Some(
            std::path::absolute(&watch)
                .with_context(|| format!("resolving {}", watch.display()))?,
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let server = graft_host::serve::Server::start(config).await?;
        println!(
            "graft: serving on http://{}, admin on http://{}",
            server.addr(),
            server.admin_addr()
        );
        server.run_until(shutdown_signal()).await;
        anyhow::Ok(())
    })
}

fn dev(
    config: &std::path::Path,
    crates: Vec<PathBuf>,
    release: bool,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use graft_host::dev::DevLoop;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut config = graft_host::serve::ServeConfig::load(config)?;
    let dev = DevLoop::new(crates)?.release(release);
    // Dev builds are throwaway: stage them where flushing costs nothing, unless told otherwise.
    let _scratch = match data_dir {
        Some(dir) => {
            config.data_dir = dir;
            None
        }
        None => {
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            };
            let scratch = tempfile::Builder::new()
                .prefix("graft-dev-")
                .tempdir_in(&base)
                .with_context(|| format!("creating a data directory in {}", base.display()))?;
            config.data_dir = scratch.path().to_owned();
            Some(scratch)
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let server = graft_host::serve::Server::start(config).await?;
        println!(
            "graft dev: serving on http://{}, admin on http://{}",
            server.addr(),
            server.admin_addr()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (host, stopping) = (Arc::clone(server.host()), Arc::clone(&stop));
        let watching = std::thread::Builder::new()
            .name("graft-dev".into())
            .spawn(move || {
                dev.run(&host, &|| stopping.load(Ordering::Relaxed), &mut |event| {
                    if let Some(line) = dev_line(&event) {
                        // Nobody reading (a closed pipe) is no reason to stop the loop.
                        let _ = writeln!(std::io::stdout(), "{line}");
                    }
                })
            })
            .context("starting the dev loop")?;
        let ended = async {
            while !watching.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            () = shutdown_signal() => {}
            () = ended => {}
        }
        stop.store(true, Ordering::Relaxed);
        server.shutdown().await;
        if watching.is_finished() {
            watching
                .join()
                .map_err(|_| anyhow::anyhow!("the dev loop panicked"))??;
        }
        anyhow::Ok(())
    })
}

/// One line per reload: what went live and how fast, or why nothing did.
fn dev_line(event: &graft_host::dev::DevEvent) -> Option<String> {
    use graft_host::dev::DevEvent;
    use graft_host::DisplayChain;
    match event {
        DevEvent::Reloaded {
            reload,
            build,
            live_after_build,
            report,
        } => {
            let plugins: Vec<String> = report
                .plugins
                .iter()
                .filter(|p| p.change != graft_host::Change::Kept)
                .map(|p| format!("{} {} {}", p.name, p.version, p.change))
                .collect();
            Some(format!(
                "reload {reload}: generation {} live ({}); built in {:.2} s, live {:.1} ms after \
                 the build (staged and loaded in {:.1} ms, then linked, initialised and \
                 published in {:.2} ms)",
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
        DevEvent::BuildFailed {
            reload,
            build,
            error,
            serving,
        } => Some(format!(
            "reload {reload}: build failed after {:.2} s: {}; generation {serving} keeps serving",
            build.as_secs_f64(),
            DisplayChain(error)
        )),
        DevEvent::DeployFailed {
            reload,
            build,
            error,
            serving,
        } => Some(format!(
            "reload {reload}: built in {:.2} s but refused: {}; generation {serving} keeps serving",
            build.as_secs_f64(),
            DisplayChain(error)
        )),
        _ => None,
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Whether an admin URL points at this machine (a loopback address or `localhost`).
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn deploy_line(report: &serde_json::Value) -> String {
    let plugins: Vec<String> = report["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {} ({})",
                str_of(&p["name"]),
                str_of(&p["version"]),
                str_of(&p["change"])
            )
        })
        .collect();
    format!(
        "generation {} live: release {}; {}",
        report["generation"],
        str_of(&report["release"]),
        plugins.join(", ")
    )
}

fn status_table(status: &serde_json::Value) -> String {
    let mut out = format!("current generation {}\n", status["current"]);
    out.push_str(&format!(
        "{:<6} {:<8} {:<12} {:>9} {:>10}  plugins\n",
        "gen", "current", "release", "in-flight", "age"
    ));
    for g in status["generations"].as_array().into_iter().flatten() {
        let plugins: Vec<String> = g["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{} {}", str_of(&p["name"]), str_of(&p["version"])))
            .collect();
        out.push_str(&format!(
            "{:<6} {:<8} {:<12} {:>9} {:>8}ms  {}\n",
            g["id"].to_string(),
            if g["current"] == true { "*" } else { "" },
            str_of(&g["release"]),
            g["in_flight"].to_string(),
            g["age_ms"].to_string(),
            plugins.join(", ")
        ));
    }
    let libraries = status["libraries"].as_array().map_or(0, Vec::len);
    out.push_str(&format!("libraries mapped: {libraries}\n"));
    if let Some(error) = status["last_deploy"]["error"].as_str() {
        out.push_str(&format!("last deploy failed: {error}\n"));
    }
    if status["rollout"].is_object() {
        out.push_str(&rollout_table(&status["rollout"]));
    }
    out
}

/// A rollout's state, step, weights, per-generation figures and last verdict.
fn rollout_table(rollout: &serde_json::Value) -> String {
    let plan: Vec<String> = rollout["plan"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| match step[1].as_u64() {
            Some(0) | None => format!("{}%", step[0]),
            Some(ms) => format!("{}%/{:.0}s", step[0], ms as f64 / 1000.0),
        })
        .collect();
    let mut out = format!(
        "rollout {}: release {}, canary generation {} beside stable generation {}\n",
        str_of(&rollout["state"]),
        str_of(&rollout["release"]),
        rollout["canary"],
        rollout["stable"],
    );
    out.push_str(&format!(
        "step {} of {}, canary weight {}%, {:.1} s into the step (plan {})\n",
        rollout["step"],
        plan.len(),
        rollout["weight"],
        rollout["step_elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        plan.join(", ")
    ));
    out.push_str(&format!(
        "{:<8} {:>9} {:>7} {:>10} {:>10}\n",
        "", "requests", "errors", "error rate", "p99"
    ));
    for side in ["stable", "canary"] {
        let w = &rollout[format!("{side}_window")];
        out.push_str(&format!(
            "{:<8} {:>9} {:>7} {:>9.2}% {:>10}\n",
            side,
            w["requests"],
            w["errors"],
            w["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            w["p99_ms"]
                .as_f64()
                .map_or("-".into(), |ms| format!("{ms:.2} ms")),
        ));
    }
    let verdict = &rollout["last_verdict"];
    if let Some(kind) = verdict["verdict"].as_str() {
        match verdict["reason"].as_str() {
            Some(reason) => out.push_str(&format!("last verdict: {kind}: {reason}\n")),
            None => out.push_str(&format!("last verdict: {kind}\n")),
        }
    }
    if let Some(last) = rollout["events"].as_array().and_then(|e| e.last()) {
        out.push_str(&format!(
            "last event: {}: {}\n",
            str_of(&last["event"]),
            str_of(&last["message"])
        ));
    }
    out
}

fn str_of(value: &serde_json::Value) -> &str {
    value.as_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_admin_urls_are_local_and_others_are_not() {
        for local in [
            "http://127.0.0.1:9090",
            "http://localhost:9090/",
            "http://[::1]:9090",
            "127.0.0.5:1",
        ] {
            assert!(super::is_local(local), "{local}");
        }
        for remote in [
            "http://10.0.0.7:9090",
            "http://graft.example:9090",
            "http://[2001:db8::1]:9090",
        ] {
            assert!(!super::is_local(remote), "{remote}");
        }
    }
}
