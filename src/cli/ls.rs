//! `imgarc ls SNAPSHOT [PATH] [-l] [--recursive]`: the volumes of a snapshot's guest disk, then its files.

use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::files::ls::{ls, LsEntry, LsOptions, LsReport};
use imgarc::files::GuestTree;
use imgarc::ids::Id;
use imgarc::index::Index;
use imgarc::repository::snapshot::Snapshot;
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// pN/... on a partitioned disk (pN/VG/LV/... for an LVM volume), /... on a bare filesystem; default: the top
    #[arg(default_value = "")]
    pub path: String,
    /// Long listing: mode, links, owner, group, size, mtime
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Everything below PATH
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// The snapshot a guest file verb reads (a full key is needed: the caller checks).
pub(super) fn guest_snapshot(index: &Index, prefix: &str) -> Result<(Id, Snapshot)> {
    let id = index.resolve_snapshot(prefix)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    Ok((id, snap))
}

/// Warnings of a guest file verb on standard error (prose mode; `--json` carries them).
pub(super) fn print_warnings(ctx: &Ctx, warnings: &[String]) {
    if !ctx.out.json {
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
}

pub fn run(ctx: &Ctx, args: LsArgs) -> Result<()> {
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("ls")?;
    let (id, snap) = guest_snapshot(&index, &args.snapshot)?;
    let tree = GuestTree::open(&repo, &index, &snap).with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    let report = ls(&tree, &LsOptions { path: args.path.clone(), recursive: args.recursive })
        .with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    print_warnings(ctx, &report.warnings);
    ctx.emit(&serde_json::to_value(&report)?, || prose(&report, args.long));
    Ok(())
}

fn prose(r: &LsReport, long: bool) -> String {
    let mut s = String::new();
    for v in &r.volumes {
        let what = match (&v.filesystem, &v.error) {
            (Some(fs), _) => format!("{fs}{}", v.label.as_ref().map(|l| format!(" label {l:?}")).unwrap_or_default()),
            (None, Some(e)) => format!("unreadable: {e}"),
            (None, None) => "-".into(),
        };
        s.push_str(&format!("{}/\t{}\t{}\t{what}\n", v.name, human_bytes(v.size), v.description));
    }
    let width = r.entries.iter().map(|e| e.size.to_string().len()).max().unwrap_or(1);
    for e in &r.entries {
        if long {
            s.push_str(&long_line(e, width));
        } else {
            s.push_str(&e.path);
        }
        s.push('\n');
    }
    s
}

fn long_line(e: &LsEntry, width: usize) -> String {
    let size = match e.rdev {
        Some((major, minor)) => format!("{major}, {minor}"),
        None => e.size.to_string(),
    };
    let time = chrono::DateTime::from_timestamp(e.mtime_secs, 0).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default();
    let mut line = format!("{} {:>3} {:>5} {:>5} {:>width$} {time} {}", e.mode_string, e.nlink, e.uid, e.gid, size, e.path);
    if let Some(t) = &e.link_target {
        line.push_str(&format!(" -> {t}"));
    }
    line
}
