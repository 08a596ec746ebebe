//! `imgarc prune`: deletes what earlier prunes marked (after the grace
//! period), marks what no snapshot needs now, and reports the space.

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::index::Index;
use imgarc::prune::{prune, PruneOptions};
use imgarc::util::human_bytes;

pub fn run(ctx: &Ctx, mut opts: PruneOptions) -> Result<()> {
    let repo = ctx.open_repo()?;
    // Before the lock, so that a host that may not delete refuses without writing one.
    repo.require_delete_permission("prune")?;
    // Lock first, then catch up, so the index sees every mark and snapshot written before us.
    let lock = repo.acquire_singleton_lock("prune")?;
    repo.hold_lock(&lock);
    let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
    // The clock starts once the lock is held and the index caught up.
    opts.now = chrono::Utc::now();
    let r = prune(&repo, &mut index, &opts)?;
    super::run_metrics::record(&r);
    ctx.emit(&serde_json::to_value(&r)?, || {
        let would = if r.dry_run { "would be " } else { "" };
        let mut s = format!(
            "deleted: {} pack(s), {} {would}freed ({} rescued: a snapshot needs them)\n",
            r.packs_deleted,
            human_bytes(r.bytes_freed),
            r.packs_rescued
        );
        s.push_str(&format!(
            "marked:  {} pack(s), {} ({} repacked: {} copied into {} new pack(s))\n",
            r.packs_marked,
            human_bytes(r.bytes_marked),
            r.packs_repacked,
            human_bytes(r.bytes_repacked),
            r.packs_written
        ));
        s.push_str(&format!(
            "awaiting the grace period: {}{}\n",
            human_bytes(r.bytes_awaiting_grace),
            r.next_sweep.as_ref().map(|t| format!(" (deletable by a prune after {t})")).unwrap_or_default()
        ));
        if r.unreferenced_bytes_kept > 0 {
            s.push_str(&format!(
                "left in place: {} unreferenced in packs mostly still in use (see --max-repack-ratio)\n",
                human_bytes(r.unreferenced_bytes_kept)
            ));
        }
        if r.drill_records_deleted > 0 {
            s.push_str(&format!("drill records: {} {}deleted (their snapshots are gone)\n", r.drill_records_deleted, would));
        }
        if let Some(l) = &r.object_lock {
            s.push_str(&imgarc::object_lock::prose(l));
        }
        for p in &r.marks_postponed {
            s.push_str(&format!("postponed: {p}\n"));
        }
        for w in &r.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    });
    Ok(())
}
