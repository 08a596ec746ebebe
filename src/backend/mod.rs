//! Storage backends: where repository objects live.
//!
//! A backend stores whole, write-once objects under slash-separated keys
//! (`config`, `data/ab/abcd…`, `index/…`, `snapshots/…`, `locks/…`). The trait is
//! shaped for object stores: no rename, no append, no compare-and-swap, and
//! listings may lag behind writes. Everything the repository format needs is
//! expressed with these five operations, so an S3 or Swift backend fits
//! without a format change. Decorators (retry, dry-run, rate limit) wrap a
//! `Box<dyn Backend>` rather than special-casing callers.

#[cfg(test)]
pub(crate) mod faults;
pub mod local;
pub(crate) mod ratelimit;
pub mod retry;
pub mod s3;
pub mod s3_lock;
pub mod swift;
pub mod url;

use std::fmt;

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key, e.g. `data/ab/ab12…`.
    pub key: String,
    pub size: u64,
}

/// Errors a backend reports. `NotFound` is separate because callers act on it
/// (a missing pack is damage, a missing lock is fine).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {key}: {message}")]
    Other { op: &'static str, key: String, message: String },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound(_))
    }

    /// The store refused the request for these credentials (HTTP 401/403, or a file-system
    /// permission error): asking again will not help.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, BackendError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Refuses a key with an empty, `.` or `..` segment before it becomes a path
/// or a URL. URL parsing removes dot segments (`%2E%2E` included, per the
/// WHATWG URL rules), so such a key would address an object outside the
/// bucket, container or directory; no encoding can make it safe. The
/// repository's full key grammar is `repository::keys`; this is the floor
/// every backend keeps even when used on its own.
pub fn check_key_segments(op: &'static str, key: &str) -> BackendResult<()> {
    if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(BackendError::Other { op, key: format!("{key:?}"), message: "invalid object key (empty, '.' or '..' segment)".into() });
    }
    Ok(())
}

/// Whether an error, however wrapped in context, is a backend's `NotFound`.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<BackendError>().is_some_and(|b| b.is_not_found()))
}

/// Whether a backend error, however wrapped in context, is a refusal for these credentials.
pub fn is_permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<BackendError>().is_some_and(|b| b.is_permission_denied()))
}

/// What [`Backend::can_delete`] found by trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletePermission {
    Allowed,
    /// Refused: what refused, for whom (an access key id or a path, never a secret).
    Denied(String),
}

/// The key [`Backend::can_delete`] deletes. Nothing ever writes it, so an allowed DELETE removes
/// nothing; one fixed name (not a random one) so that in a versioned bucket the delete markers
/// the probes leave pile up on this one key.
pub const DELETE_PROBE_KEY: &str = "locks/delete-probe";

