//! `imgarc glance list`: a cloud's images, and when each was last archived here.

use super::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};
use imgarc::images::list_images;
use imgarc::util::human_bytes;

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
    // An absent repository just means "not archived".
    let opened = ctx.open().ok();
    let images = list_images(&glance, opened.as_ref().map(|(_repo, index)| index))?;
    ctx.emit(&serde_json::to_value(&images)?, || {
        let mut s = format!("{:<36}  {:<24}  {:>10}  {:<6}  {:<10}  {}\n", "ID", "NAME", "SIZE", "FORMAT", "STATUS", "ARCHIVED");
        for i in &images {
            s.push_str(&format!(
                "{:<36}  {:<24}  {:>10}  {:<6}  {:<10}  {}\n",
                i.id,
                i.name.as_deref().unwrap_or(""),
                i.size.map(human_bytes).unwrap_or_default(),
                i.disk_format.as_deref().unwrap_or(""),
                i.status,
                i.archived_at.clone().unwrap_or_else(|| "no".to_string())
            ));
        }
        s
    });
    Ok(())
}
