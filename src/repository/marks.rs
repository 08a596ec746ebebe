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

impl super::file::RepoFile for PruneMark {
    const PREFIX: &'static str = PREFIX;
    const KIND: &'static str = "prune mark";
    const MAX_BYTES: u64 = MAX_MARK_BYTES;
    const NAMING: super::file::Naming = super::file::Naming::ContentId;
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        PruneMark::decode(bytes)
    }
}

impl Repository {
    pub fn write_mark(&self, mark: &PruneMark) -> Result<String> {
        Ok(self.save(mark)?.0)
    }

    pub fn read_mark(&self, key: &str) -> Result<PruneMark> {
        self.load(key, None)
    }

    pub fn list_mark_keys(&self) -> Result<Vec<String>> {
        Ok(self.list::<PruneMark>()?.into_iter().map(|(k, _)| k).collect())
    }

    pub fn delete_mark(&self, key: &str) -> Result<()> {
        self.delete::<PruneMark>(key)
    }
}
