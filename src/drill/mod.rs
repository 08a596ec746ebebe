//! `imgarc drill`: proves that snapshots restore (and boot). For each chosen
//! snapshot it rebuilds the image end to end against every recorded digest
//! (writing it nowhere), checks the partition table and every filesystem
//! read-only ([`fsck`]), optionally boots the guest from the archive
//! ([`boot`]) and restores it into a Glance and back out of it. Each result
//! is stored as a `drills/` record ([`crate::repository::drill`]) that every
//! host sees, `report` shows and prune drops with its snapshot.
//!
//! A drill never stops at a failed check of one snapshot: every check of every
//! chosen snapshot runs and is recorded, except that a snapshot whose rebuild
//! failed is not booted or uploaded (its bytes are known bad).

pub mod boot;
pub mod fsck;

use crate::guest::GuestDisk;
use crate::ids::Id;
use crate::index::{Index, SnapshotRow};
use crate::openstack::glance::GlanceClient;
use crate::progress::SharedProgress;
use crate::repository::drill::{CheckStatus, DrillCheck, DrillRecord, DRILL_VERSION};
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::Repository;
use crate::restore::{restore, RestoreOptions, Target};
use crate::restore_glance::{restore_to_glance, ToGlanceOptions};
use crate::select::SnapshotSelector;
use crate::warnings::Warnings;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `imgarc drill` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DrillOptions {
    #[cfg_attr(feature = "clap", command(flatten))]
    pub select: SnapshotSelector,
    /// Drill N snapshots picked at random among the newest of each image, weighted to the images drilled longest ago (never drilled first)
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", value_parser = parse_sample))]
    pub sample: Option<usize>,
    /// Also read every byte of every file of every filesystem
    #[cfg_attr(feature = "clap", arg(long))]
    pub deep: bool,
    /// Boot the guest disk under qemu-system-x86_64 straight from the archive (NBD, writes discarded) and watch the serial console
    #[cfg_attr(feature = "clap", arg(long))]
    pub boot: bool,
    /// With --boot: fail the boot when the expected line has not appeared by then (s, m, h; default 600s)
    #[cfg_attr(feature = "clap", arg(long, value_name = "DURATION", value_parser = parse_timeout))]
    pub boot_timeout: Option<Duration>,
    /// With --boot: the console line that proves the boot, a regular expression (default: a login prompt or cloud-init's "finished" line)
    #[cfg_attr(feature = "clap", arg(long, value_name = "REGEX"))]
    pub expect: Option<String>,
    /// With --boot: auto (KVM when /dev/kvm works, else TCG), kvm or tcg
    #[cfg_attr(feature = "clap", arg(long, value_parser = ["auto", "kvm", "tcg"]))]
    pub accel: Option<String>,
    /// Restore each snapshot into a Glance, verify the new image's os_hash_value, then delete it
    #[cfg_attr(feature = "clap", arg(long))]
    pub to_glance: bool,
    /// With --to-glance: the cloud in clouds.yaml to restore into (default: the source credentials)
    #[cfg_attr(feature = "clap", arg(long, value_name = "CLOUD"))]
    pub to_cloud: Option<String>,
    /// With --to-glance: keep the restored image instead of deleting it
    #[cfg_attr(feature = "clap", arg(long))]
    pub keep: bool,
}

/// The default `--boot-timeout`.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(feature = "clap")]
fn parse_sample(s: &str) -> std::result::Result<usize, String> {
    crate::select::parse_count("--sample", s)
}

#[cfg(feature = "clap")]
fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    match crate::util::parse_duration(s) {
        Ok(d) if d > chrono::Duration::zero() => d.to_std().map_err(|e| e.to_string()),
        Ok(_) => Err("--boot-timeout must be longer than 0".into()),
        Err(e) => Err(format!("{e:#}")),
    }
}

