//! The canonical guest stream: a virtual disk cut into aligned hole blocks;
//! all-zero blocks are holes, each maximal run of non-zero blocks is cut into
//! content-defined chunks with FastCDC (2020).
//!
//! Every layout (raw identity, QCOW2 decomposition) feeds guest bytes through
//! `GuestChunker`, which is why the same disk yields the same chunks whatever
//! its container. Pieces may arrive in any order; a piece that does not
//! continue the previous one ends the current run.

use crate::repository::config::ChunkerParams;
use fastcdc::v2020;

/// A chunk of guest data at its guest offset.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

pub struct GuestChunker {
    params: ChunkerParams,
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
    pub fn new(params: ChunkerParams, hole_block: u32) -> Self {
        let bits = v2020::logarithm2(params.avg_size);
        let level = params.normalization;
        let masks = (v2020::MASKS[(bits + level) as usize], v2020::MASKS[(bits - level) as usize]);
        GuestChunker {
            params,
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
            let (_, len) = v2020::cut(&self.run[pos..], min, avg, max, self.masks.0, self.masks.1, self.masks.0 << 1, self.masks.1 << 1);
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
        let mut c = GuestChunker::new(params(), 64 * 1024);
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
}
