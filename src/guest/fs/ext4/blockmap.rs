//! Where a file's blocks are: the ext4 extent tree (header magic 0xF30A,
//! depth ≤ 5, checksummed leaves and index blocks with `metadata_csum`) and
//! the ext2/3 block map (12 direct pointers, single, double and triple
//! indirect blocks; 0 is a hole). Both produce [`BlockRun`]s in logical order;
//! every walk is bounded by node and run counts, not by what the inode claims.

use super::bytes::{le16, le32};
use super::inode::{Inode, FL_EXTENTS};
use super::Volume;
use crate::crc32c::crc32c_update;
use crate::guest::FsError;

const EXTENT_MAGIC: u16 = 0xF30A;
/// The kernel's bound on the tree depth.
const MAX_DEPTH: u16 = 5;
/// Extent-tree or indirect blocks one mapping may read (each is one block).
const MAX_NODES: u64 = 1 << 18;
/// Runs one mapping may hold (24 bytes each: 24 MiB at most).
const MAX_RUNS: usize = 1 << 20;

/// `len` blocks from logical block `logical`, at `physical` (None: unwritten, reads as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockRun {
    pub logical: u64,
    pub len: u64,
    pub physical: Option<u64>,
}

/// The runs of `inode` covering logical blocks `[0, nblocks)` (runs past it are clipped).
pub(super) fn block_runs(vol: &Volume<'_>, inode: &Inode, nblocks: u64) -> Result<Vec<BlockRun>, FsError> {
    let mut walk = Walk { vol, inode, nblocks, runs: Vec::new(), nodes: 0 };
    if inode.has_flag(FL_EXTENTS) {
        let root = inode.i_block;
        walk.extent_node(&root, None, None)?;
    } else {
        for i in 0..12 {
            walk.push(i as u64, 1, inode.block_ptr(i))?;
        }
        let per_block = (vol.sb.block_size / 4) as u64;
        let mut first = 12u64;
        let mut span = per_block;
        for level in 1..=3u32 {
            walk.indirect(inode.block_ptr(11 + level as usize), level, first)?;
            first = first.saturating_add(span);
            span = span.saturating_mul(per_block);
        }
    }
    Ok(walk.runs)
}

struct Walk<'v, 'a, 'i> {
    vol: &'v Volume<'a>,
    inode: &'i Inode,
    nblocks: u64,
    runs: Vec<BlockRun>,
    nodes: u64,
}

