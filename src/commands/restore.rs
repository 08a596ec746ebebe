//! `imgarc restore SNAPSHOT -o PATH|-`: rebuild an image.

use super::Ctx;
use crate::cli::RestoreArgs;
use crate::restore::{restore, Target};
use crate::util::human_bytes;
use anyhow::{Context, Result};

pub fn run(ctx: &Ctx, args: RestoreArgs) -> Result<()> {
    let (repo, index) = ctx.open()?;
    let id = index.resolve_snapshot(&args.snapshot)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let to_stdout = args.output == "-";
    let target = if to_stdout {
        Target::Stream(Box::new(std::io::BufWriter::with_capacity(1 << 20, std::io::stdout())))
    } else {
        Target::File(args.output.clone().into())
    };
    let pb = ctx.out.bar(Some(snap.logical_bytes), "restore");
    let opts = crate::restore::RestoreOptions { disk_format: args.disk_format.clone(), compress: args.compress };
    let r =
        restore(&repo, &index, &snap, target, &opts, &pb).with_context(|| format!("restoring snapshot {} ({})", id.short(), snap.name))?;
    pb.finish_and_clear();
    let json = serde_json::to_value(&r)?;
    let prose = format!(
        "restored {} ({}) to {} in {:.1} s ({}/s); digests verified: {}\n",
        &id.to_hex()[..16],
        human_bytes(r.bytes),
        args.output,
        r.seconds,
        human_bytes((r.bytes as f64 / r.seconds.max(1e-6)) as u64),
        if r.digests.is_empty() { "none recorded".to_string() } else { r.digests.keys().cloned().collect::<Vec<_>>().join(", ") }
    );
    if to_stdout {
        // stdout carries the image: the report goes to stderr.
        if ctx.out.json {
            eprintln!("{}", serde_json::to_string_pretty(&json)?);
        } else if !ctx.out.quiet {
            eprint!("{prose}");
        }
    } else {
        ctx.emit(&json, || prose);
    }
    Ok(())
}
