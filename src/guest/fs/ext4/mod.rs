//! ext2, ext3 and ext4, read-only, over any [`ReadAt`] (a partition, a
//! logical volume, a test image): the [`Filesystem`] implementation.
//!
//! `superblock` checks the geometry and features, `group` reads the block
//! group descriptors, `inode` parses inodes (and inline data), `blockmap`
//! maps file blocks (extent trees and ext2/3 indirect blocks), `dir` parses
//! directory blocks and `journal` replays a dirty JBD2 journal in memory: the
//! blocks it would write overlay every read of the volume ([`Volume`]).
//! With `metadata_csum` the superblock, group descriptor, inode, extent block
//! and directory leaf block checksums are verified on every read, and a
//! mismatch is an error naming the structure.

mod blockmap;
mod bytes;
mod dir;
mod group;
mod inode;
mod journal;
mod superblock;
#[cfg(test)]
mod tests;

use crate::guest::{DirEntry, FileRun, FileType, Filesystem, FsError, Ino, Metadata, ReadAt};
use blockmap::BlockRun;
use group::GroupDesc;
use inode::{Inode, FL_ENCRYPT, FL_INLINE_DATA, I_BLOCK_LEN};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use superblock::{Superblock, INCOMPAT_FILETYPE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

/// The root directory's inode.
const ROOT_INO: Ino = 2;
/// The largest directory read: its blocks are read whole.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// The longest symlink target read.
const MAX_LINK_BYTES: u64 = 64 << 10;
/// Directory blocks are read in pieces of at most this many bytes.
const DIR_READ_PIECE: u64 = 1 << 20;
/// Inode tables are read (and cached) in pieces of this many bytes.
const INODE_PIECE: u64 = 64 << 10;
/// Inode-table pieces kept (4 MiB).
const INODE_PIECES_CACHED: usize = 64;

/// Opens ext2, ext3 and ext4 when `bytes` hold one (0xEF53 at byte 1080); `Ok(None)` when they do not.
pub fn open<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    if bytes.size() < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64 {
        return Ok(None);
    }
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    bytes.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
    if !Superblock::has_magic(&raw) {
        return Ok(None);
    }
    Ok(Some(Box::new(Ext4::open(bytes, &raw)?)))
}

/// Where a block's replacement is: the journal's copy (at `offset` in the
/// volume), whose first 4 bytes were escaped when they looked like a JBD2 magic.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replacement {
    offset: u64,
    escaped: bool,
}

/// The volume's bytes as the filesystem sees them: the device, with the
/// blocks a journal replay would write laid over it.
pub(super) struct Volume<'a> {
    bytes: Arc<dyn ReadAt + 'a>,
    sb: Superblock,
    overlay: BTreeMap<u64, Replacement>,
}

impl Volume<'_> {
    /// Reads filesystem block `block` into `buf` (one block long).
    fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let bs = self.sb.block_size as u64;
        if block >= self.sb.blocks_count {
            return Err(FsError::Malformed(format!("ext4 block {block} past the end ({} blocks)", self.sb.blocks_count)));
        }
        self.read(block * bs, buf)
    }

    /// Reads `buf.len()` bytes at byte `offset` of the filesystem.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.bytes.read_at(offset, buf)?;
        if self.overlay.is_empty() || buf.is_empty() {
            return Ok(());
        }
        let bs = self.sb.block_size as u64;
        let end = offset + buf.len() as u64;
        for (&block, rep) in self.overlay.range(offset / bs..end.div_ceil(bs)) {
            let block_start = block * bs;
            let from = block_start.max(offset);
            let to = (block_start + bs).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            self.bytes.read_at(rep.offset + (from - block_start), dst)?;
            if rep.escaped && from < block_start + 4 {
                let magic = journal::JBD2_MAGIC.to_be_bytes();
                for (i, b) in dst.iter_mut().enumerate().take((block_start + 4 - from) as usize) {
                    *b = magic[(from - block_start) as usize + i];
                }
            }
        }
        Ok(())
    }
}

