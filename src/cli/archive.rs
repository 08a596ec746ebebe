//! `imgarc archive SOURCE`: archive one image.

use super::Ctx;
use crate::archive::{archive, ArchiveRequest};
use crate::cli::ArchiveArgs;
use crate::index::Index;
use crate::repository::lock::Lock;
use crate::util::human_bytes;
use anyhow::{Context, Result};

pub fn run(ctx: &Ctx, args: ArchiveArgs) -> Result<()> {
    let digests = crate::digest::parse_list(&args.digest.join(","))?;
    let repo = ctx.open_repo()?;
    // Lock first, then catch up: every prune mark written before the lock is
    // seen (and its packs not deduplicated against); every later one is
    // postponed by our lock until this archive ends.
    let lock = Lock::acquire(repo.backend().clone(), false, "archive")?;
    repo.hold_lock(&lock);
    let mut index = Index::open_writer(&repo).context("cannot bring the local index up to date")?;
    let src = match args.source.strip_prefix("glance:") {
        Some(image) => {
            let glance = ctx.glance(None)?;
            crate::source::open_glance(&glance, image, ctx.global.os_cloud.as_deref(), Ctx::limiter(&ctx.global.limit_download)?)?
        }
        None => crate::source::open(&args.source)?,
    };
    let verified: Vec<String> = src.expected_digests.keys().cloned().collect();
    let unverifiable = src.unverifiable_digests.clone();
    let req = ArchiveRequest {
        name: args.name.unwrap_or(src.default_name),
        tags: args.tags,
        source: src.source,
        digests,
        expected_digests: src.expected_digests,
        expected_size: src.size,
        metadata: src.metadata,
        declared_format: args.disk_format.or(src.declared_format),
        qcow2_policy: crate::format::qcow2::Policy {
            allow_backing_file_opaque: args.allow_backing_file_opaque,
            allow_data_file_opaque: args.allow_data_file_opaque,
            ..args.spill.qcow2_policy()?
        },
    };
    let pb = ctx.out.bar(src.size, "archive");
    let r = archive(&repo, &mut index, src.reader, req, &(std::sync::Arc::new(pb.clone()) as crate::progress::SharedProgress))?;
    pb.finish_and_clear();
    let mut json = serde_json::to_value(&r)?;
    let glance = args.source.starts_with("glance:");
    json["verified_digests"] = serde_json::json!(verified);
    if !unverifiable.is_empty() {
        json["unverifiable_digests"] = serde_json::json!(unverifiable);
        json["warnings"] = serde_json::json!([unverifiable_warning(&unverifiable)]);
    }
    if glance && verified.is_empty() {
        json["unverified"] = if unverifiable.is_empty() {
            "the Glance image record has no checksum or os_hash_value: archived with the digests imgarc computed".into()
        } else {
            unverifiable_warning(&unverifiable).into()
        };
    }
    ctx.emit(&json, || {
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
        if glance && verified.is_empty() && unverifiable.is_empty() {
            s.push_str("  could not be verified: the Glance image has no checksum or os_hash_value\n");
        }
        if !unverifiable.is_empty() {
            s.push_str(&format!("  warning: {}\n", unverifiable_warning(&unverifiable)));
        }
        s
    });
    Ok(())
}

fn unverifiable_warning(algos: &[String]) -> String {
    format!("the source's {} digest was not checked: imgarc computes {} only", algos.join(", "), crate::digest::SUPPORTED.join(", "))
}