impl DrillOptions {
    /// Refuses flags that need another flag (clap's `requires` cannot see a bool flag as
    /// missing) and an `--expect` that is not a regular expression, before any work.
    pub fn validate(&self) -> Result<()> {
        self.select.validate()?;
        if !self.boot {
            for (given, flag) in
                [(self.boot_timeout.is_some(), "--boot-timeout"), (self.expect.is_some(), "--expect"), (self.accel.is_some(), "--accel")]
            {
                if given {
                    bail!("{flag} applies to --boot only");
                }
            }
        }
        if !self.to_glance {
            for (given, flag) in [(self.to_cloud.is_some(), "--to-cloud"), (self.keep, "--keep")] {
                if given {
                    bail!("{flag} applies to --to-glance only");
                }
            }
        }
        if self.sample == Some(0) {
            bail!("--sample 0 would select nothing; give N >= 1");
        }
        if self.boot {
            boot::compile_expect(self.expect.as_deref())?;
        }
        Ok(())
    }

    /// The boot options these flags give.
    pub fn boot_options(&self) -> boot::BootOptions {
        let accel = match self.accel.as_deref() {
            Some("kvm") => boot::Accel::Kvm,
            Some("tcg") => boot::Accel::Tcg,
            _ => boot::Accel::Auto,
        };
        boot::BootOptions { timeout: self.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT), expect: self.expect.clone(), accel }
    }
}

/// The snapshots a drill takes: the given ids (narrowed by the selector), else the newest
/// of each image the selector picks (`--latest N`: the newest N); `--sample N` then picks
/// N of those at random, weighted by how long ago each image was last drilled. Oldest first.
pub fn choose(index: &Index, ids: &[String], opts: &DrillOptions) -> Result<Vec<SnapshotRow>> {
    let mut select = opts.select.clone();
    if ids.is_empty() && select.latest.is_none() {
        select.latest = Some(1);
    }
    let rows = select.select(index, ids)?;
    let Some(n) = opts.sample.filter(|n| *n < rows.len()) else { return Ok(rows) };
    let last = last_drill_by_image(index)?;
    let now = chrono::Utc::now();
    let ages: Vec<Option<f64>> = rows
        .iter()
        .map(|r| {
            let group = image_group_of(index, &r.id)?;
            Ok(last.get(&group).and_then(|t| crate::util::parse_rfc3339(t)).map(|t| (now - t).num_seconds().max(1) as f64))
        })
        .collect::<Result<_>>()?;
    // Never drilled weighs as much as twice the longest wait (at least 30 days): those come first in expectation.
    let longest = ages.iter().flatten().cloned().fold(30.0 * 86400.0, f64::max);
    let weights: Vec<f64> = ages.iter().map(|a| a.unwrap_or(2.0 * longest)).collect();
    let mut picked = weighted_sample(&weights, n, &mut || rand::random::<f64>());
    picked.sort_unstable();
    Ok(picked.into_iter().map(|i| rows[i].clone()).collect())
}

/// `n` distinct indexes into `weights`, each drawn with probability proportional to its
/// weight among those not yet drawn (Efraimidis–Spirakis: the `n` largest `u^(1/w)`).
fn weighted_sample(weights: &[f64], n: usize, uniform: &mut dyn FnMut() -> f64) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> =
        weights.iter().enumerate().map(|(i, w)| (uniform().max(f64::MIN_POSITIVE).ln() / w.max(f64::MIN_POSITIVE), i)).collect();
    keys.sort_by(|a, b| b.0.total_cmp(&a.0));
    keys.into_iter().take(n).map(|(_, i)| i).collect()
}

/// The image group of a snapshot (`select::image_group`), from its head.
fn image_group_of(index: &Index, id: &Id) -> Result<String> {
    let head = index.snapshot_head(id)?.with_context(|| format!("snapshot {} vanished from the index", id.short()))?;
    Ok(crate::select::image_group(&head.source, &head.name))
}

/// The group `select::image_group` gives the snapshot a record is of, from the record.
pub fn record_group(r: &DrillRecord) -> String {
    crate::select::group_of(r.image.as_deref(), &r.name)
}

/// When each image group was last drilled (any snapshot, any result), RFC 3339.
fn last_drill_by_image(index: &Index) -> Result<HashMap<String, String>> {
    let mut last = HashMap::new();
    for row in index.drill_rows()? {
        // Rows come oldest first: the last one written per group wins.
        last.insert(record_group(&row.record), row.record.started.clone());
    }
    Ok(last)
}

