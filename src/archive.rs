//! Archiving one image: the pipeline from a byte source to a snapshot.
//!
//! ```text
//! reader thread: read → digest threads
//!                      → layout (raw: identity; qcow2: decomposer) → GuestChunkers → batches ─┐
//! this thread:   ChunkStore (hash ∥, dedup, compress ∥, pack) ←──────────────┘
//!                → uploader thread (pack, then its index object)
//! end:           extent trees → last pack → digests compared → snapshot object → index
//! ```
//! The image is read once and never held whole; bounded channels give
//! back-pressure so memory stays flat as images grow.

use crate::chunking::{Chunk, Gear, GuestChunker};
use crate::digest::{Digesters, Piece};
use crate::format::detect::{self, FormatKind};
use crate::format::qcow2;
use crate::ids::Id;
use crate::index::Index;
use crate::progress::SharedProgress;
use crate::repository::config::{Config, DedupScope};
use crate::repository::extents::Extent;
use crate::repository::snapshot::{Layout, Snapshot, SnapshotHead, SnapshotStats, Source};
use crate::repository::Repository;
use crate::source::read_full;
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
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
    /// The format the source claims (Glance `disk_format`, or `--disk-format`);
    /// it must agree with what is detected, and a declared raw image is never decomposed.
    pub declared_format: Option<String>,
    pub qcow2_policy: qcow2::Policy,
    /// The Glance project (image `owner`) the image belongs to. In a repository
    /// whose dedup scope is `project` it keys the chunk ids and is required.
    pub project: Option<String>,
}

impl ArchiveRequest {
    /// A raw image from `source` with nothing announced about it: the request
    /// unit tests and benches start from (and adjust the one field they are about).
    pub fn raw_unannounced(name: &str, source: Source) -> ArchiveRequest {
        ArchiveRequest {
            name: name.into(),
            tags: vec![],
            source,
            digests: vec![],
            expected_digests: Default::default(),
            expected_size: None,
            metadata: Default::default(),
            declared_format: Some("raw".into()),
            qcow2_policy: Default::default(),
            project: None,
        }
    }
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
    /// Detected container format (`raw`, `qcow2`, …).
    pub format: String,
    /// Why a container was stored opaquely (as plain bytes), if it was.
    pub opaque: Option<String>,
}

/// The byte streams one image is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Guest,
    Literal,
}

/// How the image file maps onto the streams, learnt by the reader thread.
// One per archive, moved once through the channel: boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Shape {
    /// The file is the guest stream. `virtual_size`: the disk size the container header
    /// states, for formats stored opaque (`None` when no fixed header field says).
    Raw {
        virtual_size: Option<u64>,
    },
    Qcow2(qcow2::Decomposed),
    /// VMDK, VDI, VHD, VHDX: decomposed like QCOW2, into the same kind of recipe.
    Container(crate::format::Decomposition),
}

/// What the reader thread hands over: a batch of chunks of one stream, or the end.
enum Msg {
    Chunks(StreamKind, Vec<Chunk>),
    End { logical_bytes: u64, hole_bytes: u64, detected: FormatKind, shape: Box<Shape> },
}

/// What the digest threads are sent at a time: a network read is often 16 KiB, and a
/// piece per read would cost an allocation, a send and a wake-up of each thread each.
const DIGEST_PIECE: usize = 1 << 20;

/// Reads the source once, feeding every byte to the digest threads (in pieces of
/// [`DIGEST_PIECE`]; [`TeeReader::into_digesters`] sends the rest) and the progress bar.
struct TeeReader {
    inner: Box<dyn Read + Send>,
    digesters: Digesters,
    pending: Vec<u8>,
    pos: u64,
    pb: SharedProgress,
}

impl TeeReader {
    fn new(inner: Box<dyn Read + Send>, digesters: Digesters, pb: SharedProgress) -> TeeReader {
        TeeReader { inner, digesters, pending: Vec::new(), pos: 0, pb }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let piece = std::mem::replace(&mut self.pending, Vec::with_capacity(DIGEST_PIECE));
            let n = piece.len();
            self.digesters.feed(Piece::Data(Arc::new(piece), 0..n));
        }
    }

    /// The digest threads, every byte read sent to them.
    fn into_digesters(mut self) -> Digesters {
        self.flush();
        self.digesters
    }
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && !self.digesters.is_empty() {
            self.pending.extend_from_slice(&buf[..n]);
            if self.pending.len() >= DIGEST_PIECE {
                self.flush();
            }
        }
        self.pos += n as u64;
        self.pb.set_position(self.pos);
        Ok(n)
    }
}

