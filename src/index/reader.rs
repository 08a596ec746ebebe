//! The chunk reader: the one way stored streams are read back. It fetches a
//! stream's chunks in batches — neighbouring chunks of one pack with one
//! ranged read, decompressed and verified against their BLAKE3 ids in
//! parallel, any other copy tried when one is damaged — and reads the next
//! batch ahead while the current one is consumed. `restore` reads through it
//! in order ([`ChunkReader::read_sequential`]) or at random
//! ([`ChunkReader::read_at`], for layouts and conversions). Guest file access
//! and NBD export read through a reader opened with [`ChunkReader::open_exact`]:
//! each read fetches only the chunks it touches, with no read-ahead, so reading
//! one small file of a large disk fetches a few chunks. Every reader counts the
//! bytes it fetched from the repository as stored ([`ChunkReader::bytes_fetched`]).

use super::{IndexedRepository, Location};
use crate::ids::Id;
use crate::repository::extents::{Extent, StreamRef};
use crate::repository::Repository;
use anyhow::{anyhow, Result};
use rayon::prelude::*;
use std::collections::HashMap;

/// The smallest read-ahead window: a stream of chunks fetched together.
/// Peak restore memory is about four windows (the stream cache of two, the
/// window fetched ahead, its compressed reads) plus the writer's blocks.
const MIN_WINDOW_BYTES: u64 = 8 << 20;

/// The read-ahead window for a store serving `parallelism` requests at once:
/// one read of 1 MiB per request slot, at least [`MIN_WINDOW_BYTES`]
/// (`IMGARC_RESTORE_WINDOW_MIB`, 1 to 1024, overrides). Measured (README,
/// "Performance"): on a local repository 8 MiB restores as fast as 32 MiB
/// at 85 MiB peak RSS instead of 240; on RGW 24 reads in flight are 1.4×
/// faster than 8.
fn window_bytes(parallelism: usize) -> u64 {
    static OVERRIDE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let forced = *OVERRIDE.get_or_init(|| {
        std::env::var("IMGARC_RESTORE_WINDOW_MIB").ok().and_then(|v| v.parse::<u64>().ok()).map(|m| m.clamp(1, 1024) << 20)
    });
    forced.unwrap_or_else(|| ((parallelism as u64) << 20).max(MIN_WINDOW_BYTES))
}

/// Chunks of one pack closer than this are fetched with one read.
const COALESCE_GAP: u64 = 256 << 10;
/// The longest one coalesced read may be.
const MAX_READ: u64 = 16 << 20;

/// A chunk that could not be read intact from any of its locations.
#[derive(Debug, thiserror::Error)]
#[error("chunk {id} (guest offset {offset}) is damaged or missing: {cause}")]
pub struct DamagedChunk {
    pub id: Id,
    pub offset: u64,
    pub cause: String,
}

/// An extent with every location its chunk is stored at.
type Located = (Extent, Vec<Location>);

