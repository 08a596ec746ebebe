//! Restoring a snapshot: rebuilds the image byte-exactly from its extents.
//!
//! Chunks are fetched in batches: neighbouring chunks of one pack are read
//! with one ranged read, decompressed and verified against their BLAKE3 ids in
//! parallel, then written in order by a writer thread (sparse `pwrite` for a
//! file, zeros for holes on a stream) that also feeds the digest threads.
//! Every digest the snapshot records is checked at the end; a file target is
//! written under a temporary name and renamed only when everything matched, so
//! a file under the requested name is always complete. Like restic and borg,
//! restore leaves flushing to disk to the kernel (no fsync): the repository is
//! the durable copy, and an fsync would halve restore speed on these disks.

use crate::digest::{Digesters, Piece};
use crate::format::qcow2;
use crate::ids::Id;
use crate::index::{Index, Location};
use crate::repository::extents::{Extent, StreamRef};
use crate::repository::pack::decode_blob;
use crate::repository::snapshot::{Layout, Snapshot};
use crate::repository::{pack_key, Repository};
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BATCH_BYTES: u64 = 32 << 20;
/// Chunks of one pack closer than this are fetched with one read.
const COALESCE_GAP: u64 = 256 << 10;
const MAX_READ: u64 = 16 << 20;

pub enum Target {
    File(PathBuf),
    Stream(Box<dyn Write + Send>),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    pub bytes: u64,
    pub seconds: f64,
    pub digests: BTreeMap<String, String>,
}

/// A chunk that could not be read intact from any of its locations.
#[derive(Debug, thiserror::Error)]
#[error("chunk {id} (guest offset {offset}) is damaged or missing: {cause}")]
pub struct DamagedChunk {
    pub id: Id,
    pub offset: u64,
    pub cause: String,
}

/// Fetches the data of `extents` (each with its candidate locations), in order.
pub fn fetch_batch(repo: &Repository, extents: &[(Extent, Vec<Location>)]) -> Result<Vec<Vec<u8>>, DamagedChunk> {
    // Group by the first location's pack, coalescing neighbours into ranged reads.
    let mut by_pack: HashMap<Id, Vec<usize>> = HashMap::new();
    for (i, (e, locs)) in extents.iter().enumerate() {
        match locs.first() {
            Some(l) => by_pack.entry(l.pack).or_default().push(i),
            None => return Err(DamagedChunk { id: e.id, offset: e.offset, cause: "not in the index".into() }),
        }
    }
    let mut reads: Vec<(Id, Vec<usize>)> = Vec::new();
    for (pack, mut idxs) in by_pack {
        idxs.sort_by_key(|&i| extents[i].1[0].entry.offset);
        let mut group: Vec<usize> = Vec::new();
        for i in idxs {
            if let Some(&first) = group.first() {
                let start = extents[first].1[0].entry.offset;
                let last = &extents[*group.last().expect("non-empty")].1[0].entry;
                let this = &extents[i].1[0].entry;
                let end = last.offset + last.stored_len as u64;
                if this.offset > end + COALESCE_GAP || this.offset + this.stored_len as u64 - start > MAX_READ {
                    reads.push((pack, std::mem::take(&mut group)));
                }
            }
            group.push(i);
        }
        if !group.is_empty() {
            reads.push((pack, group));
        }
    }
    let results: Vec<Vec<(usize, Result<Vec<u8>, DamagedChunk>)>> = reads
        .par_iter()
        .map(|(pack, group)| {
            let first = &extents[group[0]].1[0].entry;
            let last = &extents[*group.last().expect("non-empty")].1[0].entry;
            let start = first.offset;
            let len = last.offset + last.stored_len as u64 - start;
            let span = repo.backend().get_range(&pack_key(pack), start, len);
            group
                .iter()
                .map(|&i| {
                    let (e, locs) = &extents[i];
                    let l = &locs[0];
                    let primary = match &span {
                        Ok(bytes) => {
                            let s = (l.entry.offset - start) as usize;
                            decode_blob(&l.entry, &bytes[s..s + l.entry.stored_len as usize])
                        }
                        Err(err) => Err(anyhow!("pack {}: {err}", pack.short())),
                    };
                    let data = match primary {
                        Ok(d) => Ok(d),
                        Err(first_err) => {
                            // Fall back to any other copy of the chunk.
                            let mut cause = format!("{first_err:#}");
                            let mut found = None;
                            for alt in &locs[1..] {
                                match repo.read_blob(&alt.pack, &alt.entry) {
                                    Ok(d) => {
                                        found = Some(d);
                                        break;
                                    }
                                    Err(e2) => cause = format!("{cause}; {e2:#}"),
                                }
                            }
                            found.ok_or(DamagedChunk { id: e.id, offset: e.offset, cause })
                        }
                    };
                    (i, data.and_then(|d| check_len(e, d)))
                })
                .collect()
        })
        .collect();
    let mut out: Vec<Option<Vec<u8>>> = vec![None; extents.len()];
    for (i, r) in results.into_iter().flatten() {
        out[i] = Some(r?);
    }
    Ok(out.into_iter().map(|d| d.expect("every extent fetched")).collect())
}

