//! Inodes: the fixed 128-byte part and the extra fields behind it (high
//! halves of times with nanoseconds and epoch bits, the checksum's high half),
//! the `metadata_csum` inode checksum, and inline data (`i_block` plus the
//! `system.data` extended attribute in the inode body).

use super::bytes::{le16, le32};
use crate::crc32c::crc32c_update;
use crate::guest::{FileType, FsError, Ino, Metadata, Timestamp};

// i_flags
pub(super) const FL_ENCRYPT: u32 = 0x800;
pub(super) const FL_EXTENTS: u32 = 0x80000;
pub(super) const FL_INLINE_DATA: u32 = 0x1000_0000;

/// Bytes of `i_block`: 15 block pointers, an extent tree root, a fast
/// symlink's target or the first part of inline data.
pub(super) const I_BLOCK_LEN: usize = 60;

/// One inode, checked.
#[derive(Debug, Clone)]
pub(super) struct Inode {
    pub ino: Ino,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub flags: u32,
    pub blocks_lo: u32,
    pub file_acl: u64,
    pub generation: u32,
    pub i_block: [u8; I_BLOCK_LEN],
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// The whole on-disk inode (`s_inode_size` bytes), for the in-inode xattrs.
    raw: Vec<u8>,
}

impl Inode {
    /// Parses inode `ino` from its `raw` bytes (`s_inode_size` of them),
    /// verifying the checksum when `csum_seed` is set (`metadata_csum`).
    pub fn parse(ino: Ino, raw: Vec<u8>, csum_seed: Option<u32>) -> Result<Inode, FsError> {
        let bad = |what: String| FsError::Malformed(format!("ext4 inode {ino}: {what}"));
        if raw.len() < 128 {
            return Err(bad(format!("{} bytes", raw.len())));
        }
        let extra_isize = if raw.len() > 128 { le16(&raw, 0x80) as usize } else { 0 };
        if raw.len() > 128 && (128 + extra_isize > raw.len() || extra_isize % 4 != 0) {
            return Err(bad(format!("extra size {extra_isize} in a {}-byte inode", raw.len())));
        }
        // A field of the extra part exists when the extra size covers it.
        let has = |offset: usize, len: usize| raw.len() > 128 && offset + len <= 128 + extra_isize;
        let generation = le32(&raw, 0x64);
        if let Some(seed) = csum_seed {
            let has_hi = has(0x82, 2);
            let stored = le16(&raw, 0x7C) as u32 | if has_hi { (le16(&raw, 0x82) as u32) << 16 } else { 0 };
            let mut c = crc32c_update(seed, &(ino as u32).to_le_bytes());
            c = crc32c_update(c, &generation.to_le_bytes());
            c = crc32c_update(c, &raw[..0x7C]);
            c = crc32c_update(c, &[0, 0]);
            c = crc32c_update(c, &raw[0x7E..128]);
            if raw.len() > 128 {
                if has_hi {
                    c = crc32c_update(c, &raw[128..0x82]);
                    c = crc32c_update(c, &[0, 0]);
                    c = crc32c_update(c, &raw[0x84..]);
                } else {
                    c = crc32c_update(c, &raw[128..]);
                }
            }
            let computed = if has_hi { c } else { c & 0xFFFF };
            if stored != computed {
                return Err(bad(format!("checksum {stored:#010x}, computed {computed:#010x}")));
            }
        }
        let time = |base: usize, extra: usize| {
            let secs = le32(&raw, base) as i32 as i64;
            if has(extra, 4) {
                let x = le32(&raw, extra);
                // Low 2 bits extend the seconds past 2038, the rest are nanoseconds.
                Timestamp { secs: secs + (((x & 3) as i64) << 32), nanos: (x >> 2).min(999_999_999) }
            } else {
                Timestamp { secs, nanos: 0 }
            }
        };
        let mut i_block = [0u8; I_BLOCK_LEN];
        i_block.copy_from_slice(&raw[0x28..0x28 + I_BLOCK_LEN]);
        Ok(Inode {
            ino,
            mode: le16(&raw, 0x00),
            uid: le16(&raw, 0x02) as u32 | (le16(&raw, 0x78) as u32) << 16,
            gid: le16(&raw, 0x18) as u32 | (le16(&raw, 0x7A) as u32) << 16,
            size: le32(&raw, 0x04) as u64 | (le32(&raw, 0x6C) as u64) << 32,
            links: le16(&raw, 0x1A),
            flags: le32(&raw, 0x20),
            blocks_lo: le32(&raw, 0x1C),
            file_acl: le32(&raw, 0x68) as u64 | (le16(&raw, 0x76) as u64) << 32,
            generation,
            i_block,
            atime: time(0x08, 0x8C),
            mtime: time(0x10, 0x88),
            ctime: time(0x0C, 0x84),
            raw,
        })
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_mode(u32::from(self.mode))
    }

    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// The seed of this inode's extent and directory block checksums.
    pub fn csum_seed(&self, fs_seed: u32) -> u32 {
        let c = crc32c_update(fs_seed, &(self.ino as u32).to_le_bytes());
        crc32c_update(c, &self.generation.to_le_bytes())
    }

