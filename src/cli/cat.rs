//! `imgarc cat SNAPSHOT PATH`: one guest file to standard output (`--json`: the report on standard error).

use super::ls::guest_snapshot;
use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::files::cat::{cat, CatOptions};
use imgarc::files::GuestTree;

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// pN/... on a partitioned disk, /... on a bare filesystem (a symlink is followed)
    pub path: String,
}

pub fn run(ctx: &Ctx, args: CatArgs) -> Result<()> {
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("cat")?;
    let (id, snap) = guest_snapshot(&index, &args.snapshot)?;
    let tree = GuestTree::open(&repo, &index, &snap).with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let report = cat(&tree, &CatOptions { path: args.path.clone() }, &mut out)
        .with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    drop(out);
    // Standard output carries the file: the report goes to standard error, as `restore -o -` does.
    if ctx.out.json {
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}
