//! `extract`: files and trees out of a snapshot into a local directory, with
//! modes, owners (when root), times, symlinks, hard links, sparse files
//! (holes are skipped, never written), FIFOs, and device nodes (when root).
//!
//! Nothing is written outside the output directory: every name comes from a
//! hostile disk, so each is checked to be one component (no `/`, not `.` or
//! `..`, no NUL), and every file is created relative to its parent's open
//! directory handle (`openat`-style) with `O_NOFOLLOW`/`O_EXCL`: a symlink in
//! the output, whether it was there or extract made it, is never followed.
//! An existing non-directory is refused unless `overwrite` (then it is
//! replaced); an existing directory is merged into.

// The *at(2) system calls (std has no openat, mkdirat, symlinkat, mknodat, fchownat, utimensat).
#![allow(unsafe_code)]

use super::{read_file, GuestTree, Target, MAX_WALK_DEPTH};
use crate::guest::{FileType, Filesystem, Ino, Metadata, Timestamp};
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Guest paths; each lands in `output` under its last component's name
    /// (the root of a filesystem: its contents go straight into `output`).
    pub paths: Vec<String>,
    pub output: PathBuf,
    /// Replace existing files (never directories) instead of refusing.
    pub overwrite: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExtractReport {
    pub output: String,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub fifos: u64,
    pub devices: u64,
    /// Sockets, and device nodes when not root.
    pub skipped: u64,
    /// File bytes written (holes excluded).
    pub bytes_written: u64,
    /// Owners set (only when running as root).
    pub owners_set: bool,
    pub warnings: Vec<String>,
    pub bytes_read: u64,
}

/// Extracts `opts.paths` of `tree` into `opts.output` (created if missing).
pub fn extract(tree: &GuestTree, opts: &ExtractOptions) -> Result<ExtractReport> {
    std::fs::create_dir_all(&opts.output).with_context(|| format!("cannot create {}", opts.output.display()))?;
    let root = open_dir_path(&opts.output)?;
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut x = Extractor {
        root,
        overwrite: opts.overwrite,
        is_root,
        links: HashMap::new(),
        report: ExtractReport { output: opts.output.display().to_string(), owners_set: is_root, ..Default::default() },
    };
    if !is_root {
        x.report.warnings.push("not running as root: owners (uid/gid) not set, device nodes skipped".into());
    }
    for path in &opts.paths {
        let found = match tree.resolve(path, false)? {
            Target::Volumes => bail!("{path}: the top of a partitioned disk is its volumes: extract a volume (p1, p2 …) or paths in one"),
            Target::File(f) => f,
        };
        let fs = tree.fs(found.volume)?;
        let root_fd = x.root.try_clone().context("duplicating a directory handle")?;
        let mut ancestors = HashSet::new();
        if found.ino == fs.root() || found.path.rsplit('/').next().is_none_or(str::is_empty) {
            // A filesystem's root: its contents go straight into the output directory.
            x.fill_dir(fs, found.volume, &root_fd, found.ino, &mut Vec::new(), &mut ancestors)
                .with_context(|| format!("extracting {}", found.path))?;
        } else {
            let name = found.path.rsplit('/').next().unwrap_or_default().as_bytes().to_vec();
            x.extract_one(fs, found.volume, &root_fd, &name, found.ino, &found.meta, &mut Vec::new(), &mut ancestors)
                .with_context(|| format!("extracting {}", found.path))?;
        }
    }
    let mut report = x.report;
    report.warnings.extend(tree.notes());
    report.bytes_read = tree.bytes_read();
    Ok(report)
}

struct Extractor {
    root: OwnedFd,
    overwrite: bool,
    is_root: bool,
    /// First place each multiply-linked inode was written (components below the output).
    links: HashMap<(usize, Ino), Vec<CString>>,
    report: ExtractReport,
}

