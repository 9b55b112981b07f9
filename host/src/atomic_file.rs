//! Writing files graft owns without ever leaving a half-written one behind.
//!
//! Every file graft writes for itself (staged plugin copies, manifests it generates, the record of
//! the current release) is written to a temporary file in the same directory, flushed to disk,
//! renamed over its final name, and the directory entry is flushed too. A crash leaves either the
//! old file or the new one, never a mix; a reader (or `dlopen`) never sees a partial file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, file_name) = split(path)?;
    write_temp(dir, &file_name.to_string_lossy(), bytes)?.persist(path)
}

/// A path's directory (`.` if it has none) and file name.
fn split(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    Ok((dir, file_name))
}

/// Copies the regular file `from` to `to` atomically, as [`write`] does, without holding it in
/// memory; returns the sha256 of the bytes written.
pub(crate) fn copy(from: &Path, to: &Path) -> io::Result<String> {
    use std::io::{Read as _, Seek as _};
    let mut source = crate::input::open_regular(from)?;
    let (dir, file_name) = split(to)?;
    let (mut file, temp) = create_temp(dir, &file_name.to_string_lossy())?;
    let len = io::copy(&mut source, &mut file)?;
    file.sync_all()?;
    file.rewind()?;
    let sha256 = crate::digest::sha256_hex_of((&file).take(len))?;
    temp.persist(to)?;
    Ok(sha256)
}

/// Writes `bytes` to a new temp file in `dir` (named after `name`) and flushes it to disk; the
/// caller then [persists](Temp::persist) it under its final name, in the same directory.
pub(crate) fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<Temp> {
    let (mut file, temp) = create_temp(dir, name)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(temp)
}

/// A new, empty temp file in `dir` (named after `name`), open for reading and writing; the
/// caller writes it, flushes it (`sync_all`) and [persists](Temp::persist) it.
pub(crate) fn create_temp(dir: &Path, name: &str) -> io::Result<(File, Temp)> {
    let path = temp_path(dir, name);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((file, Temp(Some(path))))
}

/// A name in `dir` for a temp file (after `name`) that no other temp file of this process has.
pub(crate) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A temp file; removed when dropped unless persisted.
#[derive(Debug)]
pub(crate) struct Temp(Option<PathBuf>);

impl Temp {
    /// The temp file at `path`, made by the caller.
    pub(crate) fn at(path: PathBuf) -> Self {
        Self(Some(path))
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a temp file is there until persisted")
    }

    /// Renames the file to `path` (in the same directory), flushing nothing: for files that
    /// need not survive a power cut.
    pub(crate) fn rename(mut self, path: &Path) -> io::Result<()> {
        fs::rename(self.path(), path)?;
        self.0 = None;
        Ok(())
    }

    /// Renames the file to `path` (in the same directory) and flushes the directory entry.
    pub(crate) fn persist(mut self, path: &Path) -> io::Result<()> {
        let temp = self.0.as_deref().expect("a temp file is persisted once");
        fs::rename(temp, path)?;
        self.0 = None;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(dir)
    }
}

/// Flushes a directory's entries to disk (after a rename in it).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_whole_file_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.toml");
        super::write(&path, b"first version, rather long").unwrap();
        super::write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["record.toml"]);
    }
}
