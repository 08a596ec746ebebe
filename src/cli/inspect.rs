//! `imgarc inspect SOURCE|SNAPSHOT`: prints what `imgarc::inspect` finds, one `key: value` a line.

use super::Ctx;
use anyhow::Result;
use imgarc::inspect::{inspect, prose, InspectOptions};

pub fn run(ctx: &Ctx, opts: InspectOptions) -> Result<()> {
    let json = inspect(&opts, &|| {
        let (repo, index) = ctx.open()?;
        repo.require_full_key("inspect of a snapshot")?;
        Ok(index)
    })?;
    ctx.emit(&json, || prose(&json));
    Ok(())
}
