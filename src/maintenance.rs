//! Repository maintenance operations that are small enough to share a file:
//! `init` (create a repository from the chunking, compression, encryption and
//! dedup-scope choice, with its first key — or with another repository's
//! chunker parameters and chunking keys, `--copy-chunker-params-from`) and
//! `unlock` (remove stale, or all, lock objects; release those it may not delete).

use crate::backend::{Backend, LockMode, ObjectLock};
use crate::crypto::keyfile::{KdfParams, PasswordSource};
use crate::crypto::{Cipher, KeySet};
use crate::repository::config::{Config, DedupScope, DEFAULT_ZSTD_LEVEL};
use crate::repository::lock::LockRemoval;
use crate::repository::{NewKey, Repository};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;

/// The `imgarc init` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct InitOptions {
    /// Average chunk size (power of two, 4K..4M; K=1024, M=2^20) [default: 64K]
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "copy_chunker_params_from"))]
    pub chunk_size: Option<String>,
    /// Compression of chunk payloads: zstd:LEVEL (1..19) [default: zstd:3, or the source's with --copy-chunker-params-from]
    #[cfg_attr(feature = "clap", arg(long))]
    pub compression: Option<String>,
    /// Encrypt every object with this AEAD (fixed for the repository's life), or `none`: the v1 plaintext format
    /// [default: aes-256-gcm, or the source's with --copy-chunker-params-from]
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub encryption: Option<Encryption>,
    /// Which archives may share a chunk: the whole repository, or only those of one Glance project (needs encryption)
    /// [default: repository, or the source's with --copy-chunker-params-from]
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub dedup_scope: Option<DedupScope>,
    /// Cut and name chunks as this repository does (its chunker parameters and, both being encrypted, its chunker
    /// key and chunk id key), so `copy` between the two moves chunks without re-chunking; opened with the usual
    /// password sources unless --from-password-file
    #[cfg_attr(feature = "clap", arg(long, value_name = "REPO"))]
    pub copy_chunker_params_from: Option<String>,
    /// The clouds.yaml entry whose credentials open a swift: --copy-chunker-params-from repository
    #[cfg_attr(feature = "clap", arg(long, value_name = "CLOUD", requires = "copy_chunker_params_from"))]
    pub from_repo_cloud: Option<String>,
    /// Read the password of the --copy-chunker-params-from repository from this file (one trailing newline is
    /// ignored), when it differs from the new repository's
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE", requires = "copy_chunker_params_from"))]
    pub from_password_file: Option<std::path::PathBuf>,
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
    let avg = crate::util::parse_size(opts.chunk_size.as_deref().unwrap_or("64K"))?;
    let avg = u32::try_from(avg).context("chunk size too large")?;
    let level = opts.compression.as_deref().map_or(Ok(DEFAULT_ZSTD_LEVEL), parse_compression)?;
    let mut config = Config::new(avg, level)?.with_encryption(opts.encryption.unwrap_or(Encryption::DEFAULT).cipher());
    config.object_lock = object_lock(&*backend, opts)?;
    create(backend, config, opts.dedup_scope.unwrap_or_default(), None, passwords)
}

/// What a repository made by [`init_copying_chunker_params`] shares with its source.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkerParamsCopy {
    /// The source's location and repository id.
    pub repository: String,
    pub id: String,
    /// Whether the same bytes get the same chunk ids (and boundaries) in both
    /// repositories: their [`Repository::chunking_fingerprint`]s are equal.
    pub chunk_ids_match: bool,
    /// The source's keys the new repository shares: `id-key` and
    /// `chunker-key` when both are encrypted, else none.
    pub shared_keys: Vec<&'static str>,
    /// Why the chunk ids differ, when they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Creates a repository on `backend` that cuts chunks with `source`'s
