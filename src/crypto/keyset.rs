//! The repository's key material and what each kind of key opens.
//!
//! A repository has one random master [`KeySet`]; key objects (`keys/<id>`,
//! [`super::keyfile`]) wrap it under passwords. Its parts:
//!
//! - `id_key`: keys BLAKE3 for chunk and tree-blob ids ([`crate::ids::IdKey`]);
//! - `chunker_key`: the secret the chunker's gear table is derived from;
//! - `meta_key`: the AEAD key of everything a write-only host must read —
//!   index objects, pack trailers, locks, prune marks, upstream records,
//!   snapshot heads;
//! - an X25519 key pair: blobs (chunk data, extent lists, recipes) and snapshot
//!   bodies are sealed to `data_public`; only `data_secret` opens them.
//!
//! A write-only key holds everything but `data_secret`: it dedups and writes,
//! and opens nothing it or anyone else sealed to the public key.

use super::aead::AeadKey;
use super::{Cipher, CryptoError};
use crate::ids::IdKey;
use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Domain separation for every key derived from the master key material.
const BLOB_KEY_CONTEXT: &str = "imgarc 2026-12-01 blob sealing key";
const PROJECT_ID_KEY_CONTEXT: &str = "imgarc 2026-12-01 project chunk id key";
const CHUNKING_DIGEST_CONTEXT: &str = "imgarc 2026-12-01 chunking keys digest";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// Opens everything.
    Full,
    /// Archives and syncs; opens no chunk data, extent list or snapshot body.
    WriteOnly,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Full => "full",
            KeyKind::WriteOnly => "write-only",
        }
    }
}

/// Length of [`KeySet::to_bytes`].
pub const KEYSET_BYTES: usize = 2 + 5 * 32;

pub struct KeySet {
    cipher: Cipher,
    id_key: Zeroizing<[u8; 32]>,
    chunker_key: Zeroizing<[u8; 32]>,
    meta_key: Zeroizing<[u8; 32]>,
    meta: AeadKey,
    data_public: [u8; 32],
    data_secret: Option<Zeroizing<[u8; 32]>>,
    /// Blob keys already agreed, by the sealer's ephemeral public key (one per
    /// archive run): X25519 once per run, not once per blob.
    blob_keys: Mutex<HashMap<[u8; 32], Arc<AeadKey>>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({}, {}, ***)", self.cipher, self.kind().name())
    }
}

fn random32() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::fill(&mut k[..]);
    k
}

fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
    let sk = PrivateKey::from_private_key(&X25519, secret).expect("any 32 bytes are an X25519 private key");
    let pk = sk.compute_public_key().expect("X25519 public key");
    pk.as_ref().try_into().expect("X25519 public keys are 32 bytes")
}

impl KeySet {
    /// Fresh master key material for a new repository.
    pub fn generate(cipher: Cipher) -> KeySet {
        let secret = random32();
        let public = x25519_public(&secret);
        KeySet::assemble(cipher, random32(), random32(), random32(), public, Some(secret))
    }

    /// Master key material for a new repository that cuts and names chunks as
    /// `source` does (`init --copy-chunker-params-from`): the same `id_key` and
    /// `chunker_key`, everything else fresh — its own meta key and data key
    /// pair, so no key of one repository opens the other's objects. `source`
    /// may be write-only: it holds both shared keys, and the result is a full key.
    pub fn sharing_chunking_with(source: &KeySet, cipher: Cipher) -> KeySet {
        let secret = random32();
        let public = x25519_public(&secret);
        KeySet::assemble(cipher, source.id_key.clone(), source.chunker_key.clone(), random32(), public, Some(secret))
    }

    fn assemble(
        cipher: Cipher,
        id_key: Zeroizing<[u8; 32]>,
        chunker_key: Zeroizing<[u8; 32]>,
        meta_key: Zeroizing<[u8; 32]>,
        data_public: [u8; 32],
        data_secret: Option<Zeroizing<[u8; 32]>>,
    ) -> KeySet {
        let meta = AeadKey::new(cipher, &meta_key);
        KeySet { cipher, id_key, chunker_key, meta_key, meta, data_public, data_secret, blob_keys: Mutex::default() }
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn kind(&self) -> KeyKind {
        if self.data_secret.is_some() {
            KeyKind::Full
        } else {
            KeyKind::WriteOnly
        }
    }

    /// The same keys without `data_secret`: what a write-only key object wraps.
    pub fn write_only(&self) -> KeySet {
        KeySet::assemble(self.cipher, self.id_key.clone(), self.chunker_key.clone(), self.meta_key.clone(), self.data_public, None)
    }

    /// Chunk and tree-blob ids of the repository-wide dedup scope.
    pub fn id_key(&self) -> IdKey {
        IdKey::keyed(*self.id_key)
    }

    /// Chunk ids of one project's dedup scope (`init --dedup-scope project`).
    pub fn project_id_key(&self, project: &str) -> IdKey {
        let mut h = blake3::Hasher::new_derive_key(PROJECT_ID_KEY_CONTEXT);
        h.update(&self.id_key[..]);
        h.update(project.as_bytes());
        IdKey::keyed(*h.finalize().as_bytes())
    }

    /// The secret the chunker's gear table is derived from.
    pub fn chunker_key(&self) -> &[u8; 32] {
        &self.chunker_key
    }

    /// A one-way digest of exactly the keys that decide chunk boundaries and
    /// ids (`id_key`, `chunker_key`): equal for two key sets iff both keys are,
    /// and revealing neither (`Repository::chunking_fingerprint` builds on it).
    pub fn chunking_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(CHUNKING_DIGEST_CONTEXT);
        h.update(&self.id_key[..]);
        h.update(&self.chunker_key[..]);
        *h.finalize().as_bytes()
    }

