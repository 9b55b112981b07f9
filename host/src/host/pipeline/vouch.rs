//! Signed releases in the pipeline: the `signature` step.
//!
//! With trusted keys set, a release directory's manifest is read once, its bytes verified
//! against `DIR/release.sig`, and parsed from those same bytes (no window in which another
//! manifest could be swapped in). A copy of each signed manifest and its signature is kept in
//! `DATA/signed/<sha256 of the manifest>.{toml,sig}`, and every plugin's record names the
//! manifest that vouches for it, so a rollback or a restart verifies again, from the data
//! directory, that each recorded library is one a trusted key signed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::digest::sha256_hex;
use crate::error::{DeployCause, DeployError, Step};
use crate::release::{Manifest, MANIFEST, SIGNATURE};
use crate::signature::{self, SignatureError};
use crate::status::ReleaseRecord;

use super::Pipeline;

/// Where signed manifests are kept, in the data directory.
pub(super) const SIGNED_DIR: &str = "signed";

/// A manifest whose signature a trusted key verified, parsed from the very bytes verified.
struct Signed {
    manifest: Manifest,
    bytes: Vec<u8>,
    signature: String,
}

/// The most bytes a signature file may have (its one line is 136).
const MAX_SIGNATURE_BYTES: u64 = 1024;

impl Pipeline {
    /// Whether releases must be signed.
    pub(in crate::host) fn requires_signatures(&self) -> bool {
        !self.settings.trusted_keys.is_empty()
    }

    /// Reads and validates the manifest of the release in `dir`; with trusted keys, verifies
    /// its signature first and keeps a copy of both. Returns the manifest and, when signed, the
    /// sha256 of its bytes (the voucher its plugins' records keep).
    pub(in crate::host) fn read_manifest(
        &self,
        dir: &Path,
    ) -> Result<(Manifest, Option<String>), DeployError> {
        if !self.requires_signatures() {
            return Manifest::load_within(dir, &self.settings.limits)
                .map(|m| (m, None))
                .map_err(|e| {
                    DeployError::new(Step::Manifest, None, Some(dir.join(MANIFEST)), e.into())
                });
        }
        let refused = |(step, file, cause)| DeployError::new(step, None, Some(file), cause);
        let signed = self
            .verify_signed(&dir.join(MANIFEST), &dir.join(SIGNATURE))
            .map_err(refused)?;
        let voucher = sha256_hex(&signed.bytes);
        self.keep_signed(&voucher, &signed.bytes, &signed.signature)
            .map_err(|source| {
                let cause = DeployCause::Io("keeping a copy of the signed manifest".into(), source);
                refused((Step::Signature, self.signed_path(&voucher, "toml"), cause))
            })?;
        Ok((signed.manifest, Some(voucher)))
    }

    /// Refuses a release of builds (no manifest to sign) when signatures are required.
    pub(in crate::host) fn check_unsigned_allowed(&self) -> Result<(), DeployError> {
        if self.requires_signatures() {
            let cause = DeployCause::Signature(SignatureError::NoManifest);
            return Err(DeployError::new(Step::Signature, None, None, cause));
        }
        Ok(())
    }

    /// Verifies, when signatures are required, that every plugin of a recorded release is
    /// vouched for by a signed manifest kept in the data directory that names it with its
    /// sha256. Each kept manifest is verified once, however many plugins it vouches for.
    pub(in crate::host) fn verify_record(&self, record: &ReleaseRecord) -> Result<(), DeployError> {
        if !self.requires_signatures() {
            return Ok(());
        }
        let mut verified: HashMap<&str, Manifest> = HashMap::new();
        for plugin in &record.plugins {
            let refused = |(step, file, cause): (Step, Option<PathBuf>, DeployCause)| {
                DeployError::new(step, Some(&plugin.name), file, cause)
            };
            let Some(voucher) = plugin.signed.as_deref().filter(|v| is_hex(v)) else {
                let cause = DeployCause::Signature(SignatureError::Unsigned);
                return Err(refused((Step::Signature, None, cause)));
            };
            let manifest_path = self.signed_path(voucher, "toml");
            let manifest = match verified.entry(voucher) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    let signed = self
                        .verify_signed(&manifest_path, &self.signed_path(voucher, "sig"))
                        .map_err(|(step, file, cause)| refused((step, Some(file), cause)))?;
                    new.insert(signed.manifest)
                }
            };
            let vouched = manifest
                .plugins
                .iter()
                .any(|p| p.name == plugin.name && p.sha256 == plugin.sha256);
            if !vouched {
                let cause = DeployCause::Signature(SignatureError::NotVouched);
                return Err(refused((Step::Signature, Some(manifest_path), cause)));
            }
        }
        Ok(())
    }

    /// Reads a manifest and its signature, verifies the signature over the manifest's bytes
    /// under the trusted keys, and parses those very bytes. A refusal names its step and file.
    fn verify_signed(
        &self,
        manifest_path: &Path,
        sig_path: &Path,
    ) -> Result<Signed, (Step, PathBuf, DeployCause)> {
        let limit = self.settings.limits.max_manifest_bytes.saturating_add(1);
        let bytes = read_bounded(manifest_path, limit).map_err(|source| {
            let cause = DeployCause::Io("reading the manifest".into(), source);
            (Step::Manifest, manifest_path.to_owned(), cause)
        })?;
        let signature = match read_bounded(sig_path, MAX_SIGNATURE_BYTES) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                let cause = DeployCause::Io("reading the signature".into(), source);
                return Err((Step::Signature, sig_path.to_owned(), cause));
            }
        };
        signature::verify(&self.settings.trusted_keys, &bytes, signature.as_deref())
            .map_err(|e| (Step::Signature, sig_path.to_owned(), e.into()))?;
        let manifest =
            Manifest::read_within(bytes.as_slice(), manifest_path, &self.settings.limits)
                .map_err(|e| (Step::Manifest, manifest_path.to_owned(), e.into()))?;
        Ok(Signed {
            manifest,
            bytes,
            signature: signature.unwrap_or_default(),
        })
    }

    fn signed_path(&self, voucher: &str, extension: &str) -> PathBuf {
        self.signed_dir.join(format!("{voucher}.{extension}"))
    }

    /// Keeps a signed manifest and its signature (once per manifest: the name is its hash).
    fn keep_signed(&self, voucher: &str, manifest: &[u8], signature: &str) -> std::io::Result<()> {
        let toml = self.signed_path(voucher, "toml");
        if toml.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.signed_dir)?;
        crate::atomic_file::write(&self.signed_path(voucher, "sig"), signature.as_bytes())?;
        crate::atomic_file::write(&toml, manifest)
    }

    /// Deletes kept signed manifests no recorded release refers to.
    pub(in crate::host) fn collect_signed(
        &self,
        history: &std::collections::VecDeque<ReleaseRecord>,
    ) {
        let keep: HashSet<&str> = history
            .iter()
            .flat_map(|r| r.plugins.iter().filter_map(|p| p.signed.as_deref()))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.signed_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !keep.contains(stem) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Reads at most `limit` bytes of a file.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    crate::input::open_regular(path)?
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn is_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
