//! Records of images that disappeared from their source cloud.
//!
//! `sync` writes `upstream/deleted/<image id>` (JSON, [`DeletedUpstream`]) the
//! first time it finds that an image it holds snapshots of is gone from
//! Glance. `forget` reads them: the last snapshot of such an image is kept
//! unless the user passes `--include-deleted`. Write-once like every object;
//! an image that comes back (same id) has its record deleted by `sync`.

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

fn key(image_id: &str) -> String {
    // Glance ids are UUIDs; anything else is made safe for an object key.
    let safe: String = image_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{PREFIX}{safe}")
}

impl Repository {
    pub fn record_deleted_upstream(&self, record: &DeletedUpstream) -> Result<()> {
        self.backend().put(&key(&record.image_id), &serde_json::to_vec_pretty(record)?).context("cannot record a deleted image")?;
        Ok(())
    }

    /// Withdraws the record (the image is back upstream).
    pub fn clear_deleted_upstream(&self, image_id: &str) -> Result<()> {
        self.backend().delete(&key(image_id)).context("cannot clear a deleted-image record")?;
        Ok(())
    }

    /// Every image recorded as deleted upstream.
    pub fn deleted_upstream(&self) -> Result<Vec<DeletedUpstream>> {
        let mut out = Vec::new();
        for o in self.backend().list(PREFIX)? {
            // Gone between list and get: the record was withdrawn.
            let bytes = match super::read_capped(&**self.backend(), &o.key, Some(o.size), MAX_RECORD_BYTES) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e).context("cannot read a deleted-image record"),
            };
            out.push(serde_json::from_slice(&bytes).with_context(|| format!("{} is malformed", o.key))?);
        }
        Ok(out)
    }
}
