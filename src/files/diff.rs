//! `diff`: the paths added, removed and changed between two snapshots' guest trees.
//!
//! What counts: a path is changed (`M`) when its type, mode (`& 0o7777`),
//! uid, gid, size, mtime (seconds and nanoseconds), symlink target or device
//! number differ, or when a regular file's bytes differ. A directory is
//! compared by its own metadata only (what is in it shows as its own lines).
//! atime and ctime never count (reading a file changes its atime; ctime
//! follows every metadata change already counted).
//!
//! Cheap, because chunks are content-addressed: a regular file whose
//! metadata is equal is unchanged without reading it when its data runs map
//! (through the guest stream's extents) onto the same chunk ids at the same
//! places in both snapshots ([`chunk_fingerprint`]); only otherwise are both
//! files read and hashed.

use super::{read_file, walk_tree, GuestTree, Target};
use crate::guest::{FileType, Filesystem, Ino, Metadata};
use crate::repository::extents::Extent;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Only below this path (empty: everything, every volume).
    pub path: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiffReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Regular files found unchanged by chunk ids alone, without reading them.
    pub unchanged_by_chunks: u64,
    /// Regular files whose bytes were read and hashed in both snapshots.
    pub hashed: u64,
    pub warnings: Vec<String>,
    /// Stored bytes fetched, both snapshots together.
    pub bytes_read: u64,
}

impl DiffReport {
    /// `+ path`, `- path`, `M path`, sorted by path.
    pub fn lines(&self) -> Vec<String> {
        let mut all: Vec<(&str, char)> = self
            .added
            .iter()
            .map(|p| (p.as_str(), '+'))
            .chain(self.removed.iter().map(|p| (p.as_str(), '-')))
            .chain(self.changed.iter().map(|p| (p.as_str(), 'M')))
            .collect();
        all.sort();
        all.into_iter().map(|(p, c)| format!("{c} {p}")).collect()
    }
}

/// One file of a tree as diff compares it.
struct Seen {
    volume: usize,
    ino: Ino,
    meta: Metadata,
    link: Option<Vec<u8>>,
}

/// Compares `a` (older) with `b` (newer).
pub fn diff(a: &GuestTree, b: &GuestTree, opts: &DiffOptions) -> Result<DiffReport> {
    let left = collect(a, &opts.path)?;
    let right = collect(b, &opts.path)?;
    let mut report = DiffReport::default();
    for (path, l) in &left {
        match right.get(path) {
            None => report.removed.push(path.clone()),
            Some(r) => {
                // Contents are looked at only when the metadata is equal.
                let changed = !same_metadata(l, r) || (l.meta.file_type == FileType::Regular && !same_contents(a, l, b, r, &mut report)?);
                if changed {
                    report.changed.push(path.clone());
                }
            }
        }
    }
    report.added = right.keys().filter(|p| !left.contains_key(*p)).cloned().collect();
    for w in a.notes().into_iter().chain(b.notes()) {
        if !report.warnings.contains(&w) {
            report.warnings.push(w);
        }
    }
    report.bytes_read = a.bytes_read() + b.bytes_read();
    Ok(report)
}

fn same_metadata(l: &Seen, r: &Seen) -> bool {
    let (x, y) = (&l.meta, &r.meta);
    x.file_type == y.file_type
        && x.mode & 0o7777 == y.mode & 0o7777
        && x.uid == y.uid
        && x.gid == y.gid
        && (x.file_type == FileType::Directory || x.size == y.size)
        && (x.file_type == FileType::Directory || x.mtime == y.mtime)
        && x.rdev == y.rdev
        && l.link == r.link
}

/// Equal bytes: by chunk ids when both map onto the same chunks, else by hashing both.
fn same_contents(a: &GuestTree, l: &Seen, b: &GuestTree, r: &Seen, report: &mut DiffReport) -> Result<bool> {
    let fa = chunk_fingerprint(a, l.volume, l.ino)?;
    if fa.is_some() && fa == chunk_fingerprint(b, r.volume, r.ino)? {
        report.unchanged_by_chunks += 1;
        return Ok(true);
    }
    report.hashed += 1;
    Ok(content_hash(a.fs(l.volume)?, l.ino, l.meta.size)? == content_hash(b.fs(r.volume)?, r.ino, r.meta.size)?)
}

