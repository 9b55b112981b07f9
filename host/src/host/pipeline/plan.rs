//! What a prepare loads: the plugin files of a manifest, a list of builds, or a recorded
//! release, each with what the files must match.

use std::path::{Path, PathBuf};

use crate::release::Manifest;
use crate::status::ReleaseRecord;

/// What a prepare loads: from a manifest, a list of builds, or a recorded release.
pub(in crate::host) struct Plan {
    pub(in crate::host) label: Option<String>,
    pub(in crate::host) complete: bool,
    pub(in crate::host) remove: Vec<String>,
    pub(in crate::host) plugins: Vec<Planned>,
}

/// One plugin file a prepare loads.
pub(in crate::host) struct Planned {
    /// The name the manifest gives it, which the library must declare; `None` for a build,
    /// which goes by the name it declares.
    pub(super) name: Option<String>,
    pub(super) source: PathBuf,
    /// The manifest's checksum, which the file must match; `None` for a build graft made.
    pub(super) sha256: Option<String>,
    /// Where the plugin came from, as the release record keeps it (for a recorded release, the
    /// file it was first deployed from, not the staged copy it loads).
    pub(super) origin: Option<PathBuf>,
    /// The sha256 of the signed manifest that vouches for it, if signatures are required.
    pub(super) voucher: Option<String>,
}

/// Where a recorded release is loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::host) enum From {
    /// The staged copies in the data directory.
    Staged,
    /// The files each plugin was deployed from (its staged copy where none was recorded).
    Sources,
}

impl Plan {
    /// The plan of the release in `dir`, from its manifest.
    pub(in crate::host) fn from_manifest(
        dir: &Path,
        manifest: Manifest,
        voucher: Option<String>,
    ) -> Self {
        Self {
            label: manifest.name,
            complete: manifest.complete,
            remove: manifest.remove,
            plugins: manifest
                .plugins
                .into_iter()
                .map(|p| {
                    let source = dir.join(&p.file);
                    Planned {
                        origin: std::path::absolute(&source).ok(),
                        voucher: voucher.clone(),
                        source,
                        name: Some(p.name),
                        sha256: Some(p.sha256),
                    }
                })
                .collect(),
        }
    }

    /// A partial release of builds without a manifest: each goes by the name it declares.
    pub(in crate::host) fn from_libraries(label: Option<String>, libraries: &[PathBuf]) -> Self {
        Self {
            label,
            complete: false,
            remove: Vec::new(),
            plugins: libraries
                .iter()
                .map(|source| Planned {
                    name: None,
                    source: source.clone(),
                    sha256: None,
                    origin: std::path::absolute(source).ok(),
                    voucher: None,
                })
                .collect(),
        }
    }

    /// A recorded release again, whole, from its staged copies or from the files they were
    /// deployed from; either way each file must still have the recorded checksum.
    pub(in crate::host) fn from_record(record: &ReleaseRecord, from: From) -> Self {
        Self {
            label: record.name.clone(),
            complete: true,
            remove: Vec::new(),
            plugins: record
                .plugins
                .iter()
                .map(|p| Planned {
                    name: Some(p.name.clone()),
                    source: match (from, &p.source) {
                        (From::Sources, Some(source)) => source.clone(),
                        _ => p.staged.clone(),
                    },
                    sha256: Some(p.sha256.clone()),
                    origin: p.source.clone(),
                    voucher: p.signed.clone(),
                })
                .collect(),
        }
    }
}
