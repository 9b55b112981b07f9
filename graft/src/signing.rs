//! `graft keygen` and `graft sign`: the operator's side of signed releases (the host's side is
//! [`graft_host::signature`]).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use graft_host::release::{Manifest, MANIFEST, SIGNATURE};
use graft_host::signature::{SecretKey, TrustedKey};

/// Writes a new secret key to `path` (mode 0600) and its public key, one line, to `PATH.pub`.
/// Neither file may exist yet.
///
/// # Errors
///
/// If either file exists or cannot be written, or the OS has no randomness to give.
pub fn keygen(path: &Path) -> anyhow::Result<TrustedKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SecretKey::from_seed(seed);
    let public = key.public();
    write_new(path, 0o600, &format!("{}\n", key.to_line()))?;
    write_new(&public_path(path), 0o644, &format!("{public}\n"))?;
    Ok(public)
}

/// Where `graft keygen PATH` writes the public key.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Signs the manifest of the release in `dir` with the secret key in `key`: writes
/// `DIR/release.sig` (temp file, fsync, rename). The manifest must be valid; it pins every
/// file's sha256, so the signature covers them all.
///
/// # Errors
///
/// If the key or the manifest cannot be read or is invalid, or the signature cannot be written.
pub fn sign(dir: &Path, key: &Path) -> anyhow::Result<TrustedKey> {
    let text = graft_host::input::read_text_bounded(key, 4096)
        .with_context(|| format!("reading the secret key {}", key.display()))?;
    let key = SecretKey::parse(&text).with_context(|| format!("in {}", key.display()))?;
    let manifest = dir.join(MANIFEST);
    let limit = graft_host::release::Limits::default().max_manifest_bytes;
    let bytes = graft_host::input::read_bounded(&manifest, limit)
        .with_context(|| format!("reading {}", manifest.display()))?;
    Manifest::read_within(bytes.as_slice(), &manifest, &Default::default())?;
    let signature = dir.join(SIGNATURE);
    graft_host::atomic_file::write(&signature, key.sign(&bytes).as_bytes())
        .with_context(|| format!("writing {}", signature.display()))?;
    Ok(key.public())
}

/// Creates `path` with `mode`, refusing to overwrite, and writes `text` durably.
fn write_new(path: &Path, mode: u32, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
