//! The `graft` command line's arguments: its commands and their options, as clap reads them
//! (`graft --help` prints these doc comments).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use graft::api::RolloutOptions;
use graft::client::AdminClient;
use graft::config::ServeConfig;

/// graft: run a service's logic from plugins and replace it while it serves.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the admin API is: `--admin` (or `GRAFT_ADMIN`), else the `[admin]` of `--config`,
/// else that of `./graft.toml` if there is one, else `http://127.0.0.1:9090`; the token
/// likewise.
#[derive(clap::Args)]
pub(crate) struct Admin {
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
    pub(crate) fn client(&self) -> anyhow::Result<AdminClient> {
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
pub(crate) struct Rollout {
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
    pub(crate) wait: bool,
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
    pub(crate) fn options(&self) -> RolloutOptions {
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
pub(crate) enum Command {
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
pub(crate) enum FleetCommand {
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