fn check_len(e: &Extent, d: Vec<u8>) -> Result<Vec<u8>, DamagedChunk> {
    if d.len() != e.len as usize {
        return Err(DamagedChunk {
            id: e.id,
            offset: e.offset,
            cause: format!("chunk holds {} bytes, the extent needs {}", d.len(), e.len),
        });
    }
    Ok(d)
}

enum Write_ {
    Data(u64, Vec<u8>),
}

/// Writes one stored stream (`size` bytes) to `target`: sparse for a file.
fn restore_stream(
    repo: &Repository,
    index: &Index,
    stream: &StreamRef,
    size: u64,
    expected: &BTreeMap<String, String>,
    target: Target,
    progress: &ProgressBar,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let extents = index.load_extents(repo, stream).context("cannot read the snapshot's extent list")?;
    let digest_names: Vec<String> = expected.keys().cloned().collect();
    let digesters = Digesters::start(&digest_names);

    let final_path = match &target {
        Target::File(p) => Some(p.clone()),
        Target::Stream(_) => None,
    };
    let (tmp_path, file) = match &target {
        Target::File(path) => {
            let tmp = partial_path(path);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            f.set_len(size).with_context(|| format!("cannot size {}", tmp.display()))?;
            (Some(tmp), Some(f))
        }
        Target::Stream(_) => (None, None),
    };
    let mut stream = match target {
        Target::Stream(w) => Some(w),
        Target::File(_) => None,
    };

    let (tx, rx) = bounded::<Write_>(2 * 128);
    let pb = progress.clone();
    let writer = std::thread::Builder::new().name("restore-write".into()).spawn(move || -> Result<Digesters> {
        let mut pos = 0u64;
        let zeros = vec![0u8; 1 << 20];
        let fill = |to: u64, stream: &mut Option<Box<dyn Write + Send>>, digesters: &Digesters, pos: &mut u64| -> Result<()> {
            if to > *pos {
                digesters.feed(Piece::Zeros(to - *pos));
                if let Some(w) = stream.as_mut() {
                    let mut n = to - *pos;
                    while n > 0 {
                        let k = n.min(zeros.len() as u64) as usize;
                        w.write_all(&zeros[..k]).context("writing the output")?;
                        n -= k as u64;
                    }
                }
                *pos = to;
            }
            Ok(())
        };
        for Write_::Data(off, data) in rx {
            fill(off, &mut stream, &digesters, &mut pos)?;
            match (&file, stream.as_mut()) {
                (Some(f), _) => f.write_all_at(&data, off).context("writing the output file")?,
                (None, Some(w)) => w.write_all(&data).context("writing the output")?,
                (None, None) => unreachable!("a target is either a file or a stream"),
            }
            pos = off + data.len() as u64;
            let len = data.len();
            digesters.feed(Piece::Data(Arc::new(data), 0..len));
            pb.set_position(pos);
        }
        fill(size, &mut stream, &digesters, &mut pos)?;
        if let Some(w) = stream.as_mut() {
            w.flush().context("flushing the output")?;
        }
        pb.set_position(size);
        Ok(digesters)
    })?;

    let fetch = (|| -> Result<()> {
        let mut start = 0;
        while start < extents.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < extents.len() && (bytes < BATCH_BYTES || end == start) {
                bytes += extents[end].len as u64;
                end += 1;
            }
            let with_locs: Vec<(Extent, Vec<Location>)> =
                extents[start..end].iter().map(|e| Ok((*e, index.locations(&e.id)?))).collect::<Result<_>>()?;
            let datas = fetch_batch(repo, &with_locs).map_err(|d| damaged_error(repo, index, d))?;
            for ((e, _), d) in with_locs.into_iter().zip(datas) {
                if tx.send(Write_::Data(e.offset, d)).is_err() {
                    return Ok(()); // the writer failed; its error is reported below
                }
            }
            start = end;
        }
        Ok(())
    })();
    drop(tx);
    let written = writer.join().map_err(|_| anyhow!("restore writer panicked"));
    let digests = finish_output(fetch.and_then(|()| written?), expected, tmp_path, final_path)?;
    Ok(RestoreOutcome { bytes: size, seconds: started.elapsed().as_secs_f64(), digests })
}

