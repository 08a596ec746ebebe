//! Key objects (`keys/<id>`): the master [`KeySet`] wrapped under a password.
//!
//! The wrapping key is Argon2id(password, salt) with the parameters the
//! object records; the wrap is XChaCha20-Poly1305 over
//! `repository id ‖ BLAKE3(config as stored) ‖ KeySet bytes`, with the
//! object's visible fields as associated data. So a key object opens only
//! with its password, only for its repository, and only while the `config` is
//! byte for byte the one it was made with: the config is authenticated
//! through every key object.

use super::aead::{AeadKey, Cipher};
use super::keyset::{KeyKind, KeySet, KEYSET_BYTES};
use crate::ids::Id;
use crate::secret::Secret;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Largest key object a reader accepts.
pub const MAX_KEYFILE_BYTES: u64 = 64 << 10;
const WRAP_AAD_CONTEXT: &str = "imgarc key object v1";

/// The password did not open any key of the repository (exit code 12).
#[derive(Debug, thiserror::Error)]
#[error("wrong password: no key of the repository at {location} opens with it")]
pub struct WrongPassword {
    pub location: String,
}

/// Where the repository's password comes from, asked at most once and only
/// when the repository is encrypted.
pub trait PasswordSource {
    fn password(&self) -> Result<Secret>;
}

/// No password: opening an encrypted repository fails, naming what to pass.
pub struct NoPassword;

impl PasswordSource for NoPassword {
    fn password(&self) -> Result<Secret> {
        bail!("the repository is encrypted and no password was given")
    }
}

impl PasswordSource for Secret {
    fn password(&self) -> Result<Secret> {
        Ok(self.clone())
    }
}

/// Argon2id parameters, recorded per key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// m = 64 MiB, t = 3, p = 1 (format-spec/encryption.md, "Passwords").
    pub const DEFAULT: KdfParams = KdfParams { m_kib: 64 * 1024, t: 3, p: 1 };
    /// The parameters new key objects get (`init`, `key add`, `key passwd`):
    /// [`KdfParams::DEFAULT`]. Only a build with the `test-hooks` feature reads
    /// `IMGARC_TEST_KDF=fast` (m = 1 MiB, t = 1), so that the hundreds of CLI
    /// invocations of the test suite do not each spend an Argon2id unwrap; a
    /// release build has no such switch. A reader always uses what the key
    /// object records, so keys made either way open everywhere.
    pub fn for_new_keys() -> KdfParams {
        #[cfg(feature = "test-hooks")]
        if std::env::var("IMGARC_TEST_KDF").as_deref() == Ok("fast") {
            return KdfParams { m_kib: 1024, t: 1, p: 1 };
        }
        KdfParams::DEFAULT
    }

    /// Bounds a reader accepts, so a planted key object cannot make `open`
    /// allocate more than 1 GiB or spin for minutes: 1 GiB and 10 passes are
    /// 16× and 3⅓× the defaults, a few seconds here at worst.
    const MAX_M_KIB: u32 = 1 << 20;
    const MAX_T: u32 = 10;

    fn validate(&self) -> Result<()> {
        ensure!((8 * self.p..=Self::MAX_M_KIB).contains(&self.m_kib), "argon2id memory {} KiB out of range", self.m_kib);
        ensure!((1..=Self::MAX_T).contains(&self.t), "argon2id time cost {} out of range", self.t);
        ensure!((1..=16).contains(&self.p), "argon2id parallelism {} out of range", self.p);
        Ok(())
    }

    fn derive(&self, password: &Secret, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.validate()?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|e| anyhow::anyhow!("argon2id parameters: {e}"))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon.hash_password_into(password.expose().as_bytes(), salt, &mut out[..]).map_err(|e| anyhow::anyhow!("argon2id: {e}"))?;
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub kind: KeyKind,
    #[serde(default)]
    pub label: String,
    pub created: String,
    pub hostname: String,
    /// Always `argon2id` (version 0x13).
    pub kdf: String,
    pub kdf_params: KdfParams,
    /// 16 random bytes, hex.
    pub salt: String,
    /// Always `xchacha20-poly1305`: nonce ‖ ciphertext ‖ tag, hex.
    pub wrap: String,
    pub sealed: String,
}

