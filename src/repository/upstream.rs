//! Records of images that disappeared from their source cloud.
//!
//! `sync` writes `upstream/deleted/<image id>` (JSON, [`DeletedUpstream`]) the
//! first time it finds that an image it holds snapshots of is gone from
//! Glance. `forget` reads them: the last snapshot of such an image is kept
//! unless the user passes `--include-deleted`. An image that comes back (same
//! id) has its record deleted by `sync`; where the credentials may not delete,
//! `sync` writes `upstream/reappeared/<image id>` ([`Reappeared`]) instead,
//! which withdraws exactly the record whose `detected` it names. An image
//! deleted again gets a new record (a PUT over the old name, a new `detected`),
//! which that withdrawal does not touch. No clock decides any of it.

use super::file::{Naming, RepoFile};
use super::Repository;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const PREFIX: &str = "upstream/deleted/";
pub const REAPPEARED_PREFIX: &str = "upstream/reappeared/";
/// Largest record a reader accepts (format-spec §1); real ones are ~200 bytes.
pub const MAX_RECORD_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeletedUpstream {
    /// The Glance image id.
    pub image_id: String,
    /// The image name when it was last seen.
    pub name: String,
    /// The cloud it was synced from (`--os-cloud`), if named.
    #[serde(default)]
    pub cloud: Option<String>,
    /// RFC 3339, UTC: when `sync` first found it gone.
    pub detected: String,
}

/// The name a record is stored under: Glance ids are UUIDs; anything else
/// is made safe for an object key.
fn name(image_id: &str) -> String {
    image_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

impl RepoFile for DeletedUpstream {
    const PREFIX: &'static str = PREFIX;
    const KIND: &'static str = "deleted-image record";
    const MAX_BYTES: u64 = MAX_RECORD_BYTES;
    /// Named by the image it records, so a record is found (and withdrawn) by image id.
    const NAMING: Naming = Naming::Own;
    const NEEDS_LOCK: bool = false;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        serde_json::from_slice(bytes).context("malformed")
    }
    fn own_name(&self) -> Option<String> {
        Some(name(&self.image_id))
    }
}

/// An image recorded as deleted upstream is listed again: the withdrawal of its record,
/// written where the record cannot be deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reappeared {
    /// The Glance image id.
    pub image_id: String,
    /// The `detected` of the deleted-image record this withdraws (and no other).
    pub withdraws: String,
    /// RFC 3339, UTC: when `sync` found the image listed again.
    pub seen: String,
}

impl RepoFile for Reappeared {
    const PREFIX: &'static str = REAPPEARED_PREFIX;
    const KIND: &'static str = "reappeared-image record";
    const MAX_BYTES: u64 = MAX_RECORD_BYTES;
    /// Named by the image, as the record it withdraws.
    const NAMING: Naming = Naming::Own;
    const NEEDS_LOCK: bool = false;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        serde_json::from_slice(bytes).context("malformed")
    }
    fn own_name(&self) -> Option<String> {
        Some(name(&self.image_id))
    }
}

impl Repository {
    pub fn record_deleted_upstream(&self, record: &DeletedUpstream) -> Result<()> {
        self.save(record).context("cannot record a deleted image")?;
        Ok(())
    }

