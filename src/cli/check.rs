//! `imgarc check [--read-data | --read-data-subset N%]`.

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::check::{check, CheckFlags};
use imgarc::index::Index;

pub fn run(ctx: &Ctx, flags: CheckFlags) -> Result<()> {
    let opts = flags.options()?;
    let repo = ctx.open_repo()?;
    // Lock first, then catch up: what the cache sees cannot change under the check.
    let _lock = repo.acquire_lock(true, "check")?;
    let mut index = Index::open(&repo).context("cannot bring the local index up to date")?;
    let pb = ctx.out.bar(Some(0), "check");
    let report = check(&repo, &mut index, &opts, &pb)?;
    drop(pb);
    super::run_metrics::record(&report);
    ctx.emit(&serde_json::to_value(&report)?, || {
        let mut s = format!(
            "checked {} snapshots, {} packs ({} read, {} blobs verified)\n",
            report.snapshots_checked, report.packs_checked, report.packs_read, report.blobs_verified
        );
        if let Some(i) = &report.immutability {
            s.push_str(&format!("{}\n", i.line()));
        }
        s.push_str(&imgarc::object_lock::snapshot_dates_prose(&report.snapshots_retained));
        for w in &report.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        for e in &report.errors {
            s.push_str(&format!("error: {e}\n"));
        }
        s.push_str(if report.ok { "no errors found\n" } else { "repository has errors\n" });
        s
    });
    if !report.ok {
        return Err(super::AlreadyReported(format!("check found {} error(s)", report.errors.len())).into());
    }
    Ok(())
}
