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
