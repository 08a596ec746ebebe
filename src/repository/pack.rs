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

use crate::crypto::{BlobSealer, KeySet};
use crate::ids::{Id, IdKey};
use anyhow::{anyhow, bail, ensure, Result};
use std::sync::Arc;

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

/// A blob of an unencrypted repository: unkeyed id, compressed with zstd
/// unless that does not make it smaller.
pub fn encode_blob(kind: BlobKind, raw: &[u8], level: i32) -> EncodedBlob {
    let id = Id::of(raw);
    encode_blob_with_id(id, kind, raw, level)
}

pub fn encode_blob_with_id(id: Id, kind: BlobKind, raw: &[u8], level: i32) -> EncodedBlob {
    let (codec, stored) = compress_unless_larger(raw, level);
    EncodedBlob { id, kind, codec, raw_len: raw.len() as u32, stored }
}

fn compress_unless_larger(raw: &[u8], level: i32) -> (Codec, Vec<u8>) {
    match compress(raw, level).ok().filter(|c| c.len() < raw.len()) {
        Some(c) => (Codec::Zstd, c),
        None => (Codec::None, raw.to_vec()),
    }
}

/// Associated data of a sealed blob: it cannot be read as another blob or kind.
fn blob_aad(kind: BlobKind, id: &Id) -> Vec<u8> {
    let mut aad = b"imgarc blob\0".to_vec();
    aad.push(kind as u8);
    aad.extend_from_slice(&id.0);
    aad
}

/// Associated data of a sealed pack trailer.
fn entries_aad(count: u32) -> Vec<u8> {
    let mut aad = b"imgarc pack entries\0".to_vec();
    aad.extend_from_slice(&count.to_le_bytes());
    aad
}

/// Longest dedup scope a sealed blob records (a Glance project id is 32 hex digits).
pub const MAX_SCOPE_LEN: usize = 255;

/// Names, compresses and (in an encrypted repository) seals the blobs of one
/// archive run: made by `Repository::blob_writer` for one dedup scope.
pub struct BlobWriter {
    level: i32,
    id_key: IdKey,
    /// The sealer to the repository's public key and the scope every blob records.
    seal: Option<(BlobSealer, Vec<u8>)>,
}

impl BlobWriter {
    /// An unencrypted repository's writer: unkeyed ids, no sealing (format v1).
    pub fn plain(level: i32) -> BlobWriter {
        BlobWriter { level, id_key: IdKey::UNKEYED, seal: None }
    }

    /// An encrypted repository's writer for the dedup scope `scope` (empty:
    /// the whole repository), whose ids are keyed with `id_key`.
    pub fn sealed(level: i32, keys: &KeySet, id_key: IdKey, scope: &str) -> Result<BlobWriter> {
        ensure!(scope.len() <= MAX_SCOPE_LEN, "a dedup scope is at most {MAX_SCOPE_LEN} bytes");
        Ok(BlobWriter { level, id_key, seal: Some((keys.blob_sealer(), scope.as_bytes().to_vec())) })
    }

    /// The id a blob with these bytes gets.
    pub fn id_of(&self, raw: &[u8]) -> Id {
        self.id_key.id_of(raw)
    }

    pub fn encode(&self, kind: BlobKind, raw: &[u8]) -> EncodedBlob {
        self.encode_with_id(self.id_of(raw), kind, raw)
    }

    /// Encodes `raw`, already named `id` by [`BlobWriter::id_of`].
    pub fn encode_with_id(&self, id: Id, kind: BlobKind, raw: &[u8]) -> EncodedBlob {
        let (codec, body) = compress_unless_larger(raw, self.level);
        let stored = match &self.seal {
            None => body,
            Some((sealer, scope)) => {
                let mut plain = Vec::with_capacity(1 + scope.len() + body.len());
                plain.push(scope.len() as u8);
                plain.extend_from_slice(scope);
                plain.extend_from_slice(&body);
                sealer.seal(&blob_aad(kind, &id), &plain)
            }
        };
        EncodedBlob { id, kind, codec, raw_len: raw.len() as u32, stored }
    }
}

