//! Running a sync: list, plan, download and archive `jobs` images at a time
//! (each image's snapshot written when it completes), then look for images
//! deleted upstream; the entry point [`sync`].

use super::plan::{display_name, held_images, plan, Plan};
use super::upstream::find_deleted;
use super::*;
use crate::archive::{archive, record_new_metadata, ArchiveRequest};
use crate::index::Index;
use crate::openstack::glance::{GlanceClient, ImageRecord};
use crate::repository::upstream::DeletedUpstream;
use crate::repository::Repository;
use crate::shard::Shard;
use crate::volumes::VolumeArchiver;
use crate::warnings::Warnings;
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counts the bytes a download delivered, for the report (also when it fails half-way).
pub(super) struct CountingReader {
    inner: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub(super) fn download_one(
    repo: &Repository,
    index: &mut Index,
    glance: &GlanceClient,
    rec: &ImageRecord,
    opts: &SyncOptions,
) -> ImageEntry {
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let mut verified = Vec::new();
    let result = (|| -> Result<crate::archive::ArchiveOutcome> {
        // A lost lock fails every remaining image at once, before its download.
        repo.ensure_locks_held()?;
        let src = crate::source::open_glance_record(glance, rec, opts.cloud.as_deref(), opts.limit.clone(), &opts.digests)?;
        let reader = Box::new(CountingReader { inner: src.reader, count: count.clone() });
        verified = src.expected_digests.keys().cloned().collect();
        let req = ArchiveRequest {
            name: src.default_name,
            tags: Vec::new(),
            source: src.source,
            digests: opts.digests.clone(),
            expected_digests: src.expected_digests,
            expected_size: src.size,
            metadata: src.metadata,
            declared_format: src.declared_format,
            qcow2_policy: opts.qcow2_policy.clone(),
            project: rec.owner.clone(),
        };
        archive(repo, index, reader, req, &crate::progress::none())
    })();
    let mut e = ImageEntry::new(ImageResult::Archived, rec);
    e.bytes_read = count.load(Ordering::Relaxed);
    e.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(o) => {
            e.snapshot = Some(o.snapshot);
            e.bytes_stored = o.stored_bytes_added;
            e.logical_bytes = Some(o.logical_bytes);
            e.new_bytes = Some(o.new_bytes);
            e.format = Some(o.format);
            e.verified_digests = Some(verified);
        }
        Err(err) => {
            e.result = ImageResult::Failed;
            e.reason = Some(format!("{err:#}"));
        }
    }
    e
}

