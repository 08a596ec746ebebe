//! `imgarc forget`: removes snapshots by retention policy or by id (the work
//! is `imgarc::forget`), and says what it keeps and why.

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::forget::{forget, ForgetOptions, ForgetReport};
use imgarc::index::Index;

pub fn run(ctx: &Ctx, opts: ForgetOptions) -> Result<()> {
    if opts.select.latest.is_some() {
        // A usage error (exit 2, clap's form), not a failed forget: nothing was looked at.
        use clap::CommandFactory;
        let mut cli = super::Cli::command();
        cli.build();
        let forget = cli.find_subcommand_mut("forget").expect("forget is a subcommand");
        forget
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--latest is not a selection forget takes (the policy would see only the newest N); keep the newest N with --keep-last N",
            )
            .exit();
    }
    // Refused before the repository is opened.
    opts.validate()?;
    let repo = ctx.open_repo()?;
    // Before the lock, so that a host that may not delete refuses without writing one.
    repo.require_delete_permission("forget")?;
    let lock = if opts.dry_run { None } else { Some(repo.acquire_lock(false, "forget")?) };
    if let Some(l) = &lock {
        repo.hold_lock(l);
    }
    let mut index = Index::open(&repo).context("cannot bring the local index up to date")?;
    let report = forget(&repo, &mut index, &opts)?;
    super::run_metrics::record(&report);
    ctx.emit(&serde_json::to_value(&report)?, || prose(&report));
    Ok(())
}

fn prose(r: &ForgetReport) -> String {
    let readable = || r.keep.iter().chain(&r.remove).filter(|e| !e.unreadable());
    let mut groups: Vec<&str> = readable().filter_map(|e| e.group.as_deref()).collect();
    groups.sort();
    groups.dedup();
    let short = |id: &str| id[..16].to_string();
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut s = String::new();
    for g in groups {
        let k: Vec<_> = r.keep.iter().filter(|e| e.group.as_deref() == Some(g)).collect();
        let rm: Vec<_> = r.remove.iter().filter(|e| e.group.as_deref() == Some(g)).collect();
        s.push_str(&format!("{g}: keep {}, remove {}\n", k.len(), rm.len()));
        for e in k {
            s.push_str(&format!("  keep    {}  {}  {}  ({})\n", short(&e.id), field(&e.time), field(&e.name), e.reasons.join(", ")));
        }
        for e in rm {
            s.push_str(&format!("  remove  {}  {}  {}\n", short(&e.id), field(&e.time), field(&e.name)));
            if let Some(until) = &e.retained_until {
                s.push_str(&format!("          object-locked until {until}: hidden now, deletable by prune after that date\n"));
            }
        }
    }
    for e in r.remove.iter().filter(|e| e.unreadable()) {
        s.push_str(&format!("  remove  {}  (unreadable)\n", short(&e.id)));
    }
    if r.dry_run {
        s.push_str(&format!("dry run: {} snapshot(s) would be removed\n", r.remove.len()));
    } else {
        s.push_str(&format!("removed {} snapshot(s); run `imgarc prune` to reclaim their space\n", r.removed));
    }
    if let Some(last) = r.remove.iter().filter_map(|e| e.retained_until.as_deref()).max() {
        s.push_str(&format!(
            "object lock: the removed snapshots cannot be deleted from the bucket before {last}; prune deletes them and their data by version id after their dates\n"
        ));
    }
    s
}
