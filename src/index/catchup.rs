//! Catching up with the repository: `Index::sync` ingests index objects,
//! prune marks, snapshots and drill records the cache has not seen and drops what is gone
//! (each absence confirmed: listings may lag); `rebuild` regenerates the
//! cache from nothing, adopting packs no index object lists. What cannot be
//! read is a warning in the [`SyncReport`], never a stop for the rest. With a
//! write-only key, snapshots are ingested from their heads (no references);
//! a catch-up to [`Depth::Snapshots`] (for `list`, `restore`, …) leaves their
//! extent lists unread until a catch-up to [`Depth::References`] counts them.

use super::schema::remove_cache_files;
use super::{cache_dir_for, Index, IndexedRepository};
use crate::crypto::KeyKind;
use crate::ids::Id;
use crate::repository::index_object::{IndexObject, IndexedPack};
use crate::repository::marks::PruneMark;
use crate::repository::snapshot::{Snapshot, SnapshotHead};
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub index_objects_added: usize,
    pub snapshots_added: usize,
    /// Rows added earlier without their references (`Depth::Snapshots`) whose references were counted now.
    pub references_completed: usize,
    pub snapshots_removed: usize,
    /// Snapshots listed in the repository that could not be read, with why (not in the cache).
    pub snapshots_unreadable: Vec<String>,
    /// Prune marks that could not be read, with why.
    pub marks_unreadable: Vec<String>,
    /// Drill records (`drills/`) taken into the cache, and rows dropped because their record is gone.
    pub drill_records_added: usize,
    pub drill_records_removed: usize,
    /// What the catch-up skipped or could not confirm (each also emitted as a
    /// log event when it happened); unreadable marks are left to the caller,
    /// for whom they are a warning (readers) or an error (writers).
    pub warnings: Vec<String>,
}

/// How much of each snapshot a catch-up reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The snapshot and its streams' extent lists, so that every row counts
    /// its references: what prune, report, check and every writer need.
    References,
    /// The snapshot object only: enough to list, select and restore. A new
    /// row stays `refs_known = 0` (its extent lists unread: at a cloud's scale
    /// most of a cold host's catch-up) until a `References` catch-up.
    Snapshots,
}

impl Index {
    /// Catches up with the repository to [`Depth::References`]: ingests index
    /// objects and snapshots it has not seen, counts the references of rows
    /// added without them, and forgets snapshots that are gone. Reads no
    /// packs except the tree blobs of those snapshots.
    pub fn sync(&mut self, repo: &Repository) -> Result<SyncReport> {
        self.sync_to(repo, Depth::References)
    }

