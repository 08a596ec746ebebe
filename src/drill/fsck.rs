//! The read-only filesystem checks of a drill: the partition table (and LVM) of the
//! guest disk, then each volume's filesystem — its superblock (opening it), the whole
//! directory tree (every inode's metadata, every directory, every symlink), and the
//! data map of every regular file checked against the volume's bounds; with `deep`,
//! every file's bytes read through. Everything goes through the guest readers of
//! `crate::guest` (the parsers of `ls`/`cat`), so a drill proves what those verbs read.

use crate::files::{sniff, walk_tree};
use crate::guest::{self, FileType, Filesystem, FsError, GuestDisk, ReadAt};
use crate::repository::drill::{CheckStatus, DrillCheck};
use anyhow::{anyhow, bail, Result};
use std::sync::Arc;
use std::time::Instant;

/// The checks of one guest disk: `partitions`, then `filesystem NAME` per volume.
pub fn check_disk(disk: Arc<GuestDisk<'_>>, deep: bool) -> Vec<DrillCheck> {
    let started = Instant::now();
    let bytes: Arc<dyn ReadAt + '_> = disk;
    let layout = match guest::volume::layout(bytes) {
        Ok(l) => l,
        Err(e) => {
            return vec![check("partitions", CheckStatus::Failed, format!("reading the partition table: {e}"), started)];
        }
    };
    let mut detail = match layout.table {
        "none" => "no partition table: the disk is one volume".to_string(),
        table => format!("{table}, {} volume{}", layout.volumes.len(), if layout.volumes.len() == 1 { "" } else { "s" }),
    };
    for n in &layout.notes {
        detail.push_str(&format!("; {n}"));
    }
    let mut checks = vec![check("partitions", CheckStatus::Passed, detail, started)];
    for v in &layout.volumes {
        let started = Instant::now();
        let name = if v.name.is_empty() { "filesystem".to_string() } else { format!("filesystem {}", v.name) };
        let (status, detail) = match guest::open_filesystem(v.bytes.clone()) {
            Ok(None) => (CheckStatus::Unchecked, format!("no filesystem imgarc reads (found: {})", sniff(v.bytes.as_ref()))),
            Err(FsError::Unsupported(what)) => (CheckStatus::Unchecked, format!("unsupported: {what}")),
            Err(e) => (CheckStatus::Failed, format!("{e}")),
            Ok(Some(fs)) => match check_tree(fs.as_ref(), v.bytes.size(), deep) {
                Ok(counts) => (CheckStatus::Passed, counts.describe(fs.as_ref())),
                Err(e) => (CheckStatus::Failed, format!("{} {e:#}", fs.kind())),
            },
        };
        checks.push(check(&name, status, detail, started));
    }
    checks
}

fn check(name: &str, status: CheckStatus, detail: String, started: Instant) -> DrillCheck {
    DrillCheck { check: name.to_string(), status, detail: Some(detail), seconds: started.elapsed().as_secs_f64() }
}

/// What a tree walk counted.
#[derive(Debug, Default)]
struct Counts {
    directories: u64,
    files: u64,
    symlinks: u64,
    other: u64,
    /// Bytes of regular files (their sizes).
    file_bytes: u64,
    /// Bytes read through with `deep`.
    bytes_read: u64,
    deep: bool,
}

impl Counts {
    fn describe(&self, fs: &dyn Filesystem) -> String {
        let mut s = format!(
            "{}{}: {} directories, {} files ({}), {} symlinks, {} other",
            fs.kind(),
            fs.label().map(|l| format!(" {l:?}")).unwrap_or_default(),
            self.directories,
            self.files,
            crate::util::human_bytes(self.file_bytes),
            self.symlinks,
            self.other
        );
        if self.deep {
            s.push_str(&format!("; every file read ({})", crate::util::human_bytes(self.bytes_read)));
        }
        for n in fs.notes() {
            s.push_str(&format!("; {n}"));
        }
        s
    }
}

