//! `imgarc index rebuild`: regenerate the local index from the repository.

use super::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub action: IndexAction,
}

#[derive(Subcommand, Debug)]
pub enum IndexAction {
    /// Rebuild the local index from the repository alone
    Rebuild,
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
    }
}