/// A store of immutable whole objects.
///
/// Contract every implementation keeps:
/// - `put` makes the object visible atomically: a reader sees all of it or
///   nothing (never a prefix), even if the writer is killed mid-way.
/// - Objects are never modified in place; the repository writes a key at most
///   once with given content (content-addressed or random names), so a
///   repeated `put` of the same key with the same bytes is harmless.
/// - `list(prefix)` returns every object whose key starts with `prefix`
///   (recursively); it may miss very recent writes on eventually consistent
///   stores, so callers never conclude absence from a listing alone.
/// - `delete` of a missing object succeeds.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A human-readable location, for messages (`/srv/repo`, `s3:https://…/bucket`).
    /// Never contains credentials.
    fn location(&self) -> String;
    /// How many requests this store serves well at once: readers that fetch many
    /// objects or ranges (restore, catch-up) issue up to this many in parallel
    /// ([`with_request_pool`]). A local directory: the cores (reads are page-cache
    /// copies); an object store: [`crate::util::fetch_threads`] (each request
    /// waits on the network). Decorators forward it.
    fn request_parallelism(&self) -> usize {
        cores()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()>;
    fn get(&self, key: &str) -> BackendResult<Vec<u8>>;
    /// `length` bytes from `offset`; a range past the end is an error.
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>>;
    /// Size of an object, or `NotFound`.
    fn size(&self, key: &str) -> BackendResult<u64>;
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>>;
    fn delete(&self, key: &str) -> BackendResult<()>;

    // ---- The DELETE-permission probe (forget and prune refuse to start without the permission).

    /// Whether these credentials may delete here, found by deleting [`DELETE_PROBE_KEY`]: a
    /// refusal is `Denied`, any other failure an error. Decorators forward it to the backend
    /// they wrap; backends override it to say in their own terms what refused.
    fn can_delete(&self) -> BackendResult<DeletePermission> {
        match self.delete(DELETE_PROBE_KEY) {
            Ok(()) => Ok(DeletePermission::Allowed),
            Err(e) if e.is_permission_denied() => Ok(DeletePermission::Denied(format!("DELETE is refused at {}: {e}", self.location()))),
            Err(e) => Err(e),
        }
    }
    // ---- Object Lock (format-spec/object-lock.md). Only S3 implements these; the
    // defaults say the backend cannot enforce immutability. Decorators forward them all.

    /// Whether the store can keep objects immutable until a date (S3: the bucket has
    /// Object Lock enabled). `Err` names why not ("cannot enforce immutability: …").
    fn object_lock_enabled(&self) -> BackendResult<()> {
        Err(not_enforced("object_lock_enabled", &self.location()))
    }
    /// From now on `put` writes every key [`ObjectLock::retains`] with a retain-until
    /// date of now + the period (`None`: plain writes, the default).
    fn set_object_lock(&self, lock: Option<ObjectLock>) -> BackendResult<()> {
        match lock {
            None => Ok(()),
            Some(_) => Err(not_enforced("set_object_lock", &self.location())),
        }
    }
    /// The retention of one version of `key` (`None` version: the current one);
    /// `Ok(None)` when it has none.
    fn retention(&self, key: &str, _version: Option<&str>) -> BackendResult<Option<Retention>> {
        Err(not_enforced_key("retention", key))
    }
    /// Moves the retain-until date of one version of `key` later (never earlier).
    fn extend_retention(&self, key: &str, _version: Option<&str>, _retention: Retention) -> BackendResult<()> {
        Err(not_enforced_key("extend_retention", key))
    }
    /// Every version and delete marker of every key under `prefix`.
    fn list_versions(&self, prefix: &str) -> BackendResult<Vec<ObjectVersion>> {
        Err(not_enforced_key("list_versions", prefix))
    }
    /// Removes one version (or delete marker) for good; refused by the store while it is retained.
    fn delete_version(&self, key: &str, _version: &str) -> BackendResult<()> {
        Err(not_enforced_key("delete_version", key))
    }
}

/// How objects are locked: S3 Object Lock's mode and the retention period of each
/// write. Stored in the repository `config` as `object_lock` (absent: no lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// Retention of each write, in seconds (`init --object-lock 30d`).
    pub retention_seconds: u64,
}

/// S3 Object Lock modes. COMPLIANCE (the default): nobody, root included, can delete
/// or shorten before the date. GOVERNANCE: a user with `s3:BypassGovernanceRetention`
/// can; imgarc never sends the bypass header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LockMode {
    #[default]
    #[cfg_attr(feature = "clap", value(name = "compliance"))]
    Compliance,
    #[cfg_attr(feature = "clap", value(name = "governance"))]
    Governance,
}

impl LockMode {
    /// The S3 header and XML spelling.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
    pub fn from_s3(s: &str) -> Option<LockMode> {
        match s {
            "COMPLIANCE" => Some(LockMode::Compliance),
            "GOVERNANCE" => Some(LockMode::Governance),
            _ => None,
        }
    }
}