/// Chunks a stream and ships full batches to the store.
struct StreamBatcher {
    kind: StreamKind,
    chunker: GuestChunker,
    batch: Vec<Chunk>,
    batch_bytes: usize,
    tx: crossbeam_channel::Sender<Result<Msg>>,
}

impl StreamBatcher {
    fn new(kind: StreamKind, config: &Config, gear: &Arc<Gear>, tx: crossbeam_channel::Sender<Result<Msg>>) -> Self {
        let chunker = GuestChunker::new(config.chunker, config.hole_block_size, gear.clone());
        StreamBatcher { kind, chunker, batch: Vec::new(), batch_bytes: 0, tx }
    }

    fn push(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let (batch, bytes) = (&mut self.batch, &mut self.batch_bytes);
        self.chunker.push(offset, data, &mut |c| {
            *bytes += c.data.len();
            batch.push(c);
        });
        if self.batch_bytes >= BATCH_BYTES {
            self.ship()?;
        }
        Ok(())
    }

    fn ship(&mut self) -> std::io::Result<()> {
        self.batch_bytes = 0;
        let chunks = std::mem::take(&mut self.batch);
        if !chunks.is_empty() && self.tx.send(Ok(Msg::Chunks(self.kind, chunks))).is_err() {
            return Err(std::io::Error::other("archive stopped"));
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<u64> {
        let batch = &mut self.batch;
        self.chunker.finish(&mut |c| batch.push(c));
        self.ship()?;
        Ok(self.chunker.hole_bytes)
    }
}

/// Guest bytes held to put pieces back in guest order. `qemu-img convert`
/// writes clusters from several coroutines, so host order (the stream's order)
/// is guest order only roughly; sorting within this window makes the chunker
/// see the same runs — and cut the same chunks — as for the raw disk.
const REORDER_WINDOW: usize = 32 << 20;

/// Guest pieces that come further out of order than [`REORDER_WINDOW`] (an
/// image a hypervisor wrote itself keeps clusters in the order the guest first
/// touched them): from the first such piece on, every piece is appended to an
/// unnamed temporary file in the cache directory, and at the end the pieces are
/// read back and chunked in guest order. Chunked as they came, each cluster was
/// a run of its own, cut at its edges: such an image shared almost no chunks
/// with its own raw disk (1.25 GB of 1.34 GB new, measured; README, "Performance").
/// Appending, not writing at guest offsets, keeps the file's writes sequential.
struct Spill {
    file: std::fs::File,
    dir: std::path::PathBuf,
    len: u64,
    /// Guest offset → (offset in the file, length) of every spilled piece.
    pieces: BTreeMap<u64, (u64, usize)>,
}

impl Spill {
    /// An unnamed file in `dir` (`O_TMPFILE`: nothing to clean up after a
    /// crash); where the filesystem has no `O_TMPFILE`, a random name unlinked at once.
    fn create(dir: &std::path::Path) -> std::io::Result<Spill> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir) {
            Ok(f) => f,
            Err(_) => {
                let path = dir.join(format!(".spill-{:016x}", rand::random::<u64>()));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                f
            }
        };
        Ok(Spill { file, dir: dir.to_path_buf(), len: 0, pieces: BTreeMap::new() })
    }

    fn put(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, self.len).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "writing guest data that came out of order to a temporary file in {} (it may need up to the image's size): {e}",
                    self.dir.display()
                ),
            )
        })?;
        self.pieces.insert(offset, (self.len, data.len()));
        self.len += data.len() as u64;
        Ok(())
    }

    /// Pushes every spilled piece, in guest order.
    fn drain_into(self, guest: &mut StreamBatcher) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 1 << 20];
        for (&offset, &(at, len)) in &self.pieces {
            let mut done = 0usize;
            while done < len {
                let n = (len - done).min(buf.len());
                self.file.read_exact_at(&mut buf[..n], at + done as u64)?;
                guest.push(offset + done as u64, &buf[..n])?;
                done += n;
            }
        }
        Ok(())
    }
}

/// A decomposer's two outputs (guest pieces, literal stream), each through its own chunker.
struct DecomposerSink {
    guest: StreamBatcher,
    literal: StreamBatcher,
    literal_pos: u64,
    reorder: BTreeMap<u64, Vec<u8>>,
    reorder_bytes: usize,
    /// The end of the guest data pushed so far (the highest).
    pushed_end: u64,
    /// Where a [`Spill`] is made (the cache directory); `None` once one could not be.
    spill_dir: Option<std::path::PathBuf>,
    spill: Option<Spill>,
}

impl DecomposerSink {
    fn new(guest: StreamBatcher, literal: StreamBatcher, spill_dir: Option<std::path::PathBuf>) -> Self {
        DecomposerSink {
            guest,
            literal,
            literal_pos: 0,
            reorder: Default::default(),
            reorder_bytes: 0,
            pushed_end: 0,
            spill_dir,
            spill: None,
        }
    }

