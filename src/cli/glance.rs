//! `imgarc glance list`: a cloud's images, and when each was last archived here.

use super::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};
use imgarc::repository::snapshot::Source;
use imgarc::util::human_bytes;
use std::collections::HashMap;

#[derive(Args, Debug)]
pub struct GlanceArgs {
    #[command(subcommand)]
    pub action: GlanceAction,
}

#[derive(Subcommand, Debug)]
pub enum GlanceAction {
    /// List the cloud's images with size, format, status and their latest archive
    List,
}

pub fn run(ctx: &Ctx, args: GlanceArgs) -> Result<()> {
    match args.action {
        GlanceAction::List => list(ctx),
    }
}

fn list(ctx: &Ctx) -> Result<()> {
    let glance = ctx.glance(None)?;
    let images = glance.list()?;
    // Latest snapshot per Glance image id; an absent repository just means "not archived".
    let mut archived: HashMap<String, (String, String)> = HashMap::new();
    if let Ok((_repo, index)) = ctx.open() {
        for row in index.snapshot_rows()? {
            if let Some(snap) = index.snapshot(&row.id)? {
                if let Source::Glance { image_id, .. } = &snap.source {
                    let e = archived.entry(image_id.clone()).or_insert((String::new(), String::new()));
                    if snap.time > e.0 {
                        *e = (snap.time.clone(), row.id.to_hex());
                    }
                }
            }
        }
    }
    let rows: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let a = archived.get(&i.id);
            serde_json::json!({
                "id": i.id, "name": i.name, "status": i.status, "disk_format": i.disk_format, "size": i.size,
                "updated_at": i.updated_at, "archived": a.is_some(), "archived_at": a.map(|x| x.0.clone()),
                "snapshot": a.map(|x| x.1.clone()),
            })
        })
        .collect();
    ctx.emit(&serde_json::Value::Array(rows), || {
        let mut s = format!("{:<36}  {:<24}  {:>10}  {:<6}  {:<10}  {}\n", "ID", "NAME", "SIZE", "FORMAT", "STATUS", "ARCHIVED");
        for i in &images {
            s.push_str(&format!(
                "{:<36}  {:<24}  {:>10}  {:<6}  {:<10}  {}\n",
                i.id,
                i.name.as_deref().unwrap_or(""),
                i.size.map(human_bytes).unwrap_or_default(),
                i.disk_format.as_deref().unwrap_or(""),
                i.status,
                archived.get(&i.id).map_or("no".to_string(), |a| a.0.clone())
            ));
        }
        s
    });
    Ok(())
}
