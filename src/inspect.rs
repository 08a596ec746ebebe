//! Inspect: what an image is — its format and that format's structure (sizes, subformat,
//! grain/block/cluster size, allocation, flags) — read from a file or standard input (nothing
//! stored) or from a snapshot's record, and its prose rendering.
//!
//! A file is inspected by running the same decomposer `archive` runs into a sink that only
//! counts ([`CountingSink`]): QCOW2 through `format::qcow2::decompose`, every other container
//! through `format::decompose`. What the decomposer returns as `info` is the report; this
//! module adds only what every format shares (`format`, `detected`, `file_len`,
//! `stored_guest_bytes`, `decomposed`). A format imgarc does not decompose is reported as such.

use crate::format::{self, detect, qcow2, FormatKind};
use crate::index::Index;
use crate::repository::snapshot::Layout;
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Read;

/// The `imgarc inspect` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct InspectOptions {
    /// An image file (or -), or a snapshot id / unique prefix
    pub target: String,
    /// The format the image is declared as (raw, qcow2, vmdk, vdi, vhd, vhdx, iso; Glance's
    /// rules): it must agree with what the bytes are, and a declared raw image is never decomposed
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
/// object: the decomposer's `info` (always `format`, `virtual_size`, `subformat` for a
/// decomposed container) or the snapshot's record of it.
pub fn inspect(opts: &InspectOptions, open_index: &dyn Fn() -> Result<Index>) -> Result<Value> {
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

impl format::DecomposeSink for CountingSink {
    fn guest(&mut self, _off: u64, data: &[u8]) -> std::io::Result<()> {
        self.guest_bytes += data.len() as u64;
        Ok(())
    }
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.literal_bytes += data.len() as u64;
        Ok(())
    }
}

/// Why a detected format's guest disk is not reported: the words `inspect` and its JSON use.
fn not_decomposed(kind: FormatKind) -> String {
    format!("imgarc does not decompose {} images: an archive stores the file as opaque bytes, not its guest disk", kind.name())
}

fn inspect_source(args: &InspectOptions) -> Result<Value> {
    let mut src = crate::source::open(&args.target)?;
    let mut head = vec![0u8; 64 << 10];
    let n = crate::source::read_full(&mut src.reader, &mut head).context("reading the image header")?;
    head.truncate(n);
    let detected = detect::detect(&head);
    let kind = detect::decide(args.disk_format.as_deref(), &detected)?;
    let mut input = std::io::Cursor::new(head).chain(src.reader);
    let mut sink = CountingSink::default();
    let policy = qcow2::Policy::default();
    let mut v = if kind == FormatKind::Qcow2 {
        let d = qcow2::decompose(&mut input, src.size, &policy, &mut sink)?;
        let mut v = serde_json::to_value(&d.info)?;
        v["subformat"] = format!("v{}", d.info.version).into();
        v
    } else if format::decomposes(kind) {
        let d = format::decompose(kind, &mut input, src.size, &policy, &mut sink)?;
        let mut v = match d.info {
            Value::Object(_) => d.info,
            other => serde_json::json!({ "info": other }),
        };
        // The fields every container reports, from the decomposition where its info lacks them.
        v["format"] = kind.name().into();
        v["virtual_size"] = d.virtual_size.into();
        if v.get("subformat").is_none() {
            v["subformat"] = Value::Null;
        }
        v["literal_stream_bytes"] = d.literal_stream_bytes.into();
        v["recipe_bytes"] = (d.recipe.len() as u64).into();
        if let Some(why) = d.opaque {
            v["opaque"] = why.into();
        }
        v
    } else {
        let size = match src.size {
            Some(s) => s,
            None => std::io::copy(&mut input, &mut std::io::sink())?,
        };
        let mut v = serde_json::json!({
            "format": kind.name(),
            "file_len": size,
            "virtual_size": if kind.is_guest_disk() { Some(size) } else { detected.virtual_size },
        });
        if !kind.is_guest_disk() {
            v["decomposed"] = false.into();
            v["note"] = not_decomposed(kind).into();
        }
        v["detected"] = serde_json::to_value(&detected)?;
        return Ok(v);
    };
    // Whatever the decomposer left unread (nothing, for a well-formed image) still counts as file length.
    let rest = std::io::copy(&mut input, &mut std::io::sink())?;
    if v.get("file_len").and_then(Value::as_u64).is_none() {
        v["file_len"] = src.size.unwrap_or(rest).into();
    }
    v["decomposed"] = true.into();
    v["detected"] = serde_json::to_value(&detected)?;
    v["stored_guest_bytes"] = sink.guest_bytes.into();
    Ok(v)
}

