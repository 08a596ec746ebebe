//! Restore into a Cinder volume (`imgarc restore --to-cinder`): the snapshot is
//! restored into the target cloud's Glance as a scratch image (through
//! [`restore_to_glance`], the one upload path, digests verified), a volume is
//! created from that image, waited for, given the archived volume's bootable
//! flag, checked, renamed to its final name, and the image is deleted (or kept
//! with `--keep-image`).
//!
//! Both the image and the volume are scratch resources ([`crate::scratch`]):
//! recorded in the repository before they are created, named
//! `imgarc-scratch-…` and marked, so a failed restore deletes both and a
//! killed one is cleaned up by the next `imgarc cleanup`. Only once the volume
//! is verified is it renamed, unmarked and its record deleted: from then on it
//! is the user's volume.
//!
//! What is verified: the bytes uploaded to Glance equal the archived ones
//! (sha512 of the stream against the snapshot's, and Glance's own
//! `os_hash_value`/`checksum` against the stream's, as `--to-glance`); the
//! volume reached `available` with the size asked for; its
//! `volume_image_metadata` names that image (`image_id`) and, when Cinder
//! copied it, the image's `checksum`. Not verified: the volume's bytes
//! themselves: the Cinder API gives no way to read or hash them (that needs an
//! attachment or the storage backend: the tests read them back with `rbd export`).

use crate::index::Index;
use crate::net::ratelimit::RateLimiter;
use crate::openstack::cinder::{CinderClient, NewVolume, Volume};
use crate::openstack::glance::GlanceClient;
use crate::progress::SharedProgress;
use crate::repository::scratch::ScratchKind;
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::Repository;
use crate::restore::RestoreOptions;
use crate::restore_glance::{restore_to_glance, GlanceRestoreReport, ToGlanceOptions};
use crate::scratch::{ScratchName, ScratchSet, SCRATCH_TAG};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// The `imgarc restore --to-cinder` flags (each doc line is its `--help`); `--to-cloud` and
/// `--name` are `--to-glance`'s.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CinderRestoreOptions {
    /// Volume type of the new volume (default: the archived volume's type, else the cloud's default type)
    #[cfg_attr(feature = "clap", arg(long, requires = "to_cinder"))]
    pub volume_type: Option<String>,
    /// Size of the new volume in GiB; only grows it: the volume is at least the archived volume's size and the image's virtual size
    #[cfg_attr(feature = "clap", arg(long = "size", value_name = "GIB", requires = "to_cinder", value_parser = clap::value_parser!(u64).range(1..)))]
    pub size_gib: Option<u64>,
    /// Keep the intermediate Glance image (named like the volume, no longer scratch; default: delete it)
    #[cfg_attr(feature = "clap", arg(long, requires = "to_cinder"))]
    pub keep_image: bool,
    /// Availability zone of the new volume (default: the cloud's default zone)
    #[cfg_attr(feature = "clap", arg(long, requires = "to_cinder"))]
    pub availability_zone: Option<String>,
    /// Name of the new volume (`--name`; default: the archived volume's name, else the snapshot's).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub name: Option<String>,
    /// How long the volume may take to become available (default 30 min).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub timeout: Option<Duration>,
    /// Cap on the upload rate (the global `--limit-upload`).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub limit_upload: Option<RateLimiter>,
}

