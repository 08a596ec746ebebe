//! XFS inodes: the inode core (v1/v2/v3, bigtime and nrext64 included) and
//! the data fork in each of its formats — device, local (bytes in the
//! inode), extents (packed 128-bit bmbt records) and btree (a bmdr root in
//! the inode over "BMA3"/"BMAP" blocks) — read into one checked extent list.

use super::superblock::Superblock;
use super::{be16, be32, be64, verify_crc, Xfs};
use crate::guest::{FileType, FsError, Timestamp};

const INODE_MAGIC: u16 = 0x494e; // "IN"
/// Size of the v3 inode core (the data fork follows it); v1/v2 cores are 100 bytes.
const CORE_V3: usize = 176;
const CORE_V2: usize = 100;
const INODE_CRC_OFF: usize = 100;

const FLAG_REALTIME: u16 = 0x1;
const FLAG2_BIGTIME: u64 = 1 << 3;
const FLAG2_NREXT64: u64 = 1 << 4;

/// Seconds between the bigtime epoch and the Unix epoch (bigtime counts from i32::MIN).
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// The most extents one file may have before the reader refuses it: bounds
/// the memory of an extent list (24 bytes each) a crafted inode can claim.
pub const MAX_EXTENTS: u64 = 1 << 21;
/// Deepest bmap btree walked: the kernel's limit for 2^48 extents is 9 levels
/// of 4 KiB blocks with the root in the inode; 8 below the root is plenty.
const MAX_BTREE_DEPTH: u16 = 8;

const BMAP_MAGIC_V5: &[u8; 4] = b"BMA3";
const BMAP_MAGIC_V4: &[u8; 4] = b"BMAP";
const BMBT_HDR_V5: usize = 72;
const BMBT_HDR_V4: usize = 24;
const BMBT_CRC_OFF: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkFormat {
    Dev,
    Local,
    Extents,
    Btree,
}

/// The inode core fields the reader uses, and its data fork bytes.
pub struct Inode {
    pub ino: u64,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub format: ForkFormat,
    pub nextents: u64,
    pub flags: u16,
    /// The data fork (literal area up to the attribute fork).
    pub fork: Vec<u8>,
}

/// One mapping of file blocks to disk blocks, in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block.
    pub file_block: u64,
    /// Byte offset of the first disk block in the volume.
    pub disk_offset: u64,
    pub blocks: u64,
    /// Preallocated, never written: reads as zeros.
    pub unwritten: bool,
}

