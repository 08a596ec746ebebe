//! Streaming writer of a clean qcow2 v3 image (no backing file, no data file, no snapshots,
//! refcount_bits 16, 64 KiB clusters) from the allocated guest extents — the "conversion on
//! restore" path. Output is strictly sequential (no seeking), so it can feed an upload.
//!
//! Layout (qemu-img's own order): header, refcount table, refcount blocks, L1, then for each
//! 512 MiB guest region its L2 table followed by its data clusters in guest order. The whole
//! layout is computed before the first byte is written. With compression the compressed sizes
//! are needed for the layout, so the data is compressed twice (a sizing pass that keeps only
//! lengths, then the writing pass) instead of buffering compressed data.
use super::error::Qcow2Error;
use super::RebuildSource;
use crate::format::codec;
use crate::format::rebuild::read_cluster;
use rayon::prelude::*;
use std::io::Write;

const CB: u32 = 16;
const CS: u64 = 1 << CB;
const L2_ENTRIES: u64 = CS / 8;
const SPAN: u64 = CS * L2_ENTRIES;
const RC_PER_BLOCK: u64 = CS * 8 / 16;
const COPIED: u64 = 1 << 63;
const BATCH: usize = 256;

/// Streaming writer of a clean QCOW2 v3 from the allocated guest extents `(offset, length)`
/// (sorted, non-overlapping; clipped at the virtual size). Returns bytes written.
pub fn write_qcow2(
    virtual_size: u64,
    extents: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    compress: bool,
    out: &mut dyn Write,
) -> Result<u64, Qcow2Error> {
    let werr = |m: String| Qcow2Error::Writer(m);
    if virtual_size > (1 << 56) {
        return Err(werr(format!("virtual size {virtual_size} too large")));
    }
    // Guest clusters touched by the extents.
    let mut clusters: Vec<u64> = Vec::new();
    let mut prev_end = 0u64;
    for &(off, len) in extents {
        if off < prev_end {
            return Err(werr("extents must be sorted and non-overlapping".into()));
        }
        let end = off.saturating_add(len).min(virtual_size);
        prev_end = off.saturating_add(len);
        if off >= end {
            continue;
        }
        for c in off / CS..end.div_ceil(CS) {
            if clusters.last() != Some(&c) {
                clusters.push(c);
            }
        }
    }
    // Per-cluster stored length: 0 = not allocated (all zero), CS = uncompressed, else compressed.
    let mut lens: Vec<u32> = vec![CS as u32; clusters.len()];
    if compress {
        for (ci, chunk) in clusters.chunks(BATCH).enumerate() {
            let data = chunk.iter().map(|&c| read_cluster(src, c * CS, CS as usize, virtual_size)).collect::<Result<Vec<_>, _>>()?;
            let l: Vec<u32> = data.par_iter().map(|d| stored_len(d)).collect();
            lens[ci * BATCH..ci * BATCH + l.len()].copy_from_slice(&l);
        }
    }
    // Relative layout of the data area: per region an L2 table, then its clusters.
    let mut rel_pos: Vec<u64> = vec![0; clusters.len()];
    let mut regions: Vec<(u64, u64)> = Vec::new(); // (l1 index, rel L2 offset)
    let mut cur = 0u64;
    for (i, &c) in clusters.iter().enumerate() {
        if lens[i] == 0 {
            continue;
        }
        let r = c / L2_ENTRIES;
        if regions.last().map(|x| x.0) != Some(r) {
            cur = cur.next_multiple_of(CS);
            regions.push((r, cur));
            cur += CS;
        }
        if lens[i] as u64 == CS {
            cur = cur.next_multiple_of(CS);
        }
        rel_pos[i] = cur;
        cur += lens[i] as u64;
    }
    let rel_clusters = cur.div_ceil(CS);
    // Metadata sizes (fixed point: refcount blocks cover themselves).
    let l1_size = virtual_size.div_ceil(SPAN);
    let l1c = (l1_size * 8).div_ceil(CS);
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + rb + l1c + rel_clusters;
        let nrb = total.div_ceil(RC_PER_BLOCK);
        let nrt = (nrb * 8).div_ceil(CS);
        if (nrb, nrt) == (rb, rt) {
            break;
        }
        (rb, rt) = (nrb, nrt);
    }
    let meta_clusters = 1 + rt + rb + l1c;
    let data_start = meta_clusters * CS;
    let total = meta_clusters + rel_clusters;
    // Refcounts of the data area.
    let mut rc: Vec<u16> = vec![0; rel_clusters as usize];
    let mut bump = |a: u64, b: u64| -> Result<(), Qcow2Error> {
        for c in a / CS..b.div_ceil(CS) {
            let slot = rc.get_mut(c as usize).ok_or_else(|| werr("internal layout error".into()))?;
            *slot = slot.checked_add(1).ok_or_else(|| werr("refcount overflow".into()))?;
        }
        Ok(())
    };
    for &(_, l2) in &regions {
        bump(l2, l2 + CS)?;
    }
    for (i, &l) in lens.iter().enumerate() {
        if l != 0 {
            bump(rel_pos[i], rel_pos[i] + l as u64)?;
        }
    }
    let mut o = crate::format::out::Out::new(out);
    // Header.
    let mut hdr = vec![0u8; CS as usize];
    hdr[0..4].copy_from_slice(b"QFI\xfb");
    hdr[4..8].copy_from_slice(&3u32.to_be_bytes());
    hdr[20..24].copy_from_slice(&CB.to_be_bytes());
    hdr[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    hdr[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    hdr[40..48].copy_from_slice(&((1 + rt + rb) * CS).to_be_bytes());
    hdr[48..56].copy_from_slice(&CS.to_be_bytes());
    hdr[56..60].copy_from_slice(&(rt as u32).to_be_bytes());
    hdr[96..100].copy_from_slice(&4u32.to_be_bytes());
    hdr[100..104].copy_from_slice(&112u32.to_be_bytes());
    o.put(&hdr)?;
    // Refcount table.
    let mut t = Vec::with_capacity((rt * CS) as usize);
    for b in 0..rb {
        t.extend_from_slice(&((1 + rt + b) * CS).to_be_bytes());
    }
    t.resize((rt * CS) as usize, 0);
    o.put(&t)?;
    // Refcount blocks.
    let mut blk = vec![0u8; CS as usize];
    for b in 0..rb {
        blk.fill(0);
        for i in 0..RC_PER_BLOCK {
            let c = b * RC_PER_BLOCK + i;
            if c >= total {
                break;
            }
            let v = if c < meta_clusters { 1 } else { rc[(c - meta_clusters) as usize] };
            blk[(i * 2) as usize..(i * 2 + 2) as usize].copy_from_slice(&v.to_be_bytes());
        }
        o.put(&blk)?;
    }
    // L1.
    let mut l1 = vec![0u8; (l1c * CS) as usize];
    for &(r, l2) in &regions {
        l1[(r * 8) as usize..(r * 8 + 8) as usize].copy_from_slice(&((data_start + l2) | COPIED).to_be_bytes());
    }
    o.put(&l1)?;
    // Regions.
    let mut i = 0usize;
    for &(r, l2rel) in &regions {
        let start = i;
        while i < clusters.len() && clusters[i] / L2_ENTRIES == r {
            i += 1;
        }
        let idx = start..i;
        let mut l2 = vec![0u8; CS as usize];
        for k in idx.clone() {
            let l = lens[k] as u64;
            if l == 0 {
                continue;
            }
            let host = data_start + rel_pos[k];
            let e = if l == CS {
                host | COPIED
            } else {
                let nsect = ((host + l - 1) >> 9) - (host >> 9);
                (1 << 62) | (nsect << (62 - (CB - 8))) | host
            };
            let slot = ((clusters[k] % L2_ENTRIES) * 8) as usize;
            l2[slot..slot + 8].copy_from_slice(&e.to_be_bytes());
        }
        o.pad_to(data_start + l2rel)?;
        o.put(&l2)?;
        for chunk in clusters[idx.clone()].chunks(BATCH).zip(lens[idx.clone()].chunks(BATCH)).zip(rel_pos[idx].chunks(BATCH)) {
            let ((cl, ln), rp) = chunk;
            let mut data = Vec::with_capacity(cl.len());
            for (&c, &l) in cl.iter().zip(ln) {
                data.push(if l == 0 { Vec::new() } else { read_cluster(src, c * CS, CS as usize, virtual_size)? });
            }
            let blobs: Vec<Option<Vec<u8>>> = data
                .par_iter()
                .zip(ln.par_iter())
                .map(|(d, &l)| if l == 0 || l as u64 == CS { None } else { codec::deflate_qemu(d, CS as usize - 1) })
                .collect();
            for (k, &l) in ln.iter().enumerate() {
                if l == 0 {
                    continue;
                }
                o.pad_to(data_start + rp[k])?;
                if l as u64 == CS {
                    o.put(&data[k])?;
                } else {
                    match &blobs[k] {
                        Some(b) if b.len() == l as usize => o.put(b)?,
                        _ => return Err(werr("compression is not deterministic between passes".into())),
                    }
                }
            }
        }
    }
    o.pad_to(data_start + rel_clusters * CS)?;
    Ok(o.pos)
}

/// Stored length of one cluster in the sizing pass: 0 if all zero, compressed length if it
/// fits in less than a cluster (qemu's rule), else a full cluster.
fn stored_len(d: &[u8]) -> u32 {
    if crate::chunking::is_zero(d) {
        return 0;
    }
    match codec::deflate_qemu(d, CS as usize - 1) {
        Some(v) => v.len() as u32,
        None => CS as u32,
    }
}