/// Walks the whole tree: every entry's metadata is read by the walk; here each regular
/// file's data map must tile `[0, size)` in order inside the volume, each symlink's
/// target must read and match its size; with `deep`, every file is read to its end.
fn check_tree(fs: &dyn Filesystem, volume_size: u64, deep: bool) -> Result<Counts> {
    let mut counts = Counts { deep, ..Default::default() };
    walk_tree(fs, fs.root(), &mut |w| {
        let path = if w.rel.is_empty() { "/".to_string() } else { format!("/{}", w.rel) };
        let inode = |e: FsError| anyhow!("{path} (inode {}): {e}", w.ino);
        match w.meta.file_type {
            FileType::Directory => counts.directories += 1,
            FileType::Symlink => {
                counts.symlinks += 1;
                let target = fs.read_link(w.ino).map_err(inode)?;
                if target.len() as u64 != w.meta.size {
                    bail!("{path}: symlink target is {} bytes, its inode says {}", target.len(), w.meta.size);
                }
            }
            FileType::Regular => {
                counts.files += 1;
                counts.file_bytes = counts.file_bytes.saturating_add(w.meta.size);
                if let Some(runs) = fs.data_map(w.ino).map_err(inode)? {
                    check_runs(&runs, w.meta.size, volume_size).map_err(|e| anyhow!("{path} (inode {}): {e}", w.ino))?;
                }
                if deep {
                    crate::files::read_file(fs, w.ino, w.meta.size, &mut |b| {
                        counts.bytes_read += b.len() as u64;
                        Ok(())
                    })
                    .map_err(|e| anyhow!("{path}: {e:#}"))?;
                }
            }
            _ => counts.other += 1,
        }
        Ok(true)
    })?;
    Ok(counts)
}

/// A file's runs must follow each other from 0 to its size without gaps or overlaps,
/// and every allocated run must lie inside the volume.
fn check_runs(runs: &[guest::FileRun], size: u64, volume_size: u64) -> Result<()> {
    let mut next = 0u64;
    for r in runs {
        if r.file_offset != next {
            bail!("its extents do not follow each other (one starts at {}, the previous ended at {next})", r.file_offset);
        }
        if let Some(at) = r.disk_offset {
            if at.checked_add(r.len).is_none_or(|end| end > volume_size) {
                bail!("an extent at byte {at} of {} bytes lies past the volume's end ({volume_size} bytes)", r.len);
            }
        }
        next = next.checked_add(r.len).ok_or_else(|| anyhow!("its extents overflow"))?;
    }
    if next < size {
        bail!("its extents cover {next} bytes, its size is {size}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest::FileRun;

    fn run(file_offset: u64, len: u64, disk_offset: Option<u64>) -> FileRun {
        FileRun { file_offset, len, disk_offset }
    }

    #[test]
    fn runs_must_tile_the_file_inside_the_volume() {
        assert!(check_runs(&[run(0, 4096, Some(8192)), run(4096, 4096, None)], 8000, 1 << 20).is_ok());
        assert!(check_runs(&[], 0, 1 << 20).is_ok());
        let gap = check_runs(&[run(0, 4096, Some(0)), run(8192, 4096, Some(4096))], 12288, 1 << 20).unwrap_err();
        assert!(format!("{gap}").contains("do not follow"), "{gap}");
        let past = check_runs(&[run(0, 4096, Some((1 << 20) - 100))], 4096, 1 << 20).unwrap_err();
        assert!(format!("{past}").contains("past the volume's end"), "{past}");
        let short = check_runs(&[run(0, 4096, Some(0))], 5000, 1 << 20).unwrap_err();
        assert!(format!("{short}").contains("cover 4096 bytes"), "{short}");
        assert!(check_runs(&[run(0, u64::MAX, Some(1))], 1, 1 << 20).is_err());
    }
}