/// Brings the repository up to date with the images `opts` selects (with
/// `opts.dry_run`, only says what it would do: no image data is read and
/// nothing is written to the repository). Errors
/// only when the run cannot start (listing, repository); each image's own
/// failure is in the report, which says `ok: false` if any image failed.
///
/// `cinder` reads the disks of volume-backed instance snapshots (and `opts.volumes`);
/// `Err(why)` (no Cinder endpoint) reports those images as `volume_backed`, with `why`.
/// Each Cinder disk goes to `on_disk` when it is done.
pub fn sync(
    repo: &Repository,
    index: &mut Index,
    glance: &GlanceClient,
    cinder: std::result::Result<&VolumeArchiver<'_>, &str>,
    opts: &SyncOptions,
    on_image: &(dyn Fn(&ImageEntry) + Sync),
    on_disk: &dyn Fn(&DiskEntry),
) -> Result<SyncReport> {
    let started = Instant::now();
    let mut report = SyncReport { scope: Some(opts.scope.clone()), dry_run: opts.dry_run, shard: opts.shard, ..Default::default() };
    // With `--shard`, another shard's images are not this run's: not archived, withdrawn or
    // found deleted here (their shard does it, and only it writes their upstream records).
    let held: HashMap<_, _> =
        held_images(index, opts.cloud.as_deref())?.into_iter().filter(|(id, _)| Shard::admits(opts.shard, id)).collect();

    let mut query = opts.filters.server_side();
    if let Scope::Project(p) = &opts.scope {
        query.push(("owner", p.clone()));
    }
    let query_refs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listed = glance.list_filtered(&query_refs, 1000).context("cannot list the Glance images")?;
    let mut listed_ids: HashSet<String> = HashSet::new();
    // (a page boundary that shifts while paging may repeat an image)
    let listed: Vec<ImageRecord> = listed.into_iter().filter(|r| listed_ids.insert(r.id.clone())).collect();

    // Images recorded as deleted that are listed again, whether or not this run selects them
    // (of its shard).
    let recorded: HashMap<String, DeletedUpstream> = repo.deleted_upstream()?.into_iter().map(|d| (d.image_id.clone(), d)).collect();
    for rec in listed.iter().filter(|r| Shard::admits(opts.shard, &r.id)) {
        if let Some(d) = recorded.get(&rec.id) {
            let would = opts.dry_run.then(|| "withdraw its deleted-upstream record".to_string());
            if !opts.dry_run {
                repo.clear_deleted_upstream(&rec.id)?;
            }
            let snapshot = held.get(&rec.id).and_then(|v| v.last()).map(|(id, _)| id.to_hex()).unwrap_or_default();
            report.reappeared.push(DeletedEntry {
                id: rec.id.clone(),
                name: d.name.clone(),
                snapshot,
                evidence: "listed again".into(),
                would,
            });
        }
    }

    let warnings = Warnings::new();
    report.deleted_upstream.extend(find_deleted(repo, glance, opts, &held, &listed_ids, &recorded, &warnings)?);
    report.warnings = warnings.take();

    let (mut images, others): (Vec<ImageRecord>, Vec<ImageRecord>) =
        listed.into_iter().filter(|r| opts.scope.admits(r) && opts.filters.matches(r)).partition(|r| Shard::admits(opts.shard, &r.id));
    report.images_other_shards = others.len();
    images.sort_by(|a, b| (&a.name, &a.created_at, &a.id).cmp(&(&b.name, &b.created_at, &b.id)));
    report.images = images.len();

    let mut downloads = VecDeque::new();
    let no_snapshots = Vec::new();
    let hasher = repo.metadata_hasher();
    let reads_bodies = repo.key_kind() != Some(crate::crypto::KeyKind::WriteOnly);
    let per_project = repo.config().dedup_scope == crate::repository::config::DedupScope::Project;
    let mut follow = Vec::new();
    for rec in images {
        let mut e = ImageEntry::new(ImageResult::Unchanged, &rec);
        match plan(&rec, held.get(&rec.id).unwrap_or(&no_snapshots), &hasher, reads_bodies, per_project) {
            Plan::Skip(why) => {
                e.result = ImageResult::Skipped;
                e.reason = Some(why);
            }
            Plan::VolumeBacked(why) => match (rec.volume_backed(), cinder) {
                (Some(vb), Ok(_)) if !vb.unreadable && !vb.snapshot_ids.is_empty() => {
                    follow.push((rec, vb));
                    continue;
                }
                (_, Err(no_cinder)) => {
                    e.result = ImageResult::VolumeBacked;
                    e.reason = Some(format!("{why}; not followed: {no_cinder}"));
                }
                _ => {
                    e.result = ImageResult::VolumeBacked;
                    e.reason = Some(why);
                }
            },
            Plan::Unchanged(id) => e.snapshot = Some(id.to_hex()),
            Plan::NewMetadata(prev) if opts.dry_run => {
                e.result = ImageResult::MetadataUpdated;
                e.previous = Some(prev.to_hex());
                e.would = Some("record a snapshot of the new metadata, reusing the held data".into());
            }
            Plan::Download(why) if opts.dry_run => {
                e.result = ImageResult::Archived;
                e.logical_bytes = rec.size;
                e.format = rec.disk_format.clone();
                e.would = Some(format!("archive: {why}"));
            }
            Plan::NewMetadata(prev) => {
                let t = Instant::now();
                let mut metadata = rec.raw.as_object().cloned().unwrap_or_default();
                // What archive drops (store locations can carry credentials) a metadata-only snapshot drops too.
                crate::openstack::glance::redact_store_locations(&mut metadata);
                let previous = match index.snapshot(&prev) {
                    Ok(Some(snap)) => Ok(snap),
                    Ok(None) => repo.load_snapshot(&prev),
                    Err(e) => Err(e),
                };
                match previous.and_then(|snap| record_new_metadata(repo, index, &snap, display_name(&rec), metadata)) {
                    Ok((id, _)) => {
                        e.result = ImageResult::MetadataUpdated;
                        e.snapshot = Some(id.to_hex());
                        e.previous = Some(prev.to_hex());
                    }
                    Err(err) => {
                        e.result = ImageResult::Failed;
                        e.reason = Some(format!("recording the new metadata: {err:#}"));
                    }
                }
                e.seconds = t.elapsed().as_secs_f64();
            }
            Plan::Download(_) => {
                downloads.push_back(rec);
                continue;
            }
        }
        on_image(&e);
        report.add(e);
    }

    for e in run_downloads(repo, index, glance, opts, downloads, on_image)? {
        report.add(e);
    }
    if let Ok(archiver) = cinder {
        let mut held_disks = volumes::held_volume_snapshots(index, opts.cloud.as_deref())?;
        for (rec, vb) in follow {
            for d in volumes::follow_image(archiver, index, &rec, &vb.snapshot_ids, &vb.mappings, &mut held_disks, opts) {
                on_disk(&d);
                report.add_disk(d);
            }
        }
        if opts.volumes {
            for d in volumes::archive_volumes(archiver, index, opts).context("cannot list the Cinder volumes")? {
                on_disk(&d);
                report.bytes_stored += d.bytes_stored;
                report.volumes.push(d);
            }
        }
    }
    report.ok = report.failed.is_empty() && report.volume_backed_failed.is_empty() && report.volumes_failed() == 0;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Archives `queue`, `opts.jobs` images at a time. SQLite connections are not
/// shared across threads: each job opens its own connection to the same cache
/// (WAL; SQLite serializes the writes).
pub(super) fn run_downloads(
    repo: &Repository,
    index: &mut Index,
    glance: &GlanceClient,
    opts: &SyncOptions,
    queue: VecDeque<ImageRecord>,
    on_image: &(dyn Fn(&ImageEntry) + Sync),
) -> Result<Vec<ImageEntry>> {
    // Images of one name (a VM's nightly uploads) go to one job, oldest first:
    // images archived at the same time cannot dedup against each other.
    let mut lineages: Vec<Vec<ImageRecord>> = Vec::new();
    for rec in queue.iter() {
        // (the queue is sorted by name, then creation time)
        match lineages.last_mut() {
            Some(l) if l[0].name == rec.name => l.push(rec.clone()),
            _ => lineages.push(vec![rec.clone()]),
        }
    }
    let jobs = opts.jobs.max(1).min(lineages.len());
    if jobs <= 1 {
        return Ok(queue
            .iter()
            .map(|rec| {
                let e = download_one(repo, index, glance, rec, opts);
                on_image(&e);
                e
            })
            .collect());
    }
    let mut indexes = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        indexes.push(Index::open_at(index.path(), &repo.config().id)?);
    }
    let lineages = Mutex::new(VecDeque::from(lineages));
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for mut job_index in indexes {
            let (lineages, done) = (&lineages, &done);
            s.spawn(move || loop {
                let Some(lineage) = lineages.lock().expect("queue").pop_front() else { break };
                for rec in &lineage {
                    let e = download_one(repo, &mut job_index, glance, rec, opts);
                    on_image(&e);
                    done.lock().expect("results").push(e);
                }
            });
        }
    });
    let mut done = done.into_inner().expect("results");
    done.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(done)
}