    fn push_guest(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.pushed_end = self.pushed_end.max(offset + data.len() as u64);
        self.guest.push(offset, data)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        while let Some((off, data)) = self.reorder.pop_first() {
            self.push_guest(off, &data)?;
        }
        self.reorder_bytes = 0;
        if let Some(spill) = self.spill.take() {
            spill.drain_into(&mut self.guest)?;
        }
        self.literal.finish()?;
        Ok(())
    }

    /// Starts spilling with the piece at `offset` (behind what was pushed) and
    /// everything still held; false when no spill file can be made (then this
    /// image is chunked in the order it comes, as before spilling existed).
    fn start_spill(&mut self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        let Some(dir) = self.spill_dir.clone() else { return Ok(false) };
        let mut spill = match Spill::create(&dir) {
            Ok(s) => s,
            Err(e) => {
                crate::util::warn_once(&format!(
                    "cannot make a temporary file in {} for guest data out of order ({e}): images whose clusters are far from guest order are chunked in file order and deduplicate less",
                    dir.display()
                ));
                self.spill_dir = None;
                return Ok(false);
            }
        };
        tracing::debug!(
            guest_offset = offset,
            behind = self.pushed_end,
            "guest data out of order beyond the reorder window: spilling to a temporary file"
        );
        spill.put(offset, data)?;
        while let Some((o, d)) = self.reorder.pop_first() {
            spill.put(o, &d)?;
        }
        self.reorder_bytes = 0;
        self.spill = Some(spill);
        Ok(true)
    }
}

impl qcow2::DecomposeSink for DecomposerSink {
    fn guest(&mut self, guest_offset: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(spill) = &mut self.spill {
            return spill.put(guest_offset, data);
        }
        self.reorder.insert(guest_offset, data.to_vec());
        self.reorder_bytes += data.len();
        while self.reorder_bytes > REORDER_WINDOW {
            let (off, d) = self.reorder.pop_first().expect("non-empty while over the window");
            self.reorder_bytes -= d.len();
            if off < self.pushed_end && self.start_spill(off, &d)? {
                return Ok(());
            }
            self.push_guest(off, &d)?;
        }
        Ok(())
    }
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.literal.push(self.literal_pos, data)?;
        self.literal_pos += data.len() as u64;
        Ok(())
    }
}

const HEAD_LEN: usize = 64 << 10;

/// The reader thread's work: detect the format, then read the image through its layout.
// Everything the thread owns, moved in at its start; a struct would only be unpacked again.
#[allow(clippy::too_many_arguments)]
fn read_image(
    reader: Box<dyn Read + Send>,
    digesters: Digesters,
    config: &Config,
    gear: &Arc<Gear>,
    declared: Option<&str>,
    policy: &qcow2::Policy,
    size_hint: Option<u64>,
    spill_dir: Option<std::path::PathBuf>,
    tx: crossbeam_channel::Sender<Result<Msg>>,
    pb: SharedProgress,
) -> (Result<()>, Digesters) {
    let mut tee = TeeReader::new(reader, digesters, pb);
    let result = (|| -> Result<()> {
        let mut head = vec![0u8; HEAD_LEN];
        let n = read_full(&mut tee, &mut head).context("reading the image header")?;
        head.truncate(n);
        let detected = detect::detect(&head);
        let kind = detect::decide(declared, &detected)?;
        let mut input = std::io::Cursor::new(head).chain(&mut tee);
        let mut guest = StreamBatcher::new(StreamKind::Guest, config, gear, tx.clone());
        let shape = if kind == FormatKind::Qcow2 {
            let literal = StreamBatcher::new(StreamKind::Literal, config, gear, tx.clone());
            let mut sink = DecomposerSink::new(guest, literal, spill_dir.clone());
            let d = qcow2::decompose(&mut input, size_hint, policy, &mut sink)?;
            sink.finish()?;
            guest = sink.guest;
            Shape::Qcow2(d)
        } else if crate::format::decomposes(kind) {
            let literal = StreamBatcher::new(StreamKind::Literal, config, gear, tx.clone());
            let mut sink = DecomposerSink::new(guest, literal, spill_dir.clone());
            let d = crate::format::decompose(kind, &mut input, size_hint, policy, &mut sink)?;
            sink.finish()?;
            guest = sink.guest;
            Shape::Container(d)
        } else {
            // Raw and every format imgarc does not decompose: the file is the stream.
            let mut offset = 0u64;
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = read_full(&mut input, &mut buf).with_context(|| format!("reading the image at byte {offset}"))?;
                if n == 0 {
                    break;
                }
                guest.push(offset, &buf[..n])?;
                offset += n as u64;
            }
            Shape::Raw { virtual_size: detected.virtual_size }
        };
        let mut rest = [0u8; 1];
        if input.read(&mut rest)? != 0 {
            bail!("the image layout ended before the end of the file (internal error)");
        }
        let hole_bytes = guest.finish()?;
        let logical_bytes = tee.pos;
        let _ = tx.send(Ok(Msg::End { logical_bytes, hole_bytes, detected: kind, shape: Box::new(shape) }));
        Ok(())
    })();
    (result, tee.into_digesters())
}

