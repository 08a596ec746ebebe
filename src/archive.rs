//! Archiving one image: the pipeline from a byte source to a snapshot.
//!
//! ```text
//! reader thread: read 4 MiB → digest threads
//!                          → layout (raw: identity) → GuestChunker → batches ─┐
//! this thread:   ChunkStore (hash ∥, dedup, compress ∥, pack) ←──────────────┘
//!                → uploader thread (pack, then its index object)
//! end:           extent trees → last pack → digests compared → snapshot object → index
//! ```
//! The image is read once and never held whole; bounded channels give
//! back-pressure so memory stays flat as images grow.

use crate::chunking::{Chunk, GuestChunker};
use crate::digest::{Digesters, Piece};
use crate::ids::Id;
use crate::index::Index;
use crate::repository::extents::Extent;
use crate::repository::snapshot::{Layout, Snapshot, SnapshotStats, Source};
use crate::repository::Repository;
use crate::source::read_full;
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

const READ_BUF: usize = 4 << 20;
const BATCH_BYTES: usize = 16 << 20;

pub struct ArchiveRequest {
    pub name: String,
    pub tags: Vec<String>,
    pub source: Source,
    /// Digests to compute and record (`md5`, `sha256`, …).
    pub digests: Vec<String>,
    /// Digests the source vouches for; a mismatch fails the archive and stores no snapshot.
    pub expected_digests: BTreeMap<String, String>,
    /// Length the source announced; a different length read fails the archive.
    pub expected_size: Option<u64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveOutcome {
    pub snapshot: String,
    pub name: String,
    pub logical_bytes: u64,
    pub virtual_bytes: Option<u64>,
    pub new_bytes: u64,
    pub stored_bytes_added: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub hole_bytes: u64,
    pub seconds: f64,
    pub digests: BTreeMap<String, String>,
}

/// What the reader thread hands over: a batch of guest chunks, or the end.
enum Msg {
    Chunks(Vec<Chunk>),
    End { logical_bytes: u64, hole_bytes: u64 },
}

pub fn archive(
    repo: &Repository,
    index: &Index,
    mut reader: Box<dyn Read + Send>,
    req: ArchiveRequest,
    progress: &ProgressBar,
) -> Result<ArchiveOutcome> {
    let started = Instant::now();
    let time = crate::util::now_rfc3339();
    let mut digest_names = req.digests.clone();
    for k in req.expected_digests.keys() {
        if !digest_names.contains(k) {
            digest_names.push(k.clone());
        }
    }
    let digesters = Digesters::start(&digest_names);
    let config = repo.config().clone();
    let expected_chunks = req
        .expected_size
        .map_or(0, |s| (s / config.chunker.avg_size as u64) as usize);
    let mut store = crate::store::ChunkStore::new(repo, index, expected_chunks)?;

    let (tx, rx) = bounded::<Result<Msg>>(2);
    let pb = progress.clone();
    let reader_thread = std::thread::Builder::new()
        .name("read".into())
        .spawn(move || {
            let mut chunker = GuestChunker::new(config.chunker, config.hole_block_size);
            let mut batch: Vec<Chunk> = Vec::new();
            let mut batch_bytes = 0usize;
            let mut offset = 0u64;
            let result = (|| -> Result<()> {
                loop {
                    let mut buf = vec![0u8; READ_BUF];
                    let n = read_full(&mut *reader, &mut buf)
                        .with_context(|| format!("reading the image at byte {offset}"))?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    let buf = Arc::new(buf);
                    if !digesters.is_empty() {
                        digesters.feed(Piece::Data(buf.clone(), 0..n));
                    }
                    let mut full = false;
                    chunker.push(offset, &buf, &mut |c| {
                        batch_bytes += c.data.len();
                        batch.push(c);
                        full |= batch_bytes >= BATCH_BYTES;
                    });
                    if full {
                        batch_bytes = 0;
                        if tx
                            .send(Ok(Msg::Chunks(std::mem::take(&mut batch))))
                            .is_err()
                        {
                            bail!("archive stopped");
                        }
                    }
                    offset += n as u64;
                    pb.set_position(offset);
                }
                chunker.finish(&mut |c| batch.push(c));
                if !batch.is_empty() {
                    let _ = tx.send(Ok(Msg::Chunks(std::mem::take(&mut batch))));
                }
                let _ = tx.send(Ok(Msg::End {
                    logical_bytes: offset,
                    hole_bytes: chunker.hole_bytes,
                }));
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
            digesters
        })?;

    let mut extents: Vec<Extent> = Vec::new();
    let mut end = None;
    for msg in rx.iter() {
        match msg? {
            Msg::Chunks(chunks) => extents.extend(store.store_chunks(chunks)?),
            Msg::End {
                logical_bytes,
                hole_bytes,
            } => end = Some((logical_bytes, hole_bytes)),
        }
    }
    let digesters = reader_thread
        .join()
        .map_err(|_| anyhow!("reader thread panicked"))?;
    let (logical_bytes, hole_bytes) =
        end.ok_or_else(|| anyhow!("the image could not be read to its end"))?;
    if let Some(exp) = req.expected_size {
        if exp != logical_bytes {
            bail!("the source announced {exp} bytes but delivered {logical_bytes}: truncated or changed while reading; no snapshot stored");
        }
    }
    // Out-of-order layouts may deliver pieces in any order; the list is by offset.
    extents.sort_by_key(|e| e.offset);
    let guest = store.store_extents(logical_bytes, &extents)?;
    let stats = store.finish()?;
    let digests = digesters.finish()?;
    for (alg, want) in &req.expected_digests {
        let got = digests.get(alg).map(String::as_str).unwrap_or("");
        if !got.eq_ignore_ascii_case(want) {
            bail!("{alg} of the bytes read is {got}, but the source says {want}: the image is damaged or was changed; no snapshot stored");
        }
    }
    let recorded: BTreeMap<String, String> = digests
        .into_iter()
        .filter(|(k, _)| req.digests.contains(k) || req.expected_digests.contains_key(k))
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let snap = Snapshot {
        version: crate::repository::snapshot::SNAPSHOT_VERSION,
        name: req.name.clone(),
        tags: req.tags.clone(),
        time,
        hostname: crate::util::hostname(),
        source: req.source,
        logical_bytes,
        virtual_bytes: Some(logical_bytes),
        layout: Layout::Raw,
        guest,
        digests: recorded.clone(),
        stats: SnapshotStats {
            chunks: stats.chunks,
            new_chunks: stats.new_chunks,
            new_bytes: stats.new_bytes,
            stored_bytes_added: stats.stored_bytes_added,
            hole_bytes,
            seconds,
        },
        metadata: req.metadata,
    };
    // Every pack is durable and indexed; only now may a snapshot refer to them.
    let id = repo.save_snapshot(&snap)?;
    let mut referenced: HashSet<Id> = extents.iter().map(|e| e.id).collect();
    referenced.extend(snap.guest.trees.iter().copied());
    let mut idx = Index::open_at(index.path(), &repo.config().id)?;
    idx.add_snapshot(&id, &snap, &referenced)?;
    Ok(ArchiveOutcome {
        snapshot: id.to_hex(),
        name: snap.name,
        logical_bytes,
        virtual_bytes: snap.virtual_bytes,
        new_bytes: stats.new_bytes,
        stored_bytes_added: stats.stored_bytes_added,
        chunks: stats.chunks,
        new_chunks: stats.new_chunks,
        hole_bytes,
        seconds,
        digests: recorded,
    })
}
