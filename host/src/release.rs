//! Releases on disk: the `release.toml` manifest, checksums, and staging.
//!
//! A release is a directory holding plugin libraries and a manifest:
//!
//! ```toml
//! name = "v2"                 # optional label, shown in status and history
//! complete = false            # true: the release is the whole plugin set, nothing carries over
//! remove = ["frob-shim"]      # plugins of the current generation to drop
//!
//! [[plugin]]
//! name = "frob"               # must match the name the library declares
//! file = "libfrob_v2.so"      # relative to the release directory
//! sha256 = "9f2c…"            # of the file; a mismatch rejects the release
//! ```
//!
//! By default a release names only the plugins that change; the others carry over from the
//! current generation, and the new set is linked as a whole before it goes live.
//!
//! Staging copies each library to `DATA/staged/NAME-SHA.so`: a name unique per build (so `dlopen`
//! never returns an older image loaded from the same path), in a place no build tool rewrites,
//! written with temp file + fsync + rename. The bytes are read once, and the checksum and ELF
//! checks run on the very bytes that are staged.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file;
use crate::elf::{self, ElfError};

/// The manifest's file name inside a release directory.
pub const MANIFEST: &str = "release.toml";

/// A parsed, validated `release.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A label for the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the release is the whole plugin set (nothing carries over).
    #[serde(default)]
    pub complete: bool,
    /// Plugins of the current generation to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// The plugins the release ships.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<ManifestPlugin>,
}

/// One plugin file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPlugin {
    /// The plugin's declared name.
    pub name: String,
    /// The library, relative to the release directory.
    pub file: PathBuf,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The release directory has no manifest.
    #[error("no {MANIFEST} in {}", dir.display())]
    Missing {
        /// The release directory.
        dir: PathBuf,
    },
    /// The manifest could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest is not valid TOML of the expected shape.
    #[error("malformed {}: {reason}", path.display())]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// Where and why, on one line (`line 3, column 9: ...`).
        reason: String,
    },
    /// The manifest parses but says something impossible.
    #[error("invalid {}: {reason}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Manifest {
    /// Reads and validates `DIR/release.toml`.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] when the file is missing, unreadable, malformed or invalid.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ManifestError::Missing {
                dir: dir.to_owned(),
            },
            _ => ManifestError::Read {
                path: path.clone(),
                source,
            },
        })?;
        let manifest: Self = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            reason: one_line(&text, &e),
        })?;
        manifest
            .validate()
            .map_err(|reason| ManifestError::Invalid { path, reason })?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.plugins.is_empty() && self.remove.is_empty() {
            return Err("it names no plugin and removes none".into());
        }
        let mut seen = Vec::new();
        for plugin in &self.plugins {
            check_plugin_name(&plugin.name)?;
            if seen.contains(&&plugin.name) {
                return Err(format!("plugin {} is listed twice", plugin.name));
            }
            seen.push(&plugin.name);
            let inside = plugin
                .file
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !inside || plugin.file.as_os_str().is_empty() {
                return Err(format!(
                    "plugin {}: file {} must be a relative path inside the release",
                    plugin.name,
                    plugin.file.display()
                ));
            }
            let hex_ok = plugin.sha256.len() == 64
                && plugin
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(format!(
                    "plugin {}: sha256 must be 64 lowercase hex digits",
                    plugin.name
                ));
            }
        }
        if let Some(both) = self.remove.iter().find(|r| seen.contains(r)) {
            return Err(format!("plugin {both} is both shipped and removed"));
        }
        if self.complete && !self.remove.is_empty() {
            return Err("a complete release replaces everything; it cannot also remove".into());
        }
        Ok(())
    }
}

