//! Index objects: the repository's own record of which blobs each pack holds.
//! A writer adds one immutable index object per pack it writes, stored at
//! `index/<blake3 of the object>`; the local SQLite cache is built from them.
//! Encoding: zstd-compressed JSON (see format-spec/README.md).

use super::pack::{BlobKind, Codec, PackEntry};
use crate::ids::Id;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The most JSON bytes a reader decompresses from one index object. A writer's
/// objects list one pack and are far smaller; `index rebuild` bounds its own
/// (`index::MAX_BLOBS_PER_INDEX_OBJECT`).
pub const MAX_DECODED_LEN: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexObject {
    pub version: u32,
    pub created: String,
    pub hostname: String,
    pub packs: Vec<IndexedPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexedPack {
    pub id: Id,
    pub size: u64,
    /// `[id, kind, codec, offset, stored_len, raw_len]` per blob, compact on purpose.
    pub blobs: Vec<(Id, BlobKind, Codec, u64, u32, u32)>,
}

impl IndexedPack {
    pub fn new(id: Id, size: u64, entries: &[PackEntry]) -> Self {
        IndexedPack { id, size, blobs: entries.iter().map(|e| (e.id, e.kind, e.codec, e.offset, e.stored_len, e.raw_len)).collect() }
    }

    pub fn entries(&self) -> impl Iterator<Item = PackEntry> + '_ {
        self.blobs.iter().map(|&(id, kind, codec, offset, stored_len, raw_len)| PackEntry { id, kind, codec, raw_len, stored_len, offset })
    }
}

impl IndexObject {
    pub fn new(packs: Vec<IndexedPack>) -> Self {
        IndexObject { version: 1, created: crate::util::now_rfc3339(), hostname: crate::util::hostname(), packs }
    }

    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("index object serializes");
        zstd::bulk::compress(&json, 3).expect("zstd compresses to memory")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        use std::io::Read;
        let mut json = Vec::new();
        zstd::stream::Decoder::new(bytes)
            .and_then(|d| d.take(MAX_DECODED_LEN).read_to_end(&mut json))
            .context("index object does not decompress")?;
        let obj: IndexObject = serde_json::from_slice(&json).context("index object is malformed")?;
        anyhow::ensure!(obj.version == 1, "index object version {} is not supported", obj.version);
        Ok(obj)
    }
}
