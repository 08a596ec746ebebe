//! `imgarc check [--read-data | --read-data-subset N%]`.

use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::check::{check, CheckOptions};
use imgarc::index::Index;
use imgarc::repository::lock::Lock;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify every chunk
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random subset of packs, e.g. 10%
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

pub fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 =
        s.trim().trim_end_matches('%').parse().with_context(|| format!("--read-data-subset {s:?}: expected a percentage like 10%"))?;
    if !(v > 0.0 && v <= 100.0) {
        bail!("--read-data-subset {s:?}: must be more than 0% and at most 100%");
    }
    Ok(v / 100.0)
}

pub fn run(ctx: &Ctx, args: CheckArgs) -> Result<()> {
    let fraction = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => parse_percent(s)?,
        (None, true) => 1.0,
        (None, false) => 0.0,
    };
    let repo = ctx.open_repo()?;
    // Lock first, then catch up: what the cache sees cannot change under the check.
    let _lock = Lock::acquire(repo.backend().clone(), true, "check")?;
    let mut index = Index::open(&repo).context("cannot bring the local index up to date")?;
    let pb = ctx.out.bar(Some(0), "check");
    let report = check(&repo, &mut index, &CheckOptions { read_data_fraction: fraction }, &pb)?;
    drop(pb);
    ctx.emit(&serde_json::to_value(&report)?, || {
        let mut s = format!(
            "checked {} snapshots, {} packs ({} read, {} blobs verified)\n",
            report.snapshots_checked, report.packs_checked, report.packs_read, report.blobs_verified
        );
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
