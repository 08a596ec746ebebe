//! `imgarc sync`: archive every matching Glance image the repository does not
//! hold yet (the nightly job; docs/nightly.md). The work is `imgarc::sync`; this
//! file holds the `sync` singleton lock for the run, logs
//! one timestamped line per image on stderr, and prints the summary (prose or
//! one JSON document) on stdout. A `--dry-run` takes no lock (as `forget
//! --dry-run`): it writes nothing, and one that waited for a running sync would
//! only report what that sync is about to do anyway.

use super::{logging, Ctx, SomeItemsFailed};
use anyhow::{Context, Result};
use imgarc::index::Index;
use imgarc::sync::{DiskEntry, DiskResult, ImageEntry, ImageResult, SyncFlags, SyncReport};
use imgarc::util::human_bytes;

pub fn run(ctx: &Ctx, flags: SyncFlags) -> Result<()> {
    flags.digests()?;
    let flags_spill = flags.spill.clone();
    let copy_target = flags.copy_to.clone().map(|to| (to, flags.to_repo_cloud.clone(), flags.to_password_file.clone()));
    let repo = ctx.open_repo()?;
    // The target is opened (its password checked) before a night's downloads, not after.
    let target_passwords = copy_target.as_ref().map(|(_, _, file)| super::password::TargetPasswords::new(file.clone(), &ctx.passwords));
    let target = match (&copy_target, &target_passwords) {
        (Some((to, cloud, _)), Some(pw)) => Some(ctx.open_target(to, cloud.as_deref(), pw)?),
        _ => None,
    };
    // One sync per repository at a time; the lock stays held (and refreshed) until the run ends,
    // when `_lock` is dropped. Lock first, then catch up, as `archive` does: no prune mark slips in between.
    let _lock = match flags.dry_run {
        true => None,
        false => {
            // `--shard K/N`: one per shard; shards of one N run together (`imgarc::shard`).
            let lock = repo.acquire_shard_lock("sync", flags.shard).context("sync cannot start")?;
            repo.hold_lock(&lock);
            Some(lock)
        }
    };
    let mut index = if flags.dry_run {
        Index::open(&repo).context("cannot bring the local index up to date")?
    } else {
        Index::open_writer(&repo).context("cannot bring the local index up to date")?
    };
    let glance = ctx.glance(None)?;
    // Cinder, when the catalog has it: volume-backed instance snapshots are followed through it.
    let cinder = ctx.cinder_for(&glance).map_err(|e| format!("no Cinder endpoint ({e:#})"));
    if flags.volumes {
        if let Err(why) = &cinder {
            anyhow::bail!("sync --volumes: {why}");
        }
    }
    if let (Ok(c), false) = (&cinder, flags.dry_run) {
        super::cleanup::before_run(&repo, &glance, Some(c));
    }
    let lease = _lock.as_ref().map(|l| l.lease()).unwrap_or_default();
    let archiver =
        cinder.as_ref().map(|c| imgarc::volumes::VolumeArchiver { repo: &repo, glance: &glance, cinder: c, lease: lease.clone() });
    let opts = flags.resolve(&glance, ctx.global.os_cloud.clone(), Ctx::limiter(&ctx.global.limit_download)?)?;
    let quiet = ctx.out.quiet;
    let format = ctx.global.log_format;
    let log = |e: &ImageEntry| {
        if !quiet || e.result == ImageResult::Failed {
            let level = if e.result == ImageResult::Failed { tracing::Level::ERROR } else { tracing::Level::INFO };
            let mut fields = serde_json::to_value(e).unwrap_or_default();
            fields["outcome"] = e.result.name().into();
            logging::activity(format, level, &log_line(e), fields);
        }
    };
    let log_disk = |d: &DiskEntry| {
        if !quiet || d.result == DiskResult::Failed {
            let level = if d.result == DiskResult::Failed { tracing::Level::ERROR } else { tracing::Level::INFO };
            let mut fields = serde_json::to_value(d).unwrap_or_default();
            fields["outcome"] = format!("disk_{}", disk_result_name(d.result)).into();
            logging::activity(format, level, &disk_line(d), fields);
        }
    };
    let cinder_side = archiver.as_ref().map_err(|s| s.as_str());
    let report = imgarc::sync::sync(&repo, &mut index, &glance, cinder_side, &opts, &log, &log_disk)?;
    drop(archiver);
    if !quiet {
        let would = if report.dry_run { "would record " } else { "" };
        for d in &report.deleted_upstream {
            let line = format!("{would}deleted upstream {} ({}): last snapshot {} ({})", d.name, d.id, short(&d.snapshot), d.evidence);
            let mut fields = serde_json::to_value(d).unwrap_or_default();
            fields["outcome"] = "deleted_upstream".into();
            logging::activity(format, tracing::Level::INFO, &line, fields);
        }
        for d in &report.reappeared {
            let withdrawn = if report.dry_run { "would withdraw the deleted-upstream record" } else { "deleted-upstream record withdrawn" };
            let mut fields = serde_json::to_value(d).unwrap_or_default();
            fields["outcome"] = "reappeared".into();
            logging::activity(format, tracing::Level::INFO, &format!("reappeared {} ({}): {withdrawn}", d.name, d.id), fields);
        }
    }
    // report.warnings were logged (stderr) by the library as they happened.
    super::run_metrics::record(&report);
    let mut json = serde_json::to_value(&report)?;
    let mut copied = None;
    if let (Some(target), Some((to, _, _))) = (&target, &copy_target) {
        // The sync's locks go first: the copy takes its own (shared) ones.
        drop(_lock);
        drop(index);
        let opts = imgarc::copy::CopyOptions {
            snapshots: SyncFlags::snapshots_to_copy(&report),
            spill: flags_spill.clone(),
            ..Default::default()
        };
        let r = if opts.snapshots.is_empty() {
            None
        } else {
            Some(super::copy::copy_between(ctx, &repo, target, to, &opts).with_context(|| format!("sync --copy-to {to}"))?)
        };
        if let Some(r) = &r {
            super::run_metrics::record(r);
            json["copy"] = serde_json::to_value(r)?;
        }
        copied = Some((to.clone(), r));
    }
    ctx.emit(&json, || {
        let mut s = summary(&report);
        if let Some((to, r)) = &copied {
            match r {
                Some(r) => s.push_str(&super::copy::prose(r, to)),
                None => s.push_str(&format!("nothing to copy to {to}\n")),
            }
        }
        s
    });
    let copy_failed = copied.as_ref().and_then(|(_, r)| r.as_ref()).filter(|r| !r.ok);
    let disks_failed = report.volume_backed_failed.len() + report.volumes_failed();
    if !report.failed.is_empty() {
        Err(SomeItemsFailed(format!("sync: {} of {} images failed", report.failed.len(), report.images)).into())
    } else if disks_failed > 0 {
        Err(SomeItemsFailed(format!("sync: {disks_failed} Cinder disk(s) failed")).into())
    } else if let Some(r) = copy_failed {
        Err(SomeItemsFailed(format!("sync --copy-to: {} of {} snapshots were not copied", r.snapshots_failed, r.snapshots.len())).into())
    } else {
        Ok(())
    }
}

