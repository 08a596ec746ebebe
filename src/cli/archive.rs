//! `imgarc archive SOURCE`: archive one image.

use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::archive::{archive, ArchiveRequest};
use imgarc::index::Index;
use imgarc::repository::lock::Lock;
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct ArchiveArgs {
    /// Image file path, - for standard input, or glance:IMAGE (id or unique name)
    pub source: String,
    /// Snapshot name (default: the file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Whole-file digests to compute and record, e.g. md5,sha512,sha256
    #[arg(long, value_delimiter = ',')]
    pub digest: Vec<String>,
    /// The format the image is declared as (raw, qcow2, …); a declared raw image is never decomposed
    #[arg(long)]
    pub disk_format: Option<String>,
    /// Archive a QCOW2 image with a backing file as opaque bytes instead of refusing it
    #[arg(long)]
    pub allow_backing_file_opaque: bool,
    /// Archive a QCOW2 image with an external data file as opaque bytes instead of refusing it
    #[arg(long)]
    pub allow_data_file_opaque: bool,
    #[command(flatten)]
    pub spill: SpillArgs,
}

/// Where and how much the QCOW2 decomposer may spill (clusters read before the table that
/// says what they are). Shared by every command that archives.
#[derive(Args, Debug, Clone)]
pub struct SpillArgs {
    /// Directory for the QCOW2 decomposer's spill file (unlinked at once, mode 0600) [default: the system temp dir]
    #[arg(long, env = "IMGARC_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<std::path::PathBuf>,
    /// Most bytes a QCOW2 image may spill (K=1024, M=2^20, G=2^30); beyond it the rest is stored opaque (exact, and the archive says so)
    #[arg(long, default_value = "2G", value_name = "SIZE")]
    pub spill_limit: String,
}

impl SpillArgs {
    /// The default QCOW2 policy with these spill settings.
    pub fn qcow2_policy(&self) -> anyhow::Result<imgarc::format::qcow2::Policy> {
        let mut policy = imgarc::format::qcow2::Policy::default();
        if let Some(dir) = &self.spill_dir {
            policy.spill_dir = dir.clone();
        }
        policy.max_spill_bytes = imgarc::util::parse_size(&self.spill_limit).map_err(|e| anyhow::anyhow!("--spill-limit: {e:#}"))?;
        Ok(policy)
    }
}

pub fn run(ctx: &Ctx, args: ArchiveArgs) -> Result<()> {
    let digests = imgarc::digest::parse_list(&args.digest.join(","))?;
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
            imgarc::source::open_glance(&glance, image, ctx.global.os_cloud.as_deref(), Ctx::limiter(&ctx.global.limit_download)?)?
        }
        None => imgarc::source::open(&args.source)?,
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
        qcow2_policy: imgarc::format::qcow2::Policy {
            allow_backing_file_opaque: args.allow_backing_file_opaque,
            allow_data_file_opaque: args.allow_data_file_opaque,
            ..args.spill.qcow2_policy()?
        },
    };
    let pb = ctx.out.bar(src.size, "archive");
    let r = archive(&repo, &mut index, src.reader, req, &pb)?;
    drop(pb);
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
    format!("the source's {} digest was not checked: imgarc computes {} only", algos.join(", "), imgarc::digest::SUPPORTED.join(", "))
}
