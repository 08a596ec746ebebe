//! Guest disk access: a snapshot's guest view as random-access bytes
//! ([`GuestDisk`], read through the one chunk reader, fetching only what is
//! read), the volumes on it (`volume`: GPT/MBR partitions, LVM2 logical
//! volumes) and their filesystems (`fs`: ext2/3/4, XFS, FAT). Everything
//! below [`GuestDisk`] parses bytes a tenant controls: every offset, length
//! and count is checked before use, every walk is bounded, and a bad structure
//! is an [`FsError`] naming what is wrong, never a panic.
//!
//! Paths name a volume first: `p1/...` for partition 1 whenever the disk has a
//! partition table (logical MBR partitions are p5 upwards), `p2/VG/LV/...` for
//! an LVM2 logical volume inside partition 2, and `/...` for a filesystem on
//! the bare disk.

pub mod disk;
pub mod fs;
pub mod volume;

pub use disk::GuestDisk;
pub use fs::{open_filesystem, DirEntry, FileRun, FileType, Filesystem, FsError, Ino, Metadata, Timestamp};
pub use volume::{volumes, Volume};

use std::sync::Arc;

/// Random-access bytes: a guest disk, a partition, a logical volume, a test image file.
/// Reads past `size()` are an error; short reads do not exist.
pub trait ReadAt {
    /// Length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; `offset + buf.len()` must not pass `size()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// A file as random-access bytes (tests, fuzzing, `inspect` of a local image).
impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_bounds(self.size(), offset, buf.len())?;
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Bytes in memory (fuzzing, unit tests).
impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_bounds(self.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self[o..o + buf.len()]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// The one bounds check of every `ReadAt`: a read must lie inside `size`.
pub fn check_bounds(size: u64, offset: u64, len: usize) -> std::io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at offset {offset} passes the end ({size} bytes)"),
        )),
    }
}

/// A window `[offset, offset + len)` of another `ReadAt` (a partition of a disk).
pub struct Slice<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: ReadAt> Slice<R> {
    /// The window, refused when it does not lie inside `inner`.
    pub fn new(inner: R, offset: u64, len: u64) -> Result<Self, FsError> {
        match offset.checked_add(len) {
            Some(end) if end <= inner.size() => Ok(Slice { inner, offset, len }),
            _ => Err(FsError::Malformed(format!(
                "range of {len} bytes at offset {offset} passes the end of the disk ({} bytes)",
                inner.size()
            ))),
        }
    }
    /// Where this window starts in the bytes it is cut from.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl<R: ReadAt> ReadAt for Slice<R> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_bounds(self.len, offset, buf.len())?;
        self.inner.read_at(self.offset + offset, buf)
    }
}
