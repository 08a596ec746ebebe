//! `imgarc extract SNAPSHOT PATH... -o DIR`: guest files and trees into a local directory.

use super::ls::{guest_snapshot, print_warnings};
use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::files::extract::{extract, ExtractOptions};
use imgarc::files::GuestTree;
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// Guest paths (pN/... or /...); each lands in DIR under its own name, a filesystem root as DIR itself
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Output directory (created if missing)
    #[arg(short, long, value_name = "DIR")]
    pub output: std::path::PathBuf,
    /// Replace existing files in DIR (directories are merged into, never replaced by a file)
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(ctx: &Ctx, args: ExtractArgs) -> Result<()> {
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("extract")?;
    let (id, snap) = guest_snapshot(&index, &args.snapshot)?;
    let tree = GuestTree::open(&repo, &index, &snap).with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    let opts = ExtractOptions { paths: args.paths.clone(), output: args.output.clone(), overwrite: args.overwrite };
    let r = extract(&tree, &opts).with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
    print_warnings(ctx, &r.warnings);
    ctx.emit(&serde_json::to_value(&r)?, || {
        format!(
            "extracted into {}: {} files ({}), {} directories, {} symlinks, {} hard links, {} fifos, {} devices, {} skipped; read {} from the repository\n",
            r.output,
            r.files,
            human_bytes(r.bytes_written),
            r.directories,
            r.symlinks,
            r.hard_links,
            r.fifos,
            r.devices,
            r.skipped,
            human_bytes(r.bytes_read)
        )
    });
    Ok(())
}