impl KeyFile {
    /// Wraps `keys` (or their write-only part, for `kind` write-only) under `password`.
    pub fn create(
        keys: &KeySet,
        kind: KeyKind,
        password: &Secret,
        params: KdfParams,
        label: &str,
        repository_id: &str,
        config_bytes: &[u8],
    ) -> Result<KeyFile> {
        ensure!(!label.contains('\0') && label.len() <= 256, "a key label is at most 256 characters and has no NUL");
        let salt: [u8; 16] = rand::random();
        let mut file = KeyFile {
            version: 1,
            kind,
            label: label.to_string(),
            created: crate::util::now_rfc3339(),
            hostname: crate::util::hostname(),
            kdf: "argon2id".into(),
            kdf_params: params,
            salt: hex::encode(salt),
            wrap: Cipher::XChaCha20Poly1305.name().into(),
            sealed: String::new(),
        };
        let wrapped = match kind {
            KeyKind::Full => keys.to_bytes(),
            KeyKind::WriteOnly => keys.write_only().to_bytes(),
        };
        let mut plain = Zeroizing::new(Vec::with_capacity(64 + KEYSET_BYTES));
        plain.extend_from_slice(&hex::decode(repository_id).context("repository id")?);
        plain.extend_from_slice(&Id::of(config_bytes).0);
        plain.extend_from_slice(&wrapped);
        let kek = params.derive(password, &salt)?;
        file.sealed = hex::encode(AeadKey::new(Cipher::XChaCha20Poly1305, &kek).seal(&file.aad(), &plain));
        Ok(file)
    }

    /// The visible fields, authenticated as the wrap's associated data.
    fn aad(&self) -> Vec<u8> {
        let p = &self.kdf_params;
        format!(
            "{WRAP_AAD_CONTEXT}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.version,
            self.kind.name(),
            self.label,
            self.created,
            self.hostname,
            self.kdf,
            p.m_kib,
            p.t,
            p.p,
            self.salt,
            self.wrap
        )
        .into_bytes()
    }

    /// Unwraps with `password`: `Ok(None)` if the password is not this key's.
    /// An error if it opens but belongs to another repository or config.
    pub fn open(&self, password: &Secret, repository_id: &str, config_bytes: &[u8]) -> Result<Option<KeySet>> {
        ensure!(self.version == 1 && self.kdf == "argon2id" && self.wrap == Cipher::XChaCha20Poly1305.name(), "unsupported key object");
        let salt = hex::decode(&self.salt).context("salt")?;
        let sealed = hex::decode(&self.sealed).context("sealed")?;
        let kek = self.kdf_params.derive(password, &salt)?;
        let Ok(plain) = AeadKey::new(Cipher::XChaCha20Poly1305, &kek).open(&self.aad(), &sealed) else {
            return Ok(None);
        };
        let plain = Zeroizing::new(plain);
        ensure!(plain.len() == 64 + KEYSET_BYTES, "key object holds {} bytes, expected {}", plain.len(), 64 + KEYSET_BYTES);
        ensure!(hex::encode(&plain[..32]) == repository_id, "the key belongs to another repository");
        ensure!(plain[32..64] == Id::of(config_bytes).0, "the repository config was changed after this key was made");
        let keys = KeySet::from_bytes(&plain[64..]).context("the key's material is malformed")?;
        ensure!(keys.kind() == self.kind, "the key object says {} but holds a {} key", self.kind.name(), keys.kind().name());
        Ok(Some(keys))
    }
}

