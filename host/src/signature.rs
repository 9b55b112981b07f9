//! Signed releases: an ed25519 signature over a release's manifest, which pins every plugin
//! file's sha256, so one signature vouches for the whole release.
//!
//! Keys and signatures are one line of text each, so they fit a config file and a diff:
//! a public key is `ed25519:<64 hex digits>`, a secret key `ed25519-secret:<64 hex digits>` (the
//! 32-byte seed), a signature (`DIR/release.sig`) `ed25519:<128 hex digits>`. A host given
//! trusted keys ([`HostBuilder::trusted_keys`](crate::HostBuilder::trusted_keys)) refuses any
//! release not signed by one of them at [`Step::Signature`](crate::Step::Signature).

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::bounded::Bounded;

const PUBLIC: &str = "ed25519:";
const SECRET: &str = "ed25519-secret:";

/// The signature's file name inside a release directory: an ed25519 signature over the
/// manifest's bytes, checked by this module.
pub const SIGNATURE: &str = "release.sig";

/// A public key releases may be signed with; deserialized from its one-line form.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedKey(VerifyingKey);

impl TryFrom<String> for TrustedKey {
    type Error = SignatureError;

    fn try_from(text: String) -> Result<Self, SignatureError> {
        Self::parse(&text)
    }
}

/// A secret key that signs releases.
pub struct SecretKey(SigningKey);

/// Why a key or a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A key is not of the expected form (`prefix` is what its line must start with).
    #[error("not an ed25519 key (expected {prefix}<64 hex digits>): {}", Bounded(.text))]
    Key {
        /// What the line must start with: `ed25519:` or `ed25519-secret:`.
        prefix: &'static str,
        /// The text refused (empty for a secret key).
        text: String,
    },
    /// A public key of small order: signatures "by" it can be forged without any secret key.
    #[error("a weak ed25519 key (of small order: anyone can forge a signature it verifies): {}", Bounded(.0))]
    WeakKey(String),
    /// The release has no signature file.
    #[error("the release is not signed (no {SIGNATURE})")]
    Unsigned,
    /// The signature file is not of the expected form.
    #[error("not an ed25519 signature (expected ed25519:<128 hex digits>): {}", Bounded(.0))]
    Malformed(String),
    /// No trusted key verifies the signature over these bytes.
    #[error("the signature is not valid for this manifest under any of the {0} trusted keys (signed by another key, or the manifest changed after signing)")]
    Invalid(usize),
    /// A recorded plugin's signed manifest does not name it with its sha256.
    #[error("the signed manifest kept for it does not name it with this sha256")]
    NotVouched,
    /// A build without a manifest has nothing to sign.
    #[error("trusted keys are set: a build without a signed manifest cannot be deployed")]
    NoManifest,
}

/// The bytes of `hex` after `prefix`, exactly `N` of them.
fn decode<const N: usize>(text: &str, prefix: &str) -> Option<[u8; N]> {
    let digits = text.trim().strip_prefix(prefix)?;
    let bytes = hex::decode(digits).ok()?;
    bytes.try_into().ok()
}

impl TrustedKey {
    /// Parses a public key line (`ed25519:<64 hex digits>`).
    ///
    /// # Errors
    ///
    /// [`SignatureError::Key`] if it is not one, [`SignatureError::WeakKey`] if it is a key of
    /// small order (such as 32 zero bytes), under which signatures can be forged.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let refused = || SignatureError::Key {
            prefix: PUBLIC,
            text: text.to_owned(),
        };
        let bytes = decode::<32>(text, PUBLIC).ok_or_else(refused)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| refused())?;
        if key.is_weak() {
            return Err(SignatureError::WeakKey(text.to_owned()));
        }
        Ok(Self(key))
    }
}

impl fmt::Display for TrustedKey {
    /// The key's one-line form, as [`TrustedKey::parse`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({self})")
    }
}

