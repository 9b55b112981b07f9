//! Staging: copying each plugin file to a name unique to its build, in a place no build tool
//! rewrites, after checking it.
//!
//! Staging copies each library to `DATA/staged/NAME-SHA.so`: a name unique per build (so `dlopen`
//! never returns an older image loaded from the same path), written with temp file + fsync +
//! rename. The file is streamed, never held in memory (a 400 MB "plugin" costs disk, not RAM),
//! and only a regular file is read at all ([`input::open_regular`]). The checksum and ELF
//! checks run on the staged copy itself, so what was checked is what `dlopen` maps.
//!
//! [`Staging::Development`] trades that durability for speed in a development loop: a build is
//! staged as a hard link (no byte copied) where it is on the staging directory's filesystem, and
//! nothing is flushed.

use std::fs;
use std::io::{self, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::atomic_file;
use crate::digest::sha256_hex_of;
use crate::elf::{self, ElfError};
use crate::input;

/// How plugin files are staged (see [`HostBuilder::staging`](crate::HostBuilder::staging)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Staging {
    /// Each file copied to a temp file, flushed to disk and renamed: a staged copy survives a
    /// power cut, and no later write to the file it came from can reach it.
    #[default]
    Durable,
    /// For a development loop, on libraries only a build tool writes: a file on the staging
    /// directory's filesystem is staged as a hard link to it (no byte copied; it is still read
    /// once, for its checksum and ELF checks), and nothing is flushed to disk. The trades: a
    /// power cut can lose a staged build (the next build stages again), and a file overwritten
    /// *in place* (`cp` over it; cargo and rustc never do, they write a new file) would change
    /// under the code running from it. Files a release manifest names are staged as
    /// [`Durable`](Self::Durable) ones whatever this says.
    Development,
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
/// With `expected_sha256` (a release manifest's checksum) a file already staged under that name
/// (the same build) is only hashed, not copied again, and a file `cache` has verified before,
/// unchanged since and already staged is not read at all. Otherwise the file is copied to a temp
/// file in `staging_dir` (by the kernel, `copy_file_range`), which is then hashed, checked as a
/// library and renamed to its content name.
///
/// Returns the staged path and the file's sha256.
pub(crate) fn stage(
    staging_dir: &Path,
    name: &str,
    source: &Path,
    expected_sha256: Option<&str>,
    cache: &ChecksumCache,
    how: Staging,
) -> Result<(PathBuf, String), StageError> {
    let read_at = SystemTime::now();
    let mut file = input::open_regular(source).map_err(StageError::Read)?;
    if how == Staging::Development && expected_sha256.is_none() {
        fs::create_dir_all(staging_dir).map_err(StageError::Write)?;
        if let Some(staged) = stage_linked(staging_dir, name, source, &file)? {
            return Ok(staged);
        }
    }
    let key = FileKey::of(&file.metadata().map_err(StageError::Read)?);
    let unchanged = || fs::metadata(source).is_ok_and(|m| FileKey::of(&m) == key);
    let matches = |actual: String| match expected_sha256 {
        Some(expected) if actual != expected => Err(StageError::Checksum {
            expected: expected.to_owned(),
            actual,
        }),
        _ => Ok(actual),
    };
    if let Some(expected) = expected_sha256 {
        let staged = staged_path(staging_dir, name, expected);
        if staged.exists() {
            if cache.get(source, key).as_deref() != Some(expected) {
                matches(sha256_hex_of(&file).map_err(StageError::Read)?)?;
                if unchanged() {
                    cache.insert(source, key, expected, read_at);
                }
            }
            return Ok((staged, expected.to_owned()));
        }
    }
    fs::create_dir_all(staging_dir).map_err(StageError::Write)?;
    let (mut copy, temp) =
        atomic_file::create_temp(staging_dir, name).map_err(StageError::Write)?;
    let len = io::copy(&mut file, &mut copy).map_err(StageError::Write)?;
    if how == Staging::Durable {
        copy.sync_all().map_err(StageError::Write)?;
    }
    copy.rewind().map_err(StageError::Write)?;
    let sha256 = matches(sha256_hex_of((&copy).take(len)).map_err(StageError::Write)?)?;
    elf::check_file(&copy, len).map_err(StageError::Elf)?;
    let staged = staged_path(staging_dir, name, &sha256);
    match how {
        Staging::Durable => temp.persist(&staged),
        Staging::Development => temp.rename(&staged),
    }
    .map_err(StageError::Write)?;
    if expected_sha256.is_some() && unchanged() {
        cache.insert(source, key, &sha256, read_at);
    }
    Ok((staged, sha256))
}

/// Stages `source` (open as `file`) as a hard link in `staging_dir`, checked and named by its
/// checksum as a copy would be, with nothing flushed; `None` if it cannot be linked there (another
/// filesystem, say): then it is copied.
fn stage_linked(
    staging_dir: &Path,
    name: &str,
    source: &Path,
    file: &fs::File,
) -> Result<Option<(PathBuf, String)>, StageError> {
    use std::os::unix::fs::MetadataExt as _;
    // The file itself, not a symbolic link to it (which `link` would link).
    let Ok(target) = fs::canonicalize(source) else {
        return Ok(None);
    };
    let temp = atomic_file::temp_path(staging_dir, name);
    if fs::hard_link(&target, &temp).is_err() {
        return Ok(None);
    }
    let temp = atomic_file::Temp::at(temp);
    let linked = input::open_regular(temp.path()).map_err(StageError::Read)?;
    let (opened, now) = (
        file.metadata().map_err(StageError::Read)?,
        linked.metadata().map_err(StageError::Read)?,
    );
    // Replaced between the open and the link: copy what was opened instead.
    if (opened.dev(), opened.ino()) != (now.dev(), now.ino()) {
        return Ok(None);
    }
    let sha256 = sha256_hex_of(&linked).map_err(StageError::Read)?;
    elf::check_file(&linked, now.len()).map_err(StageError::Elf)?;
    let staged = staged_path(staging_dir, name, &sha256);
    temp.rename(&staged).map_err(StageError::Write)?;
    Ok(Some((staged, sha256)))
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
