//! Records of images that disappeared from their source cloud.
//!
//! `sync` writes `upstream/deleted/<image id>` (JSON, [`DeletedUpstream`]) the
//! first time it finds that an image it holds snapshots of is gone from
//! Glance. `forget` reads them: the last snapshot of such an image is kept
//! unless the user passes `--include-deleted`. Write-once like every object;
//! an image that comes back (same id) has its record deleted by `sync`.

use super::file::{Naming, RepoFile};
use super::Repository;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "upstream/deleted/";
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

impl Repository {
    pub fn record_deleted_upstream(&self, record: &DeletedUpstream) -> Result<()> {
        self.save(record).context("cannot record a deleted image")?;
        Ok(())
    }

    /// Withdraws the record (the image is back upstream).
    pub fn clear_deleted_upstream(&self, image_id: &str) -> Result<()> {
        self.delete::<DeletedUpstream>(&DeletedUpstream::key(&name(image_id))).context("cannot clear a deleted-image record")
    }

    /// Every image recorded as deleted upstream.
    pub fn deleted_upstream(&self) -> Result<Vec<DeletedUpstream>> {
        let mut out = Vec::new();
        for (key, size) in self.list::<DeletedUpstream>()? {
            match self.load(&key, Some(size)) {
                Ok(record) => out.push(record),
                // Gone between list and get: the record was withdrawn.
                Err(e) if crate::backend::is_not_found(&e) => continue,
                Err(e) => return Err(e).context("cannot read a deleted-image record"),
            }
        }
        Ok(out)
    }
}
