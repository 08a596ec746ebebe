//! Temporary cloud resources: the Glance images, Cinder volumes and volume
//! snapshots imgarc makes to read a volume or to restore into one, and the
//! one rule that keeps a cloud clean of them.
//!
//! * Before a resource is created, its [`ScratchRecord`] is written to the
//!   repository ([`ScratchSet::reserve`]); the resource gets the record's
//!   unique name (`imgarc-scratch-<16 hex>-<what>`) and is tagged (Glance tag
//!   [`SCRATCH_TAG`], Cinder metadata [`SCRATCH_METADATA_KEY`]).
//! * When the work ends, well or not, [`ScratchSet::finish`] (or its `Drop`)
//!   deletes what was made, newest first, waits until each is gone, and only
//!   then deletes its record. A resource that cannot be deleted keeps its record.
//! * A killed run leaves records behind. [`cleanup`] (run by `imgarc cleanup`
//!   and at the start of every run that makes scratch resources) deletes the
//!   resources of every record whose run no longer holds its lock (its lease
//!   is not live), in the same cloud only, then the records.
//!
//! Names, not ids, identify a resource in a record: the id exists only once
//! the resource does, and the process can die between the two.

use crate::openstack::cinder::CinderClient;
use crate::openstack::glance::GlanceClient;
use crate::openstack::Error as OsError;
use crate::repository::scratch::{ScratchKind, ScratchRecord, SCRATCH_VERSION};
use crate::repository::Repository;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::Duration;

/// Every scratch resource's name starts with this.
pub const SCRATCH_PREFIX: &str = "imgarc-scratch-";
/// The Glance tag of a scratch image.
pub const SCRATCH_TAG: &str = "imgarc-scratch";
/// The Cinder metadata key of a scratch volume or snapshot (its value: the scratch record's name).
pub const SCRATCH_METADATA_KEY: &str = "imgarc_scratch";
/// How long a deletion may take before it is left to the next cleanup.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(300);

/// True for a name imgarc gives scratch resources: the prefix, then at most 200
/// of `[A-Za-z0-9._-]`. A record naming anything else is never acted on, so a
/// forged record cannot make cleanup delete a user's image by name.
pub fn is_scratch_name(name: &str) -> bool {
    name.strip_prefix(SCRATCH_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.len() <= 200 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

/// `what` made safe for a resource name: `[A-Za-z0-9._-]`, at most 48 characters.
fn name_part(what: &str) -> String {
    let s: String = what.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '-' }).take(48).collect();
    if s.is_empty() {
        "x".into()
    } else {
        s
    }
}

/// A resource reserved by [`ScratchSet::reserve`]: create it with `name`
/// (and [`ScratchName::glance_tags`] / [`ScratchName::cinder_metadata`]).
#[derive(Debug, Clone)]
pub struct ScratchName {
    pub name: String,
    pub kind: ScratchKind,
    /// The scratch record's name in the repository.
    pub record: String,
    /// When the record was written (its `created`).
    pub reserved: String,
    slot: usize,
}

impl ScratchName {
    /// The Cinder metadata that marks a scratch volume or snapshot.
    pub fn cinder_metadata(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(SCRATCH_METADATA_KEY.into(), Value::String(self.record.clone()));
        m
    }

    /// The Glance tags of a scratch image.
    pub fn glance_tags() -> Vec<String> {
        vec![SCRATCH_TAG.to_string()]
    }
}

struct Made {
    name: ScratchName,
    id: Option<String>,
}

/// The scratch resources of one piece of work (one volume archived, one restore).
pub struct ScratchSet<'a> {
    repo: &'a Repository,
    glance: GlanceClient,
    cinder: Option<CinderClient>,
    lease: String,
    cloud: Option<String>,
    purpose: String,
    made: Vec<Made>,
    finished: bool,
}

