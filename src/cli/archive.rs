//! `imgarc archive SOURCE`: archive one image (`imgarc::archive::archive_source`).

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::archive::{archive_source, ArchiveOptions, SourceArchiveReport};
use imgarc::index::Index;
use imgarc::util::human_bytes;
use imgarc::volumes::{VolumeArchiver, VolumeReadOptions, VolumeTarget};

pub fn run(ctx: &Ctx, mut opts: ArchiveOptions) -> Result<()> {
    opts.digests()?;
    let repo = ctx.open_repo()?;
    // Lock first, then catch up: every prune mark written before the lock is
    // seen (and its packs not deduplicated against); every later one is
    // postponed by our lock until this archive ends.
    let lock = repo.acquire_lock(false, "archive")?;
    repo.hold_lock(&lock);
    let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
    opts.cloud = ctx.global.os_cloud.clone();
    if opts.source.starts_with("glance:") {
        opts.limit_download = Ctx::limiter(&ctx.global.limit_download)?;
    }
    if let Some(volume) = opts.source.strip_prefix("cinder:") {
        let volume = volume.to_string();
        return archive_cinder(ctx, &repo, &mut index, &lock, &opts, &volume);
    }
    let r = archive_source(&repo, &mut index, &opts, &|| ctx.glance(None), &|total| ctx.out.bar(total, "archive"))?;
    ctx.emit(&serde_json::to_value(&r)?, || prose(&r));
    Ok(())
}

/// `archive cinder:VOLUME`: first the leftovers of dead runs are deleted (`scratch::cleanup`),
/// then the volume is read through scratch resources (`imgarc::volumes`).
fn archive_cinder(
    ctx: &Ctx,
    repo: &imgarc::repository::Repository,
    index: &mut Index,
    lock: &imgarc::repository::lock::Lock,
    opts: &ArchiveOptions,
    volume: &str,
) -> Result<()> {
    anyhow::ensure!(!volume.is_empty(), "cinder: needs a volume name or id (cinder:VOLUME)");
    let glance = ctx.glance(None)?;
    let cinder = ctx.cinder_for(&glance)?;
    let cleanup = imgarc::scratch::cleanup(repo, &glance, Some(&cinder), &Default::default())
        .context("cannot clean up the scratch resources of earlier runs")?;
    let target = VolumeTarget::Volume(cinder.volume(volume).with_context(|| format!("Cinder volume {volume:?}"))?);
    let read = VolumeReadOptions {
        cloud: ctx.global.os_cloud.clone(),
        limit_download: Ctx::limiter(&ctx.global.limit_download)?,
        ..Default::default()
    };
    let archiver = VolumeArchiver { repo, glance: &glance, cinder: &cinder, lease: lock.lease() };
    let mut r = archiver.archive(index, &target, opts, &read, &|total| ctx.out.bar(total, "archive"))?;
    for f in cleanup.failed.iter().chain(&cleanup.refused) {
        r.archive.warnings.push(format!(
            "scratch {} {} of an earlier run was not deleted: {}",
            f.kind.name(),
            f.name,
            f.reason.as_deref().unwrap_or("")
        ));
    }
    let mut json = serde_json::to_value(&r)?;
    json["cleanup"] = serde_json::to_value(&cleanup)?;
    ctx.emit(&json, || {
        let mut s = prose(&r.archive);
        for d in &cleanup.deleted {
            s.push_str(&format!("  deleted the scratch {} {} left by an earlier run ({})\n", d.kind.name(), d.name, d.purpose));
        }
        for u in &r.scratch {
            s.push_str(&format!("  read through the scratch {} {} ({})\n", u.kind.name(), u.name, u.id));
        }
        s
    });
    Ok(())
}

fn prose(report: &SourceArchiveReport) -> String {
    let r = &report.outcome;
    let verified = &report.verified_digests;
    let mut s = format!(
        "snapshot {} saved ({})\n  {} read, {} new ({} chunks of {}), {} added to the repository, {:.1} s ({}/s)\n",
        &r.snapshot[..16],
        r.name,
        human_bytes(r.logical_bytes),
        human_bytes(r.new_bytes),
        r.new_chunks,
        r.chunks,
        human_bytes(r.stored_bytes_added),
        r.seconds,
        human_bytes((r.logical_bytes as f64 / r.seconds.max(1e-6)) as u64),
    );
    if let Some(why) = &r.opaque {
        s.push_str(&format!("  {} stored as opaque bytes: {why}\n", r.format));
    }
    for (k, v) in &r.digests {
        s.push_str(&format!("  {k} {v}{}\n", if verified.contains(k) { " (matches the source)" } else { "" }));
    }
    if report.from_glance && verified.is_empty() && report.unverifiable_digests.is_empty() {
        s.push_str("  could not be verified: the Glance image has no checksum or os_hash_value\n");
    }
    for w in &report.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}
