//! Prune: reclaims the space of chunks no snapshot references, in two phases
//! that stay safe against archives running at the same time, on any host.
//!
//! *Sweep* (first, for marks written by earlier prunes): a mark is due once
//! the grace period has passed since it was written. A due mark is postponed
//! while any archive that started before it still holds its lock (it may have
//! deduplicated against a marked pack before the mark was visible). Otherwise
//! each of its packs is deleted only if every blob in it that a snapshot now
//! references has a copy in an unmarked pack; if not, the pack is rescued.
//! Deletion order: index objects listing the pack are replaced by ones that
//! do not (new first, then the old deleted), then the pack, then the mark.
//!
//! *Mark*: packs that no snapshot needs (all blobs unreferenced, or copies
//! elsewhere) are listed in a new mark; packs whose still-used bytes are at
//! most `max_repack_ratio` of their size first have those blobs copied into
//! new packs (bytes copied as stored, each verified), then are marked too.
//!
//! A prune killed at any point leaves a consistent repository: unreferenced
//! packs, duplicate copies or an unfinished mark, all of which the next prune
//! completes. See format-spec/README.md, "Prune".
//!
//! *Drill records* (`drills/`, format-spec/drills.md) of snapshots that no
//! longer exist are deleted first, each absence confirmed; records are
//! independent objects, so a prune killed among them leaves the rest to the next.
//!
//! With S3 Object Lock a last pass ([`crate::object_lock::retention_pass`]) extends
//! the retention of every live object and deletes by version id what has lapsed.

use crate::ids::Id;
use crate::index::Index;
use crate::repository::index_object::{IndexObject, IndexedPack};
use crate::repository::lock;
use crate::repository::marks::{MarkedPack, PruneMark, MARK_VERSION};
use crate::repository::pack::{self, EncodedBlob, PackBuilder, PackEntry};
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashSet};

/// The default grace period: a nightly prune deletes what the previous night's marked.
pub const DEFAULT_GRACE: &str = "23h";
pub const DEFAULT_MAX_REPACK_RATIO: f64 = 0.5;

/// What a prune does (the `imgarc prune` flags: each doc line is its `--help`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct PruneOptions {
    /// Show what would be deleted and repacked, change nothing
    #[cfg_attr(feature = "clap", arg(long))]
    pub dry_run: bool,
    /// Repack a pack when its still-used bytes are at most this fraction of its size (0 disables repacking)
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_MAX_REPACK_RATIO, value_parser = parse_ratio))]
    pub max_repack_ratio: f64,
    /// Time between marking a pack and deleting it (s, m, h, d: 23h, 90m, 0); must exceed the listing lag of the store
    #[cfg_attr(feature = "clap", arg(long, default_value = DEFAULT_GRACE, value_parser = parse_grace))]
    pub grace: chrono::Duration,
    /// The prune's clock: marks older than `now - grace` are due (the time the options were made).
    #[cfg_attr(feature = "clap", arg(skip = Utc::now()))]
    pub now: DateTime<Utc>,
}

/// A repack ratio: a fraction between 0 and 1.
pub fn parse_ratio(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Sweep: packs deleted and the bytes that freed.
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    /// Marked packs that a snapshot turned out to need, kept.
    pub packs_rescued: u64,
    pub marks_completed: u64,
    /// Due marks not swept, with the reason.
    pub marks_postponed: Vec<String>,
    /// Mark: packs newly marked for deletion (including repacked ones), and their size.
    pub packs_marked: u64,
    pub bytes_marked: u64,
    /// Packs whose still-used blobs were copied out, and the stored bytes copied.
    pub packs_repacked: u64,
    pub bytes_repacked: u64,
    pub packs_written: u64,
    /// Bytes of every pack now marked, waiting for the grace period.
    pub bytes_awaiting_grace: u64,
    /// When the oldest remaining mark becomes due (RFC 3339).
    pub next_sweep: Option<String>,
    /// Unreferenced bytes left in packs that are neither marked nor repacked.
    pub unreferenced_bytes_kept: u64,
    /// Drill records deleted (a dry run: that would be) because their snapshot no longer exists.
    pub drill_records_deleted: u64,
    pub warnings: Vec<String>,
    /// S3 Object Lock: retention extended, lapsed versions deleted by version id, and
    /// what cannot be deleted yet with its date (absent without object lock). Under
    /// object lock `bytes_freed` counts packs hidden by a delete marker; their space
    /// comes back when this pass deletes their versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::object_lock::RetentionReport>,
}

/// Parses a grace period: `0`, or numbers with units s, m (minutes), h, d — `23h`, `90m`, `2d12h`
/// ([`crate::util::parse_duration`], the one duration syntax).
pub fn parse_grace(s: &str) -> Result<chrono::Duration> {
    crate::util::parse_duration(s).map_err(|e| anyhow::anyhow!("grace {e:#}"))
}

