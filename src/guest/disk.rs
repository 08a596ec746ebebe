//! A snapshot's guest disk as random-access bytes: the guest stream (the
//! disk a raw, QCOW2 or other container snapshot holds) read through an exact
//! [`ChunkReader`](crate::index::ChunkReader) that fetches only the chunks a read
//! touches, counting the bytes fetched (`bytes_read` of the guest file verbs).

use super::ReadAt;
use crate::index::{ChunkReader, Index, IndexedRepository};
use crate::repository::extents::Extent;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use anyhow::Result;
use std::sync::Mutex;

/// The guest disk of one snapshot. Reads take `&self` (a mutex around the
/// chunk reader), so volumes and filesystems can share it.
pub struct GuestDisk<'a> {
    reader: Mutex<ChunkReader<'a>>,
    size: u64,
}

impl<'a> GuestDisk<'a> {
    /// Opens the guest disk of `snap`; refused (naming why) when the snapshot
    /// does not hold one: an opaque container, an ISO or LUKS file stored as is.
    /// Needs a full key.
    pub fn open(repo: &'a Repository, index: &'a Index, snap: &Snapshot) -> Result<Self> {
        repo.require_full_key("guest disk access")?;
        let source = IndexedRepository::new(repo, index);
        crate::restore::ensure_guest_stream_is_disk(source, snap)?;
        Ok(GuestDisk { reader: Mutex::new(source.exact_reader(&snap.guest)?), size: snap.guest.size })
    }

    /// Stored bytes fetched from the repository so far.
    pub fn bytes_read(&self) -> u64 {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).bytes_fetched()
    }

    /// The guest stream's extents (allocated data; everything else reads as zeros).
    pub fn extents(&self) -> Vec<Extent> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner()).extents().to_vec()
    }
}

impl ReadAt for GuestDisk<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        super::check_bounds(self.size, offset, buf.len())?;
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        r.read_at(offset, buf).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}