    /// The 32-bit block pointer `i` of `i_block` (ext2/3 block maps, device numbers).
    pub fn block_ptr(&self, i: usize) -> u32 {
        le32(&self.i_block, i * 4)
    }

    pub fn metadata(&self) -> Metadata {
        let file_type = self.file_type();
        let rdev = matches!(file_type, FileType::CharDevice | FileType::BlockDevice).then(|| {
            let old = self.block_ptr(0);
            if old != 0 {
                ((old >> 8) & 0xFF, old & 0xFF)
            } else {
                let new = self.block_ptr(1);
                ((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
            }
        });
        Metadata {
            ino: self.ino,
            file_type,
            mode: (self.mode & 0o7777) as u32,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.links as u32,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            rdev,
        }
    }

    /// The value of the in-inode extended attribute `system.data` (the
    /// inline data past the first 60 bytes), or empty when absent.
    pub fn inline_xattr_data(&self) -> Result<&[u8], FsError> {
        let bad = |what: String| FsError::Malformed(format!("ext4 inode {}: in-inode xattrs: {what}", self.ino));
        if self.raw.len() <= 128 {
            return Ok(&[]);
        }
        let start = 128 + le16(&self.raw, 0x80) as usize;
        let body = match self.raw.get(start..) {
            Some(b) if b.len() >= 4 && le32(b, 0) == 0xEA02_0000 => &b[4..],
            _ => return Ok(&[]),
        };
        let mut pos = 0usize;
        // Entries are at least 16 bytes and ordered; the body bounds their count.
        while pos + 16 <= body.len() && le32(body, pos) != 0 {
            let name_len = body[pos] as usize;
            let name_index = body[pos + 1];
            let value_offs = le16(body, pos + 2) as usize;
            let value_inum = le32(body, pos + 4);
            let value_size = le32(body, pos + 8) as usize;
            let name = body.get(pos + 16..pos + 16 + name_len).ok_or_else(|| bad(format!("entry name at {pos}")))?;
            // system.* is name index 7.
            if name_index == 7 && name == b"data" {
                if value_inum != 0 {
                    return Err(bad("system.data in an EA inode".into()));
                }
                return body
                    .get(value_offs..value_offs.saturating_add(value_size))
                    .ok_or_else(|| bad(format!("system.data value of {value_size} bytes at {value_offs}")));
            }
            pos += (16 + name_len + 3) & !3;
        }
        Ok(&[])
    }

    /// The whole inline data (`i_size` bytes): `i_block` then `system.data`.
    pub fn inline_data(&self) -> Result<Vec<u8>, FsError> {
        let rest = self.inline_xattr_data()?;
        let mut data = Vec::with_capacity(I_BLOCK_LEN + rest.len());
        data.extend_from_slice(&self.i_block);
        data.extend_from_slice(rest);
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if size > data.len() {
            return Err(FsError::Malformed(format!("ext4 inode {}: inline data of {} bytes, size {}", self.ino, data.len(), self.size)));
        }
        data.truncate(size);
        Ok(data)
    }
}
