//! Byte-exact rebuild of the original file from a recipe, as one sequential output stream
//! (so it can feed an upload directly). Compressed clusters are recompressed in parallel
//! (rayon) in windows, written in order.
use super::codec;
use super::error::ImageError;
use super::recipe::{compressed_check, Recipe, Segment};
use super::RebuildSource;
use rayon::prelude::*;
use std::io::Write;

const BUF: usize = 1 << 20;

/// Read the guest cluster at `g` zero-padded to `cs` past the virtual size.
pub(crate) fn read_cluster(src: &mut dyn RebuildSource, g: u64, cs: usize, vsize: u64) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; cs];
    let n = (cs as u64).min(vsize.saturating_sub(g)) as usize;
    if n > 0 {
        src.read_guest(g, &mut v[..n])?;
    }
    Ok(v)
}

/// The rebuild's windows: ranges of segments holding up to 16 MiB of
/// compressed clusters each, whose clusters are read (and recompressed in
/// parallel) before the window is written.
fn windows(r: &Recipe) -> Vec<std::ops::Range<usize>> {
    let per_window = ((16usize << 20) >> r.cluster_bits).max(4);
    let mut out = Vec::new();
    let mut i = 0;
    while i < r.segments.len() {
        let mut j = i;
        let mut compressed = 0;
        while j < r.segments.len() && compressed < per_window {
            compressed += usize::from(matches!(r.segments[j], Segment::Compressed { .. }));
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

/// The guest ranges `(offset, length)` that [`rebuild`] of `recipe` reads, in
/// the order it reads them (each window's compressed clusters, then its guest
/// segments). A reader told this order ahead (`ChunkReader::follow`) fetches
/// each chunk once even when the image's host order is far from guest order.
pub fn guest_reads(recipe: &[u8]) -> Result<Vec<(u64, u64)>, ImageError> {
    let r = Recipe::decode(recipe)?;
    let cs = 1u64 << r.cluster_bits;
    let mut reads = Vec::new();
    for w in windows(&r) {
        for s in &r.segments[w.clone()] {
            if let Segment::Compressed { guest_off, .. } = *s {
                // As `read_cluster`: the cluster, cut at the virtual size.
                let n = cs.min(r.virtual_size.saturating_sub(guest_off));
                if n > 0 {
                    reads.push((guest_off, n));
                }
            }
        }
        for s in &r.segments[w] {
            if let Segment::Guest { len, guest_off } = *s {
                if len > 0 {
                    reads.push((guest_off, len));
                }
            }
        }
    }
    Ok(reads)
}

/// Rebuilds the original file byte-exactly as a sequential stream; returns bytes written.
/// Reads the guest in the order [`guest_reads`] gives.
pub fn rebuild(recipe: &[u8], src: &mut dyn RebuildSource, out: &mut dyn Write) -> Result<u64, ImageError> {
    let r = Recipe::decode(recipe)?;
    let cs = 1usize << r.cluster_bits;
    let mut buf = vec![0u8; BUF];
    let mut written = 0u64;
    for w in windows(&r) {
        let (i, j) = (w.start, w.end);
        let mut jobs = Vec::new();
        for s in &r.segments[w] {
            if let Segment::Compressed { guest_off, .. } = *s {
                jobs.push(read_cluster(src, guest_off, cs, r.virtual_size)?);
            }
        }
        let codecs: Vec<u8> = r.segments[i..j]
            .iter()
            .filter_map(|s| match s {
                Segment::Compressed { codec, .. } => Some(*codec),
                _ => None,
            })
            .collect();
        let mut comp =
            jobs.par_iter().zip(codecs.par_iter()).map(|(data, &c)| codec::recompress(c, data, cs - 1)).collect::<Vec<_>>().into_iter();
        for s in &r.segments[i..j] {
            match *s {
                Segment::Zero { len } => {
                    buf.fill(0);
                    write_in_pieces(out, &mut buf, len, |_, _| Ok(()))?;
                }
                Segment::Literal { len, lit_off } => {
                    write_in_pieces(out, &mut buf, len, |done, piece| src.read_literal(lit_off + done, piece))?
                }
                Segment::Guest { len, guest_off } => {
                    write_in_pieces(out, &mut buf, len, |done, piece| src.read_guest(guest_off + done, piece))?
                }
                Segment::Compressed { len, guest_off, codec, check } => {
                    let c = comp.next().flatten().ok_or_else(|| {
                        ImageError::Rebuild(format!("codec {codec} failed for the cluster at guest offset {guest_off:#x}"))
                    })?;
                    let lib = if codec == codec::CODEC_ZLIB { "zlib" } else { "zstd" };
                    if c.len() as u64 != len {
                        return Err(ImageError::Rebuild(format!(
                            "recompressing the cluster at guest offset {guest_off:#x} (host offset {written:#x}) gave {} bytes, the original had {len}: the linked {lib} differs from the one used at ingest",
                            c.len(),
                        )));
                    }
                    // Same length is not same bytes: compare with the check recorded at ingest.
                    if check.is_some_and(|want| compressed_check(&c) != want) {
                        return Err(ImageError::Rebuild(format!(
                            "recompressing the cluster at guest offset {guest_off:#x} (host offset {written:#x}) gave other bytes than the original (recorded check differs): the linked {lib} differs from the one used at ingest"
                        )));
                    }
                    out.write_all(&c)?;
                }
            }
            written += s.len();
        }
    }
    Ok(written)
}

/// Writes `len` bytes in pieces of at most `buf.len()`, each filled by
/// `fill(bytes already written, piece)` first (a no-op leaves `buf` as it is).
fn write_in_pieces<W: Write + ?Sized>(
    out: &mut W,
    buf: &mut [u8],
    len: u64,
    mut fill: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<(), ImageError> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        fill(done, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}
