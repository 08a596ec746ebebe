//! The canonical guest stream: a virtual disk cut into aligned hole blocks;
//! all-zero blocks are holes, each maximal run of non-zero blocks is cut into
//! content-defined chunks with FastCDC (2020).
//!
//! Every layout (raw identity, QCOW2 decomposition) feeds guest bytes through
//! `GuestChunker`, which is why the same disk yields the same chunks whatever
//! its container. Pieces may arrive in any order; a piece that does not
//! continue the previous one ends the current run.
//!
//! Boundaries come from a [`Gear`] table: FastCDC's standard one for
//! unencrypted repositories (byte for byte the v1 format), or one derived from
//! the repository's secret `chunker_key` when encrypted, so that chunk lengths
//! are no longer a public function of the data (format-spec/encryption.md §6).
//!
//! It also owns the chunker's parameters ([`ChunkerParams`], the `chunker` field of the
//! repository's `config` object): `repository::config` depends on this module, not the reverse.

use anyhow::{bail, Result};
use fastcdc::v2020;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The FastCDC parameters of a repository (its `config` object's `chunker` field, format-spec §2):
/// they fix every chunk boundary, so they are part of the repository format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ChunkerParams {
    /// Always `fastcdc-2020`.
    pub algorithm: ChunkAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalization level (1).
    pub normalization: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub enum ChunkAlgorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl ChunkerParams {
    pub fn with_average(avg: u32) -> Result<ChunkerParams> {
        if !(4096..=4 * 1024 * 1024).contains(&avg) || !avg.is_power_of_two() {
            bail!("chunk size {avg} must be a power of two between 4 KiB and 4 MiB");
        }
        Ok(ChunkerParams { algorithm: ChunkAlgorithm::FastCdc2020, min_size: avg / 4, avg_size: avg, max_size: avg * 4, normalization: 1 })
    }
}

/// BLAKE3 key-derivation context of the keyed gear table (format-spec/encryption.md §6).
const GEAR_CONTEXT: &str = "imgarc 2026-12-01 fastcdc gear table";

/// The gear hash table FastCDC rolls over the data, and its left-shifted twin
/// (`v2020::cut_gear` takes both): which table a repository uses is part of its format.
pub struct Gear {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Gear {
    /// FastCDC 2020's own table (unencrypted repositories; the golden test pins it).
    pub fn standard() -> Arc<Gear> {
        let (gear, gear_ls) = v2020::get_gear_with_seed(0);
        Arc::new(Gear { gear, gear_ls })
    }

    /// The table of an encrypted repository: 256 little-endian u64 read from the
    /// BLAKE3 XOF of `chunker_key` (derive-key mode, [`GEAR_CONTEXT`]). Secret, so an
    /// observer without the key cannot compute a known image's chunk lengths.
    pub fn keyed(chunker_key: &[u8; 32]) -> Arc<Gear> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 256 * 8]);
        blake3::Hasher::new_derive_key(GEAR_CONTEXT).update(chunker_key).finalize_xof().fill(&mut bytes[..]);
        let mut gear = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        for (i, word) in bytes.chunks_exact(8).enumerate() {
            gear[i] = u64::from_le_bytes(word.try_into().expect("8-byte chunks"));
            // The same relation fastcdc's GEAR_LS has to GEAR.
            gear_ls[i] = gear[i] << 1;
        }
        Arc::new(Gear { gear, gear_ls })
    }

    /// The table of a repository: keyed by its chunker key when it has keys.
    pub fn for_chunker_key(chunker_key: Option<&[u8; 32]>) -> Arc<Gear> {
        chunker_key.map_or_else(Gear::standard, Gear::keyed)
    }
}

impl Drop for Gear {
    fn drop(&mut self) {
        // A keyed table is derived key material: it would let anyone compute chunk lengths.
        zeroize::Zeroize::zeroize(&mut self.gear[..]);
        zeroize::Zeroize::zeroize(&mut self.gear_ls[..]);
    }
}

