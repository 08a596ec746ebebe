//! Nightly sync: bringing the repository up to date with a cloud's Glance images.
//!
//! Owns which images a run considers ([`Scope`] + [`Filters`]), the decision
//! per image ([`Plan`]: archive, unchanged, new metadata only, skip), running
//! the downloads `jobs` at a time, finding images deleted upstream, and the
//! run's [`SyncReport`]. It prints nothing: each finished image goes to the
//! caller's `on_image` callback (`commands/sync.rs` logs it).
//!
//! An image is *held* when a snapshot from the same cloud has its id and its
//! content digest (`os_hash_value`, else `checksum`, else size + `updated_at`).
//! Every image's snapshot is written when that image completes, so a run that
//! is killed and started again redoes only the images that were not finished.

use crate::archive::{archive, record_new_metadata, ArchiveRequest};
use crate::ids::Id;
use crate::index::Index;
use crate::openstack::glance::{GlanceClient, ImageRecord};
use crate::openstack::ratelimit::RateLimiter;
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::upstream::DeletedUpstream;
use crate::repository::Repository;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Whose images a run lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "project", rename_all = "snake_case")]
pub enum Scope {
    /// Images owned by this project id (the default: the credentials' project; or `--project`).
    Project(String),
    /// Every image the credentials can list (`--all-projects`; every project's for an admin).
    AllProjects,
    /// Every image the listing returns, when no project is known (`--glance-url` without Keystone).
    Visible,
}

impl Scope {
    fn admits(&self, rec: &ImageRecord) -> bool {
        match self {
            Scope::Project(p) => rec.owner.as_deref() == Some(p.as_str()),
            Scope::AllProjects | Scope::Visible => true,
        }
    }
}

/// The image fields `--filter`/`--exclude` can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKey {
    /// `name=GLOB` (`*` any run, `?` one character).
    Name,
    /// `tag=T`: the image has tag T.
    Tag,
    Visibility,
    DiskFormat,
}

/// One `KEY=VALUE` term of `--filter` or `--exclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTerm {
    pub key: FilterKey,
    pub value: String,
}

/// Parses `KEY=VALUE` (the clap value parser of `--filter`/`--exclude`).
pub fn parse_filter(s: &str) -> std::result::Result<FilterTerm, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let key = match k.trim() {
        "name" => FilterKey::Name,
        "tag" => FilterKey::Tag,
        "visibility" => FilterKey::Visibility,
        "disk_format" => FilterKey::DiskFormat,
        other => return Err(format!("unknown filter key {other:?} (name, tag, visibility, disk_format)")),
    };
    Ok(FilterTerm { key, value: v.to_string() })
}

impl FilterTerm {
    fn matches(&self, rec: &ImageRecord) -> bool {
        match self.key {
            FilterKey::Name => glob_match(&self.value, rec.name.as_deref().unwrap_or("")),
            FilterKey::Tag => rec.tags.contains(&self.value),
            FilterKey::Visibility => rec.visibility.as_deref() == Some(self.value.as_str()),
            FilterKey::DiskFormat => rec.disk_format.as_deref() == Some(self.value.as_str()),
        }
    }
}

/// `--filter` terms (same key: OR; different keys: AND) minus `--exclude` terms (any one removes).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    include: BTreeMap<FilterKey, Vec<FilterTerm>>,
    exclude: Vec<FilterTerm>,
}

impl Filters {
    pub fn new(include: Vec<FilterTerm>, exclude: Vec<FilterTerm>) -> Filters {
        let mut by_key: BTreeMap<FilterKey, Vec<FilterTerm>> = BTreeMap::new();
        for t in include {
            by_key.entry(t.key).or_default().push(t);
        }
        Filters { include: by_key, exclude }
    }

    pub fn matches(&self, rec: &ImageRecord) -> bool {
        self.include.values().all(|any| any.iter().any(|t| t.matches(rec))) && !self.exclude.iter().any(|t| t.matches(rec))
    }

    /// Glance query parameters that narrow the listing to a superset of the
    /// matches: only keys with a single value (Glance ANDs repeated
    /// parameters), and names without glob characters.
    fn server_side(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        for (key, terms) in &self.include {
            let [t] = terms.as_slice() else { continue };
            match key {
                FilterKey::Name if !t.value.contains(['*', '?']) => q.push(("name", t.value.clone())),
                FilterKey::Name => {}
                FilterKey::Tag => q.push(("tag", t.value.clone())),
                FilterKey::Visibility => q.push(("visibility", t.value.clone())),
                FilterKey::DiskFormat => q.push(("disk_format", t.value.clone())),
            }
        }
        q
    }
}