    /// Withdraws the record (the image is back upstream): deletes it, or, where these
    /// credentials may not delete, writes a [`Reappeared`] record that withdraws it.
    pub fn clear_deleted_upstream(&self, image_id: &str) -> Result<()> {
        let key = DeletedUpstream::key(&name(image_id));
        let record: DeletedUpstream = match self.load(&key, None) {
            Ok(r) => r,
            Err(e) if crate::backend::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e).context("cannot read the deleted-image record to clear"),
        };
        match self.delete::<DeletedUpstream>(&key) {
            Ok(()) => {
                // A withdrawal an earlier host wrote is moot with its record gone; left behind, it is ignored.
                if let Err(e) = self.delete::<Reappeared>(&Reappeared::key(&name(image_id))) {
                    tracing::debug!("cannot delete the reappeared-image record of {image_id}: {e:#}");
                }
                Ok(())
            }
            Err(e) if crate::backend::is_permission_denied(&e) => {
                tracing::debug!("may not delete {key}; withdrawing it with a reappeared-image record: {e:#}");
                let withdrawal =
                    Reappeared { image_id: image_id.to_string(), withdraws: record.detected, seen: crate::util::now_rfc3339() };
                self.save(&withdrawal).context("cannot withdraw a deleted-image record")?;
                Ok(())
            }
            Err(e) => Err(e).context("cannot clear a deleted-image record"),
        }
    }

    /// Every image recorded as deleted upstream, but those whose record a reappeared-image record withdraws.
    pub fn deleted_upstream(&self) -> Result<Vec<DeletedUpstream>> {
        let withdrawn: HashMap<String, String> = self.reappeared()?.into_iter().map(|(_, r)| (r.image_id, r.withdraws)).collect();
        let mut out = Vec::new();
        for (key, size) in self.list::<DeletedUpstream>()? {
            match self.load::<DeletedUpstream>(&key, Some(size)) {
                Ok(record) if withdrawn.get(&record.image_id) == Some(&record.detected) => continue,
                Ok(record) => out.push(record),
                // Gone between list and get: the record was withdrawn.
                Err(e) if crate::backend::is_not_found(&e) => continue,
                Err(e) => return Err(e).context("cannot read a deleted-image record"),
            }
        }
        Ok(out)
    }

    /// Every reappeared-image record, by key.
    fn reappeared(&self) -> Result<Vec<(String, Reappeared)>> {
        let mut out = Vec::new();
        for (key, size) in self.list::<Reappeared>()? {
            match self.load(&key, Some(size)) {
                Ok(record) => out.push((key, record)),
                Err(e) if crate::backend::is_not_found(&e) => continue,
                Err(e) => return Err(e).context("cannot read a reappeared-image record"),
            }
        }
        Ok(out)
    }

    /// Deletes each withdrawn deleted-image record, then its withdrawal, and withdrawals whose
    /// record is gone or newer (the image was deleted again). The record is read again just
    /// before it is deleted, so a deletion recorded since the listing is kept. Returns how
    /// many objects it deleted; stops quietly at the first refused DELETE.
    pub(crate) fn tidy_upstream(&self) -> Result<usize> {
        let mut deleted = 0;
        for (key, withdrawal) in self.reappeared()? {
            let record_key = DeletedUpstream::key(&name(&withdrawal.image_id));
            let targets = match self.load::<DeletedUpstream>(&record_key, None) {
                Ok(record) if record.detected == withdrawal.withdraws => vec![record_key, key],
                Ok(_) => vec![key],
                Err(e) if crate::backend::is_not_found(&e) => vec![key],
                Err(e) => return Err(e).context("cannot read a deleted-image record"),
            };
            for target in targets {
                let result =
                    if target.starts_with(PREFIX) { self.delete::<DeletedUpstream>(&target) } else { self.delete::<Reappeared>(&target) };
                match result {
                    Ok(()) => deleted += 1,
                    Err(e) if crate::backend::is_permission_denied(&e) => {
                        tracing::debug!("may not delete upstream records; leaving them to the readers' rules: {e:#}");
                        return Ok(deleted);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faults::{Faulty, Op};

    fn record(id: &str, detected: &str) -> DeletedUpstream {
        DeletedUpstream { image_id: id.into(), name: "vm".into(), cloud: None, detected: detected.into() }
    }

    #[test]
    fn a_reappeared_image_is_withdrawn_without_delete_and_a_new_deletion_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap());
        let repo = Repository::init(faulty.clone(), crate::repository::config::Config::new(64 << 10, 3).unwrap()).unwrap();
        let id = "6f1c2a3e-0000-4000-8000-000000000000";
        repo.record_deleted_upstream(&record(id, "2026-01-01T00:00:00Z")).unwrap();
        repo.record_deleted_upstream(&record("other", "2026-01-01T00:00:00Z")).unwrap();
        faulty.deny(Op::Delete, "upstream/");

        repo.clear_deleted_upstream(id).expect("clearing needs no DELETE");
        let ids = |repo: &Repository| repo.deleted_upstream().unwrap().into_iter().map(|d| d.image_id).collect::<Vec<_>>();
        assert_eq!(ids(&repo), vec!["other".to_string()]);
        assert_eq!(repo.list::<DeletedUpstream>().unwrap().len(), 2, "the record itself could not be deleted");
        // Deleted again: the new record (a new detection time) stands, the old withdrawal does not cover it.
        repo.record_deleted_upstream(&record(id, "2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(ids(&repo).len(), 2);
        assert!(repo.deleted_upstream().unwrap().iter().any(|d| d.image_id == id && d.detected == "2026-02-01T00:00:00Z"));
        // Back again: withdrawn again (the withdrawal is rewritten for the new record).
        repo.clear_deleted_upstream(id).unwrap();
        assert_eq!(ids(&repo), vec!["other".to_string()]);
        assert_eq!(repo.tidy_upstream().unwrap(), 0, "a refused DELETE stops the tidy-up quietly");

        // Credentials that may delete remove the withdrawn record and its withdrawal, nothing else.
        faulty.heal();
        assert_eq!(repo.tidy_upstream().unwrap(), 2);
        assert!(repo.list::<Reappeared>().unwrap().is_empty());
        assert_eq!(repo.list::<DeletedUpstream>().unwrap().len(), 1);
        assert_eq!(ids(&repo), vec!["other".to_string()]);
        // Where DELETE is allowed, clearing deletes, as before.
        repo.clear_deleted_upstream("other").unwrap();
        assert!(repo.list::<DeletedUpstream>().unwrap().is_empty() && repo.list::<Reappeared>().unwrap().is_empty());
        repo.clear_deleted_upstream("never-recorded").expect("nothing to clear");
    }
}
