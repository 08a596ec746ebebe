//! The report's text formats: an aligned table for a terminal, JSON, CSV (one
//! row per snapshot, or per group), and Prometheus text for node_exporter's
//! textfile collector. HTML lives in `html`.

use super::{GroupFigures, Report, SnapshotFigures};
use crate::util::human_bytes;
use anyhow::{bail, Result};
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    Prometheus,
    Html,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s {
            "table" => Format::Table,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "prometheus" => Format::Prometheus,
            "html" => Format::Html,
            _ => bail!("unknown report format {s:?} (table, json, csv, prometheus or html)"),
        })
    }
}

/// Which Prometheus series a report has besides the repository's: one set per
/// image (the default: a series count that grows with the images, not with every
/// night's snapshot), or also one per snapshot (`--metrics-detail snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsDetail {
    #[default]
    Image,
    Snapshot,
}

impl MetricsDetail {
    pub fn parse(s: &str) -> Result<MetricsDetail> {
        Ok(match s {
            "image" => MetricsDetail::Image,
            "snapshot" => MetricsDetail::Snapshot,
            _ => bail!("unknown metrics detail {s:?} (image or snapshot)"),
        })
    }
}

/// The report in `format`, with the default [`MetricsDetail`].
pub fn render(report: &Report, format: Format) -> String {
    render_with(report, format, MetricsDetail::default())
}

/// The report in `format`; `detail` chooses the Prometheus series (the other formats ignore it).
pub fn render_with(report: &Report, format: Format, detail: MetricsDetail) -> String {
    match format {
        Format::Table => table(report),
        Format::Json => serde_json::to_string_pretty(report).expect("report serializes") + "\n",
        Format::Csv => csv(report),
        Format::Prometheus => prometheus_with(report, detail),
        Format::Html => super::html::page(report),
    }
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map(human_bytes).unwrap_or_else(|| "-".into())
}

fn opt_ratio(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

pub fn table(r: &Report) -> String {
    let t = &r.totals;
    let mut s = String::new();
    match &r.project {
        Some(p) => writeln!(s, "Capacity report for project {p}").unwrap(),
        None => writeln!(s, "Capacity report").unwrap(),
    }
    if let Some(why) = &r.reason {
        writeln!(s, "  (unique, shared and added bytes withheld: {why})").unwrap();
    }
    writeln!(s, "  {}", r.immutability.line()).unwrap();
    let mut line = |k: &str, v: String| writeln!(s, "  {k:<28} {v}").unwrap();
    line("snapshots", t.snapshots.to_string());
    line("logical (image files)", human_bytes(t.logical_bytes));
    line("virtual / allocated", format!("{} / {}", human_bytes(t.virtual_bytes), human_bytes(t.allocated_bytes)));
    line(
        "after dedup (raw)",
        format!("{} in {} chunks  (dedup {})", human_bytes(t.deduplicated_bytes), t.chunks, opt_ratio(t.dedup_ratio)),
    );
    line(
        "stored (compressed)",
        format!("{}  (compression {}, overall {})", human_bytes(t.stored_bytes), opt_ratio(t.compression_ratio), opt_ratio(t.total_ratio)),
    );
    if let (Some(packs), Some(bytes)) = (t.packs, t.pack_bytes) {
        line("packs", format!("{packs} packs, {}", human_bytes(bytes)));
    }
    if let (Some(u), Some(n)) = (t.unreferenced_bytes, t.unreferenced_chunks) {
        line("unreferenced (await prune)", format!("{} in {n} blobs", human_bytes(u)));
    }
    if let Some(p) = &r.growth.projection {
        let rate = p.bytes_per_day.map(|b| format!("{}/day", human_bytes(b.max(0.0) as u64))).unwrap_or_else(|| "-".into());
        let when = match (&p.full_on, p.days_left) {
            (Some(d), Some(n)) => format!("full on {d} (in {n:.0} days)"),
            _ => "never".into(),
        };
        line(
            "capacity",
            format!("{} used of {}, growing {rate}: {when} ({})", human_bytes(p.used_bytes), human_bytes(p.capacity_bytes), p.note),
        );
    }
    if let Some(by) = &r.group_by {
        writeln!(s, "\nBy {by} (unique = freed by forgetting the whole group; * = lower bound, over the scan limit)").unwrap();
        writeln!(
            s,
            "{:<32} {:>6} {:>12} {:>12} {:>12} {:>12} {:>8}",
            "GROUP", "SNAPS", "LOGICAL", "REFERENCED", "UNIQUE", "SHARED", "DEDUP"
        )
        .unwrap();
        for g in &r.groups {
            let unique = match g.unique_bytes {
                Some(u) => human_bytes(u),
                None => g.members_unique_bytes.map_or_else(|| "-".into(), |m| format!("{}*", human_bytes(m))),
            };
            writeln!(
                s,
                "{:<32} {:>6} {:>12} {:>12} {:>12} {:>12} {:>8}",
                clip(&g.key, 32),
                g.snapshots,
                human_bytes(g.logical_bytes),
                opt_bytes(g.referenced_bytes),
                unique,
                opt_bytes(g.shared_bytes),
                opt_ratio(g.dedup_ratio)
            )
            .unwrap();
        }
    }
    writeln!(s, "\nSnapshots (stored bytes; unique = freed by forgetting it)").unwrap();
    writeln!(
        s,
        "{:<16}  {:<16}  {:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "ID", "TIME (UTC)", "NAME", "LOGICAL", "VIRTUAL", "ALLOCATED", "REFERENCED", "UNIQUE", "SHARED"
    )
    .unwrap();
    for x in &r.snapshots {
        let sizes = x.size_columns();
        writeln!(
            s,
            "{:<16}  {:<16}  {:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            &x.id[..16],
            crate::util::parse_rfc3339(&x.time).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| clip(&x.time, 16)),
            clip(&x.name, 20),
            sizes[0],
            sizes[1],
            sizes[2],
            sizes[3],
            sizes[4],
            sizes[5]
        )
        .unwrap();
    }
    drills_table(&mut s, &r.drills);
    if !r.growth.days.is_empty() {
        writeln!(s, "\nGrowth (stored bytes added per day)").unwrap();
        for d in &r.growth.days {
            writeln!(
                s,
                "  {}  {:>4} snapshots  +{:>11}  total {:>11}",
                d.date,
                d.snapshots,
                opt_bytes(d.stored_bytes_added),
                opt_bytes(d.cumulative_bytes)
            )
            .unwrap();
        }
    }
    s.push_str(&crate::object_lock::snapshot_dates_prose(&r.snapshots_retained));
    s
}

