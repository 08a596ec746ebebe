//! The guest file verbs (`ls`, `cat`, `extract`, `find`, `diff`): the guest
//! tree of a snapshot ([`GuestTree`]: its guest disk, the volumes on it, and
//! the filesystem of each, opened on first use), path resolution inside it,
//! and the walks the verbs share. One file per verb holds its options and
//! its typed report; every report carries `bytes_read`, the stored bytes
//! fetched from the repository ([`GuestDisk::bytes_read`]).
//!
//! Paths: `pN/...` (and `pN/VG/LV/...`) name a volume first whenever the disk
//! has a partition table; a bare filesystem is `/...`. Inside a filesystem,
//! symlinks met on the way are followed (absolute targets from that
//! filesystem's root, at most [`MAX_SYMLINK_HOPS`]), never out of it; the last
//! component is followed only when the verb asks (`cat`), never for `ls` or
//! `extract`. Everything below comes from a disk a tenant controls: names are
//! bytes, walks are bounded and a directory met twice on one walk is refused.

pub mod cat;
pub mod diff;
pub mod extract;
pub mod find;
pub mod ls;

use crate::guest::{self, FileType, Filesystem, FsError, GuestDisk, Ino, Metadata, ReadAt, Volume};
use crate::index::Index;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use anyhow::{bail, Result};
use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::Arc;

/// Symlinks followed while resolving one path (Linux's limit).
pub const MAX_SYMLINK_HOPS: u32 = 40;
/// Deepest directory nesting a walk descends (a crafted filesystem can nest without end).
pub const MAX_WALK_DEPTH: usize = 4096;

/// A snapshot's guest disk, its volumes and (opened on first use) their filesystems.
pub struct GuestTree<'a> {
    disk: Arc<GuestDisk<'a>>,
    volumes: Vec<Mounted<'a>>,
}

/// One volume and its filesystem, opened on first use; the error says why none is readable.
struct Mounted<'a> {
    volume: Volume<'a>,
    fs: OnceCell<Result<Box<dyn Filesystem + 'a>, String>>,
}

/// A volume as the top of the tree lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeInfo {
    /// `p1`, `p2/vg0/root`, or empty for the bare disk.
    pub name: String,
    pub size: u64,
    /// What the partition table says (`GPT Linux filesystem`, `MBR 0x83`, `whole disk`).
    pub description: String,
    pub disk_offset: u64,
    /// `ext4`, `xfs`, `vfat` when one is readable.
    pub filesystem: Option<String>,
    pub label: Option<String>,
    /// Why no filesystem is readable (unknown contents, damaged, unsupported).
    pub error: Option<String>,
    /// The filesystem's notes (a dirty journal and what was done about it).
    pub notes: Vec<String>,
}

/// A resolved path: the volume, the inode and its metadata.
#[derive(Debug, Clone)]
pub struct Located {
    pub volume: usize,
    pub ino: Ino,
    pub meta: Metadata,
    /// The path as shown: `p1/etc/passwd`, `/etc/passwd`.
    pub path: String,
}

/// What a user path names: the top of a partitioned disk (its volumes), or a file.
pub enum Target {
    Volumes,
    File(Located),
}

impl<'a> GuestTree<'a> {
    /// The guest tree of `snap` (a full key is needed; a snapshot without a guest disk is refused).
    pub fn open(repo: &'a Repository, index: &'a Index, snap: &Snapshot) -> Result<Self> {
        // An Arc although the disk is not Sync: `guest::volumes` takes `Arc<dyn ReadAt>` (the seam's design).
        #[allow(clippy::arc_with_non_send_sync)]
        let disk = Arc::new(GuestDisk::open(repo, index, snap)?);
        Self::over(disk)
    }

    /// The tree of an already opened guest disk.
    pub fn over(disk: Arc<GuestDisk<'a>>) -> Result<Self> {
        let bytes: Arc<dyn ReadAt + 'a> = disk.clone();
        let volumes = guest::volumes(bytes).map_err(|e| anyhow::anyhow!("reading the partition table: {e}"))?;
        Ok(GuestTree { disk, volumes: volumes.into_iter().map(|volume| Mounted { volume, fs: OnceCell::new() }).collect() })
    }

    /// Stored bytes fetched from the repository so far.
    pub fn bytes_read(&self) -> u64 {
        self.disk.bytes_read()
    }