/// Shell-style glob: `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub struct SyncOptions {
    pub scope: Scope,
    pub filters: Filters,
    /// Images downloaded and archived at once (at least 1).
    pub jobs: usize,
    /// The `--os-cloud` name recorded in each snapshot's source (`None` for OS_* / `--glance-url`).
    pub cloud: Option<String>,
    /// Shared by all jobs: a cap on the total download rate.
    pub limit: Option<RateLimiter>,
    /// Extra whole-file digests to record (as `archive --digest`).
    pub digests: Vec<String>,
    /// How QCOW2 images are decomposed (spill directory and limit).
    pub qcow2_policy: crate::format::qcow2::Policy,
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageResult {
    Archived,
    Unchanged,
    MetadataUpdated,
    Skipped,
    Failed,
}

/// One image's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ImageEntry {
    #[serde(skip)]
    pub result: ImageResult,
    pub id: String,
    pub name: String,
    /// The snapshot written (archived, metadata_updated) or already holding it (unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The snapshot whose data a metadata-only snapshot reuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes downloaded from Glance (also for a failed download).
    pub bytes_read: u64,
    /// Bytes of packs and index objects added to the repository.
    pub bytes_stored: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    pub seconds: f64,
}

impl ImageEntry {
    fn new(result: ImageResult, rec: &ImageRecord) -> ImageEntry {
        ImageEntry {
            result,
            id: rec.id.clone(),
            name: display_name(rec),
            snapshot: None,
            previous: None,
            reason: None,
            bytes_read: 0,
            bytes_stored: 0,
            logical_bytes: None,
            new_bytes: None,
            format: None,
            seconds: 0.0,
        }
    }
}

/// An image held here that Glance no longer has.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedEntry {
    pub id: String,
    pub name: String,
    /// Its latest snapshot, which retention keeps unless `forget --include-deleted`.
    pub snapshot: String,
    /// What confirmed it: `404` or `status deleted`.
    pub evidence: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub ok: bool,
    pub scope: Option<Scope>,
    /// Images that matched the scope and filters.
    pub images: usize,
    pub archived: Vec<ImageEntry>,
    pub unchanged: Vec<ImageEntry>,
    pub metadata_updated: Vec<ImageEntry>,
    pub skipped: Vec<ImageEntry>,
    pub failed: Vec<ImageEntry>,
    /// Found gone from Glance in this run (and recorded under `upstream/deleted/`).
    pub deleted_upstream: Vec<DeletedEntry>,
    /// Recorded as deleted before, listed again now: their records were withdrawn.
    pub reappeared: Vec<DeletedEntry>,
    /// Things that did not fail an image but deserve a look (e.g. a deletion that could not be confirmed).
    pub warnings: Vec<String>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
}

impl SyncReport {
    fn add(&mut self, e: ImageEntry) {
        self.bytes_read += e.bytes_read;
        self.bytes_stored += e.bytes_stored;
        match e.result {
            ImageResult::Archived => self.archived.push(e),
            ImageResult::Unchanged => self.unchanged.push(e),
            ImageResult::MetadataUpdated => self.metadata_updated.push(e),
            ImageResult::Skipped => self.skipped.push(e),
            ImageResult::Failed => self.failed.push(e),
        }
    }
}

fn display_name(rec: &ImageRecord) -> String {
    rec.name.clone().unwrap_or_else(|| rec.id.clone())
}

/// What a run does with one listed image.
enum Plan {
    Skip(String),
    Unchanged(Id),
    NewMetadata(Id, Box<Snapshot>),
    Download,
}

