//! `imgarc unlock [--all]`: remove stale (or all) lock objects.

use super::Ctx;
use anyhow::Result;
use clap::Args;
use imgarc::repository::lock;

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones
    #[arg(long)]
    pub all: bool,
}

pub fn run(ctx: &Ctx, args: UnlockArgs) -> Result<()> {
    let repo = ctx.open_repo()?;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (key, info) in lock::list(&**repo.backend())? {
        if args.all || info.is_stale() {
            repo.backend().delete(&key)?;
            removed.push(key);
        } else {
            kept.push(format!("{key} ({} on {} pid {})", info.purpose, info.hostname, info.pid));
        }
    }
    ctx.emit(&serde_json::json!({"removed": removed, "kept": kept}), || {
        let mut s = format!("removed {} lock(s)\n", removed.len());
        for k in &kept {
            s.push_str(&format!("kept active lock {k}\n"));
        }
        s
    });
    Ok(())
}