impl Inode {
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(u32::from(self.mode))
    }

    /// Device number (major, minor) from the sysv encoding XFS stores.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        if self.format != ForkFormat::Dev || self.fork.len() < 4 {
            return None;
        }
        let dev = be32(&self.fork, 0);
        Some(((dev >> 18) & 0x3fff, dev & 0x3ffff))
    }

    /// Parses inode `ino` from its `inode_size` bytes.
    pub fn parse(sb: &Superblock, ino: u64, raw: &[u8], verify: bool) -> Result<Inode, FsError> {
        let bad = |what: String| FsError::Malformed(format!("XFS inode {ino}: {what}"));
        if be16(raw, 0) != INODE_MAGIC {
            return Err(bad(format!("magic {:#06x}", be16(raw, 0))));
        }
        let version = raw[4];
        let core = match (sb.version, version) {
            (5, 3) => CORE_V3,
            (4, 1 | 2) => CORE_V2,
            _ => return Err(bad(format!("version {version} on a v{} filesystem", sb.version))),
        };
        if version == 3 {
            if verify {
                verify_crc(raw, INODE_CRC_OFF, || format!("XFS inode {ino}"))?;
            }
            // The inode records its own number: a misdirected read or a
            // stale block shows up here.
            let own = be64(raw, 152);
            if own != ino {
                return Err(bad(format!("records inode number {own}")));
            }
        }
        let flags2 = if version == 3 { be64(raw, 120) } else { 0 };
        let bigtime = flags2 & FLAG2_BIGTIME != 0;
        let ts = |at: usize| -> Timestamp {
            if bigtime {
                let ns = be64(raw, at);
                Timestamp { secs: (ns / 1_000_000_000) as i64 - BIGTIME_EPOCH_OFFSET, nanos: (ns % 1_000_000_000) as u32 }
            } else {
                Timestamp { secs: be32(raw, at) as i32 as i64, nanos: be32(raw, at + 4).min(999_999_999) }
            }
        };
        let nextents = if flags2 & FLAG2_NREXT64 != 0 { be64(raw, 24) } else { be32(raw, 76) as u64 };
        let forkoff = raw[82] as usize * 8;
        let literal = raw.len() - core;
        let fork_len = if forkoff == 0 { literal } else { forkoff };
        if fork_len > literal {
            return Err(bad(format!("attribute fork offset {forkoff} past the inode's {literal} literal bytes")));
        }
        let format = match raw[5] {
            0 => ForkFormat::Dev,
            1 => ForkFormat::Local,
            2 => ForkFormat::Extents,
            3 => ForkFormat::Btree,
            f => return Err(FsError::Unsupported(format!("XFS inode {ino}: data fork format {f}"))),
        };
        let size = be64(raw, 56);
        if size > i64::MAX as u64 {
            return Err(bad(format!("size {size}")));
        }
        Ok(Inode {
            ino,
            mode: be16(raw, 2),
            uid: be32(raw, 8),
            gid: be32(raw, 12),
            nlink: if version == 1 { be16(raw, 6) as u32 } else { be32(raw, 16) },
            size,
            atime: ts(32),
            mtime: ts(40),
            ctime: ts(48),
            format,
            nextents,
            flags: be16(raw, 90),
            fork: raw[core..core + fork_len].to_vec(),
        })
    }

    /// The bytes of a local-format fork: `size` bytes at its start.
    pub fn local_bytes(&self) -> Result<&[u8], FsError> {
        if self.format != ForkFormat::Local {
            return Err(FsError::Malformed(format!("XFS inode {}: data is not local", self.ino)));
        }
        usize::try_from(self.size).ok().and_then(|n| self.fork.get(..n)).ok_or_else(|| {
            FsError::Malformed(format!("XFS inode {}: local size {} past the {}-byte fork", self.ino, self.size, self.fork.len()))
        })
    }

    /// The data fork's extents in file order (non-overlapping, checked
    /// against the filesystem), for extents and btree formats.
    pub fn extents(&self, fs: &Xfs) -> Result<Vec<Extent>, FsError> {
        if self.flags & FLAG_REALTIME != 0 {
            return Err(FsError::Unsupported(format!("XFS inode {}: data on the realtime device", self.ino)));
        }
        if self.nextents > MAX_EXTENTS {
            return Err(FsError::Unsupported(format!(
                "XFS inode {}: {} extents (at most {MAX_EXTENTS} are read)",
                self.ino, self.nextents
            )));
        }
        let mut out = Vec::new();
        match self.format {
            ForkFormat::Extents => {
                let n = self.nextents as usize;
                let recs = n.checked_mul(16).and_then(|len| self.fork.get(..len)).ok_or_else(|| {
                    FsError::Malformed(format!("XFS inode {}: {} extents do not fit its {}-byte fork", self.ino, n, self.fork.len()))
                })?;
                push_records(fs, self.ino, recs, &mut out)?;
            }
            ForkFormat::Btree => {
                if self.fork.len() < 4 {
                    return Err(FsError::Malformed(format!("XFS inode {}: btree root in a {}-byte fork", self.ino, self.fork.len())));
                }
                let level = be16(&self.fork, 0);
                let numrecs = be16(&self.fork, 2) as usize;
                let maxrecs = (self.fork.len() - 4) / 16;
                if level == 0 || level > MAX_BTREE_DEPTH || numrecs == 0 || numrecs > maxrecs {
                    return Err(FsError::Malformed(format!(
                        "XFS inode {}: bmap btree root level {level} with {numrecs} records (at most {maxrecs})",
                        self.ino
                    )));
                }
                let ptrs = 4 + maxrecs * 8;
                let mut budget = Budget { blocks_left: self.nextents * 2 + 64, extents_left: self.nextents, seen: Default::default() };
                for i in 0..numrecs {
                    let child = be64(&self.fork, ptrs + i * 8);
                    walk_bmbt(fs, self.ino, child, level - 1, &mut budget, &mut out)?;
                }
                if out.len() as u64 != self.nextents {
                    return Err(FsError::Malformed(format!(
                        "XFS inode {}: bmap btree holds {} extents, the inode says {}",
                        self.ino,
                        out.len(),
                        self.nextents
                    )));
                }
            }
            ForkFormat::Local | ForkFormat::Dev => return Ok(Vec::new()),
        }
        Ok(out)
    }
}