/// Turns stored bytes back into the blob and checks them against the id: an
/// unencrypted repository's blob (`keys` = `None`), or an encrypted one's,
/// opened with the full key and checked against the id key of the scope it records.
pub fn open_blob(entry: &PackEntry, stored: &[u8], keys: Option<&KeySet>) -> Result<Vec<u8>> {
    let Some(keys) = keys else { return decode_blob(entry, stored) };
    check_stored_len(entry, stored)?;
    let plain = keys.open_blob(&blob_aad(entry.kind, &entry.id), stored).map_err(|e| anyhow!("blob {}: {e}", entry.id))?;
    let scope_len = *plain.first().ok_or_else(|| anyhow!("blob {} is damaged: empty", entry.id))? as usize;
    ensure!(plain.len() > scope_len, "blob {} is damaged: its scope is longer than the blob", entry.id);
    let scope =
        std::str::from_utf8(&plain[1..1 + scope_len]).map_err(|_| anyhow!("blob {} is damaged: its scope is not UTF-8", entry.id))?;
    let id_key = if scope.is_empty() { keys.id_key() } else { keys.project_id_key(scope) };
    decode_body(entry, &plain[1 + scope_len..], &id_key)
}

/// Turns an unencrypted repository's stored bytes back into the blob and checks them against the id.
pub fn decode_blob(entry: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    check_stored_len(entry, stored)?;
    decode_body(entry, stored, &IdKey::UNKEYED)
}

fn check_stored_len(entry: &PackEntry, stored: &[u8]) -> Result<()> {
    ensure!(
        stored.len() == entry.stored_len as usize,
        "blob {} is damaged: {} stored bytes, expected {}",
        entry.id,
        stored.len(),
        entry.stored_len
    );
    Ok(())
}

/// Decompresses a blob's codec bytes and checks the result against its id.
fn decode_body(entry: &PackEntry, stored: &[u8], id_key: &IdKey) -> Result<Vec<u8>> {
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
    let actual = id_key.id_of(&raw);
    ensure!(actual == entry.id, "blob {} is damaged: its content hashes to {}", entry.id, actual.short());
    Ok(raw)
}

/// Accumulates blobs into one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    /// An encrypted repository's keys: the trailer is sealed with the meta key.
    keys: Option<Arc<KeySet>>,
}

impl PackBuilder {
    /// A pack of an unencrypted repository (format v1).
    #[allow(clippy::new_without_default)] // no Default: `mem::take` would silently swap in an unencrypted pack
    pub fn new() -> Self {
        Self::with_keys(None)
    }

    /// A pack of an encrypted repository when `keys` is given (the blobs added
    /// must come from a sealing [`BlobWriter`] of the same keys).
    pub fn with_keys(keys: Option<Arc<KeySet>>) -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[1, keys.is_some() as u8]);
        buf.extend_from_slice(&rand::random::<[u8; 6]>());
        PackBuilder { buf, entries: Vec::new(), keys }
    }

    /// An empty pack of the same kind (same keys).
    pub fn fresh(&self) -> Self {
        Self::with_keys(self.keys.clone())
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
        let mut entries = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            entries.extend_from_slice(&e.id.0);
            entries.push(e.kind as u8);
            entries.push(e.codec as u8);
            entries.extend_from_slice(&[0, 0]);
            entries.extend_from_slice(&e.raw_len.to_le_bytes());
            entries.extend_from_slice(&e.stored_len.to_le_bytes());
            entries.extend_from_slice(&e.offset.to_le_bytes());
            entries.extend_from_slice(&[0, 0, 0, 0]);
        }
        if let Some(keys) = &self.keys {
            entries = keys.seal_meta(&entries_aad(self.entries.len() as u32), &entries);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&entries);
        let digest = blake3::hash(&self.buf[start..]);
        self.buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(digest.as_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        let id = Id::of(&self.buf);
        (id, self.buf, self.entries)
    }
}

/// Bounds on the blobs one repository may hold, from its `config`: what makes
/// an entry credible before anything is allocated or decompressed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest `raw_len` of a data blob: the chunker's `max_size`.
    pub max_data_len: u32,
    /// Largest `raw_len` of a tree blob (and of any stored_len): [`MAX_BLOB_LEN`].
    pub max_tree_len: u32,
    /// What sealing adds, in an encrypted repository.
    pub sealed: Option<SealedLimits>,
}

/// Bytes sealing adds to the blobs and trailer of an encrypted repository's packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedLimits {
    /// Smallest addition to a blob's codec bytes: ephemeral key, nonce, tag and
    /// the scope's length byte; the scope itself adds up to [`MAX_SCOPE_LEN`] more.
    pub blob_overhead: u32,
    /// What sealing adds to the entries region: nonce and tag.
    pub trailer_overhead: u32,
}

impl Default for BlobLimits {
    /// The format's own bounds, for readers without a config (fuzzing, tools).
    fn default() -> Self {
        BlobLimits { max_data_len: MAX_BLOB_LEN, max_tree_len: MAX_BLOB_LEN, sealed: None }
    }
}