/// Ends a restore: the digests must match what the snapshot recorded; then the
/// output file takes its final name, or on any failure its temporary file goes.
fn finish_output(
    written: Result<Digesters>,
    expected: &BTreeMap<String, String>,
    tmp: Option<PathBuf>,
    final_path: Option<PathBuf>,
) -> Result<BTreeMap<String, String>> {
    let result = written.and_then(|d| d.finish()).and_then(|digests| {
        for (alg, want) in expected {
            if digests.get(alg) != Some(want) {
                bail!("restored bytes have {alg} {}, the snapshot recorded {want}", digests.get(alg).map_or("?", |s| s.as_str()));
            }
        }
        Ok(digests)
    });
    match (result, tmp, final_path) {
        (Ok(digests), Some(tmp), Some(path)) => {
            std::fs::rename(&tmp, &path).with_context(|| format!("cannot move the restored image to {}", path.display()))?;
            Ok(digests)
        }
        (Ok(digests), _, _) => Ok(digests),
        (Err(e), tmp, _) => {
            if let Some(tmp) = tmp {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e)
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".imgarc-partial");
    path.with_file_name(name)
}

/// Turns a damaged chunk into an error naming every snapshot that uses it.
fn damaged_error(repo: &Repository, index: &Index, d: DamagedChunk) -> anyhow::Error {
    let users = crate::check::snapshots_using(repo, index, &[d.id]).unwrap_or_default();
    let names: Vec<String> = users.get(&d.id).into_iter().flatten().map(|(id, name)| format!("{} ({name})", id.short())).collect();
    anyhow!(
        "{d}; snapshots affected: {}; run `imgarc check --read-data`",
        if names.is_empty() { "unknown".into() } else { names.join(", ") }
    )
}

/// What a restore writes.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `None`: the archived file byte-exactly. `raw`: the guest disk. `qcow2`: a clean QCOW2 v3.
    pub disk_format: Option<String>,
    /// Compress clusters of a `qcow2` conversion (zlib, as `qemu-img convert -c`).
    pub compress: bool,
}

