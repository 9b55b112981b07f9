//! The crate graph `graft dev` rebuilds by: which plugin crates there are, and which local
//! crates (path dependencies, a shared types crate) each one is built from, read with
//! `cargo metadata`.
//!
//! A change under a local crate's directory affects every plugin crate that depends on it,
//! directly or not; a change to a manifest (`Cargo.toml`) may change the graph itself, so the
//! graph is read again and every plugin counts as affected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use cargo_metadata::{Metadata, MetadataCommand, PackageId, TargetKind};

use super::DevError;

/// A plugin crate: a package with a `cdylib` library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plugin {
    /// The package's name.
    pub(crate) name: String,
    /// Cargo's id for it, which `cargo build -p` takes.
    pub(crate) id: PackageId,
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// The manifest of the workspace it belongs to: one `cargo build` per workspace.
    pub(crate) workspace: PathBuf,
}

/// The plugin crates and what they are built from.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// In the order found.
    pub(crate) plugins: Vec<Plugin>,
    /// Each local package's directory, and the plugins (by position) built from it.
    dirs: BTreeMap<PathBuf, BTreeSet<usize>>,
    /// Manifests outside every package directory (a virtual workspace's), whose change
    /// affects every plugin of that workspace.
    roots: BTreeSet<PathBuf>,
    /// Where cargo writes (nothing there is a source).
    pub(crate) target_dirs: BTreeSet<PathBuf>,
}

impl Graph {
    /// Reads the graph of `paths`: each a plugin crate's directory, or a workspace's, whose
    /// members with a `cdylib` are the plugins.
    pub(crate) fn load(cargo: &Path, paths: &[PathBuf]) -> Result<Self, DevError> {
        let mut graph = Self::default();
        let mut seen: HashMap<PackageId, usize> = HashMap::new();
        for path in paths {
            let manifest = path.join("Cargo.toml");
            let metadata = MetadataCommand::new()
                .cargo_path(cargo)
                .manifest_path(&manifest)
                .exec()
                .map_err(|e| DevError::Metadata {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            graph.add(&metadata, &manifest, &mut seen)?;
        }
        Ok(graph)
    }

    fn add(
        &mut self,
        metadata: &Metadata,
        manifest: &Path,
        seen: &mut HashMap<PackageId, usize>,
    ) -> Result<(), DevError> {
        let workspace = metadata.workspace_root.as_std_path().join("Cargo.toml");
        let is_cdylib = |id: &PackageId| {
            metadata[id]
                .targets
                .iter()
                .any(|t| t.kind.contains(&TargetKind::CDyLib))
        };
        // The package at `manifest`, or every member of the workspace it is the root of.
        let chosen: Vec<&PackageId> = match metadata
            .workspace_members
            .iter()
            .find(|id| metadata[*id].manifest_path.as_std_path() == manifest)
        {
            Some(id) if is_cdylib(id) => vec![id],
            Some(_) => {
                return Err(DevError::NotAPlugin {
                    path: manifest.parent().unwrap_or(manifest).to_owned(),
                })
            }
            None => metadata
                .workspace_members
                .iter()
                .filter(|id| is_cdylib(id))
                .collect(),
        };
        if chosen.is_empty() {
            return Err(DevError::NotAPlugin {
                path: manifest.parent().unwrap_or(manifest).to_owned(),
            });
        }
        let nodes: HashMap<&PackageId, &cargo_metadata::Node> = metadata
            .resolve
            .iter()
            .flat_map(|r| &r.nodes)
            .map(|n| (&n.id, n))
            .collect();
        for id in chosen {
            let at = *seen.entry(id.clone()).or_insert_with(|| {
                let package = &metadata[id];
                self.plugins.push(Plugin {
                    name: package.name.to_string(),
                    id: id.clone(),
                    dir: package_dir(package),
                    workspace: workspace.clone(),
                });
                self.plugins.len() - 1
            });
            // Every local package it is built from, itself included.
            let mut stack = vec![id];
            let mut visited = BTreeSet::new();
            while let Some(next) = stack.pop() {
                if !visited.insert(next) {
                    continue;
                }
                let package = &metadata[next];
                if package.source.is_some() {
                    continue; // from a registry or git: not edited here
                }
                self.dirs
                    .entry(package_dir(package))
                    .or_default()
                    .insert(at);
                stack.extend(nodes.get(next).into_iter().flat_map(|n| &n.dependencies));
            }
        }
        if !self.dirs.keys().any(|d| manifest.starts_with(d)) {
            self.roots.insert(manifest.to_owned());
        }
        self.target_dirs
            .insert(metadata.target_directory.as_std_path().to_owned());
        Ok(())
    }

    /// The directories to watch, each with everything under it.
    pub(crate) fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.keys().map(PathBuf::as_path)
    }

    /// Manifests outside those directories (a virtual workspace's root), watched too.
    pub(crate) fn roots(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(PathBuf::as_path)
    }

    /// The plugins (by position) a change of `path` affects: those built from the innermost
    /// package directory holding it; every plugin for a workspace root manifest.
    pub(crate) fn affected(&self, path: &Path) -> BTreeSet<usize> {
        if self.roots.iter().any(|r| r == path) {
            return (0..self.plugins.len()).collect();
        }
        self.dirs
            .iter()
            .filter(|(dir, _)| path.starts_with(dir))
            .max_by_key(|(dir, _)| dir.components().count())
            .map(|(_, plugins)| plugins.clone())
            .unwrap_or_default()
    }
}

fn package_dir(package: &cargo_metadata::Package) -> PathBuf {
    let manifest = package.manifest_path.as_std_path();
    manifest.parent().unwrap_or(manifest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        let plugin = |name: &str, dir: &str| Plugin {
            name: name.into(),
            id: PackageId {
                repr: format!("path+file://{dir}#{name}@1.0.0"),
            },
            dir: dir.into(),
            workspace: "/w/Cargo.toml".into(),
        };
        Graph {
            plugins: vec![plugin("catalog", "/w/catalog"), plugin("cart", "/w/cart")],
            dirs: BTreeMap::from([
                ("/w/catalog".into(), BTreeSet::from([0])),
                ("/w/cart".into(), BTreeSet::from([1])),
                ("/w/types".into(), BTreeSet::from([0, 1])),
                ("/w/types/nested".into(), BTreeSet::from([1])),
            ]),
            roots: BTreeSet::from(["/w/Cargo.toml".into()]),
            target_dirs: BTreeSet::from(["/w/target".into()]),
        }
    }

    #[test]
    fn a_change_affects_the_plugins_built_from_the_innermost_package_holding_it() {
        let graph = graph();
        let affected = |p: &str| graph.affected(Path::new(p)).into_iter().collect::<Vec<_>>();
        assert_eq!(affected("/w/types/src/lib.rs"), [0, 1]);
        assert_eq!(affected("/w/cart/src/lib.rs"), [1]);
        assert_eq!(affected("/w/types/nested/src/lib.rs"), [1]);
        assert_eq!(affected("/w/Cargo.toml"), [0, 1]);
        assert_eq!(affected("/elsewhere/lib.rs"), Vec::<usize>::new());
        // A sibling whose name only starts like a package's is not inside it.
        assert_eq!(affected("/w/cart2/src/lib.rs"), Vec::<usize>::new());
    }
}
