//! Block group descriptors (32 bytes, or `s_desc_size` with `64bit`): where
//! each group's inode table is. Read once at open, from the primary table
//! (or the `meta_bg` descriptor blocks), checksums verified with `metadata_csum`.

use super::bytes::{le16, le32};
use super::superblock::{Superblock, INCOMPAT_META_BG};
use super::Volume;
use crate::crc32c::crc32c_update;
use crate::guest::FsError;

/// One group's descriptor, as far as reading files needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupDesc {
    pub inode_table: u64,
    pub flags: u16,
}

/// `bg_flags`: the group's inode table was never initialised (no inode in use).
pub(super) const BG_INODE_UNINIT: u16 = 0x1;

/// Reads every group descriptor.
pub(super) fn read_all(vol: &Volume<'_>, sb: &Superblock) -> Result<Vec<GroupDesc>, FsError> {
    let bs = sb.block_size as u64;
    let ds = sb.desc_size as usize;
    let per_block = bs as usize / ds;
    let table_blocks = (sb.groups as usize).div_ceil(per_block);
    let mut groups = Vec::with_capacity(sb.groups as usize);
    // The superblock's block: 1 with 1 KiB blocks, 0 otherwise.
    let sb_block = 1024 / bs;
    let mut block = vec![0u8; bs as usize];
    for nr in 0..table_blocks as u64 {
        let loc = if !sb.has_incompat(INCOMPAT_META_BG) || nr < sb.first_meta_bg as u64 {
            sb_block + nr + 1
        } else {
            // meta_bg: descriptor block nr lives in the first group of meta group nr.
            let g = nr
                .checked_mul(per_block as u64)
                .and_then(|g| u32::try_from(g).ok())
                .ok_or_else(|| FsError::Malformed(format!("ext4 meta_bg descriptor block {nr}")))?;
            sb.group_first_block(g) + u64::from(sb.group_has_super(g))
        };
        vol.read_block(loc, &mut block)?;
        for (i, desc) in block.chunks_exact(ds).enumerate() {
            let g = nr as usize * per_block + i;
            if g >= sb.groups as usize {
                break;
            }
            if let Some(seed) = sb.csum_seed {
                let stored = le16(desc, 0x1E);
                let mut c = crc32c_update(seed, &(g as u32).to_le_bytes());
                c = crc32c_update(c, &desc[..0x1E]);
                c = crc32c_update(c, &[0, 0]);
                c = crc32c_update(c, &desc[0x20..]);
                if stored != (c & 0xFFFF) as u16 {
                    return Err(FsError::Malformed(format!(
                        "ext4 group descriptor {g}: checksum {stored:#06x}, computed {:#06x}",
                        c & 0xFFFF
                    )));
                }
            }
            let hi = if ds >= 64 { (le32(desc, 0x28) as u64) << 32 } else { 0 };
            groups.push(GroupDesc { inode_table: le32(desc, 0x08) as u64 | hi, flags: le16(desc, 0x12) });
        }
    }
    Ok(groups)
}