/// chunker parameters and hole block size, and takes `source`'s compression,
/// encryption and dedup scope unless `opts` names them. When both are
/// encrypted it shares `source`'s id key and chunker key (any key kind of the
/// source holds them, a write-only one too), so the same bytes get the same
/// chunk ids in both; its meta key, data key pair, repository id and password
/// are its own. Encrypted on one side only, only the parameters can be shared:
/// keyed and unkeyed ids never match, and the returned copy says so.
pub fn init_copying_chunker_params(
    backend: Arc<dyn Backend>,
    opts: &InitOptions,
    source: &Repository,
    passwords: &dyn PasswordSource,
) -> Result<(Repository, ChunkerParamsCopy)> {
    if opts.chunk_size.is_some() {
        bail!("--chunk-size and --copy-chunker-params-from exclude each other: the chunk size is the source's");
    }
    let from = source.config();
    let level = opts.compression.as_deref().map_or(Ok(from.compression.level), parse_compression)?;
    let cipher = match opts.encryption {
        Some(e) => e.cipher(),
        None => from.cipher(),
    };
    let mut config = Config::new(from.chunker.avg_size, level)?.with_encryption(cipher);
    config.chunker = from.chunker;
    config.hole_block_size = from.hole_block_size;
    config.pack_target_size = from.pack_target_size;
    // Immutability is the target's own choice (an off-site copy is locked, its source need not be).
    config.object_lock = object_lock(&*backend, opts)?;
    // An unencrypted target cannot have the project scope; its ids differ from an encrypted source's anyway.
    let scope = opts.dedup_scope.unwrap_or(if cipher.is_some() { from.dedup_scope } else { DedupScope::Repository });
    let repo = create(backend, config, scope, source.keys().map(|k| &**k), passwords)?;
    let chunk_ids_match = repo.chunking_fingerprint() == source.chunking_fingerprint();
    let both_encrypted = repo.keys().is_some() && source.keys().is_some();
    let reason = (!chunk_ids_match).then(|| match (source.keys().is_some(), repo.keys().is_some()) {
        (true, false) => "the source is encrypted (keyed chunk ids) and the new repository is not (unkeyed ids)".to_string(),
        (false, true) => "the source is not encrypted (unkeyed chunk ids) and the new repository is (keyed ids)".to_string(),
        _ if repo.config().dedup_scope != from.dedup_scope => format!(
            "the dedup scopes differ ({} here, {} in the source): chunk ids are keyed per scope",
            scope_name(repo.config().dedup_scope),
            scope_name(from.dedup_scope)
        ),
        _ => "the chunking parameters differ".to_string(),
    });
    let copy = ChunkerParamsCopy {
        repository: source.location(),
        id: from.id.clone(),
        chunk_ids_match,
        shared_keys: if both_encrypted { vec!["id-key", "chunker-key"] } else { vec![] },
        reason,
    };
    Ok((repo, copy))
}

fn scope_name(scope: DedupScope) -> &'static str {
    match scope {
        DedupScope::Repository => "repository",
        DedupScope::Project => "project",
    }
}

/// The one creation path of both inits: the scope check, the emptiness check
/// before any password is asked, then the repository with its first key
/// (master keys sharing `chunking_from`'s id and chunker keys when given).
fn create(
    backend: Arc<dyn Backend>,
    mut config: Config,
    scope: DedupScope,
    chunking_from: Option<&KeySet>,
    passwords: &dyn PasswordSource,
) -> Result<Repository> {
    if scope == DedupScope::Project && config.cipher().is_none() {
        bail!("--dedup-scope project needs an encrypted repository (chunk ids keyed per project); drop --encryption none");
    }
    config.dedup_scope = scope;
    if config.cipher().is_none() {
        return Repository::init(backend, config);
    }
    // Refuse an occupied location before asking for a password that would be typed for nothing.
    Repository::ensure_creatable(&backend)?;
    let password = passwords.password().context("the first key of the new encrypted repository needs a password")?;
    let key = NewKey { password: &password, kdf: KdfParams::for_new_keys(), label: "" };
    match chunking_from {
        Some(source) => Repository::init_encrypted_sharing_chunking(backend, config, source, &key),
        None => Repository::init_encrypted(backend, config, &key),
    }
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
    /// Keys of the locks these credentials may not delete, released by a release record
    /// instead: no reader counts them any more; `unlock` with credentials that may delete
    /// removes them.
    pub released: Vec<String>,
    /// Lock objects no reader counts any more (released, or expired long ago) that were deleted.
    pub tidied: usize,
    /// Active locks left in place: `key (purpose on host pid N)`.
    pub kept: Vec<String>,
}

/// Removes stale locks (every lock with `all`): deletes them, or, where the credentials may
/// not delete, releases them; then deletes what earlier releases left behind, where it may.
pub fn unlock(repo: &Repository, opts: &UnlockOptions) -> Result<UnlockReport> {
    let mut report = UnlockReport::default();
    for (key, info) in repo.list_locks()? {
        if opts.all || info.is_stale() {
            match repo.remove_lock(&key, &info)? {
                LockRemoval::Deleted => report.removed.push(key),
                LockRemoval::Released => report.released.push(key),
            }
        } else {
            report.kept.push(format!("{key} ({} on {} pid {})", info.what(), info.hostname, info.pid));
        }
    }
    report.tidied = repo.tidy_locks()?;
    Ok(report)
}
