//! Repository maintenance operations that are small enough to share a file:
//! `init` (create a repository from the chunking and compression choice) and
//! `unlock` (remove stale, or all, lock objects).

use crate::backend::Backend;
use crate::repository::{config::Config, Repository};
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
}

/// `zstd:LEVEL`: the zstd level.
pub fn parse_compression(s: &str) -> Result<i32> {
    let Some(level) = s.strip_prefix("zstd:") else {
        bail!("compression {s:?}: expected zstd:LEVEL, e.g. zstd:3");
    };
    level.parse().with_context(|| format!("compression {s:?}: LEVEL must be a number"))
}

/// Creates a repository on `backend`.
pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions) -> Result<Repository> {
    let avg = crate::util::parse_size(&opts.chunk_size)?;
    let avg = u32::try_from(avg).context("chunk size too large")?;
    let config = Config::new(avg, parse_compression(&opts.compression)?)?;
    Repository::init(backend, config)
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
