//! Pack files: many compressed blobs appended behind a header, followed by a
//! trailer that indexes them, so every pack describes itself.
//!
//! ```text
//! header   "IMGARCPK" | version u8 = 1 | encryption u8 = 0 | salt [6]          (16 bytes)
//! blobs    stored bytes of each blob, back to back
//! entries  count × 56 bytes:
//!          id [32] | kind u8 | codec u8 | 2 zero bytes | raw_len u32 | stored_len u32
//!          | offset u64 | 4 zero bytes
//! footer   count u32 | 4 zero bytes | blake3(entries) [32] | "IMGPKEND"        (48 bytes)
//! ```
//! All integers are little-endian. A pack's name is the BLAKE3 of all its bytes.
//! The salt is random, so two packs with the same blobs still get different
//! names: an archive that writes a pack anew can never land on the name of a
//! pack that a concurrent prune is deleting.

use crate::ids::Id;
use anyhow::{bail, ensure, Result};

pub const MAGIC: &[u8; 8] = b"IMGARCPK";
pub const END_MAGIC: &[u8; 8] = b"IMGPKEND";
pub const HEADER_LEN: usize = 16;
pub const ENTRY_LEN: usize = 56;
pub const FOOTER_LEN: usize = 48;
/// A blob never exceeds this (the largest chunk is 16 MiB); bounds allocations
/// when reading untrusted trailers.
pub const MAX_BLOB_LEN: u32 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of a guest (or literal) byte stream.
    Data = 0,
    /// Repository metadata stored as a blob: extent lists, layout recipes.
    Tree = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None = 0,
    Zstd = 1,
}

/// Where one blob sits inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub offset: u64,
}

/// A blob ready to be packed: already hashed and compressed.
pub struct EncodedBlob {
    pub id: Id,
    pub kind: BlobKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored: Vec<u8>,
}

thread_local! {
    // One zstd context per worker thread: creating one per blob cost ~6 % of a
    // restore (ZSTD_createDCtx in the profile) and more on the archive side.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        c.as_mut().expect("compressor was just created").1.compress(raw)
    })
}

fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("decompressor was just created").decompress(stored, capacity)
    })
}

/// Compresses `raw` with zstd unless that does not make it smaller.
pub fn encode_blob(kind: BlobKind, raw: &[u8], level: i32) -> EncodedBlob {
    let id = Id::of(raw);
    encode_blob_with_id(id, kind, raw, level)
}

pub fn encode_blob_with_id(id: Id, kind: BlobKind, raw: &[u8], level: i32) -> EncodedBlob {
    let compressed = compress(raw, level).ok().filter(|c| c.len() < raw.len());
    let (codec, stored) = match compressed {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::None, raw.to_vec()),
    };
    EncodedBlob { id, kind, codec, raw_len: raw.len() as u32, stored }
}

/// Turns stored bytes back into the blob and checks them against the id.
pub fn decode_blob(entry: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        stored.len() == entry.stored_len as usize,
        "blob {} is damaged: {} stored bytes, expected {}",
        entry.id,
        stored.len(),
        entry.stored_len
    );
    let raw = match entry.codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd => {
            let raw = decompress(stored, entry.raw_len as usize)
                .map_err(|e| anyhow::anyhow!("blob {} is damaged: it does not decompress ({e})", entry.id))?;
            raw
        }
    };
    ensure!(
        raw.len() == entry.raw_len as usize,
        "blob {} is damaged: it decompressed to {} bytes, expected {}",
        entry.id,
        raw.len(),
        entry.raw_len
    );
    let actual = Id::of(&raw);
    ensure!(actual == entry.id, "blob {} is damaged: its content hashes to {}", entry.id, actual.short());
    Ok(raw)
}