impl crate::repository::file::RepoFile for KeyFile {
    const PREFIX: &'static str = "keys/";
    const KIND: &'static str = "key";
    const MAX_BYTES: u64 = MAX_KEYFILE_BYTES;
    const NAMING: crate::repository::file::Naming = crate::repository::file::Naming::ContentId;
    const NEEDS_LOCK: bool = false;
    const SEALED: bool = false;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }

    fn decode(bytes: &[u8], _limits: &crate::repository::pack::BlobLimits) -> Result<Self> {
        serde_json::from_slice(bytes).context("key object is malformed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    #[test]
    fn a_key_opens_with_its_password_repository_and_config_only() {
        let keys = KeySet::generate(Cipher::Aes256Gcm);
        let id = "ab".repeat(32);
        let pw = Secret::new("correct horse");
        let file = KeyFile::create(&keys, KeyKind::Full, &pw, FAST, "admin", &id, b"config").unwrap();
        let opened = file.open(&pw, &id, b"config").unwrap().unwrap();
        assert_eq!(opened.id_key().id_of(b"x"), keys.id_key().id_of(b"x"));
        assert!(file.open(&Secret::new("wrong"), &id, b"config").unwrap().is_none());
        assert!(file.open(&pw, &"cd".repeat(32), b"config").is_err());
        assert!(file.open(&pw, &id, b"config changed").is_err());
        let mut relabelled = file.clone();
        relabelled.label = "someone else".into();
        assert!(relabelled.open(&pw, &id, b"config").unwrap().is_none(), "visible fields are authenticated");
        let json = String::from_utf8(crate::repository::file::RepoFile::encode(&file).unwrap()).unwrap();
        assert!(!json.contains("correct horse"));
        let wo = KeyFile::create(&keys, KeyKind::WriteOnly, &pw, FAST, "", &id, b"config").unwrap();
        assert_eq!(wo.open(&pw, &id, b"config").unwrap().unwrap().kind(), KeyKind::WriteOnly);
    }

    #[test]
    fn planted_kdf_parameters_are_refused_before_allocating() {
        let keys = KeySet::generate(Cipher::Aes256Gcm);
        let id = "ab".repeat(32);
        let mut file = KeyFile::create(&keys, KeyKind::Full, &Secret::new("pw"), FAST, "", &id, b"c").unwrap();
        file.kdf_params.m_kib = u32::MAX;
        assert!(file.open(&Secret::new("pw"), &id, b"c").is_err());
    }
}

/// Timings behind the default cipher and the Argon2id cost (format-spec/encryption.md §2):
/// `cargo test --release --lib crypto::keyfile::measure -- --ignored --nocapture`. Only a
/// release build gives meaningful figures: the RustCrypto ciphers are generic, so their
/// code is instantiated in this crate, at its (dev: unoptimized) level.
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::Instant;

    #[test]
    #[ignore = "a measurement, not a check: run by hand"]
    fn measure_ciphers_and_kdf() {
        let blob = vec![0x5au8; 64 << 10];
        for cipher in Cipher::ALL {
            let key = AeadKey::new(cipher, &[7; 32]);
            let rounds = 4000;
            let start = Instant::now();
            for _ in 0..rounds {
                let sealed = key.seal(b"aad", &blob);
                assert_eq!(key.open(b"aad", &sealed).unwrap().len(), blob.len());
            }
            let secs = start.elapsed().as_secs_f64();
            let mib = (rounds * blob.len()) as f64 / (1 << 20) as f64;
            println!("{cipher}: seal+open of 64 KiB blobs: {:.0} MiB/s ({:.1} µs per blob)", mib / secs, secs * 1e6 / rounds as f64);
        }
        let pw = Secret::new("measure");
        for t in [2, 3] {
            let params = KdfParams { m_kib: 64 * 1024, t, p: 1 };
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                params.derive(&pw, &[1u8; 16]).unwrap();
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!("argon2id m=64MiB t={t} p=1: {:.3} s (best of 5)", best);
        }
    }
}