/// An open ext2/3/4 filesystem.
pub struct Ext4<'a> {
    vol: Volume<'a>,
    groups: Vec<GroupDesc>,
    notes: Vec<String>,
    /// The block runs of the last file mapped (reads come in sequence).
    runs_cache: Mutex<Option<(Ino, Arc<Vec<FileRun>>)>>,
    /// Inode-table pieces by byte offset (cleared when full).
    inode_pieces: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl<'a> Ext4<'a> {
    fn open(bytes: Arc<dyn ReadAt + 'a>, raw_sb: &[u8]) -> Result<Self, FsError> {
        let sb = Superblock::parse(raw_sb)?;
        let mut notes = Vec::new();
        let groups = group::read_all(&Volume { bytes: bytes.clone(), sb: sb.clone(), overlay: BTreeMap::new() }, &sb)?;
        let mut fs = Ext4 {
            vol: Volume { bytes, sb, overlay: BTreeMap::new() },
            groups,
            notes: Vec::new(),
            runs_cache: Mutex::new(None),
            inode_pieces: Mutex::new(HashMap::new()),
        };
        if fs.vol.sb.has_incompat(superblock::INCOMPAT_RECOVER) {
            match journal::replay(&fs) {
                Ok((overlay, note)) => {
                    notes.push(note);
                    if !overlay.is_empty() {
                        fs.vol.overlay = overlay;
                        // Replayed blocks may rewrite the superblock and the descriptors.
                        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
                        fs.vol.read(SUPERBLOCK_OFFSET, &mut raw)?;
                        let overlay = std::mem::take(&mut fs.vol.overlay);
                        fs.vol.sb = Superblock::parse(&raw)?;
                        fs.vol.overlay = overlay;
                        fs.groups = group::read_all(&fs.vol, &fs.vol.sb)?;
                        fs.clear_caches();
                    }
                }
                Err(e) => notes.push(format!("journal needs recovery: read without replaying it ({e})")),
            }
        }
        if fs.vol.sb.state & 0x2 != 0 {
            notes.push("the filesystem is marked as having errors (e2fsck has not repaired it)".into());
        }
        fs.notes = notes;
        Ok(fs)
    }

    fn clear_caches(&self) {
        *self.runs_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.inode_pieces.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn sb(&self) -> &Superblock {
        &self.vol.sb
    }

    /// Reads and checks inode `ino`.
    fn inode(&self, ino: Ino) -> Result<Inode, FsError> {
        let sb = self.sb();
        if ino == 0 || ino > sb.inodes_count as u64 {
            return Err(FsError::NotFound(format!("ext4 inode {ino} (of {})", sb.inodes_count)));
        }
        let ipg = sb.inodes_per_group as u64;
        let isz = sb.inode_size as u64;
        let g = ((ino - 1) / ipg) as usize;
        let index = (ino - 1) % ipg;
        let gd = self.groups.get(g).ok_or_else(|| FsError::Malformed(format!("ext4 inode {ino}: group {g} past the descriptors")))?;
        if gd.flags & group::BG_INODE_UNINIT != 0 && sb.csum_seed.is_some() {
            return Err(FsError::Malformed(format!("ext4 inode {ino}: in group {g}, whose inode table is unused")));
        }
        let bs = sb.block_size as u64;
        let table_bytes = ipg * isz;
        match gd.inode_table.checked_add(table_bytes.div_ceil(bs)) {
            Some(end) if end <= sb.blocks_count && gd.inode_table > sb.first_data_block as u64 => {}
            _ => return Err(FsError::Malformed(format!("ext4 group {g}: inode table at block {} outside the filesystem", gd.inode_table))),
        }
        let table = gd.inode_table * bs;
        let within = index * isz;
        let piece_start = within / INODE_PIECE * INODE_PIECE;
        let piece_len = INODE_PIECE.min(table_bytes - piece_start);
        let key = table + piece_start;
        let cached = self.inode_pieces.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let piece = match cached {
            Some(p) => p,
            None => {
                let mut buf = vec![0u8; piece_len as usize];
                self.vol.read(key, &mut buf)?;
                let p = Arc::new(buf);
                let mut cache = self.inode_pieces.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= INODE_PIECES_CACHED {
                    cache.clear();
                }
                cache.insert(key, p.clone());
                p
            }
        };
        let at = (within - piece_start) as usize;
        let raw = piece[at..at + isz as usize].to_vec();
        let inode = Inode::parse(ino, raw, sb.csum_seed)?;
        if inode.mode == 0 && inode.links == 0 {
            return Err(FsError::NotFound(format!("ext4 inode {ino} (not in use)")));
        }
        Ok(inode)
    }

    fn refuse_encrypted(&self, inode: &Inode) -> Result<(), FsError> {
        if inode.has_flag(FL_ENCRYPT) {
            return Err(FsError::Unsupported(format!("ext4 inode {}: encrypted (fscrypt)", inode.ino)));
        }
        Ok(())
    }

    /// A fast symlink keeps its target in `i_block`.
    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        let xattr_blocks = if inode.file_acl != 0 { self.sb().block_size / 512 } else { 0 };
        inode.file_type() == FileType::Symlink
            && !inode.has_flag(inode::FL_EXTENTS | FL_INLINE_DATA)
            && inode.size < I_BLOCK_LEN as u64
            && inode.blocks_lo <= xattr_blocks
    }

    /// The block runs of a file covering `[0, size)`, holes included, cached for the last file.
    fn file_runs(&self, inode: &Inode) -> Result<Arc<Vec<FileRun>>, FsError> {
        if let Some((ino, runs)) = &*self.runs_cache.lock().unwrap_or_else(|e| e.into_inner()) {
            if *ino == inode.ino {
                return Ok(runs.clone());
            }
        }
        let bs = self.sb().block_size as u64;
        let nblocks = inode.size.div_ceil(bs);
        let blocks = blockmap::block_runs(&self.vol, inode, nblocks)?;
        let runs = Arc::new(file_runs(&blocks, inode.size, bs));
        *self.runs_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((inode.ino, runs.clone()));
        Ok(runs)
    }

    /// Reads file bytes at `offset` of an inode whose data is in blocks.
    fn read_blocks(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        if offset >= inode.size {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(inode.size - offset).unwrap_or(usize::MAX));
        let runs = self.file_runs(inode)?;
        let first = runs.partition_point(|r| r.file_offset + r.len <= offset);
        let mut done = 0usize;
        for run in &runs[first..] {
            if done == want {
                break;
            }
            let pos = offset + done as u64;
            let in_run = pos - run.file_offset;
            let n = (want - done).min(usize::try_from(run.len - in_run).unwrap_or(usize::MAX));
            let dst = &mut buf[done..done + n];
            match run.disk_offset {
                Some(d) => self.vol.read(d + in_run, dst)?,
                None => dst.fill(0),
            }
            done += n;
        }
        // Runs cover [0, size), so anything left is past them: a bug, not data.
        buf[done..want].fill(0);
        Ok(want)
    }
}

