//! `imgarc show SNAPSHOT`: everything a snapshot records.

use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
}

pub fn run(ctx: &Ctx, args: ShowArgs) -> Result<()> {
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("show")?;
    let id = index.resolve_snapshot(&args.snapshot)?;
    let mut snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    // Snapshots archived before store locations were dropped may still hold them.
    imgarc::openstack::glance::redact_store_locations(&mut snap.metadata);
    let mut json = serde_json::to_value(&snap)?;
    json["id"] = serde_json::Value::String(id.to_hex());
    ctx.emit(&json, || format!("snapshot {}\n{}\n", id.to_hex(), serde_json::to_string_pretty(&snap).unwrap_or_default()));
    Ok(())
}
