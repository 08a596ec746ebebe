//! Directory entries in the linear ext2 format (`inode`, `rec_len`,
//! `name_len`, `file_type`, name), read block by block. htree-indexed
//! directories read the same way: their index blocks look like a `.`/`..`
//! pair whose `..` spans the block, or one empty entry spanning it. With
//! `metadata_csum` a leaf block ends in a 12-byte tail holding its checksum.

use super::bytes::{le16, le32};
use crate::crc32c::crc32c_update;
use crate::guest::{DirEntry, FileType, FsError};

/// The tail at the end of a checksummed leaf block: inode 0, rec_len 12, name_len 0, type 0xDE.
const TAIL_LEN: usize = 12;

/// Whether `block` ends in a `metadata_csum` dirent tail.
fn has_tail(block: &[u8]) -> bool {
    let Some(t) = block.len().checked_sub(TAIL_LEN).and_then(|at| block.get(at..)) else {
        return false;
    };
    le32(t, 0) == 0 && le16(t, 4) == 12 && t[6] == 0 && t[7] == 0xDE
}

/// Verifies the dirent tail's checksum, when the block has one. Index
/// blocks (htree) carry theirs elsewhere and are not checked here.
pub(super) fn verify_block(block: &[u8], inode_seed: u32, ino: u64, block_no: u64) -> Result<(), FsError> {
    if !has_tail(block) {
        return Ok(());
    }
    let end = block.len() - TAIL_LEN;
    let stored = le32(block, end + 8);
    let computed = crc32c_update(inode_seed, &block[..end]);
    if stored != computed {
        return Err(FsError::Malformed(format!(
            "ext4 directory inode {ino}, block {block_no}: checksum {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok(())
}

/// `rec_len` as stored: 64 KiB blocks write 65536 as 0 or 65535.
fn rec_len(raw: u16, block_size: usize) -> usize {
    if block_size >= 65536 && (raw == 0 || raw == 65535) {
        65536
    } else {
        raw as usize
    }
}

/// Appends the entries of one region (a block, or an inline-data area) to
/// `out`, skipping `.`, `..` and unused entries. `filetype`: the feature
/// (without it `name_len` is 16 bits and the type is unknown here).
/// `where_` names the region in errors.
pub(super) fn parse_region(
    region: &[u8],
    filetype: bool,
    inodes_count: u32,
    where_: &dyn Fn() -> String,
    out: &mut Vec<DirEntry>,
) -> Result<(), FsError> {
    let mut pos = 0usize;
    while pos < region.len() {
        let bad = |what: String| FsError::Malformed(format!("{}, offset {pos}: {what}", where_()));
        if region.len() - pos < 8 {
            return Err(bad(format!("{} bytes left, too few for an entry", region.len() - pos)));
        }
        let e = &region[pos..];
        let ino = le32(e, 0);
        let len = rec_len(le16(e, 4), region.len());
        let (name_len, type_code) = if filetype { (e[6] as usize, e[7]) } else { (le16(e, 6) as usize, 0) };
        if len < 8 || len % 4 != 0 || len > e.len() {
            return Err(bad(format!("rec_len {len}")));
        }
        if ino != 0 {
            if 8 + name_len > len {
                return Err(bad(format!("name of {name_len} bytes in a {len}-byte entry")));
            }
            if ino > inodes_count {
                return Err(bad(format!("inode {ino} of {inodes_count}")));
            }
            let name = &e[8..8 + name_len];
            if name.is_empty() {
                return Err(bad("empty name".into()));
            }
            if name != b"." && name != b".." {
                out.push(DirEntry { name: name.to_vec(), ino: ino as u64, file_type: FileType::from_dirent_code(type_code) });
            }
        }
        pos += len;
    }
    Ok(())
}
