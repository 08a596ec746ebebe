//! The file allocation table: reading one entry (FAT12's packed 12-bit
//! pairs, FAT16, FAT32's low 28 bits) through a small page cache, and
//! following a cluster chain into disk runs — bounded by the cluster count,
//! with loops, free, bad and reserved entries and out-of-range cluster
//! numbers reported as malformed, naming the chain and the cluster.

use super::bpb::{FatType, Geometry};
use crate::guest::{FsError, ReadAt};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// FAT bytes are read in pages of this size (a chain walk touches one page after another).
const PAGE: u64 = 4096;
/// Pages kept; the cache is emptied when it is full (a walk rarely needs more than a few).
const MAX_PAGES: usize = 64;

/// What a FAT entry says about the cluster after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The chain continues at this cluster (not yet checked against the cluster count).
    Cluster(u32),
    /// End of chain.
    End,
    /// 0: a free cluster.
    Free,
    /// The bad-cluster marker.
    Bad,
    /// 1 or the reserved range just below the bad marker.
    Reserved(u32),
}

/// Decodes a raw entry value of the given width.
pub fn classify(fat_type: FatType, raw: u32) -> Next {
    let (bad, eoc_from, reserved_from) = match fat_type {
        FatType::Fat12 => (0xFF7, 0xFF8, 0xFF0),
        FatType::Fat16 => (0xFFF7, 0xFFF8, 0xFFF0),
        FatType::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8, 0x0FFF_FFF0),
    };
    match raw {
        0 => Next::Free,
        1 => Next::Reserved(1),
        v if v >= eoc_from => Next::End,
        v if v == bad => Next::Bad,
        v if v >= reserved_from => Next::Reserved(v),
        v => Next::Cluster(v),
    }
}

/// A contiguous stretch of clusters: `len` bytes at `disk_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub disk_offset: u64,
    pub len: u64,
}

/// The FAT of one volume, read on demand.
pub struct Table<'a> {
    bytes: &'a dyn ReadAt,
    geo: &'a Geometry,
    pages: &'a RefCell<HashMap<u64, Vec<u8>>>,
}

impl<'a> Table<'a> {
    pub fn new(bytes: &'a dyn ReadAt, geo: &'a Geometry, pages: &'a RefCell<HashMap<u64, Vec<u8>>>) -> Self {
        Table { bytes, geo, pages }
    }

    /// Fills `out` from FAT byte `at` (inside the FAT: the geometry checked its size).
    fn fat_bytes(&self, at: u64, out: &mut [u8]) -> Result<(), FsError> {
        let mut pages = self.pages.borrow_mut();
        for (i, b) in out.iter_mut().enumerate() {
            let pos = at + i as u64;
            let page_no = pos / PAGE;
            if pages.len() >= MAX_PAGES && !pages.contains_key(&page_no) {
                pages.clear();
            }
            let page = match pages.entry(page_no) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    let start = page_no * PAGE;
                    let len = PAGE.min(self.geo.fat_len.saturating_sub(start));
                    let mut page = vec![0u8; len as usize];
                    self.bytes.read_at(self.geo.fat_offset + start, &mut page)?;
                    v.insert(page)
                }
            };
            *b = *page
                .get((pos - page_no * PAGE) as usize)
                .ok_or_else(|| FsError::Malformed(format!("vfat: FAT byte {pos} passes the FAT's end")))?;
        }
        Ok(())
    }

    /// The raw FAT entry of `cluster` (a data cluster number).
    pub fn entry(&self, cluster: u32) -> Result<Next, FsError> {
        let c = u64::from(cluster);
        let raw = match self.geo.fat_type {
            FatType::Fat12 => {
                // Two 12-bit entries share three bytes: an even cluster takes the low 12
                // bits of the little-endian pair at c * 1.5, an odd one the high 12.
                let mut b = [0u8; 2];
                self.fat_bytes(c + c / 2, &mut b)?;
                let pair = u32::from(u16::from_le_bytes(b));
                if c % 2 == 0 {
                    pair & 0x0FFF
                } else {
                    pair >> 4
                }
            }
            FatType::Fat16 => {
                let mut b = [0u8; 2];
                self.fat_bytes(c * 2, &mut b)?;
                u32::from(u16::from_le_bytes(b))
            }
            FatType::Fat32 => {
                let mut b = [0u8; 4];
                self.fat_bytes(c * 4, &mut b)?;
                // The top four bits are reserved and must be ignored.
                u32::from_le_bytes(b) & 0x0FFF_FFFF
            }
        };
        Ok(classify(self.geo.fat_type, raw))
    }

    /// Follows the chain that starts at `first`, `what` naming its owner in
    /// errors, and returns its clusters as contiguous runs. Stops after
    /// `limit` clusters (a file needs no more than its size says) or at the
    /// end-of-chain marker; every step is checked, so a loop, a free, bad or
    /// reserved entry, or a cluster number past the last is an error.
    pub fn chain(&self, what: &str, first: u32, limit: u64) -> Result<Vec<Run>, FsError> {
        let geo = self.geo;
        let cs = u64::from(geo.cluster_size);
        if !geo.is_data_cluster(first) {
            return Err(FsError::Malformed(format!("{what}: first cluster {first} is not one of the {} data clusters", geo.cluster_count)));
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut seen = HashSet::new();
        let mut cluster = first;
        let mut count = 0u64;
        loop {
            if !seen.insert(cluster) {
                return Err(FsError::Malformed(format!(
                    "{what}: cluster chain from {first} loops back to cluster {cluster} after {count} clusters"
                )));
            }
            count += 1;
            let at = geo.cluster_offset(cluster);
            match runs.last_mut() {
                Some(r) if r.disk_offset + r.len == at => r.len += cs,
                _ => runs.push(Run { disk_offset: at, len: cs }),
            }
            if count >= limit {
                return Ok(runs);
            }
            let entry = match self.entry(cluster)? {
                Next::End => return Ok(runs),
                Next::Cluster(n) if geo.is_data_cluster(n) => {
                    cluster = n;
                    continue;
                }
                Next::Cluster(n) => {
                    return Err(FsError::Malformed(format!(
                        "{what}: cluster {cluster} links to cluster {n}, past the last of {} clusters",
                        geo.cluster_count
                    )))
                }
                Next::Free => "free".to_string(),
                Next::Bad => "bad-cluster".to_string(),
                Next::Reserved(v) => format!("reserved (0x{v:X})"),
            };
            return Err(FsError::Malformed(format!("{what}: cluster {cluster} of the chain from {first} has a {entry} FAT entry")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_by_width() {
        assert_eq!(classify(FatType::Fat12, 0xFFF), Next::End);
        assert_eq!(classify(FatType::Fat12, 0xFF8), Next::End);
        assert_eq!(classify(FatType::Fat12, 0xFF7), Next::Bad);
        assert_eq!(classify(FatType::Fat12, 0xFF0), Next::Reserved(0xFF0));
        assert_eq!(classify(FatType::Fat12, 0xFEF), Next::Cluster(0xFEF));
        assert_eq!(classify(FatType::Fat16, 0xFFF7), Next::Bad);
        assert_eq!(classify(FatType::Fat16, 0xFFF), Next::Cluster(0xFFF));
        assert_eq!(classify(FatType::Fat32, 0x0FFF_FFFF), Next::End);
        assert_eq!(classify(FatType::Fat32, 0), Next::Free);
        assert_eq!(classify(FatType::Fat32, 1), Next::Reserved(1));
    }
}
