//! XFS directories, version 2/3: short-form (entries inside the inode), block
//! ("XDB3"/"XD2B": one directory block with its leaf and tail) and leaf/node
//! ("XDD3"/"XD2D" data blocks; the leaf, node and free blocks above the 32 GiB
//! leaf offset only index the entries, so they are not read). A directory
//! block is `block size << dirblklog` bytes and may span several extents.

use super::inode::{Extent, Inode};
use super::{be16, be32, be64, verify_crc, Xfs};
use crate::guest::{DirEntry, FileType, FsError};

/// Directory data lives below this byte offset in the directory's file space.
const LEAF_OFFSET: u64 = 32 << 30;
/// The most directory data one `read_dir` reads (a million 40-byte entries fit).
const MAX_DIR_DATA: u64 = 128 << 20;
/// The most entries one `read_dir` returns.
const MAX_ENTRIES: usize = 1 << 21;

const BLOCK_MAGIC_V5: &[u8; 4] = b"XDB3";
const DATA_MAGIC_V5: &[u8; 4] = b"XDD3";
const BLOCK_MAGIC_V4: &[u8; 4] = b"XD2B";
const DATA_MAGIC_V4: &[u8; 4] = b"XD2D";
const DIR3_CRC_OFF: usize = 4;
/// Data block header sizes: v5 (dir3 block header + best free + pad), v4 (magic + best free).
const DATA_HDR_V5: usize = 64;
const DATA_HDR_V4: usize = 16;
const UNUSED_TAG: u16 = 0xffff;

/// Entries of directory `dir` (without `.` and `..`), in on-disk order.
pub fn read_dir(fs: &Xfs, dir: &Inode, extents: Option<&[Extent]>) -> Result<Vec<DirEntry>, FsError> {
    let mut out = match extents {
        None => short_form(fs, dir)?,
        Some(extents) => data_blocks(fs, dir, extents)?,
    };
    // Without the ftype feature entries carry no type: ask each inode.
    if !fs.sb.ftype {
        for e in &mut out {
            e.file_type = fs.inode(e.ino).map(|i| i.file_type()).unwrap_or(FileType::Unknown);
        }
    }
    Ok(out)
}

/// A short-form directory: header (count, i8count, parent), then entries
/// (namelen, 2-byte offset, name, [ftype], 4- or 8-byte inode number).
fn short_form(fs: &Xfs, dir: &Inode) -> Result<Vec<DirEntry>, FsError> {
    let ino = dir.ino;
    let bytes = dir.local_bytes()?;
    let bad = |what: String| FsError::Malformed(format!("XFS inode {ino}: short-form directory: {what}"));
    if bytes.len() < 2 {
        return Err(bad(format!("{} bytes", bytes.len())));
    }
    let count = bytes[0] as usize;
    let ino_len = if bytes[1] != 0 { 8 } else { 4 };
    let mut at = 2 + ino_len;
    let ft_len = fs.sb.ftype as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let namelen = *bytes.get(at).ok_or_else(|| bad(format!("entry {i} at byte {at} past the end")))? as usize;
        let end = at + 3 + namelen + ft_len + ino_len;
        if namelen == 0 || end > bytes.len() {
            return Err(bad(format!("entry {i} at byte {at}: name of {namelen} bytes does not fit")));
        }
        let name = bytes[at + 3..at + 3 + namelen].to_vec();
        let file_type = if ft_len == 1 { FileType::from_dirent_code(bytes[at + 3 + namelen]) } else { FileType::Unknown };
        let num_at = at + 3 + namelen + ft_len;
        let entry_ino = if ino_len == 8 { be64(bytes, num_at) } else { be32(bytes, num_at) as u64 };
        out.push(DirEntry { name, ino: entry_ino, file_type });
        at = end;
    }
    Ok(out)
}

/// Block and leaf/node directories: every data block below the leaf offset.
fn data_blocks(fs: &Xfs, dir: &Inode, extents: &[Extent]) -> Result<Vec<DirEntry>, FsError> {
    let sb = &fs.sb;
    let ino = dir.ino;
    let dir_block = sb.dir_block_size() as u64;
    let per_dir_block = 1u64 << sb.dirblklog;
    let leaf_block = LEAF_OFFSET >> sb.block_log;
    // Directory block numbers (in fs blocks, aligned) that hold data, in order.
    let mut starts: Vec<u64> = Vec::new();
    for e in extents {
        if e.file_block >= leaf_block {
            break;
        }
        let last = (e.file_block + e.blocks).min(leaf_block) - 1;
        let mut d = e.file_block / per_dir_block;
        while d <= last / per_dir_block {
            let start = d * per_dir_block;
            if starts.last() != Some(&start) {
                if (starts.len() as u64 + 1) * dir_block > MAX_DIR_DATA {
                    return Err(FsError::Unsupported(format!("XFS inode {ino}: directory data beyond {} MiB", MAX_DIR_DATA >> 20)));
                }
                starts.push(start);
            }
            d += 1;
        }
    }
    let mut out = Vec::new();
    for start in starts {
        let (block, disk_offset) = read_dir_block(fs, ino, extents, start, dir_block)?;
        parse_data_block(fs, ino, start, disk_offset, &block, &mut out)?;
    }
    Ok(out)
}

