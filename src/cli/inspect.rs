//! `imgarc inspect SOURCE|SNAPSHOT`: prints what `imgarc::inspect` finds, one `key: value` a line.

use super::Ctx;
use anyhow::Result;
use imgarc::inspect::{inspect, InspectOptions};

pub fn run(ctx: &Ctx, opts: InspectOptions) -> Result<()> {
    let json = inspect(&opts, &|| {
        let (repo, index) = ctx.open()?;
        repo.require_full_key("inspect of a snapshot")?;
        Ok(index)
    })?;
    ctx.emit(&json, || {
        let mut s = String::new();
        if let Some(obj) = json.as_object() {
            for (k, v) in obj {
                if !v.is_null() {
                    s.push_str(&format!("{k:>28}: {}\n", v.to_string().trim_matches('"')));
                }
            }
        }
        s
    });
    Ok(())
}
