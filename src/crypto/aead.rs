//! The two AEADs a repository may use (fixed per repository at `init`), behind
//! one sealed layout: `nonce ‖ ciphertext ‖ tag`. Nonces are random:
//! 24 bytes for XChaCha20-Poly1305 (no bound worth stating), 12 bytes for
//! AES-256-GCM, whose keys each seal far fewer than the 2^32 messages NIST
//! SP 800-38D allows under random nonces (format-spec/encryption.md, "Nonces").

use super::CryptoError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

pub const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Cipher {
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn nonce_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => 12,
            Cipher::XChaCha20Poly1305 => 24,
        }
    }

    /// Bytes a sealed message has beyond its plaintext.
    pub fn overhead(self) -> usize {
        self.nonce_len() + TAG_LEN
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A 256-bit key prepared for one cipher. The key bytes are not kept: both
/// libraries hold their own schedule and clear it when dropped.
pub struct AeadKey {
    cipher: Cipher,
    inner: Inner,
}

enum Inner {
    Aes(LessSafeKey),
    XChaCha(Box<XChaCha20Poly1305>),
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({}, ***)", self.cipher)
    }
}

impl AeadKey {
    pub fn new(cipher: Cipher, key: &[u8; 32]) -> AeadKey {
        let inner = match cipher {
            Cipher::Aes256Gcm => Inner::Aes(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))),
            Cipher::XChaCha20Poly1305 => Inner::XChaCha(Box::new(XChaCha20Poly1305::new(key.into()))),
        };
        AeadKey { cipher, inner }
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// `nonce ‖ ciphertext ‖ tag`, with a fresh random nonce.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let n = self.cipher.nonce_len();
        let mut out = Vec::with_capacity(n + plain.len() + TAG_LEN);
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce[..n]);
        out.extend_from_slice(&nonce[..n]);
        match &self.inner {
            Inner::Aes(k) => {
                out.extend_from_slice(plain);
                let nonce = Nonce::try_assume_unique_for_key(&nonce[..n]).expect("a 12-byte nonce");
                let tag = k.seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[n..]).expect("AES-GCM seals any length we store");
                out.extend_from_slice(tag.as_ref());
            }
            Inner::XChaCha(k) => {
                let ct = k
                    .encrypt(XNonce::from_slice(&nonce[..n]), Payload { msg: plain, aad })
                    .expect("XChaCha20-Poly1305 seals any length we store");
                out.extend_from_slice(&ct);
            }
        }
        out
    }

    /// The plaintext of `nonce ‖ ciphertext ‖ tag`, if it was sealed under this key with this `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let n = self.cipher.nonce_len();
        if sealed.len() < n + TAG_LEN {
            return Err(CryptoError::Unauthentic);
        }
        let (nonce, body) = sealed.split_at(n);
        match &self.inner {
            Inner::Aes(k) => {
                let mut buf = body.to_vec();
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Unauthentic)?;
                let len = k.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| CryptoError::Unauthentic)?.len();
                buf.truncate(len);
                Ok(buf)
            }
            Inner::XChaCha(k) => k.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad }).map_err(|_| CryptoError::Unauthentic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ciphers_round_trip_and_reject_any_change() {
        for cipher in Cipher::ALL {
            let key = AeadKey::new(cipher, &[7; 32]);
            let sealed = key.seal(b"aad", b"hello world");
            assert_eq!(sealed.len(), 11 + cipher.overhead());
            assert_eq!(key.open(b"aad", &sealed).unwrap(), b"hello world");
            assert_eq!(key.open(b"other aad", &sealed), Err(CryptoError::Unauthentic));
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 1;
                assert_eq!(key.open(b"aad", &bad), Err(CryptoError::Unauthentic), "{cipher}: byte {i}");
            }
            assert_eq!(key.open(b"aad", &sealed[..sealed.len() - 1]), Err(CryptoError::Unauthentic));
            assert_eq!(key.open(b"aad", &[]), Err(CryptoError::Unauthentic));
            assert_eq!(AeadKey::new(cipher, &[8; 32]).open(b"aad", &sealed), Err(CryptoError::Unauthentic));
            assert_ne!(key.seal(b"aad", b"hello world"), sealed, "nonces are fresh");
        }
    }
}