impl CinderRestoreOptions {
    /// The first `--to-cinder`-only flag given, if any (a defaulted bool escapes clap's `requires`).
    pub fn given_flag(&self) -> Option<&'static str> {
        [
            (self.volume_type.is_some(), "--volume-type"),
            (self.size_gib.is_some(), "--size"),
            (self.keep_image, "--keep-image"),
            (self.availability_zone.is_some(), "--availability-zone"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// What a snapshot says of the volume it was archived from (`Source::Cinder`: the volume's
/// recorded metadata), or what a volume made from it should be (Glance or file: the image's).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchivedVolume {
    pub name: Option<String>,
    /// GiB.
    pub size: Option<u64>,
    pub volume_type: Option<String>,
    /// `None`: not recorded (a Glance or file snapshot): left as Cinder sets it.
    pub bootable: Option<bool>,
    pub description: Option<String>,
    /// The image properties the volume carried (`hw_*`, `os_*` …), given to the scratch image so
    /// that Cinder copies them into the new volume's `volume_image_metadata` (Nova reads them).
    pub image_properties: Map<String, Value>,
}

/// Keys of a volume's `volume_image_metadata` that describe the image it came from, not the
/// guest: never copied to the scratch image (the scratch image has its own).
const IMAGE_IDENTITY: &[&str] = &[
    "image_id",
    "image_name",
    "checksum",
    "size",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "owner",
    "signature_verified",
];

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

impl ArchivedVolume {
    /// Read from a `Source::Cinder` snapshot's metadata: the volume record under `cinder_volume`
    /// (`crate::volumes`; else `volume`, else the metadata itself): `name`, `size`, `volume_type`,
    /// `bootable`, `description`, `volume_image_metadata`; a disk read from a volume snapshot
    /// without its volume's record takes the size of `cinder_snapshot`. Other snapshots: the name.
    pub fn of(snap: &Snapshot) -> ArchivedVolume {
        if !matches!(snap.source, Source::Cinder { .. }) {
            let name = snap.metadata.get("name").and_then(Value::as_str).map(str::to_string).or_else(|| Some(snap.name.clone()));
            return ArchivedVolume { name, ..Default::default() };
        }
        let m = ["cinder_volume", "volume"].iter().find_map(|k| snap.metadata.get(*k).and_then(Value::as_object)).unwrap_or(&snap.metadata);
        let snapshot_size = snap.metadata.get("cinder_snapshot").and_then(|s| s.get("size")).and_then(as_u64);
        let s = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let mut image_properties = Map::new();
        if let Some(vim) = m.get("volume_image_metadata").and_then(Value::as_object) {
            for (k, v) in vim {
                if !IMAGE_IDENTITY.contains(&k.as_str()) && !v.is_null() {
                    image_properties.insert(k.clone(), Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_string)));
                }
            }
        }
        ArchivedVolume {
            name: s("name").or_else(|| Some(snap.name.clone())),
            size: m.get("size").and_then(as_u64).or(snapshot_size),
            volume_type: s("volume_type"),
            bootable: m.get("bootable").and_then(as_bool),
            description: s("description"),
            image_properties,
        }
    }
}

/// The new volume and how it was checked (`restore --to-cinder --json`: the `cinder` object).
#[derive(Debug, Clone, Serialize)]
pub struct CinderVolumeReport {
    pub volume_id: String,
    pub name: String,
    /// GiB.
    pub size: u64,
    pub volume_type: Option<String>,
    pub bootable: bool,
    pub availability_zone: Option<String>,
    /// The intermediate image: kept (`--keep-image`) or deleted.
    pub image_id: String,
    pub image_kept: bool,
    /// What the volume was checked with (the bytes in it are not readable through the API).
    pub verified_with: Vec<String>,
    pub seconds: f64,
}

/// `restore --to-cinder`'s report: the Glance upload's report (the `restore --to-glance` JSON,
/// of the intermediate image) plus the volume.
#[derive(Debug, Clone, Serialize)]
pub struct CinderRestoreReport {
    #[serde(flatten)]
    pub glance: GlanceRestoreReport,
    pub cinder: CinderVolumeReport,
    /// Scratch resources that could not be deleted (left for `imgarc cleanup`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleanup_problems: Vec<String>,
}

/// The volume size: the `--size` asked for, grown to the archived volume's size and to the
/// image's guest size (Cinder refuses a volume smaller than its image's virtual size).
pub fn volume_size_gib(snap: &Snapshot, archived: &ArchivedVolume, asked: Option<u64>) -> u64 {
    let guest = snap.virtual_bytes.unwrap_or(snap.logical_bytes);
    let min_disk = snap.metadata.get("min_disk").and_then(as_u64).unwrap_or(0);
    [asked.unwrap_or(0), archived.size.unwrap_or(0), guest.div_ceil(GIB), min_disk, 1].into_iter().max().unwrap_or(1)
}

