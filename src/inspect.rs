//! Inspect: what an image is — format, sizes, QCOW2 features and flags — read
//! from a file or standard input (nothing stored) or from a snapshot's record.

use crate::format::{detect, qcow2};
use crate::index::Index;
use anyhow::{Context, Result};
use std::io::Read;

/// The `imgarc inspect` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct InspectOptions {
    /// An image file (or -), or a snapshot id / unique prefix
    pub target: String,
    /// The format the image is declared as; a declared raw image is never decomposed
    #[cfg_attr(feature = "clap", arg(long))]
    pub disk_format: Option<String>,
}

impl InspectOptions {
    /// True when the target names a file (or `-`), not a snapshot.
    pub fn is_file(&self) -> bool {
        self.target == "-" || std::path::Path::new(&self.target).exists()
    }
}

/// Describes the target: a file when [`InspectOptions::is_file`], else the
/// snapshot it names in `index` (opened by `open_index` only then). One JSON
/// object; its fields are the QCOW2 header info or the snapshot's record.
pub fn inspect(opts: &InspectOptions, open_index: &dyn Fn() -> Result<Index>) -> Result<serde_json::Value> {
    if opts.is_file() {
        inspect_source(opts)
    } else {
        inspect_snapshot(&open_index()?, &opts.target)
    }
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

fn inspect_source(args: &InspectOptions) -> Result<serde_json::Value> {
    let mut src = crate::source::open(&args.target)?;
    let mut head = vec![0u8; 64 << 10];
    let n = crate::source::read_full(&mut src.reader, &mut head).context("reading the image header")?;
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

fn inspect_snapshot(index: &Index, target: &str) -> Result<serde_json::Value> {
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
