//! A saved state value ([`graft_api::State::PERSIST`]) as a record: a header (magic, schema,
//! alignment, the type's layout fingerprint, the value's length), the value's bytes, and the
//! SHA-256 of everything before it. The store keeps one per plugin (`store.rs`); a record that
//! does not check out refuses the release that would read it, naming the store: state is never
//! dropped silently.
//!
//! Before the store, each record was a file of its own, `state/<plugin>.state`; the store
//! imports such files once, when it is created.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The directory, in the data directory, that holds saved state.
pub(crate) const DIR: &str = "state";

const MAGIC: &[u8; 8] = b"GRAFTST1";
const SUFFIX: &str = ".state";

/// The largest state file read back (a larger one is refused, not read).
pub(crate) const MAX_STATE_BYTES: u64 = 256 << 20;

/// One plugin's saved state value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) schema: u32,
    pub(crate) align: u32,
    pub(crate) fingerprint: String,
    pub(crate) bytes: Vec<u8>,
}

impl Snapshot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let fingerprint = self.fingerprint.as_bytes();
        let mut out = Vec::with_capacity(64 + fingerprint.len() + self.bytes.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.schema.to_le_bytes());
        out.extend_from_slice(&self.align.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(fingerprint.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(fingerprint);
        out.extend_from_slice(&(self.bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.bytes);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    pub(crate) fn decode(file: &[u8]) -> Result<Self, SnapshotError> {
        let (body, digest) = file
            .split_at_checked(file.len().saturating_sub(32))
            .filter(|(body, _)| body.len() >= MAGIC.len())
            .ok_or(SnapshotError::TooShort)?;
        let mut r = Reader(body);
        if r.take(MAGIC.len())? != MAGIC {
            let start = String::from_utf8_lossy(&body[..MAGIC.len()]).into_owned();
            return Err(SnapshotError::Foreign(start));
        }
        if Sha256::digest(body).as_slice() != digest {
            return Err(SnapshotError::Checksum);
        }
        let schema = r.u32()?;
        let align = r.u32()?;
        let fingerprint_len = r.u32()? as usize;
        let fingerprint = String::from_utf8(r.take(fingerprint_len)?.to_vec())
            .map_err(|_| SnapshotError::Fingerprint)?;
        let len = usize::try_from(r.u64()?).map_err(|_| SnapshotError::Length)?;
        let bytes = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(SnapshotError::Trailing(r.0.len()));
        }
        Ok(Self {
            schema,
            align,
            fingerprint,
            bytes,
        })
    }
}

/// Why a saved cell record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("too short to be a state file")]
    TooShort,
    /// What it starts with instead of the magic bytes (as many bytes as those).
    #[error("not a graft state file (it starts with {0:?})")]
    Foreign(String),
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    #[error("truncated: {wanted} bytes wanted, {left} left")]
    Truncated { wanted: usize, left: usize },
    #[error("the type fingerprint is not UTF-8")]
    Fingerprint,
    #[error("the value length does not fit")]
    Length,
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

/// Why a state file (as hosts wrote them before the store) cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("larger than {MAX_STATE_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Decode(#[from] SnapshotError),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(SnapshotError::Truncated {
            wanted: n,
            left: self.0.len(),
        })?;
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Where `plugin`'s saved state lived under `dir`, before the store.
pub(crate) fn path(dir: &Path, plugin: &str) -> PathBuf {
    dir.join(format!("{plugin}{SUFFIX}"))
}

/// The plugin whose state file is named `file_name`, if it is one.
pub(crate) fn plugin_of(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(SUFFIX)
}

/// Reads `plugin`'s saved state, if there is a file for it. The error names what is wrong with
/// the file, not the file (the caller does).
pub(crate) fn read(dir: &Path, plugin: &str) -> Result<Option<Snapshot>, StateFileError> {
    let file = match std::fs::File::open(path(dir, plugin)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateFileError::TooLarge);
    }
    Ok(Some(Snapshot::decode(&bytes)?))
}

/// Writes these snapshots as state files, the way hosts did before the store.
#[cfg(test)]
pub(crate) fn write_all(dir: &Path, snapshots: &[(String, Snapshot)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (plugin, snapshot) in snapshots {
        crate::atomic_file::write(&path(dir, plugin), &snapshot.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            schema: 2,
            align: 8,
            fingerprint: "abc123".into(),
            bytes: (0..72).collect(),
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        assert_eq!(Snapshot::decode(&snapshot().encode()), Ok(snapshot()));
    }

    #[test]
    fn a_damaged_truncated_or_foreign_file_is_refused_with_a_bounded_reason() {
        let good = snapshot().encode();
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(Snapshot::decode(&flipped), Err(SnapshotError::Checksum));
        assert_eq!(Snapshot::decode(&good[..20]), Err(SnapshotError::TooShort));
        assert_eq!(
            Snapshot::decode(&good[..good.len() - 1]),
            Err(SnapshotError::Checksum)
        );
        assert_eq!(Snapshot::decode(b""), Err(SnapshotError::TooShort));
        let foreign = vec![b'x'; 100_000];
        let error = Snapshot::decode(&foreign).unwrap_err();
        assert!(matches!(error, SnapshotError::Foreign(_)), "{error}");
        assert!(error.to_string().len() < 200, "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
        ))]

        /// Any byte of a record changed, anywhere: refused, with a short reason.
        #[test]
        fn a_mutated_record_is_refused(at in proptest::prelude::any::<proptest::sample::Index>(), by in 1u8..=255) {
            let mut record = snapshot().encode();
            let at = at.index(record.len());
            record[at] ^= by;
            let error = Snapshot::decode(&record).unwrap_err().to_string();
            proptest::prop_assert!(error.len() < 200, "{}", error);
        }

        /// A record cut anywhere: refused.
        #[test]
        fn a_truncated_record_is_refused(keep in proptest::prelude::any::<proptest::sample::Index>()) {
            let record = snapshot().encode();
            let keep = keep.index(record.len());
            proptest::prop_assert!(Snapshot::decode(&record[..keep]).is_err());
        }

        /// Arbitrary bytes: refused without a panic (or, by chance, a record).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Snapshot::decode(&bytes);
        }
    }
}
