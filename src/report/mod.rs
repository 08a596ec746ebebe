//! The capacity report (`imgarc report`): what the repository holds, what each
//! snapshot and each group of snapshots costs, how fast it grows and when it
//! fills up. This module computes the figures; `render` turns them into a
//! table, JSON, CSV, Prometheus text or a self-contained HTML page.
//!
//! Cost: one pass over the index's blobs (`Index::blob_usage`) gives the
//! repository totals and every snapshot's unique bytes at once, from the
//! reference counts and owners the index keeps current. Only "what forgetting
//! a whole group frees" needs more than that (a blob two members share may
//! also be used outside the group): it is computed exactly by reading the
//! group members' extent lists, for as many groups as `scan_limit` chunk
//! references allow; other groups say `exact: false` and give the lower bound
//! (their members' own unique bytes).
//!
//! The restore drills (`drills`: last drill and last success per image, images
//! never drilled or whose last drill failed) come from the index's cached drill
//! records (`drills.rs`).

pub mod drills;
pub(crate) mod html;
pub mod render;

use crate::ids::Id;
use crate::index::usage::{Bytes, SnapshotUsage};
use crate::index::Index;
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::Repository;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How snapshots are grouped (`--by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The Glance image id (else the snapshot name).
    Image,
    Name,
    /// The Glance `owner` (project id).
    Project,
    /// Each tag is a group; a snapshot with several tags is in several groups.
    Tag,
    /// The month (UTC) of the snapshot time.
    Month,
}

impl GroupBy {
    pub fn parse(s: &str) -> Result<GroupBy> {
        Ok(match s {
            "image" => GroupBy::Image,
            "name" => GroupBy::Name,
            "project" => GroupBy::Project,
            "tag" => GroupBy::Tag,
            "month" => GroupBy::Month,
            _ => bail!("cannot group by {s:?} (image, name, project, tag or month)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Image => "image",
            GroupBy::Name => "name",
            GroupBy::Project => "project",
            GroupBy::Tag => "tag",
            GroupBy::Month => "month",
        }
    }
}

/// Chunk references the group computation reads by default (about a minute of
/// local reading at worst; a 2 GiB image has ~30,000).
pub const DEFAULT_SCAN_LIMIT: u64 = 4_000_000;

/// Days of history the growth projection fits a line through.
pub const GROWTH_WINDOW_DAYS: i64 = 30;

#[derive(Debug, Clone)]
pub struct Options {
    pub by: Option<GroupBy>,
    /// Only snapshots whose Glance `owner` is this project; nothing repository-wide is reported.
    pub project: Option<String>,
    /// The repository's (or with `project`, the project's) capacity in bytes, for the projection.
    pub capacity: Option<u64>,
    /// At most this many chunk references are read for exact group figures.
    pub scan_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { by: None, project: None, capacity: None, scan_limit: DEFAULT_SCAN_LIMIT }
    }
}

/// The `imgarc report` flags (each doc line is its `--help`); [`ReportFlags::resolve`]
/// makes the output format and the [`Options`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ReportFlags {
    /// Output format (the global --json means json)
    #[cfg_attr(feature = "clap", arg(long, value_parser = ["table", "json", "csv", "prometheus", "html"]))]
    pub format: Option<String>,
    /// Group snapshots (html groups by name unless told otherwise)
    #[cfg_attr(feature = "clap", arg(long, value_parser = ["image", "name", "project", "tag", "month"]))]
    pub by: Option<String>,
    /// Only this project's images (Glance owner); nothing repository-wide is shown
    #[cfg_attr(feature = "clap", arg(long))]
    pub project: Option<String>,
    /// Capacity to project the growth against, e.g. 10T (K=1024, M=2^20, G=2^30, T=2^40)
    #[cfg_attr(feature = "clap", arg(long))]
    pub capacity: Option<String>,
    /// Chunk references read at most for exact per-group figures
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_SCAN_LIMIT))]
    pub scan_limit: u64,
    /// Write the report to FILE instead of standard output (atomically, mode 0644, for node_exporter's textfile collector)
    #[cfg_attr(feature = "clap", arg(short, long, value_name = "FILE"))]
    pub output: Option<std::path::PathBuf>,
    /// Prometheus series: per image (and group), or also one set per snapshot
    #[cfg_attr(feature = "clap", arg(long, value_name = "LEVEL", value_parser = ["image", "snapshot"]))]
    pub metrics_detail: Option<String>,
}

impl ReportFlags {
    /// The Prometheus series asked for; `--metrics-detail` with another format is an error, not ignored.
    pub fn metrics_detail(&self, format: render::Format) -> Result<render::MetricsDetail> {
        match &self.metrics_detail {
            None => Ok(render::MetricsDetail::default()),
            Some(_) if format != render::Format::Prometheus => bail!("--metrics-detail applies to --format prometheus only"),
            Some(d) => render::MetricsDetail::parse(d),
        }
    }

    /// The format (`json` when no `--format` and the global `--json`) and the options.
    pub fn resolve(&self, json: bool) -> Result<(render::Format, Options)> {
        use render::Format;
        let format = match (&self.format, json) {
            (Some(f), _) => Format::parse(f)?,
            (None, true) => Format::Json,
            (None, false) => Format::Table,
        };
        let mut by = self.by.as_deref().map(GroupBy::parse).transpose()?;
        if format == Format::Html && by.is_none() {
            // The page's "dedup by group" chart needs groups.
            by = Some(GroupBy::Name);
        }
        let capacity = self.capacity.as_deref().map(crate::util::parse_size).transpose().context("--capacity")?;
        Ok((format, Options { by, project: self.project.clone(), capacity, scan_limit: self.scan_limit }))
    }
}

/// Byte figures use one convention: `*_bytes` are stored (compressed, one copy
/// per distinct chunk: what the disk holds), `*_raw_bytes` the same chunks
/// uncompressed. `definitions` in the JSON says what each figure means.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: String,
    /// The project the report is scoped to, if any.
    pub project: Option<String>,
    pub totals: Totals,
    pub snapshots: Vec<SnapshotFigures>,
    pub group_by: Option<String>,
    pub groups: Vec<GroupFigures>,
    pub growth: Growth,
    pub definitions: BTreeMap<&'static str, &'static str>,
    /// Figures set to `null` in this report, and why ([`withheld_reason`]): a
    /// `--project` report of a repository whose chunks projects share.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the backend keeps the objects immutable (S3 Object Lock), and why not.
    pub immutability: crate::object_lock::Immutability,
    /// Object lock: per snapshot, when its data becomes deletable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots_retained: Vec<crate::object_lock::SnapshotRetention>,
    /// Restore drills per image ([`drills`]): the records of the snapshots in this report.
    pub drills: drills::Drills,
}

/// The figures a `--project` report withholds when projects share chunks: each
/// is computed against what other projects store (a blob is unique only if no
/// other project uses it; an archive adds only what no project holds yet), so
/// a tenant could learn from them whether another tenant holds given data.
pub const WITHHELD_ACROSS_PROJECTS: [&str; 9] = [
    "unique_chunks",
    "unique_bytes",
    "unique_raw_bytes",
    "shared_bytes",
    "shared_raw_bytes",
    "stored_bytes_added",
    "members_unique_bytes",
    "members_unique_raw_bytes",
    "cumulative_bytes",
];

/// Why a `--project` report withholds [`WITHHELD_ACROSS_PROJECTS`], or `None`
/// when its figures reveal nothing of other projects: no `--project`, a
/// repository whose dedup scope is `project` (no chunk is shared across
/// projects, so every figure is exact and the project's own), or an
/// unencrypted repository (which promises tenants no confidentiality; its
/// reports keep the v1 figures).
pub fn withheld_reason(repo: &Repository, project: Option<&str>) -> Option<String> {
    let shared_scope = repo.config().cipher().is_some() && repo.config().dedup_scope == crate::repository::config::DedupScope::Repository;
    (project.is_some() && shared_scope).then(|| {
        "the repository's dedup scope is `repository`: projects share chunks, so unique, shared and added bytes \
         would be measured against other projects' data; they are null (a repository created with \
         --dedup-scope project reports them exactly)"
            .to_string()
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub snapshots: u64,
    pub logical_bytes: u64,
    pub virtual_bytes: u64,
    pub allocated_bytes: u64,
    /// Distinct chunks (and tree blobs) the snapshots reference.
    pub chunks: u64,
    pub deduplicated_bytes: u64,
    pub stored_bytes: u64,
    /// `null` when withheld ([`Report::withheld`]).
    pub unique_bytes: Option<u64>,
    pub unique_raw_bytes: Option<u64>,
    pub dedup_ratio: Option<f64>,
    pub compression_ratio: Option<f64>,
    pub total_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreferenced_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreferenced_raw_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreferenced_chunks: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotFigures {
    pub id: String,
    pub name: String,
    pub time: String,
    pub tags: Vec<String>,
    pub project: Option<String>,
    pub image: Option<String>,
    pub format: String,
    pub logical_bytes: u64,
    pub virtual_bytes: u64,
    pub allocated_bytes: u64,
    pub chunks: u64,
    pub referenced_bytes: u64,
    pub referenced_raw_bytes: u64,
    /// The unique, shared and added figures are `null` when withheld ([`Report::withheld`]).
    pub unique_chunks: Option<u64>,
    pub unique_bytes: Option<u64>,
    pub unique_raw_bytes: Option<u64>,
    pub shared_bytes: Option<u64>,
    pub shared_raw_bytes: Option<u64>,
    pub stored_bytes_added: Option<u64>,
    #[serde(skip)]
    seq: i64,
    #[serde(skip)]
    extent_refs: u64,
}

impl SnapshotFigures {
    /// The six sizes, human-readable, in the column order the table and the HTML page share.
    pub(crate) fn size_columns(&self) -> [String; 6] {
        let opt = |b: Option<u64>| b.map_or_else(|| "-".to_string(), crate::util::human_bytes);
        let h = crate::util::human_bytes;
        [
            h(self.logical_bytes),
            h(self.virtual_bytes),
            h(self.allocated_bytes),
            h(self.referenced_bytes),
            opt(self.unique_bytes),
            opt(self.shared_bytes),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupFigures {
    pub key: String,
    pub snapshots: u64,
    pub logical_bytes: u64,
    pub virtual_bytes: u64,
    pub allocated_bytes: u64,
    /// These three are `null` when withheld ([`Report::withheld`]).
    pub stored_bytes_added: Option<u64>,
    pub members_unique_bytes: Option<u64>,
    pub members_unique_raw_bytes: Option<u64>,
    /// Whether the figures below were computed (exactly); `false` when over the scan limit.
    pub exact: bool,
    pub chunks: Option<u64>,
    pub referenced_bytes: Option<u64>,
    pub referenced_raw_bytes: Option<u64>,
    pub unique_bytes: Option<u64>,
    pub unique_raw_bytes: Option<u64>,
    pub shared_bytes: Option<u64>,
    pub shared_raw_bytes: Option<u64>,
    pub dedup_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Growth {
    pub days: Vec<GrowthDay>,
    pub projection: Option<Projection>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GrowthDay {
    /// UTC date of the snapshots' time, `YYYY-MM-DD`.
    pub date: String,
    pub snapshots: u64,
    /// `null` when withheld ([`Report::withheld`]).
    pub stored_bytes_added: Option<u64>,
    pub cumulative_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Projection {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Slope of a least-squares line through the cumulative additions of the last `window_days`.
    pub bytes_per_day: Option<f64>,
    pub window_days: i64,
    /// Days from the last snapshot day until full: 0 when already full, null when never (not growing).
    pub days_left: Option<f64>,
    /// The day the capacity is reached (`YYYY-MM-DD`), or null ("never").
    pub full_on: Option<String>,
    pub note: String,
}

/// Figures about the whole repository, absent from a report scoped to one project.
const REPOSITORY_WIDE: [&str; 2] = ["pack_bytes", "unreferenced_bytes"];

pub fn definitions() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("logical_bytes", "length of the archived image files (what restores write)"),
        ("virtual_bytes", "size of the virtual disks (QCOW2: the guest size; raw: the file length)"),
        ("allocated_bytes", "guest bytes that are not holes (all-zero blocks): the disk's allocated data"),
        ("chunks", "distinct blobs (data chunks and tree blobs) referenced"),
        ("deduplicated_bytes", "uncompressed size of the distinct blobs referenced: the data after deduplication"),
        ("stored_bytes", "compressed size of the distinct blobs referenced (one copy each): the data on disk"),
        ("referenced_bytes", "stored size of the distinct blobs a snapshot or group uses (raw: uncompressed)"),
        (
            "unique_bytes",
            "stored size of the blobs nothing outside the snapshot (group) references: what forgetting it and pruning frees (raw: uncompressed)",
        ),
        ("shared_bytes", "referenced_bytes minus unique_bytes: bytes also used by snapshots outside the snapshot (group)"),
        ("members_unique_bytes", "sum of the group members' own unique_bytes: a lower bound of the group's unique_bytes"),
        ("stored_bytes_added", "bytes of packs and index objects an archive added to the repository when it ran"),
        ("dedup_ratio", "logical_bytes / deduplicated_bytes"),
        ("compression_ratio", "deduplicated_bytes / stored_bytes"),
        ("total_ratio", "logical_bytes / stored_bytes"),
        ("pack_bytes", "size of every pack in the repository, including duplicates and unreferenced blobs"),
        ("unreferenced_bytes", "stored size of blobs no snapshot references, awaiting prune"),
        (
            "last_drill",
            "an image's latest restore drill (`imgarc drill`) of one of its snapshots in the repository; `seconds` is its wall time, the recovery time the repository delivers for the image",
        ),
        ("last_success", "an image's latest restore drill that passed; null when none did"),
    ])
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn meta_str(snap: &Snapshot, key: &str) -> Option<String> {
    snap.metadata.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

/// One snapshot's figures; `withhold`: leave out those measured against other projects.
fn snapshot_figures(u: &SnapshotUsage, snap: &Snapshot, unique: Bytes, withhold: bool) -> SnapshotFigures {
    let shown = |v: u64| (!withhold).then_some(v);
    let virtual_bytes = snap.virtual_bytes.unwrap_or(snap.logical_bytes);
    let image = meta_str(snap, "id").or_else(|| match &snap.source {
        Source::Glance { image_id, .. } => Some(image_id.clone()),
        _ => None,
    });
    let shared = u.referenced.minus(unique);
    SnapshotFigures {
        id: u.id.to_hex(),
        name: snap.name.clone(),
        time: snap.time.clone(),
        tags: snap.tags.clone(),
        project: meta_str(snap, "owner"),
        image,
        format: snap.format.clone(),
        logical_bytes: snap.logical_bytes,
        virtual_bytes,
        // The guest stream's extents cover exactly its non-hole bytes, whatever the
        // layout (a QCOW2's unallocated clusters never reach the chunker's hole count).
        allocated_bytes: snap.guest.data_bytes,
        chunks: u.referenced.blobs,
        referenced_bytes: u.referenced.stored,
        referenced_raw_bytes: u.referenced.raw,
        unique_chunks: shown(unique.blobs),
        unique_bytes: shown(unique.stored),
        unique_raw_bytes: shown(unique.raw),
        shared_bytes: shown(shared.stored),
        shared_raw_bytes: shown(shared.raw),
        stored_bytes_added: shown(snap.stats.stored_bytes_added),
        seq: u.seq,
        extent_refs: snap.stats.chunks,
    }
}

/// Reads the distinct blobs of snapshots (their extent lists), once each.
struct RefReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    docs: HashMap<i64, Snapshot>,
}

impl RefReader<'_> {
    fn refs(&self, seq: i64) -> Result<HashSet<Id>> {
        let snap = self.docs.get(&seq).context("snapshot vanished from the report")?;
        crate::index::IndexedRepository::new(self.repo, self.index).referenced_ids(snap)
    }

    /// Exact figures for a set of snapshots: the distinct blobs they reference,
    /// and those no other snapshot references (a blob's in-set count equals its
    /// reference count).
    fn union_figures(&self, members: &[i64]) -> Result<(Bytes, Bytes)> {
        let mut in_set: HashMap<Id, u64> = HashMap::new();
        for &seq in members {
            for id in self.refs(seq)? {
                *in_set.entry(id).or_default() += 1;
            }
        }
        let (mut referenced, mut unique) = (Bytes::default(), Bytes::default());
        for (id, n) in in_set {
            if let Some(b) = self.index.blob_ref(&id)? {
                referenced.add(b.size);
                if b.count <= n {
                    unique.add(b.size);
                }
            }
        }
        Ok((referenced, unique))
    }
}

/// One image of the report: the snapshots of one Glance image (by id), or of
/// one name for archives of files and streams, which have no image id. The
/// Prometheus `imgarc_image_*` series and the drill section are per image.
pub(crate) struct Image<'a> {
    /// Its latest snapshot (the first of the latest time): the `name` every per-image figure shows.
    pub latest: &'a SnapshotFigures,
    pub latest_time: Option<chrono::DateTime<chrono::Utc>>,
    pub snapshots: u64,
    pub members: Vec<&'a SnapshotFigures>,
}

/// The report's snapshots by image, ordered by image id (file archives by name, first).
pub(crate) fn images(snapshots: &[SnapshotFigures]) -> Vec<Image<'_>> {
    let mut by_key: BTreeMap<(bool, &str), Image<'_>> = BTreeMap::new();
    for x in snapshots {
        let key = match x.image.as_deref() {
            Some(id) if !id.is_empty() => (true, id),
            _ => (false, x.name.as_str()),
        };
        let time = crate::util::parse_rfc3339(&x.time);
        let s = by_key.entry(key).or_insert(Image { latest: x, latest_time: time, snapshots: 0, members: Vec::new() });
        s.snapshots += 1;
        s.members.push(x);
        if time > s.latest_time {
            (s.latest, s.latest_time) = (x, time);
        }
    }
    by_key.into_values().collect()
}

fn group_keys(by: GroupBy, f: &SnapshotFigures) -> Vec<String> {
    match by {
        GroupBy::Image => vec![f.image.clone().unwrap_or_else(|| f.name.clone())],
        GroupBy::Name => vec![f.name.clone()],
        GroupBy::Project => vec![f.project.clone().unwrap_or_else(|| "(none)".into())],
        GroupBy::Tag if f.tags.is_empty() => vec!["(untagged)".into()],
        GroupBy::Tag => f.tags.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
        GroupBy::Month => vec![f.time.get(..7).unwrap_or("unknown").to_string()],
    }
}

/// Computes the whole report, from one consistent state of the index.
pub fn compute(repo: &Repository, index: &Index, opts: &Options) -> Result<Report> {
    index.read_consistent(|| compute_now(repo, index, opts))
}

fn compute_now(repo: &Repository, index: &Index, opts: &Options) -> Result<Report> {
    let reason = withheld_reason(repo, opts.project.as_deref());
    let withhold = reason.is_some();
    let usage = index.blob_usage()?;
    let mut snapshots = Vec::new();
    let mut docs = HashMap::new();
    for u in index.snapshot_usage()? {
        let mut snap: Snapshot = serde_json::from_str(&u.json).with_context(|| format!("cached snapshot {} is malformed", u.id.short()))?;
        // What the report keeps of a snapshot never holds store locations (credentials), old snapshots included.
        crate::openstack::glance::redact_store_locations(&mut snap.metadata);
        if let Some(p) = &opts.project {
            if meta_str(&snap, "owner").as_deref() != Some(p.as_str()) {
                continue;
            }
        }
        let unique = usage.unique_by_owner.get(&u.seq).copied().unwrap_or_default();
        snapshots.push(snapshot_figures(&u, &snap, unique, withhold));
        docs.insert(u.seq, snap);
    }
    let reader = RefReader { repo, index, docs };

    let mut totals = Totals { snapshots: snapshots.len() as u64, ..Default::default() };
    for s in &snapshots {
        totals.logical_bytes += s.logical_bytes;
        totals.virtual_bytes += s.virtual_bytes;
        totals.allocated_bytes += s.allocated_bytes;
    }
    // Absent (withheld) member figures make the sums absent too.
    totals.unique_bytes = snapshots.iter().map(|s| s.unique_bytes).sum();
    totals.unique_raw_bytes = snapshots.iter().map(|s| s.unique_raw_bytes).sum();
    let used_bytes;
    if opts.project.is_some() {
        // A tenant's totals: the distinct blobs of its own snapshots, exactly
        // (its extent lists are read); nothing of the rest of the repository.
        let seqs: Vec<i64> = snapshots.iter().map(|s| s.seq).collect();
        let (referenced, _) = reader.union_figures(&seqs)?;
        totals.chunks = referenced.blobs;
        totals.deduplicated_bytes = referenced.raw;
        totals.stored_bytes = referenced.stored;
        used_bytes = referenced.stored;
    } else {
        let (packs, pack_bytes) = index.pack_totals()?;
        totals.chunks = usage.referenced.blobs;
        totals.deduplicated_bytes = usage.referenced.raw;
        totals.stored_bytes = usage.referenced.stored;
        totals.packs = Some(packs);
        totals.pack_bytes = Some(pack_bytes);
        totals.unreferenced_bytes = Some(usage.unreferenced.stored);
        totals.unreferenced_raw_bytes = Some(usage.unreferenced.raw);
        totals.unreferenced_chunks = Some(usage.unreferenced.blobs);
        used_bytes = pack_bytes;
    }
    totals.dedup_ratio = ratio(totals.logical_bytes, totals.deduplicated_bytes);
    totals.compression_ratio = ratio(totals.deduplicated_bytes, totals.stored_bytes);
    totals.total_ratio = ratio(totals.logical_bytes, totals.stored_bytes);

    let groups = match opts.by {
        Some(by) => compute_groups(by, &snapshots, &reader, opts.scan_limit, withhold)?,
        None => Vec::new(),
    };
    let days = growth_days(&snapshots);
    let projection = opts.capacity.map(|c| {
        let mut p = project(&days, used_bytes, c, GROWTH_WINDOW_DAYS);
        if withhold && used_bytes < c {
            // The growth rate is the stored bytes added, which is withheld.
            p.note = "no growth rate: the bytes archives added are withheld (see `reason`)".into();
        }
        p
    });
    let lock = repo.config().object_lock;
    let snapshots_retained = match lock {
        Some(_) => {
            let shown: HashSet<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
            crate::object_lock::snapshot_dates(repo, index)?.into_iter().filter(|d| shown.contains(d.id.as_str())).collect()
        }
        None => Vec::new(),
    };
    let drills = drills::compute(&snapshots, &index.drill_rows()?);
    Ok(Report {
        drills,
        immutability: crate::object_lock::Immutability::of(lock.as_ref(), repo.lock_backend()),
        snapshots_retained,
        generated: crate::util::now_rfc3339(),
        project: opts.project.clone(),
        totals,
        snapshots,
        group_by: opts.by.map(|b| b.name().to_string()),
        groups,
        growth: Growth { days, projection },
        definitions: definitions().into_iter().filter(|(k, _)| opts.project.is_none() || !REPOSITORY_WIDE.contains(k)).collect(),
        withheld: if withhold { WITHHELD_ACROSS_PROJECTS.to_vec() } else { Vec::new() },
        reason,
    })
}

fn compute_groups(
    by: GroupBy,
    snapshots: &[SnapshotFigures],
    reader: &RefReader,
    scan_limit: u64,
    withhold: bool,
) -> Result<Vec<GroupFigures>> {
    let mut by_key: BTreeMap<String, Vec<&SnapshotFigures>> = BTreeMap::new();
    for s in snapshots {
        for k in group_keys(by, s) {
            by_key.entry(k).or_default().push(s);
        }
    }
    let mut budget = scan_limit;
    let mut out = Vec::with_capacity(by_key.len());
    for (key, members) in by_key {
        let mut g = GroupFigures {
            key,
            snapshots: members.len() as u64,
            logical_bytes: 0,
            virtual_bytes: 0,
            allocated_bytes: 0,
            stored_bytes_added: members.iter().map(|m| m.stored_bytes_added).sum(),
            members_unique_bytes: members.iter().map(|m| m.unique_bytes).sum(),
            members_unique_raw_bytes: members.iter().map(|m| m.unique_raw_bytes).sum(),
            exact: false,
            chunks: None,
            referenced_bytes: None,
            referenced_raw_bytes: None,
            unique_bytes: None,
            unique_raw_bytes: None,
            shared_bytes: None,
            shared_raw_bytes: None,
            dedup_ratio: None,
        };
        for m in &members {
            g.logical_bytes += m.logical_bytes;
            g.virtual_bytes += m.virtual_bytes;
            g.allocated_bytes += m.allocated_bytes;
        }
        let cost: u64 = members.iter().map(|m| m.extent_refs.max(1)).sum();
        let figures = if members.len() == 1 {
            // One member: its own figures are already exact.
            let m = members[0];
            let referenced = Bytes { blobs: m.chunks, raw: m.referenced_raw_bytes, stored: m.referenced_bytes };
            let unique =
                Bytes { blobs: m.unique_chunks.unwrap_or(0), raw: m.unique_raw_bytes.unwrap_or(0), stored: m.unique_bytes.unwrap_or(0) };
            Some((referenced, unique))
        } else if cost <= budget {
            budget -= cost;
            let seqs: Vec<i64> = members.iter().map(|m| m.seq).collect();
            Some(reader.union_figures(&seqs)?)
        } else {
            None
        };
        if let Some((referenced, unique)) = figures {
            let shared = referenced.minus(unique);
            g.exact = true;
            g.chunks = Some(referenced.blobs);
            g.referenced_bytes = Some(referenced.stored);
            g.referenced_raw_bytes = Some(referenced.raw);
            if !withhold {
                g.unique_bytes = Some(unique.stored);
                g.unique_raw_bytes = Some(unique.raw);
                g.shared_bytes = Some(shared.stored);
                g.shared_raw_bytes = Some(shared.raw);
            }
            g.dedup_ratio = ratio(g.logical_bytes, referenced.raw);
        }
        out.push(g);
    }
    Ok(out)
}

/// Stored bytes added per UTC day of snapshot time, with the running total.
pub fn growth_days(snapshots: &[SnapshotFigures]) -> Vec<GrowthDay> {
    let mut by_day: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    for s in snapshots {
        let day = crate::util::parse_rfc3339(&s.time)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| s.time.chars().take(10).collect());
        let e = by_day.entry(day).or_insert((0, Some(0)));
        e.0 += 1;
        e.1 = e.1.zip(s.stored_bytes_added).map(|(a, b)| a + b);
    }
    let mut cumulative = Some(0);
    by_day
        .into_iter()
        .map(|(date, (snapshots, added))| {
            cumulative = cumulative.zip(added).map(|(a, b)| a + b);
            GrowthDay { date, snapshots, stored_bytes_added: added, cumulative_bytes: cumulative }
        })
        .collect()
}

fn parse_day(d: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// When `used` reaches `capacity`, growing as a least-squares line through the
/// cumulative additions of the last `window` days of history.
pub fn project(days: &[GrowthDay], used: u64, capacity: u64, window: i64) -> Projection {
    let mut p = Projection {
        capacity_bytes: capacity,
        used_bytes: used,
        bytes_per_day: None,
        window_days: window,
        days_left: None,
        full_on: None,
        note: String::new(),
    };
    let dated: Vec<(chrono::NaiveDate, f64)> =
        days.iter().filter_map(|d| Some((parse_day(&d.date)?, d.cumulative_bytes? as f64))).collect();
    let Some(&(last, _)) = dated.last() else {
        p.note = "no snapshots: no growth to project".into();
        return p;
    };
    if used >= capacity {
        p.days_left = Some(0.0);
        p.full_on = Some(last.format("%Y-%m-%d").to_string());
        p.note = "the capacity is already reached".into();
        return p;
    }
    let recent: Vec<(f64, f64)> =
        dated.iter().filter(|(d, _)| (last - *d).num_days() < window).map(|(d, y)| ((*d - last).num_days() as f64, *y)).collect();
    if recent.len() < 2 {
        p.note = "needs snapshots on at least two days to fit a growth rate".into();
        return p;
    }
    let n = recent.len() as f64;
    let (mx, my) = (recent.iter().map(|r| r.0).sum::<f64>() / n, recent.iter().map(|r| r.1).sum::<f64>() / n);
    let sxx: f64 = recent.iter().map(|r| (r.0 - mx).powi(2)).sum();
    let sxy: f64 = recent.iter().map(|r| (r.0 - mx) * (r.1 - my)).sum();
    let slope = sxy / sxx;
    p.bytes_per_day = Some(slope);
    if slope <= 0.0 {
        p.note = "not growing: never full at the recent rate".into();
        return p;
    }
    let days_left = (capacity - used) as f64 / slope;
    p.days_left = Some(days_left);
    // Beyond chrono's calendar (or any sensible horizon) is "never".
    if days_left < 1e6 {
        p.full_on = last.checked_add_days(chrono::Days::new(days_left.ceil() as u64)).map(|d| d.format("%Y-%m-%d").to_string());
    }
    p.note = format!("linear fit over the last {window} days of stored bytes added");
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(date: &str, cumulative: u64) -> GrowthDay {
        GrowthDay { date: date.into(), snapshots: 1, stored_bytes_added: Some(0), cumulative_bytes: Some(cumulative) }
    }

    #[test]
    fn projection_fits_a_line_and_says_never_when_flat() {
        let days = vec![day("2026-01-01", 100), day("2026-01-02", 200), day("2026-01-03", 300)];
        let p = project(&days, 300, 1300, 30);
        assert_eq!(p.bytes_per_day, Some(100.0));
        assert_eq!(p.days_left, Some(10.0));
        assert_eq!(p.full_on.as_deref(), Some("2026-01-13"));
        let flat = vec![day("2026-01-01", 100), day("2026-01-05", 100)];
        let p = project(&flat, 100, 1000, 30);
        assert_eq!(p.full_on, None);
        assert_eq!(p.days_left, None);
        let full = project(&days, 2000, 1000, 30);
        assert_eq!(full.days_left, Some(0.0));
        assert_eq!(project(&days[..1], 1, 1000, 30).bytes_per_day, None);
        // Only the window counts: old fast growth does not hide a recent stop.
        let stopped = vec![day("2025-01-01", 0), day("2025-06-01", 1000), day("2026-01-01", 1000), day("2026-01-02", 1000)];
        assert_eq!(project(&stopped, 1000, 5000, 30).full_on, None);
    }
}
