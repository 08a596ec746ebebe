//! What the repository does with S3 Object Lock beyond writing with retention
//! (format-spec/object-lock.md): prune's retention pass (extend what is live,
//! delete by version id what has lapsed and is hidden), the dates forget, check and
//! report show, and the one "immutability not enforced" statement for backends
//! (local, Swift, S3 without lock) that cannot keep an off-site copy immutable.
//!
//! A versioned bucket never loses a version to a plain DELETE: the repository's
//! deletes (forget's snapshot, prune's packs and index objects) only add a delete
//! marker, which hides the key from listings and GETs. Space comes back when every
//! version and marker of the key is deleted by version id, which S3 refuses for a
//! version until its retain-until date. A key keeps its markers while any of its
//! versions remains, so a hidden object never reappears.

use crate::backend::{Backend, ObjectLock, ObjectVersion, Retention};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

fn date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether the repository's objects are immutable, and why not (`check`, `report`, `init`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Immutability {
    pub enforced: bool,
    /// `COMPLIANCE` / `GOVERNANCE` when enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<u64>,
    /// Why it is not enforced (`immutability not enforced: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Immutability {
    /// From the config's `object_lock` and whether the backend can lock at all (a local
    /// directory or Swift cannot; an S3 bucket can only with Object Lock enabled).
    /// Without a lock no request is made.
    pub fn of(lock: Option<&ObjectLock>, backend: &dyn Backend) -> Immutability {
        let Some(l) = lock else {
            let location = backend.location();
            return Immutability::not(if location.starts_with("s3:") {
                format!(
                    "{location} was created without `init --object-lock`: whoever holds its S3 credentials can delete every object \
                     (an immutable copy needs a bucket created with Object Lock enabled)"
                )
            } else {
                format!(
                    "{location} cannot enforce immutability (a local directory or Swift container: whoever can write to it can delete \
                     every object); an off-site copy that survives a compromised host needs an S3 bucket with Object Lock and `init --object-lock`"
                )
            });
        };
        match backend.object_lock_enabled() {
            Ok(()) => Immutability {
                enforced: true,
                mode: Some(l.mode.as_s3().into()),
                retention_seconds: Some(l.retention_seconds),
                reason: None,
            },
            Err(e) => Immutability::not(format!("the config asks for object lock but {e}")),
        }
    }

    fn not(reason: String) -> Immutability {
        Immutability { enforced: false, mode: None, retention_seconds: None, reason: Some(reason) }
    }

    /// One prose line.
    pub fn line(&self) -> String {
        match (&self.reason, &self.mode, self.retention_seconds) {
            (Some(r), _, _) => format!("immutability not enforced: {r}"),
            (None, Some(m), Some(s)) => {
                format!("immutable: S3 Object Lock, {m} mode, each object retained {} after its last write or extension", period(s))
            }
            _ => "immutable".into(),
        }
    }
}

/// `30d`, `2h30m`, `20s`: a retention period in the form `init --object-lock` takes.
pub fn period(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, u) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{u}"));
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

/// An object that cannot be deleted yet, and from when it can.
#[derive(Debug, Clone, Serialize)]
pub struct Retained {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    /// RFC 3339: the retain-until date.
    pub until: String,
}

/// What prune's retention pass did (`prune --json`: `object_lock`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub mode: String,
    pub retention_seconds: u64,
    /// Live objects (current versions) whose retain-until date was moved to now + the period.
    pub retention_extended: u64,
    /// Live objects a snapshot (or the repository itself: config, keys) needs.
    pub live_objects: u64,
    /// Earliest retain-until date of any live object after the pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_retained_until: Option<String>,
    /// Hidden (deleted) versions whose retention had lapsed, deleted by version id, and their bytes.
    pub versions_deleted: u64,
    pub bytes_freed: u64,
    /// Delete markers removed (after the last version of their key went).
    pub delete_markers_removed: u64,
    /// Hidden versions still retained: they cannot be deleted before `until`.
    pub not_yet_deletable: Vec<Retained>,
    pub bytes_not_yet_deletable: u64,
    /// When the last of them becomes deletable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletable_after: Option<String>,
}

