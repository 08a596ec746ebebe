//! `imgarc archive SOURCE`: archive one image.

use super::Ctx;
use crate::archive::{archive, ArchiveRequest};
use crate::cli::ArchiveArgs;
use crate::repository::lock::Lock;
use crate::util::human_bytes;
use anyhow::Result;
use std::collections::BTreeMap;

pub fn run(ctx: &Ctx, args: ArchiveArgs) -> Result<()> {
    let digests = crate::digest::parse_list(&args.digest.join(","))?;
    let (repo, mut index) = ctx.open()?;
    let _lock = Lock::acquire(repo.backend().clone(), false, "archive")?;
    let src = crate::source::open(&args.source)?;
    let req = ArchiveRequest {
        name: args.name.unwrap_or(src.default_name),
        tags: args.tags,
        source: src.source,
        digests,
        expected_digests: BTreeMap::new(),
        expected_size: src.size,
        metadata: Default::default(),
        declared_format: args.disk_format,
        qcow2_policy: crate::format::qcow2::Policy {
            allow_backing_file_opaque: args.allow_backing_file_opaque,
            allow_data_file_opaque: args.allow_data_file_opaque,
            ..Default::default()
        },
    };
    let pb = ctx.out.bar(src.size, "archive");
    let r = archive(&repo, &mut index, src.reader, req, &pb)?;
    pb.finish_and_clear();
    ctx.emit(&serde_json::to_value(&r)?, || {
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
            s.push_str(&format!("  {k} {v}\n"));
        }
        s
    });
    Ok(())
}
