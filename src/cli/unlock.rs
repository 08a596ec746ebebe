//! `imgarc unlock [--all]`: remove stale (or all) lock objects (`imgarc::maintenance::unlock`).

use super::Ctx;
use anyhow::Result;
use imgarc::maintenance::{unlock, UnlockOptions};

pub fn run(ctx: &Ctx, opts: UnlockOptions) -> Result<()> {
    let repo = ctx.open_repo()?;
    let r = unlock(&repo, &opts)?;
    ctx.emit(&serde_json::to_value(&r)?, || {
        let mut s = format!("removed {} lock(s)\n", r.removed.len());
        if !r.released.is_empty() {
            s.push_str(&format!("released {} lock(s) these credentials may not delete (no host counts them now)\n", r.released.len()));
        }
        for k in &r.kept {
            s.push_str(&format!("kept active lock {k}\n"));
        }
        s
    });
    Ok(())
}
