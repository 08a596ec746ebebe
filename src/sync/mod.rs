//! Nightly sync: bringing the repository up to date with a cloud's Glance images.
//!
//! Owns which images a run considers ([`Scope`] + [`Filters`]), the decision
//! per image (`plan::Plan`: archive, unchanged, new metadata only, skip), running
//! the downloads `jobs` at a time, finding images deleted upstream, and the
//! run's [`SyncReport`]. It prints nothing: each finished image goes to the
//! caller's `on_image` callback (`src/cli/sync.rs` logs it).
//!
//! An image is *held* when a snapshot from the same cloud has its id and its
//! content digest (`os_hash_value`, else `checksum`, else size + `updated_at`).
//! Every image's snapshot is written when that image completes, so a run that
//! is killed and started again redoes only the images that were not finished.
//!
//! Files: `filter` (scope and filters), `plan` (what to do per image), `run`
//! (the run and its downloads), `upstream` (deleted-upstream detection); this
//! file holds the options and the report.

mod filter;
mod plan;
mod run;
mod upstream;
mod volumes;

pub use filter::{glob_match, parse_filter, FilterKey, FilterTerm, Filters, Scope};
pub use run::sync;

use plan::display_name;

use crate::net::ratelimit::RateLimiter;
use crate::openstack::glance::{GlanceClient, ImageRecord};
use anyhow::{Context, Result};
use serde::Serialize;

/// The `imgarc sync` flags (each doc line is its `--help`); [`SyncFlags::resolve`]
/// turns them into the run's [`SyncOptions`] (a scope looked up in Keystone,
/// parsed digests and QCOW2 policy).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SyncFlags {
    /// Every project's images (needs an admin role); default: the images owned by the credentials' project
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "project"))]
    pub all_projects: bool,
    /// Only the images owned by this project (id or name)
    #[cfg_attr(feature = "clap", arg(long))]
    pub project: Option<String>,
    /// Only images with KEY=VALUE: name=GLOB, tag=T, visibility=V, disk_format=F (repeatable; the same key ORs, different keys AND)
    #[cfg_attr(feature = "clap", arg(long = "filter", value_name = "KEY=VALUE", value_parser = parse_filter))]
    pub filters: Vec<FilterTerm>,
    /// Leave out images with KEY=VALUE (same keys as --filter; repeatable)
    #[cfg_attr(feature = "clap", arg(long = "exclude", value_name = "KEY=VALUE", value_parser = parse_filter))]
    pub excludes: Vec<FilterTerm>,
    /// Images downloaded and archived at the same time (images archived together cannot dedup against each other)
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64)))]
    pub jobs: u16,
    /// Extra whole-file digests to compute and record, e.g. sha256 (as archive --digest)
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ','))]
    pub digest: Vec<String>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub spill: crate::archive::SpillOptions,
    /// List what would be archived, updated, skipped and found deleted upstream; download nothing and write nothing to the repository (takes no lock)
    #[cfg_attr(feature = "clap", arg(long))]
    pub dry_run: bool,
    /// After the sync, copy each synced image's current snapshot (archived, updated or unchanged) into this second repository, as `imgarc copy`
    #[cfg_attr(feature = "clap", arg(long, value_name = "REPO2", conflicts_with = "dry_run"))]
    pub copy_to: Option<String>,
    /// With --copy-to: the cloud in clouds.yaml holding a swift: copy target
    #[cfg_attr(feature = "clap", arg(long, value_name = "CLOUD", requires = "copy_to", env = "IMGARC_TO_REPO_CLOUD"))]
    pub to_repo_cloud: Option<String>,
    /// With --copy-to: read the target's password from this file (also IMGARC_TO_PASSWORD_FILE, IMGARC_TO_PASSWORD; else the source's)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE", requires = "copy_to"))]
    pub to_password_file: Option<std::path::PathBuf>,
    /// Also archive the project's Cinder volumes (available and in-use) that --filter name=GLOB / metadata.K=V select
    #[cfg_attr(feature = "clap", arg(long))]
    pub volumes: bool,
    /// Only shard K of N (K from 1 to N): N hosts, each with its own --shard, archive a cloud into one repository at once. An image belongs to one shard by its id (BLAKE3 of the id, first 8 bytes little-endian, mod N, plus 1); a volume-backed image's disks go with the image, a --volumes volume by its volume id. Deleted-upstream detection covers the shard's own images only. Shards of one N run together; the same shard twice, two N, or a shard beside an unsharded sync are refused (locked, exit 11)
    #[cfg_attr(feature = "clap", arg(long, value_name = "K/N"))]
    pub shard: Option<crate::shard::Shard>,
}

impl SyncFlags {
    /// The snapshots `sync --copy-to` copies: each synced image's current one (written
    /// now, or already holding its unchanged content), so a copy that failed on an
    /// earlier night is retried, while snapshots retention has since removed from the
    /// target are not copied back.
    pub fn snapshots_to_copy(report: &SyncReport) -> Vec<String> {
        report.archived.iter().chain(&report.metadata_updated).chain(&report.unchanged).filter_map(|e| e.snapshot.clone()).collect()
    }

