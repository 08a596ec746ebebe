//! The chunk store: the write side of an archive. Takes batches of chunks,
//! names them (BLAKE3, in parallel), drops those the repository already holds
//! (Bloom filter, then batched SQLite lookups), compresses the rest (zstd, in
//! parallel), appends them to packs and hands full packs to an uploader
//! thread, which stores each pack and then its index object. In a repository
//! whose dedup scope is `project`, one store names blobs in one project's scope,
//! so it dedups only against that project's data.

use crate::chunking::Chunk;
use crate::ids::Id;
use crate::index::{filter::ChunkFilter, Index};
use crate::repository::extents::{self, Extent, StreamRef};
use crate::repository::index_object::IndexedPack;
use crate::repository::pack::{BlobKind, BlobWriter, EncodedBlob, PackBuilder};
use crate::repository::Repository;
use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Sender};
use rayon::prelude::*;
use std::collections::HashSet;
use std::thread::JoinHandle;

#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    /// Chunk references handed to the store.
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub stored_bytes_added: u64,
    pub packs: u64,
}

pub struct ChunkStore<'a> {
    index: &'a Index,
    /// Names, compresses and seals this run's blobs.
    writer: BlobWriter,
    pack_target: usize,
    filter: ChunkFilter,
    /// Blobs stored by this run (in packs that may not be indexed yet).
    seen: HashSet<Id>,
    pack: PackBuilder,
    upload_tx: Option<Sender<PackBuilder>>,
    uploader: Option<JoinHandle<Result<(u64, u64)>>>,
    pub stats: StoreStats,
}

impl<'a> ChunkStore<'a> {
    /// `project`: the Glance project the archived image belongs to, which keys
    /// the blob ids when the repository's dedup scope is `project`.
    pub fn new(repo: &Repository, index: &'a Index, expected_chunks: usize, project: Option<&str>) -> Result<ChunkStore<'a>> {
        let filter = index.chunk_filter(expected_chunks)?;
        let (tx, rx) = bounded::<PackBuilder>(1);
        let repo2 = repo.clone();
        let index_path = index.path().to_path_buf();
        let repo_id = repo.config().id.clone();
        let uploader = std::thread::Builder::new().name("pack-upload".into()).spawn(move || -> Result<(u64, u64)> {
            // SQLite connections are per thread; this one records packs as they land.
            let mut idx = Index::open_at(&index_path, &repo_id)?;
            let (mut bytes, mut packs) = (0u64, 0u64);
            for builder in rx {
                let w = repo2.write_pack(builder)?;
                idx.add_pack(&w.index_key, &IndexedPack::new(w.id, w.pack_size, &w.entries))?;
                bytes += w.stored_bytes;
                packs += 1;
            }
            Ok((bytes, packs))
        })?;
        Ok(ChunkStore {
            index,
            writer: repo.blob_writer(project)?,
            pack_target: repo.config().pack_target_size as usize,
            filter,
            seen: HashSet::new(),
            pack: repo.pack_builder(),
            upload_tx: Some(tx),
            uploader: Some(uploader),
            stats: StoreStats::default(),
        })
    }

    /// Stores a batch of chunks of one stream; returns their extents in batch order.
    pub fn store_chunks(&mut self, chunks: Vec<Chunk>) -> Result<Vec<Extent>> {
        let ids: Vec<Id> = chunks.par_iter().map(|c| self.writer.id_of(&c.data)).collect();
        let fresh = self.find_fresh(&ids)?;
        let blobs: Vec<EncodedBlob> = chunks
            .par_iter()
            .zip(&ids)
            .enumerate()
            .filter(|(i, _)| fresh.contains(i))
            .map(|(_, (c, id))| self.writer.encode_with_id(*id, BlobKind::Data, &c.data))
            .collect();
        for b in &blobs {
            self.stats.new_bytes += b.raw_len as u64;
            self.add_to_pack(b)?;
        }
        self.stats.new_chunks += blobs.len() as u64;
        self.stats.chunks += chunks.len() as u64;
        Ok(chunks.iter().zip(ids).map(|(c, id)| Extent { offset: c.offset, len: c.data.len() as u32, id }).collect())
    }

    /// Stores one blob another repository named `id` (a structural `copy` between repositories
    /// whose chunking fingerprints are equal): refused unless this store names `raw` `id` too,
    /// so a scope or key mismatch can never store a blob under a wrong name. Returns whether
    /// it was stored (false: held already). Counts nothing in `stats` but what `finish` adds.
    pub fn store_named(&mut self, id: Id, kind: BlobKind, raw: &[u8]) -> Result<bool> {
        let named = self.writer.id_of(raw);
        anyhow::ensure!(
            named == id,
            "blob {} is named {} by the target: the two repositories do not name chunks alike",
            id.short(),
            named.short()
        );
        if !self.find_fresh(&[id])?.contains(&0) {
            return Ok(false);
        }
        let blob = self.writer.encode_with_id(id, kind, raw);
        self.add_to_pack(&blob)?;
        Ok(true)
    }

    /// Indices (into `ids`) of blobs to store: neither stored before nor earlier in this batch.
    fn find_fresh(&mut self, ids: &[Id]) -> Result<HashSet<usize>> {
        let maybe: Vec<Id> = ids.iter().filter(|id| !self.seen.contains(id) && self.filter.may_contain(id)).copied().collect();
        let known = if maybe.is_empty() { HashSet::new() } else { self.index.contains_many(&maybe)? };
        let mut fresh = HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if self.seen.contains(id) || known.contains(id) {
                continue;
            }
            self.seen.insert(*id);
            self.filter.insert(id);
            fresh.insert(i);
        }
        Ok(fresh)
    }