/// A TOML error as `line L, column C: message`, without the multi-line source snippet.
fn one_line(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Checks that a plugin name is non-empty and made of `[a-z0-9_-]`.
pub(crate) fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use 1 to 64 of [a-z0-9_-]"
        ))
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a plugin file could not be staged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StageError {
    #[error("reading the plugin file")]
    Read(#[source] io::Error),
    #[error("sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Checksum { expected: String, actual: String },
    #[error("not a loadable shared library")]
    Elf(#[source] ElfError),
    #[error("writing the staged copy")]
    Write(#[source] io::Error),
}

/// The checksums of plugin files already read and verified, keyed by what `stat` says of them,
/// so that deploying the same release file again (a rollback, releases alternating) does not
/// read and hash it again.
///
/// The key is the file's device, inode, size, modification time and status-change time. Any
/// write to the file changes its ctime, which no process can set back, so a file whose key is
/// unchanged has unchanged content. A file changed within the clock granularity of its last
/// change could keep its key (the "racy git" problem): files changed in the last
/// [`RACY`] before they were read are never cached.
#[derive(Debug, Default)]
pub(crate) struct ChecksumCache {
    entries: std::collections::HashMap<PathBuf, (FileKey, String)>,
}

/// How recently a file may have changed and still be cached.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// At most this many files are remembered; then the cache starts over.
const CACHE_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file changed less than [`RACY`] before `now`.
    fn is_racy(&self, now: std::time::SystemTime) -> bool {
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(self.ctime.0).unwrap_or(0),
                u32::try_from(self.ctime.1).unwrap_or(0),
            );
        changed + RACY > now
    }
}

impl ChecksumCache {
    /// The verified checksum of `path` if its key is unchanged since it was verified.
    fn get(&self, path: &Path, key: FileKey) -> Option<&str> {
        match self.entries.get(path) {
            Some((k, sha256)) if *k == key => Some(sha256),
            _ => None,
        }
    }

    fn insert(&mut self, path: &Path, key: FileKey, sha256: &str, read_at: std::time::SystemTime) {
        if key.is_racy(read_at) {
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.clear();
        }
        self.entries
            .insert(path.to_owned(), (key, sha256.to_owned()));
    }
}

/// Copies a checked plugin file into `staging_dir` under a name unique to its content.
///
/// With `expected_sha256` (a release manifest's checksum) the file is hashed and compared first,
/// and a file already staged under that name (the same build) is reused; a file `cache` has
/// verified before, unchanged since and already staged is not read again. Without a checksum (a
/// build graft made itself, see [`Host::deploy_libraries`](crate::Host::deploy_libraries)), the
/// build is almost certainly new, so the copy is written to a temp file while another thread
/// hashes it, then renamed to its content name: the two costs overlap instead of adding up.
///
/// Returns the staged path and the file's sha256.
pub(crate) fn stage(
    staging_dir: &Path,
    name: &str,
    source: &Path,
    expected_sha256: Option<&str>,
    cache: &mut ChecksumCache,
) -> Result<(PathBuf, String), StageError> {
    let read_at = std::time::SystemTime::now();
    let key = FileKey::of(&fs::metadata(source).map_err(StageError::Read)?);
    if let Some(expected) = expected_sha256 {
        let staged = staged_path(staging_dir, name, expected);
        if cache.get(source, key) == Some(expected) && staged.exists() {
            return Ok((staged, expected.to_owned()));
        }
    }
    let bytes = fs::read(source).map_err(StageError::Read)?;
    let unchanged = fs::metadata(source).is_ok_and(|m| FileKey::of(&m) == key);
    elf::check(&bytes).map_err(StageError::Elf)?;
    fs::create_dir_all(staging_dir).map_err(StageError::Write)?;
    let Some(expected) = expected_sha256 else {
        let (sha256, written) = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_hex(&bytes));
            let written = atomic_file::write_temp(staging_dir, name, &bytes);
            (hashing.join().expect("hashing does not panic"), written)
        });
        let temp = written.map_err(StageError::Write)?;
        let staged = staged_path(staging_dir, name, &sha256);
        temp.persist(&staged).map_err(StageError::Write)?;
        return Ok((staged, sha256));
    };
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(StageError::Checksum {
            expected: expected.to_owned(),
            actual,
        });
    }
    let staged = staged_path(staging_dir, name, &actual);
    if staged != source && !staged.exists() {
        atomic_file::write(&staged, &bytes).map_err(StageError::Write)?;
    }
    if unchanged {
        cache.insert(source, key, &actual, read_at);
    }
    Ok((staged, actual))
}

pub(crate) fn staged_path(staging_dir: &Path, name: &str, sha256: &str) -> PathBuf {
    staging_dir.join(format!("{name}-{}.so", &sha256[..16]))
}

/// Writes a release directory: copies each `(name, library)` into `dir` and writes a manifest
/// with their checksums. What `graft pack` does once it has read the plugins' names.
///
/// # Errors
///
/// Any I/O error while copying or writing.
pub fn write_release(
    dir: &Path,
    label: Option<&str>,
    complete: bool,
    plugins: &[(&str, &Path)],
) -> io::Result<Manifest> {
    fs::create_dir_all(dir)?;
    let mut manifest = Manifest {
        name: label.map(str::to_owned),
        complete,
        remove: Vec::new(),
        plugins: Vec::new(),
    };
    for (name, library) in plugins {
        let bytes = fs::read(library)?;
        let file = PathBuf::from(library.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", library.display()),
            )
        })?);
        atomic_file::write(&dir.join(&file), &bytes)?;
        manifest.plugins.push(ManifestPlugin {
            name: (*name).to_owned(),
            file,
            sha256: sha256_hex(&bytes),
        });
    }
    let text =
        toml::to_string(&manifest).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    atomic_file::write(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(manifest)
}