/// Every file below `path` in `tree`, by display path.
fn collect(tree: &GuestTree, path: &str) -> Result<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    let starts: Vec<(usize, Ino, String)> = match tree.resolve(path, false)? {
        Target::Volumes => {
            let mut v = Vec::new();
            for i in 0..tree.volume_count() {
                // A volume without a readable filesystem (swap, empty) has no files to compare.
                if let Ok(fs) = tree.fs(i) {
                    v.push((i, fs.root(), tree.display_path(i, "")));
                }
            }
            v
        }
        Target::File(f) => vec![(f.volume, f.ino, f.path)],
    };
    for (vol, ino, base) in starts {
        let fs = tree.fs(vol)?;
        walk_tree(fs, ino, &mut |w| {
            let path = if w.rel.is_empty() { base.clone() } else { format!("{}/{}", base.trim_end_matches('/'), w.rel) };
            let link = if w.meta.file_type == FileType::Symlink { Some(fs.read_link(w.ino)?) } else { None };
            out.insert(path, Seen { volume: vol, ino: w.ino, meta: w.meta.clone(), link });
            Ok(true)
        })?;
    }
    Ok(out)
}

/// BLAKE3 of a file's bytes.
pub fn content_hash(fs: &dyn Filesystem, ino: Ino, size: u64) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    read_file(fs, ino, size, &mut |b| {
        h.update(b);
        Ok(())
    })?;
    Ok(*h.finalize().as_bytes())
}

/// Where a file's bytes live in the archive, as a hash: for each data run, the
/// chunk ids of the guest stream it falls in and the offsets inside them (holes
/// and unallocated guest ranges as zeros). Two files with the same fingerprint
/// hold the same bytes. `None` when it cannot be said without reading: data
/// inside metadata (inline), or a volume not laid out in one piece on the disk
/// (an LVM logical volume).
pub fn chunk_fingerprint(tree: &GuestTree, vol: usize, ino: Ino) -> Result<Option<[u8; 32]>> {
    let volume = tree.volume(vol);
    if volume.name.contains('/') {
        return Ok(None);
    }
    let fs = tree.fs(vol)?;
    let Some(runs) = fs.data_map(ino)? else { return Ok(None) };
    let extents = tree.disk().extents();
    let mut h = blake3::Hasher::new();
    for run in runs {
        h.update(&run.file_offset.to_le_bytes());
        h.update(&run.len.to_le_bytes());
        let Some(d) = run.disk_offset else {
            h.update(b"hole");
            continue;
        };
        let Some(start) = volume.disk_offset.checked_add(d) else { bail!("inode {ino}: a data run past the end of the disk") };
        let Some(end) = start.checked_add(run.len) else { bail!("inode {ino}: a data run past the end of the disk") };
        pieces(&extents, start, end, &mut |piece| match piece {
            Piece::Chunk { id, at, len } => {
                h.update(b"chunk");
                h.update(&id.0);
                h.update(&at.to_le_bytes());
                h.update(&len.to_le_bytes());
            }
            Piece::Zeros(len) => {
                h.update(b"zeros");
                h.update(&len.to_le_bytes());
            }
        });
    }
    Ok(Some(*h.finalize().as_bytes()))
}

enum Piece {
    Chunk { id: crate::ids::Id, at: u64, len: u64 },
    Zeros(u64),
}

/// The guest range `[start, end)` cut into chunk pieces and unallocated gaps (`extents` sorted by offset).
fn pieces(extents: &[Extent], start: u64, end: u64, f: &mut dyn FnMut(Piece)) {
    let mut pos = start;
    let mut i = extents.partition_point(|e| e.end() <= pos);
    while pos < end {
        match extents.get(i) {
            Some(e) if e.offset <= pos => {
                let stop = e.end().min(end);
                f(Piece::Chunk { id: e.id, at: pos - e.offset, len: stop - pos });
                pos = stop;
                i += 1;
            }
            Some(e) => {
                let stop = e.offset.min(end);
                f(Piece::Zeros(stop - pos));
                pos = stop;
            }
            None => {
                f(Piece::Zeros(end - pos));
                pos = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    #[test]
    fn pieces_cut_a_range_into_chunks_and_gaps() {
        let e = |offset, len, b| Extent { offset, len, id: Id([b; 32]) };
        let extents = vec![e(0, 100, 1), e(100, 100, 2), e(300, 50, 3)];
        let mut got = Vec::new();
        pieces(&extents, 50, 320, &mut |p| {
            got.push(match p {
                Piece::Chunk { id, at, len } => (id.0[0], at, len),
                Piece::Zeros(len) => (0, 0, len),
            })
        });
        assert_eq!(got, vec![(1, 50, 50), (2, 0, 100), (0, 0, 100), (3, 0, 20)]);
    }
}