/// Whether `snap` holds the bytes `rec` describes: its strongest digest, else
/// its size and `updated_at` (images without any digest).
fn same_content(rec: &ImageRecord, snap: &Snapshot) -> bool {
    let digest = |algo: &str| snap.digests.get(algo).map(|d| d.to_ascii_lowercase());
    if let (Some(algo), Some(value)) = (rec.os_hash_algo.as_deref(), rec.os_hash_value.as_deref().filter(|v| !v.is_empty())) {
        if let Some(held) = digest(&algo.to_ascii_lowercase()) {
            return held == value.to_ascii_lowercase();
        }
    }
    if let Some(md5) = rec.checksum.as_deref().filter(|v| !v.is_empty()) {
        if let Some(held) = digest("md5") {
            return held == md5.to_ascii_lowercase();
        }
    }
    let held_updated = snap.metadata.get("updated_at").and_then(|v| v.as_str());
    rec.size == Some(snap.logical_bytes) && rec.updated_at.is_some() && rec.updated_at.as_deref() == held_updated
}

/// Whether `snap` recorded the metadata `rec` has now. Store locations are
/// never archived (they can carry credentials), so they are compared on
/// neither side: a snapshot from before they were dropped still matches.
fn same_metadata(rec: &ImageRecord, snap: &Snapshot) -> bool {
    let Some(listed) = rec.raw.as_object() else {
        return false;
    };
    let (mut listed, mut held) = (listed.clone(), snap.metadata.clone());
    crate::openstack::glance::redact_store_locations(&mut listed);
    crate::openstack::glance::redact_store_locations(&mut held);
    listed == held
}

fn plan(rec: &ImageRecord, held: &[(Id, Snapshot)]) -> Plan {
    if let Some(why) = rec.not_downloadable_reason() {
        return Plan::Skip(why);
    }
    // Newest first: the latest snapshot of this content decides.
    match held.iter().rev().find(|(_, s)| same_content(rec, s)) {
        Some((id, s)) if same_metadata(rec, s) => Plan::Unchanged(*id),
        Some((id, s)) => Plan::NewMetadata(*id, Box::new(s.clone())),
        None => Plan::Download,
    }
}

