//! Sources of image bytes: a local file or standard input (Glance arrives in
//! its own module). A source is read once, sequentially.

use crate::repository::snapshot::Source;
use anyhow::{Context, Result};
use std::io::Read;

pub struct OpenedSource {
    pub reader: Box<dyn Read + Send>,
    /// Length in bytes, when known before reading.
    pub size: Option<u64>,
    pub source: Source,
    /// A default snapshot name (file name without directories).
    pub default_name: String,
}

pub fn open(spec: &str) -> Result<OpenedSource> {
    if spec == "-" {
        return Ok(OpenedSource { reader: Box::new(std::io::stdin()), size: None, source: Source::Stdin, default_name: "stdin".into() });
    }
    let path = std::path::Path::new(spec);
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {spec}"))?;
    let meta = file.metadata().with_context(|| format!("cannot stat {spec}"))?;
    anyhow::ensure!(!meta.is_dir(), "{spec} is a directory, not an image file");
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(OpenedSource {
        reader: Box::new(file),
        size: meta.is_file().then(|| meta.len()),
        source: Source::File { path: abs.display().to_string() },
        default_name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.to_string()),
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
