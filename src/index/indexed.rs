//! The indexed repository: the repository read through its cache. It owns
//! the read path every reader shares — a blob by id (from the first intact
//! copy, verified), a stream's extent list (checked against its digest), the
//! blobs a snapshot references, which snapshots use a blob — and opens the
//! one [`ChunkReader`] that `restore` (and guest file access, NBD export)
//! read streams through.

use super::{ChunkReader, Index};
use crate::ids::Id;
use crate::repository::extents::{self, Extent, StreamRef};
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use anyhow::{bail, Result};
use std::collections::{HashMap, HashSet};

/// A repository with its cache, borrowed for reading.
#[derive(Clone, Copy)]
pub struct IndexedRepository<'a> {
    pub repo: &'a Repository,
    pub index: &'a Index,
}

impl<'a> IndexedRepository<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index) -> Self {
        IndexedRepository { repo, index }
    }

    /// Reads a blob from the first location that yields intact bytes.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let locs = self.index.locations(id)?;
        if locs.is_empty() {
            bail!("blob {} is not in the index (missing from the repository)", id.to_hex());
        }
        let mut last = None;
        for l in locs {
            match self.repo.read_blob(&l.pack, &l.entry) {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one location was tried"))
    }

    /// Reads a stream's extent list from its tree blobs and checks its digest.
    pub fn load_extents(&self, stream: &StreamRef) -> Result<Vec<Extent>> {
        let mut out = Vec::with_capacity(stream.extent_count.min(1 << 24) as usize);
        let mut hasher = blake3::Hasher::new();
        for tree in &stream.trees {
            let bytes = self.read_blob(tree)?;
            hasher.update(&bytes);
            let after = out.last().map_or(0, |e: &Extent| e.end());
            extents::decode(&bytes, stream.size, after, &mut out)?;
        }
        if Id(*hasher.finalize().as_bytes()) != stream.extents_blake3 || out.len() as u64 != stream.extent_count {
            bail!("extent list does not match its recorded digest or count");
        }
        Ok(out)
    }

    /// The distinct blobs (data chunks and tree blobs) a snapshot references.
    pub fn referenced_ids(&self, snap: &Snapshot) -> Result<HashSet<Id>> {
        let mut ids = HashSet::new();
        for stream in snap.streams() {
            ids.extend(stream.trees.iter().copied());
            for e in self.load_extents(stream)? {
                ids.insert(e.id);
            }
        }
        Ok(ids)
    }

    /// For each id in `ids`, the snapshots (id, name) whose streams reference it.
    pub fn snapshots_using(&self, ids: &[Id]) -> Result<HashMap<Id, Vec<(Id, String)>>> {
        let wanted: HashSet<Id> = ids.iter().copied().collect();
        let mut out: HashMap<Id, Vec<(Id, String)>> = HashMap::new();
        for row in self.index.snapshot_rows()? {
            let Some(snap) = self.index.snapshot(&row.id)? else {
                continue;
            };
            // Tree ids are in the snapshot itself: a lost tree is attributed even when
            // the extent list it holds can no longer be read.
            let mut refs: HashSet<Id> = snap.streams().iter().flat_map(|s| s.trees.iter().copied()).collect();
            if let Ok(more) = self.referenced_ids(&snap) {
                refs.extend(more);
            }
            for id in refs.intersection(&wanted) {
                out.entry(*id).or_default().push((row.id, row.name.clone()));
            }
        }
        Ok(out)
    }

    /// The chunk reader over one stored stream.
    pub fn reader(&self, stream: &StreamRef) -> Result<ChunkReader<'a>> {
        ChunkReader::open(*self, stream)
    }

    /// The chunk reader for scattered small reads: guest files, NBD (`ChunkReader::open_exact`).
    pub fn exact_reader(&self, stream: &StreamRef) -> Result<ChunkReader<'a>> {
        ChunkReader::open_exact(*self, stream)
    }

    /// A stored layout recipe read whole; larger than a recipe may be is refused.
    pub fn read_recipe(&self, stream: &StreamRef) -> Result<Vec<u8>> {
        if stream.size > crate::format::qcow2::MAX_RECIPE_BYTES {
            bail!("layout recipe of {} bytes is implausibly large", stream.size);
        }
        let mut r = self.reader(stream)?;
        let mut buf = vec![0u8; stream.size as usize];
        r.read_at(0, &mut buf)?;
        Ok(buf)
    }
}