/// Reads the directory block at file block `start`, gathering its fs blocks
/// from the extents (a directory block may be split across extents).
fn read_dir_block(fs: &Xfs, ino: u64, extents: &[Extent], start: u64, len: u64) -> Result<(Vec<u8>, u64), FsError> {
    let bs = fs.sb.block_size as u64;
    let mut block = vec![0u8; len as usize];
    let mut first_disk = None;
    let blocks = len / bs;
    let mut b = 0;
    while b < blocks {
        let fb = start + b;
        // Extents are sorted by file block: the last one starting at or before `fb`.
        let i = extents.partition_point(|e| e.file_block <= fb);
        let e = i
            .checked_sub(1)
            .and_then(|i| extents.get(i))
            .filter(|e| fb < e.file_block + e.blocks && !e.unwritten)
            .ok_or_else(|| FsError::Malformed(format!("XFS inode {ino}: directory block at file block {start} has a hole")))?;
        let run = (e.file_block + e.blocks - fb).min(blocks - b);
        let disk = e.disk_offset + (fb - e.file_block) * bs;
        first_disk.get_or_insert(disk);
        fs.read_exact(disk, &mut block[(b * bs) as usize..((b + run) * bs) as usize])?;
        b += run;
    }
    Ok((block, first_disk.unwrap_or(0)))
}

/// One data block ("XDB3" with its leaf and tail, or "XDD3"): appends its entries.
fn parse_data_block(fs: &Xfs, ino: u64, start: u64, disk_offset: u64, block: &[u8], out: &mut Vec<DirEntry>) -> Result<(), FsError> {
    let sb = &fs.sb;
    let bad = |what: String| FsError::Malformed(format!("XFS inode {ino}: directory block at file block {start}: {what}"));
    let magic = &block[..4];
    let (is_block, hdr) = match (sb.has_crc(), magic) {
        (true, m) if m == BLOCK_MAGIC_V5 => (true, DATA_HDR_V5),
        (true, m) if m == DATA_MAGIC_V5 => (false, DATA_HDR_V5),
        (false, m) if m == BLOCK_MAGIC_V4 => (true, DATA_HDR_V4),
        (false, m) if m == DATA_MAGIC_V4 => (false, DATA_HDR_V4),
        _ => return Err(bad(format!("magic {magic:02x?}"))),
    };
    if sb.has_crc() {
        if fs.verify {
            verify_crc(block, DIR3_CRC_OFF, || format!("XFS inode {ino}: directory block at file block {start}"))?;
        }
        let (blkno, owner) = (be64(block, 8), be64(block, 40));
        if owner != ino || blkno != disk_offset >> 9 {
            return Err(bad(format!("records owner {owner} at sector {blkno}")));
        }
    }
    let mut end = block.len();
    if is_block {
        // Tail: leaf entry count and stale count; the leaf entries (8 bytes each) precede it.
        let count = be32(block, end - 8) as usize;
        let leaf_bytes =
            count.checked_mul(8).filter(|&n| n + 8 + hdr <= end).ok_or_else(|| bad(format!("block tail counts {count} leaf entries")))?;
        end -= 8 + leaf_bytes;
    }
    let ft_len = sb.ftype as usize;
    let mut at = hdr;
    while at < end {
        if out.len() >= MAX_ENTRIES {
            return Err(FsError::Unsupported(format!("XFS inode {ino}: more than {MAX_ENTRIES} directory entries")));
        }
        if end - at < 8 {
            return Err(bad(format!("{} stray bytes at offset {at}", end - at)));
        }
        if be16(block, at) == UNUSED_TAG {
            let len = be16(block, at + 2) as usize;
            if len < 8 || len % 8 != 0 || len > end - at {
                return Err(bad(format!("free space of {len} bytes at offset {at}")));
            }
            at += len;
            continue;
        }
        // The smallest entry (8-byte inode, length, 1-byte name, tag) rounds up to 16 bytes.
        if end - at < 16 {
            return Err(bad(format!("{} stray bytes at offset {at}", end - at)));
        }
        let entry_ino = be64(block, at);
        let namelen = block[at + 8] as usize;
        let size = (8 + 1 + namelen + ft_len + 2).div_ceil(8) * 8;
        if namelen == 0 || size > end - at {
            return Err(bad(format!("entry at offset {at} with a {namelen}-byte name does not fit")));
        }
        let tag = be16(block, at + size - 2) as usize;
        if tag != at {
            return Err(bad(format!("entry at offset {at} tagged {tag}")));
        }
        let name = &block[at + 9..at + 9 + namelen];
        if name != b"." && name != b".." {
            let file_type = if ft_len == 1 { FileType::from_dirent_code(block[at + 9 + namelen]) } else { FileType::Unknown };
            out.push(DirEntry { name: name.to_vec(), ino: entry_ino, file_type });
        }
        at += size;
    }
    Ok(())
}
