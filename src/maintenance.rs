//! Repository maintenance operations that are small enough to share a file:
//! `init` (create a repository from the chunking, compression, encryption and
//! dedup-scope choice, with its first key) and
//! `unlock` (remove stale, or all, lock objects).

use crate::backend::{Backend, LockMode, ObjectLock};
use crate::crypto::keyfile::{KdfParams, PasswordSource};
use crate::crypto::Cipher;
use crate::repository::config::{Config, DedupScope};
use crate::repository::{NewKey, Repository};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;

/// The `imgarc init` flags (each doc line is its `--help`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct InitOptions {
    /// Average chunk size (power of two, 4K..4M; K=1024, M=2^20)
    #[cfg_attr(feature = "clap", arg(long, default_value = "64K"))]
    pub chunk_size: String,
    /// Compression of chunk payloads: zstd:LEVEL (1..19)
    #[cfg_attr(feature = "clap", arg(long, default_value = "zstd:3"))]
    pub compression: String,
    /// Encrypt every object with this AEAD (fixed for the repository's life), or `none`: the v1 plaintext format
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = Encryption::DEFAULT))]
    pub encryption: Encryption,
    /// Which archives may share a chunk: the whole repository, or only those of one Glance project (needs encryption)
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = DedupScope::Repository))]
    pub dedup_scope: DedupScope,
    /// Keep every pack, index object and snapshot immutable this long after it is written (S3 Object Lock: e.g. 30d, 36h, 2m, 20s; m = minutes); prune extends it while a snapshot needs the object
    #[cfg_attr(feature = "clap", arg(long, value_name = "PERIOD"))]
    pub object_lock: Option<String>,
    /// Object Lock mode: compliance (nobody can delete or shorten early) or governance (a user with s3:BypassGovernanceRetention can)
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = LockMode::Compliance, requires = "object_lock"))]
    pub object_lock_mode: LockMode,
}

/// `init --encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Encryption {
    #[cfg_attr(feature = "clap", value(name = "aes-256-gcm"))]
    Aes256Gcm,
    #[cfg_attr(feature = "clap", value(name = "xchacha20-poly1305"))]
    XChaCha20Poly1305,
    None,
}

impl Encryption {
    /// AES-256-GCM: measured faster here (format-spec/encryption.md §2, "Choosing the cipher").
    pub const DEFAULT: Encryption = Encryption::Aes256Gcm;

    pub fn cipher(self) -> Option<Cipher> {
        match self {
            Encryption::Aes256Gcm => Some(Cipher::Aes256Gcm),
            Encryption::XChaCha20Poly1305 => Some(Cipher::XChaCha20Poly1305),
            Encryption::None => None,
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cipher().map_or("none", |c| c.name()))
    }
}

/// `zstd:LEVEL`: the zstd level.
pub fn parse_compression(s: &str) -> Result<i32> {
    let Some(level) = s.strip_prefix("zstd:") else {
        bail!("compression {s:?}: expected zstd:LEVEL, e.g. zstd:3");
    };
    level.parse().with_context(|| format!("compression {s:?}: LEVEL must be a number"))
}

/// Creates a repository on `backend`. An encrypted one gets its first (full)
/// key under the password `passwords` gives, asked only then.
pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions, passwords: &dyn PasswordSource) -> Result<Repository> {
    let avg = crate::util::parse_size(&opts.chunk_size)?;
    let avg = u32::try_from(avg).context("chunk size too large")?;
    let mut config = Config::new(avg, parse_compression(&opts.compression)?)?.with_encryption(opts.encryption.cipher());
    if opts.dedup_scope == DedupScope::Project && config.cipher().is_none() {
        bail!("--dedup-scope project needs an encrypted repository (chunk ids keyed per project); drop --encryption none");
    }
    config.dedup_scope = opts.dedup_scope;
    config.object_lock = object_lock(&*backend, opts)?;
    if config.cipher().is_none() {
        return Repository::init(backend, config);
    }
    // Refuse an occupied location before asking for a password that would be typed for nothing.
    Repository::ensure_creatable(&backend)?;
    let password = passwords.password().context("the first key of the new encrypted repository needs a password")?;
    Repository::init_encrypted(backend, config, &NewKey { password: &password, kdf: KdfParams::for_new_keys(), label: "" })
}

/// `--object-lock PERIOD`: refused unless the bucket enforces it (Object Lock enabled).
fn object_lock(backend: &dyn Backend, opts: &InitOptions) -> Result<Option<ObjectLock>> {
    let Some(period) = &opts.object_lock else { return Ok(None) };
    let retention_seconds = ObjectLock::parse_period(period)?;
    backend.object_lock_enabled().with_context(|| format!("init --object-lock {period}"))?;
    Ok(Some(ObjectLock { mode: opts.object_lock_mode, retention_seconds }))
}

/// The `imgarc unlock` flags.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct UnlockOptions {
    /// Remove every lock, not only stale ones
    #[cfg_attr(feature = "clap", arg(long))]
    pub all: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UnlockReport {
    /// Keys of the lock objects removed.
    pub removed: Vec<String>,
    /// Active locks left in place: `key (purpose on host pid N)`.
    pub kept: Vec<String>,
}

/// Removes stale locks (every lock with `all`).
pub fn unlock(repo: &Repository, opts: &UnlockOptions) -> Result<UnlockReport> {
    let mut report = UnlockReport::default();
    for (key, info) in repo.list_locks()? {
        if opts.all || info.is_stale() {
            repo.delete_lock(&key)?;
            report.removed.push(key);
        } else {
            report.kept.push(format!("{key} ({} on {} pid {})", info.purpose, info.hostname, info.pid));
        }
    }
    Ok(report)
}
