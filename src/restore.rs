//! Restoring a snapshot: rebuilds the image byte-exactly from its extents.
//!
//! Chunks are fetched in batches: neighbouring chunks of one pack are read
//! with one ranged read, decompressed and verified against their BLAKE3 ids in
//! parallel, then written in order by a writer thread (sparse `pwrite` for a
//! file, zeros for holes on a stream) that also feeds the digest threads.
//! Every digest the snapshot records is checked at the end; a file target is
//! written under a temporary name and renamed only when everything matched.

use crate::digest::{Digesters, Piece};
use crate::ids::Id;
use crate::index::{Index, Location};
use crate::repository::extents::Extent;
use crate::repository::pack::decode_blob;
use crate::repository::snapshot::{Layout, Snapshot};
use crate::repository::{pack_key, Repository};
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BATCH_BYTES: u64 = 32 << 20;
/// Chunks of one pack closer than this are fetched with one read.
const COALESCE_GAP: u64 = 256 << 10;
const MAX_READ: u64 = 16 << 20;

pub enum Target {
    File(PathBuf),
    Stream(Box<dyn Write + Send>),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    pub bytes: u64,
    pub seconds: f64,
    pub digests: BTreeMap<String, String>,
}

/// A chunk that could not be read intact from any of its locations.
#[derive(Debug, thiserror::Error)]
#[error("chunk {id} (guest offset {offset}) is damaged or missing: {cause}")]
pub struct DamagedChunk {
    pub id: Id,
    pub offset: u64,
    pub cause: String,
}

/// Fetches the data of `extents` (each with its candidate locations), in order.
pub fn fetch_batch(
    repo: &Repository,
    extents: &[(Extent, Vec<Location>)],
) -> Result<Vec<Vec<u8>>, DamagedChunk> {
    // Group by the first location's pack, coalescing neighbours into ranged reads.
    let mut by_pack: HashMap<Id, Vec<usize>> = HashMap::new();
    for (i, (e, locs)) in extents.iter().enumerate() {
        match locs.first() {
            Some(l) => by_pack.entry(l.pack).or_default().push(i),
            None => {
                return Err(DamagedChunk {
                    id: e.id,
                    offset: e.offset,
                    cause: "not in the index".into(),
                })
            }
        }
    }
    let mut reads: Vec<(Id, Vec<usize>)> = Vec::new();
    for (pack, mut idxs) in by_pack {
        idxs.sort_by_key(|&i| extents[i].1[0].entry.offset);
        let mut group: Vec<usize> = Vec::new();
        for i in idxs {
            if let Some(&first) = group.first() {
                let start = extents[first].1[0].entry.offset;
                let last = &extents[*group.last().expect("non-empty")].1[0].entry;
                let this = &extents[i].1[0].entry;
                let end = last.offset + last.stored_len as u64;
                if this.offset > end + COALESCE_GAP
                    || this.offset + this.stored_len as u64 - start > MAX_READ
                {
                    reads.push((pack, std::mem::take(&mut group)));
                }
            }
            group.push(i);
        }
        if !group.is_empty() {
            reads.push((pack, group));
        }
    }
    let results: Vec<Vec<(usize, Result<Vec<u8>, DamagedChunk>)>> = reads
        .par_iter()
        .map(|(pack, group)| {
            let first = &extents[group[0]].1[0].entry;
            let last = &extents[*group.last().expect("non-empty")].1[0].entry;
            let start = first.offset;
            let len = last.offset + last.stored_len as u64 - start;
            let span = repo.backend().get_range(&pack_key(pack), start, len);
            group
                .iter()
                .map(|&i| {
                    let (e, locs) = &extents[i];
                    let l = &locs[0];
                    let primary = match &span {
                        Ok(bytes) => {
                            let s = (l.entry.offset - start) as usize;
                            decode_blob(&l.entry, &bytes[s..s + l.entry.stored_len as usize])
                        }
                        Err(err) => Err(anyhow!("pack {}: {err}", pack.short())),
                    };
                    let data = match primary {
                        Ok(d) => Ok(d),
                        Err(first_err) => {
                            // Fall back to any other copy of the chunk.
                            let mut cause = format!("{first_err:#}");
                            let mut found = None;
                            for alt in &locs[1..] {
                                match repo.read_blob(&alt.pack, &alt.entry) {
                                    Ok(d) => {
                                        found = Some(d);
                                        break;
                                    }
                                    Err(e2) => cause = format!("{cause}; {e2:#}"),
                                }
                            }
                            found.ok_or(DamagedChunk {
                                id: e.id,
                                offset: e.offset,
                                cause,
                            })
                        }
                    };
                    (i, data.and_then(|d| check_len(e, d)))
                })
                .collect()
        })
        .collect();
    let mut out: Vec<Option<Vec<u8>>> = vec![None; extents.len()];
    for (i, r) in results.into_iter().flatten() {
        out[i] = Some(r?);
    }
    Ok(out
        .into_iter()
        .map(|d| d.expect("every extent fetched"))
        .collect())
}

fn check_len(e: &Extent, d: Vec<u8>) -> Result<Vec<u8>, DamagedChunk> {
    if d.len() != e.len as usize {
        return Err(DamagedChunk {
            id: e.id,
            offset: e.offset,
            cause: format!("chunk holds {} bytes, the extent needs {}", d.len(), e.len),
        });
    }
    Ok(d)
}

enum Write_ {
    Data(u64, Vec<u8>),
}