    /// The extra digests, checked before anything is opened.
    pub fn digests(&self) -> Result<Vec<String>> {
        crate::digest::parse_list(&self.digest.join(","))
    }

    /// The run's options: the scope resolved against `glance`'s session,
    /// `cloud` recorded in each snapshot, `limit` shared by all downloads.
    pub fn resolve(self, glance: &GlanceClient, cloud: Option<String>, limit: Option<RateLimiter>) -> Result<SyncOptions> {
        Ok(SyncOptions {
            scope: self.scope(glance)?,
            digests: self.digests()?,
            qcow2_policy: self.spill.qcow2_policy()?,
            filters: Filters::new(self.filters, self.excludes),
            jobs: self.jobs.max(1) as usize,
            cloud,
            limit,
            dry_run: self.dry_run,
            volumes: self.volumes,
            spill: self.spill,
            shard: self.shard,
        })
    }

    /// `--all-projects`, `--project P` (an id, or a name looked up in Keystone),
    /// else the credentials' own project; with `--glance-url` and no Keystone
    /// there is no project, so every listed image is in scope.
    fn scope(&self, glance: &GlanceClient) -> Result<Scope> {
        if self.all_projects {
            return Ok(Scope::AllProjects);
        }
        let session = glance.session();
        match &self.project {
            Some(p) => {
                let is_id = p.len() == 32 && p.chars().all(|c| c.is_ascii_hexdigit());
                match session {
                    Some(s) if !is_id => Ok(Scope::Project(s.project_id_by_name(p).with_context(|| format!("--project {p}"))?)),
                    _ => Ok(Scope::Project(p.clone())),
                }
            }
            None => Ok(session.and_then(|s| s.project_id()).map_or(Scope::Visible, Scope::Project)),
        }
    }
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
    /// Decide and report only: no download, nothing written to the repository
    /// (no snapshot, no upstream record); each entry says what it `would` do.
    pub dry_run: bool,
    /// `--volumes`: the project's Cinder volumes are archived too.
    pub volumes: bool,
    /// The spill flags (volume disks are archived as `archive cinder:` does, from these).
    pub spill: crate::archive::SpillOptions,
    /// `--shard K/N`: only the images (and `--volumes` volumes) of this shard are archived,
    /// withdrawn or found deleted upstream (`crate::shard`); `None` is all of them.
    pub shard: Option<crate::shard::Shard>,
}

/// What happened to one Cinder disk (a volume snapshot of a volume-backed instance
/// snapshot, or a volume of `--volumes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskResult {
    Archived,
    /// Its Cinder volume snapshot is archived already (snapshots are immutable).
    Unchanged,
    Failed,
}

/// One Cinder disk's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DiskEntry {
    pub result: DiskResult,
    /// The instance snapshot image the disk belongs to (none for a `--volumes` volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The Cinder volume snapshot read (a disk of an instance snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// From the block device mapping entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_index: Option<i64>,
    /// The snapshot written (archived) or already holding it (unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why it failed (or an archived disk's warnings, e.g. a scratch resource not deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In a dry run: what a real run would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
    pub bytes_stored: u64,
    pub seconds: f64,
}

impl DiskEntry {
    /// How a log line names it.
    pub fn describe(&self) -> String {
        match (&self.image_id, &self.volume_snapshot_id) {
            (Some(img), Some(s)) => {
                let dev = self.device_name.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
                format!("disk{dev} of {} ({img}): volume snapshot {s}", self.image_name.as_deref().unwrap_or(img))
            }
            _ => format!("volume {} ({})", self.volume_name.as_deref().unwrap_or("-"), self.volume_id.as_deref().unwrap_or("?")),
        }
    }
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageResult {
    Archived,
    Unchanged,
    MetadataUpdated,
    Skipped,
    /// A nearly empty instance snapshot of a boot-from-volume VM (`block_device_mapping`):
    /// its data is in Cinder volume snapshots, not in the image, so the archive does not protect it.
    VolumeBacked,
    Failed,
}

impl ImageResult {
    /// Every outcome, in report order; `name` is its `--json` list and metric label.
    pub const ALL: [ImageResult; 6] = [
        ImageResult::Archived,
        ImageResult::Unchanged,
        ImageResult::MetadataUpdated,
        ImageResult::Skipped,
        ImageResult::VolumeBacked,
        ImageResult::Failed,
    ];