/// Prune's retention pass over every version under the repository: extends live
/// objects that have less than half the period left (kopia's rule: a nightly prune
/// keeps every live object retained for at least half the period, with one
/// extension per object per half period), deletes hidden versions whose retention
/// lapsed, then the markers of keys with no version left. `unneeded` names live keys
/// no snapshot needs (packs a prune mark lists): they are left to lapse, not extended.
/// A dry run reads only.
pub fn retention_pass(
    backend: &dyn Backend,
    lock: &ObjectLock,
    now: DateTime<Utc>,
    dry_run: bool,
    unneeded: &dyn Fn(&str) -> bool,
) -> Result<RetentionReport> {
    let mut r = RetentionReport { mode: lock.mode.as_s3().into(), retention_seconds: lock.retention_seconds, ..Default::default() };
    let versions = backend.list_versions("").context("cannot list the object versions")?;
    let mut by_key: BTreeMap<&str, Vec<&ObjectVersion>> = BTreeMap::new();
    for v in &versions {
        by_key.entry(v.key.as_str()).or_default().push(v);
    }
    let half = lock.period() / 2;
    let mut earliest_live: Option<DateTime<Utc>> = None;
    for (key, vs) in by_key {
        let mut left = 0usize;
        for v in vs.iter().filter(|v| !v.delete_marker) {
            let vid = Some(v.version_id.as_str());
            if v.is_latest {
                if !ObjectLock::retains(key) {
                    continue;
                }
                let current = backend.retention(key, vid).with_context(|| format!("cannot read the retention of {key}"))?;
                let until = match current {
                    Some(c) if c.until - now >= half || unneeded(key) => c.until,
                    _ if dry_run => current.map_or(now, |c| c.until),
                    _ => {
                        let new = Retention { mode: lock.mode, until: now + lock.period() };
                        backend.extend_retention(key, vid, new).with_context(|| format!("cannot extend the retention of {key}"))?;
                        r.retention_extended += 1;
                        new.until
                    }
                };
                if !unneeded(key) {
                    r.live_objects += 1;
                    earliest_live = Some(earliest_live.map_or(until, |e| e.min(until)));
                }
                continue;
            }
            // A hidden version: what forget or prune deleted, or an overwritten copy.
            let retained = if ObjectLock::retains(key) {
                backend.retention(key, vid).with_context(|| format!("cannot read the retention of {key} version {}", v.version_id))?
            } else {
                None
            };
            match retained {
                Some(t) if t.until > now => {
                    left += 1;
                    r.bytes_not_yet_deletable += v.size;
                    r.not_yet_deletable.push(Retained {
                        key: key.into(),
                        version_id: v.version_id.clone(),
                        size: v.size,
                        until: date(t.until),
                    });
                }
                _ if dry_run => {
                    r.versions_deleted += 1;
                    r.bytes_freed += v.size;
                }
                _ => match backend.delete_version(key, &v.version_id) {
                    Ok(()) => {
                        r.versions_deleted += 1;
                        r.bytes_freed += v.size;
                    }
                    // The store's clock may be behind ours: it still holds the version. Left for
                    // the next prune, with the date we know.
                    Err(e) if crate::backend::retry::http_status(&e) == Some(403) && retained.is_some() => {
                        tracing::warn!("{key} version {}: the store still refuses its deletion: {e}", v.version_id);
                        left += 1;
                        r.bytes_not_yet_deletable += v.size;
                        r.not_yet_deletable.push(Retained {
                            key: key.into(),
                            version_id: v.version_id.clone(),
                            size: v.size,
                            until: retained.map(|t| date(t.until)).unwrap_or_default(),
                        });
                    }
                    Err(e) => return Err(e).with_context(|| format!("cannot delete {key} version {}", v.version_id)),
                },
            }
        }
        // A marker that is not the latest hides nothing; the latest one hides the key
        // and goes only with the key's last version (or the key would reappear).
        let bare = left == 0 && !vs.iter().any(|v| v.is_latest && !v.delete_marker);
        for m in vs.iter().filter(|v| v.delete_marker && (bare || !v.is_latest)) {
            if !dry_run {
                backend.delete_version(key, &m.version_id).with_context(|| format!("cannot remove the delete marker of {key}"))?;
            }
            r.delete_markers_removed += 1;
        }
    }
    r.live_retained_until = earliest_live.map(date);
    r.deletable_after = r.not_yet_deletable.iter().map(|x| x.until.clone()).max();
    Ok(r)
}

