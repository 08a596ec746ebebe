//! The JBD2 journal of ext3/ext4 (`needs_recovery`), replayed in memory the
//! way the kernel's recovery does it (scan, revoke, replay), without writing:
//! the result is an overlay, fs block → the journal block holding its newest
//! committed copy, that [`Volume`](super::Volume) lays over every read.
//!
//! Only complete transactions count (a commit block with the right sequence
//! and, with `csum_v2`/`csum_v3`, valid descriptor and commit checksums);
//! a revoke record of transaction T hides the copies of transactions ≤ T.
//! The scan visits each journal block at most once, so it ends.

use super::blockmap::{self, BlockRun};
use super::bytes::be32;
use super::{Ext4, Replacement};
use crate::crc32c::crc32c_update;
use crate::guest::FsError;
use std::collections::{BTreeMap, HashMap};

/// The magic of every JBD2 block header (big-endian).
pub(super) const JBD2_MAGIC: u32 = 0xC03B_3998;

const BLOCK_DESCRIPTOR: u32 = 1;
const BLOCK_COMMIT: u32 = 2;
const BLOCK_SUPERBLOCK_V1: u32 = 3;
const BLOCK_SUPERBLOCK_V2: u32 = 4;
const BLOCK_REVOKE: u32 = 5;

const INCOMPAT_REVOKE: u32 = 0x1;
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
const INCOMPAT_KNOWN: u32 =
    INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3 | INCOMPAT_FAST_COMMIT;

/// Journal blocks one replay scans at most (the live part of a 4 GiB journal
/// of 4 KiB blocks); a hostile journal can map every position to one block.
const MAX_SCAN_BLOCKS: u64 = 1 << 20;

const TAG_ESCAPE: u32 = 0x1;
const TAG_SAME_UUID: u32 = 0x2;
const TAG_LAST: u32 = 0x8;

/// One block copy a transaction carries.
struct Copy {
    fs_block: u64,
    journal_block: u32,
    escaped: bool,
}

/// The journal's geometry and features, from its superblock.
struct Journal<'f, 'a> {
    fs: &'f Ext4<'a>,
    /// The journal inode's blocks (logical → physical).
    runs: Vec<BlockRun>,
    first: u64,
    /// One past the last block of the circular log.
    last: u64,
    incompat: u32,
    /// crc32c seed of the journal checksums (its UUID), with csum v2/v3.
    csum_seed: Option<u32>,
}

impl Journal<'_, '_> {
    fn bad(&self, what: String) -> FsError {
        FsError::Malformed(format!("ext4 journal: {what}"))
    }

    /// Journal block `logical` (a position in the journal inode).
    fn read(&self, logical: u64) -> Result<(u64, Vec<u8>), FsError> {
        let physical = self.runs_physical(logical)?;
        let mut buf = vec![0u8; self.fs.sb().block_size as usize];
        self.fs.vol.read_block(physical, &mut buf)?;
        Ok((physical, buf))
    }

    fn next(&self, pos: u64) -> u64 {
        if pos + 1 >= self.last {
            self.first
        } else {
            pos + 1
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.incompat & bit != 0
    }

    fn tag_bytes(&self) -> usize {
        if self.has(INCOMPAT_CSUM_V3) {
            return 16;
        }
        let sz = 12 + if self.has(INCOMPAT_CSUM_V2) { 2 } else { 0 };
        if self.has(INCOMPAT_64BIT) {
            sz
        } else {
            sz - 4
        }
    }

    /// Checks the checksum a descriptor or revoke block keeps in its last 4 bytes.
    fn tail_ok(&self, block: &[u8]) -> bool {
        let Some(seed) = self.csum_seed else { return true };
        let end = block.len() - 4;
        let mut b = block.to_vec();
        b[end..].fill(0);
        crc32c_update(seed, &b) == be32(block, end)
    }

    /// A commit block's checksum (at byte 16) with csum v2/v3.
    fn commit_ok(&self, block: &[u8]) -> bool {
        let Some(seed) = self.csum_seed else { return true };
        let mut b = block.to_vec();
        b[16..20].fill(0);
        crc32c_update(seed, &b) == be32(block, 16)
    }
}

/// Replays the journal: the blocks it would write, and a note saying what happened.
pub(super) fn replay(fs: &Ext4<'_>) -> Result<(BTreeMap<u64, Replacement>, String), FsError> {
    let sb = fs.sb();
    if sb.journal_inum == 0 {
        return Err(FsError::Unsupported(format!("external journal (device {:#x})", sb.journal_dev)));
    }
    let inode = fs.inode(sb.journal_inum as u64)?;
    let bs = sb.block_size as u64;
    let all = inode.size / bs;
    let runs = blockmap::block_runs(&fs.vol, &inode, all)?;
    let mut j = Journal { fs, runs, first: 0, last: 0, incompat: 0, csum_seed: None };
    let (_, jsb) = j.read(0)?;
    let kind = be32(&jsb, 4);
    if be32(&jsb, 0) != JBD2_MAGIC || !(kind == BLOCK_SUPERBLOCK_V1 || kind == BLOCK_SUPERBLOCK_V2) {
        return Err(j.bad(format!("superblock magic {:#010x}, type {kind}", be32(&jsb, 0))));
    }
    if be32(&jsb, 0xC) as u64 != bs {
        return Err(j.bad(format!("block size {} in a filesystem of {bs}", be32(&jsb, 0xC))));
    }
    let maxlen = be32(&jsb, 0x10) as u64;
    j.first = be32(&jsb, 0x14) as u64;
    if kind == BLOCK_SUPERBLOCK_V2 {
        j.incompat = be32(&jsb, 0x28);
    }
    let unknown = j.incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(FsError::Unsupported(format!("journal incompat features {unknown:#x}")));
    }
    let fc_blocks = if j.has(INCOMPAT_FAST_COMMIT) {
        match be32(&jsb, 0x54) {
            0 => 256,
            n => n as u64,
        }
    } else {
        0
    };
    j.last = maxlen.saturating_sub(fc_blocks);
    if maxlen > all || j.first == 0 || j.first >= j.last {
        return Err(j.bad(format!("first block {}, {maxlen} blocks, inode of {all}", j.first)));
    }
    if j.has(INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) {
        j.csum_seed = Some(crc32c_update(!0, &jsb[0x30..0x40]));
    }
    let start = be32(&jsb, 0x1C) as u64;
    if start == 0 {
        return Ok((BTreeMap::new(), "journal marked as needing recovery, but it is empty: nothing to replay".into()));
    }
    if start < j.first || start >= j.last {
        return Err(j.bad(format!("log starts at block {start}, outside [{}, {})", j.first, j.last)));
    }
    let mut seq = be32(&jsb, 0x18);
    let first_seq = seq;