/// Fetches the data of `extents` (each with its candidate locations), in order,
/// with the number of stored bytes read from packs.
fn fetch_batch(repo: &Repository, extents: &[Located]) -> Fetched {
    // Group by the first location's pack, coalescing neighbours into ranged reads.
    let mut by_pack: HashMap<Id, Vec<usize>> = HashMap::new();
    for (i, (e, locs)) in extents.iter().enumerate() {
        match locs.first() {
            Some(l) => by_pack.entry(l.pack).or_default().push(i),
            None => return Err(DamagedChunk { id: e.id, offset: e.offset, cause: "not in the index".into() }),
        }
    }
    // Enough reads per batch for every request slot the store offers (an object
    // store: many ranged GETs of a few MiB at once), never longer than MAX_READ.
    let parallelism = repo.request_parallelism();
    let max_read = (window_bytes(parallelism) / parallelism as u64).clamp(1 << 20, MAX_READ);
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
                if this.offset > end + COALESCE_GAP || this.offset + this.stored_len as u64 - start > max_read {
                    reads.push((pack, std::mem::take(&mut group)));
                }
            }
            group.push(i);
        }
        if !group.is_empty() {
            reads.push((pack, group));
        }
    }
    // Two passes, each spread over every core: the ranged reads (one per
    // coalesced group; I/O-bound on an object store, so they run on the
    // backend's own pool, as many at once as it serves well), then every blob's
    // open + decompress + verify on its own (CPU-bound: one task per blob, so
    // a batch of few large reads still keeps every core busy).
    let spans: Vec<Result<Vec<u8>, String>> = crate::backend::with_request_pool(repo.request_parallelism(), || {
        reads
            .par_iter()
            .map(|(pack, group)| {
                let first = &extents[group[0]].1[0].entry;
                let last = &extents[*group.last().expect("non-empty")].1[0].entry;
                let len = last.offset + last.stored_len as u64 - first.offset;
                repo.read_pack_range(pack, first.offset, len).map_err(|err| format!("pack {}: {err}", pack.short()))
            })
            .collect()
    });
    let mut fetched: u64 = spans.iter().filter_map(|s| s.as_ref().ok()).map(|s| s.len() as u64).sum();
    let mut jobs: Vec<(usize, usize)> = Vec::with_capacity(extents.len());
    for (r, (_, group)) in reads.iter().enumerate() {
        jobs.extend(group.iter().map(|&i| (r, i)));
    }
    let decoded: Vec<Result<Vec<u8>, String>> = jobs
        .par_iter()
        .map(|&(r, i)| {
            let l = &extents[i].1[0];
            let start = extents[reads[r].1[0]].1[0].entry.offset;
            match &spans[r] {
                Ok(bytes) => {
                    let s = (l.entry.offset - start) as usize;
                    repo.decode_blob(&l.entry, &bytes[s..s + l.entry.stored_len as usize]).map_err(|e| format!("{e:#}"))
                }
                Err(err) => Err(err.clone()),
            }
        })
        .collect();
    drop(spans);
    let mut out: Vec<Option<Vec<u8>>> = vec![None; extents.len()];
    for (&(_, i), primary) in jobs.iter().zip(decoded) {
        let (e, locs) = &extents[i];
        let data = match primary {
            Ok(d) => Ok(d),
            Err(first_err) => {
                // Fall back to any other copy of the chunk (rare: no need to parallelise).
                let mut cause = first_err;
                let mut found = None;
                for alt in &locs[1..] {
                    fetched += alt.entry.stored_len as u64;
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
        out[i] = Some(data.and_then(|d| check_len(e, d))?);
    }
    Ok((out.into_iter().map(|d| d.expect("every extent fetched")).collect(), fetched))
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

/// Decoded chunks a `ChunkReader` keeps: two read-ahead windows. Layouts read a
/// stream roughly in order (qemu-img writes clusters from several coroutines,
/// so guest order jitters by a few MiB); a cache larger than one window absorbs that.
fn stream_cache_bytes(window: u64) -> u64 {
    2 * window
}

/// Random or sequential access to a stored stream, fetching chunks in read-ahead windows.
pub struct ChunkReader<'a> {
    source: IndexedRepository<'a>,
    extents: Vec<Extent>,
    /// Decoded chunks, by extent index.
    cache: std::collections::BTreeMap<usize, Vec<u8>>,
    cache_bytes: u64,
    /// The next window, being fetched in the background while this one is consumed.
    prefetch: Option<Prefetch>,
    /// Fetch only the chunks a read touches, never ahead (guest file access, NBD).
    exact: bool,
    /// Stored bytes fetched from packs so far (coalesced ranges counted whole).
    bytes_fetched: u64,
    /// Bytes of chunks fetched together ([`window_bytes`] of the store).
    window: u64,
    /// The order the caller will read chunks in, when told ([`ChunkReader::follow`]).
    plan: Option<ReadPlan>,
    /// Chunks fetched and decoded so far (a chunk fetched twice counts twice).
    chunks_fetched: u64,
}

/// How far [`ReadPlan::advance_to`] looks ahead for the chunk being read: a
/// caller that strays further from its announced order is off the plan, and
/// the reader falls back to reading ahead in stream order.
const PLAN_SLACK: usize = 256;
/// The longest walk along the plan for one window (bounds the work per miss
/// when most chunks ahead are cached).
const PLAN_WALK: usize = 1 << 16;

/// The order a caller reads a stream's chunks in: extent indices, one per use.
/// With it the reader fetches the next chunks *to be read* (not the next in
/// stream order) and evicts the cached chunk needed furthest ahead, so a QCOW2
/// whose clusters lie in any host order is still fetched about once per chunk.
struct ReadPlan {
    order: Vec<u32>,
    /// `(extent, position in order)` for every use, sorted: the next use of a chunk.
    uses: Vec<(u32, u32)>,
    /// The position of the chunk being read now.
    pos: usize,
    /// Whether the last read was where the plan expected it.
    on_plan: bool,
}

impl ReadPlan {
    /// The position of the next use of extent `i` at or after the current one.
    fn next_use(&self, i: usize) -> Option<usize> {
        let i = i as u32;
        let at = self.uses.partition_point(|&(e, p)| (e, p as usize) < (i, self.pos));
        self.uses.get(at).filter(|&&(e, _)| e == i).map(|&(_, p)| p as usize)
    }

    /// Moves the plan to the use of extent `i` now being read, when it is
    /// within [`PLAN_SLACK`] ahead; else the reader is off the plan.
    fn advance_to(&mut self, i: usize) {
        let ahead = self.order.len().min(self.pos + PLAN_SLACK);
        match self.order[self.pos.min(ahead)..ahead].iter().position(|&e| e as usize == i) {
            Some(k) => {
                self.pos += k;
                self.on_plan = true;
            }
            None => self.on_plan = false,
        }
    }
}

/// A batch's decoded chunks and the stored bytes read for them.
type Fetched = Result<(Vec<Vec<u8>>, u64), DamagedChunk>;

struct Prefetch {
    wanted: Vec<usize>,
    handle: std::thread::JoinHandle<Fetched>,
}

impl Prefetch {
    /// Waits for the background fetch: the extents it was for, and what it fetched.
    fn join(self) -> Result<(Vec<usize>, Fetched)> {
        let fetched = self.handle.join().map_err(|_| anyhow!("prefetch thread panicked"))?;
        Ok((self.wanted, fetched))
    }
}

impl<'a> ChunkReader<'a> {
    pub fn open(source: IndexedRepository<'a>, stream: &StreamRef) -> Result<Self> {
        Ok(ChunkReader { extents: source.load_extents(stream)?, ..Self::empty(source) })
    }

    /// A reader for scattered small reads (a guest filesystem, an NBD client):
    /// each `read_at` fetches only the uncached chunks it touches, and nothing ahead.
    pub fn open_exact(source: IndexedRepository<'a>, stream: &StreamRef) -> Result<Self> {
        Ok(ChunkReader { exact: true, ..Self::open(source, stream)? })
    }

    /// A reader of an empty stream (all holes).
    pub fn empty(source: IndexedRepository<'a>) -> Self {
        let window = window_bytes(source.repo.request_parallelism());
        ChunkReader {
            source,
            extents: Vec::new(),
            cache: Default::default(),
            cache_bytes: 0,
            prefetch: None,
            exact: false,
            bytes_fetched: 0,
            window,
            plan: None,
            chunks_fetched: 0,
        }
    }

    /// Tells the reader the guest ranges `(offset, length)` its caller will
    /// read, in that order (a layout rebuild: `format::rebuild::guest_reads`),
    /// so windows follow that order. Reads may still go anywhere: off the plan
    /// the reader reads ahead in stream order. Ignored by an exact reader and
    /// when the order is the stream's own.
    pub fn follow(&mut self, reads: impl IntoIterator<Item = (u64, u64)>) {
        if self.exact {
            return;
        }
        let mut order: Vec<u32> = Vec::new();
        for (offset, len) in reads {
            let mut i = self.extents.partition_point(|e| e.end() <= offset);
            while i < self.extents.len() && self.extents[i].offset < offset.saturating_add(len) {
                let Ok(e) = u32::try_from(i) else { return };
                if order.last() != Some(&e) {
                    order.push(e);
                }
                i += 1;
            }
        }
        if order.is_sorted() || u32::try_from(order.len()).is_err() {
            return; // stream order: the default read-ahead is the plan
        }
        let mut uses: Vec<(u32, u32)> = order.iter().enumerate().map(|(p, &e)| (e, p as u32)).collect();
        uses.sort_unstable();
        self.plan = Some(ReadPlan { order, uses, pos: 0, on_plan: true });
    }

    /// Chunks this reader has fetched and decoded so far; a chunk fetched
    /// again after eviction counts again.
    pub fn chunks_fetched(&self) -> u64 {
        self.chunks_fetched
    }

    /// Stored bytes this reader has fetched from the repository so far
    /// (`bytes_read` of the guest file verbs).
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched
    }

    /// The stream's extents, in offset order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }
    /// Extent `first` and the uncached extents after it, one batch's worth (or,
    /// when `until` is given, those starting before it), with their locations.
    fn window(&self, first: usize, until: Option<u64>) -> Result<(Vec<usize>, Vec<Located>)> {
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        let mut i = first;
        while i < self.extents.len() && (wanted.is_empty() || (bytes < self.window && until.is_none_or(|end| self.extents[i].offset < end)))
        {
            if !self.cache.contains_key(&i) {
                wanted.push(i);
                bytes += self.extents[i].len as u64;
            }
            i += 1;
        }
        self.located(wanted)
    }

    /// The uncached extents the plan reads next from its current position
    /// (the extent `read_at` is at, when on the plan), one window's worth;
    /// empty off the plan or when it has nothing left to fetch.
    fn plan_window(&self) -> Result<(Vec<usize>, Vec<Located>)> {
        let Some(plan) = self.plan.as_ref().filter(|p| p.on_plan) else { return Ok(Default::default()) };
        let mut wanted = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0u64;
        for &e in plan.order.iter().skip(plan.pos).take(PLAN_WALK) {
            let i = e as usize;
            if bytes >= self.window {
                break;
            }
            if !self.cache.contains_key(&i) && seen.insert(i) {
                wanted.push(i);
                bytes += self.extents[i].len as u64;
            }
        }
        self.located(wanted)
    }

    fn located(&self, wanted: Vec<usize>) -> Result<(Vec<usize>, Vec<Located>)> {
        let with_locs =
            wanted.iter().map(|&i| Ok((self.extents[i], self.source.index.locations(&self.extents[i].id)?))).collect::<Result<_>>()?;
        Ok((wanted, with_locs))
    }

    /// Caches a fetched batch.
    fn insert_fetched(&mut self, wanted: Vec<usize>, datas: Vec<Vec<u8>>, fetched_bytes: u64) {
        self.bytes_fetched += fetched_bytes;
        self.chunks_fetched += datas.len() as u64;
        for (i, d) in wanted.into_iter().zip(datas) {
            self.cache_bytes += d.len() as u64;
            if let Some(old) = self.cache.insert(i, d) {
                self.cache_bytes -= old.len() as u64;
            }
        }
    }

    fn start_prefetch(&mut self, (wanted, with_locs): (Vec<usize>, Vec<Located>)) -> Result<()> {
        if !wanted.is_empty() {
            let repo = self.source.repo.clone();
            let handle = std::thread::Builder::new().name("restore-prefetch".into()).spawn(move || fetch_batch(&repo, &with_locs))?;
            self.prefetch = Some(Prefetch { wanted, handle });
        }
        Ok(())
    }

    /// Drops cached chunks until the cache fits, never extent `first` (being
    /// read). With a plan: those needed furthest ahead, or never again.
    /// Without: those behind `first` (reading moves forward), then those
    /// furthest ahead.
    fn evict(&mut self, first: usize) {
        let limit = stream_cache_bytes(self.window);
        if self.cache_bytes <= limit {
            return;
        }
        if let Some(plan) = &self.plan {
            let mut by_next_use: Vec<(usize, usize)> =
                self.cache.keys().filter(|&&i| i != first).map(|&i| (plan.next_use(i).unwrap_or(usize::MAX), i)).collect();
            by_next_use.sort_unstable_by(|a, b| b.cmp(a));
            for (_, i) in by_next_use {
                if self.cache_bytes <= limit {
                    break;
                }
                if let Some(d) = self.cache.remove(&i) {
                    self.cache_bytes -= d.len() as u64;
                }
            }
            return;
        }
        while self.cache_bytes > limit && self.cache.len() > 1 {
            let lo = *self.cache.keys().next().expect("non-empty");
            let hi = *self.cache.keys().next_back().expect("non-empty");
            let victim = if lo < first { lo } else { hi };
            if victim == first {
                break;
            }
            if let Some(d) = self.cache.remove(&victim) {
                self.cache_bytes -= d.len() as u64;
            }
        }
    }

    /// Makes extent `first` available: the background fetch is joined and
    /// kept (whether or not it holds `first`: a fetched window is never
    /// thrown away); if `first` is still missing, its window is fetched now
    /// (an exact reader: the extents before `until`; a reader on its plan: the
    /// plan's next chunks). Then the cache is trimmed and the next window
    /// starts fetching in the background (never for an exact reader).
    fn load_window(&mut self, first: usize, until: u64) -> Result<()> {
        if let Some(p) = self.prefetch.take() {
            match p.join()? {
                (wanted, Ok((datas, bytes))) => self.insert_fetched(wanted, datas, bytes),
                // A chunk read ahead is reported when it is needed, from its own fetch.
                (wanted, Err(d)) if wanted.contains(&first) => return Err(self.source.damaged_error(d)),
                (_, Err(_)) => {}
            }
        }
        if !self.cache.contains_key(&first) {
            let (wanted, with_locs) = match self.plan_window()? {
                planned if !planned.0.is_empty() => planned,
                _ => self.window(first, self.exact.then_some(until))?,
            };
            let (datas, bytes) = fetch_batch(self.source.repo, &with_locs).map_err(|d| self.source.damaged_error(d))?;
            self.insert_fetched(wanted, datas, bytes);
        }
        self.evict(first);
        if self.exact {
            return Ok(());
        }
        let ahead = match self.plan_window()? {
            planned if !planned.0.is_empty() => planned,
            _ => {
                // Stream order, from the end of the cached run `first` is in.
                let mut next = first;
                while self.cache.contains_key(&next) {
                    next += 1;
                }
                if next >= self.extents.len() {
                    return Ok(());
                }
                self.window(next, None)?
            }
        };
        self.start_prefetch(ahead)
    }

    pub fn read_at(&mut self, mut pos: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let i = self.extents.partition_point(|e| e.end() <= pos);
            let n;
            match self.extents.get(i).copied() {
                Some(e) if e.offset <= pos => {
                    if let Some(plan) = &mut self.plan {
                        plan.advance_to(i);
                    }
                    if !self.cache.contains_key(&i) {
                        self.load_window(i, pos + buf.len() as u64)?;
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

    /// Every chunk of the stream, in order, to `each` (with its extent),
    /// batch by batch, the next batch fetched while this one is consumed.
    /// Stops early when `each` returns `false`.
    pub fn read_sequential(&mut self, mut each: impl FnMut(Extent, Vec<u8>) -> Result<bool>) -> Result<()> {
        let mut next = 0;
        while next < self.extents.len() {
            let (wanted, fetched) = match self.prefetch.take() {
                Some(p) => p.join()?,
                None => {
                    let (wanted, with_locs) = self.window(next, None)?;
                    (wanted, fetch_batch(self.source.repo, &with_locs))
                }
            };
            let (datas, fetched_bytes) = fetched.map_err(|d| self.source.damaged_error(d))?;
            self.bytes_fetched += fetched_bytes;
            self.chunks_fetched += datas.len() as u64;
            next = wanted.last().map_or(next + 1, |&l| l + 1);
            if next < self.extents.len() {
                let ahead = self.window(next, None)?;
                self.start_prefetch(ahead)?;
            }
            for (i, d) in wanted.into_iter().zip(datas) {
                if !each(self.extents[i], d)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl IndexedRepository<'_> {
    /// Turns a damaged chunk into an error naming every snapshot that uses it.
    pub fn damaged_error(&self, d: DamagedChunk) -> anyhow::Error {
        let users = self.snapshots_using(&[d.id]).unwrap_or_default();
        let names: Vec<String> = users.get(&d.id).into_iter().flatten().map(|(id, name)| format!("{} ({name})", id.short())).collect();
        anyhow!(
            "{d}; snapshots affected: {}; run `imgarc check --read-data`",
            if names.is_empty() { "unknown".into() } else { names.join(", ") }
        )
    }
}
