//! Prune marks: `prune/<id>`, the first phase of two-phase deletion.
//!
//! A prune does not delete what it finds unreferenced; it writes a mark that
//! lists the packs it wants gone. From the moment a mark is visible, archives
//! no longer deduplicate against the packs it lists (they store such chunks
//! again). A later prune deletes a marked pack only when the grace period has
//! passed since the mark, no archive that started before the mark is still
//! running, and every snapshot that exists by then can do without the pack;
//! otherwise the pack is rescued. The mark itself is deleted last, so a prune
//! killed at any point leaves either the mark (the next prune finishes the
//! job) or nothing to do. The id is the BLAKE3 of the object's bytes.

use super::Repository;
use crate::ids::Id;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "prune/";
pub const MARK_VERSION: u32 = 1;
/// Largest prune mark a reader accepts (format-spec §1): some 110 bytes per
/// marked pack, so room for half a million packs.
pub const MAX_MARK_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruneMark {
    pub version: u32,
    /// RFC 3339, UTC: when the mark was written. The grace period counts from here.
    pub created: String,
    pub hostname: String,
    pub packs: Vec<MarkedPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MarkedPack {
    pub id: Id,
    pub size: u64,
    /// `unused` (no snapshot needs any of its blobs) or `repacked` (the blobs
    /// still needed were copied to new packs before the mark was written).
    pub reason: String,
}

impl PruneMark {
    /// Decodes a mark's bytes (the caller checks them against the name).
    pub fn decode(bytes: &[u8]) -> Result<PruneMark> {
        let mark: PruneMark = serde_json::from_slice(bytes).context("prune mark is malformed")?;
        if mark.version != MARK_VERSION {
            bail!("prune mark has version {}, which this imgarc does not read", mark.version);
        }
        Ok(mark)
    }
}

pub fn mark_key(id: &Id) -> String {
    format!("{PREFIX}{}", id.to_hex())
}

impl Repository {
    pub fn write_mark(&self, mark: &PruneMark) -> Result<String> {
        self.ensure_locks_held()?;
        let bytes = serde_json::to_vec_pretty(mark)?;
        let key = mark_key(&Id::of(&bytes));
        self.backend().put(&key, &bytes).context("cannot store a prune mark")?;
        Ok(key)
    }

    pub fn read_mark(&self, key: &str) -> Result<PruneMark> {
        let bytes = super::read_capped(&**self.backend(), key, None, MAX_MARK_BYTES).with_context(|| format!("prune mark {key}"))?;
        if key.strip_prefix(PREFIX).and_then(Id::from_hex) != Some(Id::of(&bytes)) {
            bail!("prune mark {key} is damaged (its content does not match its name)");
        }
        PruneMark::decode(&bytes).with_context(|| format!("prune mark {key}"))
    }

    pub fn list_mark_keys(&self) -> Result<Vec<String>> {
        Ok(self.backend().list(PREFIX)?.into_iter().map(|o| o.key).collect())
    }

    pub fn delete_mark(&self, key: &str) -> Result<()> {
        self.ensure_locks_held()?;
        self.backend().delete(key).with_context(|| format!("cannot delete prune mark {key}"))?;
        Ok(())
    }
}