    fn add_to_pack(&mut self, blob: &EncodedBlob) -> Result<()> {
        self.pack.add(blob);
        if self.pack.len() >= self.pack_target {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let fresh = self.pack.fresh();
        let full = std::mem::replace(&mut self.pack, fresh);
        let tx = self.upload_tx.as_ref().expect("store not finished");
        if tx.send(full).is_err() {
            // The uploader stopped on an error; `join_uploader` returns it.
            return Err(self.join_uploader().err().unwrap_or_else(|| anyhow!("pack uploader stopped")));
        }
        Ok(())
    }

    /// Stores an extent list as tree blobs and returns the reference a snapshot records.
    pub fn store_extents(&mut self, size: u64, list: &[Extent]) -> Result<StreamRef> {
        let mut trees = Vec::new();
        let mut hasher = blake3::Hasher::new();
        for part in list.chunks(extents::RECORDS_PER_TREE) {
            let bytes = extents::encode(part);
            hasher.update(&bytes);
            let id = self.writer.id_of(&bytes);
            if self.find_fresh(&[id])?.contains(&0) {
                let blob = self.writer.encode_with_id(id, BlobKind::Tree, &bytes);
                self.add_to_pack(&blob)?;
            }
            trees.push(id);
        }
        Ok(StreamRef {
            size,
            trees,
            extent_count: list.len() as u64,
            extents_blake3: Id(*hasher.finalize().as_bytes()),
            data_bytes: list.iter().map(|e| e.len as u64).sum(),
        })
    }

    fn join_uploader(&mut self) -> Result<()> {
        self.upload_tx = None;
        if let Some(h) = self.uploader.take() {
            let (bytes, packs) = h.join().map_err(|_| anyhow!("pack uploader panicked"))?.context("storing packs failed")?;
            self.stats.stored_bytes_added += bytes;
            self.stats.packs += packs;
        }
        Ok(())
    }

    /// Writes the last pack and waits until every pack and index object is durable.
    pub fn finish(mut self) -> Result<StoreStats> {
        self.flush_pack()?;
        self.join_uploader()?;
        // A filter not saved costs the next archive a rebuild: never this archive's failure.
        if let Err(e) = self.index.save_chunk_filter(&mut self.filter) {
            tracing::warn!("cannot save the chunk filter: {e:#}");
        }
        Ok(self.stats)
    }
}

impl Drop for ChunkStore<'_> {
    fn drop(&mut self) {
        // On an error path, let the uploader finish what it has so nothing is torn.
        self.upload_tx = None;
        if let Some(h) = self.uploader.take() {
            let _ = h.join();
        }
    }
}
