//! `imgarc cleanup [--dry-run]`: delete the scratch resources (Glance images, Cinder volumes
//! and volume snapshots) that killed runs left in the cloud ([`imgarc::scratch::cleanup`]), and
//! the same cleanup at the start of a run that makes scratch resources ([`before_run`]).

use super::{Ctx, SomeItemsFailed};
use anyhow::Result;
use clap::Args;
use imgarc::openstack::cinder::CinderClient;
use imgarc::openstack::glance::GlanceClient;
use imgarc::repository::Repository;
use imgarc::scratch::{cleanup, CleanupEntry, CleanupOptions, CleanupReport};

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Show what would be deleted (the resources found by each record's name); delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(ctx: &Ctx, args: CleanupArgs) -> Result<()> {
    let repo = ctx.open_repo()?;
    // Records are deleted under a lock (a shared one: runs that make scratch resources hold
    // shared locks too, and their records are told apart by lease). A dry run deletes nothing.
    let lock = if args.dry_run { None } else { Some(repo.acquire_lock(false, "cleanup")?) };
    if let Some(l) = &lock {
        repo.hold_lock(l);
    }
    let glance = ctx.glance(None)?;
    // Without Cinder (--glance-url, or a cloud with no block-storage endpoint) the volume and
    // snapshot records are reported as another cloud's: this run cannot see them.
    let (cinder, no_cinder) = match ctx.cinder_for(&glance) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let report = cleanup(&repo, &glance, cinder.as_ref(), &CleanupOptions { dry_run: args.dry_run })?;
    let mut json = serde_json::to_value(&report)?;
    if let Some(why) = &no_cinder {
        json["no_cinder"] = why.clone().into();
    }
    ctx.emit(&json, || prose(&report, no_cinder.as_deref()));
    if !report.ok {
        return Err(SomeItemsFailed(format!(
            "cleanup: {} scratch record(s) failed, {} refused",
            report.failed.len(),
            report.refused.len()
        ))
        .into());
    }
    Ok(())
}

fn prose(r: &CleanupReport, no_cinder: Option<&str>) -> String {
    let mut s = format!(
        "cleanup{}: {} scratch record(s); {} {}, {} in progress, {} of another cloud, {} failed, {} refused\n",
        if r.dry_run { " --dry-run" } else { "" },
        r.records,
        r.deleted.len(),
        if r.dry_run { "would be deleted" } else { "deleted" },
        r.in_progress.len(),
        r.other_cloud.len(),
        r.failed.len(),
        r.refused.len()
    );
    let line = |s: &mut String, label: &str, e: &CleanupEntry| {
        let ids = if e.ids.is_empty() { "none found".to_string() } else { e.ids.join(", ") };
        s.push_str(&format!("  {label} {} {} ({}; host {}, {}): {ids}", e.kind.name(), e.name, e.purpose, e.host, e.created));
        if let Some(reason) = &e.reason {
            s.push_str(&format!(" — {reason}"));
        }
        s.push('\n');
    };
    for e in &r.deleted {
        line(&mut s, if r.dry_run { "would delete" } else { "deleted" }, e);
    }
    for e in &r.in_progress {
        line(&mut s, "kept (run alive)", e);
    }
    for e in &r.other_cloud {
        line(&mut s, "kept (other cloud)", e);
    }
    for e in &r.failed {
        line(&mut s, "FAILED", e);
    }
    for e in &r.refused {
        line(&mut s, "REFUSED", e);
    }
    if let Some(why) = no_cinder {
        s.push_str(&format!("  no Cinder endpoint, volume and snapshot records left alone: {why}\n"));
    }
    s
}

/// The cleanup at the start of a run that makes scratch resources (format-spec/scratch.md):
/// never fails the run; what it did and could not do is logged.
pub(super) fn before_run(repo: &Repository, glance: &GlanceClient, cinder: Option<&CinderClient>) {
    match cleanup(repo, glance, cinder, &CleanupOptions::default()) {
        Ok(r) => {
            for e in &r.deleted {
                tracing::info!("deleted the scratch {} {} a dead run left ({})", e.kind.name(), e.name, e.purpose);
            }
            for e in r.failed.iter().chain(&r.refused) {
                tracing::warn!("scratch record {}: {}", e.record, e.reason.as_deref().unwrap_or(""));
            }
        }
        Err(e) => tracing::warn!("cannot clean up the scratch resources of dead runs: {e:#}"),
    }
}