impl ObjectLock {
    /// Keys written with retention: everything the archive's data depends on
    /// (config, keys/, data/, index/, snapshots/). Locks, prune marks and upstream
    /// records are mutable bookkeeping and are written without it.
    pub fn retains(key: &str) -> bool {
        key == "config" || ["keys/", "data/", "index/", "snapshots/"].iter().any(|p| key.starts_with(p))
    }
    pub fn period(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.retention_seconds).unwrap_or(i64::MAX / 1000))
    }
    /// The retention a write made now gets.
    pub fn from_now(&self) -> Retention {
        Retention { mode: self.mode, until: chrono::Utc::now() + self.period() }
    }
    /// `30d`, `36h`, `2m`, `20s`, `1d12h`: the grace-period syntax of prune (s, m = minutes, h, d),
    /// more than zero and at most 100 years.
    pub fn parse_period(s: &str) -> anyhow::Result<u64> {
        let d = crate::prune::parse_grace(s).map_err(|e| anyhow::anyhow!("object lock period: {e:#}"))?;
        let secs = u64::try_from(d.num_seconds()).unwrap_or(0);
        if secs == 0 {
            anyhow::bail!("object lock period {s:?} must be longer than zero, e.g. 30d, 36h, 2m or 20s");
        }
        // S3 servers refuse dates centuries away; nobody means that.
        if secs > 100 * 365 * 86_400 {
            anyhow::bail!("object lock period {s:?} is longer than 100 years");
        }
        Ok(secs)
    }
}

/// One object version's lock: its mode and retain-until date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// One version (or delete marker) as ListObjectVersions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    /// The current version of its key (a current delete marker hides the key).
    pub is_latest: bool,
    pub delete_marker: bool,
    pub size: u64,
}

fn not_enforced(op: &'static str, location: &str) -> BackendError {
    BackendError::Other {
        op,
        key: location.to_string(),
        message: "cannot enforce immutability: this backend has no object lock (only an S3 bucket with Object Lock enabled has)".into(),
    }
}

fn not_enforced_key(op: &'static str, key: &str) -> BackendError {
    BackendError::Other { op, key: key.to_string(), message: "not supported: this backend has no object versions or retention".into() }
}

/// Forwards the Object Lock methods of [`Backend`] to `self.$inner` (decorators that
/// neither retry nor limit them).
macro_rules! forward_object_lock {
    ($inner:ident) => {
        fn object_lock_enabled(&self) -> $crate::backend::BackendResult<()> {
            self.$inner.object_lock_enabled()
        }
        fn set_object_lock(&self, lock: Option<$crate::backend::ObjectLock>) -> $crate::backend::BackendResult<()> {
            self.$inner.set_object_lock(lock)
        }
        fn retention(&self, key: &str, version: Option<&str>) -> $crate::backend::BackendResult<Option<$crate::backend::Retention>> {
            self.$inner.retention(key, version)
        }
        fn extend_retention(&self, key: &str, version: Option<&str>, r: $crate::backend::Retention) -> $crate::backend::BackendResult<()> {
            self.$inner.extend_retention(key, version, r)
        }
        fn list_versions(&self, prefix: &str) -> $crate::backend::BackendResult<Vec<$crate::backend::ObjectVersion>> {
            self.$inner.list_versions(prefix)
        }
        fn delete_version(&self, key: &str, version: &str) -> $crate::backend::BackendResult<()> {
            self.$inner.delete_version(key, version)
        }
    };
}

/// Opens the backend a `--repo` location names: a directory path, or
/// `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` / `swift:CONTAINER[/PREFIX]`
/// (wrapped in the retry and rate-limit decorators).
pub fn open(location: &str, opts: &url::RemoteOptions) -> anyhow::Result<std::sync::Arc<dyn Backend>> {
    if url::is_remote_url(location) {
        return Ok(std::sync::Arc::from(url::open_remote(location, opts)?));
    }
    Ok(std::sync::Arc::new(local::LocalBackend::new(location)))
}
pub(crate) use forward_object_lock;

/// The cores rayon's global pool runs on.
fn cores() -> usize {
    rayon::current_num_threads().max(1)
}

/// Runs `f` where its parallel iterators issue up to `parallelism` blocking
/// requests at once: the global (one thread per core) pool when that is enough,
/// else one shared pool of [`crate::util::fetch_threads`] threads for I/O, so
/// that waiting on the network never takes the cores the decoding needs.
pub fn with_request_pool<R: Send>(parallelism: usize, f: impl FnOnce() -> R + Send) -> R {
    static IO_POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    if parallelism <= cores() {
        return f();
    }
    let pool = IO_POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new().num_threads(crate::util::fetch_threads()).thread_name(|i| format!("imgarc-io-{i}")).build().ok()
    });
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