/// Text from a drill record as one table line: control characters (a newline, a terminal
/// escape in an error or host name that a writer of the repository chose) become `?`.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A drill time as the table shows it (minutes, UTC).
fn drill_time(started: &str) -> String {
    crate::util::parse_rfc3339(started).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| clip(started, 16))
}

/// The table's "Restore drills" section: one line per image, then the images never drilled and the failures.
fn drills_table(s: &mut String, d: &super::drills::Drills) {
    if d.images.is_empty() {
        return;
    }
    writeln!(s, "\nRestore drills (per image; seconds = the recovery time the drill measured)").unwrap();
    writeln!(
        s,
        "{:<36}  {:<20} {:<16}  {:<6} {:<16} {:>9} {:>7}  {:<16}",
        "IMAGE", "NAME", "LAST DRILL (UTC)", "RESULT", "HOST", "SECONDS", "BOOT", "LAST SUCCESS"
    )
    .unwrap();
    for i in &d.images {
        let image = i.image.image.as_deref().unwrap_or("-");
        let (when, result, host, secs, boot) = match &i.last_drill {
            Some(l) => (
                drill_time(&l.started),
                match l.result {
                    "passed" => "ok",
                    "not_run" => "NOTRUN",
                    _ => "FAILED",
                }
                .to_string(),
                clip(&one_line(&l.host), 16),
                format!("{:.1}", l.seconds),
                l.boot_seconds.map_or_else(|| "-".into(), |b| format!("{b:.1}")),
            ),
            None => ("never".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let success = i.last_success.as_ref().map_or_else(|| "never".into(), |l| drill_time(&l.started));
        writeln!(
            s,
            "{:<36}  {:<20} {:<16}  {:<6} {:<16} {:>9} {:>7}  {:<16}",
            clip(image, 36),
            clip(&i.image.name, 20),
            when,
            result,
            host,
            secs,
            boot,
            success
        )
        .unwrap();
    }
    let label = |i: &super::drills::ImageRef| match &i.image {
        Some(id) => format!("{} ({id})", i.name),
        None => i.name.clone(),
    };
    if !d.never_drilled.is_empty() {
        let names: Vec<String> = d.never_drilled.iter().map(label).collect();
        writeln!(s, "  never drilled: {} image(s): {}", names.len(), names.join(", ")).unwrap();
    }
    for f in &d.last_failed {
        let why = one_line(f.last_drill.error.as_deref().unwrap_or("no error recorded"));
        let what = if f.last_drill.result == "not_run" { "could not run" } else { "FAILED" };
        writeln!(
            s,
            "  last drill {what}: {}: snapshot {} on {}: {why}",
            label(&f.image),
            &f.last_drill.snapshot[..16],
            one_line(&f.last_drill.host)
        )
        .unwrap();
    }
}

/// A snapshot's sizes as the table and the HTML page show them: logical,
/// virtual, allocated, referenced, unique, shared.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

/// RFC 4180 quoting where needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub const SNAPSHOT_CSV_HEADER: &str = "id,name,time,tags,project,image,format,logical_bytes,virtual_bytes,allocated_bytes,chunks,referenced_bytes,referenced_raw_bytes,unique_chunks,unique_bytes,unique_raw_bytes,shared_bytes,shared_raw_bytes,stored_bytes_added";
pub const GROUP_CSV_HEADER: &str = "group_by,group,snapshots,logical_bytes,virtual_bytes,allocated_bytes,stored_bytes_added,members_unique_bytes,members_unique_raw_bytes,exact,chunks,referenced_bytes,referenced_raw_bytes,unique_bytes,unique_raw_bytes,shared_bytes,shared_raw_bytes";

pub fn csv(r: &Report) -> String {
    let mut s = String::new();
    if let Some(by) = &r.group_by {
        writeln!(s, "{GROUP_CSV_HEADER}").unwrap();
        for g in &r.groups {
            writeln!(s, "{}", group_csv_row(by, g)).unwrap();
        }
    } else {
        writeln!(s, "{SNAPSHOT_CSV_HEADER}").unwrap();
        for x in &r.snapshots {
            writeln!(s, "{}", snapshot_csv_row(x)).unwrap();
        }
    }
    s
}

fn snapshot_csv_row(x: &SnapshotFigures) -> String {
    let text =
        [&x.id, &x.name, &x.time, &x.tags.join(" "), x.project.as_deref().unwrap_or(""), x.image.as_deref().unwrap_or(""), &x.format];
    let nums = [
        Some(x.logical_bytes),
        Some(x.virtual_bytes),
        Some(x.allocated_bytes),
        Some(x.chunks),
        Some(x.referenced_bytes),
        Some(x.referenced_raw_bytes),
        x.unique_chunks,
        x.unique_bytes,
        x.unique_raw_bytes,
        x.shared_bytes,
        x.shared_raw_bytes,
        x.stored_bytes_added,
    ];
    text.iter().map(|t| csv_field(t)).chain(nums.map(opt)).collect::<Vec<_>>().join(",")
}

fn group_csv_row(by: &str, g: &GroupFigures) -> String {
    let mut f = vec![csv_field(by), csv_field(&g.key)];
    f.extend(
        [
            Some(g.snapshots),
            Some(g.logical_bytes),
            Some(g.virtual_bytes),
            Some(g.allocated_bytes),
            g.stored_bytes_added,
            g.members_unique_bytes,
            g.members_unique_raw_bytes,
        ]
        .map(opt),
    );
    f.push(g.exact.to_string());
    f.extend(
        [g.chunks, g.referenced_bytes, g.referenced_raw_bytes, g.unique_bytes, g.unique_raw_bytes, g.shared_bytes, g.shared_raw_bytes]
            .map(opt),
    );
    f.join(",")
}

struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, help: &str) {
        writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge").unwrap();
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", crate::metrics::escape_label_value(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        writeln!(self.0, "{name}{labels} {value}").unwrap();
    }
}