/// The snapshot as the scratch image is made from: a Cinder snapshot's metadata is a volume's,
/// not an image record, so the image is described from scratch (its format, the volume's image
/// properties); a Glance or file snapshot keeps its archived image record (the `--to-glance` rules).
fn image_source(snap: &Snapshot, archived: &ArchivedVolume) -> Snapshot {
    let mut s = snap.clone();
    if matches!(snap.source, Source::Cinder { .. }) {
        let mut m = archived.image_properties.clone();
        m.insert("id".into(), "".into());
        m.insert("status".into(), "active".into());
        m.insert("name".into(), snap.name.clone().into());
        m.insert("disk_format".into(), snap.format.clone().into());
        m.insert("container_format".into(), "bare".into());
        s.metadata = m;
    }
    s
}

/// Restores `snap` into a new volume of `cinder`, through a scratch image in `glance` (same
/// cloud). `lease` is the caller's repository lock lease (a shared lock held for the whole
/// restore); `cloud` names the target for the scratch records.
#[allow(clippy::too_many_arguments)]
pub fn restore_to_cinder(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    glance: &GlanceClient,
    cinder: &CinderClient,
    lease: String,
    cloud: Option<&str>,
    restore_opts: &RestoreOptions,
    opts: &CinderRestoreOptions,
    progress: &SharedProgress,
) -> Result<CinderRestoreReport> {
    repo.require_full_key("restore")?;
    let archived = ArchivedVolume::of(snap);
    let size = volume_size_gib(snap, &archived, opts.size_gib);
    let final_name = opts.name.clone().or_else(|| archived.name.clone()).unwrap_or_else(|| snap.name.clone());
    let purpose = format!("restore --to-cinder {}", snap.name);
    let mut set = ScratchSet::new(repo, glance, Some(cinder), lease, cloud, &purpose);
    match restore_into(&mut set, repo, index, snap, &archived, size, &final_name, glance, cinder, restore_opts, opts, progress) {
        Ok((glance_report, volume)) => {
            let cleanup_problems = set.finish();
            Ok(CinderRestoreReport { glance: glance_report, cinder: volume, cleanup_problems })
        }
        Err(e) => {
            // Newest first: the volume, then the image; each waited for until gone.
            let problems = set.finish();
            if problems.is_empty() {
                Err(e.context("deleted the volume and image this restore made"))
            } else {
                Err(e.context(problems.join("; ")))
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_into(
    set: &mut ScratchSet<'_>,
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    archived: &ArchivedVolume,
    size: u64,
    final_name: &str,
    glance: &GlanceClient,
    cinder: &CinderClient,
    restore_opts: &RestoreOptions,
    opts: &CinderRestoreOptions,
    progress: &SharedProgress,
) -> Result<(GlanceRestoreReport, CinderVolumeReport)> {
    let started = std::time::Instant::now();
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(1800));
    // 1. the scratch image, through the --to-glance path.
    let image_name = set.reserve(ScratchKind::Image, "restore")?;
    let mut glance_opts = ToGlanceOptions { method: "put".into(), limit_upload: opts.limit_upload.clone(), ..Default::default() };
    glance_opts.overrides.insert("name".into(), image_name.name.clone().into());
    glance_opts.overrides.insert("tags".into(), json!(ScratchName::glance_tags()));
    glance_opts.overrides.insert("visibility".into(), "private".into());
    glance_opts.overrides.insert("protected".into(), false.into());
    let source = image_source(snap, archived);
    let image = restore_to_glance(repo, index, &source, glance, restore_opts, &glance_opts, progress)
        .context("restoring into the intermediate Glance image")?;
    set.created(&image_name, &image.image_id);
    crate::util::crash_point("restore-cinder-image-uploaded");

    // 2. the scratch volume from it.
    let volume_name = set.reserve(ScratchKind::Volume, "restore")?;
    let volume_type = opts.volume_type.clone().or_else(|| archived.volume_type.clone());
    let new = NewVolume {
        name: volume_name.name.clone(),
        size,
        image_id: Some(image.image_id.clone()),
        volume_type: volume_type.clone(),
        availability_zone: opts.availability_zone.clone(),
        description: archived.description.clone(),
        metadata: volume_name.cinder_metadata(),
        ..Default::default()
    };
    let made = cinder.create_volume(&new).with_context(|| {
        format!(
            "creating a {size} GiB volume{} from image {}",
            volume_type.as_ref().map_or(String::new(), |t| format!(" of type {t}")),
            image.image_id
        )
    })?;
    set.created(&volume_name, &made.id);
    crate::util::crash_point("restore-cinder-volume-created");
    let mut volume = cinder
        .wait_volume(&made.id, &["available"], timeout)
        .with_context(|| format!("waiting for volume {} (from image {}) to become available", made.id, image.image_id))?;

    // 3. the bootable flag: the archived volume's; a volume made from an image is bootable in Cinder.
    if let Some(b) = archived.bootable.filter(|b| *b != volume.bootable) {
        cinder.set_bootable(&volume.id, b).with_context(|| format!("setting bootable={b} on volume {}", volume.id))?;
        volume = cinder.get_volume(&volume.id)?;
    }

    // 4. verify what the API shows.
    let glance_record = glance.get(&image.image_id).with_context(|| format!("reading back image {}", image.image_id))?;
    let verified_with = verify_volume(&volume, size, archived.bootable, &glance_record)?;

    // 5. it is the user's volume now: its name, unmarked, its record gone.
    let renamed =
        cinder.rename_volume(&volume.id, final_name, None).with_context(|| format!("renaming volume {} to {final_name:?}", volume.id))?;
    cinder.delete_volume_metadata(&volume.id, crate::scratch::SCRATCH_METADATA_KEY)?;
    set.keep(&volume_name)?;

    // 6. the image: deleted by `finish`, or kept as an ordinary image.
    if opts.keep_image {
        let tags = snap.metadata.get("tags").filter(|t| t.is_array()).cloned().unwrap_or_else(|| json!([]));
        let ops =
            [json!({"op": "replace", "path": "/name", "value": final_name}), json!({"op": "replace", "path": "/tags", "value": tags})];
        glance
            .update(&image.image_id, &ops)
            .with_context(|| format!("renaming the kept image {} and dropping its {SCRATCH_TAG} tag", image.image_id))?;
        set.keep(&image_name)?;
    }
    let report = CinderVolumeReport {
        volume_id: renamed.id.clone(),
        name: final_name.to_string(),
        size: volume.size,
        volume_type: volume.volume_type.clone(),
        bootable: volume.bootable,
        availability_zone: volume.availability_zone.clone(),
        image_id: image.image_id.clone(),
        image_kept: opts.keep_image,
        verified_with,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((image, report))
}

/// Checks the new volume against what was asked and the image it was made from; returns what was compared.
fn verify_volume(volume: &Volume, size: u64, bootable: Option<bool>, image: &crate::openstack::glance::ImageRecord) -> Result<Vec<String>> {
    let mut checked = vec!["status available".to_string()];
    if volume.status != "available" {
        bail!("volume {} is {:?}, not available", volume.id, volume.status);
    }
    if volume.size != size {
        bail!("volume {} has {} GiB, {size} GiB were asked for", volume.id, volume.size);
    }
    checked.push(format!("size {size} GiB"));
    match volume.volume_image_metadata.get("image_id").and_then(Value::as_str) {
        Some(id) if id == image.id => checked.push("volume_image_metadata.image_id".into()),
        Some(id) => bail!("volume {} was made from image {id}, not from the uploaded {}", volume.id, image.id),
        None => bail!("volume {} names no source image (no volume_image_metadata.image_id)", volume.id),
    }
    match (volume.volume_image_metadata.get("checksum").and_then(Value::as_str), image.checksum.as_deref()) {
        (Some(got), Some(want)) if got.eq_ignore_ascii_case(want) => {
            checked.push("volume_image_metadata.checksum (md5 of the image)".into())
        }
        (Some(got), Some(want)) => bail!("volume {} records image checksum {got}, the uploaded image has {want}", volume.id),
        _ => {}
    }
    if let Some(b) = bootable {
        if volume.bootable != b {
            bail!("volume {} is bootable={}, the archived volume was bootable={b}", volume.id, volume.bootable);
        }
        checked.push(format!("bootable {b}"));
    }
    Ok(checked)
}

/// The restore's verdict for a caller printing it: one line.
pub fn describe(r: &CinderRestoreReport) -> String {
    let c = &r.cinder;
    format!(
        "restored into Cinder as volume {} ({}): {} GiB{}, bootable {}, in {:.1} s; upload verified with {}; volume checked: {}; intermediate image {} {}",
        c.volume_id,
        c.name,
        c.size,
        c.volume_type.as_ref().map_or(String::new(), |t| format!(", type {t}")),
        c.bootable,
        c.seconds,
        r.glance.verified_with,
        c.verified_with.join(", "),
        c.image_id,
        if c.image_kept { "kept" } else { "deleted" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(source: Source, metadata: Value, virtual_bytes: Option<u64>) -> Snapshot {
        use crate::ids::Id;
        use crate::repository::extents::StreamRef;
        use crate::repository::snapshot::{Layout, SnapshotStats};
        let mut s = Snapshot {
            version: 1,
            name: "snap-name".into(),
            tags: vec![],
            time: "2026-01-01T00:00:00Z".into(),
            hostname: "h".into(),
            source: Source::Stdin,
            logical_bytes: 5 << 20,
            virtual_bytes: None,
            format: "qcow2".into(),
            image: None,
            layout: Layout::Raw,
            guest: StreamRef { size: 10, extent_count: 1, extents_blake3: Id::of(b"e"), trees: vec![Id::of(b"t")], data_bytes: 10 },
            digests: Default::default(),
            stats: SnapshotStats::default(),
            metadata: Default::default(),
            copied_from: None,
        };
        s.source = source;
        s.metadata = metadata.as_object().cloned().unwrap_or_default();
        s.virtual_bytes = virtual_bytes;
        s
    }

    #[test]
    fn archived_volume_and_size_rules() {
        let cinder = Source::Cinder { volume_id: "v".into(), snapshot_id: None, cloud: None };
        let s = snap(
            cinder.clone(),
            json!({"cinder_volume": {"name": "db", "size": 20, "volume_type": "ssd", "bootable": "false",
                "volume_image_metadata": {"image_id": "old", "checksum": "c", "hw_disk_bus": "scsi", "min_disk": "3"}}}),
            Some(3 << 30),
        );
        let a = ArchivedVolume::of(&s);
        assert_eq!((a.name.as_deref(), a.size, a.volume_type.as_deref(), a.bootable), (Some("db"), Some(20), Some("ssd"), Some(false)));
        assert_eq!(a.image_properties, json!({"hw_disk_bus": "scsi"}).as_object().cloned().unwrap());
        assert_eq!(volume_size_gib(&s, &a, None), 20);
        assert_eq!(volume_size_gib(&s, &a, Some(5)), 20, "--size never shrinks below the archived size");
        assert_eq!(volume_size_gib(&s, &a, Some(30)), 30);
        let img = image_source(&s, &a);
        assert_eq!(img.metadata.get("disk_format"), Some(&json!("qcow2")));
        assert!(img.metadata.get("image_id").is_none() && img.metadata.get("checksum").is_none());
        // a disk read from a volume snapshot: its size
        let d = snap(cinder, json!({"cinder_snapshot": {"size": 4}}), Some(1 << 30));
        assert_eq!(ArchivedVolume::of(&d).size, Some(4));
        // a Glance image of 1.5 GiB guest: 2 GiB, bootable left to Cinder
        let g = snap(Source::File { path: "/x".into() }, json!({"name": "web", "min_disk": 1}), Some(3 << 29));
        let a = ArchivedVolume::of(&g);
        assert_eq!((a.name.as_deref(), a.bootable), (Some("web"), None));
        assert_eq!(volume_size_gib(&g, &a, None), 2);
    }
}