pub fn archive(
    repo: &Repository,
    index: &mut Index,
    reader: Box<dyn Read + Send>,
    req: ArchiveRequest,
    progress: &SharedProgress,
) -> Result<ArchiveOutcome> {
    archive_as(repo, index, reader, req, None, progress)
}

/// Who a snapshot says it is when it is not a new archive of now: `imgarc copy`
/// keeps the source snapshot's time and hostname (retention depends on the time)
/// and records where it came from.
#[derive(Debug, Clone)]
pub struct SnapshotOrigin {
    pub time: String,
    pub hostname: String,
    pub copied_from: crate::repository::snapshot::CopiedFrom,
}

/// [`archive`], with the snapshot's time, hostname and `copied_from` taken from `origin` when given.
pub fn archive_as(
    repo: &Repository,
    index: &mut Index,
    reader: Box<dyn Read + Send>,
    req: ArchiveRequest,
    origin: Option<&SnapshotOrigin>,
    progress: &SharedProgress,
) -> Result<ArchiveOutcome> {
    let started = Instant::now();
    let time = origin.map_or_else(crate::util::now_rfc3339, |o| o.time.clone());
    let mut digest_names = req.digests.clone();
    for k in req.expected_digests.keys() {
        if !digest_names.contains(k) {
            digest_names.push(k.clone());
        }
    }
    let digesters = Digesters::start(&digest_names);
    let config = repo.config().clone();
    let config_copy = config.clone();
    let expected_chunks = req.expected_size.map_or(0, |s| (s / config.chunker.avg_size as u64) as usize);
    let project = req.project.as_deref().filter(|p| !p.is_empty());
    if repo.keys().is_some() && config.dedup_scope == DedupScope::Project && project.is_none() {
        // The repository-wide scope would let this image share chunks with any other
        // unattributed one; an operator says which tenant it belongs to instead.
        bail!("this repository's dedup scope is `project`, and the image has no project: give --project PROJECT (a Glance source's owner is used when it has one)");
    }
    let mut store = crate::store::ChunkStore::new(repo, &*index, expected_chunks, project)?;
    let gear = Gear::for_chunker_key(repo.keys().map(|k| k.chunker_key()));
    let recipe_gear = gear.clone();

    let (tx, rx) = bounded::<Result<Msg>>(2);
    let pb = progress.clone();
    let declared = req.declared_format.clone();
    let policy = req.qcow2_policy.clone();
    let size_hint = req.expected_size;
    let spill_dir = index.path().parent().map(std::path::Path::to_path_buf);
    let reader_thread = std::thread::Builder::new().name("read".into()).spawn(move || {
        let (result, digesters) =
            read_image(reader, digesters, &config, &gear, declared.as_deref(), &policy, size_hint, spill_dir, tx.clone(), pb);
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
        digesters
    })?;

    let mut extents: Vec<Extent> = Vec::new();
    let mut literal_extents: Vec<Extent> = Vec::new();
    let mut end = None;
    for msg in rx.iter() {
        match msg? {
            Msg::Chunks(StreamKind::Guest, chunks) => extents.extend(store.store_chunks(chunks)?),
            Msg::Chunks(StreamKind::Literal, chunks) => literal_extents.extend(store.store_chunks(chunks)?),
            Msg::End { logical_bytes, hole_bytes, detected, shape } => end = Some((logical_bytes, hole_bytes, detected, shape)),
        }
    }
    let digesters = reader_thread.join().map_err(|_| anyhow!("reader thread panicked"))?;
    let (logical_bytes, hole_bytes, detected, shape) = end.ok_or_else(|| anyhow!("the image could not be read to its end"))?;
    if let Some(exp) = req.expected_size {
        if exp != logical_bytes {
            bail!("the source announced {exp} bytes but delivered {logical_bytes}: truncated or changed while reading; no snapshot stored");
        }
    }
    // Out-of-order layouts may deliver pieces in any order; the list is by offset.
    extents.sort_by_key(|e| e.offset);
    // Every chunk the snapshot's streams use, collected as they are stored:
    // the reference counts must never depend on reading a tree back.
    let mut recipe_ids: Vec<Id> = Vec::new();
    // A decomposed container's recipe is a small byte stream of its own, chunked like any other.
    let mut store_recipe = |store: &mut crate::store::ChunkStore, recipe: &[u8], literal_len: u64| -> Result<_> {
        let mut chunker = GuestChunker::new(config_copy.chunker, u32::MAX, recipe_gear.clone());
        let mut recipe_chunks = Vec::new();
        chunker.push(0, recipe, &mut |c| recipe_chunks.push(c));
        chunker.finish(&mut |c| recipe_chunks.push(c));
        let recipe_extents = store.store_chunks(recipe_chunks)?;
        recipe_ids.extend(recipe_extents.iter().map(|e| e.id));
        Ok((store.store_extents(recipe.len() as u64, &recipe_extents)?, store.store_extents(literal_len, &literal_extents)?))
    };
    let (layout, virtual_bytes, image, opaque) = match *shape {
        Shape::Raw { .. } if detected.is_guest_disk() => (Layout::Raw, Some(logical_bytes), None, None),
        Shape::Raw { virtual_size } => {
            // A container imgarc does not parse: its bytes are stored, not its guest disk, so
            // the file length is no virtual size and conversions must refuse it (restore.rs).
            let why = format!("{} is not decomposed; the snapshot holds the container file, not its guest disk", detected.name());
            (Layout::Raw, virtual_size, None, Some(why))
        }
        Shape::Qcow2(d) => {
            let (recipe, literals) = store_recipe(&mut store, &d.recipe, d.info.literal_stream_bytes)?;
            let info = serde_json::to_value(&d.info)?;
            (Layout::Qcow2 { recipe, literals }, Some(d.info.virtual_size), Some(info), d.opaque)
        }
        Shape::Container(d) => {
            let (recipe, literals) = store_recipe(&mut store, &d.recipe, d.literal_stream_bytes)?;
            (Layout::Container { recipe, literals }, Some(d.virtual_size), Some(d.info), d.opaque)
        }
    };
    // The guest stream spans the virtual disk (a decomposed container) or the file (raw layout).
    let guest_stream_size = match layout {
        Layout::Qcow2 { .. } | Layout::Container { .. } => virtual_bytes.unwrap_or(0),
        Layout::Raw => logical_bytes,
    };
    let guest = store.store_extents(guest_stream_size, &extents)?;
    let stats = store.finish()?;
    let digests = digesters.finish()?;
    for (alg, want) in &req.expected_digests {
        let got = digests.get(alg).map(String::as_str).unwrap_or("");
        if !got.eq_ignore_ascii_case(want) {
            bail!("{alg} of the bytes read is {got}, but the source says {want}: the image is damaged or was changed; no snapshot stored");
        }
    }
    let recorded: BTreeMap<String, String> =
        digests.into_iter().filter(|(k, _)| req.digests.contains(k) || req.expected_digests.contains_key(k)).collect();
    let seconds = started.elapsed().as_secs_f64();
    let snap = Snapshot {
        version: crate::repository::snapshot::SNAPSHOT_VERSION,
        name: req.name.clone(),
        tags: req.tags.clone(),
        time,
        hostname: origin.map_or_else(crate::util::hostname, |o| o.hostname.clone()),
        source: req.source,
        logical_bytes,
        virtual_bytes,
        format: detected.name().to_string(),
        image,
        layout,
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
        copied_from: origin.map(|o| o.copied_from.clone()),
    };
    // Every pack is durable and indexed; only now may a snapshot refer to them.
    let id = repo.save_snapshot(&snap)?;
    let mut referenced: HashSet<Id> = extents.iter().chain(&literal_extents).map(|e| e.id).chain(recipe_ids).collect();
    for stream in snap.streams() {
        referenced.extend(stream.trees.iter().copied());
    }
    index.add_snapshot(&id, &SnapshotHead::of(&snap, &repo.metadata_hasher()), &snap, &referenced)?;
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
        format: detected.name().to_string(),
        opaque,
    })
}

