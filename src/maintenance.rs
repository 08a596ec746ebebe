//! Repository maintenance operations that are small enough to share a file:
//! `init` (create a repository from the chunking and compression choice) and
//! `unlock` (remove stale, or all, lock objects).

use crate::backend::Backend;
use crate::crypto::keyfile::{KdfParams, PasswordSource};
use crate::crypto::Cipher;
use crate::repository::{config::Config, NewKey, Repository};
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
    /// Authenticated encryption of every object: aes-256-gcm, xchacha20-poly1305 or none
    #[cfg_attr(feature = "clap", arg(long, default_value = "none"))]
    pub encryption: String,
}

/// `zstd:LEVEL`: the zstd level.
pub fn parse_compression(s: &str) -> Result<i32> {
    let Some(level) = s.strip_prefix("zstd:") else {
        bail!("compression {s:?}: expected zstd:LEVEL, e.g. zstd:3");
    };
    level.parse().with_context(|| format!("compression {s:?}: LEVEL must be a number"))
}

/// Creates a repository on `backend`; an encrypted one's first key is wrapped under `password`.
pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions, password: &dyn PasswordSource) -> Result<Repository> {
    let avg = crate::util::parse_size(&opts.chunk_size)?;
    let avg = u32::try_from(avg).context("chunk size too large")?;
    let config = Config::new(avg, parse_compression(&opts.compression)?)?;
    if opts.encryption == "none" {
        return Repository::init(backend, config);
    }
    let cipher = Cipher::from_name(&opts.encryption)
        .with_context(|| format!("encryption {:?}: expected aes-256-gcm, xchacha20-poly1305 or none", opts.encryption))?;
    let password = password.password()?;
    Repository::init_encrypted(
        backend,
        config.with_encryption(Some(cipher)),
        &NewKey { password: &password, kdf: KdfParams::DEFAULT, label: "" },
    )
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