    // Scan: collect the copies and revokes of every complete transaction.
    let mut transactions: Vec<(u32, Vec<Copy>)> = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut pending: Vec<Copy> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut pos = start;
    let mut visited = 0u64;
    let budget = (j.last - j.first).min(MAX_SCAN_BLOCKS);
    let tag_bytes = j.tag_bytes();
    let tail = if j.csum_seed.is_some() { 4 } else { 0 };
    'scan: while visited < budget {
        let (_, block) = j.read(pos)?;
        visited += 1;
        if be32(&block, 0) != JBD2_MAGIC || be32(&block, 8) != seq {
            break;
        }
        match be32(&block, 4) {
            BLOCK_DESCRIPTOR => {
                if !j.tail_ok(&block) {
                    break;
                }
                let mut at = 12;
                while at + tag_bytes <= block.len() - tail {
                    let t = &block[at..at + tag_bytes];
                    let (lo, flags) = if j.has(INCOMPAT_CSUM_V3) { (be32(t, 0), be32(t, 4)) } else { (be32(t, 0), (be32(t, 4) & 0xFFFF)) };
                    let hi = if j.has(INCOMPAT_64BIT) { be32(t, 8) } else { 0 };
                    let fs_block = (hi as u64) << 32 | lo as u64;
                    at += tag_bytes;
                    if flags & TAG_SAME_UUID == 0 {
                        at += 16;
                    }
                    pos = j.next(pos);
                    visited += 1;
                    if visited > budget {
                        break 'scan;
                    }
                    pending.push(Copy { fs_block, journal_block: pos as u32, escaped: flags & TAG_ESCAPE != 0 });
                    if flags & TAG_LAST != 0 {
                        break;
                    }
                }
            }
            BLOCK_COMMIT => {
                if !j.commit_ok(&block) {
                    break;
                }
                for b in pending_revokes.drain(..) {
                    let e = revoked.entry(b).or_insert(seq);
                    *e = (*e).max(seq);
                }
                transactions.push((seq, std::mem::take(&mut pending)));
                seq = seq.wrapping_add(1);
            }
            BLOCK_REVOKE => {
                if !j.tail_ok(&block) {
                    break;
                }
                let count = (be32(&block, 12) as usize).min(block.len() - tail);
                let rec = if j.has(INCOMPAT_64BIT) { 8 } else { 4 };
                let mut at = 16;
                while at + rec <= count {
                    let b = if rec == 8 { (be32(&block, at) as u64) << 32 | be32(&block, at + 4) as u64 } else { be32(&block, at) as u64 };
                    pending_revokes.push(b);
                    at += rec;
                }
            }
            _ => break,
        }
        pos = j.next(pos);
    }

    // Replay: the newest unrevoked copy of each block wins.
    let mut overlay = BTreeMap::new();
    let mut copies = 0usize;
    for (tseq, list) in &transactions {
        for c in list {
            if revoked.get(&c.fs_block).is_some_and(|&r| r >= *tseq) {
                continue;
            }
            if c.fs_block >= sb.blocks_count {
                return Err(j.bad(format!("transaction {tseq} writes block {} past the end", c.fs_block)));
            }
            let physical = j.runs_physical(c.journal_block as u64)?;
            overlay.insert(c.fs_block, Replacement { offset: physical * bs, escaped: c.escaped });
            copies += 1;
        }
    }
    let note = format!(
        "journal needed recovery: {} transaction{} replayed in memory (sequence {first_seq}, {copies} block copies, {} blocks)",
        transactions.len(),
        if transactions.len() == 1 { "" } else { "s" },
        overlay.len()
    );
    Ok((overlay, note))
}

impl Journal<'_, '_> {
    fn runs_physical(&self, logical: u64) -> Result<u64, FsError> {
        let i = self.runs.partition_point(|r| r.logical + r.len <= logical);
        match self.runs.get(i) {
            Some(BlockRun { logical: l, physical: Some(p), .. }) if *l <= logical => Ok(p + (logical - l)),
            _ => Err(self.bad(format!("journal block {logical} is not mapped"))),
        }
    }
}
