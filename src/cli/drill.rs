//! `imgarc drill [SNAPSHOT...] [--sample N] [--deep] [--boot …] [--to-glance …]`: prove that
//! snapshots restore (and boot); each result is stored in the repository (`drills/`).
//! Exit 0 when every drill passed, 3 when any failed, 1 when none could run.

use super::{AlreadyReported, Ctx, SomeItemsFailed};
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::drill::{choose, drill, DrillOptions, DrillReport};
use imgarc::index::Index;
use imgarc::repository::drill::{CheckStatus, DrillRecord};

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Snapshot ids or unique prefixes (8+ hex digits); default: the newest snapshot of each image
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub drill: DrillOptions,
}

pub fn run(ctx: &Ctx, args: DrillArgs) -> Result<()> {
    args.drill.validate().map_err(|e| super::UsageError(format!("{e:#}")))?;
    let repo = ctx.open_repo()?;
    // Refused before a lock is written: a write-only key cannot read what it would drill.
    repo.require_full_key("drill")?;
    // Shared, as for restore's readers plus the records it writes: a prune waits for the drill.
    let lock = repo.acquire_lock(false, "drill")?;
    repo.hold_lock(&lock);
    let mut index = Index::open(&repo).context("cannot bring the local index up to date")?;
    let rows = choose(&index, &args.snapshots, &args.drill)?;
    if rows.is_empty() {
        bail!("no snapshot to drill: the repository holds none that the selection matches");
    }
    let glance = if args.drill.to_glance { Some(ctx.glance(args.drill.to_cloud.as_deref())?) } else { None };
    let report =
        drill(&repo, &mut index, &rows, &args.drill, glance.as_ref(), &|name, bytes| ctx.out.bar(Some(bytes), &format!("drill {name}")))?;
    drop(lock);
    super::run_metrics::record(&report);
    let mut json = serde_json::to_value(&report)?;
    json["ok"] = serde_json::Value::Bool(report.passed == report.drills.len());
    for w in &report.warnings {
        if !ctx.out.json {
            eprintln!("warning: {w}");
        }
    }
    ctx.emit(&json, || prose(&report));
    if report.passed == report.drills.len() {
        Ok(())
    } else if report.failed == 0 {
        Err(AlreadyReported(format!("drill: none of {} drills could run (see each drill's error)", report.drills.len())).into())
    } else {
        Err(SomeItemsFailed(format!("drill: {} of {} drills failed", report.failed + report.not_run, report.drills.len())).into())
    }
}

fn prose(r: &DrillReport) -> String {
    let mut s = String::new();
    for d in &r.drills {
        s.push_str(&record_prose(d));
    }
    s.push_str(&format!(
        "{} drilled: {} passed, {} failed, {} could not run; {} recorded\n",
        r.drills.len(),
        r.passed,
        r.failed,
        r.not_run,
        r.records_stored
    ));
    s
}

fn record_prose(d: &DrillRecord) -> String {
    let verdict = if d.ok {
        "PASS"
    } else if d.checks.iter().any(|c| c.status == CheckStatus::Failed) {
        "FAIL"
    } else {
        "NOT RUN"
    };
    let image = d.image.as_deref().map(|i| format!(", image {i}")).unwrap_or_default();
    let mut s = format!("{verdict} {} ({}{image}) in {:.1} s\n", &d.snapshot[..16], d.name, d.seconds);
    for c in &d.checks {
        let mark = match c.status {
            CheckStatus::Passed => "ok",
            CheckStatus::Failed => "FAILED",
            CheckStatus::Unchecked => "unchecked",
            CheckStatus::Error => "not run",
        };
        s.push_str(&format!("  {:<16} {mark:<9} {}\n", c.check, c.detail.as_deref().unwrap_or("")));
    }
    if let (false, Some(tail)) = (d.ok, &d.console_tail) {
        s.push_str("  console (last lines):\n");
        let lines: Vec<&str> = tail.lines().collect();
        for l in &lines[lines.len().saturating_sub(15)..] {
            s.push_str(&format!("    | {l}\n"));
        }
    }
    s
}