impl BlobLimits {
    pub fn from_config(config: &super::config::Config) -> Self {
        let sealed =
            config.cipher().map(|c| SealedLimits { blob_overhead: (32 + c.overhead() + 1) as u32, trailer_overhead: c.overhead() as u32 });
        BlobLimits { max_data_len: config.chunker.max_size.min(MAX_BLOB_LEN), max_tree_len: MAX_BLOB_LEN, sealed }
    }

    /// Bytes of a pack's trailer (entries region and footer) for `count` entries, if representable.
    fn trailer_len(&self, count: u64) -> Option<u64> {
        let overhead = self.sealed.map_or(0, |s| s.trailer_overhead as u64);
        count.checked_mul(ENTRY_LEN as u64)?.checked_add(FOOTER_LEN as u64 + overhead)
    }
}

/// Checks that `entries` can describe the blobs of a `pack_len`-byte pack whose
/// trailer holds exactly these entries: every blob within its kind's size
/// bound, stored in the way its codec says, inside the data area
/// `[HEADER_LEN, pack_len - FOOTER_LEN - ENTRY_LEN × N)`, and no two blobs
/// overlapping. Pack trailers and index objects both pass through here, so a
/// reader can slice and decompress any entry it accepted without checking again.
pub fn validate_entries(entries: &[PackEntry], pack_len: u64, limits: &BlobLimits) -> Result<()> {
    let trailer_len = limits.trailer_len(entries.len() as u64).and_then(|n| n.checked_add(HEADER_LEN as u64));
    let data_end = match trailer_len {
        Some(t) if t <= pack_len => pack_len - t + HEADER_LEN as u64,
        _ => bail!("{} entries do not fit in a {pack_len}-byte pack", entries.len()),
    };
    for e in entries {
        let max_raw = match e.kind {
            BlobKind::Data => limits.max_data_len,
            BlobKind::Tree => limits.max_tree_len,
        };
        ensure!(e.raw_len <= max_raw, "blob {} claims raw_len {}, above the repository's limit of {max_raw} for its kind", e.id, e.raw_len);
        // What the codec bytes may add to a sealed blob, from least to most.
        let (least, most) = limits.sealed.map_or((0, 0), |s| (s.blob_overhead, s.blob_overhead + MAX_SCOPE_LEN as u32));
        match e.codec {
            Codec::None => ensure!(
                (e.raw_len as u64 + least as u64..=e.raw_len as u64 + most as u64).contains(&(e.stored_len as u64)),
                "blob {} is stored uncompressed but stored_len {} does not match raw_len {}",
                e.id,
                e.stored_len,
                e.raw_len
            ),
            Codec::Zstd => ensure!(
                (least..=MAX_BLOB_LEN.saturating_add(most)).contains(&e.stored_len),
                "blob {} claims stored_len {}, which no blob has",
                e.id,
                e.stored_len
            ),
        }
        let end = e.offset.checked_add(e.stored_len as u64);
        ensure!(
            e.offset >= HEADER_LEN as u64 && end.is_some_and(|end| end <= data_end),
            "blob {} at offset {} (+{}) lies outside the pack's data area [{HEADER_LEN}, {data_end})",
            e.id,
            e.offset,
            e.stored_len
        );
    }
    let mut by_offset: Vec<&PackEntry> = entries.iter().filter(|e| e.stored_len > 0).collect();
    by_offset.sort_by_key(|e| e.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        ensure!(a.offset + a.stored_len as u64 <= b.offset, "blobs {} and {} overlap at offset {} of the pack", a.id, b.id, b.offset);
    }
    Ok(())
}

/// Reads the entry count from a pack's last `FOOTER_LEN` bytes; returns the
/// length of the entries region that precedes the footer.
pub fn parse_footer(footer: &[u8], pack_len: u64, limits: &BlobLimits) -> Result<(u32, [u8; 32], u64)> {
    ensure!(footer.len() == FOOTER_LEN, "pack footer is {} bytes, expected {FOOTER_LEN}", footer.len());
    ensure!(&footer[40..48] == END_MAGIC, "pack does not end with the pack trailer magic (truncated or not a pack)");
    let count = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes"));
    let digest: [u8; 32] = footer[8..40].try_into().expect("32 bytes");
    let trailer_len = limits.trailer_len(count as u64).expect("a u32 count of entries fits");
    ensure!(trailer_len + HEADER_LEN as u64 <= pack_len, "pack trailer claims {count} entries, more than a {pack_len}-byte pack can hold");
    Ok((count, digest, trailer_len - FOOTER_LEN as u64))
}