/// The restore-drill series: per image, with the labels of the other
/// `imgarc_image_*` series. `imgarc_image_drills` has a sample for every image
/// (0: never drilled), so an alert can name an image that never was; the
/// timestamps and `last_drill_ok` exist only for an image that has such a drill
/// (a never-drilled image has no "last success" time to give: a 0 would read as
/// 1970). Alert on `time() - imgarc_image_last_drill_success_timestamp_seconds`
/// together with `imgarc_image_drills == 0` (or the repository-wide counts).
fn drill_series(m: &mut Metrics, r: &Report, scope: &[(&str, &str)]) {
    use super::drills::ImageDrills;
    type DrillField = fn(&ImageDrills) -> Option<f64>;
    let per_image: [(&str, &str, DrillField); 5] = [
        ("drills", "Restore drill records of the image's snapshots (0: never drilled)", |i| Some(i.drills as f64)),
        ("last_drill_timestamp_seconds", "Start of the image's latest restore drill (Unix seconds)", |i| {
            i.last_drill.as_ref().and_then(|d| d.started_seconds())
        }),
        ("last_drill_ok", "1 when the image's latest restore drill passed, 0 when it failed", |i| {
            i.last_drill.as_ref().map(|d| if d.ok { 1.0 } else { 0.0 })
        }),
        (
            "last_drill_success_timestamp_seconds",
            "Start of the image's latest restore drill that passed (Unix seconds): alert when it is too old",
            |i| i.last_success.as_ref().and_then(|d| d.started_seconds()),
        ),
        ("recovery_seconds", "Wall time of the image's latest passed restore drill: the recovery time the repository delivers", |i| {
            i.last_success.as_ref().map(|d| d.seconds)
        }),
    ];
    for (name, help, get) in per_image {
        let name = format!("imgarc_image_{name}");
        m.family(&name, help);
        for i in &r.drills.images {
            if let Some(v) = get(i) {
                let (image, project) = (i.image.image.as_deref().unwrap_or(""), i.image.project.as_deref().unwrap_or(""));
                m.sample(&name, &[("image", image), ("name", &i.image.name), ("project", project)], v);
            }
        }
    }
    for (name, help, v) in [
        (
            "imgarc_images_never_drilled",
            "Images in the report none of whose snapshots has a restore drill record",
            r.drills.never_drilled.len(),
        ),
        ("imgarc_images_last_drill_failed", "Images in the report whose latest restore drill failed", r.drills.last_failed.len()),
    ] {
        m.family(name, help);
        m.sample(name, scope, v as f64);
    }
}