/// Accumulates blobs into one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[1, 0]);
        buf.extend_from_slice(&rand::random::<[u8; 6]>());
        PackBuilder { buf, entries: Vec::new() }
    }

    pub fn add(&mut self, blob: &EncodedBlob) {
        self.entries.push(PackEntry {
            id: blob.id,
            kind: blob.kind,
            codec: blob.codec,
            raw_len: blob.raw_len,
            stored_len: blob.stored.len() as u32,
            offset: self.buf.len() as u64,
        });
        self.buf.extend_from_slice(&blob.stored);
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the trailer; returns the pack bytes, its id and its entries.
    pub fn finish(mut self) -> (Id, Vec<u8>, Vec<PackEntry>) {
        let start = self.buf.len();
        for e in &self.entries {
            self.buf.extend_from_slice(&e.id.0);
            self.buf.push(e.kind as u8);
            self.buf.push(e.codec as u8);
            self.buf.extend_from_slice(&[0, 0]);
            self.buf.extend_from_slice(&e.raw_len.to_le_bytes());
            self.buf.extend_from_slice(&e.stored_len.to_le_bytes());
            self.buf.extend_from_slice(&e.offset.to_le_bytes());
            self.buf.extend_from_slice(&[0, 0, 0, 0]);
        }
        let digest = blake3::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(digest.as_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        let id = Id::of(&self.buf);
        (id, self.buf, self.entries)
    }
}

/// Reads the entry count from a pack's last `FOOTER_LEN` bytes; returns the
/// length of the entries region that precedes the footer.
pub fn parse_footer(footer: &[u8], pack_len: u64) -> Result<(u32, [u8; 32], u64)> {
    ensure!(footer.len() == FOOTER_LEN, "pack footer is {} bytes, expected {FOOTER_LEN}", footer.len());
    ensure!(&footer[40..48] == END_MAGIC, "pack does not end with the pack trailer magic (truncated or not a pack)");
    let count = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes"));
    let digest: [u8; 32] = footer[8..40].try_into().expect("32 bytes");
    let entries_len = count as u64 * ENTRY_LEN as u64;
    ensure!(
        entries_len + (HEADER_LEN + FOOTER_LEN) as u64 <= pack_len,
        "pack trailer claims {count} entries, more than a {pack_len}-byte pack can hold"
    );
    Ok((count, digest, entries_len))
}

/// Parses and validates the entries region of a pack.
pub fn parse_entries(entries: &[u8], count: u32, digest: &[u8; 32], pack_len: u64) -> Result<Vec<PackEntry>> {
    ensure!(entries.len() == count as usize * ENTRY_LEN, "pack trailer has the wrong length");
    ensure!(blake3::hash(entries).as_bytes() == digest, "pack trailer checksum mismatch (damaged trailer)");
    let data_end = pack_len - entries.len() as u64 - FOOTER_LEN as u64;
    let mut out = Vec::with_capacity(count as usize);
    for raw in entries.chunks_exact(ENTRY_LEN) {
        let kind = match raw[32] {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            k => bail!("pack trailer has unknown blob kind {k}"),
        };
        let codec = match raw[33] {
            0 => Codec::None,
            1 => Codec::Zstd,
            c => bail!("pack trailer has unknown codec {c}"),
        };
        let e = PackEntry {
            id: Id::from_slice(&raw[..32]).expect("32 bytes"),
            kind,
            codec,
            raw_len: u32::from_le_bytes(raw[36..40].try_into().expect("4")),
            stored_len: u32::from_le_bytes(raw[40..44].try_into().expect("4")),
            offset: u64::from_le_bytes(raw[44..52].try_into().expect("8")),
        };
        ensure!(e.raw_len <= MAX_BLOB_LEN && e.stored_len <= MAX_BLOB_LEN, "pack entry {} is larger than any blob", e.id);
        ensure!(
            e.offset >= HEADER_LEN as u64 && e.offset.checked_add(e.stored_len as u64).is_some_and(|end| end <= data_end),
            "pack entry {} points outside the pack's data area",
            e.id
        );
        out.push(e);
    }
    Ok(out)
}

/// Parses a whole pack held in memory (used by `check --read-data` and rebuild tests).
pub fn parse_pack(pack: &[u8]) -> Result<Vec<PackEntry>> {
    ensure!(pack.len() >= HEADER_LEN + FOOTER_LEN, "pack is only {} bytes: truncated", pack.len());
    ensure!(&pack[..8] == MAGIC, "pack does not start with the pack magic");
    ensure!(pack[8] == 1, "pack version {} is not supported", pack[8]);
    ensure!(pack[9] == 0, "pack is encrypted, which this imgarc does not support");
    let len = pack.len() as u64;
    let (count, digest, entries_len) = parse_footer(&pack[pack.len() - FOOTER_LEN..], len)?;
    let start = pack.len() - FOOTER_LEN - entries_len as usize;
    parse_entries(&pack[start..pack.len() - FOOTER_LEN], count, &digest, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_damage() {
        let mut b = PackBuilder::new();
        let blobs: Vec<Vec<u8>> = vec![vec![7u8; 10000], (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(), vec![]];
        let enc: Vec<_> = blobs.iter().map(|r| encode_blob(BlobKind::Data, r, 3)).collect();
        for e in &enc {
            b.add(e);
        }
        let (id, bytes, entries) = b.finish();
        assert_eq!(id, Id::of(&bytes));
        assert_eq!(enc[0].codec, Codec::Zstd);
        let parsed = parse_pack(&bytes).unwrap();
        assert_eq!(parsed, entries);
        for (e, raw) in parsed.iter().zip(&blobs) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len as u64) as usize];
            assert_eq!(&decode_blob(e, s).unwrap(), raw);
        }
        // A flipped byte in a blob is caught by its id.
        let mut bad = bytes.clone();
        bad[parsed[1].offset as usize + 3] ^= 1;
        let e = &parsed[1];
        let s = &bad[e.offset as usize..(e.offset + e.stored_len as u64) as usize];
        assert!(decode_blob(e, s).unwrap_err().to_string().contains("damaged"));
        // A truncated pack is refused with a message, not a panic.
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(parse_pack(&bytes[..cut]).is_err());
        }
    }
}
