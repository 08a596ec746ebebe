//! Rate-limit decorator for `--limit-upload` / `--limit-download RATE` on a
//! repository: puts count against the upload limiter, gets and ranged gets
//! against the download one (listings, HEADs and deletes are not limited).
//!
//! The limiter is the crate's one [`RateLimiter`] (a token bucket shared by
//! every thread using the backend, so the limit is on the sum of parallel
//! transfers). Whole objects move at full speed and the caller then waits,
//! so the average over several objects is the limit; with 32 MiB packs and
//! limits of a few MiB/s this is smooth enough.

use super::{Backend, BackendResult, ObjectInfo};
pub use crate::net::ratelimit::RateLimiter;

/// Decorator limiting upload (put) and download (get, get_range) bytes.
#[derive(Debug)]
pub struct RateLimitBackend {
    inner: Box<dyn Backend>,
    upload: Option<RateLimiter>,
    download: Option<RateLimiter>,
}

impl RateLimitBackend {
    /// Rates in bytes per second; None = unlimited.
    pub fn new(inner: Box<dyn Backend>, upload: Option<u64>, download: Option<u64>) -> Self {
        RateLimitBackend { inner, upload: upload.map(RateLimiter::new), download: download.map(RateLimiter::new) }
    }
}

impl Backend for RateLimitBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn request_parallelism(&self) -> usize {
        self.inner.request_parallelism()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        if let Some(l) = &self.upload {
            l.consume(data.len() as u64);
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        let v = self.inner.get(key)?;
        if let Some(l) = &self.download {
            l.consume(v.len() as u64);
        }
        Ok(v)
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        let v = self.inner.get_range(key, offset, length)?;
        if let Some(l) = &self.download {
            l.consume(v.len() as u64);
        }
        Ok(v)
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.inner.delete(key)
    }
    fn can_delete(&self) -> BackendResult<super::DeletePermission> {
        self.inner.can_delete()
    }
    super::forward_object_lock!(inner);
}
