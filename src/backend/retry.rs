//! Retry decorator: wraps any backend and retries transient failures with
//! the crate's one policy ([`crate::net::retry`]: capped, jittered
//! exponential backoff, a server's `Retry-After` honoured).
//!
//! What is transient is decided by [`is_transient`]: the policy's HTTP rule
//! (5xx except 501, 429, 408) and connection-level failures (reset, refused,
//! timed out, broken pipe, unexpected EOF). Never retried: 4xx (incl.
//! 401/403/404/412), 501 Not Implemented, `NotFound`, and `Other` errors
//! (configuration, protocol and decoding problems).
//!
//! Remote backends report HTTP failures through [`remote_error`], which puts
//! a [`RemoteFailure`] (status code, if any) inside `BackendError::Io`, so the
//! trait's error type stays the same for local and remote stores.

use super::{Backend, BackendError, BackendResult, ObjectInfo};
pub use crate::net::retry::RetryPolicy;
use std::io;
use std::time::Duration;

/// The failure of one request to a remote store, carried inside
/// `BackendError::Io`'s `io::Error`. `status` is `None` for failures below
/// HTTP (connect, reset, timeout).
#[derive(Debug)]
pub struct RemoteFailure {
    pub status: Option<u16>,
    /// The server's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for RemoteFailure {}

impl RemoteFailure {
    pub fn is_transient(&self) -> bool {
        crate::net::retry::is_transient_status(self.status)
    }
}

/// Build the error for a failed remote request. `status` None means the
/// request did not get an HTTP answer (network failure). Callers map 404 to
/// `NotFound` themselves before calling this.
pub fn remote_error(op: &'static str, key: &str, status: Option<u16>, message: impl Into<String>) -> BackendError {
    remote_error_after(op, key, status, None, message)
}

/// [`remote_error`] with the server's `Retry-After`, which the retry
/// decorator then waits instead of its own backoff.
pub fn remote_error_after(
    op: &'static str,
    key: &str,
    status: Option<u16>,
    retry_after: Option<Duration>,
    message: impl Into<String>,
) -> BackendError {
    let kind = match status {
        None => io::ErrorKind::ConnectionReset,
        Some(401) | Some(403) => io::ErrorKind::PermissionDenied,
        Some(400) | Some(416) => io::ErrorKind::InvalidInput,
        Some(501) => io::ErrorKind::Unsupported,
        Some(s) if s >= 500 || s == 429 || s == 408 => io::ErrorKind::Other,
        Some(_) => io::ErrorKind::Other,
    };
    BackendError::Io {
        op,
        key: key.to_string(),
        source: io::Error::new(kind, RemoteFailure { status, retry_after, message: message.into() }),
    }
}

/// The HTTP status a backend error carries, if it came from [`remote_error`].
pub fn http_status(err: &BackendError) -> Option<u16> {
    match err {
        BackendError::Io { source, .. } => source.get_ref().and_then(|e| e.downcast_ref::<RemoteFailure>()).and_then(|f| f.status),
        _ => None,
    }
}

fn remote_failure(err: &BackendError) -> Option<&RemoteFailure> {
    match err {
        BackendError::Io { source, .. } => source.get_ref().and_then(|e| e.downcast_ref::<RemoteFailure>()),
        _ => None,
    }
}

/// The `Retry-After` a backend error carries, if the server sent one.
pub fn retry_after(err: &BackendError) -> Option<Duration> {
    remote_failure(err).and_then(|f| f.retry_after)
}

/// Whether retrying the same request may succeed.
pub fn is_transient(err: &BackendError) -> bool {
    match err {
        BackendError::NotFound(_) | BackendError::Other { .. } => false,
        BackendError::Io { source, .. } => {
            if let Some(f) = source.get_ref().and_then(|e| e.downcast_ref::<RemoteFailure>()) {
                return f.is_transient();
            }
            use io::ErrorKind::*;
            matches!(
                source.kind(),
                ConnectionReset | ConnectionAborted | ConnectionRefused | TimedOut | Interrupted | BrokenPipe | UnexpectedEof | WouldBlock
            )
        }
    }
}

/// Retrying decorator around any backend.
#[derive(Debug)]
pub struct RetryBackend {
    inner: Box<dyn Backend>,
    policy: RetryPolicy,
}

impl RetryBackend {
    pub fn new(inner: Box<dyn Backend>, policy: RetryPolicy) -> Self {
        RetryBackend { inner, policy }
    }

    pub fn into_inner(self) -> Box<dyn Backend> {
        self.inner
    }

    fn run<T>(&self, mut f: impl FnMut(&dyn Backend) -> BackendResult<T>) -> BackendResult<T> {
        let mut attempt = 0u32;
        loop {
            match f(self.inner.as_ref()) {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.policy.max_retries && is_transient(&e) => {
                    attempt += 1;
                    std::thread::sleep(self.policy.delay(attempt, retry_after(&e)));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Backend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn request_parallelism(&self) -> usize {
        self.inner.request_parallelism()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        self.run(|b| b.put(key, data))
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.run(|b| b.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        self.run(|b| b.get_range(key, offset, length))
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.run(|b| b.size(key))
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.run(|b| b.list(prefix))
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.run(|b| b.delete(key))
    }
    fn can_delete(&self) -> BackendResult<super::DeletePermission> {
        self.run(|b| b.can_delete())
    }
    fn object_lock_enabled(&self) -> BackendResult<()> {
        self.run(|b| b.object_lock_enabled())
    }
    fn set_object_lock(&self, lock: Option<super::ObjectLock>) -> BackendResult<()> {
        self.inner.set_object_lock(lock)
    }
    fn retention(&self, key: &str, version: Option<&str>) -> BackendResult<Option<super::Retention>> {
        self.run(|b| b.retention(key, version))
    }
    fn extend_retention(&self, key: &str, version: Option<&str>, r: super::Retention) -> BackendResult<()> {
        self.run(|b| b.extend_retention(key, version, r))
    }
    fn list_versions(&self, prefix: &str) -> BackendResult<Vec<super::ObjectVersion>> {
        self.run(|b| b.list_versions(prefix))
    }
    fn delete_version(&self, key: &str, version: &str) -> BackendResult<()> {
        self.run(|b| b.delete_version(key, version))
    }
}
