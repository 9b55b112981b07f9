//! Release bundles: a release directory as one tar archive, for hosts that share no filesystem
//! with the operator.
//!
//! A bundle holds the manifest and the files it names, nothing else ([`pack`]). The server
//! unpacks it ([`unpack`]) into a private directory, regular files with relative paths only,
//! then deploys that directory like any other: every checksum is verified before anything loads.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

use graft_host::bounded::{Bounded, BoundedPath};
use graft_host::release::{Manifest, ManifestError, MANIFEST, SIGNATURE};
#[cfg(test)]
use graft_host::DisplayChain;

/// Packs a release directory into a tar bundle: its manifest first, its signature if it has one,
/// then the files the manifest names.
///
/// # Errors
///
/// [`ManifestError`] if the manifest is missing or invalid; I/O errors reading the files are
/// reported as [`ManifestError::Read`].
pub fn pack(dir: &Path) -> Result<Vec<u8>, ManifestError> {
    let manifest = Manifest::load(dir)?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut total = 0_u64;
    let mut add = |name: &Path| {
        let path = dir.join(name);
        let read = |source| ManifestError::Read {
            path: path.clone(),
            source,
        };
        let file = graft_host::input::open_regular(&path).map_err(read)?;
        let len = file.metadata().map_err(read)?.len();
        total = total.saturating_add(len);
        let limit = BundleLimits::default().max_bytes;
        if total > limit {
            let message =
                format!("the bundle would be larger than {limit} bytes, the most a host unpacks");
            return Err(read(io::Error::new(io::ErrorKind::FileTooLarge, message)));
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, io::Read::take(file, len))
            .map_err(read)
    };
    add(Path::new(MANIFEST))?;
    if dir.join(SIGNATURE).is_file() {
        add(Path::new(SIGNATURE))?;
    }
    for plugin in &manifest.plugins {
        add(&plugin.file)?;
    }
    builder.into_inner().map_err(|source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    })
}

/// What an uploaded bundle may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// The most entries, the manifest and signature included.
    pub max_entries: usize,
    /// The most bytes all entries unpack to together.
    pub max_bytes: u64,
}

impl Default for BundleLimits {
    /// 256 entries, 512 MiB.
    fn default() -> Self {
        Self {
            max_entries: 256,
            max_bytes: 512 << 20,
        }
    }
}