impl Walk<'_, '_, '_> {
    fn bad(&self, what: String) -> FsError {
        FsError::Malformed(format!("ext4 inode {}: {what}", self.inode.ino))
    }

    /// Reads tree block `block` (index or leaf), counting it against the bound.
    fn read_node(&mut self, block: u64) -> Result<Vec<u8>, FsError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.bad(format!("block map reads more than {MAX_NODES} blocks")));
        }
        if block >= self.vol.sb.blocks_count || block <= self.vol.sb.first_data_block as u64 {
            return Err(self.bad(format!("mapping block {block} outside the filesystem")));
        }
        let mut buf = vec![0u8; self.vol.sb.block_size as usize];
        self.vol.read_block(block, &mut buf)?;
        Ok(buf)
    }

    /// Appends `len` blocks at `logical` → `physical` (0: a hole), merging with the previous run.
    fn push(&mut self, logical: u64, len: u64, physical: u32) -> Result<(), FsError> {
        if physical == 0 || logical >= self.nblocks {
            return Ok(());
        }
        self.push_run(BlockRun { logical, len, physical: Some(physical as u64) })
    }

    fn push_run(&mut self, run: BlockRun) -> Result<(), FsError> {
        if run.logical >= self.nblocks || run.len == 0 {
            return Ok(());
        }
        let run = BlockRun { len: run.len.min(self.nblocks - run.logical), ..run };
        if let Some(p) = run.physical {
            match p.checked_add(run.len) {
                Some(end) if end <= self.vol.sb.blocks_count && p > self.vol.sb.first_data_block as u64 => {}
                _ => {
                    return Err(self.bad(format!(
                        "{} blocks at block {p} (logical {}) outside the filesystem of {} blocks",
                        run.len, run.logical, self.vol.sb.blocks_count
                    )))
                }
            }
        }
        if let Some(end) = self.runs.last().map(|l| l.logical + l.len).filter(|&end| run.logical < end) {
            return Err(self.bad(format!("extent at logical block {} overlaps the one before (ends at {end})", run.logical)));
        }
        if let Some(last) = self.runs.last_mut() {
            let contiguous = run.logical == last.logical + last.len
                && match (last.physical, run.physical) {
                    (Some(a), Some(b)) => a + last.len == b,
                    (None, None) => true,
                    _ => false,
                };
            if contiguous {
                last.len += run.len;
                return Ok(());
            }
        }
        if self.runs.len() >= MAX_RUNS {
            return Err(self.bad(format!("more than {MAX_RUNS} extents")));
        }
        self.runs.push(run);
        Ok(())
    }

    /// One extent tree node: the 60-byte root in the inode or a block.
    /// `depth` is what the parent expects (None at the root), `block` the
    /// node's block number (None at the root, which has no checksum tail).
    fn extent_node(&mut self, node: &[u8], depth: Option<u16>, block: Option<u64>) -> Result<(), FsError> {
        let at = match block {
            Some(b) => format!("extent block {b}"),
            None => "extent root".to_string(),
        };
        let magic = le16(node, 0);
        if magic != EXTENT_MAGIC {
            return Err(self.bad(format!("{at}: extent header magic {magic:#06x}")));
        }
        let entries = le16(node, 2) as usize;
        let max = le16(node, 4) as usize;
        let node_depth = le16(node, 6);
        let capacity = (node.len() - 12) / 12;
        if entries > max || max > capacity {
            return Err(self.bad(format!("{at}: {entries} entries, {max} max, room for {capacity}")));
        }
        match depth {
            None if node_depth > MAX_DEPTH => return Err(self.bad(format!("{at}: depth {node_depth}"))),
            Some(d) if d != node_depth => return Err(self.bad(format!("{at}: depth {node_depth} where {d} is expected"))),
            _ => {}
        }
        if let (Some(b), Some(fs_seed)) = (block, self.vol.sb.csum_seed) {
            let tail = 12 + 12 * max;
            let stored = le32(node, tail);
            let computed = crc32c_update(self.inode.csum_seed(fs_seed), &node[..tail]);
            if tail + 4 > node.len() || stored != computed {
                return Err(self.bad(format!("extent block {b}: checksum {stored:#010x}, computed {computed:#010x}")));
            }
        }
        let mut prev_start: Option<u64> = None;
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let logical = le32(e, 0) as u64;
            if prev_start.is_some_and(|p| logical <= p) {
                return Err(self.bad(format!("{at}: entry {i} at logical block {logical} out of order")));
            }
            prev_start = Some(logical);
            if node_depth == 0 {
                let raw_len = le16(e, 4) as u64;
                // Lengths above 32768 mark unwritten (preallocated) extents.
                let (len, unwritten) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
                let physical = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                if len == 0 {
                    return Err(self.bad(format!("{at}: entry {i}: zero-length extent")));
                }
                if unwritten {
                    // Holes, but the blocks must still be the filesystem's.
                    self.check_range(physical, len, logical)?;
                }
                self.push_run(BlockRun { logical, len, physical: (!unwritten).then_some(physical) })?;
            } else {
                if logical >= self.nblocks {
                    break;
                }
                let child = (le16(e, 8) as u64) << 32 | le32(e, 4) as u64;
                let buf = self.read_node(child)?;
                self.extent_node(&buf, Some(node_depth - 1), Some(child))?;
            }
        }
        Ok(())
    }

    fn check_range(&self, physical: u64, len: u64, logical: u64) -> Result<(), FsError> {
        match physical.checked_add(len) {
            Some(end) if end <= self.vol.sb.blocks_count => Ok(()),
            _ => Err(self.bad(format!("{len} blocks at block {physical} (logical {logical}) outside the filesystem"))),
        }
    }

    /// An indirect block of `level` (1 single, 2 double, 3 triple) mapping from logical block `first`.
    fn indirect(&mut self, block: u32, level: u32, first: u64) -> Result<(), FsError> {
        if block == 0 || first >= self.nblocks {
            return Ok(());
        }
        let buf = self.read_node(block as u64)?;
        let per_block = (self.vol.sb.block_size / 4) as u64;
        let span = per_block.saturating_pow(level - 1);
        for i in 0..per_block {
            let logical = first.saturating_add(i.saturating_mul(span));
            if logical >= self.nblocks {
                break;
            }
            let ptr = le32(&buf, i as usize * 4);
            if level == 1 {
                self.push(logical, 1, ptr)?;
            } else {
                self.indirect(ptr, level - 1, logical)?;
            }
        }
        Ok(())
    }
}
