//! The report's restore-drill figures: per image (the grouping of the
//! `imgarc_image_*` series, [`super::images`]), its last drill, its last
//! successful drill, and the images never drilled or whose last drill failed.
//!
//! Only the records of snapshots in the report count: a record of a snapshot
//! that was forgotten (and not yet pruned) proves nothing about what can be
//! restored now, and a `--project` report sees only its own snapshots' records.
//! "Last" is the record with the latest `started`, ties broken by the greater
//! record name, so every host picks the same one (format-spec/drills.md).

use super::SnapshotFigures;
use crate::index::DrillRow;
use crate::repository::drill::CheckStatus;
use serde::Serialize;
use std::collections::HashMap;

/// The `drills` of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drills {
    /// Every image in the report, with its drill state (in the order of `imgarc_image_*`).
    pub images: Vec<ImageDrills>,
    /// Images none of whose snapshots has a drill record.
    pub never_drilled: Vec<ImageRef>,
    /// Images whose last drill failed, with that drill (its `error` says why).
    pub last_failed: Vec<FailedImage>,
}

/// Which image: the labels of its `imgarc_image_*` series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageRef {
    /// The Glance image id; `null` for archives of files and streams (told apart by name).
    pub image: Option<String>,
    /// The name of the image's latest snapshot.
    pub name: String,
    /// The Glance project (owner), if recorded.
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageDrills {
    #[serde(flatten)]
    pub image: ImageRef,
    /// Drill records of the image's snapshots.
    pub drills: u64,
    /// The latest drill (`null`: never drilled).
    pub last_drill: Option<DrillSummary>,
    /// The latest drill that passed (`null`: none did).
    pub last_success: Option<DrillSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedImage {
    #[serde(flatten)]
    pub image: ImageRef,
    pub last_drill: DrillSummary,
}

/// One drill, as the report shows it (the record holds more: its checks, the console tail).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillSummary {
    /// The record's name (`drills/<record>`).
    pub record: String,
    pub snapshot: String,
    /// RFC 3339: when the drill started.
    pub started: String,
    pub ok: bool,
    /// `passed`, `failed` (a check failed: the snapshot did not prove restorable) or
    /// `not_run` (no check failed, but one could not be carried out: no qemu, Glance unreachable).
    pub result: &'static str,
    /// The host that ran it.
    pub host: String,
    /// Wall time of the whole drill: the recovery time it shows.
    pub seconds: f64,
    /// Time to the expected console line, when the drill booted the image.
    pub boot_seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl DrillSummary {
    fn of(row: &DrillRow) -> DrillSummary {
        let r = &row.record;
        DrillSummary {
            record: row.name.clone(),
            snapshot: row.snapshot.to_hex(),
            started: r.started.clone(),
            ok: r.ok,
            result: match (r.ok, r.checks.iter().any(|c| c.status == CheckStatus::Failed)) {
                (true, _) => "passed",
                (false, true) => "failed",
                (false, false) => "not_run",
            },
            host: r.host.clone(),
            seconds: r.seconds,
            boot_seconds: r.boot_seconds,
            error: r.error.clone(),
        }
    }

    /// Unix seconds of `started` (the cache holds only records whose `started` parses).
    pub fn started_seconds(&self) -> Option<f64> {
        crate::util::parse_rfc3339(&self.started).map(|t| t.timestamp_micros() as f64 / 1e6)
    }
}

/// The drill figures of `snapshots` from the cached records `rows` (oldest
/// `started` first, as [`crate::index::Index::drill_rows`] gives them).
pub fn compute(snapshots: &[SnapshotFigures], rows: &[DrillRow]) -> Drills {
    let mut by_snapshot: HashMap<&str, Vec<&DrillRow>> = HashMap::new();
    let hex: Vec<(String, &DrillRow)> = rows.iter().map(|r| (r.snapshot.to_hex(), r)).collect();
    for (id, row) in &hex {
        by_snapshot.entry(id.as_str()).or_default().push(row);
    }
    let mut out = Drills::default();
    for img in super::images(snapshots) {
        let image = ImageRef {
            image: img.latest.image.clone().filter(|i| !i.is_empty()),
            name: img.latest.name.clone(),
            project: img.latest.project.clone(),
        };
        let mut records: Vec<&DrillRow> =
            img.members.iter().flat_map(|m| by_snapshot.get(m.id.as_str()).into_iter().flatten().copied()).collect();
        // The index's order (started, then name), kept across the image's snapshots.
        records.sort_by(|a, b| (a.record.started_at(), &a.name).cmp(&(b.record.started_at(), &b.name)));
        let last_drill = records.last().map(|r| DrillSummary::of(r));
        let last_success = records.iter().rev().find(|r| r.record.ok).map(|r| DrillSummary::of(r));
        match &last_drill {
            None => out.never_drilled.push(image.clone()),
            Some(d) if !d.ok => out.last_failed.push(FailedImage { image: image.clone(), last_drill: d.clone() }),
            Some(_) => {}
        }
        out.images.push(ImageDrills { image, drills: records.len() as u64, last_drill, last_success });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::drill::{DrillRecord, DRILL_VERSION};

    fn figures(id: &str, name: &str, image: Option<&str>, time: &str) -> SnapshotFigures {
        SnapshotFigures {
            id: id.into(),
            name: name.into(),
            time: time.into(),
            tags: Vec::new(),
            project: None,
            image: image.map(str::to_string),
            format: "raw".into(),
            logical_bytes: 1,
            virtual_bytes: 1,
            allocated_bytes: 1,
            chunks: 1,
            referenced_bytes: 1,
            referenced_raw_bytes: 1,
            unique_chunks: None,
            unique_bytes: None,
            unique_raw_bytes: None,
            shared_bytes: None,
            shared_raw_bytes: None,
            stored_bytes_added: None,
            seq: 0,
            extent_refs: 0,
        }
    }

    fn row(name: &str, snapshot: &str, started: &str, ok: bool) -> DrillRow {
        let record = DrillRecord {
            version: DRILL_VERSION,
            snapshot: snapshot.into(),
            name: "n".into(),
            image: None,
            project: None,
            started: started.into(),
            host: "h".into(),
            imgarc_version: "t".into(),
            checks: Vec::new(),
            ok,
            seconds: 1.0,
            boot_seconds: None,
            console_tail: None,
            error: None,
        };
        DrillRow { name: name.into(), snapshot: crate::ids::Id::from_hex(snapshot).unwrap(), record }
    }

    /// The last drill is the latest instant (whatever the offset or precision), ties going to
    /// the greater record name; only the records of the report's snapshots count.
    #[test]
    fn last_is_the_latest_instant_then_the_greatest_name() {
        let (a, b, gone) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
        let snaps = [figures(&a, "web", Some("img"), "2026-11-01T00:00:00Z"), figures(&b, "web", Some("img"), "2026-11-02T00:00:00Z")];
        let rows = [
            row("r1", &a, "2026-11-03T12:00:00+02:00", true),
            row("r3", &b, "2026-11-03T10:00:00Z", false),
            row("r2", &b, "2026-11-03T10:00:00.000Z", true),
            row("r9", &gone, "2026-12-01T00:00:00Z", true),
        ];
        let d = compute(&snaps, &rows);
        assert_eq!(d.images.len(), 1);
        let i = &d.images[0];
        assert_eq!(i.drills, 3, "the forgotten snapshot's record does not count");
        assert_eq!(i.last_drill.as_ref().unwrap().record, "r3", "equal instants: the greater name");
        assert_eq!(i.last_success.as_ref().unwrap().record, "r2");
        assert_eq!(d.last_failed.len(), 1);
        assert!(d.never_drilled.is_empty());
        assert_eq!(compute(&snaps, &[]).never_drilled, vec![ImageRef { image: Some("img".into()), name: "web".into(), project: None }]);
    }
}