/// Records new source metadata for content the repository already holds: a
/// new snapshot that reuses `previous`'s layout, streams and digests (the same
/// extents — no byte is read or stored) with `name` and `metadata` replaced.
/// Its stats say nothing new was stored. Used by `sync` when only a Glance
/// image's properties changed, with a key that reads the previous snapshot's
/// trees (a write-only host archives the image again instead: see `sync::plan`).
pub fn record_new_metadata(
    repo: &Repository,
    index: &mut Index,
    previous: &Snapshot,
    name: String,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<(Id, Snapshot)> {
    let started = Instant::now();
    let snap = Snapshot {
        name,
        time: crate::util::now_rfc3339(),
        hostname: crate::util::hostname(),
        stats: SnapshotStats {
            chunks: previous.stats.chunks,
            new_chunks: 0,
            new_bytes: 0,
            stored_bytes_added: 0,
            hole_bytes: previous.stats.hole_bytes,
            seconds: started.elapsed().as_secs_f64(),
        },
        metadata,
        // New metadata is this repository's own record, not a copy of another's.
        copied_from: None,
        ..previous.clone()
    };
    // Reading the trees also proves every stream is still intact in the index.
    let referenced =
        crate::index::IndexedRepository::new(repo, index).referenced_ids(&snap).context("the previous snapshot's extent lists")?;
    let id = repo.save_snapshot(&snap)?;
    index.add_snapshot(&id, &SnapshotHead::of(&snap, &repo.metadata_hasher()), &snap, &referenced)?;
    Ok((id, snap))
}

/// The `imgarc archive` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ArchiveOptions {
    /// Image file path, - for standard input, glance:IMAGE or cinder:VOLUME (id or unique name)
    pub source: String,
    /// Snapshot name (default: the file name)
    #[cfg_attr(feature = "clap", arg(long))]
    pub name: Option<String>,
    /// Tag the snapshot (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "tag"))]
    pub tags: Vec<String>,
    /// Whole-file digests to compute and record, e.g. md5,sha512,sha256
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub digest: Vec<String>,
    /// The format the image is declared as (raw, qcow2, …); a declared raw image is never decomposed
    #[cfg_attr(feature = "clap", arg(long))]
    pub disk_format: Option<String>,
    /// Archive a QCOW2 image with a backing file as opaque bytes instead of refusing it
    #[cfg_attr(feature = "clap", arg(long))]
    pub allow_backing_file_opaque: bool,
    /// Archive a QCOW2 image with an external data file as opaque bytes instead of refusing it
    #[cfg_attr(feature = "clap", arg(long))]
    pub allow_data_file_opaque: bool,
    /// The Glance project the image belongs to (recorded as its owner); required for a file in a repository with dedup scope project
    #[cfg_attr(feature = "clap", arg(long, value_name = "PROJECT"))]
    pub project: Option<String>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub spill: SpillOptions,
    /// The `--os-cloud` name recorded for a glance: source.
    #[cfg_attr(feature = "clap", arg(skip))]
    pub cloud: Option<String>,
    /// Cap on the download rate of a glance: source (the global `--limit-download`).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub limit_download: Option<crate::net::ratelimit::RateLimiter>,
}

