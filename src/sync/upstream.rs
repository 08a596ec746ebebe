//! Images deleted upstream: held images missing from the listing, confirmed
//! one by one with a GET before the repository records the deletion.

use super::*;
use crate::ids::Id;
use crate::openstack::glance::{GlanceClient, ImageRecord};
use crate::repository::snapshot::SnapshotHead;
use crate::repository::upstream::DeletedUpstream;
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::Result;
use std::collections::{HashMap, HashSet};

/// Held images missing from the listing (recorded unless `opts.dry_run`). Only those of the
/// run's shard (`opts.shard`) the run would have
/// selected (judged by their last archived record) are candidates, and each
/// is confirmed with a GET (404 or status `deleted`): a listing alone — paged,
/// filtered, hiding `os_hidden` images — never proves a deletion.
pub(super) fn find_deleted(
    repo: &Repository,
    glance: &GlanceClient,
    opts: &SyncOptions,
    held: &HashMap<String, Vec<(Id, SnapshotHead)>>,
    listed: &HashSet<String>,
    recorded: &HashMap<String, DeletedUpstream>,
    warnings: &Warnings,
) -> Result<Vec<DeletedEntry>> {
    let mut deleted = Vec::new();
    let mut missing: Vec<(&String, &(Id, SnapshotHead))> = held
        .iter()
        // Another shard's image is never this run's to find deleted (the caller's `held` is of
        // this shard already; checked again here, where the record is written).
        .filter(|(id, _)| crate::shard::Shard::admits(opts.shard, id))
        .filter(|(id, _)| !listed.contains(*id) && !recorded.contains_key(*id))
        .filter_map(|(id, snaps)| snaps.last().map(|last| (id, last)))
        .collect();
    missing.sort_by(|a, b| a.0.cmp(b.0));
    for (image_id, (snap_id, snap)) in missing {
        let Ok(last) = ImageRecord::from_json(serde_json::Value::Object(snap.selection.clone())) else { continue };
        if !(opts.scope.admits(&last) && opts.filters.matches(&last)) {
            continue;
        }
        let evidence = match glance.get(image_id) {
            Err(crate::openstack::Error::NotFound(_)) => "404".to_string(),
            Ok(now) if now.status == "deleted" => "status deleted".to_string(),
            Ok(_) => continue, // exists, just not listed here (filters, hidden, owner changed)
            Err(e) => {
                warnings.warn(format!("image {image_id} is not listed, but checking whether it was deleted failed: {e}"));
                continue;
            }
        };
        let mut entry = DeletedEntry { id: image_id.clone(), name: snap.name.clone(), snapshot: snap_id.to_hex(), evidence, would: None };
        if opts.dry_run {
            entry.would = Some("record it as deleted upstream".into());
            deleted.push(entry);
            continue;
        }
        repo.record_deleted_upstream(&DeletedUpstream {
            image_id: image_id.clone(),
            name: snap.name.clone(),
            cloud: opts.cloud.clone(),
            detected: crate::util::now_rfc3339(),
        })?;
        deleted.push(entry);
    }
    Ok(deleted)
}
