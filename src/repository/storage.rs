//! The one path between the repository and its backend.
//!
//! Every byte the repository stores or reads — the config, typed objects
//! (snapshots, index objects, marks, upstream records, locks) and packs,
//! whole or by range — passes through [`Storage`], and through its one pair
//! [`seal`]/[`unseal`] on the way. Both are the identity today; encryption
//! goes there and nowhere else. The backend behind it is wrapped in
//! [`super::keys::CheckedKeys`], so every key also keeps to the grammar.

use super::keys::CheckedKeys;
use crate::backend::{Backend, BackendError, BackendResult, ObjectInfo};
use std::sync::Arc;

/// What the repository stores under `key`, made from the bytes it means.
/// Identity today; the encryption layer goes here (with [`unseal`]).
fn seal<'a>(_key: &str, plain: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    std::borrow::Cow::Borrowed(plain)
}

/// The bytes the repository means, from `stored` read at `offset` of the
/// object `key` (0 for a whole object). Identity today (see [`seal`]).
fn unseal(_key: &str, _offset: u64, stored: Vec<u8>) -> BackendResult<Vec<u8>> {
    Ok(stored)
}

/// The repository's backend, behind the key grammar and the seal.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    backend: Arc<dyn Backend>,
}

impl Storage {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Storage {
        Storage { backend: Arc::new(CheckedKeys::new(backend)) }
    }

    pub(crate) fn location(&self) -> String {
        self.backend.location()
    }

    pub(crate) fn put(&self, key: &str, plain: &[u8]) -> BackendResult<()> {
        self.backend.put(key, &seal(key, plain))
    }

    /// A whole object (packs: `check`, `prune`'s repacking).
    pub(crate) fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        unseal(key, 0, self.backend.get(key)?)
    }

    pub(crate) fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        unseal(key, offset, self.backend.get_range(key, offset, length)?)
    }

    /// Reads a small object whole, refusing one larger than `cap` (the
    /// per-prefix caps of format-spec §1) before a byte of it is fetched. The
    /// size comes from the listing when the caller has one, else from the
    /// store; the read is a range of exactly that size, so an object that is
    /// larger than it claims still costs at most `cap` bytes of memory.
    pub(crate) fn get_capped(&self, key: &str, listed_size: Option<u64>, cap: u64) -> BackendResult<Vec<u8>> {
        let size = match listed_size {
            Some(s) => s,
            None => self.backend.size(key)?,
        };
        if size > cap {
            return Err(BackendError::Other {
                op: "read",
                key: key.to_string(),
                message: format!("object is {size} bytes, more than the {cap} bytes this kind of object may hold"),
            });
        }
        self.get_range(key, 0, size)
    }

    pub(crate) fn size(&self, key: &str) -> BackendResult<u64> {
        self.backend.size(key)
    }

    pub(crate) fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.backend.list(prefix)
    }

    pub(crate) fn delete(&self, key: &str) -> BackendResult<()> {
        self.backend.delete(key)
    }
}
