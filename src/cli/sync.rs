//! `imgarc sync`: archive every matching Glance image the repository does not
//! hold yet (the nightly job; docs/nightly.md). The work is `imgarc::sync`; this
//! file holds the `sync` singleton lock for the run, logs
//! one timestamped line per image on stderr, and prints the summary (prose or
//! one JSON document) on stdout.

use super::{AlreadyReported, Ctx};
use anyhow::{Context, Result};
use imgarc::index::Index;
use imgarc::sync::{ImageEntry, ImageResult, SyncFlags, SyncReport};
use imgarc::util::human_bytes;

pub fn run(ctx: &Ctx, flags: SyncFlags) -> Result<()> {
    flags.digests()?;
    let repo = ctx.open_repo()?;
    // One sync per repository at a time; the lock stays held (and refreshed) until the run ends.
    // Lock first, then catch up, as `archive` does: no prune mark slips in between.
    let lock = repo.acquire_singleton_lock("sync").context("sync cannot start")?;
    repo.hold_lock(&lock);
    let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
    let glance = ctx.glance(None)?;
    let opts = flags.resolve(&glance, ctx.global.os_cloud.clone(), Ctx::limiter(&ctx.global.limit_download)?)?;
    let quiet = ctx.out.quiet;
    let log = |e: &ImageEntry| {
        if !quiet || e.result == ImageResult::Failed {
            eprintln!("{}", log_line(e));
        }
    };
    let report = imgarc::sync::sync(&repo, &mut index, &glance, &opts, &log)?;
    if !quiet {
        for d in &report.deleted_upstream {
            eprintln!(
                "{} deleted upstream {} ({}): last snapshot {} ({})",
                imgarc::util::now_rfc3339(),
                d.name,
                d.id,
                short(&d.snapshot),
                d.evidence
            );
        }
        for d in &report.reappeared {
            eprintln!("{} reappeared {} ({}): deleted-upstream record withdrawn", imgarc::util::now_rfc3339(), d.name, d.id);
        }
    }
    // report.warnings were logged (stderr) by the library as they happened.
    ctx.emit(&serde_json::to_value(&report)?, || summary(&report));
    if report.ok {
        Ok(())
    } else {
        Err(AlreadyReported(format!("sync: {} of {} images failed", report.failed.len(), report.images)).into())
    }
}

fn short(snapshot: &str) -> &str {
    &snapshot[..snapshot.len().min(16)]
}

/// `<RFC 3339 time> <result> <name> (<id>)[ snapshot <id>]: <details>` — one line per image, for journald and cron mail.
fn log_line(e: &ImageEntry) -> String {
    let what = match e.result {
        ImageResult::Archived => "archived",
        ImageResult::Unchanged => "unchanged",
        ImageResult::MetadataUpdated => "metadata-updated",
        ImageResult::Skipped => "skipped",
        ImageResult::VolumeBacked => "volume-backed",
        ImageResult::Failed => "failed",
    };
    let mut s = format!("{} {what} {} ({})", imgarc::util::now_rfc3339(), e.name, e.id);
    if let Some(snap) = &e.snapshot {
        s.push_str(&format!(" snapshot {}", short(snap)));
    }
    match e.result {
        ImageResult::Archived => {
            s.push_str(&format!(": {} read, {} stored, {:.1} s", human_bytes(e.bytes_read), human_bytes(e.bytes_stored), e.seconds))
        }
        ImageResult::MetadataUpdated => {
            s.push_str(&format!(": new metadata, data of {} reused", e.previous.as_deref().map(short).unwrap_or("?")))
        }
        ImageResult::Skipped | ImageResult::VolumeBacked | ImageResult::Failed => s.push_str(&format!(": {}", e.reason.as_deref().unwrap_or(""))),
        ImageResult::Unchanged => {}
    }
    s
}

fn summary(r: &SyncReport) -> String {
    let mut s = format!(
        "sync: {} images: {} archived, {} unchanged, {} metadata updated, {} skipped, {} failed; {} deleted upstream\n  {} read, {} stored, {:.1} s\n",
        r.images,
        r.archived.len(),
        r.unchanged.len(),
        r.metadata_updated.len(),
        r.skipped.len(),
        r.failed.len(),
        r.deleted_upstream.len(),
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_stored),
        r.seconds
    );
    for e in &r.skipped {
        s.push_str(&format!("  skipped {} ({}): {}\n", e.name, e.id, e.reason.as_deref().unwrap_or("")));
    }
    for e in &r.failed {
        s.push_str(&format!("  FAILED {} ({}): {}\n", e.name, e.id, e.reason.as_deref().unwrap_or("")));
    }
    for d in &r.deleted_upstream {
        s.push_str(&format!("  deleted upstream {} ({}): last snapshot {}\n", d.name, d.id, short(&d.snapshot)));
    }
    s
}