/// What `imgarc drill` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    /// One record per snapshot drilled, in the order drilled.
    pub drills: Vec<DrillRecord>,
    pub passed: usize,
    /// Drills with a check that failed: the snapshot did not prove restorable.
    pub failed: usize,
    /// Drills that failed no check but could not carry one out (no qemu, Glance unreachable).
    pub not_run: usize,
    /// Records stored in the repository (a record that could not be stored is a warning).
    pub records_stored: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Drills each of `rows` and stores its record. `glance` is where `--to-glance` restores
/// (the caller resolves `--to-cloud`); `bar(name, bytes)` makes the progress handle of one
/// snapshot's rebuild. The caller holds a shared lock (prune must not delete packs
/// under a drill, and records are written under it).
pub fn drill(
    repo: &Repository,
    index: &mut Index,
    rows: &[SnapshotRow],
    opts: &DrillOptions,
    glance: Option<&GlanceClient>,
    bar: &dyn Fn(&str, u64) -> SharedProgress,
) -> Result<DrillReport> {
    repo.require_full_key("drill")?;
    opts.validate()?;
    if opts.to_glance && glance.is_none() {
        bail!("--to-glance needs a Glance to restore into");
    }
    let warnings = Warnings::new();
    let mut report = DrillReport::default();
    for row in rows {
        let snap = index.snapshot(&row.id)?.with_context(|| format!("snapshot {} vanished from the index", row.id.short()))?;
        let record = drill_snapshot(repo, index, &row.id, &snap, opts, glance, &bar(&snap.name, snap.logical_bytes));
        let failed = record.checks.iter().any(|c| c.status == CheckStatus::Failed);
        match (record.ok, failed) {
            (true, _) => report.passed += 1,
            (false, true) => report.failed += 1,
            (false, false) => report.not_run += 1,
        }
        match repo.save_drill_record(&record) {
            Ok(name) => {
                report.records_stored += 1;
                if let Err(e) = index.add_drill_record(&name, &record) {
                    tracing::debug!("cannot cache drill record {name}: {e:#}");
                }
            }
            Err(e) => warnings.warn(format!("the drill of snapshot {} ({}) is not recorded: {e:#}", row.id.short(), snap.name)),
        }
        report.drills.push(record);
    }
    report.warnings = warnings.take();
    Ok(report)
}

