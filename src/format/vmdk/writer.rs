//! The VMDK writer of `restore --disk-format vmdk`, one sequential pass for both subformats
//! (format-spec/formats/vmdk.md, "Writer"):
//! * `streamOptimized` (default): header with gdOffset = GD_AT_END, descriptor, one grain
//!   marker + zlib `compress()` stream per non-zero grain in guest order, each grain table
//!   (marker + table) after its grains, the grain directory, the footer and the end-of-stream
//!   marker — the layout VMware and VirtualBox stream, so nothing has to be known in advance;
//! * `monolithicSparse`: qemu's layout (header, descriptor, redundant GD + GTs, GD + GTs,
//!   grains): one pass too, because the allocated guest ranges are known before writing.
use super::header::*;
use crate::format::codec;
use crate::format::out::Out;
use crate::format::{ImageError, RebuildSource, WriteOptions};
use rayon::prelude::*;
use std::io::Write;

const F: &str = "vmdk";
/// 64 KiB grains, qemu's and VMware's default.
const GRAIN_SECTORS: u64 = 128;
/// Grains compressed in parallel per window (16 MiB of guest data).
const WINDOW: usize = 256;

impl Out<'_> {
    fn pad_to_sector(&mut self) -> std::io::Result<()> {
        self.pad_to(self.pos.next_multiple_of(SECTOR))
    }
    fn sector(&self) -> Result<u32, ImageError> {
        u32::try_from(self.pos / SECTOR)
            .map_err(|_| ImageError::Writer { format: F, reason: "the image exceeds the 2 TiB a sparse VMDK can address".into() })
    }
}

fn metadata_marker(sectors: u64, typ: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&typ.to_le_bytes());
    m
}

/// Guest grains overlapping `ranges`, ascending, each once.
fn allocated_grains(ranges: &[(u64, u64)], gb: u64) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for &(start, len) in ranges {
        if len == 0 {
            continue;
        }
        for g in start / gb..=(start + len - 1) / gb {
            if v.last() != Some(&g) {
                v.push(g);
            }
        }
    }
    v
}

/// A CID that depends on the disk only (reproducible output).
fn cid_for(virtual_size: u64, grains: &[u64]) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(&virtual_size.to_le_bytes());
    h.update(&(grains.len() as u64).to_le_bytes());
    let v = u32::from_le_bytes(h.finalize().as_bytes()[..4].try_into().expect("4 bytes"));
    if v == u32::MAX {
        0
    } else {
        v
    }
}

pub fn write(
    opts: &WriteOptions,
    virtual_size: u64,
    ranges: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    out: &mut dyn Write,
) -> Result<u64, ImageError> {
    let stream = opts.subformat_of(
        "vmdk",
        &["streamOptimized", "monolithicSparse"],
        "streamOptimized grains are always compressed, monolithicSparse grains never",
    )? == "streamOptimized";
    if virtual_size % SECTOR != 0 {
        return Err(ImageError::Writer { format: F, reason: format!("the virtual size {virtual_size} is not a multiple of 512 bytes") });
    }
    let gb = GRAIN_SECTORS * SECTOR;
    let grains = allocated_grains(ranges, gb);
    let mut w = Out::new(out);
    if stream {
        write_stream(&mut w, virtual_size, &grains, src)?;
    } else {
        write_sparse(&mut w, virtual_size, &grains, src)?;
    }
    w.flush()?;
    Ok(w.pos)
}

fn base_header(capacity: u64) -> Header {
    Header {
        version: 1,
        flags: FLAG_NL_DETECT,
        capacity,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: 0,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: 0,
        gd_offset: 0,
        over_head: 0,
        unclean_shutdown: 0,
        compress_algorithm: 0,
    }
}

fn read_grain(src: &mut dyn RebuildSource, g: u64, gb: u64, virtual_size: u64) -> Result<Vec<u8>, ImageError> {
    let len = gb.min(virtual_size - g * gb) as usize;
    let mut v = vec![0u8; len];
    src.read_guest(g * gb, &mut v)?;
    Ok(v)
}

