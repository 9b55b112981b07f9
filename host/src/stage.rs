//! Staging: copying each plugin file to a name unique to its build, in a place no build tool
//! rewrites, after checking it.
//!
//! Staging copies each library to `DATA/staged/NAME-SHA.so`: a name unique per build (so `dlopen`
//! never returns an older image loaded from the same path), written with temp file + fsync +
//! rename. The bytes are read once, and the checksum and ELF checks run on the very bytes that
//! are staged.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::atomic_file;
use crate::elf::{self, ElfError};

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
/// read and hash it again. Shared by concurrent prepares; its lock never covers I/O.
///
/// The key is the file's device, inode, size, modification time and status-change time. Any
/// write to the file changes its ctime, which no process can set back, so a file whose key is
/// unchanged has unchanged content. A file changed within the clock granularity of its last
/// change could keep its key (the "racy git" problem): files changed in the last [`RACY`]
/// before they were read are never cached.
#[derive(Debug, Default)]
pub(crate) struct ChecksumCache {
    entries: Mutex<std::collections::HashMap<PathBuf, (FileKey, String)>>,
}

/// How recently a file may have changed and still be cached.
const RACY: Duration = Duration::from_secs(2);

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
    fn is_racy(&self, now: SystemTime) -> bool {
        let changed = std::time::UNIX_EPOCH
            + Duration::new(
                u64::try_from(self.ctime.0).unwrap_or(0),
                u32::try_from(self.ctime.1).unwrap_or(0),
            );
        changed + RACY > now
    }
}

impl ChecksumCache {
    /// The verified checksum of `path` if its key is unchanged since it was verified.
    fn get(&self, path: &Path, key: FileKey) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(path) {
            Some((k, sha256)) if *k == key => Some(sha256.clone()),
            _ => None,
        }
    }

    fn insert(&self, path: &Path, key: FileKey, sha256: &str, read_at: SystemTime) {
        if key.is_racy(read_at) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(path.to_owned(), (key, sha256.to_owned()));
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
    cache: &ChecksumCache,
) -> Result<(PathBuf, String), StageError> {
    let read_at = SystemTime::now();
    let key = FileKey::of(&fs::metadata(source).map_err(StageError::Read)?);
    if let Some(expected) = expected_sha256 {
        let staged = staged_path(staging_dir, name, expected);
        if cache.get(source, key).as_deref() == Some(expected) && staged.exists() {
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

fn staged_path(staging_dir: &Path, name: &str, sha256: &str) -> PathBuf {
    staging_dir.join(format!("{name}-{}.so", &sha256[..16]))
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
        let cache = ChecksumCache::default();

        // Read just after the file changed: it could still change within the same tick.
        cache.insert(&file, key(), "sha-of-first", SystemTime::now());
        assert_eq!(cache.get(&file, key()), None);

        // Read well after its last change.
        let later = SystemTime::now() + RACY * 2;
        cache.insert(&file, key(), "sha-of-first", later);
        assert_eq!(cache.get(&file, key()).as_deref(), Some("sha-of-first"));

        // Rewritten with the same size: the key moves on, the old checksum is not trusted.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&file, b"again").unwrap();
        assert_eq!(cache.get(&file, key()), None);
    }
}