/// Parses and validates the entries region of a pack ([`validate_entries`]);
/// in an encrypted repository (`keys`), opens it with the meta key first.
pub fn parse_entries(
    stored: &[u8],
    count: u32,
    digest: &[u8; 32],
    pack_len: u64,
    limits: &BlobLimits,
    keys: Option<&KeySet>,
) -> Result<Vec<PackEntry>> {
    ensure!(Some(stored.len() as u64 + FOOTER_LEN as u64) == limits.trailer_len(count as u64), "pack trailer has the wrong length");
    ensure!(blake3::hash(stored).as_bytes() == digest, "pack trailer checksum mismatch (damaged trailer)");
    let opened;
    let entries = match (limits.sealed, keys) {
        (None, _) => stored,
        (Some(_), Some(keys)) => {
            opened = keys.open_meta(&entries_aad(count), stored).map_err(|e| anyhow!("pack trailer: {e}"))?;
            &opened[..]
        }
        (Some(_), None) => bail!("pack trailer is sealed and no keys were given"),
    };
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
        out.push(PackEntry {
            id: Id::from_slice(&raw[..32]).expect("32 bytes"),
            kind,
            codec,
            raw_len: u32::from_le_bytes(raw[36..40].try_into().expect("4")),
            stored_len: u32::from_le_bytes(raw[40..44].try_into().expect("4")),
            offset: u64::from_le_bytes(raw[44..52].try_into().expect("8")),
        });
    }
    validate_entries(&out, pack_len, limits)?;
    Ok(out)
}

/// Parses a whole pack held in memory (used by `check --read-data` and rebuild tests).
pub fn parse_pack(pack: &[u8], limits: &BlobLimits, keys: Option<&KeySet>) -> Result<Vec<PackEntry>> {
    ensure!(pack.len() >= HEADER_LEN + FOOTER_LEN, "pack is only {} bytes: truncated", pack.len());
    ensure!(&pack[..8] == MAGIC, "pack does not start with the pack magic");
    ensure!(pack[8] == 1, "pack version {} is not supported", pack[8]);
    match (pack[9], limits.sealed.is_some()) {
        (0, false) | (1, true) => {}
        (0, true) => bail!("pack is not encrypted, in an encrypted repository"),
        (1, false) => bail!("pack is encrypted, in an unencrypted repository"),
        (e, _) => bail!("pack has unknown encryption {e}"),
    }
    let len = pack.len() as u64;
    let (count, digest, entries_len) = parse_footer(&pack[pack.len() - FOOTER_LEN..], len, limits)?;
    let start = pack.len() - FOOTER_LEN - entries_len as usize;
    parse_entries(&pack[start..pack.len() - FOOTER_LEN], count, &digest, len, limits, keys)
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
        let parsed = parse_pack(&bytes, &BlobLimits::default(), None).unwrap();
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
            assert!(parse_pack(&bytes[..cut], &BlobLimits::default(), None).is_err());
        }
    }

    /// Rewrites entry `n`'s offset in a finished pack and re-seals the trailer
    /// checksum, as a hostile writer would.
    fn with_offset(pack: &[u8], count: usize, n: usize, offset: u64) -> Vec<u8> {
        let mut p = pack.to_vec();
        let start = p.len() - FOOTER_LEN - count * ENTRY_LEN;
        let at = start + n * ENTRY_LEN + 44;
        p[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let digest = blake3::hash(&p[start..p.len() - FOOTER_LEN]);
        let d = p.len() - FOOTER_LEN + 8;
        p[d..d + 32].copy_from_slice(digest.as_bytes());
        p
    }

    #[test]
    fn trailers_with_overlapping_or_wrapping_entries_are_refused() {
        let mut b = PackBuilder::new();
        for n in 0..3u32 {
            b.add(&encode_blob(BlobKind::Data, &(0..3000u32).map(|i| (i * (n + 7) % 253) as u8).collect::<Vec<_>>(), 3));
        }
        let (_, bytes, entries) = b.finish();
        let limits = BlobLimits::default();
        assert!(parse_pack(&bytes, &limits, None).is_ok());
        let overlap = with_offset(&bytes, 3, 1, entries[0].offset + 1);
        let err = parse_pack(&overlap, &limits, None).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
        let wrap = with_offset(&bytes, 3, 2, u64::MAX - 5);
        let err = parse_pack(&wrap, &limits, None).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
