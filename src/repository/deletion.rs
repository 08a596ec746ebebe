//! Credentials that cannot delete (a backup host whose S3 policy denies `s3:DeleteObject`):
//! the probe `forget` and `prune` start with, and the tidy-up, by a host that may delete, of
//! what such hosts write instead of deleting: release records with the lock objects they
//! release (`lock.rs`) and reappeared-image records with the deleted-image records they
//! withdraw (`upstream.rs`). format-spec §1 ("Hosts that cannot delete").

use super::Repository;
use crate::backend::DeletePermission;
use anyhow::{Context, Result};

/// The credentials may not delete, and the verb must: `forget` and `prune` refuse at once,
/// also when they would find nothing to delete, so that a host set up wrongly learns it on
/// the first run, not on the first run that has work.
#[derive(Debug, thiserror::Error)]
#[error(
    "{verb} needs to delete objects, but these credentials may not: {detail}; run {verb} with credentials that may delete \
     (archive and sync work without)"
)]
pub struct DeleteNotPermitted {
    pub verb: String,
    /// What refused, for whom (an access key id or a path, never a secret).
    pub detail: String,
}

/// What one tidy-up removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Lock objects a release record releases (and the records), and locks long expired.
    pub lock_objects: usize,
    /// Deleted-image records withdrawn by a reappeared-image record (and those records).
    pub upstream_records: usize,
}

impl Repository {
    /// An error ([`DeleteNotPermitted`]) unless these credentials may delete objects here:
    /// the backend is asked by trying (`Backend::can_delete`), never by reading a policy.
    pub fn require_delete_permission(&self, verb: &str) -> Result<()> {
        let permission =
            self.storage.can_delete().with_context(|| format!("{verb}: cannot find out whether these credentials may delete"))?;
        match permission {
            DeletePermission::Allowed => Ok(()),
            DeletePermission::Denied(detail) => Err(DeleteNotPermitted { verb: verb.to_string(), detail }.into()),
        }
    }

    /// Deletes what hosts without DELETE left behind instead of deleting; readers already
    /// ignore all of it, so this only keeps listings short. Call it with credentials that may
    /// delete (after [`Repository::require_delete_permission`]); a refusal midway stops it quietly.
    pub fn tidy_superseded(&self) -> Result<Tidied> {
        let tidied = Tidied { lock_objects: self.tidy_locks()?, upstream_records: self.tidy_upstream()? };
        if tidied != Tidied::default() {
            tracing::info!(
                lock_objects = tidied.lock_objects,
                upstream_records = tidied.upstream_records,
                "removed {} released or long-expired lock object(s) and {} withdrawn upstream record(s)",
                tidied.lock_objects,
                tidied.upstream_records
            );
        }
        Ok(tidied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faults::{Faulty, Op};

    #[test]
    fn the_probe_refuses_credentials_that_may_not_delete() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap());
        let repo = Repository::init(faulty.clone(), crate::repository::config::Config::new(64 << 10, 3).unwrap()).unwrap();
        repo.require_delete_permission("prune").expect("a local directory of ours may be deleted from");
        faulty.deny(Op::Delete, "locks/");
        let err = repo.require_delete_permission("prune").unwrap_err();
        assert!(err.is::<DeleteNotPermitted>(), "{err:#}");
        let text = format!("{err:#}");
        assert!(text.starts_with("prune needs to delete objects, but these credentials may not"), "{text}");
        faulty.heal();
        faulty.fail(Op::Delete, "locks/");
        let err = repo.require_delete_permission("forget").unwrap_err();
        assert!(!err.is::<DeleteNotPermitted>(), "a failure is not a refusal: {err:#}");
    }
}