/// Where and how much the QCOW2 decomposer may spill (clusters read before the table that
/// says what they are). Shared by every operation that archives.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SpillOptions {
    /// Directory for the QCOW2 decomposer's spill file (unlinked at once, mode 0600) [default: the system temp dir]
    #[cfg_attr(feature = "clap", arg(long, env = "IMGARC_SPILL_DIR", value_name = "DIR"))]
    pub spill_dir: Option<std::path::PathBuf>,
    /// Most bytes a QCOW2 image may spill (K=1024, M=2^20, G=2^30); beyond it the rest is stored opaque (exact, and the archive says so)
    #[cfg_attr(feature = "clap", arg(long, default_value = "2G", value_name = "SIZE"))]
    pub spill_limit: String,
}

impl Default for SpillOptions {
    fn default() -> Self {
        SpillOptions { spill_dir: None, spill_limit: "2G".into() }
    }
}

impl SpillOptions {
    /// The default QCOW2 policy with these spill settings.
    pub fn qcow2_policy(&self) -> Result<qcow2::Policy> {
        let mut policy = qcow2::Policy::default();
        if let Some(dir) = &self.spill_dir {
            policy.spill_dir = dir.clone();
        }
        policy.max_spill_bytes = crate::util::parse_size(&self.spill_limit).map_err(|e| anyhow!("--spill-limit: {e:#}"))?;
        Ok(policy)
    }
}

impl ArchiveOptions {
    /// The digests to compute, checked before anything is opened.
    pub fn digests(&self) -> Result<Vec<String>> {
        crate::digest::parse_list(&self.digest.join(","))
    }
}

/// An archive of a source named as on the command line, with what the
/// source let imgarc verify.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceArchiveReport {
    #[serde(flatten)]
    pub outcome: ArchiveOutcome,
    /// Digests the source vouched for and that matched.
    pub verified_digests: Vec<String>,
    /// Digests the source announced that imgarc cannot compute (not checked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unverifiable_digests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a Glance source that nothing could be verified against: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
    /// The source was a Glance image.
    #[serde(skip)]
    pub from_glance: bool,
}

/// The warning for digests the source announced that imgarc cannot check.
pub fn unverifiable_warning(algos: &[String]) -> String {
    format!("the source's {} digest was not checked: imgarc computes {} only", algos.join(", "), crate::digest::SUPPORTED.join(", "))
}