pub fn restore(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    target: Target,
    opts: &RestoreOptions,
    progress: &ProgressBar,
) -> Result<RestoreOutcome> {
    let no_digests = BTreeMap::new();
    if matches!(opts.disk_format.as_deref(), Some("raw" | "qcow2")) {
        ensure_guest_stream_is_disk(repo, index, snap)?;
    }
    match (opts.disk_format.as_deref(), &snap.layout) {
        (None, Layout::Raw) => restore_stream(repo, index, &snap.guest, snap.logical_bytes, &snap.digests, target, progress),
        (Some("raw"), Layout::Raw) if !opts.compress => {
            restore_stream(repo, index, &snap.guest, snap.logical_bytes, &snap.digests, target, progress)
        }
        (None, Layout::Qcow2 { recipe, literals }) => {
            let recipe_bytes = read_small_stream(repo, index, recipe)?;
            let unchecked = qcow2::decode_recipe(&recipe_bytes).map(|r| r.unchecked_compressed()).unwrap_or(0);
            if unchecked > 0 && snap.digests.is_empty() {
                // A version-1 recipe has no per-cluster checks and no whole-file digest backs it.
                eprintln!(
                    "warning: {unchecked} compressed clusters of this snapshot are rebuilt with their length checked only (recipe version 1, no image digest recorded)"
                );
            }
            let mut src =
                TwoStreams { guest: StreamReader::open(repo, index, &snap.guest)?, literal: StreamReader::open(repo, index, literals)? };
            write_sequential(snap.logical_bytes, &snap.digests, target, progress, |out| {
                qcow2::rebuild(&recipe_bytes, &mut src, out).map_err(|e| anyhow!("rebuilding the qcow2 file: {e}"))
            })
        }
        (Some("raw"), _) => {
            if opts.compress {
                bail!("--compress applies to --disk-format qcow2 only");
            }
            restore_stream(repo, index, &snap.guest, snap.guest.size, &no_digests, target, progress)
        }
        (Some("qcow2"), _) => {
            let extents = index.load_extents(repo, &snap.guest)?;
            let ranges = merge_ranges(&extents);
            let mut src = TwoStreams { guest: StreamReader::open(repo, index, &snap.guest)?, literal: StreamReader::empty(repo, index) };
            let virtual_size = snap.guest.size;
            write_sequential_unknown(target, progress, |out| {
                qcow2::write_qcow2(virtual_size, &ranges, &mut src, opts.compress, out).map_err(|e| anyhow!("writing qcow2: {e}"))
            })
        }
        (Some(other), _) => bail!("--disk-format {other:?}: imgarc converts to raw or qcow2"),
    }
}

/// A conversion reads the guest stream as the virtual disk; refuse when it is not. The rule
/// is derived from what every snapshot records: a raw layout holds the disk only when the
/// file was raw (or ISO); a qcow2 layout only when its recipe is not opaque (an opaque
/// decomposition stopped interpreting the image, so its guest stream is incomplete).
fn ensure_guest_stream_is_disk(repo: &Repository, index: &Index, snap: &Snapshot) -> Result<()> {
    let refuse = |why: String| {
        anyhow!(
            "cannot convert this snapshot: {why}; `restore` without --disk-format gives back the archived {} file byte for byte",
            snap.format
        )
    };
    match &snap.layout {
        Layout::Raw => match crate::format::detect::FormatKind::from_name(&snap.format) {
            Some(kind) if kind.is_guest_disk() => Ok(()),
            _ => Err(refuse(format!(
                "it holds a {} container as opaque bytes (imgarc does not decompose {0}), not the guest disk",
                snap.format
            ))),
        },
        Layout::Qcow2 { recipe, .. } => {
            let recipe =
                qcow2::decode_recipe(&read_small_stream(repo, index, recipe)?).map_err(|e| anyhow!("the snapshot's layout recipe: {e}"))?;
            if recipe.flags & qcow2::FLAG_OPAQUE == 0 {
                return Ok(());
            }
            let reason = snap.image.as_ref().and_then(|i| i.get("opaque")).and_then(|r| r.as_str()).unwrap_or("reason not recorded");
            Err(refuse(format!("the {} image was stored opaque ({reason}), so its guest disk is not in the repository", snap.format)))
        }
    }
}

/// Contiguous allocated ranges of the guest stream.
fn merge_ranges(extents: &[Extent]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents {
        match out.last_mut() {
            Some((start, len)) if *start + *len == e.offset => *len += e.len as u64,
            _ => out.push((e.offset, e.len as u64)),
        }
    }
    out
}

