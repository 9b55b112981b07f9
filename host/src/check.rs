//! `graft check`: everything a deploy does short of going live, on a scratch host.
//!
//! A release directory is staged, loaded, version- and layout-checked, initialised and linked;
//! a single library is staged, loaded, checked and initialised. Nothing is served. A complete
//! release must link on its own; a partial one may leave imports open, to be bound by the
//! generation it is deployed onto, and the report lists them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DeployCause, DeployError, Step};
use crate::link::{self, LinkError, LinkProblem, LinkReport};
use crate::loader::PluginInfo;
use crate::release::{self, Manifest, MANIFEST};
use crate::Host;

/// What `graft check` found.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// Checks a release directory, or a single plugin library.
///
/// # Errors
///
/// The [`DeployError`] the same release would get from [`Host::deploy`], except that a partial
/// release may leave imports open.
pub fn check(path: &Path) -> Result<CheckReport, DeployError> {
    let scratch = tempfile::tempdir().map_err(|e| {
        DeployError::new(
            Step::Stage,
            None,
            None,
            DeployCause::Io("creating a scratch directory".into(), e),
        )
    })?;
    let host = Host::builder(scratch.path()).build().map_err(|e| {
        DeployError::new(
            Step::Stage,
            None,
            None,
            DeployCause::Io("starting a scratch host".into(), e),
        )
    })?;

    let (manifest, files) = if path.is_dir() {
        let manifest = Manifest::load(path).map_err(|e| {
            DeployError::new(Step::Manifest, None, Some(path.join(MANIFEST)), e.into())
        })?;
        let files = manifest
            .plugins
            .iter()
            .map(|p| (p.name.clone(), path.join(&p.file), p.sha256.clone()))
            .collect::<Vec<_>>();
        (Some(manifest), files)
    } else {
        let bytes = std::fs::read(path).map_err(|e| {
            DeployError::new(
                Step::Stage,
                None,
                Some(path.to_owned()),
                DeployCause::Io("reading the plugin file".into(), e),
            )
        })?;
        (
            None,
            vec![(
                "check".to_owned(),
                path.to_owned(),
                release::sha256_hex(&bytes),
            )],
        )
    };

    let loaded = host.load_for_check(&files)?;
    let mut plugins = Vec::new();
    for (plugin, (name, file, sha256)) in loaded.iter().zip(files) {
        if manifest.is_some() && plugin.info().name != name {
            let declared = plugin.info().name.clone();
            return Err(DeployError::new(
                Step::Check,
                Some(&name),
                Some(file),
                DeployCause::NameMismatch { declared },
            ));
        }
        plugins.push(CheckedPlugin {
            info: plugin.info().clone(),
            file,
            sha256,
        });
    }

    let report = link::analyze(plugins.iter().map(|p| &p.info).collect::<Vec<_>>());
    let complete = manifest.as_ref().is_none_or(|m| m.complete);
    let fatal: Vec<LinkProblem> = report
        .problems
        .iter()
        .filter(|p| complete || !matches!(p, LinkProblem::Missing { .. }))
        .cloned()
        .collect();
    if manifest.is_some() && !fatal.is_empty() {
        return Err(DeployError::new(
            Step::Link,
            None,
            None,
            LinkError { problems: fatal }.into(),
        ));
    }
    drop(loaded);
    host.flush_unloads();
    Ok(CheckReport {
        path: path.to_owned(),
        release: manifest.as_ref().and_then(|m| m.name.clone()),
        complete: manifest.as_ref().is_some_and(|m| m.complete),
        remove: manifest.map(|m| m.remove).unwrap_or_default(),
        plugins,
        link: report,
    })
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
            let list = |c: &[crate::link::Contract]| {
                if c.is_empty() {
                    "-".to_owned()
                } else {
                    c.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            writeln!(f, "  exports  {}", list(&info.exports))?;
            writeln!(f, "  imports  {}", list(&info.imports))?;
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
