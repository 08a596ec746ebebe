//! `imgarc copy`: copies snapshots from one repository into another (the 3-2-1 rule's
//! second and off-site copies). `CopyOptions` in, `CopyReport` out; no printing.
//!
//! Two paths, chosen by `Repository::chunking_fingerprint`:
//! - *structural* (equal fingerprints: a target made with `init --copy-chunker-params-from`):
//!   nothing is re-chunked. The blobs the snapshot uses that the target lacks are read from
//!   the source by id, re-compressed and re-sealed for the target under the same ids, and the
//!   source's snapshot (its trees name the same ids) is written as it is, with `copied_from`.
//!   Only the missing blobs are read: a second night reads that night's new chunks.
//! - *re-archive* (anything else): the image is restored from the source (byte-exact, its
//!   recorded digests checked) through an in-process pipe into the target's archive
//!   pipeline, which chunks it with the target's parameters and keys. The target's dedup
//!   still sends only chunks it lacks, but every byte of the snapshot is read from the source.
//!
//! (format-spec/README.md, "Copies"; format-spec/copy.md, "Structural copy".)
//!
//! The copied snapshot keeps the source's time, hostname, name, tags, source and
//! metadata record, and records `copied_from` (source repository id and snapshot id,
//! in its head too): a snapshot whose copy the target holds is `present`, not copied
//! again. The target's write order is archive's (packs, their index objects, the
//! snapshot last), so a killed copy leaves no snapshot behind and a re-run finds every
//! pack whose index object arrived, sending only what was missing.

use crate::archive::{archive_as, ArchiveRequest, SnapshotOrigin};
use crate::ids::Id;
use crate::index::{Index, IndexedRepository};
use crate::progress::SharedProgress;
use crate::repository::pack::BlobKind;
use crate::repository::snapshot::{CopiedFrom, Snapshot, SnapshotHead, SnapshotStats};
use crate::repository::Repository;
use crate::restore::{restore, RestoreOptions, Target};
use crate::select::SnapshotSelector;
use crate::warnings::Warnings;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The `imgarc copy` flags that are the library's (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CopyOptions {
    /// Snapshot ids (or unique prefixes of 8+ hex digits) to copy; with none, every selected snapshot
    #[cfg_attr(feature = "clap", arg(value_name = "SNAPSHOT"))]
    pub snapshots: Vec<String>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub select: SnapshotSelector,
    /// Show what would be copied and what the target holds already; write nothing
    #[cfg_attr(feature = "clap", arg(long))]
    pub dry_run: bool,
    /// After copying, read back this share of the copied snapshots' chunks from the target and check them (id and decode), e.g. 10%
    #[cfg_attr(feature = "clap", arg(long, value_name = "N%", value_parser = parse_percent))]
    pub verify: Option<f64>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub spill: crate::archive::SpillOptions,
}

impl CopyOptions {
    /// The QCOW2 policy of the re-archive: the spill flags, and opaque storage allowed
    /// for what the source accepted as opaque bytes.
    fn qcow2_policy(&self) -> Result<crate::format::qcow2::Policy> {
        let base = self.spill.qcow2_policy()?;
        Ok(crate::format::qcow2::Policy { allow_backing_file_opaque: true, allow_data_file_opaque: true, ..base })
    }
}

/// `10%`, `10` or `2.5%`: a share from 0 to 100 percent.
pub fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let n = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match n.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
    }
}