/// A small stored stream (a layout recipe) read whole; larger than a recipe may be is refused.
pub(crate) fn read_small_stream(repo: &Repository, index: &Index, stream: &StreamRef) -> Result<Vec<u8>> {
    if stream.size > qcow2::MAX_RECIPE_BYTES {
        bail!("layout recipe of {} bytes is implausibly large", stream.size);
    }
    let mut r = StreamReader::open(repo, index, stream)?;
    let mut buf = vec![0u8; stream.size as usize];
    r.read_at(0, &mut buf)?;
    Ok(buf)
}

/// Decoded chunks a `StreamReader` keeps. Layouts read a stream roughly in
/// order (qemu-img writes clusters from several coroutines, so guest order
/// jitters by a few MiB); a cache larger than one read-ahead window absorbs that.
const STREAM_CACHE_BYTES: u64 = 64 << 20;

/// Random access to a stored stream, fetching chunks in read-ahead windows.
pub struct StreamReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    extents: Vec<Extent>,
    /// Decoded chunks, by extent index.
    cache: std::collections::BTreeMap<usize, Vec<u8>>,
    cache_bytes: u64,
    /// The next window, being fetched in the background while this one is consumed.
    prefetch: Option<Prefetch>,
}

type Fetched = Result<Vec<Vec<u8>>, DamagedChunk>;

struct Prefetch {
    wanted: Vec<usize>,
    handle: std::thread::JoinHandle<Fetched>,
}

impl<'a> StreamReader<'a> {
    pub fn open(repo: &'a Repository, index: &'a Index, stream: &StreamRef) -> Result<Self> {
        Ok(StreamReader { extents: index.load_extents(repo, stream)?, ..Self::empty(repo, index) })
    }

    fn empty(repo: &'a Repository, index: &'a Index) -> Self {
        StreamReader { repo, index, extents: Vec::new(), cache: Default::default(), cache_bytes: 0, prefetch: None }
    }

    /// Extent `first` and the uncached extents after it, one batch's worth, with their locations.
    fn window(&self, first: usize) -> Result<(Vec<usize>, Vec<(Extent, Vec<Location>)>)> {
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        let mut i = first;
        while i < self.extents.len() && (bytes < BATCH_BYTES || wanted.is_empty()) {
            if !self.cache.contains_key(&i) {
                wanted.push(i);
                bytes += self.extents[i].len as u64;
            }
            i += 1;
        }
        let with_locs = wanted.iter().map(|&i| Ok((self.extents[i], self.index.locations(&self.extents[i].id)?))).collect::<Result<_>>()?;
        Ok((wanted, with_locs))
    }

    /// Makes extent `first` available: from the background fetch if it has it,
    /// else fetched now; then starts fetching the window after it.
    fn load_window(&mut self, first: usize) -> Result<()> {
        let (wanted, fetched) = match self.prefetch.take() {
            Some(p) if p.wanted.contains(&first) => {
                let fetched = p.handle.join().map_err(|_| anyhow!("prefetch thread panicked"))?;
                (p.wanted, fetched)
            }
            other => {
                if let Some(p) = other {
                    let _ = p.handle.join(); // a jump elsewhere: that window is not needed now
                }
                let (wanted, with_locs) = self.window(first)?;
                (wanted, fetch_batch(self.repo, &with_locs))
            }
        };
        let datas = fetched.map_err(|d| damaged_error(self.repo, self.index, d))?;
        let next = wanted.last().map_or(first, |&l| l + 1);
        for (i, d) in wanted.into_iter().zip(datas) {
            self.cache_bytes += d.len() as u64;
            self.cache.insert(i, d);
        }
        // Evict whatever lies furthest from where reading is now.
        while self.cache_bytes > STREAM_CACHE_BYTES && self.cache.len() > 1 {
            let lo = *self.cache.keys().next().expect("non-empty");
            let hi = *self.cache.keys().next_back().expect("non-empty");
            let victim = if first.abs_diff(lo) >= first.abs_diff(hi) { lo } else { hi };
            if victim == first {
                break;
            }
            if let Some(d) = self.cache.remove(&victim) {
                self.cache_bytes -= d.len() as u64;
            }
        }
        if next < self.extents.len() {
            let (wanted, with_locs) = self.window(next)?;
            if !wanted.is_empty() {
                let repo = self.repo.clone();
                let handle = std::thread::Builder::new().name("restore-prefetch".into()).spawn(move || fetch_batch(&repo, &with_locs))?;
                self.prefetch = Some(Prefetch { wanted, handle });
            }
        }
        Ok(())
    }