/// Counts the bytes a download delivered, for the report (also when it fails half-way).
struct CountingReader {
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

fn download_one(repo: &Repository, index: &mut Index, glance: &GlanceClient, rec: &ImageRecord, opts: &SyncOptions) -> ImageEntry {
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let result = (|| -> Result<crate::archive::ArchiveOutcome> {
        // A lost lock fails every remaining image at once, before its download.
        repo.ensure_locks_held()?;
        let src = crate::source::open_glance_record(glance, rec, opts.cloud.as_deref(), opts.limit.clone())?;
        let reader = Box::new(CountingReader { inner: src.reader, count: count.clone() });
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
        }
        Err(err) => {
            e.result = ImageResult::Failed;
            e.reason = Some(format!("{err:#}"));
        }
    }
    e
}

/// Glance snapshots of `cloud` in the repository, by image id, oldest first.
fn held_images(index: &Index, cloud: Option<&str>) -> Result<HashMap<String, Vec<(Id, Snapshot)>>> {
    let mut held: HashMap<String, Vec<(Id, Snapshot)>> = HashMap::new();
    for row in index.snapshot_rows()? {
        let Some(snap) = index.snapshot(&row.id)? else { continue };
        if let Source::Glance { image_id, cloud: c } = &snap.source {
            if c.as_deref() == cloud {
                held.entry(image_id.clone()).or_default().push((row.id, snap));
            }
        }
    }
    for v in held.values_mut() {
        v.sort_by(|a, b| (&a.1.time, a.0).cmp(&(&b.1.time, b.0)));
    }
    Ok(held)
}

/// Brings the repository up to date with the images `opts` selects. Errors
/// only when the run cannot start (listing, repository); each image's own
/// failure is in the report, which says `ok: false` if any image failed.
pub fn sync(
    repo: &Repository,
    index: &mut Index,
    glance: &GlanceClient,
    opts: &SyncOptions,
    on_image: &(dyn Fn(&ImageEntry) + Sync),
) -> Result<SyncReport> {
    let started = Instant::now();
    let mut report = SyncReport { scope: Some(opts.scope.clone()), ..Default::default() };
    let held = held_images(index, opts.cloud.as_deref())?;

    let mut query = opts.filters.server_side();
    if let Scope::Project(p) = &opts.scope {
        query.push(("owner", p.clone()));
    }
    let query_refs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listed = glance.list_filtered(&query_refs, 1000).context("cannot list the Glance images")?;
    let mut listed_ids: HashSet<String> = HashSet::new();
    // (a page boundary that shifts while paging may repeat an image)
    let listed: Vec<ImageRecord> = listed.into_iter().filter(|r| listed_ids.insert(r.id.clone())).collect();

    // Images recorded as deleted that are listed again, whether or not this run selects them.
    let recorded: HashMap<String, DeletedUpstream> = repo.deleted_upstream()?.into_iter().map(|d| (d.image_id.clone(), d)).collect();
    for rec in &listed {
        if let Some(d) = recorded.get(&rec.id) {
            repo.clear_deleted_upstream(&rec.id)?;
            let snapshot = held.get(&rec.id).and_then(|v| v.last()).map(|(id, _)| id.to_hex()).unwrap_or_default();
            report.reappeared.push(DeletedEntry { id: rec.id.clone(), name: d.name.clone(), snapshot, evidence: "listed again".into() });
        }
    }

    find_deleted(repo, glance, opts, &held, &listed_ids, &recorded, &mut report)?;

    let mut images: Vec<ImageRecord> = listed.into_iter().filter(|r| opts.scope.admits(r) && opts.filters.matches(r)).collect();
    images.sort_by(|a, b| (&a.name, &a.created_at, &a.id).cmp(&(&b.name, &b.created_at, &b.id)));
    report.images = images.len();

    let mut downloads = VecDeque::new();
    let no_snapshots = Vec::new();
    for rec in images {
        let mut e = ImageEntry::new(ImageResult::Unchanged, &rec);
        match plan(&rec, held.get(&rec.id).unwrap_or(&no_snapshots)) {
            Plan::Skip(why) => {
                e.result = ImageResult::Skipped;
                e.reason = Some(why);
            }
            Plan::Unchanged(id) => e.snapshot = Some(id.to_hex()),
            Plan::NewMetadata(prev, snap) => {
                let t = Instant::now();
                let mut metadata = rec.raw.as_object().cloned().unwrap_or_default();
                // What archive drops (store locations can carry credentials) a metadata-only snapshot drops too.
                crate::openstack::glance::redact_store_locations(&mut metadata);
                match record_new_metadata(repo, index, &snap, display_name(&rec), metadata) {
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
            Plan::Download => {
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
    report.ok = report.failed.is_empty();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Archives `queue`, `opts.jobs` images at a time. SQLite connections are not
/// shared across threads: each job opens its own connection to the same cache
/// (WAL; SQLite serializes the writes).
fn run_downloads(
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

/// Held images missing from the listing. Only those the run would have
/// selected (judged by their last archived record) are candidates, and each
/// is confirmed with a GET (404 or status `deleted`): a listing alone — paged,
/// filtered, hiding `os_hidden` images — never proves a deletion.
fn find_deleted(
    repo: &Repository,
    glance: &GlanceClient,
    opts: &SyncOptions,
    held: &HashMap<String, Vec<(Id, Snapshot)>>,
    listed: &HashSet<String>,
    recorded: &HashMap<String, DeletedUpstream>,
    report: &mut SyncReport,
) -> Result<()> {
    let mut missing: Vec<(&String, &(Id, Snapshot))> = held
        .iter()
        .filter(|(id, _)| !listed.contains(*id) && !recorded.contains_key(*id))
        .filter_map(|(id, snaps)| snaps.last().map(|last| (id, last)))
        .collect();
    missing.sort_by(|a, b| a.0.cmp(b.0));
    for (image_id, (snap_id, snap)) in missing {
        let Ok(last) = ImageRecord::from_json(serde_json::Value::Object(snap.metadata.clone())) else { continue };
        if !(opts.scope.admits(&last) && opts.filters.matches(&last)) {
            continue;
        }
        let evidence = match glance.get(image_id) {
            Err(crate::openstack::Error::NotFound(_)) => "404".to_string(),
            Ok(now) if now.status == "deleted" => "status deleted".to_string(),
            Ok(_) => continue, // exists, just not listed here (filters, hidden, owner changed)
            Err(e) => {
                report.warnings.push(format!("image {image_id} is not listed, but checking whether it was deleted failed: {e}"));
                continue;
            }
        };
        let entry = DeletedEntry { id: image_id.clone(), name: snap.name.clone(), snapshot: snap_id.to_hex(), evidence };
        repo.record_deleted_upstream(&DeletedUpstream {
            image_id: image_id.clone(),
            name: snap.name.clone(),
            cloud: opts.cloud.clone(),
            detected: crate::util::now_rfc3339(),
        })?;
        report.deleted_upstream.push(entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: serde_json::Value) -> ImageRecord {
        let mut base = json!({"id": "11111111-2222-3333-4444-555555555555", "status": "active", "size": 10});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        ImageRecord::from_json(base).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w?b*-0?", "web-nightly-01"));
        assert!(!glob_match("web-?", "web-01"));
        assert!(glob_match("*a*b", "xxaxxab"));
        assert!(!glob_match("*a*b", "xxaxxa"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }

    #[test]
    fn same_key_ors_different_keys_and_exclude_removes() {
        let f = |inc: &[&str], exc: &[&str]| {
            Filters::new(inc.iter().map(|s| parse_filter(s).unwrap()).collect(), exc.iter().map(|s| parse_filter(s).unwrap()).collect())
        };
        let web = rec(json!({"name": "web-01", "tags": ["nightly"], "disk_format": "qcow2", "visibility": "private"}));
        let db = rec(json!({"name": "db-01", "tags": ["nightly", "keep"], "disk_format": "raw", "visibility": "private"}));
        let both = f(&["name=web-*", "name=db-*"], &[]);
        assert!(both.matches(&web) && both.matches(&db));
        let and = f(&["name=*-01", "disk_format=raw"], &[]);
        assert!(!and.matches(&web) && and.matches(&db));
        let ex = f(&["tag=nightly"], &["tag=keep"]);
        assert!(ex.matches(&web) && !ex.matches(&db));
        assert!(f(&[], &[]).matches(&web));
        assert!(parse_filter("owner=x").is_err() && parse_filter("name").is_err());
        // Only single-valued keys and literal names go to Glance.
        assert_eq!(both.server_side(), vec![]);
        assert_eq!(f(&["name=db-01", "tag=a"], &[]).server_side(), vec![("name", "db-01".to_string()), ("tag", "a".to_string())]);
    }

    #[test]
    fn content_identity_prefers_the_strongest_digest() {
        let snap = |digests: &[(&str, &str)], size: u64, updated: &str| Snapshot {
            version: 1,
            name: "x".into(),
            tags: vec![],
            time: "t".into(),
            hostname: "h".into(),
            source: Source::Stdin,
            logical_bytes: size,
            virtual_bytes: None,
            format: "raw".into(),
            image: None,
            layout: crate::repository::snapshot::Layout::Raw,
            guest: crate::repository::extents::StreamRef {
                size: 0,
                extent_count: 0,
                extents_blake3: Id([0; 32]),
                trees: vec![],
                data_bytes: 0,
            },
            digests: digests.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stats: Default::default(),
            metadata: json!({"updated_at": updated}).as_object().unwrap().clone(),
        };
        let r = rec(json!({"os_hash_algo": "sha512", "os_hash_value": "AA", "checksum": "bb"}));
        assert!(same_content(&r, &snap(&[("sha512", "aa"), ("md5", "zz")], 1, "")));
        assert!(!same_content(&r, &snap(&[("sha512", "ab"), ("md5", "bb")], 10, "")));
        assert!(same_content(&r, &snap(&[("md5", "bb")], 1, "")));
        let bare = rec(json!({"updated_at": "2026-01-01T00:00:00Z"}));
        assert!(same_content(&bare, &snap(&[], 10, "2026-01-01T00:00:00Z")));
        assert!(!same_content(&bare, &snap(&[], 10, "2026-01-02T00:00:00Z")));
        assert!(!same_content(&bare, &snap(&[], 11, "2026-01-01T00:00:00Z")));
    }
}

#[cfg(test)]
mod interrupted {
    use crate::archive::{archive, ArchiveRequest};
    use crate::index::Index;
    use crate::repository::config::Config;
    use crate::repository::snapshot::Source;
    use crate::repository::Repository;

    fn request(expected_md5: Option<&str>) -> ArchiveRequest {
        ArchiveRequest {
            name: "img".into(),
            tags: vec![],
            source: Source::Glance { image_id: "11111111-2222-3333-4444-555555555555".into(), cloud: None },
            digests: vec![],
            expected_digests: expected_md5.map(|m| ("md5".to_string(), m.to_string())).into_iter().collect(),
            expected_size: None,
            metadata: Default::default(),
            declared_format: Some("raw".into()),
            qcow2_policy: Default::default(),
        }
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
