//! Release bundles: a release directory as one tar archive, for hosts that share no filesystem
//! with the operator.
//!
//! A bundle holds the manifest and the files it names, nothing else ([`pack`]). The server
//! unpacks it ([`unpack`]) into a private directory, regular files with relative paths only,
//! then deploys that directory like any other: every checksum is verified before anything loads.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use graft_host::bounded::{Bounded, BoundedPath};
use graft_host::release::{Manifest, ManifestError, MANIFEST};

/// Packs a release directory into a tar bundle: its manifest and the files the manifest names.
///
/// # Errors
///
/// [`ManifestError`] if the manifest is missing or invalid; I/O errors reading the files are
/// reported as [`ManifestError::Read`].
pub fn pack(dir: &Path) -> Result<Vec<u8>, ManifestError> {
    let manifest = Manifest::load(dir)?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &Path| {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .map_err(|source| ManifestError::Read { path, source })
    };
    add(Path::new(MANIFEST))?;
    for plugin in &manifest.plugins {
        add(&plugin.file)?;
    }
    builder.into_inner().map_err(|source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    })
}

/// A tar bundle that cannot be unpacked safely.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes are not a readable tar archive.
    #[error("not a readable tar bundle")]
    Read(#[source] io::Error),
    /// An entry is not a regular file, or its path leaves the bundle.
    #[error("bundle entry {:?} is not a regular file with a relative path inside the bundle", Bounded(.0).to_string())]
    Entry(String),
    /// Writing an unpacked file failed.
    #[error("writing {}", BoundedPath(.0))]
    Write(PathBuf, #[source] io::Error),
}

/// Unpacks a tar bundle into `into` (which must not exist yet): regular files with relative paths
/// only, each written whole before the next.
///
/// # Errors
///
/// [`BundleError`]; what was unpacked so far stays in `into`, for the caller to remove.
pub fn unpack(bundle: &[u8], into: &Path) -> Result<(), BundleError> {
    let mut archive = tar::Archive::new(bundle);
    for entry in archive.entries().map_err(BundleError::Read)? {
        let mut entry = entry.map_err(BundleError::Read)?;
        let path = entry.path().map_err(BundleError::Read)?.into_owned();
        let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !entry.header().entry_type().is_file() || !inside || path.as_os_str().is_empty() {
            return Err(BundleError::Entry(path.display().to_string()));
        }
        let dest = into.join(&path);
        let parent = dest.parent().unwrap_or(into);
        fs::create_dir_all(parent).map_err(|e| BundleError::Write(parent.to_owned(), e))?;
        let mut file = fs::File::create(&dest).map_err(|e| BundleError::Write(dest.clone(), e))?;
        io::copy(&mut entry, &mut file).map_err(|e| BundleError::Write(dest.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips_and_an_escaping_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        fs::create_dir_all(release.join("lib")).unwrap();
        fs::write(release.join("lib/libx.so"), b"bytes").unwrap();
        fs::write(release.join("stray.txt"), b"not shipped").unwrap();
        fs::write(
            release.join(MANIFEST),
            format!(
                "[[plugin]]\nname = \"x\"\nfile = \"lib/libx.so\"\nsha256 = \"{}\"\n",
                graft_host::sha256_hex(b"bytes")
            ),
        )
        .unwrap();
        let bundle = pack(&release).unwrap();
        let out = dir.path().join("out");
        unpack(&bundle, &out).unwrap();
        assert_eq!(fs::read(out.join("lib/libx.so")).unwrap(), b"bytes");
        assert!(
            !out.join("stray.txt").exists(),
            "only what the manifest names is packed"
        );
        assert_eq!(Manifest::load(&out).unwrap().plugins[0].name, "x");

        // An entry named ../evil (written raw: tar's builder refuses such names itself).
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..7].copy_from_slice(b"../evil");
        header.set_size(4);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"evil"[..]).unwrap();
        let evil = builder.into_inner().unwrap();
        let err = unpack(&evil, &dir.path().join("evil-out")).unwrap_err();
        assert!(
            matches!(err, BundleError::Entry(ref p) if p == "../evil"),
            "{err}"
        );
        assert!(!dir.path().join("evil").exists());
        assert!(matches!(
            unpack(b"garbage", &dir.path().join("g")),
            Err(BundleError::Read(_))
        ));
    }
}