    pub fn read_at(&mut self, mut pos: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let i = self.extents.partition_point(|e| e.end() <= pos);
            let n;
            match self.extents.get(i).copied() {
                Some(e) if e.offset <= pos => {
                    if !self.cache.contains_key(&i) {
                        self.load_window(i)?;
                    }
                    let data = &self.cache[&i];
                    let from = (pos - e.offset) as usize;
                    n = (data.len() - from).min(buf.len());
                    buf[..n].copy_from_slice(&data[from..from + n]);
                }
                next => {
                    // A hole: zeros up to the next extent.
                    let gap = next.map_or(u64::MAX, |e| e.offset - pos);
                    n = gap.min(buf.len() as u64) as usize;
                    buf[..n].fill(0);
                }
            }
            pos += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

struct TwoStreams<'a> {
    guest: StreamReader<'a>,
    literal: StreamReader<'a>,
}

impl qcow2::RebuildSource for TwoStreams<'_> {
    fn read_guest(&mut self, guest_offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.guest.read_at(guest_offset, buf).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
    fn read_literal(&mut self, literal_offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.literal.read_at(literal_offset, buf).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}

/// A writer that feeds every byte to the digest threads and the progress bar.
struct DigestWriter<'a> {
    inner: &'a mut dyn Write,
    digesters: &'a Digesters,
    pos: u64,
    pb: &'a ProgressBar,
}

impl Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if !self.digesters.is_empty() {
            self.digesters.feed(Piece::Data(Arc::new(buf[..n].to_vec()), 0..n));
        }
        self.pos += n as u64;
        self.pb.set_position(self.pos);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a sequential producer into `target` (temporary name for a file), then
/// checks the length and every expected digest.
fn write_sequential(
    size: u64,
    expected: &BTreeMap<String, String>,
    target: Target,
    progress: &ProgressBar,
    produce: impl FnOnce(&mut dyn Write) -> Result<u64>,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let digesters = Digesters::start(&expected.keys().cloned().collect::<Vec<_>>());
    let (tmp, final_path, mut sink): (Option<PathBuf>, Option<PathBuf>, Box<dyn Write>) = match target {
        Target::File(path) => {
            let tmp = partial_path(&path);
            let f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            (Some(tmp), Some(path), Box::new(std::io::BufWriter::with_capacity(4 << 20, f)))
        }
        Target::Stream(w) => (None, None, Box::new(w)),
    };
    let result = (|| -> Result<()> {
        let mut w = DigestWriter { inner: &mut *sink, digesters: &digesters, pos: 0, pb: progress };
        let n = produce(&mut w)?;
        w.flush().context("writing the output")?;
        if size != u64::MAX && n != size {
            bail!("rebuilt {n} bytes, the snapshot records {size}");
        }
        Ok(())
    })();
    drop(sink);
    let digests = finish_output(result.map(|()| digesters), expected, tmp, final_path)?;
    Ok(RestoreOutcome { bytes: progress.position(), seconds: started.elapsed().as_secs_f64(), digests })
}

/// A conversion: the output length is whatever the writer produces.
fn write_sequential_unknown(
    target: Target,
    progress: &ProgressBar,
    produce: impl FnOnce(&mut dyn Write) -> Result<u64>,
) -> Result<RestoreOutcome> {
    write_sequential(u64::MAX, &BTreeMap::new(), target, progress, produce)
}