impl<'a> ScratchSet<'a> {
    /// `lease` is the run's lock lease ([`crate::repository::lock::Lock::lease`]): while it is
    /// live, no cleanup touches this set's resources.
    pub fn new(
        repo: &'a Repository,
        glance: &GlanceClient,
        cinder: Option<&CinderClient>,
        lease: String,
        cloud: Option<&str>,
        purpose: &str,
    ) -> ScratchSet<'a> {
        ScratchSet {
            repo,
            glance: glance.clone(),
            cinder: cinder.cloned(),
            lease,
            cloud: cloud.map(str::to_string),
            purpose: purpose.to_string(),
            made: Vec::new(),
            finished: false,
        }
    }

    /// Writes the record of a resource about to be created and returns the name to create
    /// it with. `what` ends the name ("upload", "clone", "snap", "restore").
    pub fn reserve(&mut self, kind: ScratchKind, what: &str) -> Result<ScratchName> {
        let name = format!("{SCRATCH_PREFIX}{}-{}", hex::encode(rand::random::<[u8; 8]>()), name_part(what));
        let session = self.glance.session();
        let endpoint = match kind {
            ScratchKind::Image => self.glance.endpoint().to_string(),
            _ => self.cinder.as_ref().map(|c| c.endpoint().to_string()).context("a Cinder volume or snapshot needs a Cinder endpoint")?,
        };
        let record = ScratchRecord {
            version: SCRATCH_VERSION,
            kind,
            name: name.clone(),
            purpose: self.purpose.clone(),
            cloud: self.cloud.clone(),
            auth_url: session.map(|s| s.auth_url().to_string()),
            project_id: session.and_then(|s| s.project_id()),
            endpoint,
            lease: Some(self.lease.clone()),
            host: crate::util::hostname(),
            pid: std::process::id(),
            created: crate::util::now_rfc3339(),
        };
        let reserved = record.created.clone();
        let key = self
            .repo
            .save_scratch_record(&record)
            .with_context(|| format!("cannot record the scratch {} {name} before creating it", kind.name()))?;
        // Unique within the set even after [`ScratchSet::keep`] removed an earlier one.
        let slot = self.made.last().map_or(0, |m| m.name.slot + 1);
        let n = ScratchName { name, kind, record: key, reserved, slot };
        self.made.push(Made { name: n.clone(), id: None });
        Ok(n)
    }

    /// The reserved resource now exists with this id (deleted by id then, not looked up by name).
    pub fn created(&mut self, reserved: &ScratchName, id: &str) {
        if let Some(m) = self.made.iter_mut().find(|m| m.name.slot == reserved.slot) {
            m.id = Some(id.to_string());
        }
    }

    /// The reserved resource is kept: it is the work's result now (a restored volume, a
    /// `--keep-image` image), renamed and unmarked by the caller first. Its record is deleted
    /// and [`ScratchSet::finish`] leaves it alone. Until this returns, a cleanup deletes it.
    pub fn keep(&mut self, reserved: &ScratchName) -> Result<()> {
        let pos = self.made.iter().position(|m| m.name.slot == reserved.slot).context("that scratch resource is not in this set")?;
        self.repo
            .delete_scratch_record(&reserved.record)
            .with_context(|| format!("cannot delete the scratch record of the kept {} {}", reserved.kind.name(), reserved.name))?;
        self.made.remove(pos);
        Ok(())
    }

    /// Deletes every resource made, newest first (image, then volume, then snapshot),
    /// waits until each is gone, then deletes its record. Returns one message per
    /// resource that could not be deleted; its record stays for the next cleanup.
    pub fn finish(mut self) -> Vec<String> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Vec<String> {
        self.finished = true;
        let mut problems = Vec::new();
        let clients = Clients { glance: &self.glance, cinder: self.cinder.as_ref() };
        for m in self.made.drain(..).rev() {
            let deleted = match &m.id {
                Some(id) => clients.delete_by_id(m.name.kind, id).map(|()| vec![id.clone()]),
                None => clients.delete_by_name(m.name.kind, &m.name.name, &m.name.reserved).map(|f| f.marked),
            };
            match deleted {
                Ok(_) => {
                    if let Err(e) = self.repo.delete_scratch_record(&m.name.record) {
                        problems.push(format!("deleted the scratch {} {} but not its record: {e:#}", m.name.kind.name(), m.name.name));
                    }
                }
                Err(e) => problems.push(format!(
                    "could not delete the scratch {} {} (left for `imgarc cleanup`): {e:#}",
                    m.name.kind.name(),
                    m.name.name
                )),
            }
        }
        problems
    }
}

impl Drop for ScratchSet<'_> {
    fn drop(&mut self) {
        if !self.finished {
            for p in self.finish_inner() {
                tracing::warn!("{p}");
            }
        }
    }
}

