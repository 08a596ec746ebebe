//! Index objects: the repository's own record of which blobs each pack holds.
//! A writer adds one immutable index object per pack it writes, stored at
//! `index/<blake3 of the object>` (a reader checks the name, as for every
//! content-named object); the local SQLite cache is built from them.
//! Encoding: zstd-compressed JSON (see format-spec/README.md).

use super::pack::{self, BlobKind, BlobLimits, Codec, PackEntry};
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

    /// Decodes and validates an index object: every pack's entries must be
    /// ones its trailer could hold ([`pack::validate_entries`]), so the cache
    /// never takes in an entry that the pack's own trailer would be refused for.
    pub fn decode(bytes: &[u8], limits: &BlobLimits) -> Result<Self> {
        use std::io::Read;
        let mut json = Vec::new();
        zstd::stream::Decoder::new(bytes)
            .and_then(|d| d.take(MAX_DECODED_LEN).read_to_end(&mut json))
            .context("index object does not decompress")?;
        let obj: IndexObject = serde_json::from_slice(&json).context("index object is malformed")?;
        anyhow::ensure!(obj.version == 1, "index object version {} is not supported", obj.version);
        for p in &obj.packs {
            let entries: Vec<PackEntry> = p.entries().collect();
            pack::validate_entries(&entries, p.size, limits).with_context(|| format!("pack {}", p.id.to_hex()))?;
        }
        Ok(obj)
    }
}

impl super::file::RepoFile for IndexObject {
    const PREFIX: &'static str = "index/";
    const KIND: &'static str = "index object";
    /// Stored bytes are compressed: an object larger than it may decode to is refused unread.
    const MAX_BYTES: u64 = MAX_DECODED_LEN;
    const NAMING: super::file::Naming = super::file::Naming::ContentId;
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(IndexObject::encode(self))
    }
    fn decode(bytes: &[u8], limits: &BlobLimits) -> Result<Self> {
        IndexObject::decode(bytes, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK_SIZE: u64 = 16 + 3 * 1000 + 3 * 56 + 48;

    fn blob(n: u8, offset: u64, stored_len: u32, raw_len: u32) -> (Id, BlobKind, Codec, u64, u32, u32) {
        (Id::of(&[n]), BlobKind::Data, Codec::Zstd, offset, stored_len, raw_len)
    }

    fn object(blobs: Vec<(Id, BlobKind, Codec, u64, u32, u32)>) -> Vec<u8> {
        IndexObject::new(vec![IndexedPack { id: Id::of(b"pack"), size: PACK_SIZE, blobs }]).encode()
    }

    fn decode_err(bytes: &[u8]) -> String {
        format!("{:#}", IndexObject::decode(bytes, &BlobLimits::default()).unwrap_err())
    }

    #[test]
    fn decode_accepts_what_a_pack_trailer_could_hold() {
        let ok = object(vec![blob(1, 16, 1000, 4000), blob(2, 1016, 1000, 4000), blob(3, 2016, 1000, 4000)]);
        assert_eq!(IndexObject::decode(&ok, &BlobLimits::default()).unwrap().packs[0].blobs.len(), 3);
    }

    #[test]
    fn decode_refuses_entries_no_pack_could_hold() {
        // A decompression bomb: raw_len near 4 GiB.
        let err = decode_err(&object(vec![blob(1, 16, 1000, u32::MAX)]));
        assert!(err.contains("raw_len") && err.contains(&Id::of(b"pack").to_hex()), "{err}");
        // Two entries sharing bytes.
        let err = decode_err(&object(vec![blob(1, 16, 1000, 4000), blob(2, 500, 1000, 4000)]));
        assert!(err.contains("overlap"), "{err}");
        // An offset that wraps when the length is added.
        let err = decode_err(&object(vec![blob(1, u64::MAX - 10, 1000, 4000)]));
        assert!(err.contains("outside the pack's data area"), "{err}");
        // Reaching into the trailer, or before the header's end.
        assert!(decode_err(&object(vec![blob(1, 2500, 1000, 4000)])).contains("outside"));
        assert!(decode_err(&object(vec![blob(1, 0, 10, 4000)])).contains("outside"));
        // Uncompressed but lengths disagree.
        let err = decode_err(&object(vec![(Id::of(&[1]), BlobKind::Data, Codec::None, 16, 10, 5000)]));
        assert!(err.contains("stored_len"), "{err}");
    }

    #[test]
    fn data_blobs_are_bounded_by_the_chunker_max_size() {
        let config = crate::repository::config::Config::new(64 * 1024, 3).unwrap();
        let limits = BlobLimits::from_config(&config);
        let big = object(vec![blob(1, 16, 1000, config.chunker.max_size + 1)]);
        assert!(IndexObject::decode(&big, &limits).is_err());
        let fits = object(vec![blob(1, 16, 1000, config.chunker.max_size)]);
        assert!(IndexObject::decode(&fits, &limits).is_ok());
    }
}
