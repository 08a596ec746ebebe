//! The XFS superblock (sector 0 of AG 0): geometry, feature bits and the
//! derived address arithmetic (inode numbers and fs block numbers to byte
//! offsets). Every field used later is checked here once, so the rest of the
//! reader can rely on sane shifts and sizes.

use super::{be16, be32, be64, verify_crc};
use crate::guest::FsError;

pub const MAGIC: &[u8; 4] = b"XFSB";
/// Where the little-endian CRC-32C of a v5 superblock lives.
const SB_CRC_OFF: usize = 224;

// sb_versionnum
const VERSION_MOREBITS: u16 = 0x8000;
const VERSION_DIRV2: u16 = 0x2000;
// sb_features2 (v4 with MOREBITS)
const F2_FTYPE: u32 = 0x200;

// v5 incompat features.
pub const INCOMPAT_FTYPE: u32 = 1 << 0;
const INCOMPAT_SPINODES: u32 = 1 << 1;
const INCOMPAT_META_UUID: u32 = 1 << 2;
pub const INCOMPAT_BIGTIME: u32 = 1 << 3;
const INCOMPAT_NEEDSREPAIR: u32 = 1 << 4;
pub const INCOMPAT_NREXT64: u32 = 1 << 5;
const INCOMPAT_EXCHRANGE: u32 = 1 << 6;
const INCOMPAT_PARENT: u32 = 1 << 7;

/// Incompat features this reader understands, with their names (the
/// others are refused by bit). None of these change how directories or
/// file data are laid out beyond what the reader handles: sparse inode
/// chunks only change allocation, parent pointers live in the attribute
/// fork, exchange-range only adds log intents.
const INCOMPAT_KNOWN: &[(u32, &str)] = &[
    (INCOMPAT_FTYPE, "ftype"),
    (INCOMPAT_SPINODES, "sparse inodes"),
    (INCOMPAT_META_UUID, "meta_uuid"),
    (INCOMPAT_BIGTIME, "bigtime"),
    (INCOMPAT_NEEDSREPAIR, "needsrepair"),
    (INCOMPAT_NREXT64, "nrext64"),
    (INCOMPAT_EXCHRANGE, "exchange-range"),
    (INCOMPAT_PARENT, "parent pointers"),
];
/// Names for incompat bits that are refused, so the error says what was found.
const INCOMPAT_REFUSED: &[(u32, &str)] = &[(1 << 8, "metadir"), (1 << 9, "zoned")];
// Read-only-compat features (finobt, rmapbt, reflink, inobtcount) are all
// ignored: they are extra btrees a reader never needs.

#[derive(Debug, Clone)]
pub struct Superblock {
    /// 4 or 5.
    pub version: u8,
    pub block_size: u32,
    pub block_log: u8,
    pub dblocks: u64,
    pub agblocks: u32,
    pub agcount: u32,
    pub agblklog: u8,
    pub inode_size: u16,
    pub inode_log: u8,
    pub inopblog: u8,
    pub dirblklog: u8,
    pub root_ino: u64,
    /// Directory entries carry a file type byte.
    pub ftype: bool,
    pub incompat: u32,
    pub logstart: u64,
    pub logblocks: u32,
    pub label: Option<String>,
}

