//! `ls`: the volumes of a guest disk (at the top of a partitioned one), a
//! directory's entries, or one file; `--recursive` walks the tree below.

use super::{mode_string, time_string, walk_tree, GuestTree, Located, Target, VolumeInfo};
use crate::guest::{FileType, Filesystem, Ino, Metadata};
use anyhow::Result;

#[derive(Debug, Clone, Default)]
pub struct LsOptions {
    /// Empty or `/` for the top (the volumes, or the root of a bare filesystem).
    pub path: String,
    pub recursive: bool,
}

/// One file as `ls -l` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LsEntry {
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// `drwxr-xr-x`.
    pub mode_string: String,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// RFC 3339 UTC.
    pub mtime: String,
    pub mtime_secs: i64,
    pub ino: Ino,
    pub link_target: Option<String>,
    /// Major and minor of a device node.
    pub rdev: Option<(u32, u32)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LsReport {
    pub path: String,
    /// At the top of a partitioned disk: the volumes (then `entries` is empty).
    pub volumes: Vec<VolumeInfo>,
    pub entries: Vec<LsEntry>,
    /// Filesystem notes (a dirty journal …).
    pub warnings: Vec<String>,
    pub bytes_read: u64,
}

/// Lists `opts.path` in `tree`.
pub fn ls(tree: &GuestTree, opts: &LsOptions) -> Result<LsReport> {
    let mut report = LsReport { path: opts.path.clone(), volumes: Vec::new(), entries: Vec::new(), warnings: Vec::new(), bytes_read: 0 };
    match tree.resolve(&opts.path, false)? {
        Target::Volumes => {
            report.volumes = tree.volume_infos();
            if opts.recursive {
                for i in 0..tree.volume_count() {
                    if let Ok(fs) = tree.fs(i) {
                        let start = Located { volume: i, ino: fs.root(), meta: fs.metadata(fs.root())?, path: tree.display_path(i, "") };
                        list_below(fs, &start, true, &mut report.entries)?;
                    }
                }
            }
        }
        Target::File(found) => {
            let fs = tree.fs(found.volume)?;
            if found.meta.file_type == FileType::Directory {
                list_below(fs, &found, opts.recursive, &mut report.entries)?;
            } else {
                report.entries.push(entry(fs, found.path.clone(), &found.meta)?);
            }
        }
    }
    report.warnings = tree.notes();
    report.bytes_read = tree.bytes_read();
    Ok(report)
}

/// The entries below the directory `dir` (sorted by name), all levels when `recursive`.
fn list_below(fs: &dyn Filesystem, dir: &Located, recursive: bool, out: &mut Vec<LsEntry>) -> Result<()> {
    let base = dir.path.trim_end_matches('/').to_string();
    walk_tree(fs, dir.ino, &mut |w| {
        if w.names.is_empty() {
            return Ok(true);
        }
        out.push(entry(fs, format!("{base}/{}", w.rel), &w.meta)?);
        Ok(recursive)
    })
}

/// The listing of one file.
pub fn entry(fs: &dyn Filesystem, path: String, m: &Metadata) -> Result<LsEntry> {
    let link_target =
        if m.file_type == FileType::Symlink { Some(String::from_utf8_lossy(&fs.read_link(m.ino)?).into_owned()) } else { None };
    Ok(LsEntry {
        path,
        file_type: m.file_type,
        mode: m.mode,
        mode_string: mode_string(m.file_type, m.mode),
        nlink: m.nlink,
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        mtime: time_string(m.mtime),
        mtime_secs: m.mtime.secs,
        ino: m.ino,
        link_target,
        rdev: m.rdev,
    })
}