fn inspect_snapshot(index: &Index, target: &str) -> Result<Value> {
    let id = index.resolve_snapshot(target)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let mut v = snap.image.clone().unwrap_or_else(|| serde_json::json!({}));
    if !v.is_object() {
        v = serde_json::json!({ "info": v });
    }
    v["snapshot"] = id.to_hex().into();
    v["format"] = snap.format.clone().into();
    v["file_len"] = snap.logical_bytes.into();
    v["virtual_size"] = snap.virtual_bytes.into();
    v["stored_guest_bytes"] = snap.guest.data_bytes.into();
    if snap.format == "qcow2" && v.get("subformat").is_none() {
        if let Some(version) = v.get("version").and_then(Value::as_u64) {
            v["subformat"] = format!("v{version}").into();
        }
    }
    let (layout, decomposed) = match &snap.layout {
        Layout::Raw => ("raw", false),
        Layout::Qcow2 { .. } => ("qcow2", true),
        Layout::Container { .. } => ("container", true),
    };
    v["layout"] = layout.into();
    let kind = FormatKind::from_name(&snap.format);
    if !decomposed && !kind.is_some_and(FormatKind::is_guest_disk) {
        v["decomposed"] = false.into();
        v["note"] = kind.map_or_else(|| format!("{} is not a format imgarc knows", snap.format), not_decomposed).into();
    } else if decomposed {
        v["decomposed"] = true.into();
    }
    Ok(v)
}

/// The prose of an inspect report: one `key: value` line per field, generic over the JSON so
/// that every format's `info` renders without a format-specific printer. Nested objects are
/// flattened to dotted keys (`detected.kind`), arrays of scalars joined with `, `, arrays of
/// objects numbered (`extents.0.type`); null fields are left out.
pub fn prose(v: &Value) -> String {
    let mut lines = Vec::new();
    flatten("", v, &mut lines);
    // What every format has comes first; the rest in key order.
    let rank = |k: &str| LEADING.iter().position(|l| *l == k).unwrap_or(LEADING.len());
    lines.sort_by_key(|(k, _)| rank(k));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0).min(40);
    lines.iter().map(|(k, val)| format!("{k:>width$}: {val}\n")).collect()
}

/// The fields `prose` puts first, in this order.
const LEADING: &[&str] = &["format", "subformat", "virtual_size", "file_len", "snapshot", "decomposed", "opaque", "note"];

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, val) in m {
                flatten(&key(k), val, out);
            }
        }
        Value::Array(a) if a.iter().all(|e| !e.is_object() && !e.is_array()) => {
            let items: Vec<String> = a.iter().map(scalar).collect();
            out.push((prefix.to_string(), if items.is_empty() { "none".into() } else { items.join(", ") }));
        }
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                flatten(&key(&i.to_string()), e, out);
            }
        }
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_is_generic_over_the_json() {
        let v = serde_json::json!({
            "format": "vmdk",
            "virtual_size": 67108864u64,
            "subformat": "streamOptimized",
            "grain_size": 65536,
            "flags": ["compressed", "markers"],
            "parent": null,
            "detected": {"kind": "vmdk", "all": ["vmdk"]},
            "extents": [{"type": "SPARSE", "sectors": 131072}],
        });
        let p = prose(&v);
        let first: Vec<&str> = p.lines().take(3).map(|l| l.split(':').next().unwrap().trim()).collect();
        assert_eq!(first, ["format", "subformat", "virtual_size"], "{p}");
        for line in [
            "format: vmdk",
            "virtual_size: 67108864",
            "subformat: streamOptimized",
            "flags: compressed, markers",
            "detected.kind: vmdk",
            "detected.all: vmdk",
            "extents.0.type: SPARSE",
            "extents.0.sectors: 131072",
        ] {
            assert!(p.lines().any(|l| l.trim_start() == line), "{line:?} missing in\n{p}");
        }
        assert!(!p.contains("parent"), "null fields are left out:\n{p}");
        assert_eq!(prose(&serde_json::json!({"a": []})).trim(), "a: none");
    }

    #[test]
    fn a_container_imgarc_does_not_decompose_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.luks");
        let mut b = vec![0u8; 8192];
        b[..4].copy_from_slice(b"LUKS");
        b[4..6].copy_from_slice(b"\xba\xbe");
        std::fs::write(&p, &b).unwrap();
        let v = inspect_source(&InspectOptions { target: p.to_str().unwrap().into(), disk_format: None }).unwrap();
        assert_eq!(v["format"], "luks");
        assert_eq!(v["decomposed"], false);
        assert!(v["note"].as_str().unwrap().contains("does not decompose luks"), "{v}");
        assert_eq!(v["file_len"], 8192);
        // Declared raw: never probed, the file is the disk.
        let v = inspect_source(&InspectOptions { target: p.to_str().unwrap().into(), disk_format: Some("raw".into()) }).unwrap();
        assert_eq!(v["format"], "raw");
        assert_eq!(v["virtual_size"], 8192);
        assert!(v.get("note").is_none(), "{v}");
        // Declared otherwise: refused.
        let e = inspect_source(&InspectOptions { target: p.to_str().unwrap().into(), disk_format: Some("vdi".into()) }).unwrap_err();
        assert!(format!("{e:#}").contains("declared disk_format"), "{e:#}");
    }
}
