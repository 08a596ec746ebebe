//! `cat`: one file's bytes to a writer (a symlink as the path is followed).

use super::{read_file, GuestTree, Target};
use crate::guest::FileType;
use anyhow::{bail, Context, Result};
use std::io::Write;

#[derive(Debug, Clone, Default)]
pub struct CatOptions {
    pub path: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CatReport {
    pub path: String,
    pub size: u64,
    pub warnings: Vec<String>,
    pub bytes_read: u64,
}

/// Writes the file at `opts.path` to `out`.
pub fn cat(tree: &GuestTree, opts: &CatOptions, out: &mut dyn Write) -> Result<CatReport> {
    let found = match tree.resolve(&opts.path, true)? {
        Target::Volumes => bail!("{}: the top of the disk is its volumes, not a file", opts.path),
        Target::File(f) => f,
    };
    if found.meta.file_type != FileType::Regular {
        bail!("{}: not a regular file ({:?})", found.path, found.meta.file_type);
    }
    let fs = tree.fs(found.volume)?;
    read_file(fs, found.ino, found.meta.size, &mut |b| out.write_all(b).context("writing the output"))
        .with_context(|| format!("reading {}", found.path))?;
    out.flush().context("writing the output")?;
    Ok(CatReport { path: found.path, size: found.meta.size, warnings: tree.notes(), bytes_read: tree.bytes_read() })
}
