//! `imgarc inspect SOURCE|SNAPSHOT`: what an image is — format, sizes, QCOW2
//! features and flags — read from a file (nothing stored) or from a snapshot.

use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::format::{detect, qcow2};
use std::io::Read;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An image file (or -), or a snapshot id / unique prefix
    pub target: String,
    /// The format the image is declared as; a declared raw image is never decomposed
    #[arg(long)]
    pub disk_format: Option<String>,
}

/// Discards the decomposer's output, counting what a snapshot would store.
#[derive(Default)]
struct CountingSink {
    guest_bytes: u64,
    literal_bytes: u64,
}

impl qcow2::DecomposeSink for CountingSink {
    fn guest(&mut self, _off: u64, data: &[u8]) -> std::io::Result<()> {
        self.guest_bytes += data.len() as u64;
        Ok(())
    }
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.literal_bytes += data.len() as u64;
        Ok(())
    }
}

pub fn run(ctx: &Ctx, args: InspectArgs) -> Result<()> {
    let looks_like_file = args.target == "-" || std::path::Path::new(&args.target).exists();
    let json = if looks_like_file { inspect_source(&args)? } else { inspect_snapshot(ctx, &args.target)? };
    ctx.emit(&json, || {
        let mut s = String::new();
        if let Some(obj) = json.as_object() {
            for (k, v) in obj {
                if !v.is_null() {
                    s.push_str(&format!("{k:>28}: {}\n", v.to_string().trim_matches('"')));
                }
            }
        }
        s
    });
    Ok(())
}

fn inspect_source(args: &InspectArgs) -> Result<serde_json::Value> {
    let mut src = imgarc::source::open(&args.target)?;
    let mut head = vec![0u8; 64 << 10];
    let n = imgarc::source::read_full(&mut src.reader, &mut head).context("reading the image header")?;
    head.truncate(n);
    let detected = detect::detect(&head);
    let kind = detect::decide(args.disk_format.as_deref(), &detected)?;
    let mut input = std::io::Cursor::new(head).chain(src.reader);
    if kind != detect::FormatKind::Qcow2 {
        let size = match src.size {
            Some(s) => s,
            None => std::io::copy(&mut input, &mut std::io::sink())?,
        };
        return Ok(
            serde_json::json!({"format": kind.name(), "detected": detected, "file_len": size, "virtual_size": (kind == detect::FormatKind::Raw).then_some(size)}),
        );
    }
    let mut sink = CountingSink::default();
    let d = qcow2::decompose(&mut input, src.size, &qcow2::Policy::default(), &mut sink)?;
    let mut v = serde_json::to_value(&d.info)?;
    v["stored_guest_bytes"] = sink.guest_bytes.into();
    Ok(v)
}

fn inspect_snapshot(ctx: &Ctx, target: &str) -> Result<serde_json::Value> {
    let (_repo, index) = ctx.open()?;
    let id = index.resolve_snapshot(target)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let mut v = snap.image.clone().unwrap_or_else(|| serde_json::json!({}));
    v["snapshot"] = id.to_hex().into();
    v["format"] = snap.format.clone().into();
    v["file_len"] = snap.logical_bytes.into();
    v["virtual_size"] = snap.virtual_bytes.into();
    v["stored_guest_bytes"] = snap.guest.data_bytes.into();
    Ok(v)
}
