//! `imgarc diff SNAPSHOT_A SNAPSHOT_B [PATH]`: guest files added (`+`), removed (`-`) and changed (`M`).

use super::ls::{guest_snapshot, print_warnings};
use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::files::diff::{diff, DiffOptions};
use imgarc::files::GuestTree;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (id or unique prefix)
    pub snapshot_a: String,
    /// The newer snapshot
    pub snapshot_b: String,
    /// Only below this guest path (pN/... or /...)
    #[arg(default_value = "")]
    pub path: String,
}

pub fn run(ctx: &Ctx, args: DiffArgs) -> Result<()> {
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("diff")?;
    let (id_a, snap_a) = guest_snapshot(&index, &args.snapshot_a)?;
    let (id_b, snap_b) = guest_snapshot(&index, &args.snapshot_b)?;
    let a = GuestTree::open(&repo, &index, &snap_a).with_context(|| format!("snapshot {} ({})", id_a.short(), snap_a.name))?;
    let b = GuestTree::open(&repo, &index, &snap_b).with_context(|| format!("snapshot {} ({})", id_b.short(), snap_b.name))?;
    let r = diff(&a, &b, &DiffOptions { path: args.path.clone() })
        .with_context(|| format!("comparing snapshots {} and {}", id_a.short(), id_b.short()))?;
    print_warnings(ctx, &r.warnings);
    ctx.emit(&serde_json::to_value(&r)?, || r.lines().into_iter().map(|l| l + "\n").collect());
    Ok(())
}
