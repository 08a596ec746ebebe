//! `imgarc index rebuild`: regenerate the local index from the repository;
//! `imgarc index compact`: merge the repository's small index objects.

use super::Ctx;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imgarc::index::compact::{compact, CompactOptions};
use imgarc::index::Index;

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub action: IndexAction,
}

#[derive(Subcommand, Debug)]
pub enum IndexAction {
    /// Rebuild the local index from the repository alone
    Rebuild,
    /// Merge many small index objects into few large ones (a new host catches up faster)
    Compact(CompactOptions),
}

pub fn run(ctx: &Ctx, args: IndexArgs) -> Result<()> {
    match args.action {
        IndexAction::Rebuild => {
            let repo = ctx.open_repo()?;
            let lock = repo.acquire_lock(true, "index rebuild")?;
            repo.hold_lock(&lock);
            let (index, report) = imgarc::index::rebuild(&repo)?;
            let mut json = serde_json::to_value(&report)?;
            json["path"] = serde_json::Value::String(index.path().display().to_string());
            ctx.emit(&json, || {
                let mut s = format!(
                    "index rebuilt at {}: {} index objects, {} packs ({} adopted from pack trailers), {} blobs, {} snapshots\n",
                    index.path().display(),
                    report.index_objects,
                    report.packs,
                    report.packs_adopted,
                    report.blobs,
                    report.snapshots
                );
                for p in &report.packs_unreadable {
                    s.push_str(&format!("warning: unreadable pack {p}\n"));
                }
                for snap in &report.snapshots_unreadable {
                    s.push_str(&format!("warning: unreadable snapshot {snap}\n"));
                }
                s
            });
            Ok(())
        }
        IndexAction::Compact(mut opts) => {
            let repo = ctx.open_repo()?;
            repo.require_delete_permission("index compact")?;
            // Prune's singleton: prune rewrites and deletes index objects too.
            let lock = repo.acquire_singleton_lock("prune")?;
            repo.hold_lock(&lock);
            let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
            opts.now = chrono::Utc::now();
            let r = compact(&repo, &mut index, &opts)?;
            ctx.emit(&serde_json::to_value(&r)?, || {
                let would = if r.dry_run { "would be " } else { "" };
                let mut s = format!(
                    "{} index object(s): {} pack(s) merged into {} {would}written, {} {would}deleted, {} awaiting the grace period\n",
                    r.index_objects, r.packs_merged, r.objects_written, r.objects_deleted, r.objects_awaiting_grace
                );
                for w in &r.warnings {
                    s.push_str(&format!("warning: {w}\n"));
                }
                s
            });
            Ok(())
        }
    }
}