/// Prose of the pass (prune's report).
pub fn prose(r: &RetentionReport) -> String {
    let mut s = format!(
        "object lock ({}, {}): {} live object(s) retained at least until {}; {} extended\n",
        r.mode,
        period(r.retention_seconds),
        r.live_objects,
        r.live_retained_until.as_deref().unwrap_or("-"),
        r.retention_extended
    );
    if r.versions_deleted > 0 || r.delete_markers_removed > 0 {
        s.push_str(&format!(
            "deleted {} lapsed version(s) by version id ({}), {} delete marker(s)\n",
            r.versions_deleted,
            crate::util::human_bytes(r.bytes_freed),
            r.delete_markers_removed
        ));
    }
    if let Some(after) = &r.deletable_after {
        let first = r.not_yet_deletable.iter().map(|x| x.until.as_str()).min().unwrap_or(after);
        s.push_str(&format!(
            "{} deleted object version(s) ({}) are still under retention and cannot be deleted yet: the first on {first}, the last on {after}; \
             a prune after that frees them\n",
            r.not_yet_deletable.len(),
            crate::util::human_bytes(r.bytes_not_yet_deletable)
        ));
    }
    s
}

/// When a snapshot's own object becomes deletable: its retain-until date, if it
/// has one. Its packs are retained at least as long while it lives (prune extends
/// them), so a snapshot forgotten now frees its data after this date plus, for packs
/// other snapshots share, as long as those live.
pub fn snapshot_retained_until(backend: &dyn Backend, snapshot_key: &str) -> Result<Option<String>> {
    Ok(backend
        .retention(snapshot_key, None)
        .with_context(|| format!("cannot read the retention of {snapshot_key}"))?
        .map(|r| date(r.until)))
}

/// A snapshot and when its object becomes deletable (check, report).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRetention {
    pub id: String,
    pub name: String,
    pub time: String,
    /// RFC 3339; `None`: the object has no retention (written before the lock, or by hand).
    pub retained_until: Option<String>,
}

/// Every snapshot's retain-until date (one GetObjectRetention each).
pub fn snapshot_dates(repo: &crate::repository::Repository, index: &crate::index::Index) -> Result<Vec<SnapshotRetention>> {
    use crate::repository::file::RepoFile;
    let mut out = Vec::new();
    for row in index.snapshot_rows()? {
        let key = crate::repository::snapshot::Snapshot::id_key(&row.id);
        out.push(SnapshotRetention {
            id: row.id.to_hex(),
            name: row.name,
            time: row.time,
            retained_until: snapshot_retained_until(repo.lock_backend(), &key)?,
        });
    }
    Ok(out)
}

/// Prose lines of [`snapshot_dates`] under a heading.
pub fn snapshot_dates_prose(dates: &[SnapshotRetention]) -> String {
    let mut s = String::new();
    if dates.is_empty() {
        return s;
    }
    s.push_str("object lock: when each snapshot's data becomes deletable (prune extends it while the snapshot is kept):\n");
    for d in dates {
        s.push_str(&format!(
            "  {}  {}  {}  {}\n",
            &d.id[..16.min(d.id.len())],
            d.time,
            d.name,
            d.retained_until.as_deref().map_or("no retention".to_string(), |u| format!("locked until {u}"))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_print_in_init_syntax() {
        assert_eq!(period(30 * 86_400), "30d");
        assert_eq!(period(120), "2m");
        assert_eq!(period(86_400 + 90), "1d1m30s");
        assert_eq!(ObjectLock::parse_period(&period(86_400 + 90)).unwrap(), 86_400 + 90);
    }

    #[test]
    fn local_directories_say_immutability_is_not_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::backend::local::LocalBackend::new(dir.path());
        let i = Immutability::of(None, &b);
        assert!(!i.enforced);
        assert!(i.line().starts_with("immutability not enforced: "), "{}", i.line());
        let lock = ObjectLock { mode: crate::backend::LockMode::Compliance, retention_seconds: 60 };
        let i = Immutability::of(Some(&lock), &b);
        assert!(!i.enforced && i.line().contains("cannot enforce immutability"), "{}", i.line());
    }

    #[test]
    fn periods_are_refused_when_zero_or_unitless() {
        for bad in ["0", "", "5", "10x", "-1d"] {
            assert!(ObjectLock::parse_period(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ObjectLock::parse_period("20s").unwrap(), 20);
        assert_eq!(ObjectLock::parse_period("2m").unwrap(), 120);
        assert_eq!(ObjectLock::parse_period("30d").unwrap(), 30 * 86_400);
    }
}