/// A tar bundle that cannot be unpacked safely.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes are not a readable tar archive, or the upload stopped.
    #[error("not a readable tar bundle")]
    Read(#[source] io::Error),
    /// An entry is not a regular file, or its path leaves the bundle.
    #[error("bundle entry {:?} is not a regular file with a relative path inside the bundle", Bounded(.0).to_string())]
    Entry(String),
    /// The first entry is not the manifest.
    #[error("a bundle starts with its manifest, {MANIFEST}; the first entry is {:?}", Bounded(.0).to_string())]
    ManifestFirst(String),
    /// The manifest is invalid.
    #[error("the bundle's manifest")]
    Manifest(#[source] ManifestError),
    /// An entry the manifest does not name, or one named twice.
    #[error("bundle entry {:?} is not a file the manifest names (or comes twice)", Bounded(.0).to_string())]
    NotNamed(String),
    /// A file the manifest names is not in the bundle (or the bundle ended early).
    #[error("the bundle has no {:?}, which its manifest names", Bounded(.0).to_string())]
    Missing(String),
    /// More entries, or more bytes, than the limits allow.
    #[error("the bundle is over its limit of {0}")]
    TooLarge(String),
    /// Writing an unpacked file failed.
    #[error("writing {}", BoundedPath(.0))]
    Write(PathBuf, #[source] io::Error),
}

impl BundleError {
    /// Whether the bundle was refused for its size (a 413 rather than a 400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge(_))
    }
}

/// Unpacks a tar bundle, as it is read, into `into` (which must not exist yet).
///
/// The first entry must be the manifest; the others may only be the signature and the files
/// the manifest names, each once, regular files with relative paths. The first entry past
/// `limits` (count or total size, checked from each header before its data is read) stops the
/// unpacking, as does an error reading `bundle` (an upload whose client went away). Nothing is
/// fsynced: the directory is scratch, deleted after the deploy, and the deploy's staging writes
/// each library durably.
///
/// # Errors
///
/// [`BundleError`]; what was unpacked so far stays in `into`, for the caller to remove.
pub fn unpack(bundle: impl io::Read, into: &Path, limits: BundleLimits) -> Result<(), BundleError> {
    let mut archive = tar::Archive::new(bundle);
    let mut wanted: Option<HashSet<PathBuf>> = None;
    let (mut entries, mut bytes) = (0usize, 0u64);
    for entry in archive.entries().map_err(BundleError::Read)? {
        let mut entry = entry.map_err(BundleError::Read)?;
        let path = entry.path().map_err(BundleError::Read)?.into_owned();
        let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !entry.header().entry_type().is_file() || !inside || path.as_os_str().is_empty() {
            return Err(BundleError::Entry(path.display().to_string()));
        }
        entries += 1;
        bytes = bytes.saturating_add(entry.size());
        if entries > limits.max_entries {
            return Err(BundleError::TooLarge(format!(
                "{} entries",
                limits.max_entries
            )));
        }
        if bytes > limits.max_bytes {
            return Err(BundleError::TooLarge(format!(
                "{} bytes unpacked",
                limits.max_bytes
            )));
        }
        let Some(wanted) = wanted.as_mut() else {
            if path != Path::new(MANIFEST) {
                return Err(BundleError::ManifestFirst(path.display().to_string()));
            }
            // Kept byte for byte: a signature covers these exact bytes.
            let limits = graft_host::release::Limits::default();
            let mut text = Vec::new();
            (&mut entry)
                .take(limits.max_manifest_bytes.saturating_add(1))
                .read_to_end(&mut text)
                .map_err(BundleError::Read)?;
            let manifest = Manifest::read_within(text.as_slice(), &path, &limits)
                .map_err(BundleError::Manifest)?;
            wanted = Some(
                manifest
                    .plugins
                    .iter()
                    .map(|p| p.file.clone())
                    .chain([PathBuf::from(SIGNATURE)])
                    .collect(),
            );
            write(&mut text.as_slice(), into, &path)?;
            continue;
        };
        if !wanted.remove(&path) {
            return Err(BundleError::NotNamed(path.display().to_string()));
        }
        write(&mut entry, into, &path)?;
    }
    // What is still wanted was not in the bundle (the signature is optional).
    let Some(wanted) = wanted else {
        return Err(BundleError::Missing(MANIFEST.to_owned()));
    };
    match wanted.iter().find(|p| p.as_os_str() != SIGNATURE) {
        Some(path) => Err(BundleError::Missing(path.display().to_string())),
        None => Ok(()),
    }
}

/// Writes one unpacked file, telling a failed read of the bundle (an upload that stopped) from a
/// failed write.
fn write(data: &mut impl io::Read, into: &Path, path: &Path) -> Result<(), BundleError> {
    let dest = into.join(path);
    let parent = dest.parent().unwrap_or(into);
    fs::create_dir_all(parent).map_err(|e| BundleError::Write(parent.to_owned(), e))?;
    let mut file = fs::File::create(&dest).map_err(|e| BundleError::Write(dest.clone(), e))?;
    let mut buffer = vec![0; 64 << 10];
    loop {
        let n = match data.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Read(e)),
        };
        file.write_all(&buffer[..n])
            .map_err(|e| BundleError::Write(dest.clone(), e))?;
    }
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
        unpack(bundle.as_slice(), &out, BundleLimits::default()).unwrap();
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
        let err = unpack(
            evil.as_slice(),
            &dir.path().join("evil-out"),
            BundleLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, BundleError::Entry(ref p) if p == "../evil"),
            "{err}"
        );
        assert!(!dir.path().join("evil").exists());
        assert!(matches!(
            unpack(
                &b"garbage"[..],
                &dir.path().join("g"),
                BundleLimits::default()
            ),
            Err(BundleError::Read(_))
        ));
    }

    /// A tar archive of these entries, in order.
    pub(crate) fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn manifest_naming(files: &[&str]) -> String {
        files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                format!(
                    "[[plugin]]\nname = \"p{i}\"\nfile = \"{f}\"\nsha256 = \"{}\"\n",
                    "0".repeat(64)
                )
            })
            .collect()
    }

    #[test]
    fn only_the_manifest_then_what_it_names_unpacks_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_naming(&["a.so", "b.so"]);
        let unpack_into = |name: &str, entries: &[(&str, &[u8])], limits| {
            unpack(tar_of(entries).as_slice(), &dir.path().join(name), limits)
        };
        let limits = BundleLimits::default();

        let sig: &[u8] = b"signature";
        unpack_into(
            "ok",
            &[
                ("release.toml", manifest.as_bytes()),
                ("release.sig", sig),
                ("a.so", b"a"),
                ("b.so", b"b"),
            ],
            limits,
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.path().join("ok/release.toml")).unwrap(),
            manifest.as_bytes()
        );

        let err = unpack_into(
            "first",
            &[("a.so", b"a"), ("release.toml", manifest.as_bytes())],
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(err, BundleError::ManifestFirst(ref p) if p == "a.so"),
            "{err}"
        );

        let err = unpack_into(
            "stray",
            &[("release.toml", manifest.as_bytes()), ("c.so", b"c")],
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(err, BundleError::NotNamed(ref p) if p == "c.so"),
            "{err}"
        );
        assert!(!dir.path().join("stray/c.so").exists());

        let err = unpack_into(
            "twice",
            &[
                ("release.toml", manifest.as_bytes()),
                ("a.so", b"a"),
                ("a.so", b"a"),
            ],
            limits,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::NotNamed(_)), "{err}");

        let few = BundleLimits {
            max_entries: 2,
            ..limits
        };
        let err = unpack_into(
            "count",
            &[
                ("release.toml", manifest.as_bytes()),
                ("a.so", b"a"),
                ("b.so", b"b"),
            ],
            few,
        )
        .unwrap_err();
        assert!(
            err.is_too_large() && err.to_string().contains("2 entries"),
            "{err}"
        );

        let small = BundleLimits {
            max_bytes: manifest.len() as u64 + 10,
            ..limits
        };
        let big = vec![0u8; 11];
        let err = unpack_into(
            "bytes",
            &[("release.toml", manifest.as_bytes()), ("a.so", &big)],
            small,
        )
        .unwrap_err();
        assert!(err.is_too_large(), "{err}");
        assert!(
            !dir.path().join("bytes/a.so").exists(),
            "refused from its header, before its data"
        );

        let err = unpack_into(
            "missing",
            &[("release.toml", manifest.as_bytes()), ("a.so", b"a")],
            limits,
        )
        .unwrap_err();
        assert!(
            matches!(err, BundleError::Missing(ref p) if p == "b.so"),
            "{err}"
        );

        // A bundle cut short (an upload whose client left) stops with a read error.
        let whole = tar_of(&[
            ("release.toml", manifest.as_bytes()),
            ("a.so", &[7u8; 4096]),
        ]);
        let cut = &whole[..whole.len() - 3000];
        let err = unpack(cut, &dir.path().join("cut"), limits).unwrap_err();
        assert!(matches!(err, BundleError::Read(_)), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            let mut config = ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            };
            if std::env::var_os("PROPTEST_CASES").is_none() {
                config.cases = 64;
            }
            config
        }

        fn valid_bundle() -> Vec<u8> {
            let manifest = manifest_naming(&["a.so", "lib/b.so"]);
            tar_of(&[
                ("release.toml", manifest.as_bytes()),
                ("a.so", &[1; 700]),
                ("lib/b.so", &[2; 300]),
            ])
        }

        /// Unpacks `bytes` into a directory inside a fresh root: whatever happens, nothing but
        /// that directory appears in the root, and an error is short.
        fn check(bytes: &[u8]) {
            let root = tempfile::tempdir().unwrap();
            let into = root.path().join("into");
            if let Err(error) = unpack(bytes, &into, BundleLimits::default()) {
                let message = DisplayChain(&error).to_string();
                assert!(!message.is_empty() && message.len() <= 4096, "{message}");
            }
            let outside: Vec<_> = fs::read_dir(root.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "into")
                .collect();
            assert!(outside.is_empty(), "written outside: {outside:?}");
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_bytes_as_a_bundle(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
                check(&bytes);
            }

            #[test]
            fn hostile_entries_after_a_valid_manifest(
                name in prop::sample::select(vec![
                    "../evil", "/etc/evil", "a/../../evil", "a.so/../../evil", ".", "a.so",
                    "lib/b.so", "lib", "release.toml", "release.sig",
                ]),
                kind in prop::sample::select(vec![
                    tar::EntryType::Regular, tar::EntryType::Symlink, tar::EntryType::Link,
                    tar::EntryType::Directory, tar::EntryType::Char, tar::EntryType::Fifo,
                ]),
                link in prop::sample::select(vec!["../../evil", "/etc/passwd", "a.so"]),
            ) {
                let manifest = manifest_naming(&["a.so", "lib/b.so"]);
                let mut bytes = tar_of(&[("release.toml", manifest.as_bytes())]);
                bytes.truncate(bytes.len() - 1024); // the end-of-archive blocks
                // Written raw: tar's builder refuses such names itself.
                let mut header = tar::Header::new_old();
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
                header.set_size(4);
                header.set_entry_type(kind);
                header.set_cksum();
                bytes.extend_from_slice(header.as_bytes());
                bytes.extend_from_slice(&[b'e'; 512]);
                bytes.extend_from_slice(&[0; 1024]);
                check(&bytes);
            }

            #[test]
            fn a_mutated_bundle(
                edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                cut in 0usize..300,
            ) {
                let mut bytes = valid_bundle();
                for (at, byte) in edits {
                    let at = at % bytes.len();
                    bytes[at] = byte;
                }
                bytes.truncate(bytes.len() * cut.min(256) / 256);
                check(&bytes);
            }
        }
    }
}