/// Every check of one snapshot, as its record (not yet stored).
pub fn drill_snapshot(
    repo: &Repository,
    index: &Index,
    id: &Id,
    snap: &Snapshot,
    opts: &DrillOptions,
    glance: Option<&GlanceClient>,
    progress: &SharedProgress,
) -> DrillRecord {
    let started_at = crate::util::now_rfc3339();
    let started = Instant::now();
    let mut checks = vec![rebuild_check(repo, index, snap, progress)];
    let rebuilt = checks[0].status == CheckStatus::Passed;
    let mut has_disk = false;
    match GuestDisk::open(repo, index, snap) {
        Ok(disk) => {
            has_disk = true;
            // An Arc although the disk is not Sync: `guest::volume::layout` takes `Arc<dyn ReadAt>`.
            #[allow(clippy::arc_with_non_send_sync)]
            let disk = Arc::new(disk);
            checks.extend(fsck::check_disk(disk, opts.deep));
        }
        Err(e) => checks.push(DrillCheck {
            check: "partitions".into(),
            status: CheckStatus::Unchecked,
            detail: Some(format!("no guest disk to check: {e:#}")),
            seconds: 0.0,
        }),
    }
    let (mut boot_seconds, mut console_tail) = (None, None);
    if opts.boot {
        let t = Instant::now();
        let (status, detail) = if !rebuilt {
            (CheckStatus::Error, "not booted: the rebuild failed".to_string())
        } else if !has_disk {
            (CheckStatus::Error, "not booted: the snapshot holds no guest disk".to_string())
        } else {
            match boot::boot_snapshot(repo, index, id, snap, &opts.boot_options()) {
                Ok(o) => {
                    boot_seconds = Some(o.seconds);
                    console_tail = Some(o.console_tail.clone());
                    // Why a boot that asked for KVM ran under TCG (and so took longer).
                    let fallback = o
                        .kvm_failed
                        .as_deref()
                        .map(|k| format!("; KVM could not run the guest ({k}), booted under TCG"))
                        .unwrap_or_default();
                    if o.reached {
                        (CheckStatus::Passed, format!("reached the expected console line after {:.1} s ({}){fallback}", o.seconds, o.accel))
                    } else {
                        let why = o.why.as_deref().unwrap_or("the expected line did not appear");
                        (CheckStatus::Failed, format!("did not boot: {why} ({}){fallback}", o.accel))
                    }
                }
                Err(e) => (CheckStatus::Error, format!("could not boot: {e:#}")),
            }
        };
        checks.push(DrillCheck { check: "boot".into(), status, detail: Some(detail), seconds: t.elapsed().as_secs_f64() });
    }
    if let (true, Some(glance)) = (opts.to_glance, glance) {
        let t = Instant::now();
        let (status, detail) = if rebuilt {
            glance_check(repo, index, id, snap, glance, opts.keep)
        } else {
            (CheckStatus::Error, "not restored into Glance: the rebuild failed".to_string())
        };
        checks.push(DrillCheck { check: "glance".into(), status, detail: Some(detail), seconds: t.elapsed().as_secs_f64() });
    }
    let ok = checks.iter().all(|c| matches!(c.status, CheckStatus::Passed | CheckStatus::Unchecked));
    let error = checks
        .iter()
        .find(|c| c.status == CheckStatus::Failed)
        .or_else(|| checks.iter().find(|c| c.status == CheckStatus::Error))
        .map(|c| format!("{}: {}", c.check, c.detail.as_deref().unwrap_or("failed")));
    let image = match &snap.source {
        Source::Glance { image_id, .. } => Some(image_id.clone()),
        _ => None,
    };
    let project = snap.metadata.get("owner").and_then(|v| v.as_str()).map(str::to_string);
    DrillRecord {
        version: DRILL_VERSION,
        snapshot: id.to_hex(),
        name: snap.name.clone(),
        image,
        project,
        started: started_at,
        host: crate::util::hostname(),
        imgarc_version: env!("CARGO_PKG_VERSION").to_string(),
        checks,
        ok,
        seconds: started.elapsed().as_secs_f64(),
        boot_seconds,
        // Bounded to MAX_CONSOLE_TAIL by the boot's console watcher.
        console_tail,
        error,
    }
}

/// The digests a rebuild must reproduce: what the snapshot recorded, and what the Glance
/// record it came from vouches for (`os_hash_value`, `checksum` = md5). A Glance value that
/// contradicts the recorded one is returned as the error.
fn expected_digests(snap: &Snapshot) -> Result<BTreeMap<String, String>, String> {
    let mut want: BTreeMap<String, String> = snap.digests.iter().map(|(k, v)| (k.clone(), v.to_ascii_lowercase())).collect();
    let meta = |k: &str| snap.metadata.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(str::to_ascii_lowercase);
    let mut vouched = Vec::new();
    if let (Some(algo), Some(value)) = (meta("os_hash_algo"), meta("os_hash_value")) {
        vouched.push((algo, value, "os_hash_value"));
    }
    if let Some(md5) = meta("checksum") {
        vouched.push(("md5".to_string(), md5, "checksum"));
    }
    for (algo, value, field) in vouched {
        if crate::digest::Algo::parse(&algo).is_none() {
            continue;
        }
        match want.get(&algo) {
            Some(recorded) if *recorded != value => {
                return Err(format!("the Glance record's {field} ({algo} {value}) differs from the archived {algo} {recorded}"))
            }
            _ => {
                want.insert(algo, value);
            }
        }
    }
    Ok(want)
}