    /// Seals with `meta_key` (objects every key reads).
    pub fn seal_meta(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        self.meta.seal(aad, plain)
    }

    pub fn open_meta(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.meta.open(aad, sealed)
    }

    /// A sealer to `data_public` with a fresh ephemeral key; every key kind has one.
    pub fn blob_sealer(&self) -> BlobSealer {
        let eph_secret = random32();
        let eph_public = x25519_public(&eph_secret);
        let key =
            blob_key(self.cipher, &eph_secret, &self.data_public, &eph_public, &self.data_public).expect("our own public key is valid");
        BlobSealer { eph_public, key }
    }

    /// Opens what a [`BlobSealer`] sealed. Needs the full key.
    pub fn open_blob(&self, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let secret = self.data_secret.as_ref().ok_or(CryptoError::WriteOnlyKey)?;
        if stored.len() < 32 {
            return Err(CryptoError::Unauthentic);
        }
        let (eph_public, sealed) = stored.split_at(32);
        let eph_public: [u8; 32] = eph_public.try_into().expect("32 bytes");
        let key = {
            let mut cache = self.blob_keys.lock().expect("blob key cache");
            match cache.get(&eph_public) {
                Some(k) => k.clone(),
                None => {
                    let k = Arc::new(blob_key(self.cipher, secret, &eph_public, &eph_public, &self.data_public)?);
                    if cache.len() >= 4096 {
                        cache.clear();
                    }
                    cache.insert(eph_public, k.clone());
                    k
                }
            }
        };
        key.open(aad, sealed)
    }

    /// Bytes a sealed blob has beyond its plaintext.
    pub fn blob_overhead(&self) -> usize {
        32 + self.cipher.overhead()
    }

