//! Reading the files graft is given (releases, libraries, configs, keys), which may be hostile.
//!
//! A path may name a FIFO (an `open` for reading blocks until a writer comes, forever if none
//! does), a device (`/dev/zero` never ends), a directory, or a symlink to any of them. Every
//! such file is opened with `O_NONBLOCK`, so the open itself never waits, and refused unless
//! `fstat` of the open file says it is a regular file; what is read of it is bounded. The check
//! is made on the open file, not on the path before opening it, so a path swapped in between
//! cannot slip through.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after following symlinks), without ever
/// blocking in `open`.
///
/// # Errors
///
/// The `open` error, or [`io::ErrorKind::InvalidInput`] saying what the file is instead.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file (it is {what})"),
    ))
}

/// The bytes of the regular file at `path`, refused if it has more than `limit`.
///
/// # Errors
///
/// As [`open_regular`], or [`io::ErrorKind::FileTooLarge`] past `limit` (the file is not read
/// then, or not past `limit` if it grew while being read).
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than the limit of {limit} bytes"),
        )
    };
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The text of the regular file at `path`, as [`read_bounded`].
///
/// # Errors
///
/// As [`read_bounded`], or [`io::ErrorKind::InvalidData`] if it is not UTF-8.
pub fn read_text_bounded(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_blocking_and_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Nobody writes to it: a blocking open would never return.
        let refused = open_regular(&fifo).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert!(refused.to_string().contains("a FIFO"), "{refused}");

        let zero = dir.path().join("libzero.so");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let refused = read_bounded(&zero, 1 << 20).unwrap_err();
        assert!(
            refused.to_string().contains("character device"),
            "{refused}"
        );
        assert!(open_regular(dir.path())
            .unwrap_err()
            .to_string()
            .contains("directory"));

        let file = dir.path().join("config.toml");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        let refused = read_bounded(&file, 9).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_text_bounded(&file, 10).unwrap(), "0123456789");
    }
}