    pub fn disk(&self) -> &GuestDisk<'a> {
        &self.disk
    }

    /// True when the disk has no partition table: paths are `/...`.
    pub fn is_bare(&self) -> bool {
        self.volumes.len() == 1 && self.volumes[0].volume.name.is_empty()
    }

    pub fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    pub fn volume(&self, i: usize) -> &Volume<'a> {
        &self.volumes[i].volume
    }

    /// The filesystem of volume `i`, opened on first use; the error names the volume and what was found.
    pub fn fs(&self, i: usize) -> Result<&(dyn Filesystem + 'a)> {
        let m = &self.volumes[i];
        let opened = m.fs.get_or_init(|| open_fs(&m.volume));
        match opened {
            Ok(fs) => Ok(fs.as_ref()),
            Err(e) => bail!("{e}"),
        }
    }

    /// The volumes, each with what is on it.
    pub fn volume_infos(&self) -> Vec<VolumeInfo> {
        (0..self.volumes.len())
            .map(|i| {
                let v = &self.volumes[i].volume;
                let (filesystem, label, error, notes) = match self.fs(i) {
                    Ok(fs) => (Some(fs.kind().to_string()), fs.label(), None, fs.notes()),
                    Err(e) => (None, None, Some(format!("{e:#}")), Vec::new()),
                };
                VolumeInfo {
                    name: v.name.clone(),
                    size: v.bytes.size(),
                    description: v.description.clone(),
                    disk_offset: v.disk_offset,
                    filesystem,
                    label,
                    error,
                    notes,
                }
            })
            .collect()
    }

    /// The notes of every filesystem opened so far, each prefixed by its volume (warnings of the verbs).
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.volumes {
            if let Some(Ok(fs)) = m.fs.get() {
                for n in fs.notes() {
                    out.push(format!("{}: {n}", volume_label(&m.volume.name)));
                }
            }
        }
        out
    }

    /// The display path of `rel` (components inside volume `vol`'s filesystem, no leading `/`).
    pub fn display_path(&self, vol: usize, rel: &str) -> String {
        let name = &self.volumes[vol].volume.name;
        match (name.is_empty(), rel.is_empty()) {
            (true, _) => format!("/{rel}"),
            (false, true) => name.clone(),
            (false, false) => format!("{name}/{rel}"),
        }
    }

    /// Resolves a user path. `follow_last`: a symlink as the last component is followed (`cat`).
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Target> {
        let (vol, rest) = match self.split_volume(path)? {
            None => return Ok(Target::Volumes),
            Some(v) => v,
        };
        let fs = self.fs(vol)?;
        let components: Vec<&[u8]> = rest.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::as_bytes).collect();
        let (ino, rel) = walk_path(fs, components, follow_last).map_err(|e| match e {
            // Their paths are inside the filesystem: shown with the volume.
            FsError::NotFound(p) => anyhow::Error::from(FsError::NotFound(self.display_path(vol, &p))),
            FsError::NotADirectory(p) => FsError::NotADirectory(self.display_path(vol, &p)).into(),
            e => anyhow::anyhow!("{}: {e}", self.display_path(vol, rest.trim_matches('/'))),
        })?;
        let meta = fs.metadata(ino)?;
        Ok(Target::File(Located { volume: vol, ino, meta, path: self.display_path(vol, &rel) }))
    }

    /// The volume a user path starts with, and the rest; `None` for the top of a partitioned disk.
    fn split_volume<'p>(&self, path: &'p str) -> Result<Option<(usize, &'p str)>> {
        if self.is_bare() {
            return Ok(Some((0, path)));
        }
        let trimmed = path.trim_start_matches('/');
        if trimmed.is_empty() {
            return Ok(None);
        }
        // The longest volume name that is a whole-component prefix (`p2/vg0/root` before `p2`).
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in self.volumes.iter().enumerate() {
            let n = &m.volume.name;
            let matches = trimmed == n.as_str() || (trimmed.starts_with(n.as_str()) && trimmed.as_bytes().get(n.len()) == Some(&b'/'));
            if matches && best.is_none_or(|(_, len)| n.len() > len) {
                best = Some((i, n.len()));
            }
        }
        match best {
            Some((i, len)) => Ok(Some((i, &trimmed[len..]))),
            None => {
                let names: Vec<&str> = self.volumes.iter().map(|m| m.volume.name.as_str()).collect();
                bail!("{path}: no such volume on this disk (it has {})", names.join(", "))
            }
        }
    }
}

