//! A Bloom filter over chunk ids, in front of SQLite on the archive hot path.
//!
//! Ten bits per chunk and seven probes give about 1 % false positives, so
//! 10 M chunks take 12 MiB. A negative answer is certain (the chunk is new and
//! needs no SQLite query); a positive one is confirmed by a batched query.

use crate::ids::Id;

pub struct ChunkFilter {
    bits: Vec<u64>,
    mask: u64,
}

const PROBES: u64 = 7;

impl ChunkFilter {
    /// A filter sized for `expected` ids (it still works, less sharply, past that).
    pub fn with_capacity(expected: usize) -> Self {
        let want_bits = (expected.max(1 << 16) as u64 * 10).next_power_of_two();
        ChunkFilter { bits: vec![0; (want_bits / 64) as usize], mask: want_bits - 1 }
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
    }

    pub fn may_contain(&self, id: &Id) -> bool {
        Self::probes(id).all(|p| {
            let b = p & self.mask;
            self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
        })
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
}
