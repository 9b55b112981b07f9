//! A cheap structural check of a plugin file before `dlopen` sees it.
//!
//! `dlopen` of a file that is not a shared library fails cleanly, but a truncated build whose
//! program headers still parse may map segments past the end of the file, and touching those
//! pages kills the process with SIGBUS. So every segment the loader would map must lie inside
//! the file, and the file must be a shared object for this machine's architecture.

use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Architecture, Endianness, Object, ObjectKind, ReadCache, ReadRef};

/// Why a file is not a loadable shared library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// Not an ELF file, or its headers do not parse (truncated or corrupt).
    #[error("not an ELF file, or its headers are truncated or corrupt")]
    Parse(#[source] object::Error),
    /// An ELF file, but not a shared library.
    #[error("an ELF file but not a shared library (it is {0:?})")]
    NotShared(ObjectKind),
    /// A shared library for another machine.
    #[error("built for {found:?}, this host runs {expected:?}")]
    Architecture {
        /// The file's architecture.
        found: Architecture,
        /// The host's architecture.
        expected: Architecture,
    },
    /// A loadable segment ends past the end of the file: a truncated build.
    #[error("truncated: a loadable segment ends at byte {end}, the file has {len} bytes")]
    Truncated {
        /// Where the segment's file data ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
}

/// Checks that `bytes` is a complete shared library for this machine, as staging does before
/// `dlopen` may see it.
///
/// # Errors
///
/// [`ElfError`] saying what the file is instead.
pub fn check(bytes: &[u8]) -> Result<(), ElfError> {
    check_data(bytes, bytes.len() as u64)
}

/// [`check`] of an open file of `len` bytes, reading only the headers it needs (not the whole
/// file).
///
/// # Errors
///
/// As [`check`].
pub fn check_file(file: &std::fs::File, len: u64) -> Result<(), ElfError> {
    check_data(&ReadCache::new(file), len)
}

fn check_data<'data, R: ReadRef<'data>>(data: R, len: u64) -> Result<(), ElfError> {
    let file = ElfFile64::<Endianness, R>::parse(data).map_err(ElfError::Parse)?;
    if file.kind() != ObjectKind::Dynamic {
        return Err(ElfError::NotShared(file.kind()));
    }
    let expected = host_architecture();
    if file.architecture() != expected {
        return Err(ElfError::Architecture {
            found: file.architecture(),
            expected,
        });
    }
    let endian = file.endian();

    for header in file.elf_program_headers() {
        let end = header
            .p_offset(endian)
            .saturating_add(header.p_filesz(endian));
        if end > len {
            return Err(ElfError::Truncated { end, len });
        }
    }
    Ok(())
}

fn host_architecture() -> Architecture {
    if cfg!(target_arch = "x86_64") {
        Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        Architecture::Aarch64
    } else {
        Architecture::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_text() {
        assert!(matches!(
            check(b"not a library at all"),
            Err(ElfError::Parse(_))
        ));
    }

    #[test]
    fn rejects_a_truncated_copy_of_a_real_library() {
        // The test binary's own dependencies include libc; any shared object on the machine will
        // do, the libc the process already uses is always there.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc is mapped");
        let bytes = std::fs::read(libc).unwrap();
        check(&bytes).expect("libc is a valid shared library");
        let err = check(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(
            matches!(err, ElfError::Truncated { .. } | ElfError::Parse(_)),
            "{err}"
        );
    }
}