/// What happened to one selected source snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopiedSnapshot {
    /// The source snapshot's id.
    pub source: String,
    /// The target snapshot's id: the new copy, or the copy the target held already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub name: String,
    pub time: String,
    /// `copied`, `present`, `would_copy` (a dry run) or `failed`.
    pub status: &'static str,
    pub logical_bytes: u64,
    /// Bytes of pack and index objects this copy added to the target.
    pub bytes_sent: u64,
    /// Chunks the target did not hold and received.
    pub chunks_sent: u64,
    /// The image was re-archived with the target's chunker (false: copied structurally, by chunk id).
    pub rechunked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    /// False when some selected snapshot failed to copy.
    pub ok: bool,
    pub dry_run: bool,
    /// The source and target repository ids.
    pub source_repository: String,
    pub target_repository: String,
    pub snapshots_copied: u64,
    pub snapshots_present: u64,
    pub snapshots_failed: u64,
    /// Bytes of pack and index objects the copy added to the target (what was uploaded).
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    /// Bytes read from the source: re-archived, every image byte of every copied snapshot;
    /// structural, the stored bytes of the trees and of the blobs the target lacked.
    pub bytes_read: u64,
    /// True when the images are re-chunked with the target's chunker; false when the two
    /// repositories' chunking fingerprints are equal and the copy moves blobs by id.
    pub rechunked: bool,
    /// `--verify`: chunks read back from the target and found intact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    pub seconds: f64,
    pub snapshots: Vec<CopiedSnapshot>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The read-back verification of `--verify N%`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub percent: f64,
    /// Distinct chunks of the copied snapshots in the target.
    pub chunks_total: u64,
    pub chunks_checked: u64,
    pub chunks_bad: u64,
}

/// The `copied_from` a copy of `id` from `source` records.
fn origin_of(source: &Repository, id: &Id) -> CopiedFrom {
    CopiedFrom { repository: source.config().id.clone(), snapshot: id.to_hex() }
}

/// What identifies one archive of one image across copies: a snapshot and its copies
/// (and copies of copies) agree on all of it.
fn identity(head: &SnapshotHead) -> String {
    serde_json::to_string(&(&head.time, &head.name, &head.source, head.logical_bytes, &head.digests)).expect("a head serializes")
}

/// Which target snapshots are copies of which source snapshots: for each source
/// snapshot the target id of its copy, if the target holds one. A target snapshot is
/// the copy of a source one when it records that origin, when both record the same
/// origin (copies of one snapshot), when the source snapshot is itself a copy of it,
/// or when both have the same identity (time, name, source, size, digests: a copy of
/// a copy made through a third repository).
fn present_in_target(
    source: &Repository,
    source_index: &Index,
    target: &Repository,
    target_index: &Index,
    ids: &[Id],
) -> Result<Vec<Option<Id>>> {
    let mut by_origin: HashMap<CopiedFrom, Id> = HashMap::new();
    let mut by_identity: HashMap<String, Id> = HashMap::new();
    let mut target_ids: HashSet<Id> = HashSet::new();
    for row in target_index.snapshot_rows()? {
        target_ids.insert(row.id);
        let Some(head) = target_index.snapshot_head(&row.id)? else { continue };
        by_identity.insert(identity(&head), row.id);
        if let Some(from) = head.copied_from {
            by_origin.insert(from, row.id);
        }
    }
    let target_repo_id = &target.config().id;
    ids.iter()
        .map(|id| {
            if let Some(t) = by_origin.get(&origin_of(source, id)) {
                return Ok(Some(*t));
            }
            let Some(head) = source_index.snapshot_head(id)? else { return Ok(None) };
            if let Some(t) = by_identity.get(&identity(&head)) {
                return Ok(Some(*t));
            }
            let Some(from) = head.copied_from else { return Ok(None) };
            if let Some(t) = by_origin.get(&from) {
                return Ok(Some(*t));
            }
            if &from.repository == target_repo_id {
                if let Some(t) = Id::from_hex(&from.snapshot) {
                    if target_ids.contains(&t) {
                        return Ok(Some(t));
                    }
                }
            }
            Ok(None)
        })
        .collect()
}

