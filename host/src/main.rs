//! The `graft` command line: parse arguments, call the library, print the result.

use std::path::PathBuf;
use std::process::ExitCode;

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

#[derive(Subcommand)]
enum Command {
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