#[cfg(test)]
mod interrupted {
    use crate::archive::{archive, ArchiveRequest};
    use crate::index::Index;
    use crate::repository::config::Config;
    use crate::repository::snapshot::Source;
    use crate::repository::Repository;

    fn request(expected_md5: Option<&str>) -> ArchiveRequest {
        let source = Source::Glance { image_id: "11111111-2222-3333-4444-555555555555".into(), cloud: None };
        let mut req = ArchiveRequest::raw_unannounced("img", source);
        req.expected_digests = expected_md5.map(|m| ("md5".to_string(), m.to_string())).into_iter().collect();
        req
    }

    /// What a sync killed mid-image leaves behind: packs (and their index
    /// objects) that no snapshot references. A later run opens the repository
    /// without complaint and stores none of those chunks again.
    #[test]
    fn a_rerun_dedups_against_packs_of_an_unfinished_image() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend, Config::new(64 << 10, 3).unwrap()).unwrap();
        let cache = dir.path().join("index.sqlite");
        let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();

        let mut index = Index::open_at(&cache, &repo.config().id).unwrap();
        index.sync(&repo).unwrap();
        let hidden = crate::progress::none();
        let err = archive(&repo, &mut index, Box::new(std::io::Cursor::new(data.clone())), request(Some("00")), &hidden).unwrap_err();
        assert!(format!("{err:#}").contains("no snapshot stored"), "{err:#}");
        assert!(repo.list_snapshot_ids().unwrap().is_empty());
        assert!(!repo.list_packs().unwrap().is_empty(), "the failed archive should have left packs behind");
        drop(index);

        // A fresh process: a new cache caught up from the repository alone.
        std::fs::remove_file(&cache).unwrap();
        let mut index = Index::open_at(&cache, &repo.config().id).unwrap();
        index.sync(&repo).unwrap();
        let again = archive(&repo, &mut index, Box::new(std::io::Cursor::new(data)), request(None), &hidden).unwrap();
        assert_eq!(again.new_chunks, 0, "{again:?}");
        assert_eq!(repo.list_snapshot_ids().unwrap().len(), 1);
    }
}