/// Limits the blocks one btree walk may read: a crafted tree may point many
/// records at the same child, which depth alone does not bound.
struct Budget {
    blocks_left: u64,
    /// Records the leaves may still hold (the inode's extent count).
    extents_left: u64,
    /// Blocks already read: a tree never reaches a block twice.
    seen: std::collections::HashSet<u64>,
}

/// Reads one bmap btree block at fs block `fsb` expected at `level`, and below it.
fn walk_bmbt(fs: &Xfs, ino: u64, fsb: u64, level: u16, budget: &mut Budget, out: &mut Vec<Extent>) -> Result<(), FsError> {
    let bad = |what: String| FsError::Malformed(format!("XFS inode {ino}: bmap btree block {fsb}: {what}"));
    if budget.blocks_left == 0 {
        return Err(bad("more btree blocks than the inode's extents need (a cycle?)".into()));
    }
    budget.blocks_left -= 1;
    if !budget.seen.insert(fsb) {
        return Err(bad("reached twice (a cycle or shared subtree)".into()));
    }
    let sb = &fs.sb;
    let (offset, _) = sb.fsblock_offset(fsb).ok_or_else(|| bad("outside the filesystem".into()))?;
    let block = fs.read_vec(offset, sb.block_size as usize)?;
    let (magic, hdr) = if sb.has_crc() { (BMAP_MAGIC_V5, BMBT_HDR_V5) } else { (BMAP_MAGIC_V4, BMBT_HDR_V4) };
    if &block[..4] != magic {
        return Err(bad(format!("magic {:02x?}", &block[..4])));
    }
    if sb.has_crc() && fs.verify {
        verify_crc(&block, BMBT_CRC_OFF, || format!("XFS inode {ino}: bmap btree block {fsb}"))?;
    }
    if sb.has_crc() {
        let owner = be64(&block, 56);
        if owner != ino {
            return Err(bad(format!("owned by inode {owner}")));
        }
    }
    let got_level = be16(&block, 4);
    let numrecs = be16(&block, 6) as usize;
    if got_level != level {
        return Err(bad(format!("level {got_level}, expected {level}")));
    }
    let maxrecs = (block.len() - hdr) / 16;
    if numrecs == 0 || numrecs > maxrecs {
        return Err(bad(format!("{numrecs} records (at most {maxrecs})")));
    }
    if level == 0 {
        if numrecs as u64 > budget.extents_left {
            return Err(bad("more extent records than the inode says it has".into()));
        }
        budget.extents_left -= numrecs as u64;
        return push_records(fs, ino, &block[hdr..hdr + numrecs * 16], out);
    }
    let ptrs = hdr + maxrecs * 8;
    for i in 0..numrecs {
        walk_bmbt(fs, ino, be64(&block, ptrs + i * 8), level - 1, budget, out)?;
    }
    Ok(())
}

/// Decodes packed bmbt records and appends them, checking that each lies
/// inside the filesystem and that file offsets only increase.
fn push_records(fs: &Xfs, ino: u64, recs: &[u8], out: &mut Vec<Extent>) -> Result<(), FsError> {
    for rec in recs.chunks_exact(16) {
        if out.len() as u64 >= MAX_EXTENTS {
            return Err(FsError::Unsupported(format!("XFS inode {ino}: more than {MAX_EXTENTS} extents")));
        }
        let l0 = be64(rec, 0);
        let l1 = be64(rec, 8);
        let unwritten = l0 >> 63 != 0;
        let file_block = (l0 >> 9) & ((1u64 << 54) - 1);
        let start = ((l0 & 0x1ff) << 43) | (l1 >> 21);
        let blocks = l1 & ((1u64 << 21) - 1);
        let bad = |what: String| {
            FsError::Malformed(format!("XFS inode {ino}: extent at file block {file_block} ({blocks} blocks at {start}): {what}"))
        };
        if blocks == 0 {
            return Err(bad("zero length".into()));
        }
        let (disk_offset, left) = fs.sb.fsblock_offset(start).ok_or_else(|| bad("outside the filesystem".into()))?;
        if blocks > left {
            return Err(bad("runs past its allocation group".into()));
        }
        if let Some(prev) = out.last() {
            if file_block < prev.file_block + prev.blocks {
                return Err(bad("overlaps the extent before it".into()));
            }
        }
        out.push(Extent { file_block, disk_offset, blocks, unwritten });
    }
    Ok(())
}