pub fn restore(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    target: Target,
    progress: &ProgressBar,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    if !matches!(snap.layout, Layout::Raw) {
        bail!(
            "snapshot layout {:?} needs the QCOW2 module, which this build does not have",
            snap.layout
        );
    }
    let extents = index
        .load_extents(repo, &snap.guest)
        .context("cannot read the snapshot's extent list")?;
    let size = snap.logical_bytes;
    let digest_names: Vec<String> = snap.digests.keys().cloned().collect();
    let digesters = Digesters::start(&digest_names);

    let final_path = match &target {
        Target::File(p) => Some(p.clone()),
        Target::Stream(_) => None,
    };
    let (tmp_path, file) = match &target {
        Target::File(path) => {
            let tmp = partial_path(path);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            f.set_len(size)
                .with_context(|| format!("cannot size {}", tmp.display()))?;
            (Some(tmp), Some(f))
        }
        Target::Stream(_) => (None, None),
    };
    let mut stream = match target {
        Target::Stream(w) => Some(w),
        Target::File(_) => None,
    };

    let (tx, rx) = bounded::<Write_>(2 * 128);
    let pb = progress.clone();
    let writer = std::thread::Builder::new()
        .name("restore-write".into())
        .spawn(move || -> Result<Digesters> {
            let mut pos = 0u64;
            let zeros = vec![0u8; 1 << 20];
            let fill = |to: u64,
                        stream: &mut Option<Box<dyn Write + Send>>,
                        digesters: &Digesters,
                        pos: &mut u64|
             -> Result<()> {
                if to > *pos {
                    digesters.feed(Piece::Zeros(to - *pos));
                    if let Some(w) = stream.as_mut() {
                        let mut n = to - *pos;
                        while n > 0 {
                            let k = n.min(zeros.len() as u64) as usize;
                            w.write_all(&zeros[..k]).context("writing the output")?;
                            n -= k as u64;
                        }
                    }
                    *pos = to;
                }
                Ok(())
            };
            for Write_::Data(off, data) in rx {
                fill(off, &mut stream, &digesters, &mut pos)?;
                match (&file, stream.as_mut()) {
                    (Some(f), _) => f
                        .write_all_at(&data, off)
                        .context("writing the output file")?,
                    (None, Some(w)) => w.write_all(&data).context("writing the output")?,
                    (None, None) => unreachable!("a target is either a file or a stream"),
                }
                pos = off + data.len() as u64;
                let len = data.len();
                digesters.feed(Piece::Data(Arc::new(data), 0..len));
                pb.set_position(pos);
            }
            fill(size, &mut stream, &digesters, &mut pos)?;
            if let Some(w) = stream.as_mut() {
                w.flush().context("flushing the output")?;
            }
            if let Some(f) = &file {
                f.sync_all().context("syncing the output file")?;
            }
            pb.set_position(size);
            Ok(digesters)
        })?;

    let fetch = (|| -> Result<()> {
        let mut start = 0;
        while start < extents.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < extents.len() && (bytes < BATCH_BYTES || end == start) {
                bytes += extents[end].len as u64;
                end += 1;
            }
            let with_locs: Vec<(Extent, Vec<Location>)> = extents[start..end]
                .iter()
                .map(|e| Ok((*e, index.locations(&e.id)?)))
                .collect::<Result<_>>()?;
            let datas = fetch_batch(repo, &with_locs).map_err(|d| damaged_error(repo, index, d))?;
            for ((e, _), d) in with_locs.into_iter().zip(datas) {
                if tx.send(Write_::Data(e.offset, d)).is_err() {
                    return Ok(()); // the writer failed; its error is reported below
                }
            }
            start = end;
        }
        Ok(())
    })();
    drop(tx);
    let written = writer
        .join()
        .map_err(|_| anyhow!("restore writer panicked"));
    let result = fetch
        .and_then(|()| written?)
        .and_then(|d| d.finish())
        .and_then(|digests| {
            for (alg, want) in &snap.digests {
                if digests.get(alg) != Some(want) {
                    bail!(
                        "restored bytes have {alg} {}, the snapshot recorded {want}",
                        digests.get(alg).map_or("?", |s| s.as_str())
                    );
                }
            }
            Ok(digests)
        });
    match (result, tmp_path, final_path) {
        (Ok(digests), tmp, path) => {
            if let (Some(tmp), Some(path)) = (tmp, path) {
                std::fs::rename(&tmp, &path).with_context(|| {
                    format!("cannot move the restored image to {}", path.display())
                })?;
            }
            Ok(RestoreOutcome {
                bytes: size,
                seconds: started.elapsed().as_secs_f64(),
                digests,
            })
        }
        (Err(e), tmp, _) => {
            if let Some(tmp) = tmp {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e)
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".imgarc-partial");
    path.with_file_name(name)
}

/// Turns a damaged chunk into an error naming every snapshot that uses it.
fn damaged_error(repo: &Repository, index: &Index, d: DamagedChunk) -> anyhow::Error {
    let users = crate::check::snapshots_using(repo, index, &[d.id]).unwrap_or_default();
    let names: Vec<String> = users
        .get(&d.id)
        .into_iter()
        .flatten()
        .map(|(id, name)| format!("{} ({name})", id.short()))
        .collect();
    anyhow!(
        "{d}; snapshots affected: {}; run `imgarc check --read-data`",
        if names.is_empty() {
            "unknown".into()
        } else {
            names.join(", ")
        }
    )
}
