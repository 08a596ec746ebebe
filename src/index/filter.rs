//! A Bloom filter over chunk ids, in front of SQLite on the archive hot path.
//!
//! Ten bits per chunk and seven probes give about 1 % false positives, so
//! 10 M chunks take 12 MiB. A negative answer is taken as "new" (the chunk
//! needs no SQLite query); a positive one is confirmed by a batched query.
//!
//! The filter persists beside the cache (`<cache file>.bloom`, written to a
//! temporary file and renamed into place) with the cache generation and the
//! highest `packs.seq` whose blobs it holds: loading it takes in only the
//! blobs of later packs. It is rebuilt from SQLite when the file is missing,
//! torn or corrupt (checksum), of another cache or repository, of other
//! parameters, or too small for what the cache now holds. Rows the cache drops
//! stay in the filter: a false positive, which SQLite answers. A stale or lost
//! file can only cause false negatives for blobs the filter missed, never
//! wrong data: such a chunk is stored again (lost deduplication), and never
//! skipped while absent, since "skip" needs SQLite's confirmation.
//!
//! File layout (little-endian): `IMGARCBF`, version u32 (1), probes u32,
//! words u64, inserted u64, watermark i64, generation (32 bytes: BLAKE3 of
//! the cache's `meta.generation` and repository id), the filter's words, and
//! the BLAKE3 of all bytes before it.

use crate::ids::Id;
use std::path::Path;

pub struct ChunkFilter {
    bits: Vec<u64>,
    mask: u64,
    /// Ids inserted (with repeats): how full the filter is, for the resize check.
    inserted: u64,
    /// The highest `packs.seq` whose blobs are all in the filter.
    pub(super) watermark: i64,
}

const PROBES: u64 = 7;
const MAGIC: &[u8; 8] = b"IMGARCBF";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 32;
/// Appended to the cache file's name.
pub(super) const FILE_SUFFIX: &str = ".bloom";

fn bits_for(expected: usize) -> u64 {
    (expected.max(1 << 16) as u64 * 10).next_power_of_two()
}

impl ChunkFilter {
    /// A filter sized for `expected` ids (it still works, less sharply, past that).
    pub fn with_capacity(expected: usize) -> Self {
        let want_bits = bits_for(expected);
        ChunkFilter { bits: vec![0; (want_bits / 64) as usize], mask: want_bits - 1, inserted: 0, watermark: 0 }
    }

    /// Whether a filter sized for `expected` ids would be larger than this one.
    pub(super) fn outgrown_by(&self, expected: usize) -> bool {
        bits_for(expected) > self.mask + 1
    }

    pub(super) fn inserted(&self) -> u64 {
        self.inserted
    }

    fn probes(id: &Id) -> impl Iterator<Item = u64> {
        // Ids are uniform BLAKE3 output, so two words of it are independent hashes.
        let h1 = id.prefix_u64();
        let h2 = u64::from_le_bytes(id.0[8..16].try_into().expect("8 bytes")) | 1;
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)))
    }

    pub fn insert(&mut self, id: &Id) {
        for p in Self::probes(id) {
            let b = p & self.mask;
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.inserted += 1;
    }

    pub fn may_contain(&self, id: &Id) -> bool {
        Self::probes(id).all(|p| {
            let b = p & self.mask;
            self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
        })
    }

    /// The file's bytes, for the cache `generation` (see the module doc).
    fn encode(&self, generation: &Id) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.bits.len() * 8 + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(PROBES as u32).to_le_bytes());
        out.extend_from_slice(&(self.bits.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.inserted.to_le_bytes());
        out.extend_from_slice(&self.watermark.to_le_bytes());
        out.extend_from_slice(&generation.0);
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// A filter from a file's bytes; `None` unless it is whole, intact, of
    /// these parameters and of this `generation`.
    fn decode(bytes: &[u8], generation: &Id) -> Option<ChunkFilter> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != sum || body.len() < HEADER_LEN || &body[..8] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
        let words = u64_at(16);
        if u32_at(8) != VERSION || u32_at(12) as u64 != PROBES || body[40..72] != generation.0 {
            return None;
        }
        if !words.is_power_of_two() || (body.len() - HEADER_LEN) as u64 != words.checked_mul(8)? {
            return None;
        }
        let bits: Vec<u64> = body[HEADER_LEN..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        Some(ChunkFilter { mask: words * 64 - 1, bits, inserted: u64_at(24), watermark: u64_at(32) as i64 })
    }

    /// Reads the filter at `path`; `None` if it is missing or not usable (see `decode`).
    pub(super) fn load(path: &Path, generation: &Id) -> Option<ChunkFilter> {
        let bytes = std::fs::read(path).ok()?;
        Self::decode(&bytes, generation)
    }

    /// Writes the filter to `path` whole or not at all: a temporary file, synced, renamed.
    pub(super) fn save(&self, path: &Path, generation: &Id) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Unique per writer: two archives (or threads) may save at once; the last rename wins whole.
        let tmp = path.with_extension(format!("bloom.tmp-{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>())));
        let result = (|| {
            let mut f =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(crate::util::PRIVATE_FILE_MODE).open(&tmp)?;
            f.write_all(&self.encode(generation))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_few_false_positives() {
        let mut f = ChunkFilter::with_capacity(100_000);
        for i in 0..100_000u32 {
            f.insert(&Id::of(&i.to_le_bytes()));
        }
        for i in 0..100_000u32 {
            assert!(f.may_contain(&Id::of(&i.to_le_bytes())));
        }
        let fp = (100_000..200_000u32).filter(|i| f.may_contain(&Id::of(&i.to_le_bytes()))).count();
        assert!(fp < 2_000, "{fp} false positives in 100000");
    }

    #[test]
    fn a_saved_filter_loads_only_whole_and_for_its_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite.bloom");
        let generation = Id::of(b"generation");
        let mut f = ChunkFilter::with_capacity(1000);
        for i in 0..1000u32 {
            f.insert(&Id::of(&i.to_le_bytes()));
        }
        f.watermark = 42;
        f.save(&path, &generation).unwrap();
        let back = ChunkFilter::load(&path, &generation).unwrap();
        assert_eq!((back.watermark, back.inserted, back.bits.len()), (42, 1000, f.bits.len()));
        assert!((0..1000u32).all(|i| back.may_contain(&Id::of(&i.to_le_bytes()))));
        assert!(ChunkFilter::load(&path, &Id::of(b"another cache")).is_none());
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 31, 32, HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(ChunkFilter::load(&path, &generation).is_none(), "torn at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 5] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(ChunkFilter::load(&path, &generation).is_none(), "a flipped bit");
    }
}
