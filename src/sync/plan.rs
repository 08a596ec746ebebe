//! The decision per listed image: which snapshots of the cloud the repository
//! holds, whether one already holds the image's bytes (strongest digest
//! first) and metadata, and so what a run does with it ([`Plan`]).

use crate::ids::Id;
use crate::index::Index;
use crate::openstack::glance::ImageRecord;
use crate::repository::snapshot::{MetadataHasher, SnapshotHead, Source};
use anyhow::Result;
use std::collections::HashMap;

pub(super) fn display_name(rec: &ImageRecord) -> String {
    rec.name.clone().unwrap_or_else(|| rec.id.clone())
}

/// What a run does with one listed image.
pub(super) enum Plan {
    Skip(String),
    /// A boot-from-volume instance snapshot: nothing to download; the reason names its volume snapshots.
    VolumeBacked(String),
    Unchanged(Id),
    /// The content is held by this snapshot, the metadata is new: a snapshot
    /// reusing its streams is written (a key that reads snapshot bodies only).
    NewMetadata(Id),
    /// Why the image is downloaded (what `sync --dry-run` says it would archive).
    Download(&'static str),
}

/// Whether `held` holds the bytes `rec` describes: its strongest digest, else
/// its size and `updated_at` (images without any digest).
pub(super) fn same_content(rec: &ImageRecord, held: &SnapshotHead) -> bool {
    let digest = |algo: &str| held.digests.get(algo).map(|d| d.to_ascii_lowercase());
    if let (Some(algo), Some(value)) = (rec.os_hash_algo.as_deref(), rec.os_hash_value.as_deref().filter(|v| !v.is_empty())) {
        if let Some(held) = digest(&algo.to_ascii_lowercase()) {
            return held == value.to_ascii_lowercase();
        }
    }
    if let Some(md5) = rec.checksum.as_deref().filter(|v| !v.is_empty()) {
        if let Some(held) = digest("md5") {
            return held == md5.to_ascii_lowercase();
        }
    }
    rec.size == Some(held.logical_bytes) && rec.updated_at.is_some() && rec.updated_at == held.updated_at
}

/// Whether `held` recorded the metadata `rec` has now, compared by the heads'
/// keyed hash of the record. Store locations are never archived (they can
/// carry credentials), so the hash leaves them out on both sides: a snapshot
/// from before they were dropped still matches.
pub(super) fn same_metadata(rec: &ImageRecord, held: &SnapshotHead, hasher: &MetadataHasher) -> bool {
    let Some(listed) = rec.raw.as_object() else {
        return false;
    };
    hasher.hash(listed) == held.metadata_hash
}

/// `reads_bodies`: whether this key can read the previous snapshot's trees to
/// reuse them for new metadata; a write-only key cannot, so it archives the
/// image again, which stores nothing the repository holds (dedup) but reads it.
/// `per_project`: the repository keys chunk ids per Glance project, so a snapshot
/// of another owner's chunks is never reused for this image (it is archived again).
pub(super) fn plan(rec: &ImageRecord, held: &[(Id, SnapshotHead)], hasher: &MetadataHasher, reads_bodies: bool, per_project: bool) -> Plan {
    // Before the size-0 skip: these are the nearly empty images Nova makes, and an
    // operator must see that their VMs are not protected by the image archive.
    // Queued too: Glance 33 refuses a zero-byte upload declared qcow2 (format inspection),
    // so such an instance snapshot never becomes active, yet its disks are in Cinder.
    if rec.status == "active" || rec.status == "queued" {
        if let Some(vb) = rec.volume_backed() {
            return Plan::VolumeBacked(vb.reason());
        }
    }
    if let Some(why) = rec.not_downloadable_reason() {
        return Plan::Skip(why);
    }
    // Newest first: the latest snapshot of this content decides.
    match held.iter().rev().find(|(_, s)| same_content(rec, s)) {
        Some((id, s)) if same_metadata(rec, s, hasher) => Plan::Unchanged(*id),
        Some((id, s)) if reads_bodies && (!per_project || same_owner(rec, s)) => Plan::NewMetadata(*id),
        Some(_) if !reads_bodies => Plan::Download("new metadata, and a write-only key cannot reuse the held data"),
        Some(_) => Plan::Download("new owner, and the repository dedups per project"),
        None if held.is_empty() => Plan::Download("new image"),
        None => Plan::Download("new content"),
    }
}

fn same_owner(rec: &ImageRecord, head: &SnapshotHead) -> bool {
    head.selection.get("owner").and_then(|v| v.as_str()) == rec.owner.as_deref()
}

/// Glance snapshots of `cloud` in the repository, by image id, oldest first,
/// from their heads (what every key reads).
pub(super) fn held_images(index: &Index, cloud: Option<&str>) -> Result<HashMap<String, Vec<(Id, SnapshotHead)>>> {
    let mut held: HashMap<String, Vec<(Id, SnapshotHead)>> = HashMap::new();
    for row in index.snapshot_rows()? {
        let Some(head) = index.snapshot_head(&row.id)? else { continue };
        if let Source::Glance { image_id, cloud: c } = &head.source {
            if c.as_deref() == cloud {
                held.entry(image_id.clone()).or_default().push((row.id, head));
            }
        }
    }
    for v in held.values_mut() {
        v.sort_by(|a, b| (&a.1.time, a.0).cmp(&(&b.1.time, b.0)));
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::snapshot::{Snapshot, Source};
    use crate::sync::test_support::rec;
    use serde_json::json;

    /// Nova's instance snapshot of a boot-from-volume VM (`bdm_v2`, a mapping list as a JSON
    /// string, no data) is its own outcome naming the volume snapshots; an image with data
    /// is archived whatever its properties; a queued one is volume-backed too (Glance 33
    /// leaves qcow2-declared zero-byte ones queued), one in any other status is skipped.
    #[test]
    fn volume_backed_instance_snapshots_are_told_apart_from_empty_images() {
        let hasher = MetadataHasher::UNKEYED;
        let bdm = json!([
            {"boot_index": 0, "source_type": "snapshot", "destination_type": "volume", "snapshot_id": "snap-1", "device_name": "/dev/vda"},
            {"boot_index": null, "source_type": "blank", "destination_type": "local", "snapshot_id": null},
            {"boot_index": 1, "source_type": "snapshot", "destination_type": "volume", "snapshot_id": "snap-2"}
        ])
        .to_string();
        let nova = rec(json!({"size": 0, "bdm_v2": "True", "block_device_mapping": bdm, "root_device_name": "/dev/vda"}));
        match plan(&nova, &[], &hasher, true, false) {
            Plan::VolumeBacked(why) => {
                assert!(why.contains("volume snapshot(s) snap-1, snap-2") && why.contains("boot-from-volume"), "{why}")
            }
            _ => panic!("not volume-backed"),
        }
        // Size absent (not yet reported) counts as no data.
        let size_unknown = rec(json!({"size": null, "block_device_mapping": bdm.clone()}));
        assert!(matches!(plan(&size_unknown, &[], &hasher, true, false), Plan::VolumeBacked(_)));
        let unreadable = rec(json!({"size": 0, "bdm_v2": true, "block_device_mapping": "[{not json"}));
        assert!(matches!(plan(&unreadable, &[], &hasher, true, false), Plan::VolumeBacked(why) if why.contains("not a JSON list")));
        // The owner's text in a log line: control characters replaced, a long list cut short.
        let many: Vec<serde_json::Value> = (0..40).map(|i| json!({"snapshot_id": format!("s{i}\nforged log line")})).collect();
        let hostile = rec(json!({"size": 0, "bdm_v2": "True", "block_device_mapping": serde_json::Value::Array(many).to_string()}));
        assert!(
            matches!(plan(&hostile, &[], &hasher, true, false), Plan::VolumeBacked(why) if !why.contains('\n') && why.contains("s15?forged") && why.ends_with("and 24 more"))
        );
        let no_snapshots = rec(json!({"size": 0, "bdm_v2": "True", "block_device_mapping": "[]"}));
        assert!(
            matches!(plan(&no_snapshots, &[], &hasher, true, false), Plan::VolumeBacked(why) if why.contains("name no volume snapshot"))
        );
        // Not volume-backed: an empty image, one with data, one not active, bdm_v2 "False" without mappings.
        assert!(matches!(plan(&rec(json!({"size": 0})), &[], &hasher, true, false), Plan::Skip(why) if why.contains("size 0")));
        let with_data = rec(json!({"size": 10, "bdm_v2": "True", "block_device_mapping": bdm.clone()}));
        assert!(matches!(plan(&with_data, &[], &hasher, true, false), Plan::Download("new image")));
        let queued = rec(json!({"status": "queued", "size": 0, "bdm_v2": "True", "block_device_mapping": bdm.clone()}));
        assert!(matches!(plan(&queued, &[], &hasher, true, false), Plan::VolumeBacked(_)), "a queued BDM image is volume-backed");
        let killed = rec(json!({"status": "killed", "size": 0, "bdm_v2": "True", "block_device_mapping": bdm}));
        assert!(matches!(plan(&killed, &[], &hasher, true, false), Plan::Skip(why) if why.contains("killed")));
        let flag_off = rec(json!({"size": 0, "bdm_v2": "False"}));
        assert!(matches!(plan(&flag_off, &[], &hasher, true, false), Plan::Skip(_)));
    }

    #[test]
    fn content_identity_prefers_the_strongest_digest() {
        let snap = |digests: &[(&str, &str)], size: u64, updated: &str| Snapshot {
            version: 1,
            name: "x".into(),
            tags: vec![],
            time: "t".into(),
            hostname: "h".into(),
            source: Source::Stdin,
            logical_bytes: size,
            virtual_bytes: None,
            format: "raw".into(),
            image: None,
            layout: crate::repository::snapshot::Layout::Raw,
            guest: crate::repository::extents::StreamRef {
                size: 0,
                extent_count: 0,
                extents_blake3: Id([0; 32]),
                trees: vec![],
                data_bytes: 0,
            },
            digests: digests.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stats: Default::default(),
            metadata: json!({"updated_at": updated}).as_object().unwrap().clone(),
            copied_from: None,
        };
        let head =
            |digests: &[(&str, &str)], size: u64, updated: &str| SnapshotHead::of(&snap(digests, size, updated), &MetadataHasher::UNKEYED);
        let r = rec(json!({"os_hash_algo": "sha512", "os_hash_value": "AA", "checksum": "bb"}));
        assert!(same_content(&r, &head(&[("sha512", "aa"), ("md5", "zz")], 1, "")));
        assert!(!same_content(&r, &head(&[("sha512", "ab"), ("md5", "bb")], 10, "")));
        assert!(same_content(&r, &head(&[("md5", "bb")], 1, "")));
        let bare = rec(json!({"updated_at": "2026-01-01T00:00:00Z"}));
        assert!(same_content(&bare, &head(&[], 10, "2026-01-01T00:00:00Z")));
        assert!(!same_content(&bare, &head(&[], 10, "2026-01-02T00:00:00Z")));
        assert!(!same_content(&bare, &head(&[], 11, "2026-01-01T00:00:00Z")));
    }

    #[test]
    fn new_metadata_reuses_the_held_streams_only_with_a_key_that_reads_them() {
        let hasher = MetadataHasher::new(&crate::ids::IdKey::keyed([3; 32]));
        let listed = json!({"os_hash_algo": "sha512", "os_hash_value": "aa", "name": "web", "min_ram": 0});
        let snap = |metadata: serde_json::Value| {
            let mut s: Snapshot = serde_json::from_value(json!({
                "version": 1, "name": "web", "time": "t", "hostname": "h", "source": {"kind": "stdin"}, "logical_bytes": 10,
                "format": "raw", "layout": {"kind": "raw"}, "stats": {"chunks": 0, "new_chunks": 0, "new_bytes": 0,
                "stored_bytes_added": 0, "hole_bytes": 0, "seconds": 0.0},
                "guest": {"size": 0, "extent_count": 0, "extents_blake3": Id([0; 32]), "trees": [], "data_bytes": 0},
                "digests": {"sha512": "aa"}
            }))
            .unwrap();
            s.metadata = rec(metadata).raw.as_object().unwrap().clone();
            SnapshotHead::of(&s, &hasher)
        };
        let r = rec(listed.clone());
        let same = vec![(Id([1; 32]), snap(listed.clone()))];
        let changed = vec![(Id([2; 32]), snap(json!({"os_hash_algo": "sha512", "os_hash_value": "aa", "name": "web", "min_ram": 1})))];
        for reads_bodies in [true, false] {
            assert!(matches!(plan(&r, &same, &hasher, reads_bodies, false), Plan::Unchanged(id) if id == Id([1; 32])));
        }
        assert!(matches!(plan(&r, &changed, &hasher, true, false), Plan::NewMetadata(id) if id == Id([2; 32])));
        assert!(matches!(plan(&r, &changed, &hasher, false, false), Plan::Download(_)), "a write-only key archives again");
        assert!(matches!(plan(&r, &[], &hasher, true, false), Plan::Download(_)));
        // Dedup scope project: an image that changed owner never reuses the old owner's chunks.
        let moved = rec(json!({"os_hash_algo": "sha512", "os_hash_value": "aa", "name": "web", "min_ram": 0, "owner": "p2"}));
        let held =
            vec![(Id([3; 32]), snap(json!({"os_hash_algo": "sha512", "os_hash_value": "aa", "name": "web", "min_ram": 0, "owner": "p1"})))];
        assert!(matches!(plan(&moved, &held, &hasher, true, true), Plan::Download(_)));
        assert!(matches!(plan(&moved, &held, &hasher, true, false), Plan::NewMetadata(id) if id == Id([3; 32])));
    }
}
