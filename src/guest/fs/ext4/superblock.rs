//! The ext2/3/4 superblock (1024 bytes at byte 1024 of the volume): geometry,
//! feature flags (incompat features imgarc does not read are refused by name),
//! the `metadata_csum` seed and the superblock's own checksum.

use super::bytes::{le16, le32};
use crate::crc32c::crc32c_update;
use crate::guest::FsError;

/// Byte offset of the superblock in the volume.
pub(super) const SUPERBLOCK_OFFSET: u64 = 1024;
pub(super) const SUPERBLOCK_SIZE: usize = 1024;
pub(super) const MAGIC: u16 = 0xEF53;
/// Filesystems with more groups than this are refused (2^20 groups of 128 MiB
/// is 128 TiB): the descriptor table is held in memory.
pub(super) const MAX_GROUPS: u64 = 1 << 20;

// s_feature_compat
pub(super) const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub(super) const COMPAT_SPARSE_SUPER2: u32 = 0x200;
// s_feature_incompat
pub(super) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(super) const INCOMPAT_RECOVER: u32 = 0x4;
pub(super) const INCOMPAT_META_BG: u32 = 0x10;
pub(super) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(super) const INCOMPAT_64BIT: u32 = 0x80;
pub(super) const INCOMPAT_MMP: u32 = 0x100;
pub(super) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(super) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(super) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(super) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(super) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(super) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(super) const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Every incompat feature this reader understands. Encryption and casefolding
/// change only what names and contents mean, not where they are: files of an
/// encrypted directory are refused one by one (`read`), the rest reads.
const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;
const INCOMPAT_NAMES: &[(u32, &str)] = &[(0x1, "compression"), (0x8, "journal_dev"), (0x1000, "dirdata"), (0x40000, "fname_encoding")];
// s_feature_ro_compat
pub(super) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(super) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// ro_compat features an ext3 may have; anything else makes it ext4.
const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;
/// incompat features an ext3 may have.
const INCOMPAT_EXT3: u32 = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;

/// What the reader needs from the superblock, checked.
#[derive(Debug, Clone)]
pub(super) struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub inode_size: u16,
    pub state: u16,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub volume_name: [u8; 16],
    pub journal_inum: u32,
    pub journal_dev: u32,
    pub desc_size: u16,
    pub first_meta_bg: u32,
    pub backup_bgs: [u32; 2],
    /// Number of block groups.
    pub groups: u32,
    /// The `metadata_csum` seed (crc32c of the UUID, or `s_checksum_seed`), when the feature is on.
    pub csum_seed: Option<u32>,
}

impl Superblock {
    /// `true` when `sb` (the 1024 bytes at byte 1024) carries the ext2/3/4 magic.
    pub fn has_magic(sb: &[u8]) -> bool {
        sb.len() >= SUPERBLOCK_SIZE && le16(sb, 0x38) == MAGIC
    }

