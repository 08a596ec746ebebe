//! FAT12, FAT16 and FAT32 (vfat, EFI system partitions), read-only: the
//! [`Filesystem`] over a volume holding a FAT boot sector (`bpb`), its
//! allocation table and cluster chains (`table`) and its directories
//! (`dir`: 8.3 and long names, attributes, times).
//!
//! FAT has no inodes, owners or permissions, so this module defines them:
//! - a file's id ([`Ino`]) is the byte offset of its short directory entry on
//!   the volume (a multiple of 32 inside the root directory region or the data
//!   area); the root directory, which has no entry, is [`ROOT`]. `metadata`,
//!   `read_dir` and `read` re-read the entry at that offset and refuse an id
//!   that does not point at a live short entry;
//! - uid and gid are 0; directories are 0o755, files 0o644, read-only ones
//!   0o555 / 0o444; `nlink` is 1 (files) or 2 (directories);
//! - times are the entries' local times read as UTC: mtime the write time
//!   (2 s resolution), ctime the creation time (10 ms), atime the access date;
//!   the root directory's are 0 (the epoch), as Linux shows them;
//! - a directory's size is its clusters' bytes (the FAT12/16 root: its region).
//!
//! Everything read is bounded: chains by the cluster count (and a file's by
//! its size), directories by FAT's own limit of 65536 entries.

mod bpb;
mod dir;
mod table;

use crate::guest::{DirEntry, FileRun, FileType, Filesystem, FsError, Ino, Metadata, ReadAt, Timestamp};
use bpb::{FatType, Geometry};
use dir::{LongName, ShortEntry, Slot, SLOT};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use table::{Run, Table};

/// The root directory's id (an entry offset is never 1: entries are 32-byte aligned).
pub const ROOT: Ino = 1;
/// FAT's limit on a directory: 65536 entries of 32 bytes.
const MAX_DIR_BYTES: u64 = 65536 * SLOT as u64;

/// Opens FAT12, FAT16 and FAT32 (vfat) when `bytes` hold one (a FAT boot sector); `Ok(None)` when they do not.
pub fn open<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    if bytes.size() < 512 {
        return Ok(None);
    }
    let mut sector = [0u8; 512];
    bytes.read_at(0, &mut sector)?;
    let Some(geo) = bpb::parse(&sector, bytes.size())? else { return Ok(None) };
    let mut fs = Fat { bytes, geo, label: None, fat_pages: RefCell::default(), last_file: RefCell::default() };
    // The label lives in the root directory (what blkid and Windows show); the
    // boot sector's copy is the fallback, unless it is mkfs's placeholder.
    let root_label = fs.scan_dir(&Node::Root)?.label;
    fs.label = root_label.or(fs.geo.boot_label).filter(|l| l != b"NO NAME    ").and_then(|l| dir::label_text(&l));
    Ok(Some(Box::new(fs)))
}

/// A FAT volume.
pub struct Fat<'a> {
    bytes: Arc<dyn ReadAt + 'a>,
    geo: Geometry,
    label: Option<String>,
    /// FAT pages read so far (see `table`).
    fat_pages: RefCell<HashMap<u64, Vec<u8>>>,
    /// The data runs of the file read last: `read` is called once per buffer,
    /// and walking the chain again for each would be quadratic.
    last_file: RefCell<Option<(Ino, Rc<Vec<FileRun>>)>>,
}

/// What an id names.
enum Node {
    Root,
    Entry { offset: u64, entry: ShortEntry },
}

/// A directory read through: its entries and, in the root, its volume label.
struct Scan {
    entries: Vec<DirEntry>,
    label: Option<[u8; 11]>,
}