fn volume_label(name: &str) -> &str {
    if name.is_empty() {
        "the disk"
    } else {
        name
    }
}

/// Opens the filesystem of a volume, or says (naming the volume) why there is none imgarc reads.
fn open_fs<'a>(v: &Volume<'a>) -> Result<Box<dyn Filesystem + 'a>, String> {
    let where_ = if v.name.is_empty() { "the disk (no partition table)".to_string() } else { format!("volume {}", v.name) };
    match guest::open_filesystem(v.bytes.clone()) {
        Ok(Some(fs)) => Ok(fs),
        Ok(None) => Err(format!("{where_}: no filesystem imgarc reads (found: {})", sniff(v.bytes.as_ref()))),
        Err(e) => Err(format!("{where_}: {e}")),
    }
}

/// A few words on what a volume holds when no filesystem was recognised.
pub fn sniff(bytes: &dyn ReadAt) -> String {
    let mut head = vec![0u8; 8192.min(bytes.size() as usize)];
    if bytes.read_at(0, &mut head).is_err() {
        return "unreadable bytes".into();
    }
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if head.iter().all(|b| *b == 0) {
        "zeros (empty)".into()
    } else if at(0, b"LUKS\xba\xbe") {
        "a LUKS encrypted volume".into()
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        "Linux swap".into()
    } else if at(3, b"NTFS    ") {
        "NTFS (not supported)".into()
    } else if at(512, b"LABELONE") || at(536, b"LVM2 001") {
        "an LVM2 physical volume".into()
    } else if at(0, b"XFSB") || at(1080, &[0x53, 0xef]) {
        "a filesystem signature whose superblock did not parse".into()
    } else {
        "unrecognised bytes".into()
    }
}

/// Walks `components` from the root of `fs`, following symlinks met on the
/// way (and the last one when `follow_last`), bounded by [`MAX_SYMLINK_HOPS`].
/// Returns the inode and its path from the root (components joined by `/`).
fn walk_path(fs: &dyn Filesystem, components: Vec<&[u8]>, follow_last: bool) -> Result<(Ino, String), FsError> {
    // Pending components, last first, so a symlink's target is pushed in front.
    let mut pending: Vec<Vec<u8>> = components.into_iter().rev().map(<[u8]>::to_vec).collect();
    let mut stack: Vec<(Ino, Vec<u8>)> = Vec::new();
    let mut hops = 0u32;
    let mut cur = fs.root();
    while let Some(name) = pending.pop() {
        if name == b"." || name.is_empty() {
            continue;
        }
        if name == b".." {
            // `..` of the root is the root, as in the kernel.
            if let Some((parent, _)) = stack.pop() {
                cur = parent;
            }
            continue;
        }
        let meta = fs.metadata(cur)?;
        if meta.file_type != FileType::Directory {
            return Err(FsError::NotADirectory(path_of(&stack)));
        }
        let entry =
            fs.read_dir(cur)?.into_iter().find(|e| e.name == name).ok_or_else(|| FsError::NotFound(join(&path_of(&stack), &name)))?;
        let is_last = pending.is_empty();
        let file_type = if entry.file_type == FileType::Unknown { fs.metadata(entry.ino)?.file_type } else { entry.file_type };
        if file_type == FileType::Symlink && (!is_last || follow_last) {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(FsError::Malformed(format!("{}: more than {MAX_SYMLINK_HOPS} symlinks", join(&path_of(&stack), &name))));
            }
            let target = fs.read_link(entry.ino)?;
            if target.first() == Some(&b'/') {
                stack.clear();
                cur = fs.root();
            }
            for c in target.split(|b| *b == b'/').rev() {
                pending.push(c.to_vec());
            }
            continue;
        }
        stack.push((cur, name));
        cur = entry.ino;
    }
    Ok((cur, path_of(&stack)))
}