/// The project an image belongs to: its Glance record's `owner`, or `--project`
/// for a file (then recorded as the snapshot's `owner`, which `report --project`
/// groups by). A `--project` that contradicts the record's owner is refused
/// rather than put a tenant's image in another tenant's dedup scope.
fn source_project(metadata: &mut serde_json::Map<String, serde_json::Value>, flag: Option<&str>) -> Result<Option<String>> {
    let owner = metadata.get("owner").and_then(|v| v.as_str()).map(str::to_string);
    match (owner, flag) {
        (Some(owner), Some(flag)) if owner != flag => {
            bail!("--project {flag} contradicts the Glance image's owner {owner}; leave --project out for a Glance source")
        }
        (Some(owner), _) => Ok(Some(owner)),
        (None, Some(flag)) => {
            metadata.insert("owner".into(), flag.into());
            Ok(Some(flag.to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// Opens `opts.source` (a file, `-`, or `glance:IMAGE` through the client
/// `glance` makes) and archives it. The caller holds the archive lock and an
/// index opened as a writer; `bar(total)` makes the progress handle once the
/// source's size is known.
pub fn archive_source(
    repo: &Repository,
    index: &mut Index,
    opts: &ArchiveOptions,
    glance: &dyn Fn() -> Result<crate::openstack::glance::GlanceClient>,
    bar: &dyn Fn(Option<u64>) -> SharedProgress,
) -> Result<SourceArchiveReport> {
    let digests = opts.digests()?;
    let from_glance = opts.source.starts_with("glance:");
    let src = match opts.source.strip_prefix("glance:") {
        Some(image) => crate::source::open_glance(&glance()?, image, opts.cloud.as_deref(), opts.limit_download.clone(), &digests)?,
        None => crate::source::open(&opts.source)?,
    };
    archive_opened(repo, index, opts, src, from_glance, bar)
}

/// Archives a source already opened (by [`archive_source`], or a scratch image of a
/// Cinder volume: `crate::volumes`) with the `opts` flags. `from_glance`: the bytes come
/// from a Glance image, so an image with no digest to check is reported unverified.
pub fn archive_opened(
    repo: &Repository,
    index: &mut Index,
    opts: &ArchiveOptions,
    src: crate::source::OpenedSource,
    from_glance: bool,
    bar: &dyn Fn(Option<u64>) -> SharedProgress,
) -> Result<SourceArchiveReport> {
    let digests = opts.digests()?;
    let verified: Vec<String> = src.expected_digests.keys().cloned().collect();
    let unverifiable = src.unverifiable_digests.clone();
    let mut metadata = src.metadata;
    let project = source_project(&mut metadata, opts.project.as_deref())?;
    let req = ArchiveRequest {
        name: opts.name.clone().unwrap_or(src.default_name),
        tags: opts.tags.clone(),
        source: src.source,
        digests,
        expected_digests: src.expected_digests,
        expected_size: src.size,
        metadata,
        declared_format: opts.disk_format.clone().or(src.declared_format),
        qcow2_policy: qcow2::Policy {
            allow_backing_file_opaque: opts.allow_backing_file_opaque,
            allow_data_file_opaque: opts.allow_data_file_opaque,
            ..opts.spill.qcow2_policy()?
        },
        project,
    };
    let outcome = archive(repo, index, src.reader, req, &bar(src.size))?;
    let warnings = crate::warnings::Warnings::new();
    if !unverifiable.is_empty() {
        warnings.warn(unverifiable_warning(&unverifiable));
    }
    let warnings = warnings.take();
    let unverified = (from_glance && verified.is_empty()).then(|| match warnings.first() {
        Some(w) => w.clone(),
        None => "the Glance image record has no checksum or os_hash_value: archived with the digests imgarc computed".to_string(),
    });
    Ok(SourceArchiveReport { outcome, verified_digests: verified, unverifiable_digests: unverifiable, warnings, unverified, from_glance })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdin_request(name: &str) -> ArchiveRequest {
        ArchiveRequest::raw_unannounced(name, Source::Stdin)
    }
    use crate::backend::faults::{Faulty, Op};

    /// The recipe's chunks are counted as referenced from the ids the archive
    /// stored, not from reading its tree back: with every pack read failing,
    /// the counts are still complete (else a prune would delete the recipe).
    #[test]
    fn qcow2_recipe_chunks_are_referenced_even_when_packs_cannot_be_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let qcow = dir.path().join("disk.qcow2");
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let converted = std::process::Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow).status();
        if !converted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: qemu-img is not available to make a qcow2 image");
            return;
        }
        let local = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let faulty = Faulty::new(local);
        let repo = Repository::init(faulty.clone(), Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut index = Index::open_at(&dir.path().join("index.sqlite"), &repo.config().id).unwrap();
        faulty.fail(Op::Get, "data/");
        let req = ArchiveRequest {
            name: "vm".into(),
            tags: vec![],
            source: Source::File { path: qcow.display().to_string() },
            digests: vec![],
            expected_digests: Default::default(),
            expected_size: None,
            metadata: Default::default(),
            declared_format: Some("qcow2".into()),
            qcow2_policy: Default::default(),
            project: None,
        };
        let file = std::fs::File::open(&qcow).unwrap();
        let out = archive(&repo, &mut index, Box::new(file), req, &crate::progress::none()).unwrap();
        faulty.heal();
        let snap = repo.load_snapshot(&Id::from_hex(&out.snapshot).unwrap()).unwrap();
        let Layout::Qcow2 { recipe, .. } = &snap.layout else { panic!("not decomposed as qcow2: {:?}", snap.layout) };
        let recipe_chunks = crate::index::IndexedRepository::new(&repo, &index).load_extents(recipe).unwrap();
        assert!(!recipe_chunks.is_empty());
        for e in recipe_chunks {
            assert_eq!(index.ref_count(&e.id).unwrap(), 1, "recipe chunk {} is not counted as referenced", e.id.short());
        }
    }

    /// An encrypted repository cuts with the gear table of its chunker key, not
    /// FastCDC's public one: the stored extents are the keyed chunker's, and differ
    /// from what the public table cuts (whose lengths an observer could precompute).
    #[test]
    fn an_encrypted_repository_cuts_with_its_keyed_gear_table() {
        let dir = tempfile::tempdir().unwrap();
        let local = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let config = Config::new(16 << 10, 3).unwrap().with_encryption(Some(crate::crypto::Cipher::XChaCha20Poly1305));
        let password = crate::secret::Secret::new("pw");
        let key =
            crate::repository::NewKey { password: &password, kdf: crate::crypto::keyfile::KdfParams { m_kib: 8, t: 1, p: 1 }, label: "t" };
        let repo = Repository::init_encrypted(local, config, &key).unwrap();
        let mut index = Index::open_at(&dir.path().join("index.sqlite"), &repo.config().id).unwrap();
        let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let req = stdin_request("vm");
        let out = archive(&repo, &mut index, Box::new(std::io::Cursor::new(data.clone())), req, &crate::progress::none()).unwrap();
        let snap = repo.load_snapshot(&Id::from_hex(&out.snapshot).unwrap()).unwrap();
        let stored: Vec<(u64, u32)> = crate::index::IndexedRepository::new(&repo, &index)
            .load_extents(&snap.guest)
            .unwrap()
            .iter()
            .map(|e| (e.offset, e.len))
            .collect();
        let cut = |gear| {
            let mut c = GuestChunker::new(repo.config().chunker, repo.config().hole_block_size, gear);
            let mut v = vec![];
            c.push(0, &data, &mut |ch| v.push((ch.offset, ch.data.len() as u32)));
            c.finish(&mut |ch| v.push((ch.offset, ch.data.len() as u32)));
            v
        };
        assert_eq!(stored, cut(Gear::keyed(repo.keys().unwrap().chunker_key())));
        assert_ne!(stored, cut(Gear::standard()), "the encrypted repository cut where the public table cuts");
    }

    /// An archive whose lock was lost (its refresh kept failing) stops with a
    /// clear error and writes no snapshot: a prune no longer sees its lock.
    #[test]
    fn an_archive_whose_lock_is_lost_stores_no_snapshot() {
        use crate::repository::lock::LockTiming;
        let dir = tempfile::tempdir().unwrap();
        let local = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let faulty = Faulty::new(local);
        let repo = Repository::init(faulty.clone(), Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut index = Index::open_at(&dir.path().join("index.sqlite"), &repo.config().id).unwrap();
        let timing = LockTiming { ttl: std::time::Duration::from_secs(2), refresh: std::time::Duration::from_millis(400) };
        let lock = repo.acquire_lock_timed(false, "archive", timing).unwrap();
        repo.hold_lock(&lock);
        faulty.fail(Op::Put, "locks/");
        let deadline = Instant::now() + timing.ttl;
        while lock.ensure_held().is_ok() {
            assert!(Instant::now() < deadline, "the lost lock was not noticed before its expiry");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        let req = stdin_request("vm");
        let err = archive(&repo, &mut index, Box::new(std::io::Cursor::new(data)), req, &crate::progress::none()).unwrap_err();
        assert!(format!("{err:#}").contains("archive lock on the repository"), "{err:#}");
        assert!(repo.list_snapshot_ids().unwrap().is_empty(), "a snapshot was written after the lock was lost");
    }
}
