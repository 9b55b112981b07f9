//! `graft check`: everything a deploy does short of going live, on a scratch host.
//!
//! [`check`] is [`Host::prepare`] on a host of its own in a temporary directory: the release is
//! staged, loaded, checked, linked and initialised exactly as a deploy would, and never
//! published. A complete release must link on its own; a partial one (or a single library) may
//! leave imports open, to be bound by the generation it is deployed onto, and the report lists
//! them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decl::PluginInfo;
use crate::error::{DeployCause, DeployError, Step};
use crate::host::Shipped;
use crate::link::{LinkProblem, LinkReport};
use crate::{Host, HostBuilder};

/// What `graft check` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// The release directory or library checked.
    pub path: PathBuf,
    /// The release label, for a release.
    pub release: Option<String>,
    /// Whether the release is the whole plugin set.
    pub complete: bool,
    /// Plugins the release removes.
    pub remove: Vec<String>,
    /// Each plugin as it declared itself.
    pub plugins: Vec<CheckedPlugin>,
    /// How the plugins link among themselves.
    pub link: LinkReport,
}

/// One checked plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckedPlugin {
    /// What it declares.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// Its file.
    pub file: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
}

impl CheckedPlugin {
    fn of(shipped: &Shipped) -> Self {
        Self {
            info: shipped.plugin.info().clone(),
            file: shipped.file.clone(),
            sha256: shipped.plugin.sha256().to_owned(),
        }
    }
}

/// A host of its own in a temporary directory (removed when the returned guard drops).
fn scratch_host() -> Result<(tempfile::TempDir, Host), DeployError> {
    scratch_host_with(Ok::<_, crate::ProvideError>)
}

/// [`scratch_host`], configured by `configure` (the embedder's host services).
fn scratch_host_with<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    configure: impl FnOnce(HostBuilder) -> Result<HostBuilder, E>,
) -> Result<(tempfile::TempDir, Host), DeployError> {
    let scratch_error =
        |what: &str, e| DeployError::new(Step::Stage, None, None, DeployCause::Io(what.into(), e));
    let scratch =
        tempfile::tempdir().map_err(|e| scratch_error("creating a scratch directory", e))?;
    let builder = configure(Host::builder(scratch.path()))
        .map_err(|e| scratch_error("configuring a scratch host", std::io::Error::other(e)))?;
    let host = builder.build().map_err(|e| {
        let e = std::io::Error::other(crate::DisplayChain(&e).to_string());
        scratch_error("starting a scratch host", e)
    })?;
    Ok((scratch, host))
}

/// What plugin libraries declare, read as a deploy would load them (staged, loaded, checked:
/// the plugins' initialisers are not run, nothing is linked): what `graft pack` writes into a
/// manifest.
///
/// # Errors
///
/// The [`DeployError`] a deploy would get at staging, loading or checking, and
/// [`DeployCause::DuplicatePlugin`] for two libraries declaring the same plugin.
pub fn declarations(libraries: &[PathBuf]) -> Result<Vec<CheckedPlugin>, DeployError> {
    let (_scratch, host) = scratch_host()?;
    let declared = host
        .load_declared(libraries)?
        .iter()
        .map(CheckedPlugin::of)
        .collect();
    host.flush_unloads();
    Ok(declared)
}

/// Checks a release directory, or a single plugin library.
///
/// # Errors
///
/// The [`DeployError`] the same release would get from [`Host::deploy`], except that a partial
/// release may leave imports open.
pub fn check(path: &Path) -> Result<CheckReport, DeployError> {
    check_with(path, Ok::<_, crate::ProvideError>)
}

/// [`check`] on a host that `configure` sets up as the embedder's would be: what it provides
/// plugins (its host services), so imports of them link as they will when deployed.
///
/// # Errors
///
/// As [`check`].
pub fn check_with<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    path: &Path,
    configure: impl FnOnce(HostBuilder) -> Result<HostBuilder, E>,
) -> Result<CheckReport, DeployError> {
    let (_scratch, host) = scratch_host_with(configure)?;
    let (prepared, manifest) = host.prepare_check(path)?;
    let plugins = prepared.shipped().iter().map(CheckedPlugin::of).collect();
    let report = CheckReport {
        path: path.to_owned(),
        release: manifest.as_ref().and_then(|m| m.name.clone()),
        complete: manifest.as_ref().is_some_and(|m| m.complete),
        remove: manifest.map(|m| m.remove).unwrap_or_default(),
        plugins,
        link: prepared.generation().link_report().clone(),
    };
    drop(prepared);
    host.flush_unloads();
    Ok(report)
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: ok", self.path.display())?;
        if let Some(release) = &self.release {
            writeln!(
                f,
                "release    {release}{}",
                if self.complete {
                    " (complete)"
                } else {
                    " (partial)"
                }
            )?;
        }
        for name in &self.remove {
            writeln!(f, "removes    {name}")?;
        }
        for p in &self.plugins {
            let info = &p.info;
            writeln!(
                f,
                "plugin     {} {} (graft API {}, sha256 {})",
                info.name,
                info.version,
                info.api_version,
                &p.sha256[..16]
            )?;
            writeln!(f, "  file     {}", p.file.display())?;
            // One contract a line, with its types: `frob@1: u64 -> Frob1`.
            for (label, signatures) in [("exports", &info.exports), ("imports", &info.imports)] {
                if signatures.is_empty() {
                    writeln!(f, "  {label}  -")?;
                }
                for (i, signature) in signatures.iter().enumerate() {
                    let label = if i == 0 { label } else { "" };
                    writeln!(f, "  {label:7}  {signature}")?;
                }
            }
            for (i, route) in info.routes.iter().enumerate() {
                let label = if i == 0 { "routes" } else { "" };
                let kind = if route.is_async { " (async)" } else { "" };
                writeln!(f, "  {label:7}  {route}{kind}")?;
            }
        }
        if !self.link.edges.is_empty() {
            writeln!(f, "links")?;
            for e in &self.link.edges {
                writeln!(f, "  {} -> {} ({})", e.importer, e.provider, e.contract)?;
            }
        }
        for problem in &self.link.problems {
            if let LinkProblem::Missing { importer, contract } = problem {
                writeln!(f, "open       {importer} imports {contract}: to be provided by the generation it is deployed onto")?;
            }
        }
        Ok(())
    }
}