/// Packs a release directory into a tar bundle: its manifest and the files the manifest names,
/// nothing else. What `graft deploy` uploads to a host that shares no filesystem with it.
///
/// # Errors
///
/// [`ManifestError`] if the manifest is missing or invalid; I/O errors reading the files are
/// reported as [`ManifestError::Read`].
pub fn pack_bundle(dir: &Path) -> Result<Vec<u8>, ManifestError> {
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
    #[error("bundle entry {0:?} is not a regular file with a relative path inside the bundle")]
    Entry(String),
    /// Writing an unpacked file failed.
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
}

/// Unpacks a tar bundle into `into` (which must not exist yet): regular files with relative paths
/// only, each written with temp file + fsync + rename.
pub(crate) fn unpack_bundle(bundle: &[u8], into: &Path) -> Result<(), BundleError> {
    let mut archive = tar::Archive::new(bundle);
    for entry in archive.entries().map_err(BundleError::Read)? {
        let mut entry = entry.map_err(BundleError::Read)?;
        let path = entry.path().map_err(BundleError::Read)?.into_owned();
        let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !entry.header().entry_type().is_file() || !inside || path.as_os_str().is_empty() {
            return Err(BundleError::Entry(path.display().to_string()));
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut entry, &mut bytes).map_err(BundleError::Read)?;
        let dest = into.join(&path);
        let parent = dest.parent().unwrap_or(into);
        fs::create_dir_all(parent).map_err(|e| BundleError::Write(parent.to_owned(), e))?;
        atomic_file::write(&dest, &bytes).map_err(|e| BundleError::Write(dest.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_is_remembered_only_until_the_file_changes_and_never_while_racy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libx.so");
        fs::write(&file, b"first").unwrap();
        let key = || FileKey::of(&fs::metadata(&file).unwrap());
        let mut cache = ChecksumCache::default();

        // Read just after the file changed: it could still change within the same tick.
        cache.insert(&file, key(), "sha-of-first", std::time::SystemTime::now());
        assert_eq!(cache.get(&file, key()), None);

        // Read well after its last change.
        let later = std::time::SystemTime::now() + RACY * 2;
        cache.insert(&file, key(), "sha-of-first", later);
        assert_eq!(cache.get(&file, key()), Some("sha-of-first"));

        // Rewritten with the same size: the key moves on, the old checksum is not trusted.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"again").unwrap();
        assert_eq!(cache.get(&file, key()), None);
    }

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
                sha256_hex(b"bytes")
            ),
        )
        .unwrap();
        let bundle = pack_bundle(&release).unwrap();
        let out = dir.path().join("out");
        unpack_bundle(&bundle, &out).unwrap();
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
        let err = unpack_bundle(&evil, &dir.path().join("evil-out")).unwrap_err();
        assert!(
            matches!(err, BundleError::Entry(ref p) if p == "../evil"),
            "{err}"
        );
        assert!(!dir.path().join("evil").exists());
        assert!(matches!(
            unpack_bundle(b"garbage", &dir.path().join("g")),
            Err(BundleError::Read(_))
        ));
    }

    fn load(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), text).unwrap();
        Manifest::load(dir.path())
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_good_manifest_parses() {
        let m = load(&format!(
            "name = \"v2\"\nremove = [\"old\"]\n[[plugin]]\nname = \"foo\"\nfile = \"libfoo.so\"\nsha256 = \"{SHA}\"\n"
        ))
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("v2"));
        assert_eq!(m.plugins[0].file, Path::new("libfoo.so"));
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::Missing { .. })
        ));
        assert!(matches!(
            load("[[plugin]\nname ="),
            Err(ManifestError::Parse { .. })
        ));
        assert!(matches!(
            load("colour = \"blue\""),
            Err(ManifestError::Parse { .. })
        ));
        let cases = [
            ("", "names no plugin"),
            (&*format!("[[plugin]]\nname = \"Foo\"\nfile = \"a.so\"\nsha256 = \"{SHA}\""), "invalid plugin name"),
            (&*format!("[[plugin]]\nname = \"foo\"\nfile = \"../a.so\"\nsha256 = \"{SHA}\""), "inside the release"),
            ("[[plugin]]\nname = \"foo\"\nfile = \"a.so\"\nsha256 = \"abc\"", "64 lowercase hex"),
            (
                &*format!("[[plugin]]\nname = \"foo\"\nfile = \"a.so\"\nsha256 = \"{SHA}\"\n[[plugin]]\nname = \"foo\"\nfile = \"b.so\"\nsha256 = \"{SHA}\""),
                "listed twice",
            ),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