impl Extractor {
    /// Writes `ino` as `name` in `parent`, recursing into a directory.
    #[allow(clippy::too_many_arguments)]
    fn extract_one(
        &mut self,
        fs: &dyn Filesystem,
        vol: usize,
        parent: &OwnedFd,
        name: &[u8],
        ino: Ino,
        meta: &Metadata,
        here: &mut Vec<CString>,
        ancestors: &mut HashSet<Ino>,
    ) -> Result<()> {
        let cname = component(name)?;
        let shown_path = display(here, &cname);
        let shown = || shown_path.clone();
        if meta.file_type != FileType::Directory && meta.nlink > 1 {
            if let Some(first) = self.links.get(&(vol, ino)) {
                let first = first.clone();
                self.hard_link(&first, parent, &cname).with_context(shown)?;
                self.report.hard_links += 1;
                return Ok(());
            }
        }
        match meta.file_type {
            FileType::Directory => {
                let dir = self.make_dir(parent, &cname).with_context(shown)?;
                here.push(cname.clone());
                self.fill_dir(fs, vol, &dir, ino, here, ancestors)?;
                here.pop();
                self.finish(&dir, None, meta).with_context(shown)?;
                self.report.directories += 1;
                return Ok(());
            }
            FileType::Regular => {
                let file = self.create_file(parent, &cname).with_context(shown)?;
                self.write_contents(fs, ino, meta, &file).with_context(shown)?;
                self.finish(&file, None, meta).with_context(shown)?;
                self.report.files += 1;
            }
            FileType::Symlink => {
                let target =
                    CString::new(fs.read_link(ino)?).map_err(|_| anyhow::anyhow!("{}: symlink target holds a NUL byte", shown()))?;
                self.replace_existing(parent, &cname).with_context(shown)?;
                let rc = unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), cname.as_ptr()) };
                check(rc).with_context(shown)?;
                self.finish(parent, Some(&cname), meta).with_context(shown)?;
                self.report.symlinks += 1;
            }
            FileType::Fifo | FileType::CharDevice | FileType::BlockDevice => {
                let (kind, dev) = match meta.file_type {
                    FileType::Fifo => (libc::S_IFIFO, 0),
                    FileType::CharDevice => (libc::S_IFCHR, rdev(meta)),
                    _ => (libc::S_IFBLK, rdev(meta)),
                };
                if kind != libc::S_IFIFO && !self.is_root {
                    self.report.skipped += 1;
                    self.report.warnings.push(format!("{}: device node skipped (not root)", shown()));
                    return Ok(());
                }
                self.replace_existing(parent, &cname).with_context(shown)?;
                let rc = unsafe { libc::mknodat(parent.as_raw_fd(), cname.as_ptr(), kind | 0o600, dev) };
                check(rc).with_context(shown)?;
                self.finish(parent, Some(&cname), meta).with_context(shown)?;
                if kind == libc::S_IFIFO {
                    self.report.fifos += 1;
                } else {
                    self.report.devices += 1;
                }
            }
            FileType::Socket | FileType::Unknown => {
                self.report.skipped += 1;
                self.report.warnings.push(format!("{}: {:?} skipped", shown(), meta.file_type));
                return Ok(());
            }
        }
        if meta.nlink > 1 {
            let mut path = here.clone();
            path.push(cname);
            self.links.insert((vol, ino), path);
        }
        Ok(())
    }

    /// Writes the entries of directory `ino` into the open directory `dir`.
    fn fill_dir(
        &mut self,
        fs: &dyn Filesystem,
        vol: usize,
        dir: &OwnedFd,
        ino: Ino,
        here: &mut Vec<CString>,
        ancestors: &mut HashSet<Ino>,
    ) -> Result<()> {
        if here.len() >= MAX_WALK_DEPTH {
            bail!("{}: directories nested deeper than {MAX_WALK_DEPTH}", display(here, c""));
        }
        if !ancestors.insert(ino) {
            bail!("{}: directory inode {ino} contains itself (a cycle)", display(here, c""));
        }
        let mut entries = fs.read_dir(ino)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let meta = fs.metadata(e.ino)?;
            self.extract_one(fs, vol, dir, &e.name, e.ino, &meta, here, ancestors)?;
        }
        ancestors.remove(&ino);
        Ok(())
    }

    /// A directory `name` in `parent`: made, or the existing one (never through a symlink).
    fn make_dir(&self, parent: &OwnedFd, name: &CStr) -> Result<OwnedFd> {
        let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e.into());
            }
        }
        match open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => Ok(fd),
            Err(_) if self.overwrite => {
                // Something else (a file, a symlink) is there: replaced.
                check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })?;
                check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) })?;
                open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY)
            }
            Err(_) => bail!("exists and is not a directory (use --overwrite to replace it)"),
        }
    }

    /// A new regular file `name` in `parent`, never through a symlink.
    fn create_file(&self, parent: &OwnedFd, name: &CStr) -> Result<OwnedFd> {
        self.replace_existing(parent, name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Refuses an existing `name` (or removes it with `overwrite`; a directory is never removed).
    fn replace_existing(&self, parent: &OwnedFd, name: &CStr) -> Result<()> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::fstatat(parent.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if rc != 0 {
            return Ok(());
        }
        if !self.overwrite {
            bail!("exists already (use --overwrite to replace it)");
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            bail!("exists as a directory; not replaced by a file");
        }
        check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })
    }

    /// A hard link `name` in `parent` to the file first written at `first` (below the output).
    fn hard_link(&self, first: &[CString], parent: &OwnedFd, name: &CStr) -> Result<()> {
        let (last, dirs) = first.split_last().context("empty link path")?;
        let mut dir = self.root.try_clone()?;
        for d in dirs {
            dir = open_at(&dir, d, libc::O_RDONLY | libc::O_DIRECTORY)?;
        }
        self.replace_existing(parent, name)?;
        check(unsafe { libc::linkat(dir.as_raw_fd(), last.as_ptr(), parent.as_raw_fd(), name.as_ptr(), 0) })
    }

    /// The file's bytes: data runs written at their offsets, holes left as holes.
    fn write_contents(&mut self, fs: &dyn Filesystem, ino: Ino, meta: &Metadata, file: &OwnedFd) -> Result<()> {
        let f = std::fs::File::from(file.try_clone()?);
        let mut written = 0u64;
        match fs.data_map(ino)? {
            Some(runs) => {
                let mut buf = vec![0u8; 1 << 20];
                for run in runs {
                    if run.disk_offset.is_none() {
                        continue;
                    }
                    let end = run.file_offset.saturating_add(run.len).min(meta.size);
                    let mut off = run.file_offset;
                    while off < end {
                        let want = (end - off).min(buf.len() as u64) as usize;
                        let n = fs.read(ino, off, &mut buf[..want])?;
                        if n == 0 {
                            bail!("inode {ino}: the file ends at {off} bytes, its size says {}", meta.size);
                        }
                        std::os::unix::fs::FileExt::write_all_at(&f, &buf[..n], off)?;
                        off += n as u64;
                        written += n as u64;
                    }
                }
            }
            None => {
                let mut off = 0u64;
                read_file(fs, ino, meta.size, &mut |b| {
                    std::os::unix::fs::FileExt::write_all_at(&f, b, off)?;
                    off += b.len() as u64;
                    Ok(())
                })?;
                written = off;
            }
        }
        // The length, with a trailing hole if there is one.
        f.set_len(meta.size)?;
        self.report.bytes_written += written;
        Ok(())
    }

    /// Owner (when root), mode and times of `name` in `dir`, or of `dir` itself when `name` is `None`.
    fn finish(&self, dir: &OwnedFd, name: Option<&CStr>, meta: &Metadata) -> Result<()> {
        let (fd, path, flags) = match name {
            Some(n) => (dir.as_raw_fd(), n.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
            None => (dir.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH),
        };
        if self.is_root {
            check(unsafe { libc::fchownat(fd, path, meta.uid, meta.gid, flags) })?;
        }
        // After chown (which clears setuid); a symlink has no mode of its own.
        if meta.file_type != FileType::Symlink {
            match name {
                Some(n) => check(unsafe { libc::fchmodat(fd, n.as_ptr(), meta.mode & 0o7777, 0) })?,
                None => check(unsafe { libc::fchmod(fd, meta.mode & 0o7777) })?,
            }
        }
        let times = [timespec(meta.atime), timespec(meta.mtime)];
        match name {
            Some(n) => check(unsafe { libc::utimensat(fd, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }),
            None => check(unsafe { libc::futimens(fd, times.as_ptr()) }),
        }
    }
}

/// A name from the disk as one path component: refused when it could name anything but a child.
fn component(name: &[u8]) -> Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        bail!("refusing the entry name {:?}: not a single path component", String::from_utf8_lossy(name));
    }
    CString::new(name).map_err(|_| anyhow::anyhow!("refusing the entry name {:?}: it holds a NUL byte", String::from_utf8_lossy(name)))
}

fn display(here: &[CString], name: &CStr) -> String {
    let mut parts: Vec<String> = here.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if !name.is_empty() {
        parts.push(name.to_string_lossy().into_owned());
    }
    parts.join("/")
}

fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("output path holds a NUL byte")?;
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot open {}", path.display()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat` of a child, never following a symlink.
fn open_at(dir: &OwnedFd, name: &CStr, flags: i32) -> Result<OwnedFd> {
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn rdev(meta: &Metadata) -> libc::dev_t {
    let (major, minor) = meta.rdev.unwrap_or((0, 0));
    libc::makedev(major, minor)
}

fn timespec(t: Timestamp) -> libc::timespec {
    libc::timespec { tv_sec: t.secs as libc::time_t, tv_nsec: t.nanos.min(999_999_999) as libc::c_long }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"x\0y"] {
            assert!(component(bad).is_err(), "{bad:?}");
        }
        assert!(component(b"...").is_ok());
    }
}