impl std::fmt::Debug for Gear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gear(***)")
    }
}

/// A chunk of guest data at its guest offset.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

pub struct GuestChunker {
    params: ChunkerParams,
    gear: Arc<Gear>,
    masks: (u64, u64),
    block: u64,
    /// Bytes of the aligned block being assembled, and where it starts.
    block_buf: Vec<u8>,
    block_start: u64,
    /// The current run of non-zero data not yet cut into chunks.
    run: Vec<u8>,
    run_start: u64,
    /// Where the next piece must start to continue the current block/run.
    next: u64,
    pub hole_bytes: u64,
    pub data_bytes: u64,
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// True if every byte is zero; memcmp against a static zero page runs at memory speed.
pub fn is_zero(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let n = data.len().min(ZEROS.len());
        if data[..n] != ZEROS[..n] {
            return false;
        }
        data = &data[n..];
    }
    true
}

impl GuestChunker {
    /// `gear`: the repository's table ([`Gear::for_chunker_key`]); a wrong one
    /// silently stops deduplication against what is stored.
    pub fn new(params: ChunkerParams, hole_block: u32, gear: Arc<Gear>) -> Self {
        let bits = v2020::logarithm2(params.avg_size);
        let level = params.normalization;
        let masks = (v2020::MASKS[(bits + level) as usize], v2020::MASKS[(bits - level) as usize]);
        GuestChunker {
            params,
            gear,
            masks,
            block: hole_block as u64,
            block_buf: Vec::with_capacity(hole_block as usize),
            block_start: 0,
            run: Vec::with_capacity(params.max_size as usize * 2),
            run_start: 0,
            next: 0,
            hole_bytes: 0,
            data_bytes: 0,
        }
    }

    /// Feeds guest bytes at `offset`; complete chunks are passed to `out`.
    pub fn push(&mut self, offset: u64, mut data: &[u8], out: &mut dyn FnMut(Chunk)) {
        if offset != self.next || (self.block_buf.is_empty() && self.run.is_empty()) {
            self.end_run(out);
            self.block_start = offset;
            self.next = offset;
        }
        let mut pos = offset;
        while !data.is_empty() {
            let block_end = (pos / self.block + 1) * self.block;
            let take = ((block_end - pos) as usize).min(data.len());
            let (piece, rest) = data.split_at(take);
            if self.block_buf.is_empty() && take as u64 == self.block {
                // Fast path: a whole aligned block straight from the input.
                self.block_start = pos;
                self.classify(piece, out);
            } else {
                if self.block_buf.is_empty() {
                    self.block_start = pos;
                }
                self.block_buf.extend_from_slice(piece);
                if pos + take as u64 == block_end {
                    let buf = std::mem::take(&mut self.block_buf);
                    self.classify(&buf, out);
                    self.block_buf = buf;
                    self.block_buf.clear();
                }
            }
            pos += take as u64;
            data = rest;
        }
        self.next = pos;
    }

    /// Flushes everything; call once at the end of the stream.
    pub fn finish(&mut self, out: &mut dyn FnMut(Chunk)) {
        self.end_run(out);
    }

    /// Decides whether one block (or a partial block at a run edge) is a hole.
    fn classify(&mut self, block: &[u8], out: &mut dyn FnMut(Chunk)) {
        if is_zero(block) {
            self.hole_bytes += block.len() as u64;
            self.cut_run(true, out);
            return;
        }
        if self.run.is_empty() {
            self.run_start = self.block_start;
        }
        self.data_bytes += block.len() as u64;
        self.run.extend_from_slice(block);
        self.cut_run(false, out);
    }

    fn end_run(&mut self, out: &mut dyn FnMut(Chunk)) {
        if !self.block_buf.is_empty() {
            let buf = std::mem::take(&mut self.block_buf);
            self.classify(&buf, out);
            self.block_buf = buf;
            self.block_buf.clear();
        }
        self.cut_run(true, out);
    }

