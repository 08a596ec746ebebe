//! The repository's key grammar (format-spec §1), enforced in one place.
//!
//! Every key the repository reads, writes, deletes or lists passes through
//! [`CheckedKeys`], the backend decorator [`super::Repository`] wraps its
//! backend in. A key outside the grammar is refused before it reaches the
//! store, and a listed key outside it is skipped with a warning: a bucket may
//! hold objects planted by anyone with write access, and a name such as
//! `locks/../../victim/obj` must never become a request (URL dot-segment
//! normalisation would turn it into another container's object).

use crate::backend::{Backend, BackendError, BackendResult, ObjectInfo};

/// Longest name of a randomly named object (`locks/`, `upstream/deleted/`).
pub const MAX_NAME_LEN: usize = 128;

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A random or external name: letters, digits, `-` and `_` only, so it can be
/// neither a dot segment nor a path.
fn is_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why `key` is not a repository key, or `None` if it is one.
pub fn key_error(key: &str) -> Option<&'static str> {
    let ok = match key.split('/').collect::<Vec<_>>().as_slice() {
        ["config"] => true,
        ["data", xx, id] => is_hash(id) && xx.len() == 2 && id.starts_with(*xx),
        ["index" | "snapshots" | "prune" | "keys" | "drills" | "scratch", id] => is_hash(id),
        ["locks", name] | ["upstream", "deleted" | "reappeared", name] => is_name(name),
        _ => {
            return Some(
                "not a repository key (format-spec §1: config, keys/, data/, index/, snapshots/, drills/, scratch/, locks/, prune/, upstream/deleted/, upstream/reappeared/)",
            )
        }
    };
    (!ok).then_some("its name is not what its prefix requires (a 64-hex id, or letters, digits, '-' and '_')")
}

/// Whether `prefix` can be listed: empty, or made of the characters keys use
/// with no dot segment.
fn prefix_error(prefix: &str) -> Option<&'static str> {
    let bad_char = !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b));
    let bad_segment = prefix.split('/').any(|s| s == "." || s == "..");
    (bad_char || bad_segment).then_some("not a prefix of any repository key")
}

fn refuse(op: &'static str, key: &str, why: &str) -> BackendError {
    // Debug formatting: the key came from a bucket and may hold control characters.
    BackendError::Other { op, key: format!("{key:?}"), message: format!("invalid object key: {why}") }
}

/// A backend that accepts only repository keys and lists only repository keys.
#[derive(Debug)]
pub struct CheckedKeys {
    inner: std::sync::Arc<dyn Backend>,
}

impl CheckedKeys {
    pub fn new(inner: std::sync::Arc<dyn Backend>) -> Self {
        CheckedKeys { inner }
    }

    fn check(&self, op: &'static str, key: &str) -> BackendResult<()> {
        match key_error(key) {
            Some(why) => Err(refuse(op, key, why)),
            None => Ok(()),
        }
    }
}

impl Backend for CheckedKeys {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn request_parallelism(&self) -> usize {
        self.inner.request_parallelism()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        self.check("put", key)?;
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.check("get", key)?;
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        self.check("get_range", key)?;
        self.inner.get_range(key, offset, length)
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.check("size", key)?;
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        if let Some(why) = prefix_error(prefix) {
            return Err(refuse("list", prefix, why));
        }
        let mut listed = self.inner.list(prefix)?;
        listed.retain(|o| match key_error(&o.key) {
            None => true,
            Some(why) => {
                tracing::warn!("{}: skipping object {:?}: {why}", self.inner.location(), o.key);
                false
            }
        });
        Ok(listed)
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.check("delete", key)?;
        self.inner.delete(key)
    }
    fn can_delete(&self) -> BackendResult<crate::backend::DeletePermission> {
        self.check("delete", crate::backend::DELETE_PROBE_KEY)?;
        self.inner.can_delete()
    }
    fn object_lock_enabled(&self) -> BackendResult<()> {
        self.inner.object_lock_enabled()
    }
    fn set_object_lock(&self, lock: Option<crate::backend::ObjectLock>) -> BackendResult<()> {
        self.inner.set_object_lock(lock)
    }
    fn retention(&self, key: &str, version: Option<&str>) -> BackendResult<Option<crate::backend::Retention>> {
        self.check("retention", key)?;
        self.inner.retention(key, version)
    }
    fn extend_retention(&self, key: &str, version: Option<&str>, r: crate::backend::Retention) -> BackendResult<()> {
        self.check("extend_retention", key)?;
        self.inner.extend_retention(key, version, r)
    }
    fn list_versions(&self, prefix: &str) -> BackendResult<Vec<crate::backend::ObjectVersion>> {
        if let Some(why) = prefix_error(prefix) {
            return Err(refuse("list_versions", prefix, why));
        }
        let mut listed = self.inner.list_versions(prefix)?;
        listed.retain(|o| key_error(&o.key).is_none());
        Ok(listed)
    }
    fn delete_version(&self, key: &str, version: &str) -> BackendResult<()> {
        self.check("delete_version", key)?;
        self.inner.delete_version(key, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use std::sync::Arc;

    const ID: &str = "ab00000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn the_grammar_accepts_what_the_repository_writes_and_nothing_else() {
        for good in [
            "config".to_string(),
            format!("data/ab/{ID}"),
            format!("index/{ID}"),
            format!("snapshots/{ID}"),
            format!("prune/{ID}"),
            "locks/0123456789abcdef0123456789abcdef".into(),
            "upstream/deleted/6f1c2a3e-0000-4000-8000-000000000000".into(),
        ] {
            assert_eq!(key_error(&good), None, "{good}");
        }
        for bad in [
            "".to_string(),
            "locks/../../victim/obj".into(),
            "locks/..".into(),
            "locks/.".into(),
            "locks/a/b".into(),
            "locks/".into(),
            "tmp/123.abc".into(),
            format!("data/cd/{ID}"),
            format!("data/ab/{}", ID.to_uppercase()),
            format!("index/{ID}/x"),
            format!("snapshots/../{ID}"),
            "/config".into(),
            "config/".into(),
            "keys/x".into(),
            format!("locks/{}", "a".repeat(MAX_NAME_LEN + 1)),
            "upstream/deleted/a b".into(),
        ] {
            assert!(key_error(&bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listings_skip_planted_keys_and_requests_for_them_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Arc::new(LocalBackend::new(dir.path()));
        raw.put("locks/0123456789abcdef0123456789abcdef", b"{}").unwrap();
        // Names a hostile writer can plant in a bucket (the local backend itself
        // refuses dot segments, so these are the ones that survive on disk).
        raw.put("locks/x y", b"{}").unwrap();
        raw.put("locks/deep/er", b"{}").unwrap();
        raw.put("snapshots/not-a-hash", b"{}").unwrap();
        let checked = CheckedKeys::new(raw.clone());
        let keys: Vec<String> = checked.list("locks/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["locks/0123456789abcdef0123456789abcdef"]);
        assert!(checked.list("snapshots/").unwrap().is_empty());
        for key in ["locks/x y", "locks/../../victim/obj", "locks/deep/er"] {
            assert!(checked.delete(key).is_err(), "{key}");
            assert!(checked.get(key).is_err(), "{key}");
            assert!(checked.put(key, b"x").is_err(), "{key}");
        }
        assert!(raw.get("locks/x y").is_ok(), "a refused delete must not reach the store");
        assert!(checked.list("../").is_err());
    }
}