    /// [`Index::sync`], reading snapshots to `depth`.
    pub fn sync_to(&mut self, repo: &Repository, depth: Depth) -> Result<SyncReport> {
        let warnings = Warnings::new();
        let mut report = SyncReport { index_objects_added: self.sync_index_objects(repo, &warnings)?, ..Default::default() };
        report.marks_unreadable = self.sync_marks(repo)?;
        let in_repo: HashSet<Id> = repo.list_snapshot_ids()?.into_iter().collect();
        let in_cache: HashSet<Id> = self.snapshot_rows()?.into_iter().map(|s| s.id).collect();
        let new: Vec<Id> = in_repo.difference(&in_cache).copied().collect();
        // Fetched in parallel, each worker reading tree blobs through a cache
        // connection of its own (the index objects are committed by now); rows
        // are written here, on this thread.
        let (path, repo_id) = (self.path.clone(), repo.config().id.clone());
        let write_only = repo.key_kind() == Some(KeyKind::WriteOnly);
        let read_trees = depth == Depth::References && !write_only;
        let tree_reader = || if read_trees { Index::open_at(&path, &repo_id).map(Some) } else { Ok(None) };
        crate::util::fetch_parallel(
            &new,
            crate::util::fetch_threads(),
            tree_reader,
            |reader: &mut Option<Index>, id| -> Result<FetchedSnapshot> {
                // A write-only key reads the head only: a row without references.
                if write_only {
                    return Ok((repo.load_snapshot_head(id)?, None));
                }
                let snap = repo.load_snapshot(id)?;
                let ids = reader.as_ref().map(|reader| references_of(repo, reader, &snap)).transpose()?;
                Ok((SnapshotHead::of(&snap, &repo.metadata_hasher()), Some((snap, ids))))
            },
            |id, fetched| {
                // One snapshot that cannot be read (damaged tree, a listing ahead of
                // the object) must not keep the cache from the others; it stays out
                // of the cache, so `prune` refuses to run and `check` reports it.
                let ingested = fetched.and_then(|(head, body)| match body {
                    Some((snap, Some(ids))) => self.add_snapshot(id, &head, &snap, &ids),
                    Some((snap, None)) => self.add_snapshot_unreferenced(id, &head, &snap),
                    None => self.add_snapshot_head(id, &head),
                });
                match ingested {
                    Ok(()) => report.snapshots_added += 1,
                    Err(e) => skip_snapshot(&warnings, &mut report.snapshots_unreadable, id, &e),
                }
                Ok(())
            },
        )?;
        let gone: Vec<Id> = in_cache.difference(&in_repo).copied().collect();
        // A listing may lag on object stores: only a confirmed absence removes it.
        confirm_absent(
            &gone,
            |id| repo.stat_snapshot(id),
            |id, absent| {
                match absent {
                    Ok(true) => {
                        self.remove_snapshot(id)?;
                        report.snapshots_removed += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warnings.warn(format!("snapshot {} is not listed and cannot be looked up ({e}); kept in the cache", id.to_hex()))
                    }
                }
                Ok(())
            },
        )?;
        // After the removals: a snapshot forgotten meanwhile is not read for nothing.
        if read_trees {
            report.references_completed = self.complete_pending_references(repo, &warnings, &mut report.snapshots_unreadable)?;
        }
        (report.drill_records_added, report.drill_records_removed) = self.sync_drill_records(repo, &warnings)?;
        report.warnings = warnings.take();
        Ok(report)
    }
}

