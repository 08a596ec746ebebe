//! The one path between the repository and its backend.
//!
//! Every byte the repository stores or reads — the config, key objects, typed
//! objects (snapshots, index objects, marks, upstream records, locks) and
//! packs, whole or by range — passes through [`Storage`]. It holds the
//! repository's unwrapped [`KeySet`] and seals small objects with
//! [`Storage::seal`]/[`Storage::unseal`] (identity for an unencrypted
//! repository); packs are sealed blob by blob by the pack writer with keys
//! from the same set (`Repository::seal_blob`), so ranged reads still work.
//! The `config` and key objects are never sealed: they authenticate
//! themselves (`crypto::keyfile`). The backend behind it is wrapped in
//! [`super::keys::CheckedKeys`], so every key also keeps to the grammar.

use super::keys::CheckedKeys;
use crate::backend::{Backend, BackendError, BackendResult, ObjectInfo};
use crate::crypto::KeySet;
use std::borrow::Cow;
use std::sync::Arc;

/// Associated data of a sealed small object: it binds the object to where it
/// may be stored. A content-named object (`index/`, `snapshots/`, `prune/`) is
/// bound to its prefix (its name is the hash of the sealed bytes, so it cannot
/// be in them); any other (`locks/`, `upstream/deleted/`) to its whole key.
pub(crate) fn object_aad(binding: &str) -> Vec<u8> {
    format!("imgarc object\0{binding}").into_bytes()
}

/// The repository's backend, behind the key grammar and the seal.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    backend: Arc<dyn Backend>,
    /// The unwrapped keys of an encrypted repository.
    keys: Option<Arc<KeySet>>,
}

impl Storage {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Storage {
        Storage { backend: Arc::new(CheckedKeys::new(backend)), keys: None }
    }

    /// The same store, sealing and opening with `keys` from now on.
    pub(crate) fn with_keys(&self, keys: Arc<KeySet>) -> Storage {
        Storage { backend: self.backend.clone(), keys: Some(keys) }
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub(crate) fn keys(&self) -> Option<&Arc<KeySet>> {
        self.keys.as_ref()
    }

    /// What the repository stores for a small object's bytes `plain`, bound to
    /// `binding` (see [`object_aad`]): sealed with the meta key when encrypted,
    /// else `plain` itself.
    pub(crate) fn seal<'a>(&self, binding: &str, plain: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.keys {
            Some(k) => Cow::Owned(k.seal_meta(&object_aad(binding), plain)),
            None => Cow::Borrowed(plain),
        }
    }

    /// The bytes a stored small object means; an error naming `key` if it
    /// does not open under this repository's keys. Not a [`BackendError`]: the
    /// store answered, the bytes are bad (so a lock that does not open is
    /// unreadable, hence stale, as a malformed one is, instead of an I/O error
    /// that no `unlock` could ever clear).
    pub(crate) fn unseal(&self, key: &str, binding: &str, stored: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        match &self.keys {
            Some(k) => k.open_meta(&object_aad(binding), &stored).map_err(|e| anyhow::Error::new(e).context(format!("open {key}"))),
            None => Ok(stored),
        }
    }

    pub(crate) fn location(&self) -> String {
        self.backend.location()
    }

    /// Stores bytes as they are (already sealed, or of an object that is never sealed).
    pub(crate) fn put(&self, key: &str, stored: &[u8]) -> BackendResult<()> {
        self.backend.put(key, stored)
    }

    /// A whole object as stored (packs: `check`, `prune`'s repacking).
    pub(crate) fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.backend.get(key)
    }

    pub(crate) fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        self.backend.get_range(key, offset, length)
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

    pub(crate) fn can_delete(&self) -> BackendResult<crate::backend::DeletePermission> {
        self.backend.can_delete()
    }
}
