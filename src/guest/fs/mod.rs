//! Guest filesystems, read-only, over any [`ReadAt`]: the one [`Filesystem`]
//! trait the file verbs (`ls`, `cat`, `extract`, `find`, `diff`) use, and
//! [`open_filesystem`], which recognises ext2/3/4, XFS and FAT by their
//! superblocks. Every implementation parses bytes a tenant controls.

pub mod ext4;
pub mod fat;
pub mod xfs;

use super::ReadAt;
use std::sync::Arc;

/// An inode number (ext4, XFS) or the filesystem's own stable file id (FAT).
pub type Ino = u64;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The bytes are not a valid instance of what they claim to be.
    #[error("malformed {0}")]
    Malformed(String),
    /// Valid, but a feature imgarc does not read (named).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("reading the disk: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl FileType {
    /// The type bits of a Unix mode (`mode & S_IFMT`), as ext2/3/4 and XFS inodes store them.
    pub fn from_mode(mode: u32) -> FileType {
        match mode & 0o170000 {
            0o100000 => FileType::Regular,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// The file type byte of a directory entry as ext2/3/4 (`filetype`) and XFS
    /// (`ftype`) both store it: Linux's `DT_*` order, 1 regular … 7 symlink.
    pub fn from_dirent_code(code: u8) -> FileType {
        match code {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::CharDevice,
            4 => FileType::BlockDevice,
            5 => FileType::Fifo,
            6 => FileType::Socket,
            7 => FileType::Symlink,
            _ => FileType::Unknown,
        }
    }
}

/// Seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What `stat` says about a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    pub ino: Ino,
    pub file_type: FileType,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Length in bytes (a symlink: its target's length).
    pub size: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Device number (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
}

/// One directory entry (never `.` or `..`). Names are bytes, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub file_type: FileType,
}

/// Where a stretch of a file's bytes lives: `disk_offset` in the volume's
/// bytes, or `None` for a hole (reads as zeros; extract leaves it sparse).
/// Unwritten (preallocated) extents are holes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    pub file_offset: u64,
    pub len: u64,
    pub disk_offset: Option<u64>,
}

/// A read-only filesystem. Implementations bound every walk (directory
/// sizes, extent tree depth, cluster chains) and check every structure
/// before use.
pub trait Filesystem {
    /// `ext4`, `ext3`, `ext2`, `xfs`, `vfat`.
    fn kind(&self) -> &'static str;
    /// The volume label, when set.
    fn label(&self) -> Option<String>;
    /// Conditions a reader should know about, e.g. "journal needs recovery:
    /// replayed in memory" or "read without replaying the unclean log".
    fn notes(&self) -> Vec<String>;
    fn root(&self) -> Ino;
    fn metadata(&self, ino: Ino) -> Result<Metadata, FsError>;
    /// Entries of a directory, in on-disk order, without `.` and `..`.
    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError>;
    /// Reads file bytes at `offset` into `buf`; returns how many (fewer only at the end of the file).
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, FsError>;
    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, FsError>;
    /// The file's data runs in file order covering `[0, size)`, or `None`
    /// when its data lives inside metadata (inline data, short-form).
    fn data_map(&self, ino: Ino) -> Result<Option<Vec<FileRun>>, FsError>;
}

/// Recognises the filesystem on `bytes` by its superblock and opens it.
/// `Ok(None)`: no filesystem imgarc knows (swap, NTFS, empty, …).
pub fn open_filesystem<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    // Each probe looks at its own magic only, so the order does not matter.
    if let Some(fs) = ext4::open(bytes.clone())? {
        return Ok(Some(fs));
    }
    if let Some(fs) = xfs::open(bytes.clone())? {
        return Ok(Some(fs));
    }
    fat::open(bytes)
}
