//! The VDI writer (conversion on restore): a VDI 1.1 image with 1 MiB blocks, `dynamic` (image type 1, the default
//! of VirtualBox and qemu-img) or `fixed` (type 2, qemu-img's `static=on`), in the layout qemu-img writes: the
//! 0x200-byte header, the block map at 0x200 (padded to a sector), then the data blocks in guest order.
//!
//! The output is one sequential pass. The header and the map come first and name the allocated blocks, and a block
//! is allocated only when it holds a non-zero byte (an all-zero block stays unallocated, as qemu-img convert leaves
//! it), so a dynamic image reads the source twice: a scan that keeps one bit per block (each block read in 64 KiB pieces
//! up to its first non-zero byte), then the writing pass. A fixed image needs no scan.
use super::header::{self, Header, BLOCK_FREE, FORMAT};
use crate::chunking::is_zero;
use crate::format::{ImageError, RebuildSource, WriteOptions};
use std::io::Write;

pub const BLOCK_SIZE: u32 = 1 << 20;
/// VirtualBox's pre-header text (qemu writes "<<< QEMU VM Virtual Disk Image >>>\n"; neither reads it).
pub const PRE_HEADER: &str = "<<< Oracle VM VirtualBox Disk Image >>>\n";
/// Where the block map starts: right after the 0x200-byte header, as qemu-img writes it.
const OFFSET_BMAP: u64 = 0x200;
/// Largest disk written: the block map, held in memory, stays at 256 MiB (64 Mi blocks of 1 MiB = 64 TiB), and
/// the data offset fits the header's u32 field.
const MAX_BLOCKS: u64 = 64 << 20;

/// Writes the guest disk (`ranges`: allocated guest ranges, sorted, disjoint) as a VDI image; returns bytes written.
pub fn write(
    opts: &WriteOptions,
    virtual_size: u64,
    ranges: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    out: &mut dyn Write,
) -> Result<u64, ImageError> {
    let fixed = opts.subformat_of("vdi", &["dynamic", "fixed"], "VDI has no compressed blocks")? == "fixed";
    let werr = |m: String| ImageError::Writer { format: FORMAT, reason: m };
    // qemu-img rounds the size up to a sector; the rounding reads as zeros.
    let disk_size =
        virtual_size.checked_next_multiple_of(header::SECTOR_SIZE as u64).ok_or_else(|| werr("virtual size overflows".into()))?;
    if disk_size == 0 {
        return Err(werr("a VDI image cannot hold an empty disk".into()));
    }
    let bs = BLOCK_SIZE as u64;
    let blocks = disk_size.div_ceil(bs);
    if blocks > MAX_BLOCKS {
        return Err(werr(format!("virtual size {virtual_size} exceeds the {} bytes imgarc writes as VDI", MAX_BLOCKS * bs)));
    }
    let mut prev_end = 0u64;
    for &(off, len) in ranges {
        if off < prev_end {
            return Err(werr("guest ranges must be sorted and disjoint".into()));
        }
        prev_end = off.saturating_add(len);
    }
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let allocated: Vec<bool> = if fixed { vec![true; blocks as usize] } else { scan(virtual_size, ranges, blocks, src, &mut buf)? };
    let mut map = Vec::with_capacity(blocks as usize * 4);
    let mut next = 0u32;
    for &a in &allocated {
        let e = if a {
            next += 1;
            next - 1
        } else {
            BLOCK_FREE
        };
        map.extend_from_slice(&e.to_le_bytes());
    }
    map.resize((map.len() as u64).next_multiple_of(header::SECTOR_SIZE as u64) as usize, 0);
    let offset_data = OFFSET_BMAP + map.len() as u64;
    let h = Header {
        pre_header: PRE_HEADER.into(),
        header_size: header::HEADER_SIZE_V1,
        image_type: if fixed { header::TYPE_FIXED } else { header::TYPE_NORMAL },
        flags: 0,
        comment: String::new(),
        offset_bmap: OFFSET_BMAP,
        offset_data,
        legacy_chs: [0; 3],
        disk_size,
        block_size: BLOCK_SIZE,
        blocks: blocks as u32,
        blocks_allocated: next,
        // Fresh random uuids (version 4): VirtualBox registers media by uuid, so two restores of one snapshot must
        // not collide. The modification uuid starts out as a second random one, as qemu-img does.
        uuid_create: uuid_v4(),
        uuid_modify: uuid_v4(),
        lchs: None,
    };
    let hdr = header::encode(&h);
    out.write_all(&hdr)?;
    out.write_all(&map)?;
    let mut written = hdr.len() as u64 + map.len() as u64;
    for (block, _) in allocated.iter().enumerate().filter(|x| *x.1) {
        let g = block as u64 * bs;
        read_block(src, g, virtual_size, ranges, &mut buf)?;
        out.write_all(&buf)?;
        written += bs;
    }
    Ok(written)
}

/// Reads the guest block at `g` into `buf` (one block): zeros past the virtual size and outside `ranges` (not read).
fn read_block(src: &mut dyn RebuildSource, g: u64, virtual_size: u64, ranges: &[(u64, u64)], buf: &mut [u8]) -> Result<(), ImageError> {
    buf.fill(0);
    let end = g + buf.len() as u64;
    let first = ranges.partition_point(|&(o, l)| o.saturating_add(l) <= g);
    for &(o, l) in &ranges[first..] {
        if o >= end {
            break;
        }
        let s = o.max(g);
        let e = o.saturating_add(l).min(end).min(virtual_size);
        if s < e {
            src.read_guest(s, &mut buf[(s - g) as usize..(e - g) as usize])?;
        }
    }
    Ok(())
}

/// Which blocks hold a non-zero byte. Each block is read in small pieces up to its first non-zero one, so the scan
/// of a block with data usually costs a fraction of the block.
fn scan(
    virtual_size: u64,
    ranges: &[(u64, u64)],
    blocks: u64,
    src: &mut dyn RebuildSource,
    buf: &mut [u8],
) -> Result<Vec<bool>, ImageError> {
    const PIECE: u64 = 64 << 10;
    let bs = BLOCK_SIZE as u64;
    let mut allocated = vec![false; blocks as usize];
    for &(o, l) in ranges {
        let e = o.saturating_add(l).min(virtual_size);
        let mut at = o;
        while at < e {
            let block = at / bs;
            if allocated[block as usize] {
                at = (block + 1) * bs;
                continue;
            }
            let n = (e - at).min(PIECE).min((block + 1) * bs - at) as usize;
            src.read_guest(at, &mut buf[..n])?;
            if !is_zero(&buf[..n]) {
                allocated[block as usize] = true;
            }
            at += n as u64;
        }
    }
    Ok(allocated)
}

fn uuid_v4() -> [u8; 16] {
    let mut u: [u8; 16] = rand::random();
    // RFC 4122 version and variant; byte 7 is the high byte of the little-endian third field.
    u[7] = (u[7] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
