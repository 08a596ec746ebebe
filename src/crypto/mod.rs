//! Every cryptographic primitive of the repository format, and nothing else:
//! the AEADs ([`aead`]), the repository's key material and what each kind of
//! key may open ([`keyset`]), and the password-wrapped key objects under
//! `keys/` ([`keyfile`]). The repository (`crate::repository`) decides *which*
//! object is sealed with *which* key; this module only knows how.
//! format-spec/encryption.md describes every byte.

pub mod aead;
pub mod keyfile;
pub mod keyset;
#[cfg(test)]
mod vectors;

pub use aead::{AeadKey, Cipher};
pub use keyset::{BlobSealer, KeyKind, KeySet};

/// A sealed object or blob that does not open: changed, truncated, or
/// written under another repository's keys. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("it cannot be authenticated (changed, truncated, or written under another repository's keys)")]
    Unauthentic,
    #[error("it is sealed for the repository's full keys, and this is a write-only key")]
    WriteOnlyKey,
}
