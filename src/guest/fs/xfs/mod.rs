//! XFS, read-only: v5 (CRC) filesystems as mkfs.xfs makes them today and v4.
//! Owns the superblock (`superblock`), inodes and their data forks
//! (`inode`), directories (`dir`) and the clean/dirty test of the log (`log`;
//! never replayed). Every metadata block with a CRC is verified before use;
//! every walk is bounded (btree depth and block budget, extent and entry
//! caps, directory data cap), so a hostile image gives an `FsError`.

mod dir;
mod inode;
mod log;
mod superblock;

use crate::guest::{DirEntry, FileRun, FileType, Filesystem, FsError, Ino, Metadata, ReadAt};
use inode::{Extent, ForkFormat, Inode};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use superblock::Superblock;

/// Longest symlink target (MAXPATHLEN).
const MAX_LINK: u64 = 1024;
const SYMLINK_MAGIC: &[u8; 4] = b"XSLM";
/// v5 remote symlink block header (magic, offset, bytes, crc, uuid, owner, blkno, lsn).
const SYMLINK_HDR: usize = 56;
const SYMLINK_CRC_OFF: usize = 12;

/// Opens XFS when `bytes` hold one ("XFSB" at byte 0); `Ok(None)` when they do not.
pub fn open<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    Ok(Xfs::open(bytes, true)?.map(|fs| Box::new(fs) as Box<dyn Filesystem + 'a>))
}

/// As [`open`], without verifying CRCs: for fuzzing, so that the structures
/// behind the checksums are explored too. Not for reading real disks.
#[doc(hidden)]
pub fn open_without_checksums<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    Ok(Xfs::open(bytes, false)?.map(|fs| Box::new(fs) as Box<dyn Filesystem + 'a>))
}

/// A file's extent list, shared between the cache and a caller.
type Extents = Option<Rc<Vec<Extent>>>;

/// An open XFS volume.
pub struct Xfs<'a> {
    bytes: Arc<dyn ReadAt + 'a>,
    sb: Superblock,
    /// Verify CRCs (off only for fuzzing).
    verify: bool,
    notes: Vec<String>,
    /// The last inode read and its extents: `read` is called piece by piece.
    last: RefCell<Option<(Ino, Rc<Inode>, Extents)>>,
}

impl<'a> Xfs<'a> {
    fn open(bytes: Arc<dyn ReadAt + 'a>, verify: bool) -> Result<Option<Xfs<'a>>, FsError> {
        let mut magic = [0u8; 4];
        if bytes.size() < 512 || bytes.read_at(0, &mut magic).is_err() || &magic != superblock::MAGIC {
            return Ok(None);
        }
        let mut sector = vec![0u8; 512];
        bytes.read_at(0, &mut sector)?;
        let sect = u16::from_be_bytes([sector[102], sector[103]]) as u64;
        if sect > 512 && sect <= 1 << 15 && sect <= bytes.size() {
            sector = vec![0u8; sect as usize];
            bytes.read_at(0, &mut sector)?;
        }
        let sb = Superblock::parse(&sector, verify)?;
        if sb.dblocks.checked_mul(sb.block_size as u64).is_none_or(|end| end > bytes.size()) {
            return Err(FsError::Malformed(format!(
                "XFS superblock: {} blocks of {} bytes pass the end of the volume ({} bytes)",
                sb.dblocks,
                sb.block_size,
                bytes.size()
            )));
        }
        let mut fs = Xfs { bytes, sb, verify, notes: Vec::new(), last: RefCell::new(None) };
        if fs.sb.needs_repair() {
            fs.notes.push("XFS superblock says the filesystem needs repair (xfs_repair was interrupted)".into());
        }
        match log::state(&fs) {
            Ok(log::LogState::Clean) => {}
            Ok(log::LogState::External) => fs.notes.push("XFS log is on an external device: not checked".into()),
            Ok(log::LogState::Dirty(why)) => {
                fs.notes.push(format!("XFS log is dirty: read without replaying it; recent changes may be missing ({why})"))
            }
            Err(e) => fs.notes.push(format!("XFS log is unreadable, read without replaying it: {e}")),
        }
        // The root must be a directory, or nothing below works.
        let root = fs.inode(fs.sb.root_ino)?;
        if root.file_type() != FileType::Directory {
            return Err(FsError::Malformed(format!("XFS root inode {} is not a directory", fs.sb.root_ino)));
        }
        Ok(Some(fs))
    }

    fn read_exact(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.bytes.read_at(offset, buf).map_err(FsError::Io)
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let mut v = vec![0u8; len];
        self.read_exact(offset, &mut v)?;
        Ok(v)
    }

    /// Reads and parses inode `ino` (the last one is kept).
    fn inode(&self, ino: Ino) -> Result<Rc<Inode>, FsError> {
        if let Some((last, inode, _)) = &*self.last.borrow() {
            if *last == ino {
                return Ok(inode.clone());
            }
        }
        let raw = self.read_vec(self.sb.inode_offset(ino)?, self.sb.inode_size as usize)?;
        let inode = Rc::new(Inode::parse(&self.sb, ino, &raw, self.verify)?);
        *self.last.borrow_mut() = Some((ino, inode.clone(), None));
        Ok(inode)
    }

    /// The inode and its extents (None for local and device forks), cached for the last inode.
    fn inode_and_extents(&self, ino: Ino) -> Result<(Rc<Inode>, Extents), FsError> {
        let inode = self.inode(ino)?;
        if let Some((last, _, Some(extents))) = &*self.last.borrow() {
            if *last == ino {
                return Ok((inode, Some(extents.clone())));
            }
        }
        let extents = match inode.format {
            ForkFormat::Extents | ForkFormat::Btree => Some(Rc::new(inode.extents(self)?)),
            ForkFormat::Local | ForkFormat::Dev => None,
        };
        *self.last.borrow_mut() = Some((ino, inode.clone(), extents.clone()));
        Ok((inode, extents))
    }

    /// The file's byte runs covering `[0, size)`: extents, with gaps and
    /// unwritten extents as holes, physically adjacent extents merged.
    fn runs(&self, inode: &Inode, extents: &[Extent]) -> Result<Vec<FileRun>, FsError> {
        let bs = self.sb.block_size as u64;
        let size = inode.size;
        let mut runs: Vec<FileRun> = Vec::new();
        let mut push = |file_offset: u64, len: u64, disk_offset: Option<u64>| {
            if let Some(last) = runs.last_mut() {
                let joined = match (last.disk_offset, disk_offset) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a + last.len == b,
                    _ => false,
                };
                if joined && last.file_offset + last.len == file_offset {
                    last.len += len;
                    return;
                }
            }
            runs.push(FileRun { file_offset, len, disk_offset });
        };
        let mut next = 0u64;
        for e in extents {
            // file_block < 2^54 and blocks < 2^21, block size ≤ 2^16: may pass u64.
            let Some(start) = e.file_block.checked_mul(bs) else { break };
            if start >= size {
                break;
            }
            let len = (e.blocks * bs).min(size - start);
            if start > next {
                push(next, start - next, None);
            }
            push(start, len, (!e.unwritten).then_some(e.disk_offset));
            next = start + len;
        }
        if next < size {
            push(next, size - next, None);
        }
        Ok(runs)
    }

    /// A symlink's target from its remote blocks (v5 blocks start with an "XSLM" header).
    fn remote_link(&self, inode: &Inode, extents: &[Extent]) -> Result<Vec<u8>, FsError> {
        let ino = inode.ino;
        let bad = |what: String| FsError::Malformed(format!("XFS inode {ino}: symlink: {what}"));
        if inode.size == 0 || inode.size > MAX_LINK {
            return Err(bad(format!("target of {} bytes", inode.size)));
        }
        let bs = self.sb.block_size as usize;
        let mut target = Vec::with_capacity(inode.size as usize);
        for e in extents {
            if target.len() as u64 >= inode.size {
                break;
            }
            // A symlink spans at most a few blocks; refuse a longer claim before reading.
            let len = (e.blocks as usize)
                .checked_mul(bs)
                .filter(|&n| n <= 64 * 1024)
                .ok_or_else(|| bad(format!("extent of {} blocks", e.blocks)))?;
            let buf = self.read_vec(e.disk_offset, len)?;
            if self.sb.has_crc() && self.verify {
                verify_crc(&buf, SYMLINK_CRC_OFF, || format!("XFS inode {ino}: symlink block"))?;
            }
            for block in buf.chunks(bs) {
                let want = inode.size as usize - target.len();
                if want == 0 {
                    break;
                }
                let data = if self.sb.has_crc() {
                    if &block[..4] != SYMLINK_MAGIC || be64(block, 24) != ino {
                        return Err(bad(format!("block magic {:02x?}, owner {}", &block[..4], be64(block, 24))));
                    }
                    let n = be32(block, 8) as usize;
                    &block[SYMLINK_HDR..SYMLINK_HDR + n.min(bs - SYMLINK_HDR)]
                } else {
                    block
                };
                target.extend_from_slice(&data[..want.min(data.len())]);
            }
        }
        if target.len() as u64 != inode.size {
            return Err(bad(format!("blocks hold {} of its {} bytes", target.len(), inode.size)));
        }
        Ok(target)
    }
}

impl Filesystem for Xfs<'_> {
    fn kind(&self) -> &'static str {
        "xfs"
    }

    fn label(&self) -> Option<String> {
        self.sb.label.clone()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn root(&self) -> Ino {
        self.sb.root_ino
    }

    fn metadata(&self, ino: Ino) -> Result<Metadata, FsError> {
        let i = self.inode(ino)?;
        Ok(Metadata {
            ino,
            file_type: i.file_type(),
            mode: (i.mode & 0o7777) as u32,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            nlink: i.nlink,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            rdev: i.rdev(),
        })
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError> {
        let (inode, extents) = self.inode_and_extents(ino)?;
        if inode.file_type() != FileType::Directory {
            return Err(FsError::NotADirectory(format!("XFS inode {ino}")));
        }
        if inode.format == ForkFormat::Dev {
            return Err(FsError::Malformed(format!("XFS inode {ino}: directory with a device fork")));
        }
        dir::read_dir(self, &inode, extents.as_deref().map(|v| v.as_slice()))
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let (inode, extents) = self.inode_and_extents(ino)?;
        if offset >= inode.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (inode.size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        let Some(extents) = extents else {
            if inode.format == ForkFormat::Local {
                let data = inode.local_bytes()?;
                buf.copy_from_slice(&data[offset as usize..offset as usize + n]);
            } else {
                buf.fill(0);
            }
            return Ok(n);
        };
        let end = offset + n as u64;
        let runs = self.runs(&inode, &extents)?;
        // The first run that ends after `offset`; then one read_at per run piece.
        let first = runs.partition_point(|r| r.file_offset + r.len <= offset);
        for r in &runs[first..] {
            if r.file_offset >= end {
                break;
            }
            let s = r.file_offset.max(offset);
            let e = (r.file_offset + r.len).min(end);
            let piece = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match r.disk_offset {
                Some(d) => self.read_exact(d + (s - r.file_offset), piece)?,
                None => piece.fill(0),
            }
        }
        Ok(n)
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let (inode, extents) = self.inode_and_extents(ino)?;
        if inode.file_type() != FileType::Symlink {
            return Err(FsError::Malformed(format!("XFS inode {ino} is not a symlink")));
        }
        match extents {
            None => Ok(inode.local_bytes()?.to_vec()),
            Some(extents) => self.remote_link(&inode, &extents),
        }
    }

    fn data_map(&self, ino: Ino) -> Result<Option<Vec<FileRun>>, FsError> {
        let (inode, extents) = self.inode_and_extents(ino)?;
        match (inode.file_type(), extents) {
            (FileType::Directory | FileType::Symlink, _) => Ok(None),
            (_, Some(extents)) => Ok(Some(self.runs(&inode, &extents)?)),
            (_, None) if inode.format == ForkFormat::Local && inode.size > 0 => Ok(None),
            (_, None) => {
                Ok(Some(if inode.size == 0 { Vec::new() } else { vec![FileRun { file_offset: 0, len: inode.size, disk_offset: None }] }))
            }
        }
    }
}

/// Big-endian fields of on-disk structures; callers check the length first
/// (a short slice reads as zero rather than panicking).
fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
}

/// Checks the little-endian CRC-32C stored at `crc_at` over `block` (the
/// field itself counted as zero), as every v5 metadata block carries one.
fn verify_crc(block: &[u8], crc_at: usize, what: impl FnOnce() -> String) -> Result<(), FsError> {
    let Some(stored) = block.get(crc_at..crc_at + 4) else {
        return Err(FsError::Malformed(format!("{}: too short for its CRC", what())));
    };
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    // The CRC field counts as zero: chain the register over the bytes around it.
    use crate::crc32c::crc32c_update;
    let computed = !crc32c_update(crc32c_update(crc32c_update(!0, &block[..crc_at]), &[0; 4]), &block[crc_at + 4..]);
    if computed != stored {
        return Err(FsError::Malformed(format!("{}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})", what())));
    }
    Ok(())
}