/// [`prometheus_with`] the default detail (per image, no per-snapshot series).
pub fn prometheus(r: &Report) -> String {
    prometheus_with(r, MetricsDetail::default())
}

/// node_exporter textfile-collector format: every family has HELP and TYPE,
/// every value is a gauge. Scoped reports carry a `project` label. Per image:
/// `imgarc_image_*{image,name,project}` (`image` is empty for file archives,
/// which are told apart by name; `name` is that of the latest snapshot);
/// per snapshot (`imgarc_snapshot_*`) only with [`MetricsDetail::Snapshot`].
/// The restore drills add `imgarc_image_drills`, `…_last_drill_timestamp_seconds`,
/// `…_last_drill_ok`, `…_last_drill_success_timestamp_seconds`, `…_recovery_seconds`
/// and the counts `imgarc_images_never_drilled`, `imgarc_images_last_drill_failed`
/// (`drill_series`; which images have which sample is said there).
pub fn prometheus_with(r: &Report, detail: MetricsDetail) -> String {
    let mut m = Metrics(String::new());
    let scope: Vec<(&str, &str)> = r.project.as_deref().map(|p| vec![("project", p)]).unwrap_or_default();
    let t = &r.totals;
    let mut repo: Vec<(&str, &str, Option<f64>)> = vec![
        ("snapshots", "Snapshots in the report", Some(t.snapshots as f64)),
        ("logical_bytes", "Length of the archived image files", Some(t.logical_bytes as f64)),
        ("virtual_bytes", "Size of the virtual disks", Some(t.virtual_bytes as f64)),
        ("allocated_bytes", "Guest bytes that are not holes", Some(t.allocated_bytes as f64)),
        ("chunks", "Distinct blobs referenced", Some(t.chunks as f64)),
        ("deduplicated_bytes", "Uncompressed size of the distinct blobs referenced", Some(t.deduplicated_bytes as f64)),
        ("stored_bytes", "Compressed size of the distinct blobs referenced", Some(t.stored_bytes as f64)),
        ("dedup_ratio", "Logical bytes over deduplicated bytes", t.dedup_ratio),
        ("compression_ratio", "Deduplicated bytes over stored bytes", t.compression_ratio),
        ("packs", "Packs in the repository", t.packs.map(|v| v as f64)),
        ("pack_bytes", "Size of all packs", t.pack_bytes.map(|v| v as f64)),
        ("unreferenced_bytes", "Stored bytes of blobs no snapshot references (awaiting prune)", t.unreferenced_bytes.map(|v| v as f64)),
        ("unreferenced_chunks", "Blobs no snapshot references", t.unreferenced_chunks.map(|v| v as f64)),
    ];
    if let Some(p) = &r.growth.projection {
        repo.push(("capacity_bytes", "The capacity given to the report", Some(p.capacity_bytes as f64)));
        repo.push(("capacity_used_bytes", "Bytes counted against the capacity", Some(p.used_bytes as f64)));
        repo.push(("growth_bytes_per_day", "Fitted growth of stored bytes per day", p.bytes_per_day));
        repo.push(("capacity_days_left", "Days until the capacity is reached at the fitted rate", p.days_left));
    }
    for (name, help, value) in repo {
        if let Some(v) = value {
            let name = format!("imgarc_repository_{name}");
            m.family(&name, help);
            m.sample(&name, &scope, v);
        }
    }
    let images = super::images(&r.snapshots);
    type ImageField = fn(&super::Image) -> Option<f64>;
    let per_image: [(&str, &str, ImageField); 3] = [
        ("last_snapshot_timestamp_seconds", "Time of the image's latest snapshot (Unix seconds): alert when it is too old", |s| {
            s.latest_time.map(|t| t.timestamp() as f64)
        }),
        ("snapshots", "Snapshots of the image in the repository", |s| Some(s.snapshots as f64)),
        ("last_snapshot_logical_bytes", "Length of the image file in its latest snapshot", |s| Some(s.latest.logical_bytes as f64)),
    ];
    for (name, help, get) in per_image {
        let name = format!("imgarc_image_{name}");
        m.family(&name, help);
        for s in &images {
            let x = s.latest;
            if let Some(v) = get(s) {
                let (image, project) = (x.image.as_deref().unwrap_or(""), x.project.as_deref().unwrap_or(""));
                m.sample(&name, &[("image", image), ("name", &x.name), ("project", project)], v);
            }
        }
    }
    drill_series(&mut m, r, &scope);
    // A withheld figure (`Report::withheld`) has no sample.
    type SnapField = fn(&SnapshotFigures) -> Option<u64>;
    let per_snapshot: [(&str, &str, SnapField); 7] = [
        ("logical_bytes", "Length of the image file", |x| Some(x.logical_bytes)),
        ("allocated_bytes", "Guest bytes that are not holes", |x| Some(x.allocated_bytes)),
        ("referenced_bytes", "Stored bytes of the distinct blobs the snapshot uses", |x| Some(x.referenced_bytes)),
        ("unique_bytes", "Stored bytes only this snapshot uses: freed by forgetting it", |x| x.unique_bytes),
        ("unique_raw_bytes", "Uncompressed bytes only this snapshot uses", |x| x.unique_raw_bytes),
        ("shared_bytes", "Stored bytes the snapshot shares with others", |x| x.shared_bytes),
        ("stored_bytes_added", "Bytes the archive added to the repository", |x| x.stored_bytes_added),
    ];
    let per_snapshot = if detail == MetricsDetail::Snapshot { &per_snapshot[..] } else { &[] };
    for (name, help, get) in per_snapshot {
        let name = format!("imgarc_snapshot_{name}");
        m.family(&name, help);
        for x in &r.snapshots {
            let image = x.image.as_deref().unwrap_or("");
            let project = x.project.as_deref().unwrap_or("");
            if let Some(v) = get(x) {
                m.sample(&name, &[("snapshot", &x.id[..16]), ("name", &x.name), ("image", image), ("project", project)], v as f64);
            }
        }
    }
    if let Some(by) = &r.group_by {
        type GroupField = fn(&GroupFigures) -> Option<u64>;
        let per_group: [(&str, &str, GroupField); 6] = [
            ("snapshots", "Snapshots in the group", |g| Some(g.snapshots)),
            ("logical_bytes", "Length of the group's image files", |g| Some(g.logical_bytes)),
            ("referenced_bytes", "Stored bytes of the distinct blobs the group uses", |g| g.referenced_bytes),
            ("unique_bytes", "Stored bytes only the group uses: freed by forgetting all of it", |g| g.unique_bytes),
            ("members_unique_bytes", "Sum of the members' own unique bytes", |g| g.members_unique_bytes),
            ("shared_bytes", "Stored bytes the group shares with snapshots outside it", |g| g.shared_bytes),
        ];
        for (name, help, get) in per_group {
            let name = format!("imgarc_group_{name}");
            m.family(&name, help);
            for g in &r.groups {
                if let Some(v) = get(g) {
                    m.sample(&name, &[("by", by), ("group", &g.key)], v as f64);
                }
            }
        }
    }
    m.0
}