impl Fat<'_> {
    fn table(&self) -> Table<'_> {
        Table::new(&*self.bytes, &self.geo, &self.fat_pages)
    }

    /// The node `ino` names, after checking that it points at a live short entry.
    fn node(&self, ino: Ino) -> Result<Node, FsError> {
        if ino == ROOT {
            return Ok(Node::Root);
        }
        let g = &self.geo;
        let in_root = ino >= g.root_offset && ino < g.root_offset + g.root_len;
        let in_data = ino >= g.data_offset && ino < g.data_end();
        let not_found = || FsError::NotFound(format!("vfat file id {ino}"));
        if ino % SLOT as u64 != 0 || !(in_root || in_data) {
            return Err(not_found());
        }
        let mut raw = [0u8; SLOT];
        self.bytes.read_at(ino, &mut raw)?;
        match dir::parse_slot(&raw, g.fat_type == FatType::Fat32) {
            Slot::Short(entry) => Ok(Node::Entry { offset: ino, entry }),
            _ => Err(not_found()),
        }
    }

    /// Where a directory's bytes are.
    fn dir_runs(&self, node: &Node) -> Result<Vec<Run>, FsError> {
        let g = &self.geo;
        let (what, first) = match node {
            Node::Root if g.fat_type != FatType::Fat32 => {
                return Ok(vec![Run { disk_offset: g.root_offset, len: g.root_len }]);
            }
            Node::Root => ("vfat root directory".to_string(), g.root_cluster),
            Node::Entry { offset, entry } => (format!("vfat directory at {offset}"), entry.first_cluster),
        };
        let max_clusters = MAX_DIR_BYTES.div_ceil(u64::from(g.cluster_size));
        let runs = self.table().chain(&what, first, max_clusters + 1)?;
        let len: u64 = runs.iter().map(|r| r.len).sum();
        if len > max_clusters * u64::from(g.cluster_size) {
            return Err(FsError::Malformed(format!("{what}: longer than FAT's 65536 entries")));
        }
        Ok(runs)
    }

    /// Reads a directory's slots: its entries (names from the long name when
    /// it checks out), and the volume label entry if there is one.
    fn scan_dir(&self, node: &Node) -> Result<Scan, FsError> {
        let fat32 = self.geo.fat_type == FatType::Fat32;
        let (own_cluster, where_) = match node {
            Node::Root => (self.geo.root_cluster, "vfat root directory".to_string()),
            Node::Entry { offset, entry } => (entry.first_cluster, format!("vfat directory at {offset}")),
        };
        let mut scan = Scan { entries: Vec::new(), label: None };
        let mut long = LongName::default();
        for run in self.dir_runs(node)? {
            // Bounded by MAX_DIR_BYTES (dir_runs).
            let mut bytes = vec![0u8; run.len as usize];
            self.bytes.read_at(run.disk_offset, &mut bytes)?;
            for (i, raw) in bytes.chunks_exact(SLOT).enumerate() {
                let offset = run.disk_offset + (i * SLOT) as u64;
                let mut slot = [0u8; SLOT];
                slot.copy_from_slice(raw);
                match dir::parse_slot(&slot, fat32) {
                    Slot::End => return Ok(scan),
                    Slot::LongName(part) => long.push(&part),
                    Slot::VolumeLabel(l) => {
                        long.reset();
                        if matches!(node, Node::Root) && scan.label.is_none() {
                            scan.label = Some(l);
                        }
                    }
                    Slot::Deleted | Slot::Dot => long.reset(),
                    Slot::Short(e) => {
                        let name = match long.take(&e.name) {
                            Some(n) => n,
                            None => dir::short_name(&e, &format!("{where_}: entry at {offset}"))?,
                        };
                        // A subdirectory that is its own directory (or the root) would make every walk endless.
                        if e.is_dir() && (e.first_cluster == own_cluster || (fat32 && e.first_cluster == self.geo.root_cluster)) {
                            return Err(FsError::Malformed(format!(
                                "{where_}: subdirectory {:?} at {offset} is the directory itself or the root (cluster {})",
                                String::from_utf8_lossy(&name),
                                e.first_cluster
                            )));
                        }
                        let file_type = if e.is_dir() { FileType::Directory } else { FileType::Regular };
                        scan.entries.push(DirEntry { name, ino: offset, file_type });
                    }
                }
            }
        }
        Ok(scan)
    }

    /// A regular file's data runs, in file order, covering exactly its size.
    fn file_runs(&self, ino: Ino, e: &ShortEntry) -> Result<Rc<Vec<FileRun>>, FsError> {
        if let Some((cached, runs)) = &*self.last_file.borrow() {
            if *cached == ino {
                return Ok(runs.clone());
            }
        }
        let size = u64::from(e.size);
        let mut out = Vec::new();
        if size > 0 {
            let what = format!("vfat file at {ino}");
            let cs = u64::from(self.geo.cluster_size);
            let needed = size.div_ceil(cs);
            if e.first_cluster == 0 {
                return Err(FsError::Malformed(format!("{what}: {size} bytes but no first cluster")));
            }
            let runs = self.table().chain(&what, e.first_cluster, needed)?;
            let mut file_offset = 0u64;
            for r in runs {
                let len = r.len.min(size - file_offset);
                out.push(FileRun { file_offset, len, disk_offset: Some(r.disk_offset) });
                file_offset += len;
            }
            if file_offset < size {
                return Err(FsError::Malformed(format!(
                    "{what}: {size} bytes need {needed} clusters, the chain from {} ends after {}",
                    e.first_cluster,
                    file_offset / cs
                )));
            }
        }
        let runs = Rc::new(out);
        *self.last_file.borrow_mut() = Some((ino, runs.clone()));
        Ok(runs)
    }

    fn dir_node(&self, ino: Ino) -> Result<Node, FsError> {
        let node = self.node(ino)?;
        match &node {
            Node::Entry { entry, .. } if !entry.is_dir() => Err(FsError::NotADirectory(format!("vfat file id {ino}"))),
            _ => Ok(node),
        }
    }

    fn file_entry(&self, ino: Ino) -> Result<ShortEntry, FsError> {
        match self.node(ino)? {
            Node::Entry { entry, .. } if !entry.is_dir() => Ok(entry),
            _ => Err(FsError::Unsupported(format!("vfat file id {ino} is a directory, not a file"))),
        }
    }
}

