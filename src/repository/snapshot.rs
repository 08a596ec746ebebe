//! Snapshot objects: one archived image. A snapshot is a JSON document stored
//! at `snapshots/<id>`, where the id is the BLAKE3 of the document's bytes.

use super::extents::StreamRef;
use crate::ids::Id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest snapshot object a reader accepts (format-spec §1); real ones are a
/// few KiB plus the source's metadata record.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// RFC 3339, UTC: when the archive started.
    pub time: String,
    pub hostname: String,
    pub source: Source,
    /// Length of the image file: the bytes a restore writes.
    pub logical_bytes: u64,
    /// Size of the virtual disk, where the format says so.
    #[serde(default)]
    pub virtual_bytes: Option<u64>,
    /// Detected container format: `raw`, `qcow2`, `vmdk`, … (others are stored as raw bytes).
    pub format: String,
    /// What the format parser learnt (for QCOW2: `ImageInfo` — clusters, flags, sizes).
    #[serde(default)]
    pub image: Option<serde_json::Value>,
    pub layout: Layout,
    /// The guest stream: the virtual disk as chunks and holes.
    pub guest: StreamRef,
    /// Whole-file digests of the image, algorithm → lowercase hex.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// Free-form metadata from the source (e.g. a Glance image record).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    File { path: String },
    Stdin,
    Glance { image_id: String, cloud: Option<String> },
}

/// How the image file maps onto the guest stream. A reader that meets an
/// unknown kind must refuse the snapshot rather than guess.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Layout {
    /// The file is the guest stream, byte for byte (raw images and anything
    /// stored opaquely).
    Raw,
    /// A container format rebuilt from a recipe, the guest stream and a stream
    /// of literal bytes (format-spec/qcow2-layout.md).
    Qcow2 { recipe: StreamRef, literals: StreamRef },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    /// Chunk references (extents) of all streams.
    pub chunks: u64,
    /// Chunks this archive stored that the repository did not hold.
    pub new_chunks: u64,
    /// Uncompressed bytes of the new chunks.
    pub new_bytes: u64,
    /// Bytes of pack and index objects this archive added to the repository.
    pub stored_bytes_added: u64,
    /// Bytes of the guest stream that are holes (all-zero blocks).
    pub hole_bytes: u64,
    pub seconds: f64,
}

impl Snapshot {
    /// Decodes a snapshot object's bytes (the caller checks them against the name).
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Snapshot> {
        use anyhow::Context;
        let snap: Snapshot = serde_json::from_slice(bytes).context("snapshot is malformed")?;
        anyhow::ensure!(snap.version == SNAPSHOT_VERSION, "snapshot has version {}, which this imgarc does not read", snap.version);
        Ok(snap)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("snapshot serializes")
    }

    pub fn id_of(bytes: &[u8]) -> Id {
        Id::of(bytes)
    }

    /// Every stream the snapshot references (guest first).
    pub fn streams(&self) -> Vec<&StreamRef> {
        let mut v = vec![&self.guest];
        if let Layout::Qcow2 { recipe, literals } = &self.layout {
            v.push(recipe);
            v.push(literals);
        }
        v
    }
}

impl super::file::RepoFile for Snapshot {
    const PREFIX: &'static str = "snapshots/";
    const KIND: &'static str = "snapshot";
    const MAX_BYTES: u64 = MAX_SNAPSHOT_BYTES;
    const NAMING: super::file::Naming = super::file::Naming::ContentId;
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.to_bytes())
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> anyhow::Result<Self> {
        Snapshot::decode(bytes)
    }
}
