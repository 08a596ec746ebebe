//! The Cinder side of a sync: following a volume-backed instance snapshot (each
//! Cinder volume snapshot its block device mapping names becomes one imgarc
//! snapshot, carrying the instance image and its mapping entry, so the VM's
//! disks form one group) and `sync --volumes` (the project's volumes
//! themselves). The volume → scratch image → archive workflow is
//! [`crate::volumes::VolumeArchiver`]; this file decides what to read and reports it.

use super::{DiskEntry, DiskResult, SyncOptions};
use crate::archive::ArchiveOptions;
use crate::index::Index;
use crate::openstack::glance::ImageRecord;
use crate::repository::snapshot::Source;
use crate::volumes::{VolumeArchiver, VolumeReadOptions, VolumeTarget};
use anyhow::Result;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Instant;

/// Cinder volume snapshots of `cloud` already archived: snapshot id → imgarc snapshot.
/// Cinder snapshots are immutable, so one held is never read again.
pub(super) fn held_volume_snapshots(index: &Index, cloud: Option<&str>) -> Result<HashMap<String, String>> {
    let mut held = HashMap::new();
    for row in index.snapshot_rows()? {
        let Some(head) = index.snapshot_head(&row.id)? else { continue };
        if let Source::Cinder { snapshot_id: Some(s), cloud: c, .. } = &head.source {
            if c.as_deref() == cloud {
                held.insert(s.clone(), row.id.to_hex());
            }
        }
    }
    Ok(held)
}

fn archive_options(opts: &SyncOptions) -> ArchiveOptions {
    ArchiveOptions {
        digest: opts.digests.clone(),
        spill: opts.spill.clone(),
        cloud: opts.cloud.clone(),
        limit_download: opts.limit.clone(),
        ..Default::default()
    }
}

fn read_options(opts: &SyncOptions) -> VolumeReadOptions {
    VolumeReadOptions { cloud: opts.cloud.clone(), limit_download: opts.limit.clone(), ..Default::default() }
}

/// Archives (or, in a dry run, says it would) each disk of the volume-backed instance
/// snapshot `rec`; one disk's failure never stops the others.
pub(super) fn follow_image(
    archiver: &VolumeArchiver<'_>,
    index: &mut Index,
    rec: &ImageRecord,
    snapshot_ids: &[String],
    mappings: &[Value],
    held: &mut HashMap<String, String>,
    opts: &SyncOptions,
) -> Vec<DiskEntry> {
    let image_name = rec.name.clone();
    let mut out = Vec::new();
    for (i, snapshot_id) in snapshot_ids.iter().enumerate() {
        let bdm = mappings.get(i).cloned();
        let started = Instant::now();
        let mut e = DiskEntry {
            result: DiskResult::Archived,
            image_id: Some(rec.id.clone()),
            image_name: image_name.clone(),
            volume_snapshot_id: Some(snapshot_id.clone()),
            volume_id: None,
            volume_name: None,
            device_name: bdm.as_ref().and_then(|b| b.get("device_name")).and_then(|d| d.as_str()).map(str::to_string),
            boot_index: bdm.as_ref().and_then(|b| b.get("boot_index")).and_then(|d| d.as_i64()),
            snapshot: None,
            reason: None,
            would: None,
            logical_bytes: None,
            bytes_stored: 0,
            seconds: 0.0,
        };
        if let Some(snap) = held.get(snapshot_id) {
            e.result = DiskResult::Unchanged;
            e.snapshot = Some(snap.clone());
            out.push(e);
            continue;
        }
        let target = archiver.cinder.get_snapshot(snapshot_id).map(|snapshot| {
            e.volume_id = Some(snapshot.volume_id.clone());
            VolumeTarget::Snapshot { snapshot, bdm: bdm.clone(), instance_image: Some((rec.id.clone(), image_name.clone())) }
        });
        match target {
            Err(err) => {
                e.result = DiskResult::Failed;
                e.reason = Some(format!("Cinder volume snapshot {snapshot_id}: {err:#}"));
            }
            Ok(_) if opts.dry_run => {
                e.would = Some("archive the volume snapshot through a scratch volume and image".into());
            }
            Ok(target) => {
                run_one(archiver, index, &target, opts, &mut e);
                // Another image naming the same volume snapshot (or the same image twice) reuses it.
                if let Some(snap) = &e.snapshot {
                    held.insert(snapshot_id.clone(), snap.clone());
                }
            }
        }
        e.seconds = started.elapsed().as_secs_f64();
        out.push(e);
    }
    out
}

/// `sync --volumes`: each of the project's volumes (available or in-use) the filters select.
pub(super) fn archive_volumes(archiver: &VolumeArchiver<'_>, index: &mut Index, opts: &SyncOptions) -> Result<Vec<DiskEntry>> {
    let mut volumes = archiver.cinder.list_volumes(&[])?;
    // The scratch volumes of this or another run are never archived as the project's own;
    // with `--shard`, a volume is its shard's by its own volume id.
    volumes.retain(|v| {
        !crate::scratch::is_scratch_name(v.name.as_deref().unwrap_or(""))
            && opts.filters.matches_volume(v)
            && crate::shard::Shard::admits(opts.shard, &v.id)
    });
    volumes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let mut out = Vec::new();
    for v in volumes {
        let started = Instant::now();
        let mut e = DiskEntry {
            result: DiskResult::Archived,
            image_id: None,
            image_name: None,
            volume_snapshot_id: None,
            volume_id: Some(v.id.clone()),
            volume_name: v.name.clone(),
            device_name: None,
            boot_index: None,
            snapshot: None,
            reason: None,
            would: None,
            logical_bytes: None,
            bytes_stored: 0,
            seconds: 0.0,
        };
        if opts.dry_run {
            e.would = Some(format!("archive the {} volume through scratch resources", v.status));
        } else {
            run_one(archiver, index, &VolumeTarget::Volume(v), opts, &mut e);
        }
        e.seconds = started.elapsed().as_secs_f64();
        out.push(e);
    }
    Ok(out)
}

fn run_one(archiver: &VolumeArchiver<'_>, index: &mut Index, target: &VolumeTarget, opts: &SyncOptions, e: &mut DiskEntry) {
    let result = archiver
        .repo
        .ensure_locks_held()
        .and_then(|()| archiver.archive(index, target, &archive_options(opts), &read_options(opts), &|_| crate::progress::none()));
    match result {
        Ok(r) => {
            e.snapshot = Some(r.archive.outcome.snapshot.clone());
            e.logical_bytes = Some(r.archive.outcome.logical_bytes);
            e.bytes_stored = r.archive.outcome.stored_bytes_added;
            if !r.archive.warnings.is_empty() {
                e.reason = Some(r.archive.warnings.join("; "));
            }
        }
        Err(err) => {
            e.result = DiskResult::Failed;
            e.reason = Some(format!("{err:#}"));
        }
    }
}