    /// `kind u8 ‖ cipher u8 ‖ id_key ‖ chunker_key ‖ meta_key ‖ data_public ‖
    /// data_secret (zeros for a write-only key)`: what a key object wraps.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEYSET_BYTES));
        out.push(match self.kind() {
            KeyKind::Full => 0,
            KeyKind::WriteOnly => 1,
        });
        out.push(match self.cipher {
            Cipher::Aes256Gcm => 0,
            Cipher::XChaCha20Poly1305 => 1,
        });
        for part in [&self.id_key[..], &self.chunker_key[..], &self.meta_key[..], &self.data_public[..]] {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(self.data_secret.as_ref().map(|s| &s[..]).unwrap_or(&[0u8; 32]));
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<KeySet> {
        if b.len() != KEYSET_BYTES {
            return None;
        }
        let cipher = match b[1] {
            0 => Cipher::Aes256Gcm,
            1 => Cipher::XChaCha20Poly1305,
            _ => return None,
        };
        let part = |i: usize| -> Zeroizing<[u8; 32]> { Zeroizing::new(b[2 + 32 * i..2 + 32 * (i + 1)].try_into().expect("32 bytes")) };
        let data_public: [u8; 32] = *part(3);
        let data_secret = match b[0] {
            0 => {
                let s = part(4);
                // A full key's secret must be the one its public key belongs to.
                if x25519_public(&s) != data_public {
                    return None;
                }
                Some(s)
            }
            1 if b[2 + 32 * 4..].iter().all(|&x| x == 0) => None,
            _ => return None,
        };
        Some(KeySet::assemble(cipher, part(0), part(1), part(2), data_public, data_secret))
    }
}

/// The key one ephemeral sealer and the full key both arrive at:
/// `BLAKE3-derive_key(BLOB_KEY_CONTEXT, X25519(secret, peer) ‖ eph_public ‖ data_public)`.
/// `peer` is the other side's public key: `data_public` when sealing, `eph_public` when opening.
fn blob_key(
    cipher: Cipher,
    secret: &[u8; 32],
    peer: &[u8; 32],
    eph_public: &[u8; 32],
    data_public: &[u8; 32],
) -> Result<AeadKey, CryptoError> {
    let sk = PrivateKey::from_private_key(&X25519, secret).map_err(|_| CryptoError::Unauthentic)?;
    let shared = agree(&sk, UnparsedPublicKey::new(&X25519, peer), CryptoError::Unauthentic, |shared| {
        let mut h = blake3::Hasher::new_derive_key(BLOB_KEY_CONTEXT);
        h.update(shared);
        h.update(eph_public);
        h.update(data_public);
        Ok(Zeroizing::new(*h.finalize().as_bytes()))
    })?;
    Ok(AeadKey::new(cipher, &shared))
}

/// Seals blobs to the repository's public key (one per archive run).
pub struct BlobSealer {
    eph_public: [u8; 32],
    key: AeadKey,
}

impl BlobSealer {
    /// `eph_public ‖ nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let sealed = self.key.seal(aad, plain);
        let mut out = Vec::with_capacity(32 + sealed.len());
        out.extend_from_slice(&self.eph_public);
        out.extend_from_slice(&sealed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_open_with_the_full_key_only() {
        for cipher in Cipher::ALL {
            let full = KeySet::generate(cipher);
            let wo = full.write_only();
            let sealed = wo.blob_sealer().seal(b"aad", b"chunk");
            assert_eq!(sealed.len(), 5 + full.blob_overhead());
            assert_eq!(full.open_blob(b"aad", &sealed).unwrap(), b"chunk");
            assert_eq!(wo.open_blob(b"aad", &sealed), Err(CryptoError::WriteOnlyKey));
            assert_eq!(KeySet::generate(cipher).open_blob(b"aad", &sealed), Err(CryptoError::Unauthentic));
            let mut bad = sealed.clone();
            bad[3] ^= 1;
            assert!(full.open_blob(b"aad", &bad).is_err());
            // The meta key opens what both kinds share.
            assert_eq!(wo.open_meta(b"x", &full.seal_meta(b"x", b"index")).unwrap(), b"index");
        }
    }

    #[test]
    fn key_bytes_round_trip_and_write_only_bytes_hold_no_secret() {
        let full = KeySet::generate(Cipher::Aes256Gcm);
        let back = KeySet::from_bytes(&full.to_bytes()).unwrap();
        assert_eq!(back.kind(), KeyKind::Full);
        assert_eq!(back.id_key().id_of(b"x"), full.id_key().id_of(b"x"));
        let wo = full.write_only().to_bytes();
        assert_eq!(KeySet::from_bytes(&wo).unwrap().kind(), KeyKind::WriteOnly);
        assert!(wo[2 + 32 * 4..].iter().all(|&b| b == 0));
        let mut forged = full.to_bytes();
        forged[2 + 32 * 4 + 1] ^= 1; // not a clamped bit (X25519 ignores the low three bits of byte 0)
        assert!(KeySet::from_bytes(&forged).is_none(), "a secret that is not the public key's");
        assert_ne!(full.project_id_key("a").id_of(b"x"), full.project_id_key("b").id_of(b"x"));
        assert_ne!(full.id_key().id_of(b"x"), IdKey::UNKEYED.id_of(b"x"));
    }

    #[test]
    fn a_key_set_sharing_chunking_shares_only_the_id_and_chunker_keys() {
        let source = KeySet::generate(Cipher::Aes256Gcm);
        for from in [source.write_only(), KeySet::from_bytes(&source.to_bytes()).unwrap()] {
            let copy = KeySet::sharing_chunking_with(&from, Cipher::XChaCha20Poly1305);
            assert_eq!(copy.kind(), KeyKind::Full);
            assert_eq!(copy.cipher(), Cipher::XChaCha20Poly1305);
            assert_eq!(copy.id_key().id_of(b"x"), source.id_key().id_of(b"x"));
            assert_eq!(copy.project_id_key("p").id_of(b"x"), source.project_id_key("p").id_of(b"x"));
            assert_eq!(copy.chunker_key(), source.chunker_key());
            assert_eq!(copy.chunking_digest(), source.chunking_digest());
            // Fresh meta key and data key pair: neither opens the other's objects.
            assert!(copy.open_meta(b"a", &source.seal_meta(b"a", b"index")).is_err());
            assert!(source.open_meta(b"a", &copy.seal_meta(b"a", b"index")).is_err());
            assert!(copy.open_blob(b"a", &source.blob_sealer().seal(b"a", b"chunk")).is_err());
            assert!(source.open_blob(b"a", &copy.blob_sealer().seal(b"a", b"chunk")).is_err());
            let (a, b) = (source.to_bytes(), copy.to_bytes());
            assert_ne!(a[2 + 64..], b[2 + 64..], "meta key and data keys differ");
        }
        assert_ne!(KeySet::generate(Cipher::Aes256Gcm).chunking_digest(), source.chunking_digest());
        let digest = source.chunking_digest();
        let bytes = source.to_bytes();
        assert!(!bytes.windows(32).any(|w| w == digest), "the digest is none of the keys");
    }
}