impl Filesystem for Fat<'_> {
    fn kind(&self) -> &'static str {
        "vfat"
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.geo.dirty {
            notes.push(format!("{} volume was not cleanly unmounted (dirty bit set): read as it is", self.geo.fat_type.name()));
        }
        notes
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn metadata(&self, ino: Ino) -> Result<Metadata, FsError> {
        let node = self.node(ino)?;
        let Node::Entry { entry: e, .. } = &node else {
            let size = self.dir_runs(&node)?.iter().map(|r| r.len).sum();
            let epoch = Timestamp::default();
            return Ok(Metadata {
                ino,
                file_type: FileType::Directory,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size,
                nlink: 2,
                atime: epoch,
                mtime: epoch,
                ctime: epoch,
                rdev: None,
            });
        };
        let read_only = e.attr & dir::ATTR_READ_ONLY != 0;
        let (file_type, mode, size, nlink) = if e.is_dir() {
            let size = self.dir_runs(&node)?.iter().map(|r| r.len).sum();
            (FileType::Directory, if read_only { 0o555 } else { 0o755 }, size, 2)
        } else {
            (FileType::Regular, if read_only { 0o444 } else { 0o644 }, u64::from(e.size), 1)
        };
        Ok(Metadata {
            ino,
            file_type,
            mode,
            uid: 0,
            gid: 0,
            size,
            nlink,
            atime: dir::fat_time(e.adate, 0, 0),
            mtime: dir::fat_time(e.mdate, e.mtime, 0),
            ctime: dir::fat_time(e.cdate, e.ctime, e.ctime_cs),
            rdev: None,
        })
    }

    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError> {
        let node = self.dir_node(ino)?;
        Ok(self.scan_dir(&node)?.entries)
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let e = self.file_entry(ino)?;
        let size = u64::from(e.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(size - offset);
        let end = offset + want;
        let runs = self.file_runs(ino, &e)?;
        // The first run that ends after `offset`; runs are in file order.
        let first = runs.partition_point(|r| r.file_offset + r.len <= offset);
        let mut pos = offset;
        for r in runs.iter().skip(first) {
            if pos >= end {
                break;
            }
            let Some(disk) = r.disk_offset else { continue };
            let within = pos - r.file_offset;
            let n = (r.len - within).min(end - pos);
            let at = (pos - offset) as usize;
            self.bytes.read_at(disk + within, &mut buf[at..at + n as usize])?;
            pos += n;
        }
        Ok((pos - offset) as usize)
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        self.node(ino)?;
        Err(FsError::Unsupported(format!("vfat file id {ino}: FAT has no symbolic links")))
    }

    fn data_map(&self, ino: Ino) -> Result<Option<Vec<FileRun>>, FsError> {
        let node = self.node(ino)?;
        match &node {
            Node::Entry { entry, .. } if !entry.is_dir() => Ok(Some(self.file_runs(ino, entry)?.to_vec())),
            _ => {
                let mut file_offset = 0;
                let runs = self.dir_runs(&node)?;
                Ok(Some(
                    runs.into_iter()
                        .map(|r| {
                            let run = FileRun { file_offset, len: r.len, disk_offset: Some(r.disk_offset) };
                            file_offset += r.len;
                            run
                        })
                        .collect(),
                ))
            }
        }
    }
}