    /// Cuts chunks off the run; at the run's end (`last`) the remainder too.
    /// A cut is only final once `max_size` bytes are buffered (or the run ended),
    /// so chunk boundaries never depend on how the input was split into pieces.
    fn cut_run(&mut self, last: bool, out: &mut dyn FnMut(Chunk)) {
        let (min, avg, max) = (self.params.min_size as usize, self.params.avg_size as usize, self.params.max_size as usize);
        let mut pos = 0;
        while pos < self.run.len() && (last || self.run.len() - pos >= max) {
            let (m, g) = (self.masks, &*self.gear);
            let (_, len) = v2020::cut_gear(&self.run[pos..], min, avg, max, m.0, m.1, m.0 << 1, m.1 << 1, &g.gear, &g.gear_ls);
            let len = len.max(1).min(self.run.len() - pos);
            out(Chunk { offset: self.run_start + pos as u64, data: self.run[pos..pos + len].to_vec() });
            pos += len;
        }
        if pos > 0 {
            self.run.drain(..pos);
            self.run_start += pos as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChunkerParams {
        ChunkerParams::with_average(16 * 1024).unwrap()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks_of(pieces: &[(u64, &[u8])]) -> Vec<(u64, Vec<u8>)> {
        let mut c = GuestChunker::new(params(), 64 * 1024, Gear::standard());
        let mut v = vec![];
        for (off, d) in pieces {
            c.push(*off, d, &mut |ch| v.push((ch.offset, ch.data)));
        }
        c.finish(&mut |ch| v.push((ch.offset, ch.data)));
        v
    }

    #[test]
    fn holes_are_skipped_and_chunks_cover_data() {
        let mut disk = pseudo_random(1 << 20, 7);
        disk[128 * 1024..384 * 1024].fill(0); // four zero blocks
        let chunks = chunks_of(&[(0, &disk)]);
        let mut rebuilt = vec![0u8; disk.len()];
        for (off, d) in &chunks {
            assert!(d.len() <= 64 * 1024);
            rebuilt[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        assert_eq!(rebuilt, disk);
        assert!(chunks.iter().all(|(off, d)| *off + d.len() as u64 <= 128 * 1024 || *off >= 384 * 1024));
    }

    #[test]
    fn same_chunks_however_the_input_is_split() {
        let disk = pseudo_random(700_000, 3);
        let whole = chunks_of(&[(0, &disk)]);
        let pieces: Vec<(u64, &[u8])> = disk.chunks(4096 + 17).enumerate().map(|(i, p)| ((i * (4096 + 17)) as u64, p)).collect();
        assert_eq!(chunks_of(&pieces), whole);
    }

    #[test]
    fn discontinuous_pieces_start_new_runs() {
        let a = pseudo_random(100_000, 5);
        let b = pseudo_random(100_000, 9);
        let chunks = chunks_of(&[(1 << 20, &b), (0, &a)]);
        let total: usize = chunks.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(total, 200_000);
        assert!(chunks.iter().any(|(o, _)| *o == 0) && chunks.iter().any(|(o, _)| *o == 1 << 20));
    }

    #[test]
    fn is_zero_detects_any_byte() {
        let mut v = vec![0u8; 200_000];
        assert!(is_zero(&v));
        v[199_999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    /// Every boundary is part of the repository format (format-spec §2 names `fastcdc`'s
    /// `v2020::cut` and its GEAR table): a dependency bump that moved one would silently stop
    /// new archives from deduplicating against old ones. Pinned here for every chunk size a
    /// repository may have, on fixed input with a hole (so hole handling is pinned too).
    mod golden {
        use super::*;

        /// (average chunk size, number of chunks, BLAKE3 of the boundary list as
        /// little-endian (u64 offset, u32 length) pairs).
        const GOLDEN: &[(u32, usize, &str)] = &[
            (4096, 28, "212ca5ed970143a8eb5444e2e12d1fec881bc33fda4de0e8b32b4fc7c970ab0f"),
            (8192, 25, "97e5b6af61ab52fbf2de0862269d15a9a0b7ba07757524f97b74dcb7a8d83d76"),
            (16384, 24, "0ccb25d024b82cd8114b45d88a67c05e543cd70da3de7f53a431f7f92968de43"),
            (32768, 20, "7938c8155675990cae138a9f22e757b7eaab745b354fb4d66bc5c9e7726d9903"),
            (65536, 23, "287da3e246d2eae029394499e4d9a0a16022769e86dbd670170e0c61ab321832"),
            (131072, 23, "de2ef13dd664290e246800f70d3fdc5fb9cc5ad80e8f7d4d5209f0d8269f143c"),
            (262144, 22, "bea4091f2a1ef975dbaae97219da39e66dcfdbc95f486796adc6fe97eca34757"),
            (524288, 20, "48f317b0ed0544b14022c08f4e79fe82b5fad7db7382ed890144f0f17379566c"),
            (1048576, 19, "cfde5f43b9ac2b53d1f10619b0c872fb19467528389cd914cffb570bd1b3a484"),
            (2097152, 18, "e2833ec9e8d0656bebf39dd2fbb9a159456c2d194e3923dea173c4d95fbec52c"),
            (4194304, 20, "046c51712be22fb6ffd8650724a4747304eba2288f9e9e70f7a1b948d6f6f58b"),
        ];

        /// The first boundaries at the default chunk size (64 KiB), spelled out.
        const FIRST_AT_64K: &[(u64, usize)] = &[
            (0, 22658),
            (22658, 111312),
            (133970, 45579),
            (179549, 56117),
            (235666, 76087),
            (311753, 96176),
            (407929, 17607),
            (425536, 73115),
        ];

        /// Input for one chunk size: 16 average chunks of BLAKE3-XOF bytes (fast in a debug
        /// build), an aligned 256 KiB hole, 8 more, and an unaligned tail.
        fn input(avg: u32) -> Vec<u8> {
            let avg = avg as usize;
            let mut v = vec![0u8; 24 * avg + 256 * 1024 + 12_345];
            blake3::Hasher::new().update(b"imgarc chunker golden").update(&avg.to_le_bytes()).finalize_xof().fill(&mut v);
            let hole = (16 * avg).next_multiple_of(64 * 1024);
            v[hole..hole + 256 * 1024].fill(0);
            v
        }

        fn boundaries(avg: u32) -> Vec<(u64, usize)> {
            boundaries_with(avg, Gear::standard())
        }

        fn boundaries_with(avg: u32, gear: Arc<Gear>) -> Vec<(u64, usize)> {
            let data = input(avg);
            let mut c = GuestChunker::new(ChunkerParams::with_average(avg).unwrap(), 64 * 1024, gear);
            let mut v = vec![];
            c.push(0, &data, &mut |ch| v.push((ch.offset, ch.data.len())));
            c.finish(&mut |ch| v.push((ch.offset, ch.data.len())));
            v
        }

        fn digest(list: &[(u64, usize)]) -> String {
            let mut h = blake3::Hasher::new();
            for (off, len) in list {
                h.update(&off.to_le_bytes());
                h.update(&(*len as u32).to_le_bytes());
            }
            h.finalize().to_hex().to_string()
        }

        #[test]
        fn chunk_boundaries_are_pinned_for_every_chunk_size() {
            let sizes: Vec<u32> = (12..=22).map(|b| 1u32 << b).collect();
            assert_eq!(GOLDEN.iter().map(|g| g.0).collect::<Vec<_>>(), sizes, "one golden row per chunk size a repository may have");
            let mut wrong = vec![];
            for &(avg, count, hex) in GOLDEN {
                let list = boundaries(avg);
                let got = (list.len(), digest(&list));
                if got != (count, hex.to_string()) {
                    wrong.push(format!("({avg}, {}, \"{}\"),", got.0, got.1));
                }
            }
            assert!(wrong.is_empty(), "chunk boundaries moved (the repository format changed):\n{}", wrong.join("\n"));
            let first = boundaries(64 * 1024);
            assert_eq!(&first[..FIRST_AT_64K.len()], FIRST_AT_64K);
        }

        /// The chunker key of the keyed golden rows: bytes 0, 1, …, 31.
        fn golden_key() -> [u8; 32] {
            std::array::from_fn(|i| i as u8)
        }

        /// (average chunk size, number of chunks, BLAKE3 of the boundary list) with the
        /// gear table of [`golden_key`]: the keyed table's derivation is part of the
        /// format of every encrypted repository (format-spec/encryption.md §6).
        const GOLDEN_KEYED: &[(u32, usize, &str)] = &[
            (4096, 21, "8ac9e2dcb5b70afc8289532361bafb898fd02995d32cbaeb638bf97030ef0dd6"),
            (65536, 23, "bfc052615cdba599009989b3dc4d5317ab1b7bcd3906d7bcf953492e1f4b1ccf"),
            (1048576, 19, "d426f2427a1cdd36d06064825f7d9f002c0f7e6e1b3b6e2f325d305cfb7f2bf6"),
        ];

        /// The first boundaries at 64 KiB with the keyed table, spelled out.
        const FIRST_AT_64K_KEYED: &[(u64, usize)] = &[
            (0, 69617),
            (69617, 60819),
            (130436, 112585),
            (243021, 67299),
            (310320, 93209),
            (403529, 102192),
            (505721, 46548),
            (552269, 51708),
        ];

        /// The first words of the keyed table for [`golden_key`] (format-spec test vector).
        const KEYED_GEAR_FIRST: [u64; 3] = [0xad7d10f3aaa9506f, 0x0ba10d52aa89735c, 0xd2ca5cdb95b38cb3];

        #[test]
        fn keyed_gear_table_boundaries_are_pinned() {
            let mut wrong = vec![];
            for &(avg, count, hex) in GOLDEN_KEYED {
                let list = boundaries_with(avg, Gear::keyed(&golden_key()));
                let got = (list.len(), digest(&list));
                if got != (count, hex.to_string()) {
                    wrong.push(format!("({avg}, {}, \"{}\"),", got.0, got.1));
                }
                assert_ne!(list, boundaries(avg), "the keyed table cuts where the public one does at {avg}");
            }
            let first = boundaries_with(64 * 1024, Gear::keyed(&golden_key()));
            assert!(
                wrong.is_empty(),
                "keyed chunk boundaries moved (the encrypted format changed):\n{}\nfirst: {:?}",
                wrong.join("\n"),
                &first[..8]
            );
            assert_eq!(&first[..FIRST_AT_64K_KEYED.len()], FIRST_AT_64K_KEYED);
            let gear = Gear::keyed(&golden_key());
            let words: Vec<String> = gear.gear[..3].iter().map(|w| format!("{w:#018x}")).collect();
            assert_eq!(gear.gear[..3], KEYED_GEAR_FIRST, "{words:?}");
        }

        /// The keyed table keeps fastcdc's relation between its two tables, and a
        /// different key gives different boundaries.
        #[test]
        fn keyed_tables_follow_fastcdc_and_depend_on_the_key() {
            let std = Gear::standard();
            assert!(std.gear.iter().zip(std.gear_ls.iter()).all(|(g, ls)| g << 1 == *ls));
            let mut other = golden_key();
            other[0] ^= 1;
            assert_ne!(boundaries_with(64 * 1024, Gear::keyed(&golden_key())), boundaries_with(64 * 1024, Gear::keyed(&other)));
            assert_eq!(format!("{:?}", Gear::keyed(&other)), "Gear(***)");
        }
    }
}