fn path_of(stack: &[(Ino, Vec<u8>)]) -> String {
    stack.iter().map(|(_, n)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>().join("/")
}

fn join(dir: &str, name: &[u8]) -> String {
    let n = String::from_utf8_lossy(name);
    if dir.is_empty() {
        n.into_owned()
    } else {
        format!("{dir}/{n}")
    }
}

/// One file met by [`walk_tree`].
pub struct Walked {
    /// Path below the walk's start, `/`-joined (empty for the start itself).
    pub rel: String,
    /// The raw name bytes of each component below the start.
    pub names: Vec<Vec<u8>>,
    pub ino: Ino,
    pub meta: Metadata,
}

/// Depth-first walk of the tree at `start` (itself first), in on-disk entry
/// order; `visit` returns false to skip descending into a directory. A
/// directory met again below itself (a crafted cycle) is an error.
pub fn walk_tree(fs: &dyn Filesystem, start: Ino, visit: &mut dyn FnMut(&Walked) -> Result<bool>) -> Result<()> {
    let meta = fs.metadata(start)?;
    let mut ancestors = HashSet::new();
    walk_inner(fs, Walked { rel: String::new(), names: Vec::new(), ino: start, meta }, &mut ancestors, visit)
}

fn walk_inner(
    fs: &dyn Filesystem,
    here: Walked,
    ancestors: &mut HashSet<Ino>,
    visit: &mut dyn FnMut(&Walked) -> Result<bool>,
) -> Result<()> {
    let descend = visit(&here)?;
    if here.meta.file_type != FileType::Directory || !descend {
        return Ok(());
    }
    if here.names.len() >= MAX_WALK_DEPTH {
        bail!("{}: directories nested deeper than {MAX_WALK_DEPTH}", here.rel);
    }
    if !ancestors.insert(here.ino) {
        bail!("{}: directory inode {} contains itself (a cycle)", here.rel, here.ino);
    }
    let mut entries = fs.read_dir(here.ino)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let meta = fs.metadata(e.ino)?;
        let mut names = here.names.clone();
        names.push(e.name.clone());
        let rel = join(&here.rel, &e.name);
        walk_inner(fs, Walked { rel, names, ino: e.ino, meta }, ancestors, visit)?;
    }
    ancestors.remove(&here.ino);
    Ok(())
}

/// `ls -l`'s mode string: `drwxr-xr-x`, `-rwsr-xr-x`, `lrwxrwxrwx`.
pub fn mode_string(t: FileType, mode: u32) -> String {
    let kind = match t {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::Unknown => '?',
    };
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lower: char, upper: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// A timestamp as RFC 3339 UTC with nanoseconds when it has them.
pub fn time_string(t: guest::Timestamp) -> String {
    match chrono::DateTime::from_timestamp(t.secs, t.nanos) {
        Some(d) if t.nanos == 0 => d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string(),
        None => format!("@{}", t.secs),
    }
}

/// Every byte of a file, through `f` in 1 MiB pieces (bounded memory).
pub fn read_file(fs: &dyn Filesystem, ino: Ino, size: u64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.len() as u64) as usize;
        let n = fs.read(ino, off, &mut buf[..want])?;
        if n == 0 {
            bail!("inode {ino}: the file ends at {off} bytes, its size says {size}");
        }
        f(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testfs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(FileType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileType::Regular, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(FileType::Regular, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(FileType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(FileType::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn paths_follow_intermediate_symlinks_but_not_the_last() {
        let fs = testfs::TestFs::sample();
        let (ino, path) = walk_path(&fs, vec![b"link-to-dir", b"file"], false).unwrap();
        assert_eq!((ino, path.as_str()), (testfs::FILE, "dir/file"));
        let (ino, _) = walk_path(&fs, vec![b"link-to-file"], false).unwrap();
        assert_eq!(ino, testfs::LINK_TO_FILE);
        let (ino, _) = walk_path(&fs, vec![b"link-to-file"], true).unwrap();
        assert_eq!(ino, testfs::FILE);
        // `..` above the root stays at the root.
        let (ino, _) = walk_path(&fs, vec![b"..", b"..", b"dir", b"file"], false).unwrap();
        assert_eq!(ino, testfs::FILE);
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let fs = testfs::TestFs::sample();
        let e = walk_path(&fs, vec![b"loop", b"x"], false).unwrap_err();
        assert!(e.to_string().contains("more than 40 symlinks"), "{e}");
    }

    #[test]
    fn a_directory_cycle_is_refused_by_the_walk() {
        let fs = testfs::TestFs::sample();
        let mut n = 0;
        let e = walk_tree(&fs, fs.root(), &mut |_| {
            n += 1;
            Ok(true)
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("contains itself"), "{e:#}");
        assert!(n < 100);
    }
}
