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
use imgarc::sync::{ImageEntry, ImageResult, SyncFlags, SyncReport};
use imgarc::util::human_bytes;

pub fn run(ctx: &Ctx, flags: SyncFlags) -> Result<()> {
    flags.digests()?;
    let repo = ctx.open_repo()?;
    // One sync per repository at a time; the lock stays held (and refreshed) until the run ends,
    // when `_lock` is dropped. Lock first, then catch up, as `archive` does: no prune mark slips in between.
    let _lock = match flags.dry_run {
        true => None,
        false => {
            let lock = repo.acquire_singleton_lock("sync").context("sync cannot start")?;
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
    let report = imgarc::sync::sync(&repo, &mut index, &glance, &opts, &log)?;
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
    ctx.emit(&serde_json::to_value(&report)?, || summary(&report));
    if report.ok {
        Ok(())
    } else {
        Err(SomeItemsFailed(format!("sync: {} of {} images failed", report.failed.len(), report.images)).into())
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

fn summary(r: &SyncReport) -> String {
    // A dry run says "would" for what a run changes; unchanged, skipped and volume-backed read the same.
    let (head, would) = if r.dry_run { ("sync --dry-run", "would be ") } else { ("sync", "") };
    let mut s = format!(
        "{head}: {} images: {} {would}archived, {} unchanged, {} {would}metadata updated, {} skipped, {} volume-backed, {} failed; {} {would}deleted upstream\n  {} read, {} stored, {:.1} s\n",
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
    for d in &r.deleted_upstream {
        let would = if r.dry_run { "would record " } else { "" };
        s.push_str(&format!("  {would}deleted upstream {} ({}): last snapshot {}\n", d.name, d.id, short(&d.snapshot)));
    }
    s
}