/// The two services scratch resources live in.
struct Clients<'c> {
    glance: &'c GlanceClient,
    cinder: Option<&'c CinderClient>,
}

impl Clients<'_> {
    fn cinder(&self) -> Result<&CinderClient> {
        self.cinder.context("no Cinder endpoint to delete a scratch volume or snapshot at")
    }

    /// Deletes the resource `id` and waits until it is gone; an absent one is not an error.
    fn delete_by_id(&self, kind: ScratchKind, id: &str) -> Result<()> {
        let gone = |r: std::result::Result<(), OsError>| match r {
            Ok(()) | Err(OsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        };
        match kind {
            ScratchKind::Image => gone(self.glance.delete(id))?,
            ScratchKind::Volume => {
                let c = self.cinder()?;
                // A volume still uploading (a killed run's upload goes on in Cinder) cannot be deleted yet.
                match c.get_volume(id) {
                    Ok(v) if ["uploading", "creating", "downloading", "attaching", "detaching"].contains(&v.status.as_str()) => {
                        c.wait_volume(id, &["available", "error", "in-use"], DELETE_TIMEOUT)?;
                    }
                    Err(OsError::NotFound(_)) => return Ok(()),
                    _ => {}
                }
                gone(c.delete_volume(id))?;
                c.wait_volume_gone(id, DELETE_TIMEOUT)?;
            }
            ScratchKind::Snapshot => {
                let c = self.cinder()?;
                if let Ok(s) = c.get_snapshot(id) {
                    if s.status == "creating" {
                        c.wait_snapshot(id, &["available", "error"], DELETE_TIMEOUT)?;
                    }
                }
                gone(c.delete_snapshot(id))?;
                c.wait_snapshot_gone(id, DELETE_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// The ids of the resources named exactly `name` (a name is unique, but a retried create
    /// could make two), split into those marked as scratch (Glance tag [`SCRATCH_TAG`], Cinder
    /// metadata [`SCRATCH_METADATA_KEY`]) and those that are not: a resource without the mark is
    /// never deleted by name, whatever a record says (a forged record, or a user's own image
    /// that happens to carry a scratch-like name).
    /// The resources named exactly `name`, split into ours and not ours. Ours: marked as
    /// scratch (tag / metadata), or created no earlier than the record was written (`reserved`,
    /// less [`CLOCK_SLACK`] for clocks that disagree). A resource Cinder creates itself (the
    /// image of `os-volume_upload_image`) is marked only a moment after it exists, and a run
    /// killed in between leaves it unmarked; it was still made after its record. One older
    /// than its record, and unmarked, is someone else's: never deleted.
    fn find(&self, kind: ScratchKind, name: &str, reserved: &str) -> Result<Found> {
        let not_before = parse_cloud_time(reserved).map(|t| t - CLOCK_SLACK);
        let ours = |marked: bool, created: Option<&str>| {
            marked || matches!((not_before, created.and_then(parse_cloud_time)), (Some(nb), Some(c)) if c >= nb)
        };
        let all: Vec<(String, bool)> = match kind {
            ScratchKind::Image => self
                .glance
                .list_filtered(&[("name", name)], 100)?
                .into_iter()
                .filter(|r| r.name.as_deref() == Some(name))
                .map(|r| {
                    let mine = ours(r.tags.iter().any(|t| t == SCRATCH_TAG), r.created_at.as_deref());
                    (r.id, mine)
                })
                .collect(),
            ScratchKind::Volume => self
                .cinder()?
                .list_volumes(&[("name", name)])?
                .into_iter()
                .filter(|v| v.name.as_deref() == Some(name))
                .map(|v| {
                    let mine = ours(v.metadata.contains_key(SCRATCH_METADATA_KEY), v.created_at.as_deref());
                    (v.id, mine)
                })
                .collect(),
            ScratchKind::Snapshot => self
                .cinder()?
                .list_snapshots(&[("name", name)])?
                .into_iter()
                .filter(|s| s.name.as_deref() == Some(name))
                .map(|s| {
                    let mine = ours(s.metadata.contains_key(SCRATCH_METADATA_KEY), s.created_at.as_deref());
                    (s.id, mine)
                })
                .collect(),
        };
        let (marked, unmarked): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, m)| *m);
        Ok(Found { marked: marked.into_iter().map(|(id, _)| id).collect(), unmarked: unmarked.into_iter().map(|(id, _)| id).collect() })
    }

    /// Deletes every resource of ours named `name` ([`Clients::find`]); returns their ids and
    /// those of the others, left alone.
    fn delete_by_name(&self, kind: ScratchKind, name: &str, reserved: &str) -> Result<Found> {
        let found = self.find(kind, name, reserved)?;
        for id in &found.marked {
            self.delete_by_id(kind, id)?;
        }
        Ok(found)
    }
}

/// How far the cloud's clock may be behind the archiver's for a resource to count as made
/// after its record.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::minutes(10);

/// A time as Glance (RFC 3339, `Z`) or Cinder (`2026-12-02T14:27:01.000000`, no offset: UTC)
/// writes it.
fn parse_cloud_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    crate::util::parse_rfc3339(s)
        .or_else(|| chrono::NaiveDateTime::parse_from_str(s.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc()))
}

/// What [`Clients::find`] found by a scratch name.
struct Found {
    /// Ours (marked, or made after the record): deleted.
    marked: Vec<String>,
    /// Not ours (unmarked and older than the record): never deleted.
    unmarked: Vec<String>,
}

/// Options of [`cleanup`].
#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    /// Say what would be deleted; delete nothing.
    pub dry_run: bool,
}

