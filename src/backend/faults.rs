//! Test-only decorator: a backend whose operations on chosen key prefixes
//! fail on demand, to prove that callers notice (a lock that cannot be
//! refreshed, a pack that cannot be read back, …), and that records the
//! largest read it served (to prove a cap held).

use super::{Backend, BackendError, BackendResult, ObjectInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
}

/// Runs before a `put` goes through, once (a concurrent writer "between" two steps).
type PutHook = Box<dyn FnOnce(&dyn Backend) + Send>;

pub struct Faulty {
    inner: Arc<dyn Backend>,
    failing: Mutex<Vec<(Op, String)>>,
    /// Refused as these credentials' lack of permission (HTTP 403), not as a failure.
    denied: Mutex<Vec<(Op, String)>>,
    before_put: Mutex<Option<(String, PutHook)>>,
    largest_read: AtomicU64,
    /// Every byte `get` and `get_range` returned (what a caller read from the backend).
    total_read: AtomicU64,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty").field("inner", &self.inner).field("failing", &self.failing).finish_non_exhaustive()
    }
}

impl Faulty {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            failing: Mutex::new(Vec::new()),
            denied: Mutex::new(Vec::new()),
            before_put: Mutex::new(None),
            largest_read: AtomicU64::new(0),
            total_read: AtomicU64::new(0),
        })
    }

    /// From now on, `op` on any key starting with `prefix` fails (`get` covers ranged reads).
    pub fn fail(&self, op: Op, prefix: &str) {
        self.failing.lock().unwrap().push((op, prefix.to_string()));
    }

    /// From now on, `op` on any key starting with `prefix` is refused as a 403 would be
    /// (credentials whose policy denies it).
    pub fn deny(&self, op: Op, prefix: &str) {
        self.denied.lock().unwrap().push((op, prefix.to_string()));
    }

    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
        self.denied.lock().unwrap().clear();
    }

    /// Runs `hook` on the inner backend just before the next `put` under `prefix`.
    pub fn before_next_put(&self, prefix: &str, hook: impl FnOnce(&dyn Backend) + Send + 'static) {
        *self.before_put.lock().unwrap() = Some((prefix.to_string(), Box::new(hook)));
    }

    /// The most bytes one `get` or `get_range` has returned so far.
    pub fn largest_read(&self) -> u64 {
        self.largest_read.load(Ordering::SeqCst)
    }

    /// The bytes all `get` and `get_range` calls have returned so far.
    pub fn total_read(&self) -> u64 {
        self.total_read.load(Ordering::SeqCst)
    }

    fn served(&self, bytes: Vec<u8>) -> Vec<u8> {
        self.largest_read.fetch_max(bytes.len() as u64, Ordering::SeqCst);
        self.total_read.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        bytes
    }

    fn check(&self, op: Op, key: &str) -> BackendResult<()> {
        if self.failing.lock().unwrap().iter().any(|(o, p)| *o == op && key.starts_with(p.as_str())) {
            return Err(BackendError::Other { op: "injected fault", key: key.to_string(), message: format!("{op:?} refused") });
        }
        if self.denied.lock().unwrap().iter().any(|(o, p)| *o == op && key.starts_with(p.as_str())) {
            return Err(super::retry::remote_error("injected denial", key, Some(403), format!("{op:?} denied by policy")));
        }
        Ok(())
    }
}

impl Backend for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn request_parallelism(&self) -> usize {
        self.inner.request_parallelism()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        self.check(Op::Put, key)?;
        let hook = {
            let mut slot = self.before_put.lock().unwrap();
            match &*slot {
                Some((prefix, _)) if key.starts_with(prefix.as_str()) => slot.take().map(|(_, h)| h),
                _ => None,
            }
        };
        if let Some(hook) = hook {
            hook(&*self.inner);
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.check(Op::Get, key)?;
        self.inner.get(key).map(|b| self.served(b))
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        self.check(Op::Get, key)?;
        self.inner.get_range(key, offset, length).map(|b| self.served(b))
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.check(Op::Delete, key)?;
        self.inner.delete(key)
    }
    fn can_delete(&self) -> BackendResult<super::DeletePermission> {
        match self.check(Op::Delete, super::DELETE_PROBE_KEY) {
            Err(e) if e.is_permission_denied() => Ok(super::DeletePermission::Denied(format!("injected: {e}"))),
            Err(e) => Err(e),
            Ok(()) => self.inner.can_delete(),
        }
    }
    super::forward_object_lock!(inner);
}
