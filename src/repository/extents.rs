//! Extent lists: how a byte stream (a guest disk, or a layout's literal bytes)
//! is made of chunks. Each record places one chunk at an explicit offset;
//! offsets not covered by any record are holes (zeros).
//!
//! Encoding, per record (44 bytes, little-endian):
//! `offset u64 | length u32 | chunk id [32]`. Records are sorted by offset and
//! never overlap. The list is split into tree blobs of at most
//! `RECORDS_PER_TREE` records, stored in packs like any chunk.

use crate::ids::Id;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

pub const RECORD_LEN: usize = 44;
pub const RECORDS_PER_TREE: usize = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u32,
    pub id: Id,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// A reference to a stored byte stream, as a snapshot records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamRef {
    /// Length of the stream in bytes (a guest stream: the virtual disk size).
    pub size: u64,
    /// Tree blobs holding the encoded extent list, in order.
    pub trees: Vec<Id>,
    pub extent_count: u64,
    /// BLAKE3 of the whole encoded extent list (all trees concatenated).
    pub extents_blake3: Id,
    /// Bytes covered by extents; the rest of `size` is holes.
    pub data_bytes: u64,
}

pub fn encode(extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(extents.len() * RECORD_LEN);
    for e in extents {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.id.0);
    }
    out
}

/// Decodes one tree blob, checking that records are sorted, disjoint and inside `size`.
pub fn decode(bytes: &[u8], size: u64, after: u64, out: &mut Vec<Extent>) -> Result<()> {
    ensure!(bytes.len() % RECORD_LEN == 0, "extent list blob has a length that is not a whole number of records");
    let mut prev_end = after;
    for r in bytes.chunks_exact(RECORD_LEN) {
        let e = Extent {
            offset: u64::from_le_bytes(r[..8].try_into().expect("8")),
            len: u32::from_le_bytes(r[8..12].try_into().expect("4")),
            id: Id::from_slice(&r[12..44]).expect("32"),
        };
        ensure!(e.len > 0, "extent list has an empty extent");
        ensure!(e.offset >= prev_end, "extent list is not sorted or has overlapping extents");
        ensure!(e.offset.checked_add(e.len as u64).is_some_and(|end| end <= size), "extent list reaches past the stream size");
        prev_end = e.end();
        out.push(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_reject() {
        let ex = vec![Extent { offset: 0, len: 10, id: Id::of(b"a") }, Extent { offset: 100, len: 5, id: Id::of(b"b") }];
        let enc = encode(&ex);
        let mut out = vec![];
        decode(&enc, 105, 0, &mut out).unwrap();
        assert_eq!(out, ex);
        assert!(decode(&enc, 104, 0, &mut vec![]).is_err());
        assert!(decode(&enc[..50], 105, 0, &mut vec![]).is_err());
        let rev = encode(&[ex[1], ex[0]]);
        assert!(decode(&rev, 105, 0, &mut vec![]).is_err());
    }
}