fn short(snapshot: &str) -> &str {
    &snapshot[..snapshot.len().min(16)]
}

/// `<result> <name> (<id>)[ snapshot <id>]: <details>` — one line per image, for journald and cron mail
/// (`logging::activity` puts the RFC 3339 time in front).
fn log_line(e: &ImageEntry) -> String {
    let what = match e.result {
        ImageResult::Archived => "archived",
        ImageResult::Unchanged => "unchanged",
        ImageResult::MetadataUpdated => "metadata-updated",
        ImageResult::Skipped => "skipped",
        ImageResult::VolumeBacked => "volume-backed",
        ImageResult::Failed => "failed",
    };
    let mut s = format!("{what} {} ({})", e.name, e.id);
    if let Some(snap) = &e.snapshot {
        s.push_str(&format!(" snapshot {}", short(snap)));
    }
    if let Some(would) = &e.would {
        // A dry run: `would-archived`/`would-metadata-updated` keep the word a grep for the real outcome finds.
        s = s.replacen(&format!("{what} "), &format!("would-{what} "), 1);
        let size = e.logical_bytes.map(|b| format!(", {}", human_bytes(b))).unwrap_or_default();
        // ("would-archived …: new image", not "…: archive: new image")
        s.push_str(&format!(": {}{size}", would.strip_prefix("archive: ").unwrap_or(would)));
        return s;
    }
    match e.result {
        ImageResult::Archived => {
            s.push_str(&format!(": {} read, {} stored, {:.1} s", human_bytes(e.bytes_read), human_bytes(e.bytes_stored), e.seconds))
        }
        ImageResult::MetadataUpdated => {
            s.push_str(&format!(": new metadata, data of {} reused", e.previous.as_deref().map(short).unwrap_or("?")))
        }
        ImageResult::Skipped | ImageResult::VolumeBacked | ImageResult::Failed => {
            s.push_str(&format!(": {}", e.reason.as_deref().unwrap_or("")))
        }
        ImageResult::Unchanged => {}
    }
    s
}