/// Copies the selected snapshots of `source` into `target`. The caller holds a shared
/// lock on each (none in a dry run), the source index caught up, the target index
/// opened as a writer (`Index::open_writer`) after taking the target's lock. `bar(name,
/// bytes)` makes the progress handle of one snapshot's copy.
pub fn copy(
    source: &Repository,
    source_index: &Index,
    target: &Repository,
    target_index: &mut Index,
    opts: &CopyOptions,
    bar: &dyn Fn(&str, u64) -> SharedProgress,
) -> Result<CopyReport> {
    let started = Instant::now();
    if source.config().id == target.config().id {
        bail!("the source and the target are the same repository (id {}): copy needs two repositories", source.config().id);
    }
    source.require_full_key("copy (reading the source's snapshots)")?;
    if opts.verify.is_some() && !opts.dry_run {
        // Refused before anything is copied: a write-only target key cannot read back what it wrote.
        target.require_full_key("copy --verify (reading back from the target)")?;
    }
    let rows = opts.select.select(source_index, &opts.snapshots)?;
    let ids: Vec<Id> = rows.iter().map(|r| r.id).collect();
    let present = present_in_target(source, source_index, target, target_index, &ids)?;
    let warnings = Warnings::new();
    // Equal fingerprints: the same bytes have the same chunk boundaries and ids in both
    // repositories, so the source's snapshot and trees are valid in the target as they are.
    let structural = source.chunking_fingerprint() == target.chunking_fingerprint();
    let mut report = CopyReport {
        ok: true,
        dry_run: opts.dry_run,
        source_repository: source.config().id.clone(),
        target_repository: target.config().id.clone(),
        snapshots_copied: 0,
        snapshots_present: 0,
        snapshots_failed: 0,
        bytes_sent: 0,
        chunks_sent: 0,
        bytes_read: 0,
        rechunked: !structural,
        verified: None,
        seconds: 0.0,
        snapshots: Vec::new(),
        warnings: Vec::new(),
    };
    let policy = opts.qcow2_policy()?;
    let mut copied_ids: Vec<Id> = Vec::new();
    for (row, held) in rows.iter().zip(present) {
        let mut entry = CopiedSnapshot {
            source: row.id.to_hex(),
            target: held.map(|t| t.to_hex()),
            name: row.name.clone(),
            time: row.time.clone(),
            status: "present",
            logical_bytes: row.logical_bytes,
            bytes_sent: 0,
            chunks_sent: 0,
            rechunked: false,
            error: None,
        };
        if held.is_some() {
            report.snapshots_present += 1;
        } else if opts.dry_run {
            entry.status = "would_copy";
        } else {
            let moved = if structural {
                copy_structurally(source, source_index, target, target_index, &row.id, bar)
            } else {
                copy_one(source, source_index, target, target_index, &row.id, &policy, bar)
            };
            match moved {
                Ok((target_id, moved)) => {
                    tracing::debug!(source = %row.id.short(), target = %target_id.short(), name = %row.name, rechunked = moved.rechunked, "copied snapshot");
                    entry.status = "copied";
                    entry.target = Some(target_id.to_hex());
                    entry.bytes_sent = moved.bytes_sent;
                    entry.chunks_sent = moved.chunks_sent;
                    entry.rechunked = moved.rechunked;
                    report.snapshots_copied += 1;
                    report.bytes_sent += moved.bytes_sent;
                    report.chunks_sent += moved.chunks_sent;
                    report.bytes_read += moved.bytes_read;
                    copied_ids.push(target_id);
                }
                Err(e) => {
                    warnings.warn(format!("snapshot {} ({}) was not copied: {e:#}", row.id.short(), row.name));
                    entry.status = "failed";
                    entry.error = Some(format!("{e:#}"));
                    report.snapshots_failed += 1;
                    report.ok = false;
                }
            }
        }
        report.snapshots.push(entry);
    }
    if let (Some(percent), false) = (opts.verify, opts.dry_run) {
        report.verified = Some(verify_sample(target, target_index, &copied_ids, percent, &warnings)?);
        if report.verified.as_ref().is_some_and(|v| v.chunks_bad > 0) {
            report.ok = false;
        }
    }
    report.warnings = warnings.take();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What a write into the pipe says once the archive stopped reading (`util::PipeWriter`).
const PIPE_CLOSED: &str = "the reading side stopped";

/// Re-archives one source snapshot into the target: a restore thread writes the image
/// into a pipe the target's archive reads.
fn copy_one(
    source: &Repository,
    source_index: &Index,
    target: &Repository,
    target_index: &mut Index,
    id: &Id,
    policy: &crate::format::qcow2::Policy,
    bar: &dyn Fn(&str, u64) -> SharedProgress,
) -> Result<(Id, Moved)> {
    let policy = policy.clone();
    let snap: Snapshot = source_index.snapshot(id)?.with_context(|| format!("snapshot {} vanished from the source's index", id.short()))?;
    let origin = SnapshotOrigin { time: snap.time.clone(), hostname: snap.hostname.clone(), copied_from: origin_of(source, id) };
    let project = snap.metadata.get("owner").and_then(|v| v.as_str()).map(str::to_string);
    let req = ArchiveRequest {
        name: snap.name.clone(),
        tags: snap.tags.clone(),
        source: snap.source.clone(),
        digests: snap.digests.keys().cloned().collect(),
        // The restore checks the source's digests too; the archive checking them again
        // proves the target received exactly the bytes the source recorded.
        expected_digests: snap.digests.clone(),
        expected_size: Some(snap.logical_bytes),
        metadata: snap.metadata.clone(),
        // A raw image stays raw (never decomposed, as when it was archived); any other
        // format is detected again from its bytes.
        declared_format: (snap.format == "raw").then(|| "raw".to_string()),
        // What the source accepted as opaque bytes the target must accept too.
        qcow2_policy: policy,
        project,
    };
    let (writer, reader) = crate::util::pipe(8);
    let end = writer.end_handle();
    let pb = bar(&snap.name, snap.logical_bytes);
    let outcome = std::thread::scope(|scope| {
        let archiving = scope.spawn(|| archive_as(target, target_index, Box::new(reader), req, Some(&origin), &crate::progress::none()));
        let restored = restore(source, source_index, &snap, Target::Stream(Box::new(writer)), &RestoreOptions::default(), &pb);
        match &restored {
            Ok(_) => end.finish(),
            Err(e) => end.fail(format!("reading the snapshot from the source: {e:#}")),
        }
        let archived = archiving.join().map_err(|_| anyhow!("the copy's archive thread panicked"))?;
        match (restored, archived) {
            (Ok(_), archived) => archived.context("writing the snapshot into the target"),
            // The archive stopped reading first: its error is the cause, the restore's a broken pipe.
            (Err(r), Err(a)) if format!("{r:#}").contains(PIPE_CLOSED) => Err(a.context("writing the snapshot into the target")),
            // Else the restore's error says why; the archive's is then only "the stream failed".
            (Err(r), _) => Err(r.context("reading the snapshot from the source")),
        }
    })?;
    let target_id = Id::from_hex(&outcome.snapshot).context("the archive reported a malformed snapshot id")?;
    let moved = Moved {
        bytes_sent: outcome.stored_bytes_added,
        chunks_sent: outcome.new_chunks,
        bytes_read: outcome.logical_bytes,
        rechunked: true,
    };
    Ok((target_id, moved))
}

/// Blobs a structural copy reads from the source at a time (bounds its memory: at most
/// this many chunks of up to 16 MiB, 1 MiB on average).
const STRUCTURAL_READ_BATCH: usize = 32;

/// What copying one snapshot moved.
struct Moved {
    /// Bytes of pack and index objects added to the target.
    bytes_sent: u64,
    /// Data chunks the target did not hold and received.
    chunks_sent: u64,
    /// Re-archive: the image bytes restored from the source. Structural: the stored bytes
    /// of the blobs read from the source (the snapshot's trees, and the blobs the target lacked).
    bytes_read: u64,
    rechunked: bool,
}

/// The structural copy of one snapshot between repositories with equal chunking
/// fingerprints: nothing is re-chunked. The snapshot's extent trees are read from the
/// source to list the blobs it uses; only those the target lacks are read (one ranged
/// read each, opened and checked against their id by the source's key) and re-compressed
/// and re-sealed for the target by its blob writer under the same id (the target's
/// writer names each one and must agree, `ChunkStore::store_named`). Everything a snapshot
/// refers to is a blob (data chunks, tree blobs of the guest, recipe and literal streams),
/// so the source's snapshot is valid in the target as it is: it is written last, with
/// `copied_from` and this copy's stats, after every pack and index object is durable.
fn copy_structurally(
    source: &Repository,
    source_index: &Index,
    target: &Repository,
    target_index: &mut Index,
    id: &Id,
    bar: &dyn Fn(&str, u64) -> SharedProgress,
) -> Result<(Id, Moved)> {
    let started = Instant::now();
    let snap: Snapshot = source_index.snapshot(id)?.with_context(|| format!("snapshot {} vanished from the source's index", id.short()))?;
    let reader = IndexedRepository::new(source, source_index);
    let first_location = |blob: &Id| -> Result<crate::index::Location> {
        source_index.locations(blob)?.into_iter().next().with_context(|| format!("blob {} is not in the source's index", blob.short()))
    };
    let mut bytes_read = 0u64;
    let mut used: HashSet<Id> = HashSet::new();
    for stream in snap.streams() {
        for tree in &stream.trees {
            bytes_read += first_location(tree)?.entry.stored_len as u64;
            used.insert(*tree);
        }
        used.extend(reader.load_extents(stream).context("reading the snapshot's extent lists from the source")?.iter().map(|e| e.id));
    }
    let used_list: Vec<Id> = used.iter().copied().collect();
    let held = target_index.contains_many(&used_list)?;
    let mut missing: Vec<crate::index::Location> =
        used_list.iter().filter(|b| !held.contains(b)).map(first_location).collect::<Result<_>>()?;
    // In pack order: neighbouring ranged reads of one pack.
    missing.sort_by_key(|l| (l.pack, l.entry.offset));
    let pb = bar(&snap.name, missing.iter().map(|l| l.entry.raw_len as u64).sum());
    let project = snap.metadata.get("owner").and_then(|v| v.as_str()).filter(|p| !p.is_empty()).map(str::to_string);
    let mut store = crate::store::ChunkStore::new(target, &*target_index, missing.len(), project.as_deref())?;
    let (mut chunks_sent, mut new_bytes) = (0u64, 0u64);
    // Reads (ranged GETs: latency on a remote source) and opening run a batch at a time in
    // parallel; a blob whose first copy fails is read again through the index, which tries
    // every copy the source holds.
    for batch in missing.chunks(STRUCTURAL_READ_BATCH) {
        let read: Vec<Result<Vec<u8>>> = batch.par_iter().map(|l| source.read_blob(&l.pack, &l.entry)).collect();
        for (loc, raw) in batch.iter().zip(read) {
            let raw = match raw {
                Ok(raw) => raw,
                Err(_) => reader.read_blob(&loc.entry.id).context("reading a chunk from the source")?,
            };
            bytes_read += loc.entry.stored_len as u64;
            if store.store_named(loc.entry.id, loc.entry.kind, &raw).context("writing the snapshot into the target")?
                && loc.entry.kind == BlobKind::Data
            {
                chunks_sent += 1;
                new_bytes += raw.len() as u64;
            }
            pb.inc(raw.len() as u64);
        }
    }
    let stats = store.finish().context("writing the snapshot into the target")?;
    let copied = Snapshot {
        stats: SnapshotStats {
            chunks: snap.stats.chunks,
            new_chunks: chunks_sent,
            new_bytes,
            stored_bytes_added: stats.stored_bytes_added,
            hole_bytes: snap.stats.hole_bytes,
            seconds: started.elapsed().as_secs_f64(),
        },
        copied_from: Some(origin_of(source, id)),
        ..snap
    };
    // Every pack is durable and indexed; only now may the snapshot refer to them.
    let target_id = target.save_snapshot(&copied).context("writing the snapshot into the target")?;
    target_index.add_snapshot(&target_id, &SnapshotHead::of(&copied, &target.metadata_hasher()), &copied, &used)?;
    Ok((target_id, Moved { bytes_sent: stats.stored_bytes_added, chunks_sent, bytes_read, rechunked: false }))
}

/// Reads back `percent`% of the distinct chunks (and tree blobs) the copied snapshots
/// use in the target, each checked against its id as every verified read is. The
/// sample is random, so repeated runs cover different chunks.
fn verify_sample(target: &Repository, target_index: &Index, copied: &[Id], percent: f64, warnings: &Warnings) -> Result<Verified> {
    let reader = IndexedRepository::new(target, target_index);
    let mut ids: HashSet<Id> = HashSet::new();
    for id in copied {
        let snap = target_index.snapshot(id)?.with_context(|| format!("copied snapshot {} is not in the target's index", id.short()))?;
        ids.extend(reader.referenced_ids(&snap)?);
    }
    let mut ids: Vec<Id> = ids.into_iter().collect();
    ids.sort();
    let wanted = ((ids.len() as f64) * percent / 100.0).ceil() as usize;
    let seed: [u8; 32] = rand::random();
    // A random keyed order: which chunks are checked cannot be predicted from the ids.
    ids.sort_by_cached_key(|id| *blake3::keyed_hash(&seed, &id.0).as_bytes());
    let mut bad = 0u64;
    for id in ids.iter().take(wanted) {
        if let Err(e) = reader.read_blob(id) {
            warnings.warn(format!("copy --verify: chunk {} read back from the target is damaged: {e:#}", id.short()));
            bad += 1;
        }
    }
    Ok(Verified { percent, chunks_total: ids.len() as u64, chunks_checked: wanted.min(ids.len()) as u64, chunks_bad: bad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::config::Config;

    #[test]
    fn verify_takes_a_percentage_from_0_to_100() {
        assert_eq!(parse_percent("10%"), Ok(10.0));
        assert_eq!(parse_percent(" 2.5 % "), Ok(2.5));
        assert_eq!(parse_percent("100"), Ok(100.0));
        for bad in ["", "%", "101%", "-1%", "ten"] {
            assert!(parse_percent(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn repo(dir: &std::path::Path, name: &str) -> (Repository, Index) {
        let backend = crate::backend::open(dir.join(name).to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend, Config::new(64 << 10, 3).unwrap()).unwrap();
        let index = Index::open_at(&dir.join(format!("{name}.sqlite")), &repo.config().id).unwrap();
        (repo, index)
    }

    /// In-process: the copy keeps the source's time and hostname, records its origin in the
    /// snapshot and the head, and a second copy finds it present; a repository is not its own target.
    #[test]
    fn a_copy_records_its_origin_and_is_present_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let (src, mut src_index) = repo(dir.path(), "src");
        let (dst, mut dst_index) = repo(dir.path(), "dst");
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let req = ArchiveRequest::raw_unannounced("vm", crate::repository::snapshot::Source::Stdin);
        let out =
            crate::archive::archive(&src, &mut src_index, Box::new(std::io::Cursor::new(data)), req, &crate::progress::none()).unwrap();
        let src_id = Id::from_hex(&out.snapshot).unwrap();
        let none = |_: &str, _: u64| crate::progress::none();
        let r = copy(&src, &src_index, &dst, &mut dst_index, &CopyOptions::default(), &none).unwrap();
        assert_eq!((r.snapshots_copied, r.snapshots_present, r.ok), (1, 0, true));
        let copied_id = Id::from_hex(r.snapshots[0].target.as_deref().unwrap()).unwrap();
        let copied = dst.load_snapshot(&copied_id).unwrap();
        let original = src.load_snapshot(&src_id).unwrap();
        assert_eq!((&copied.time, &copied.hostname, &copied.name), (&original.time, &original.hostname, &original.name));
        let want = CopiedFrom { repository: src.config().id.clone(), snapshot: src_id.to_hex() };
        assert_eq!(copied.copied_from.as_ref(), Some(&want));
        assert_eq!(dst_index.snapshot_head(&copied_id).unwrap().unwrap().copied_from, Some(want));
        assert!(original.copied_from.is_none() && !String::from_utf8(original.to_bytes()).unwrap().contains("copied_from"));
        let again = copy(&src, &src_index, &dst, &mut dst_index, &CopyOptions::default(), &none).unwrap();
        assert_eq!((again.snapshots_copied, again.snapshots_present, again.bytes_sent), (0, 1, 0));
        let err = copy(&src, &src_index, &src, &mut src_index_clone(dir.path(), &src), &CopyOptions::default(), &none).unwrap_err();
        assert!(format!("{err:#}").contains("same repository"), "{err:#}");
    }

    /// Incompressible bytes (xorshift), so stored sizes are image sizes.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Measured at the source's backend (every byte its gets returned): a structural copy of a
    /// second night reads about that night's new chunks (and the trees), exactly what it
    /// reports as `bytes_read`, and writes the source's snapshot streams unchanged; the
    /// re-archive path into a repository with other chunker params reads the whole image.
    #[test]
    fn a_structural_copy_reads_only_the_blobs_the_target_lacks() {
        use crate::backend::faults::Faulty;
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(crate::backend::open(dir.path().join("src").to_str().unwrap(), &Default::default()).unwrap());
        let src = Repository::init(faulty.clone(), Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut src_index = Index::open_at(&dir.path().join("src.sqlite"), &src.config().id).unwrap();
        let (same, mut same_index) = repo(dir.path(), "same");
        assert_eq!(src.chunking_fingerprint(), same.chunking_fingerprint());
        let other = {
            let backend = crate::backend::open(dir.path().join("other").to_str().unwrap(), &Default::default()).unwrap();
            Repository::init(backend, Config::new(128 << 10, 3).unwrap()).unwrap()
        };
        let mut other_index = Index::open_at(&dir.path().join("other.sqlite"), &other.config().id).unwrap();
        let none = |_: &str, _: u64| crate::progress::none();
        let mut data = noise(4 << 20, 7);
        let mut archive_night = |data: &[u8]| {
            let req = ArchiveRequest::raw_unannounced("vm", crate::repository::snapshot::Source::Stdin);
            crate::archive::archive(&src, &mut src_index, Box::new(std::io::Cursor::new(data.to_vec())), req, &crate::progress::none())
                .unwrap()
        };
        let night1 = archive_night(&data);
        data[1 << 20..(1 << 20) + (64 << 10)].copy_from_slice(&noise(64 << 10, 99));
        let night2 = archive_night(&data);
        let night2_id = Id::from_hex(&night2.snapshot).unwrap();
        let opts = CopyOptions { snapshots: vec![night1.snapshot.clone()], ..Default::default() };
        // Night 1 into both targets.
        copy(&src, &src_index, &same, &mut same_index, &opts, &none).unwrap();
        copy(&src, &src_index, &other, &mut other_index, &opts, &none).unwrap();

        let before = faulty.total_read();
        let r = copy(&src, &src_index, &same, &mut same_index, &CopyOptions::default(), &none).unwrap();
        let read = faulty.total_read() - before;
        assert_eq!((r.snapshots_copied, r.snapshots_present, r.rechunked), (1, 1, false), "{r:?}");
        assert!(!r.snapshots.iter().any(|e| e.status == "copied" && e.rechunked), "{r:?}");
        assert_eq!(read, r.bytes_read, "the report's bytes_read is what the source's backend served");
        assert_eq!(r.chunks_sent, night2.new_chunks, "exactly the night's new chunks were sent");
        assert!(read < 512 << 10, "a structural night 2 read {read} bytes of a 4 MiB image");
        let entry = r.snapshots.iter().find(|e| e.status == "copied").unwrap();
        assert_eq!(entry.source, night2.snapshot);
        let copied_id = Id::from_hex(entry.target.as_deref().unwrap()).unwrap();
        let (copied, original) = (same.load_snapshot(&copied_id).unwrap(), src.load_snapshot(&night2_id).unwrap());
        assert_eq!((&copied.guest, &copied.layout, &copied.digests), (&original.guest, &original.layout, &original.digests));
        assert_eq!(
            IndexedRepository::new(&same, &same_index).reader(&copied.guest).unwrap().extents().len() as u64,
            copied.guest.extent_count
        );

        let before = faulty.total_read();
        let r = copy(&src, &src_index, &other, &mut other_index, &CopyOptions::default(), &none).unwrap();
        let read = faulty.total_read() - before;
        assert!(r.rechunked && r.snapshots_copied == 1, "{r:?}");
        assert!(read >= 4 << 20, "the re-archive path reads the whole image, it read {read}");
    }

    fn src_index_clone(dir: &std::path::Path, repo: &Repository) -> Index {
        Index::open_at(&dir.join("src-2.sqlite"), &repo.config().id).unwrap()
    }
}