impl Index {
    /// Counts the references of every row added without them, reading their
    /// extent lists in parallel; returns how many. A snapshot whose extent
    /// lists cannot be read leaves the cache, as it would have at its first
    /// full catch-up (so that `prune` refuses to run and `check` names it), and
    /// is named in `unreadable`.
    fn complete_pending_references(&mut self, repo: &Repository, warnings: &Warnings, unreadable: &mut Vec<String>) -> Result<usize> {
        let pending = self.snapshots_to_complete()?;
        let (path, repo_id) = (self.path.clone(), repo.config().id.clone());
        let mut completed = 0;
        crate::util::fetch_parallel(
            &pending,
            crate::util::fetch_threads(),
            || Index::open_at(&path, &repo_id),
            |reader, (_, snap)| references_of(repo, reader, snap),
            |(id, _), ids| {
                match ids {
                    Ok(ids) => completed += usize::from(self.complete_references(id, &ids)?),
                    Err(e) => {
                        skip_snapshot(warnings, unreadable, id, &e);
                        self.remove_snapshot(id)?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(completed)
    }
}

/// The blob ids `snap` references, its extent lists read through `reader`
/// (a catch-up worker's own cache connection).
fn references_of(repo: &Repository, reader: &Index, snap: &Snapshot) -> Result<HashSet<Id>> {
    IndexedRepository::new(repo, reader).referenced_ids(snap).context("cannot read its extent lists")
}

/// A snapshot the catch-up leaves out of the cache: a warning, and named in
/// `unreadable` with why.
fn skip_snapshot(warnings: &Warnings, unreadable: &mut Vec<String>, id: &Id, e: &anyhow::Error) {
    warnings.warn(format!("skipping snapshot {}: {e:#}", id.to_hex()));
    unreadable.push(format!("{}: {e:#}", id.to_hex()));
}

/// A snapshot as a catch-up worker read it: its head, and (unless the key is
/// write-only) the snapshot and, at `Depth::References`, the blob ids it references.
type FetchedSnapshot = (SnapshotHead, Option<(Snapshot, Option<HashSet<Id>>)>);

/// Looks up, in parallel, each of `items` a listing no longer shows, and hands
/// `then` whether it is confirmed gone (`Ok(true)`), still there (`Ok(false)`),
/// or could not be looked up.
fn confirm_absent<T: Sync>(
    items: &[T],
    stat: impl Fn(&T) -> crate::backend::BackendResult<u64> + Sync,
    then: impl FnMut(&T, std::result::Result<bool, crate::backend::BackendError>) -> Result<()>,
) -> Result<()> {
    crate::util::fetch_parallel(
        items,
        crate::util::fetch_threads(),
        || Ok(()),
        |_, item| match stat(item) {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e),
        },
        then,
    )
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub index_objects: usize,
    pub packs: usize,
    /// Packs no index object listed, adopted by reading their trailers.
    pub packs_adopted: usize,
    /// Index objects written to list the adopted packs.
    pub index_objects_written: usize,
    pub packs_unreadable: Vec<String>,
    pub snapshots: usize,
    /// Snapshots that could not be read (left out of the cache), with why.
    pub snapshots_unreadable: Vec<String>,
    pub blobs: u64,
    /// Drill records taken into the cache.
    pub drill_records: usize,
}

/// At most this many blobs go into one index object that `rebuild` writes.
/// A blob costs at most ~130 bytes of JSON (`[id hex, kind, codec, three
/// numbers]`), ~240 with its pack's own fields when every pack holds one blob,
/// so such an object stays below the decode cap (`index_object::MAX_DECODED_LEN`)
/// every reader enforces: one larger object would be skipped by every later
/// sync, its packs unindexed forever.
pub const MAX_BLOBS_PER_INDEX_OBJECT: usize = 1_000_000;
const _: () = assert!(MAX_BLOBS_PER_INDEX_OBJECT as u64 * 240 <= crate::repository::index_object::MAX_DECODED_LEN);

/// Regenerates the index cache from the repository alone: its index objects
/// first, then the trailers of packs no index object lists (for which new
/// index objects are written, repairing the repository), then its snapshots.
pub fn rebuild(repo: &Repository) -> Result<(Index, RebuildReport)> {
    let path = cache_dir_for(&repo.config().id)?.join(super::cache_file_name(repo));
    rebuild_at(repo, &path, MAX_BLOBS_PER_INDEX_OBJECT)
}

/// `rebuild` into the cache file `path`, writing index objects of at most
/// `max_blobs` blobs each (a pack is never split: one with more goes alone).
fn rebuild_at(repo: &Repository, path: &Path, max_blobs: usize) -> Result<(Index, RebuildReport)> {
    let path = path.to_path_buf();
    remove_cache_files(&path)?;
    let mut index = Index::open_at(&path, &repo.config().id)?;
    let mut report = RebuildReport { index_objects: index.sync_index_objects(repo, &Warnings::new())?, ..Default::default() };
    let known = index.packs()?;
    let mut adopted = Vec::new();
    for (pack, size) in repo.list_packs()? {
        if known.contains_key(&pack) {
            continue;
        }
        match repo.read_pack_trailer(&pack) {
            Ok(entries) => adopted.push(IndexedPack::new(pack, size, &entries)),
            Err(e) => report.packs_unreadable.push(format!("{}: {e:#}", pack.to_hex())),
        }
    }
    report.packs_adopted = adopted.len();
    for batch in batches_of_blobs(adopted, max_blobs) {
        let obj = IndexObject::new(batch);
        let key = repo.write_index_object(&obj)?;
        index.add_index_object(&key, &obj)?;
        report.index_objects_written += 1;
    }
    let sync = index.sync(repo)?;
    report.snapshots = sync.snapshots_added;
    report.snapshots_unreadable = sync.snapshots_unreadable;
    report.drill_records = sync.drill_records_added;
    let (_, blobs, packs) = index.counts()?;
    report.blobs = blobs;
    report.packs = packs as usize;
    Ok((index, report))
}

/// Splits `packs` into consecutive groups of at most `max_blobs` blobs each
/// (a pack with more is a group of its own).
pub(super) fn batches_of_blobs(packs: Vec<IndexedPack>, max_blobs: usize) -> Vec<Vec<IndexedPack>> {
    let mut batches: Vec<Vec<IndexedPack>> = Vec::new();
    let mut blobs_in_last = 0;
    for p in packs {
        if batches.is_empty() || blobs_in_last + p.blobs.len() > max_blobs {
            batches.push(Vec::new());
            blobs_in_last = 0;
        }
        blobs_in_last += p.blobs.len();
        batches.last_mut().expect("a batch was just pushed").push(p);
    }
    batches
}

impl Index {
    /// Keys of the index objects the cache has taken in.
    pub fn index_object_keys(&self) -> Result<HashSet<String>> {
        let mut st = self.conn.prepare("SELECT key FROM index_objects")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Ingests index objects not yet seen (returns how many), fetched in
    /// parallel, and drops those a prune or compaction deleted, each confirmed
    /// gone (a listing may lag), with one listing of `index/`.
    fn sync_index_objects(&mut self, repo: &Repository, warnings: &Warnings) -> Result<usize> {
        /// Objects taken in per transaction: one commit per batch, not per object.
        const BATCH: usize = 256;
        let known = self.index_object_keys()?;
        let listed: HashMap<String, u64> = repo.list_index_objects()?.into_iter().collect();
        let new: Vec<(&String, &u64)> = listed.iter().filter(|(k, _)| !known.contains(*k)).collect();
        let mut n = 0;
        let mut batch: Vec<(String, IndexObject)> = Vec::with_capacity(BATCH);
        let flush = |index: &mut Index, batch: &mut Vec<(String, IndexObject)>| -> Result<()> {
            index.add_index_objects(batch.iter().map(|(k, o)| (k.as_str(), o)))?;
            batch.clear();
            Ok(())
        };
        crate::util::fetch_parallel(
            &new,
            crate::util::fetch_threads(),
            || Ok(()),
            |_, (key, size)| repo.read_index_object(key, Some(**size)),
            |(key, _), obj| {
                match obj {
                    Ok(o) => {
                        batch.push(((*key).clone(), o));
                        n += 1;
                    }
                    Err(e) => warnings.warn(format!("skipping {key}: {e:#}")),
                }
                if batch.len() >= BATCH {
                    flush(self, &mut batch)?;
                }
                Ok(())
            },
        )?;
        flush(self, &mut batch)?;
        // After the additions: a prune or a compaction writes an index object's
        // replacement before deleting it, so the packs that survive stay in the cache throughout.
        let gone: Vec<&String> = known.iter().filter(|k| !listed.contains_key(*k)).collect();
        confirm_absent(
            &gone,
            |key| repo.stat::<IndexObject>(key),
            |key, absent| {
                if absent.is_ok_and(|a| a) {
                    self.remove_index_object(key)?;
                }
                Ok(())
            },
        )?;
        Ok(n)
    }
}

impl Index {
    /// Ingests prune marks not yet seen and drops those that are gone from
    /// the repository — confirmed one by one, because a listing may lag
    /// behind a write.
    /// Returns the marks that could not be read, with why: a reader may go on
    /// without them, a writer may not (see `Index::open_writer`).
    fn sync_marks(&mut self, repo: &Repository) -> Result<Vec<String>> {
        let listed: HashSet<String> = repo.list_mark_keys()?.into_iter().collect();
        let known: HashSet<String> = self.marks()?.into_iter().map(|m| m.key).collect();
        let mut unreadable = Vec::new();
        let new: Vec<&String> = listed.difference(&known).collect();
        crate::util::fetch_parallel(
            &new,
            crate::util::fetch_threads(),
            || Ok(()),
            |_, key| repo.read_mark(key),
            |key, read| {
                match read {
                    Ok(mark) => self.add_mark(key, &mark)?,
                    // Deleted between list and get: that prune finished.
                    Err(e) if crate::backend::is_not_found(&e) => {}
                    Err(e) => unreadable.push(format!("{key}: {e:#}")),
                }
                Ok(())
            },
        )?;
        let gone: Vec<&String> = known.difference(&listed).collect();
        confirm_absent(
            &gone,
            |key| repo.stat::<PruneMark>(key),
            |key, absent| {
                if absent.is_ok_and(|a| a) {
                    self.remove_mark(key)?;
                }
                Ok(())
            },
        )?;
        Ok(unreadable)
    }
}

impl Index {
    /// Takes in the drill records not yet cached and drops the rows of those
    /// that are gone, with one listing of `drills/`; returns (added, removed).
    /// A record that cannot be read or checked (its bytes do not hash to its
    /// name, it does not open or parse, a version this imgarc does not read,
    /// no RFC 3339 start) is a warning and stays out of the cache: the next
    /// sync tries it again. A row goes only when its object is confirmed gone
    /// (a listing may lag behind a write).
    fn sync_drill_records(&mut self, repo: &Repository, warnings: &Warnings) -> Result<(usize, usize)> {
        let listed: HashMap<String, u64> = repo.list_drill_records()?.into_iter().collect();
        let known = self.drill_names()?;
        let mut added = 0;
        let new: Vec<(&String, &u64)> = listed.iter().filter(|(n, _)| !known.contains(*n)).collect();
        crate::util::fetch_parallel(
            &new,
            crate::util::fetch_threads(),
            || Ok(()),
            |_, (name, size)| repo.load_drill_record(name, Some(**size)),
            |(name, _), loaded| {
                match loaded.and_then(|record| self.add_drill_record(name, &record)) {
                    Ok(()) => added += 1,
                    // Deleted between list and get: a prune dropped it.
                    Err(e) if crate::backend::is_not_found(&e) => {}
                    Err(e) => warnings.warn(format!("skipping drill record {name}: {e:#}")),
                }
                Ok(())
            },
        )?;
        let mut removed = 0;
        let gone: Vec<&String> = known.iter().filter(|n| !listed.contains_key(*n)).collect();
        confirm_absent(
            &gone,
            |name| repo.stat_drill_record(name),
            |name, absent| {
                match absent {
                    Ok(true) => {
                        self.remove_drill_record(name)?;
                        removed += 1;
                    }
                    Ok(false) => {}
                    Err(e) => warnings.warn(format!("drill record {name} is not listed and cannot be looked up ({e}); kept in the cache")),
                }
                Ok(())
            },
        )?;
        Ok((added, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::config::Config;
    use crate::repository::file::RepoFile;
    use crate::repository::pack::{encode_blob, BlobKind, Codec, PackBuilder, PackEntry};

    fn pack_of(n: usize, seed: u8) -> IndexedPack {
        let entries = (0..n).map(|i| PackEntry {
            id: Id::of(&[seed, i as u8]),
            kind: BlobKind::Data,
            codec: Codec::None,
            offset: 0,
            stored_len: 1,
            raw_len: 1,
        });
        IndexedPack::new(Id::of(&[seed]), 1, &entries.collect::<Vec<_>>())
    }

    #[test]
    fn batches_never_exceed_the_bound_and_never_split_a_pack() {
        let packs = vec![pack_of(2, 1), pack_of(2, 2), pack_of(7, 3), pack_of(1, 4), pack_of(3, 5)];
        let batches = batches_of_blobs(packs, 5);
        let sizes: Vec<Vec<usize>> = batches.iter().map(|b| b.iter().map(|p| p.blobs.len()).collect()).collect();
        assert_eq!(sizes, vec![vec![2, 2], vec![7], vec![1, 3]]);
        assert!(batches_of_blobs(vec![], 5).is_empty());
    }

    /// Packs whose index objects are lost: `index rebuild` adopts them in
    /// ceil(blobs / bound) objects, each within the bound and readable under
    /// the decode cap, and a second host's cache ingests every one of them.
    #[test]
    fn rebuild_writes_bounded_index_objects_that_another_host_ingests() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend, Config::new(64 << 10, 3).unwrap()).unwrap();
        const PACKS: usize = 7;
        const BLOBS_PER_PACK: usize = 2;
        for p in 0..PACKS {
            let mut builder = PackBuilder::new();
            for b in 0..BLOBS_PER_PACK {
                builder.add(&encode_blob(BlobKind::Data, format!("pack {p} blob {b}").as_bytes(), 3));
            }
            repo.write_pack(builder).unwrap();
        }
        for (key, _) in repo.list_index_objects().unwrap() {
            repo.delete_index_object(&key).unwrap();
        }
        let bound = 5; // two packs per object
        let (_, report) = rebuild_at(&repo, &dir.path().join("a.sqlite"), bound).unwrap();
        let per_object = bound / BLOBS_PER_PACK;
        assert_eq!(report.packs_adopted, PACKS);
        assert_eq!(report.index_objects_written, PACKS.div_ceil(per_object), "{report:?}");
        let keys: Vec<String> = repo.list_index_objects().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), report.index_objects_written);
        let mut listed = HashSet::new();
        for key in &keys {
            let obj = repo.read_index_object(key, None).unwrap();
            let blobs: usize = obj.packs.iter().map(|p| p.blobs.len()).sum();
            assert!(blobs <= bound, "{key} lists {blobs} blobs, above the bound {bound}");
            listed.extend(obj.packs.iter().map(|p| p.id));
        }
        assert_eq!(listed.len(), PACKS, "every adopted pack is listed exactly once");

        let mut other = Index::open_at(&dir.path().join("b.sqlite"), &repo.config().id).unwrap();
        let sync = other.sync(&repo).unwrap();
        assert_eq!(sync.index_objects_added, keys.len());
        assert_eq!(other.packs().unwrap().len(), PACKS);
        assert_eq!(other.counts().unwrap().1, (PACKS * BLOBS_PER_PACK) as u64);
    }

    /// Per snapshot id: (referenced, unique) bytes, and the totals; `seq`s differ between caches.
    fn usage_by_id(
        index: &Index,
    ) -> (Vec<(Id, crate::index::usage::Bytes, crate::index::usage::Bytes)>, crate::index::usage::Bytes, crate::index::usage::Bytes) {
        let blobs = index.blob_usage().unwrap();
        let mut per: Vec<_> = index
            .snapshot_usage()
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.referenced, blobs.unique_by_owner.get(&s.seq).copied().unwrap_or_default()))
            .collect();
        per.sort_by_key(|(id, ..)| *id);
        (per, blobs.referenced, blobs.unreferenced)
    }

    /// A catch-up to `Depth::Snapshots` reads snapshot objects only: with every
    /// pack read failing it still takes in every snapshot, whole, counting no
    /// reference. A full catch-up that cannot read their extent lists drops
    /// them, named (prune then refuses: they are listed but not cached); one
    /// that can counts them, to the same figures as a cache that read them at once.
    #[test]
    fn a_catch_up_without_references_reads_no_pack_and_a_full_one_counts_them() {
        use crate::backend::faults::{Faulty, Op};
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap());
        let repo = Repository::init(faulty.clone(), Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut writer = Index::open_at(&dir.path().join("writer.sqlite"), &repo.config().id).unwrap();
        let mut snaps = Vec::new();
        let mut previous: Vec<u8> = Vec::new();
        for night in 0..3u64 {
            // Each night keeps the first half of the one before: shared and unique chunks.
            let fresh: Vec<u8> = (0..2048u64).flat_map(|j| Id::of(&[night, j].map(u64::to_le_bytes).concat()).0).collect();
            let data = [previous.get(..previous.len() / 2).unwrap_or_default(), &fresh[..]].concat();
            let req =
                crate::archive::ArchiveRequest::raw_unannounced("vm", crate::repository::snapshot::Source::File { path: "/vm".into() });
            let out =
                crate::archive::archive(&repo, &mut writer, Box::new(std::io::Cursor::new(data.clone())), req, &crate::progress::none())
                    .unwrap();
            snaps.push(out.snapshot);
            previous = data;
        }
        let snaps: Vec<Id> = snaps.iter().map(|h| Id::from_hex(h).unwrap()).collect();

        faulty.fail(Op::Get, "data/");
        let mut cold = Index::open_at(&dir.path().join("cold.sqlite"), &repo.config().id).unwrap();
        let r = cold.sync_to(&repo, Depth::Snapshots).unwrap();
        assert_eq!((r.snapshots_added, r.snapshots_unreadable.len()), (3, 0), "{r:?}");
        assert_eq!(cold.snapshots_without_references().unwrap(), 3);
        for id in &snaps {
            assert!(cold.snapshot(id).unwrap().is_some(), "the row holds the whole snapshot");
        }
        let (_, referenced, _) = usage_by_id(&cold);
        assert_eq!(referenced.blobs, 0, "no reference is counted before the extent lists are read");

        let r = cold.sync(&repo).unwrap();
        assert_eq!(r.snapshots_unreadable.len(), 3, "{r:?}");
        assert!(r.snapshots_unreadable.iter().all(|u| u.contains("extent lists")), "{r:?}");
        assert!(cold.snapshot_rows().unwrap().is_empty(), "a snapshot whose references cannot be counted stays out of the cache");

        faulty.heal();
        assert_eq!(cold.sync_to(&repo, Depth::Snapshots).unwrap().snapshots_added, 3);
        let r = cold.sync(&repo).unwrap();
        assert_eq!((r.references_completed, r.snapshots_added), (3, 0), "{r:?}");
        assert_eq!(cold.snapshots_without_references().unwrap(), 0);
        assert_eq!(cold.sync(&repo).unwrap().references_completed, 0, "completed once");

        let mut at_once = Index::open_at(&dir.path().join("at-once.sqlite"), &repo.config().id).unwrap();
        at_once.sync(&repo).unwrap();
        let (per, referenced, unreferenced) = usage_by_id(&cold);
        assert!(referenced.blobs > 0 && per.iter().all(|(_, r, u)| r.blobs > 0 && u.blobs > 0), "{per:?}");
        assert_eq!((per, referenced, unreferenced), usage_by_id(&at_once));
        let used = |index: &Index| {
            let mut u: Vec<_> = index.pack_usage().unwrap().into_iter().map(|p| (p.pack, p.used_blobs, p.used_bytes)).collect();
            u.sort();
            u
        };
        assert_eq!(used(&cold), used(&at_once));

        // A snapshot forgotten while its row waits: the row goes and uncounts nothing.
        let mut late = Index::open_at(&dir.path().join("late.sqlite"), &repo.config().id).unwrap();
        late.sync_to(&repo, Depth::Snapshots).unwrap();
        repo.delete_snapshot(&snaps[0]).unwrap();
        cold.sync(&repo).unwrap();
        let r = late.sync(&repo).unwrap();
        assert_eq!((r.snapshots_removed, r.references_completed), (1, 2), "{r:?}");
        assert_eq!(usage_by_id(&late), usage_by_id(&cold));
    }

    /// What the catch-up cannot read is a warning in its report (and a log
    /// event), and the rest is still ingested.
    #[test]
    fn an_index_object_that_does_not_match_its_name_is_a_warning_in_the_sync_report() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let backend = crate::backend::open(root.to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend, Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut builder = PackBuilder::new();
        builder.add(&encode_blob(BlobKind::Data, b"one blob", 3));
        let written = repo.write_pack(builder).unwrap();
        let planted = IndexObject::id_key(&Id::of(b"not this object"));
        std::fs::copy(root.join(&written.index_key), root.join(&planted)).unwrap();
        let mut index = Index::open_at(&dir.path().join("index.sqlite"), &repo.config().id).unwrap();
        let report = index.sync(&repo).unwrap();
        assert_eq!(report.index_objects_added, 1);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains(&planted) && report.warnings[0].contains("does not match its name"), "{:?}", report.warnings);
        assert!(index.packs().unwrap().contains_key(&written.id));
    }
}