fn disk_result_name(r: DiskResult) -> &'static str {
    match r {
        DiskResult::Archived => "archived",
        DiskResult::Unchanged => "unchanged",
        DiskResult::Failed => "failed",
    }
}

/// `<result> <disk>[ snapshot <id>]: <details>` — one line per Cinder disk.
fn disk_line(d: &DiskEntry) -> String {
    let mut s = format!("{} {}", disk_result_name(d.result), d.describe());
    if let Some(would) = &d.would {
        return format!("would-{s}: {would}");
    }
    if let Some(snap) = &d.snapshot {
        s.push_str(&format!(" snapshot {}", short(snap)));
    }
    if d.result == DiskResult::Archived {
        let size = d.logical_bytes.map(human_bytes).unwrap_or_default();
        s.push_str(&format!(": {size} disk, {} stored, {:.1} s", human_bytes(d.bytes_stored), d.seconds));
    }
    if let Some(why) = &d.reason {
        s.push_str(&format!("{}{why}", if d.result == DiskResult::Archived { "; " } else { ": " }));
    }
    s
}

fn summary(r: &SyncReport) -> String {
    // A dry run says "would" for what a run changes; unchanged, skipped and volume-backed read the same.
    let (head, would) = if r.dry_run { ("sync --dry-run", "would be ") } else { ("sync", "") };
    let shard = r.shard.map(|k| format!(" --shard {k}")).unwrap_or_default();
    let others = if r.shard.is_some() { format!(" (and {} of other shards)", r.images_other_shards) } else { String::new() };
    let mut s = format!(
        "{head}{shard}: {} images{others}: {} {would}archived, {} unchanged, {} {would}metadata updated, {} skipped, {} volume-backed, {} failed; {} {would}deleted upstream\n  {} read, {} stored, {:.1} s\n",
        r.images,
        r.archived.len(),
        r.unchanged.len(),
        r.metadata_updated.len(),
        r.skipped.len(),
        r.volume_backed.len(),
        r.failed.len(),
        r.deleted_upstream.len(),
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_stored),
        r.seconds
    );
    if r.dry_run {
        for e in &r.archived {
            let size = e.logical_bytes.map(|b| format!(" ({})", human_bytes(b))).unwrap_or_default();
            let why = e.would.as_deref().unwrap_or("");
            s.push_str(&format!("  would archive {} ({}){size}: {}\n", e.name, e.id, why.strip_prefix("archive: ").unwrap_or(why)));
        }
        for e in &r.metadata_updated {
            let prev = e.previous.as_deref().map(short).unwrap_or("?");
            s.push_str(&format!("  would record new metadata of {} ({}), reusing the data of snapshot {prev}\n", e.name, e.id));
        }
    }
    for e in &r.skipped {
        s.push_str(&format!("  skipped {} ({}): {}\n", e.name, e.id, e.reason.as_deref().unwrap_or("")));
    }
    for e in &r.volume_backed {
        s.push_str(&format!("  volume-backed {} ({}): {}\n", e.name, e.id, e.reason.as_deref().unwrap_or("")));
    }
    for e in &r.failed {
        s.push_str(&format!("  FAILED {} ({}): {}\n", e.name, e.id, e.reason.as_deref().unwrap_or("")));
    }
    let disks = r.volume_backed_archived.len() + r.volume_backed_unchanged.len() + r.volume_backed_failed.len();
    if disks > 0 {
        s.push_str(&format!(
            "  volume-backed disks: {} {would}archived, {} unchanged, {} failed\n",
            r.volume_backed_archived.len(),
            r.volume_backed_unchanged.len(),
            r.volume_backed_failed.len()
        ));
    }
    if !r.volumes.is_empty() {
        s.push_str(&format!("  volumes: {} {would}archived, {} failed\n", r.volumes.len() - r.volumes_failed(), r.volumes_failed()));
    }
    for d in r.volume_backed_archived.iter().chain(&r.volumes).filter(|d| d.would.is_some()) {
        s.push_str(&format!("  would archive {}\n", d.describe()));
    }
    for d in r.volume_backed_failed.iter().chain(r.volumes.iter().filter(|d| d.result == DiskResult::Failed)) {
        s.push_str(&format!("  FAILED {}: {}\n", d.describe(), d.reason.as_deref().unwrap_or("")));
    }
    for d in &r.deleted_upstream {
        let would = if r.dry_run { "would record " } else { "" };
        s.push_str(&format!("  {would}deleted upstream {} ({}): last snapshot {}\n", d.name, d.id, short(&d.snapshot)));
    }
    s
}
