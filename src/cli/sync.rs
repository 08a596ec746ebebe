//! `imgarc sync`: archive every matching Glance image the repository does not
//! hold yet (the nightly job; docs/nightly.md). The work is `imgarc::sync`; this
//! file resolves the scope, holds the `sync` singleton lock for the run, logs
//! one timestamped line per image on stderr, and prints the summary (prose or
//! one JSON document) on stdout.

use super::{AlreadyReported, Ctx};
use anyhow::{Context, Result};
use clap::Args;
use imgarc::index::Index;
use imgarc::repository::lock::Lock;
use imgarc::sync::{Filters, ImageEntry, ImageResult, Scope, SyncOptions, SyncReport};
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Every project's images (needs an admin role); default: the images owned by the credentials' project
    #[arg(long, conflicts_with = "project")]
    pub all_projects: bool,
    /// Only the images owned by this project (id or name)
    #[arg(long)]
    pub project: Option<String>,
    /// Only images with KEY=VALUE: name=GLOB, tag=T, visibility=V, disk_format=F (repeatable; the same key ORs, different keys AND)
    #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = imgarc::sync::parse_filter)]
    pub filters: Vec<imgarc::sync::FilterTerm>,
    /// Leave out images with KEY=VALUE (same keys as --filter; repeatable)
    #[arg(long = "exclude", value_name = "KEY=VALUE", value_parser = imgarc::sync::parse_filter)]
    pub excludes: Vec<imgarc::sync::FilterTerm>,
    /// Images downloaded and archived at the same time (images archived together cannot dedup against each other)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Extra whole-file digests to compute and record, e.g. sha256 (as archive --digest)
    #[arg(long, value_delimiter = ',')]
    pub digest: Vec<String>,
    #[command(flatten)]
    pub spill: imgarc::archive::SpillOptions,
}

pub fn run(ctx: &Ctx, args: SyncArgs) -> Result<()> {
    let digests = imgarc::digest::parse_list(&args.digest.join(","))?;
    let repo = ctx.open_repo()?;
    // One sync per repository at a time; the lock stays held (and refreshed) until the run ends.
    // Lock first, then catch up, as `archive` does: no prune mark slips in between.
    let lock = Lock::acquire_singleton(repo.backend().clone(), "sync").context("sync cannot start")?;
    repo.hold_lock(&lock);
    let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
    let glance = ctx.glance(None)?;
    let scope = resolve_scope(&glance, &args)?;
    let opts = SyncOptions {
        scope,
        filters: Filters::new(args.filters, args.excludes),
        jobs: args.jobs as usize,
        cloud: ctx.global.os_cloud.clone(),
        limit: Ctx::limiter(&ctx.global.limit_download)?,
        digests,
        qcow2_policy: args.spill.qcow2_policy()?,
    };
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

/// `--all-projects`, `--project P` (an id, or a name looked up in Keystone),
/// else the credentials' own project; with `--glance-url` and no Keystone
/// there is no project, so every listed image is in scope.
fn resolve_scope(glance: &imgarc::openstack::glance::GlanceClient, args: &SyncArgs) -> Result<Scope> {
    if args.all_projects {
        return Ok(Scope::AllProjects);
    }
    let session = glance.session();
    match &args.project {
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
        ImageResult::Skipped | ImageResult::Failed => s.push_str(&format!(": {}", e.reason.as_deref().unwrap_or(""))),
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