    /// The outcome's name: its `--json` list in [`SyncReport`] and the `outcome` label of
    /// `imgarc_sync_images`.
    pub fn name(self) -> &'static str {
        match self {
            ImageResult::Archived => "archived",
            ImageResult::Unchanged => "unchanged",
            ImageResult::MetadataUpdated => "metadata_updated",
            ImageResult::Skipped => "skipped",
            ImageResult::VolumeBacked => "volume_backed",
            ImageResult::Failed => "failed",
        }
    }
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
    /// Why it was skipped, failed or is volume-backed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In a dry run: what a real run would do with it and why (e.g. "archive: new content").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<String>,
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
    /// An archived image: the digests of its Glance record that the bytes were checked
    /// against and matched (the strongest, and those `--digest` names; empty: none to check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_digests: Option<Vec<String>>,
    pub seconds: f64,
}

impl ImageEntry {
    pub(super) fn new(result: ImageResult, rec: &ImageRecord) -> ImageEntry {
        ImageEntry {
            result,
            id: rec.id.clone(),
            name: display_name(rec),
            snapshot: None,
            previous: None,
            reason: None,
            would: None,
            bytes_read: 0,
            bytes_stored: 0,
            logical_bytes: None,
            new_bytes: None,
            format: None,
            verified_digests: None,
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
    /// In a dry run: the record a real run would write or withdraw (nothing was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub ok: bool,
    /// A `--dry-run`: nothing was downloaded or written; the lists say what a run would do.
    pub dry_run: bool,
    pub scope: Option<Scope>,
    /// `--shard K/N`: `{"index": K, "count": N}`; null for an unsharded sync.
    pub shard: Option<crate::shard::Shard>,
    /// Images that matched the scope and filters (with `--shard`, those of this shard).
    pub images: usize,
    /// With `--shard`: images that matched the scope and filters but belong to other shards
    /// (not archived, withdrawn or checked for deletion here); 0 unsharded.
    pub images_other_shards: usize,
    pub archived: Vec<ImageEntry>,
    pub unchanged: Vec<ImageEntry>,
    pub metadata_updated: Vec<ImageEntry>,
    pub skipped: Vec<ImageEntry>,
    /// Instance snapshots of boot-from-volume VMs: not archivable as images (see [`ImageResult::VolumeBacked`]).
    pub volume_backed: Vec<ImageEntry>,
    pub failed: Vec<ImageEntry>,
    /// Disks of followed volume-backed instance snapshots archived in this run (one snapshot each).
    pub volume_backed_archived: Vec<DiskEntry>,
    /// Disks whose Cinder volume snapshot was archived by an earlier run.
    pub volume_backed_unchanged: Vec<DiskEntry>,
    /// Disks that could not be archived (each with its reason; the other disks went on).
    pub volume_backed_failed: Vec<DiskEntry>,
    /// `--volumes`: the project's Cinder volumes, each archived or failed.
    pub volumes: Vec<DiskEntry>,
    /// Found gone from Glance in this run (and recorded under `upstream/deleted/`, unless a dry run).
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
    pub(super) fn add(&mut self, e: ImageEntry) {
        self.bytes_read += e.bytes_read;
        self.bytes_stored += e.bytes_stored;
        match e.result {
            ImageResult::Archived => self.archived.push(e),
            ImageResult::Unchanged => self.unchanged.push(e),
            ImageResult::MetadataUpdated => self.metadata_updated.push(e),
            ImageResult::Skipped => self.skipped.push(e),
            ImageResult::VolumeBacked => self.volume_backed.push(e),
            ImageResult::Failed => self.failed.push(e),
        }
    }

    pub(super) fn add_disk(&mut self, e: DiskEntry) {
        self.bytes_stored += e.bytes_stored;
        match e.result {
            DiskResult::Archived => self.volume_backed_archived.push(e),
            DiskResult::Unchanged => self.volume_backed_unchanged.push(e),
            DiskResult::Failed => self.volume_backed_failed.push(e),
        }
    }

    /// `--volumes` volumes that failed.
    pub fn volumes_failed(&self) -> usize {
        self.volumes.iter().filter(|v| v.result == DiskResult::Failed).count()
    }

    /// The images of one outcome.
    pub fn entries(&self, result: ImageResult) -> &[ImageEntry] {
        match result {
            ImageResult::Archived => &self.archived,
            ImageResult::Unchanged => &self.unchanged,
            ImageResult::MetadataUpdated => &self.metadata_updated,
            ImageResult::Skipped => &self.skipped,
            ImageResult::VolumeBacked => &self.volume_backed,
            ImageResult::Failed => &self.failed,
        }
    }

    /// How many images had each outcome (every outcome, zeros included: a metric that
    /// vanishes when it is zero cannot be alerted on).
    pub fn outcome_counts(&self) -> Vec<(ImageResult, usize)> {
        ImageResult::ALL.iter().map(|&r| (r, self.entries(r).len())).collect()
    }
}

#[cfg(test)]
mod test_support {
    use crate::openstack::glance::ImageRecord;
    use serde_json::json;

    pub fn rec(v: serde_json::Value) -> ImageRecord {
        let mut base = json!({"id": "11111111-2222-3333-4444-555555555555", "status": "active", "size": 10});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        ImageRecord::from_json(base).unwrap()
    }
}