/// Rebuilds the archived image end to end into nothing, checking its length and every
/// expected digest; every chunk's BLAKE3 is verified by the reader on the way.
fn rebuild_check(repo: &Repository, index: &Index, snap: &Snapshot, progress: &SharedProgress) -> DrillCheck {
    let started = Instant::now();
    let done = |status, detail: String| DrillCheck {
        check: "rebuild".into(),
        status,
        detail: Some(detail),
        seconds: started.elapsed().as_secs_f64(),
    };
    let expected = match expected_digests(snap) {
        Ok(e) => e,
        Err(why) => return done(CheckStatus::Failed, why),
    };
    let mut checked = snap.clone();
    checked.digests = expected.clone();
    match restore(repo, index, &checked, Target::Stream(Box::new(std::io::sink())), &RestoreOptions::default(), progress) {
        Ok(r) => {
            let secs = started.elapsed().as_secs_f64();
            let verified = if expected.is_empty() {
                "no whole-image digest recorded: every chunk's BLAKE3 verified".to_string()
            } else {
                format!("{} verified", expected.keys().cloned().collect::<Vec<_>>().join(", "))
            };
            let mut detail = format!(
                "rebuilt the {} image, {} in {secs:.1} s ({}/s); {verified}",
                snap.format,
                crate::util::human_bytes(r.bytes),
                crate::util::human_bytes((r.bytes as f64 / secs.max(1e-3)) as u64)
            );
            for w in &r.warnings {
                detail.push_str(&format!("; {w}"));
            }
            done(CheckStatus::Passed, detail)
        }
        Err(e) => done(CheckStatus::Failed, format!("{e:#}")),
    }
}

/// Restores into `glance`, checks what Glance computed of the upload against the archived
/// digest, then deletes the image unless `keep`.
fn glance_check(repo: &Repository, index: &Index, id: &Id, snap: &Snapshot, glance: &GlanceClient, keep: bool) -> (CheckStatus, String) {
    let opts = ToGlanceOptions {
        name: Some(format!("imgarc-drill {} {}", snap.name, id.short())),
        method: "put".into(),
        properties: vec![format!("imgarc_drill_of={}", id.to_hex())],
        ..Default::default()
    };
    let r = match restore_to_glance(repo, index, snap, glance, &RestoreOptions::default(), &opts, &crate::progress::none()) {
        Ok(r) => r,
        Err(e) => return (CheckStatus::Failed, format!("restore into {}: {e:#}", glance.endpoint())),
    };
    let archived = snap.digests.get("sha512").map(|s| s.to_ascii_lowercase());
    let verdict = match (&r.os_hash_value, &archived) {
        (Some(got), Some(want)) if got.eq_ignore_ascii_case(want) => {
            Ok(format!("os_hash_value matches the archived sha512 ({}…)", &want[..16]))
        }
        (Some(got), Some(want)) => Err(format!("Glance computed os_hash_value {got}, the archived sha512 is {want}")),
        (None, _) => Err("Glance recorded no os_hash_value for the new image".to_string()),
        (Some(_), None) => {
            Ok(format!("uploaded bytes verified with {} (no archived sha512 to compare Glance's os_hash_value with)", r.verified_with))
        }
    };
    let fate = if keep {
        format!("kept as image {}", r.image_id)
    } else {
        match glance.delete(&r.image_id) {
            Ok(()) => format!("image {} deleted", r.image_id),
            Err(e) => {
                return (
                    CheckStatus::Error,
                    format!("{}; could not delete the drill's image {}: {e:#}", verdict.unwrap_or_else(|e| e), r.image_id),
                )
            }
        }
    };
    match verdict {
        Ok(v) => (CheckStatus::Passed, format!("restored into {} in {:.1} s; {v}; {fate}", glance.endpoint(), r.seconds)),
        Err(v) => (CheckStatus::Failed, format!("restored into {}: {v}; {fate}", glance.endpoint())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sample_prefers_heavy_items_and_never_repeats() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let weights = [1.0, 1.0, 100.0, 1.0];
        let mut heavy = 0;
        for _ in 0..200 {
            let s = weighted_sample(&weights, 2, &mut uniform);
            assert_eq!(s.len(), 2);
            assert_ne!(s[0], s[1]);
            if s.contains(&2) {
                heavy += 1;
            }
        }
        assert!(heavy > 190, "the heavy item was drawn {heavy} times of 200");
        assert_eq!(weighted_sample(&weights, 9, &mut uniform).len(), 4);
    }
}