/// One scratch record [`cleanup`] looked at.
#[derive(Debug, Clone, Serialize)]
pub struct CleanupEntry {
    /// The record's name in the repository (`scratch/<name>`).
    pub record: String,
    pub kind: ScratchKind,
    pub name: String,
    pub purpose: String,
    pub host: String,
    pub created: String,
    /// The ids of the resources deleted (or, with `--dry-run`, found).
    pub ids: Vec<String>,
    /// Why it was kept, or what failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub ok: bool,
    pub dry_run: bool,
    /// Scratch records in the repository.
    pub records: usize,
    /// Leftovers of dead runs: their resources deleted (or gone already) and their records deleted.
    pub deleted: Vec<CleanupEntry>,
    /// Records of runs that still hold their lock: left alone.
    pub in_progress: Vec<CleanupEntry>,
    /// Records of another cloud (endpoint) than this run's: left for a host that talks to it.
    pub other_cloud: Vec<CleanupEntry>,
    /// Resources that could not be deleted, and unreadable records: kept, tried again next time.
    pub failed: Vec<CleanupEntry>,
    /// Records naming a resource that is not marked as scratch (no `imgarc-scratch` tag or
    /// `imgarc_scratch` metadata): the resource is never deleted; the record is (it cannot be
    /// acted on), and the run is not ok, so that someone looks at who wrote it.
    pub refused: Vec<CleanupEntry>,
}

