//! `imgarc list` (alias `snapshots`): the snapshots in the repository the
//! selector (`imgarc::select`) picks.

use super::Ctx;
use anyhow::Result;
use clap::Args;
use imgarc::retention;
use imgarc::select::SnapshotSelector;
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only these snapshots (ids or unique prefixes of 8+ hex digits)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub select: SnapshotSelector,
}

pub fn run(ctx: &Ctx, args: ListArgs) -> Result<()> {
    // Refused before the repository is opened (and a password asked).
    args.select.validate()?;
    let (_repo, index) = ctx.open_without_references()?;
    let rows = args.select.select(&index, &args.snapshots)?;
    // Dated after now + the clock skew allowed: retention ignores these (see `retention`).
    let horizon = retention::horizon(chrono::Utc::now());
    let future: Vec<bool> = rows.iter().map(|r| retention::is_future(&r.time, horizon)).collect();
    let json: Vec<_> = rows
        .iter()
        .zip(&future)
        .map(|(r, future)| serde_json::json!({"id": r.id.to_hex(), "name": r.name, "time": r.time, "logical_bytes": r.logical_bytes, "stored_bytes_added": r.stored_bytes_added, "tags": r.tags, "future": future}))
        .collect();
    ctx.emit(&serde_json::Value::Array(json), || {
        let mut s = format!("{:<16}  {:<24}  {:>12}  {:>12}  {}\n", "ID", "TIME", "SIZE", "ADDED", "NAME [TAGS]");
        for (r, future) in rows.iter().zip(&future) {
            let tags = if r.tags.is_empty() { String::new() } else { format!(" [{}]", r.tags.join(",")) };
            let flag = if *future { "  (dated in the future: ignored by retention)" } else { "" };
            s.push_str(&format!(
                "{:<16}  {:<24}  {:>12}  {:>12}  {}{tags}{flag}\n",
                &r.id.to_hex()[..16],
                r.time,
                human_bytes(r.logical_bytes),
                human_bytes(r.stored_bytes_added),
                r.name
            ));
        }
        s
    });
    Ok(())
}