use crate::util::crash_point;

/// Runs both phases. The caller holds the `prune` singleton lock.
pub fn prune(repo: &Repository, index: &mut Index, opts: &PruneOptions) -> Result<PruneReport> {
    // What is unused is known only from every snapshot's extent lists.
    repo.require_full_key("prune")?;
    // Deleting is what prune is for: refuse now, not after marking, where the credentials may not.
    repo.require_delete_permission("prune")?;
    if !opts.dry_run {
        repo.tidy_superseded()?;
    }
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    let warnings = Warnings::new();
    refuse_unless_every_snapshot_is_known(repo, index)?;
    report.drill_records_deleted = delete_orphan_drill_records(repo, index, opts.dry_run, &warnings)?;
    sweep(repo, index, opts, &mut report, &warnings)?;
    mark(repo, index, opts, &mut report, &warnings)?;
    if let Some(lock) = &repo.config().object_lock {
        // After sweep and mark, so the packs this run hid are counted with their dates.
        let marked: HashSet<String> = index.marked_packs()?.iter().map(|p| p.to_hex()).collect();
        let unneeded = |key: &str| key.starts_with("data/") && key.rsplit('/').next().is_some_and(|h| marked.contains(h));
        report.object_lock = Some(crate::object_lock::retention_pass(repo.lock_backend(), lock, opts.now, opts.dry_run, &unneeded)?);
    }
    report.warnings = warnings.take();
    let now_marked = index.marks()?;
    report.bytes_awaiting_grace = now_marked.iter().flat_map(|m| &m.packs).map(|p| p.size).sum();
    report.next_sweep = now_marked
        .iter()
        .filter_map(|m| crate::util::parse_rfc3339(&m.created))
        .min()
        .map(|t| (t + opts.grace).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(report)
}

/// A snapshot the cache could not read would count as referencing nothing,
/// and prune would delete its data: refuse instead. So would a row whose
/// references were never counted (`Depth::Snapshots`; `Index::open_writer`
/// counts them all, so this is a guard against a caller that skipped it).
fn refuse_unless_every_snapshot_is_known(repo: &Repository, index: &Index) -> Result<()> {
    let uncounted = index.snapshots_without_references()?;
    if uncounted > 0 {
        bail!("prune refuses to run: the index cache has {uncounted} snapshot(s) whose references were not counted; open it with a full catch-up first");
    }
    let known: HashSet<Id> = index.snapshot_rows()?.into_iter().map(|s| s.id).collect();
    let unknown: Vec<String> = repo.list_snapshot_ids()?.into_iter().filter(|id| !known.contains(id)).map(|id| id.to_hex()).collect();
    if !unknown.is_empty() {
        bail!(
            "prune refuses to run: {} snapshot(s) could not be read ({}); run `imgarc check` and repair them first",
            unknown.len(),
            unknown.join(", ")
        );
    }
    Ok(())
}

/// Deletes the drill records whose snapshot is gone; returns how many (a dry run
/// counts them). The snapshot set is the cache's, which holds every snapshot
/// the repository lists ([`refuse_unless_every_snapshot_is_known`]); a record
/// naming another one is deleted only once its snapshot is confirmed absent, so
/// a snapshot archived since that listing (and drilled at once) keeps its records.
fn delete_orphan_drill_records(repo: &Repository, index: &mut Index, dry_run: bool, warnings: &Warnings) -> Result<u64> {
    let known: HashSet<Id> = index.snapshot_rows()?.into_iter().map(|s| s.id).collect();
    let mut deleted = 0;
    for row in index.drill_rows()?.into_iter().filter(|r| !known.contains(&r.snapshot)) {
        match repo.stat_snapshot(&row.snapshot) {
            Err(e) if e.is_not_found() => {}
            Ok(_) => continue,
            Err(e) => {
                warnings.warn(format!(
                    "drill record {}: cannot look up its snapshot {} ({e}); record kept",
                    row.name,
                    row.snapshot.to_hex()
                ));
                continue;
            }
        }
        deleted += 1;
        if dry_run {
            continue;
        }
        repo.delete_drill_record(&row.name)?;
        index.remove_drill_record(&row.name)?;
        crash_point("drill-record-deleted");
    }
    Ok(deleted)
}

fn sweep(repo: &Repository, index: &mut Index, opts: &PruneOptions, report: &mut PruneReport, warnings: &Warnings) -> Result<()> {
    let locks: Vec<lock::LockInfo> =
        repo.list_locks()?.into_iter().map(|(_, l)| l).filter(|l| !l.is_stale() && l.purpose != "prune").collect();
    for mark in index.marks()? {
        let Some(created) = crate::util::parse_rfc3339(&mark.created) else {
            warnings.warn(format!("{} has an unreadable time; left alone", mark.key));
            continue;
        };
        if created + opts.grace > opts.now {
            continue;
        }
        if let Some(l) = locks.iter().find(|l| crate::util::parse_rfc3339(l.started()).is_none_or(|t| t < created)) {
            report.marks_postponed.push(format!(
                "{}: {} on {} (pid {}) started at {}, before the mark, and is still running",
                mark.key,
                l.purpose,
                l.hostname,
                l.pid,
                l.started()
            ));
            continue;
        }
        // A copy counts only in a pack no mark lists: marked packs may all go.
        let marked = index.marked_packs()?;
        let mut doomed = Vec::new();
        for p in &mark.packs {
            let needed = index.referenced_in_pack(&p.pack)?;
            if needed.iter().all(|(_, copies)| copies.iter().any(|q| !marked.contains(q))) {
                doomed.push((p.pack, p.size));
            } else {
                report.packs_rescued += 1;
            }
        }
        report.packs_deleted += doomed.len() as u64;
        report.bytes_freed += doomed.iter().map(|d| d.1).sum::<u64>();
        if opts.dry_run {
            continue;
        }
        delete_packs(repo, index, &doomed)?;
        crash_point("packs-deleted");
        repo.delete_mark(&mark.key)?;
        index.remove_mark(&mark.key)?;
        report.marks_completed += 1;
    }
    Ok(())
}

/// Deletes packs: first every index object that lists one is replaced by
/// one listing only the others, then the packs themselves.
fn delete_packs(repo: &Repository, index: &mut Index, doomed: &[(Id, u64)]) -> Result<()> {
    let doomed_ids: HashSet<Id> = doomed.iter().map(|d| d.0).collect();
    let mut keys = BTreeSet::new();
    for (pack, _) in doomed {
        keys.extend(index.index_objects_listing(pack)?);
    }
    for key in keys {
        let obj = match repo.read_index_object(&key, None) {
            Ok(o) => o,
            Err(e) if crate::backend::is_not_found(&e) => {
                index.remove_index_object(&key)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let survivors: Vec<IndexedPack> = obj.packs.into_iter().filter(|p| !doomed_ids.contains(&p.id)).collect();
        if !survivors.is_empty() {
            let replacement = IndexObject::new(survivors);
            let new_key = repo.write_index_object(&replacement)?;
            index.add_index_object(&new_key, &replacement)?;
        }
        repo.delete_index_object(&key)?;
        index.remove_index_object(&key)?;
    }
    crash_point("index-rewritten");
    for (pack, _) in doomed {
        repo.delete_pack(pack)?;
        index.remove_pack(pack)?;
    }
    Ok(())
}

fn mark(repo: &Repository, index: &mut Index, opts: &PruneOptions, report: &mut PruneReport, warnings: &Warnings) -> Result<()> {
    let marked = index.marked_packs()?;
    let mut usage: Vec<_> = index.pack_usage()?.into_iter().filter(|u| !marked.contains(&u.pack)).collect();
    // Emptiest first: they free the most for the least copying.
    usage.sort_by(|a, b| (a.used_bytes as f64 / a.size.max(1) as f64).total_cmp(&(b.used_bytes as f64 / b.size.max(1) as f64)));
    let mut doomed: Vec<MarkedPack> = Vec::new();
    let mut doomed_ids: HashSet<Id> = HashSet::new();
    let mut repacker = Repacker::new(repo, opts.dry_run);
    for u in usage {
        let unused = u.size.saturating_sub(u.used_bytes);
        if u.used_blobs > 0 && u.used_bytes as f64 > opts.max_repack_ratio * u.size as f64 {
            report.unreferenced_bytes_kept += unused.saturating_sub(pack_overhead(u.blobs));
            continue;
        }
        // Still-needed blobs: referenced, with no copy in a pack that stays.
        let needed: Vec<PackEntry> = index
            .referenced_in_pack(&u.pack)?
            .into_iter()
            .filter(|(_, copies)| !copies.iter().any(|q| *q != u.pack && !marked.contains(q) && !doomed_ids.contains(q)))
            .map(|(e, _)| e)
            .collect();
        let reason = if needed.is_empty() {
            "unused"
        } else {
            match repacker.copy(index, &u.pack, &needed) {
                Ok(()) => {
                    report.packs_repacked += 1;
                    report.bytes_repacked += needed.iter().map(|e| e.stored_len as u64).sum::<u64>();
                    "repacked"
                }
                Err(e) => {
                    warnings.warn(format!("pack {} not repacked: {e:#}; run `imgarc check --read-data`", u.pack.to_hex()));
                    continue;
                }
            }
        };
        doomed_ids.insert(u.pack);
        doomed.push(MarkedPack { id: u.pack, size: u.size, reason: reason.to_string() });
    }
    report.packs_written += repacker.finish(index)?;
    crash_point("repacked");
    report.packs_marked = doomed.len() as u64;
    report.bytes_marked = doomed.iter().map(|p| p.size).sum();
    if doomed.is_empty() || opts.dry_run {
        return Ok(());
    }
    let mark = PruneMark { version: MARK_VERSION, created: crate::util::now_rfc3339(), hostname: crate::util::hostname(), packs: doomed };
    let key = repo.write_mark(&mark)?;
    index.add_mark(&key, &mark)?;
    crash_point("marked");
    Ok(())
}

/// Bytes of a pack that are not blob data (header and trailer).
fn pack_overhead(blobs: u64) -> u64 {
    (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 + blobs * pack::ENTRY_LEN as u64
}

/// Copies still-needed blobs, as stored, into new packs of the repository's target size.
struct Repacker<'a> {
    repo: &'a Repository,
    dry_run: bool,
    builder: PackBuilder,
    written: u64,
}

impl<'a> Repacker<'a> {
    fn new(repo: &'a Repository, dry_run: bool) -> Self {
        Repacker { repo, dry_run, builder: repo.pack_builder(), written: 0 }
    }

    /// Reads `entries` of `pack` and verifies each before copying; copies nothing if one is damaged.
    fn copy(&mut self, index: &mut Index, pack: &Id, entries: &[PackEntry]) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let bytes = self.repo.read_pack(pack).with_context(|| format!("cannot read pack {}", pack.short()))?;
        let mut blobs = Vec::with_capacity(entries.len());
        for e in entries {
            let stored = bytes
                .get(e.offset as usize..(e.offset + e.stored_len as u64) as usize)
                .with_context(|| format!("blob {} lies beyond the end of its pack", e.id.short()))?;
            self.repo.decode_blob(e, stored)?;
            blobs.push(EncodedBlob { id: e.id, kind: e.kind, codec: e.codec, raw_len: e.raw_len, stored: stored.to_vec() });
        }
        for b in &blobs {
            self.builder.add(b);
            if self.builder.len() as u64 >= self.repo.config().pack_target_size {
                self.flush(index)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, index: &mut Index) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let fresh = self.builder.fresh();
        let written = self.repo.write_pack(std::mem::replace(&mut self.builder, fresh))?;
        index.add_pack(&written.index_key, &IndexedPack::new(written.id, written.pack_size, &written.entries))?;
        self.written += 1;
        Ok(())
    }

    fn finish(mut self, index: &mut Index) -> Result<u64> {
        self.flush(index)?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_syntax() {
        assert_eq!(parse_grace("0").unwrap(), chrono::Duration::zero());
        assert_eq!(parse_grace("23h").unwrap(), chrono::Duration::hours(23));
        assert_eq!(parse_grace("1d90m5s").unwrap(), chrono::Duration::seconds(86400 + 5400 + 5));
        for bad in ["", "h", "5", "5w", "-1h"] {
            assert!(parse_grace(bad).is_err(), "{bad:?} parsed");
        }
    }

    /// A cache whose rows were caught up without references (`Depth::Snapshots`)
    /// counts nothing as used: prune given it refuses, and deletes nothing.
    #[test]
    fn prune_refuses_a_cache_with_uncounted_references() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend, crate::repository::config::Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut writer = Index::open_at(&dir.path().join("writer.sqlite"), &repo.config().id).unwrap();
        let data: Vec<u8> = (0..4096u64).flat_map(|j| Id::of(&j.to_le_bytes()).0).collect();
        let req = crate::archive::ArchiveRequest::raw_unannounced("vm", crate::repository::snapshot::Source::File { path: "/vm".into() });
        crate::archive::archive(&repo, &mut writer, Box::new(std::io::Cursor::new(data)), req, &crate::progress::none()).unwrap();
        let packs = repo.list_packs().unwrap().len();

        let mut index = Index::open_at(&dir.path().join("lazy.sqlite"), &repo.config().id).unwrap();
        index.sync_to(&repo, crate::index::Depth::Snapshots).unwrap();
        let opts = PruneOptions { dry_run: false, max_repack_ratio: 0.0, grace: chrono::Duration::zero(), now: Utc::now() };
        let err = prune(&repo, &mut index, &opts).unwrap_err();
        assert!(format!("{err:#}").contains("whose references were not counted"), "{err:#}");
        assert_eq!(repo.list_packs().unwrap().len(), packs, "a pack was deleted");
        index.sync(&repo).unwrap();
        let report = prune(&repo, &mut index, &opts).unwrap();
        assert_eq!(report.packs_marked, 0, "every pack is in use: {report:?}");
    }
}
