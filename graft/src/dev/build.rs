//! Building plugin crates: one `cargo build` per workspace, all of them at once, each building
//! its plugins in parallel as cargo does (`-p a -p b`).

use std::collections::HashMap;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cargo_metadata::diagnostic::DiagnosticLevel;
use cargo_metadata::{Message, PackageId, TargetKind};

use super::graph::Plugin;

/// Why plugin crates did not build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// cargo could not be run.
    #[error("running {cargo} for {}", workspace.display())]
    Spawn {
        /// The cargo executable.
        cargo: String,
        /// The workspace manifest.
        workspace: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The compiler reported errors (already printed to standard error as they came).
    #[error("{} does not compile: {errors} error(s)", crates.join(", "))]
    Compile {
        /// The plugin crates of the workspace that failed (cargo stops the build as a whole).
        crates: Vec<String>,
        /// How many error messages the compiler gave.
        errors: usize,
    },
    /// A crate built, but produced no `cdylib`.
    #[error("{krate} builds no cdylib: add `crate-type = [\"cdylib\"]` to its [lib] section")]
    NoLibrary {
        /// The crate.
        krate: String,
    },
}

/// Builds `plugins` (their libraries only), one cargo per workspace, concurrently; compiler
/// messages go to standard error as they come. Returns the libraries, in the order of
/// `plugins`.
pub(crate) fn build(
    cargo: &Path,
    release: bool,
    plugins: &[&Plugin],
) -> Result<Vec<PathBuf>, BuildError> {
    let mut workspaces: Vec<(&Path, Vec<&Plugin>)> = Vec::new();
    for plugin in plugins {
        match workspaces.iter_mut().find(|(w, _)| *w == plugin.workspace) {
            Some((_, members)) => members.push(plugin),
            None => workspaces.push((&plugin.workspace, vec![plugin])),
        }
    }
    let built: Vec<Result<HashMap<PackageId, Vec<PathBuf>>, BuildError>> =
        std::thread::scope(|scope| {
            let running: Vec<_> = workspaces
                .iter()
                .map(|(workspace, members)| {
                    scope.spawn(move || build_workspace(cargo, release, workspace, members))
                })
                .collect();
            running
                .into_iter()
                .map(|b| b.join().expect("a build thread does not panic"))
                .collect()
        });
    let mut libraries: HashMap<PackageId, Vec<PathBuf>> = HashMap::new();
    let (mut failed, mut errors) = (Vec::new(), 0);
    for result in built {
        match result {
            Ok(found) => libraries.extend(found),
            Err(BuildError::Compile { crates, errors: e }) => {
                failed.extend(crates);
                errors += e;
            }
            Err(other) => return Err(other),
        }
    }
    if !failed.is_empty() {
        return Err(BuildError::Compile {
            crates: failed,
            errors,
        });
    }
    let mut all = Vec::new();
    for plugin in plugins {
        match libraries.remove(&plugin.id) {
            Some(found) if !found.is_empty() => all.extend(found),
            _ => {
                return Err(BuildError::NoLibrary {
                    krate: plugin.name.clone(),
                })
            }
        }
    }
    Ok(all)
}

/// One `cargo build` of `members` in `workspace`: their libraries by package.
fn build_workspace(
    cargo: &Path,
    release: bool,
    workspace: &Path,
    members: &[&Plugin],
) -> Result<HashMap<PackageId, Vec<PathBuf>>, BuildError> {
    let format = if std::io::stderr().is_terminal() {
        "--message-format=json-diagnostic-rendered-ansi"
    } else {
        "--message-format=json"
    };
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace)
        .arg(format)
        .arg("--lib")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for member in members {
        command.arg("-p").arg(&member.id.repr);
    }
    if release {
        command.arg("--release");
    }
    let spawn_error = |source| BuildError::Spawn {
        cargo: cargo.display().to_string(),
        workspace: workspace.to_owned(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut libraries, mut errors, mut success) = (HashMap::new(), 0, false);
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
                if members.iter().any(|m| m.id == artifact.package_id)
                    && artifact.target.kind.contains(&TargetKind::CDyLib) =>
            {
                let files = artifact
                    .filenames
                    .iter()
                    .filter(|f| f.as_str().ends_with(std::env::consts::DLL_SUFFIX))
                    .map(|f| f.clone().into_std_path_buf());
                libraries
                    .entry(artifact.package_id.clone())
                    .or_insert_with(Vec::new)
                    .extend(files);
            }
            Message::BuildFinished(finished) => success = finished.success,
            _ => {}
        }
    }
    let status = child.wait().map_err(spawn_error)?;
    if !(success && status.success()) {
        return Err(BuildError::Compile {
            crates: members.iter().map(|m| m.name.clone()).collect(),
            errors,
        });
    }
    Ok(libraries)
}