fn write_stream(w: &mut Out, virtual_size: u64, grains: &[u64], src: &mut dyn RebuildSource) -> Result<(), ImageError> {
    let capacity = virtual_size / SECTOR;
    let gb = GRAIN_SECTORS * SECTOR;
    let desc = write_descriptor("streamOptimized", capacity, cid_for(virtual_size, grains));
    let desc_sectors = (desc.len() as u64).div_ceil(SECTOR);
    let mut h = base_header(capacity);
    h.version = 3;
    h.flags |= FLAG_COMPRESSED | FLAG_MARKERS;
    h.compress_algorithm = COMPRESS_DEFLATE;
    h.descriptor_size = desc_sectors;
    h.gd_offset = GD_AT_END;
    h.over_head = 1 + desc_sectors;
    w.put(&h.encode())?;
    w.put(desc.as_bytes())?;
    w.pad_to_sector()?;

    let mut gd = vec![0u32; h.gt_count() as usize];
    let mut gt: Option<(u64, Vec<u32>)> = None;
    let flush_gt = |w: &mut Out, gt: &mut Option<(u64, Vec<u32>)>, gd: &mut Vec<u32>| -> Result<(), ImageError> {
        if let Some((t, entries)) = gt.take() {
            if entries.iter().any(|&e| e != 0) {
                w.put(&metadata_marker(GTES_PER_GT * 4 / SECTOR, MARKER_GT))?;
                gd[t as usize] = w.sector()?;
                let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
                w.put(&bytes)?;
            }
        }
        Ok(())
    };
    for window in grains.chunks(WINDOW) {
        let data = window.iter().map(|&g| read_grain(src, g, gb, virtual_size)).collect::<Result<Vec<_>, _>>()?;
        let comp: Vec<Option<Vec<u8>>> = data
            .par_iter()
            .map(|d| if crate::chunking::is_zero(d) { None } else { codec::deflate_vmdk(d, codec::deflate_vmdk_bound(d.len())) })
            .collect();
        for ((&g, d), c) in window.iter().zip(&data).zip(comp) {
            let Some(c) = c else {
                if !crate::chunking::is_zero(d) {
                    return Err(ImageError::Writer { format: F, reason: format!("zlib failed on the grain at guest offset {}", g * gb) });
                }
                continue;
            };
            let t = g / GTES_PER_GT;
            if gt.as_ref().map(|x| x.0) != Some(t) {
                flush_gt(w, &mut gt, &mut gd)?;
                gt = Some((t, vec![0u32; GTES_PER_GT as usize]));
            }
            let sector = w.sector()?;
            if let Some((_, e)) = gt.as_mut() {
                e[(g % GTES_PER_GT) as usize] = sector;
            }
            w.put(&(g * GRAIN_SECTORS).to_le_bytes())?;
            w.put(&(c.len() as u32).to_le_bytes())?;
            w.put(&c)?;
            w.pad_to_sector()?;
        }
    }
    flush_gt(w, &mut gt, &mut gd)?;
    w.put(&metadata_marker(h.gd_sectors(), MARKER_GD))?;
    let gd_sector = w.sector()?;
    let bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    w.put(&bytes)?;
    w.pad_to_sector()?;
    w.put(&metadata_marker(1, MARKER_FOOTER))?;
    let footer = Header { gd_offset: gd_sector as u64, ..h };
    w.put(&footer.encode())?;
    Ok(w.put(&[0u8; 512])?)
}

fn write_sparse(w: &mut Out, virtual_size: u64, grains: &[u64], src: &mut dyn RebuildSource) -> Result<(), ImageError> {
    let capacity = virtual_size / SECTOR;
    let gb = GRAIN_SECTORS * SECTOR;
    let desc = write_descriptor("monolithicSparse", capacity, cid_for(virtual_size, grains));
    let mut h = base_header(capacity);
    h.flags |= FLAG_RGD;
    h.descriptor_size = 20;
    let (gt_count, gd_sectors, gt_sectors) = (h.gt_count(), h.gd_sectors(), GTES_PER_GT * 4 / SECTOR);
    h.rgd_offset = 1 + h.descriptor_size;
    h.gd_offset = h.rgd_offset + gd_sectors + gt_sectors * gt_count;
    h.over_head = (h.gd_offset + gd_sectors + gt_sectors * gt_count).next_multiple_of(GRAIN_SECTORS);
    let last = h.over_head + grains.len() as u64 * GRAIN_SECTORS;
    if last > u32::MAX as u64 {
        return Err(ImageError::Writer { format: F, reason: "the image exceeds the 2 TiB a sparse VMDK can address".into() });
    }
    w.put(&h.encode())?;
    w.put(desc.as_bytes())?;
    w.put(&vec![0u8; (h.descriptor_size * SECTOR) as usize - desc.len()])?;
    for dir in [h.rgd_offset, h.gd_offset] {
        let gd: Vec<u8> = (0..gt_count).flat_map(|t| ((dir + gd_sectors + t * gt_sectors) as u32).to_le_bytes()).collect();
        w.put(&gd)?;
        w.pad_to_sector()?;
        // Grain tables: entry k of the allocated list sits at over_head + k * grain.
        let mut k = 0usize;
        for t in 0..gt_count {
            let mut gt = vec![0u8; (GTES_PER_GT * 4) as usize];
            while k < grains.len() && grains[k] / GTES_PER_GT == t {
                let j = (grains[k] % GTES_PER_GT) as usize;
                gt[j * 4..j * 4 + 4].copy_from_slice(&((h.over_head + k as u64 * GRAIN_SECTORS) as u32).to_le_bytes());
                k += 1;
            }
            w.put(&gt)?;
        }
    }
    w.put(&vec![0u8; (h.over_head * SECTOR - w.pos) as usize])?;
    for &g in grains {
        let mut d = read_grain(src, g, gb, virtual_size)?;
        d.resize(gb as usize, 0);
        w.put(&d)?;
    }
    Ok(())
}