/// Block runs (in logical order) as byte runs covering `[0, size)`, holes filled in.
fn file_runs(blocks: &[BlockRun], size: u64, bs: u64) -> Vec<FileRun> {
    let mut out: Vec<FileRun> = Vec::with_capacity(blocks.len() * 2 + 1);
    let mut push = |run: FileRun| {
        if let Some(last) = out.last_mut() {
            if last.disk_offset.is_none() && run.disk_offset.is_none() {
                last.len += run.len;
                return;
            }
        }
        out.push(run);
    };
    let mut pos = 0u64;
    for b in blocks {
        let start = b.logical * bs;
        if start >= size {
            break;
        }
        if start > pos {
            push(FileRun { file_offset: pos, len: start - pos, disk_offset: None });
        }
        let len = (b.len * bs).min(size - start);
        push(FileRun { file_offset: start, len, disk_offset: b.physical.map(|p| p * bs) });
        pos = start + len;
    }
    if pos < size {
        push(FileRun { file_offset: pos, len: size - pos, disk_offset: None });
    }
    out
}

impl Filesystem for Ext4<'_> {
    fn kind(&self) -> &'static str {
        self.sb().kind()
    }

    fn label(&self) -> Option<String> {
        let name = &self.sb().volume_name;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        (end > 0).then(|| String::from_utf8_lossy(&name[..end]).into_owned())
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn root(&self) -> Ino {
        ROOT_INO
    }

    fn metadata(&self, ino: Ino) -> Result<Metadata, FsError> {
        Ok(self.inode(ino)?.metadata())
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError> {
        let inode = self.inode(ino)?;
        if inode.file_type() != FileType::Directory {
            return Err(FsError::NotADirectory(format!("ext4 inode {ino}")));
        }
        self.refuse_encrypted(&inode)?;
        if inode.size > MAX_DIR_BYTES {
            return Err(FsError::Malformed(format!("ext4 directory inode {ino}: {} bytes (at most {MAX_DIR_BYTES} are read)", inode.size)));
        }
        let sb = self.sb();
        let filetype = sb.has_incompat(INCOMPAT_FILETYPE);
        let mut entries = Vec::new();
        if inode.has_flag(FL_INLINE_DATA) {
            // i_block: the parent's inode number, then entries; system.data: more entries.
            let where_ = || format!("ext4 directory inode {ino}, inline data");
            dir::parse_region(&inode.i_block[4..], filetype, sb.inodes_count, &where_, &mut entries)?;
            let rest = inode.inline_xattr_data()?;
            dir::parse_region(rest, filetype, sb.inodes_count, &where_, &mut entries)?;
        } else {
            let bs = sb.block_size as u64;
            let runs = self.file_runs(&inode)?;
            let inode_seed = sb.csum_seed.map(|s| inode.csum_seed(s));
            for run in runs.iter() {
                let Some(disk) = run.disk_offset else { continue };
                let mut done = 0u64;
                while done < run.len {
                    let n = (run.len - done).min(DIR_READ_PIECE);
                    let mut buf = vec![0u8; n as usize];
                    self.vol.read(disk + done, &mut buf)?;
                    for (i, block) in buf.chunks(bs as usize).enumerate() {
                        let logical = (run.file_offset + done) / bs + i as u64;
                        let physical = (disk + done) / bs + i as u64;
                        if let Some(seed) = inode_seed {
                            dir::verify_block(block, seed, ino, physical)?;
                        }
                        let where_ = || format!("ext4 directory inode {ino}, block {logical}");
                        dir::parse_region(block, filetype, sb.inodes_count, &where_, &mut entries)?;
                    }
                    done += n;
                }
            }
        }
        if !filetype {
            for e in &mut entries {
                e.file_type = self.inode(e.ino).map(|i| i.file_type()).unwrap_or(FileType::Unknown);
            }
        }
        Ok(entries)
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let inode = self.inode(ino)?;
        self.refuse_encrypted(&inode)?;
        if inode.has_flag(FL_INLINE_DATA) {
            let data = inode.inline_data()?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            return Ok(n);
        }
        if self.is_fast_symlink(&inode) {
            let target = &inode.i_block[..inode.size as usize];
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(target.len());
            let n = buf.len().min(target.len() - start);
            buf[..n].copy_from_slice(&target[start..start + n]);
            return Ok(n);
        }
        match inode.file_type() {
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => Ok(0),
            _ => self.read_blocks(&inode, offset, buf),
        }
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        if inode.file_type() != FileType::Symlink {
            return Err(FsError::Malformed(format!("ext4 inode {ino}: not a symlink")));
        }
        self.refuse_encrypted(&inode)?;
        if inode.size > MAX_LINK_BYTES {
            return Err(FsError::Malformed(format!("ext4 symlink inode {ino}: target of {} bytes", inode.size)));
        }
        if inode.has_flag(FL_INLINE_DATA) {
            return inode.inline_data();
        }
        if self.is_fast_symlink(&inode) {
            return Ok(inode.i_block[..inode.size as usize].to_vec());
        }
        let mut target = vec![0u8; inode.size as usize];
        let n = self.read_blocks(&inode, 0, &mut target)?;
        target.truncate(n);
        Ok(target)
    }

    fn data_map(&self, ino: Ino) -> Result<Option<Vec<FileRun>>, FsError> {
        let inode = self.inode(ino)?;
        if inode.has_flag(FL_INLINE_DATA) || self.is_fast_symlink(&inode) {
            return Ok(None);
        }
        match inode.file_type() {
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => Ok(Some(Vec::new())),
            _ => Ok(Some(self.file_runs(&inode)?.as_ref().clone())),
        }
    }
}