impl SecretKey {
    /// A key from 32 random bytes (the caller's source of randomness: an OS generator).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Parses a secret key line (`ed25519-secret:<64 hex digits>`).
    ///
    /// # Errors
    ///
    /// [`SignatureError::Key`] if it is not one (the text is not quoted).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        decode::<32>(text, SECRET)
            .map(Self::from_seed)
            .ok_or(SignatureError::Key {
                prefix: SECRET,
                text: String::new(),
            })
    }

    /// The key's one-line form, as [`SecretKey::parse`] reads it.
    pub fn to_line(&self) -> String {
        format!("{SECRET}{}", hex::encode(self.0.to_bytes()))
    }

    /// Its public key.
    pub fn public(&self) -> TrustedKey {
        TrustedKey(self.0.verifying_key())
    }

    /// The signature file's text for a manifest of these bytes.
    pub fn sign(&self, manifest: &[u8]) -> String {
        format!(
            "{PUBLIC}{}\n",
            hex::encode(self.0.sign(manifest).to_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Checks that `signature` (a signature file's text, `None` if there is none) is valid over
/// `manifest` under one of `trusted`, strictly (RFC 8032 with no small-order component in the
/// key or the signature's `R`, and a canonical `s`): a signature of zeros never verifies.
///
/// # Errors
///
/// [`SignatureError`] saying why not.
pub fn verify(
    trusted: &[TrustedKey],
    manifest: &[u8],
    signature: Option<&str>,
) -> Result<(), SignatureError> {
    let text = signature.ok_or(SignatureError::Unsigned)?;
    let bytes =
        decode::<64>(text, PUBLIC).ok_or_else(|| SignatureError::Malformed(text.to_owned()))?;
    let signature = Signature::from_bytes(&bytes);
    if trusted
        .iter()
        .any(|key| key.0.verify_strict(manifest, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Invalid(trusted.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_under_its_key_only_and_only_over_the_signed_bytes() {
        let key = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let public = TrustedKey::parse(&key.public().to_string()).unwrap();
        assert_eq!(public, key.public());
        let again = SecretKey::parse(&key.to_line()).unwrap();
        assert_eq!(again.public(), key.public());

        let signature = key.sign(b"manifest");
        assert_eq!(
            verify(std::slice::from_ref(&public), b"manifest", Some(&signature)),
            Ok(())
        );
        assert_eq!(
            verify(
                &[other.public(), public.clone()],
                b"manifest",
                Some(&signature)
            ),
            Ok(()),
            "any trusted key will do"
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&public),
                b"manifest changed",
                Some(&signature)
            ),
            Err(SignatureError::Invalid(1))
        );
        assert_eq!(
            verify(&[other.public()], b"manifest", Some(&signature)),
            Err(SignatureError::Invalid(1))
        );
        assert_eq!(
            verify(std::slice::from_ref(&public), b"manifest", None),
            Err(SignatureError::Unsigned)
        );
        assert!(matches!(
            verify(&[public], b"manifest", Some("ed25519:zz")),
            Err(SignatureError::Malformed(_))
        ));
        assert!(TrustedKey::parse("ed25519:1234").is_err());
        assert!(TrustedKey::parse(&key.to_line()).is_err());
        assert!(SecretKey::parse(&key.public().to_string()).is_err());
    }

    #[test]
    fn a_small_order_key_is_refused_and_a_forged_signature_of_zeros_never_verifies() {
        let zeros = format!("{PUBLIC}{}", "0".repeat(64));
        assert!(
            matches!(TrustedKey::parse(&zeros), Err(SignatureError::WeakKey(_))),
            "{:?}",
            TrustedKey::parse(&zeros)
        );
        assert!(TrustedKey::parse(&format!("{PUBLIC}01{}", "0".repeat(62))).is_err());
        // Even if such a key got in, no signature made without a secret verifies, however
        // the manifest is padded (a lax check accepts one padding in four or so).
        let weak = TrustedKey(VerifyingKey::from_bytes(&[0; 32]).unwrap());
        let zeros = format!("{PUBLIC}{}", "0".repeat(128));
        let identity_r = format!("{PUBLIC}01{}", "0".repeat(126));
        for pad in 0..64 {
            let manifest = format!("name = \"v1\"\n#{}", " ".repeat(pad));
            for forged in [&zeros, &identity_r] {
                assert_eq!(
                    verify(
                        std::slice::from_ref(&weak),
                        manifest.as_bytes(),
                        Some(forged)
                    ),
                    Err(SignatureError::Invalid(1)),
                    "padding {pad}"
                );
            }
        }
        // A real key still verifies strictly.
        let key = SecretKey::from_seed([9; 32]);
        assert_eq!(verify(&[key.public()], b"m", Some(&key.sign(b"m"))), Ok(()));
    }
}