/// Deletes the leftovers of dead runs: every scratch record whose lease is not live and whose
/// endpoint is this run's Glance or Cinder, its resources (looked up by name), then the record.
/// Needs the caller to hold a repository lock (records are deleted under it).
pub fn cleanup(repo: &Repository, glance: &GlanceClient, cinder: Option<&CinderClient>, opts: &CleanupOptions) -> Result<CleanupReport> {
    let mut report = CleanupReport { dry_run: opts.dry_run, ..Default::default() };
    let records = repo.list_scratch_records()?;
    report.records = records.len();
    if records.is_empty() {
        report.ok = true;
        return Ok(report);
    }
    // Loaded first, then handled images → volumes → snapshots: deleting a scratch image ends an
    // upload a killed run left going, which frees its volume, which frees its snapshot.
    let mut loaded = Vec::with_capacity(records.len());
    for (key, size) in records {
        let rec = repo.load_scratch_record(&key, Some(size));
        let rank = match &rec {
            Ok(r) => match r.kind {
                ScratchKind::Image => 0,
                ScratchKind::Volume => 1,
                ScratchKind::Snapshot => 2,
            },
            Err(_) => 3,
        };
        loaded.push((rank, key, rec));
    }
    loaded.sort_by_key(|(rank, _, _)| *rank);
    let live: HashSet<String> = repo.live_leases().context("cannot list the repository's locks")?;
    let clients = Clients { glance, cinder };
    for (_, key, rec) in loaded {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                report.failed.push(CleanupEntry {
                    record: key,
                    kind: ScratchKind::Image,
                    name: String::new(),
                    purpose: String::new(),
                    host: String::new(),
                    created: String::new(),
                    ids: Vec::new(),
                    reason: Some(format!("unreadable scratch record: {e:#}")),
                });
                continue;
            }
        };
        let mut entry = CleanupEntry {
            record: key.clone(),
            kind: rec.kind,
            name: rec.name.clone(),
            purpose: rec.purpose.clone(),
            host: rec.host.clone(),
            created: rec.created.clone(),
            ids: Vec::new(),
            reason: None,
        };
        if rec.lease.as_ref().is_some_and(|l| live.contains(l)) {
            entry.reason = Some(format!("its run (host {}, pid {}) still holds its lock", rec.host, rec.pid));
            report.in_progress.push(entry);
            continue;
        }
        let here = match rec.kind {
            ScratchKind::Image => Some(glance.endpoint()),
            _ => cinder.map(|c| c.endpoint()),
        };
        if here != Some(rec.endpoint.as_str()) {
            entry.reason = Some(format!("made at {}, this run talks to {}", rec.endpoint, here.unwrap_or("no Cinder")));
            report.other_cloud.push(entry);
            continue;
        }
        let result = if opts.dry_run {
            clients.find(rec.kind, &rec.name, &rec.created)
        } else {
            clients.delete_by_name(rec.kind, &rec.name, &rec.created).and_then(|found| repo.delete_scratch_record(&key).map(|()| found))
        };
        match result {
            Ok(found) if !found.unmarked.is_empty() => {
                entry.reason = Some(format!(
                    "{} {} named {} not marked as scratch (no {SCRATCH_TAG} tag / {SCRATCH_METADATA_KEY} metadata): never deleted{}",
                    rec.kind.name(),
                    found.unmarked.join(", "),
                    rec.name,
                    if opts.dry_run { "" } else { "; the record was removed" }
                ));
                entry.ids = found.marked;
                report.refused.push(entry);
            }
            Ok(found) => {
                entry.ids = found.marked;
                report.deleted.push(entry);
            }
            Err(e) => {
                entry.reason = Some(format!("{e:#}"));
                report.failed.push(entry);
            }
        }
    }
    report.ok = report.failed.is_empty() && report.refused.is_empty();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_imgarc_scratch_names_are_acted_on() {
        assert!(is_scratch_name("imgarc-scratch-0123456789abcdef-upload"));
        for forged in
            ["", "imgarc-scratch-", "prod-db", "imgarc-scratch-x y", "imgarc-scratch-a/b", "IMGARC-SCRATCH-a", "imgarc-scratch-a\n"]
        {
            assert!(!is_scratch_name(forged), "{forged:?}");
        }
        assert!(!is_scratch_name(&format!("imgarc-scratch-{}", "a".repeat(201))));
        assert_eq!(name_part("vol 1/é"), "vol-1--");
        assert!(is_scratch_name(&format!("{SCRATCH_PREFIX}{}-{}", "ab".repeat(8), name_part(&"x".repeat(300)))));
    }

    #[test]
    fn records_round_trip_and_a_forged_name_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::backend::open(dir.path().join("repo").to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::init(backend.clone(), crate::repository::config::Config::new(64 << 10, 3).unwrap()).unwrap();
        let lock = repo.acquire_lock(false, "test").unwrap();
        repo.hold_lock(&lock);
        let rec = ScratchRecord {
            version: SCRATCH_VERSION,
            kind: ScratchKind::Volume,
            name: "imgarc-scratch-0123456789abcdef-clone".into(),
            purpose: "test".into(),
            cloud: None,
            auth_url: None,
            project_id: None,
            endpoint: "http://127.0.0.1:1/v3/p".into(),
            lease: Some(lock.lease()),
            host: "h".into(),
            pid: 1,
            created: crate::util::now_rfc3339(),
        };
        let name = repo.save_scratch_record(&rec).unwrap();
        assert_eq!(repo.list_scratch_records().unwrap().len(), 1);
        assert_eq!(repo.load_scratch_record(&name, None).unwrap(), rec);
        assert!(repo.live_leases().unwrap().contains(&lock.lease()), "the hold's own lease is live");

        let forged = ScratchRecord { name: "prod-db".into(), ..rec };
        let name = repo.save_scratch_record(&forged).unwrap();
        let err = repo.load_scratch_record(&name, None).unwrap_err();
        assert!(format!("{err:#}").contains("not an imgarc scratch name"), "{err:#}");
    }
}