    /// Parses and checks a superblock that has the magic.
    pub fn parse(sb: &[u8]) -> Result<Superblock, FsError> {
        if !Self::has_magic(sb) {
            return Err(FsError::Malformed("ext4 superblock: no 0xEF53 magic".into()));
        }
        let bad = |what: String| FsError::Malformed(format!("ext4 superblock: {what}"));
        let incompat = le32(sb, 0x60);
        let ro_compat = le32(sb, 0x64);
        let unknown = incompat & !INCOMPAT_SUPPORTED;
        if unknown != 0 {
            let mut names: Vec<String> =
                INCOMPAT_NAMES.iter().filter(|(bit, _)| unknown & bit != 0).map(|(_, name)| (*name).to_string()).collect();
            let unnamed = unknown & !INCOMPAT_NAMES.iter().fold(0, |a, (bit, _)| a | bit);
            if unnamed != 0 {
                names.push(format!("unknown incompat bits {unnamed:#x}"));
            }
            return Err(FsError::Unsupported(format!("ext4 incompat features {}", names.join(", "))));
        }
        let log_block_size = le32(sb, 0x18);
        if log_block_size > 6 {
            return Err(FsError::Unsupported(format!(
                "ext4 block size 2^{} (imgarc reads 1 KiB to 64 KiB)",
                10u64.saturating_add(log_block_size as u64)
            )));
        }
        let block_size = 1024u32 << log_block_size;
        let rev_level = le32(sb, 0x4C);
        let inode_size = if rev_level == 0 { 128 } else { le16(sb, 0x58) };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size as u32 > block_size {
            return Err(bad(format!("inode size {inode_size}")));
        }
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let blocks_count = le32(sb, 0x4) as u64 | if is_64bit { (le32(sb, 0x150) as u64) << 32 } else { 0 };
        let first_data_block = le32(sb, 0x14);
        let blocks_per_group = le32(sb, 0x20);
        let inodes_per_group = le32(sb, 0x28);
        let inodes_count = le32(sb, 0x0);
        // A group's block and inode bitmaps are one block each.
        if blocks_per_group == 0 || blocks_per_group > 8 * block_size {
            return Err(bad(format!("{blocks_per_group} blocks per group")));
        }
        if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
            return Err(bad(format!("{inodes_per_group} inodes per group")));
        }
        if first_data_block as u64 >= blocks_count {
            return Err(bad(format!("first data block {first_data_block} of {blocks_count}")));
        }
        let groups = (blocks_count - first_data_block as u64).div_ceil(blocks_per_group as u64);
        if groups > MAX_GROUPS {
            return Err(FsError::Unsupported(format!("ext4 with {groups} block groups (at most {MAX_GROUPS})")));
        }
        if inodes_count as u64 > groups * inodes_per_group as u64 || inodes_count < 11 {
            return Err(bad(format!("{inodes_count} inodes in {groups} groups of {inodes_per_group} inodes")));
        }
        let desc_size = if is_64bit { le16(sb, 0xFE) } else { 32 };
        if is_64bit && (!(64..=1024).contains(&desc_size) || !desc_size.is_power_of_two()) {
            return Err(bad(format!("group descriptor size {desc_size}")));
        }
        let csum_seed = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            let csum_type = sb[0x175];
            if csum_type != 1 {
                return Err(FsError::Unsupported(format!("ext4 checksum type {csum_type} (crc32c is 1)")));
            }
            let stored = le32(sb, 0x3FC);
            let computed = crc32c_update(!0, &sb[..0x3FC]);
            if stored != computed {
                return Err(bad(format!("checksum {stored:#010x}, computed {computed:#010x}")));
            }
            Some(if incompat & INCOMPAT_CSUM_SEED != 0 { le32(sb, 0x270) } else { crc32c_update(!0, &sb[0x68..0x78]) })
        } else {
            None
        };
        let mut volume_name = [0u8; 16];
        volume_name.copy_from_slice(&sb[0x78..0x88]);
        Ok(Superblock {
            inodes_count,
            blocks_count,
            first_data_block,
            block_size,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            state: le16(sb, 0x3A),
            compat: le32(sb, 0x5C),
            incompat,
            ro_compat,
            volume_name,
            journal_inum: le32(sb, 0xE0),
            journal_dev: le32(sb, 0xE4),
            desc_size,
            first_meta_bg: le32(sb, 0x104),
            backup_bgs: [le32(sb, 0x24C), le32(sb, 0x250)],
            groups: groups as u32,
            csum_seed,
        })
    }

    /// `ext4`, `ext3` or `ext2`, as blkid names them: ext4 when a feature
    /// beyond ext3's is on, ext3 when there is a journal.
    pub fn kind(&self) -> &'static str {
        if self.incompat & !INCOMPAT_EXT3 != 0 || self.ro_compat & !RO_COMPAT_EXT3 != 0 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }

    pub fn has_incompat(&self, bit: u32) -> bool {
        self.incompat & bit != 0
    }

    /// Whether group `g` holds a superblock backup (and so a descriptor table copy).
    pub fn group_has_super(&self, g: u32) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == self.backup_bgs[0] || g == self.backup_bgs[1];
        }
        if g <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        [3u32, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                match p.checked_mul(base) {
                    Some(next) => p = next,
                    None => return false,
                }
            }
            p == g
        })
    }

    /// The first block of group `g`.
    pub fn group_first_block(&self, g: u32) -> u64 {
        self.first_data_block as u64 + g as u64 * self.blocks_per_group as u64
    }
}