impl Superblock {
    /// Parses and checks the primary superblock (`sector` holds at least
    /// one sector; its CRC covers `sb_sectsize` bytes).
    pub fn parse(sector: &[u8], verify: bool) -> Result<Superblock, FsError> {
        let bad = |what: String| FsError::Malformed(format!("XFS superblock: {what}"));
        if sector.len() < 512 || &sector[..4] != MAGIC {
            return Err(bad("no XFSB magic".into()));
        }
        let versionnum = be16(sector, 100);
        let version = (versionnum & 0xf) as u8;
        if !(4..=5).contains(&version) {
            return Err(FsError::Unsupported(format!("XFS superblock version {version}")));
        }
        let block_size = be32(sector, 4);
        let sector_size = be16(sector, 102);
        let inode_size = be16(sector, 104);
        let inopblock = be16(sector, 106);
        let (block_log, sect_log, inode_log, inopblog, agblklog) = (sector[120], sector[121], sector[122], sector[123], sector[124]);
        let dirblklog = sector[192];
        let dblocks = be64(sector, 8);
        let agblocks = be32(sector, 84);
        let agcount = be32(sector, 88);

        // Geometry as the kernel's xfs_validate_sb_common checks it: each
        // size a power of two in its range and equal to 1 << its log.
        if !(9..=16).contains(&block_log) || block_size != 1 << block_log {
            return Err(bad(format!("block size {block_size} (log {block_log})")));
        }
        if !(9..=15).contains(&sect_log) || sector_size as u32 != 1 << sect_log || sector_size as u32 > block_size {
            return Err(bad(format!("sector size {sector_size} (log {sect_log})")));
        }
        if !(8..=11).contains(&inode_log) || inode_size as u32 != 1 << inode_log || inode_size as u32 > block_size {
            return Err(bad(format!("inode size {inode_size} (log {inode_log})")));
        }
        if version == 5 && inode_size < 512 {
            return Err(bad(format!("inode size {inode_size} below 512 on a v5 filesystem")));
        }
        if inopblog != block_log - inode_log || inopblock as u32 != 1 << inopblog {
            return Err(bad(format!("{inopblock} inodes per block (log {inopblog})")));
        }
        if agblocks < 16 || !(1..=31).contains(&agblklog) || agblocks as u64 > 1 << agblklog || (agblocks as u64) << 1 <= 1 << agblklog {
            return Err(bad(format!("AG size {agblocks} blocks (log {agblklog})")));
        }
        if sector.len() < sector_size as usize {
            return Err(bad(format!("sector size {sector_size} larger than the {} bytes read", sector.len())));
        }
        if dblocks.checked_mul(block_size as u64).is_none() {
            return Err(bad(format!("{dblocks} blocks overflow a byte offset")));
        }
        if agcount == 0 || dblocks > agcount as u64 * agblocks as u64 || dblocks <= (agcount as u64 - 1) * agblocks as u64 {
            return Err(bad(format!("{agcount} AGs of {agblocks} blocks for {dblocks} blocks")));
        }
        // A directory block is at most 64 KiB.
        if block_log as u32 + dirblklog as u32 > 16 {
            return Err(bad(format!("directory block log {dirblklog} with block log {block_log}")));
        }
        // Inode numbers are agno << (agblklog + inopblog) | agbno << inopblog | index: 64 bits.
        if agblklog as u32 + inopblog as u32 + 32 - (agcount - 1).leading_zeros() > 64 {
            return Err(bad("inode numbers do not fit 64 bits".into()));
        }

        let features2 = be32(sector, 200);
        let mut incompat = 0;
        let ftype;
        if version == 5 {
            if verify {
                verify_crc(&sector[..sector_size as usize], SB_CRC_OFF, || "XFS superblock".into())?;
            }
            incompat = be32(sector, 216);
            let unknown = INCOMPAT_KNOWN.iter().fold(incompat, |left, (bit, _)| left & !bit);
            if unknown != 0 {
                let mut names: Vec<String> =
                    INCOMPAT_REFUSED.iter().filter(|(bit, _)| unknown & bit != 0).map(|(_, n)| n.to_string()).collect();
                let unnamed = INCOMPAT_REFUSED.iter().fold(unknown, |left, (bit, _)| left & !bit);
                if unnamed != 0 {
                    names.push(format!("unknown bits {unnamed:#x}"));
                }
                return Err(FsError::Unsupported(format!("XFS incompatible features: {}", names.join(", "))));
            }
            ftype = incompat & INCOMPAT_FTYPE != 0;
        } else {
            if versionnum & VERSION_DIRV2 == 0 {
                return Err(FsError::Unsupported("XFS v4 with version 1 directories".into()));
            }
            ftype = versionnum & VERSION_MOREBITS != 0 && features2 & F2_FTYPE != 0;
        }

        let root_ino = be64(sector, 56);
        let label_bytes = &sector[108..120];
        let label_len = label_bytes.iter().position(|&b| b == 0).unwrap_or(label_bytes.len());
        let label = (label_len > 0).then(|| String::from_utf8_lossy(&label_bytes[..label_len]).into_owned());
        let sb = Superblock {
            version,
            block_size,
            block_log,
            dblocks,
            agblocks,
            agcount,
            agblklog,
            inode_size,
            inode_log,
            inopblog,
            dirblklog,
            root_ino,
            ftype,
            incompat,
            logstart: be64(sector, 48),
            logblocks: be32(sector, 96),
            label,
        };
        sb.inode_offset(root_ino).map_err(|_| bad(format!("root inode {root_ino} outside the filesystem")))?;
        Ok(sb)
    }

    pub fn has_crc(&self) -> bool {
        self.version == 5
    }

    pub fn needs_repair(&self) -> bool {
        self.incompat & INCOMPAT_NEEDSREPAIR != 0
    }

    /// Directory block size in bytes.
    pub fn dir_block_size(&self) -> u32 {
        self.block_size << self.dirblklog
    }

    /// Byte offset of inode `ino` in the volume.
    pub fn inode_offset(&self, ino: u64) -> Result<u64, FsError> {
        let agino_bits = self.agblklog as u32 + self.inopblog as u32;
        let agno = ino.checked_shr(agino_bits).unwrap_or(0);
        let agbno = (ino >> self.inopblog) & ((1u64 << self.agblklog) - 1);
        let index = ino & ((1u64 << self.inopblog) - 1);
        if agno >= self.agcount as u64 || agbno >= self.agblocks as u64 || ino == 0 {
            return Err(FsError::Malformed(format!("XFS inode number {ino} outside the filesystem")));
        }
        let block = agno * self.agblocks as u64 + agbno;
        if block >= self.dblocks {
            return Err(FsError::Malformed(format!("XFS inode number {ino} past the last block")));
        }
        Ok((block << self.block_log) + (index << self.inode_log))
    }

    /// Byte offset of filesystem block `fsb` (AG << agblklog | AG block), and how
    /// many blocks from there lie inside the filesystem (for checking extents).
    pub fn fsblock_offset(&self, fsb: u64) -> Option<(u64, u64)> {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        if agno >= self.agcount as u64 || agbno >= self.agblocks as u64 {
            return None;
        }
        let block = agno * self.agblocks as u64 + agbno;
        if block >= self.dblocks {
            return None;
        }
        // An extent never crosses an AG boundary.
        let left = (self.agblocks as u64 - agbno).min(self.dblocks - block);
        Some((block << self.block_log, left))
    }
}
