//! The streaming VHD writer of the conversion on restore: `dynamic` (default) or `fixed`, both
//! in one sequential pass (a dynamic VHD's BAT is known from the allocated ranges before the
//! first block is written, and a fixed VHD's footer only needs the size).
//!
//! The size trap: qemu sizes a VHD by its CHS geometry unless the footer's creator is one it
//! trusts, and CHS cannot express most sizes (64 MiB is not a CHS size). imgarc keeps the guest
//! disk's exact size (rounded up to whole sectors only) and writes creator `qem2`, the creator
//! qemu-img itself writes with `-o force_size=on`, which qemu (2.6 and later, so 7.2 and 10)
//! reads by `current_size`, as Hyper-V, Azure and VirtualBox do anyway. Keeping the size, rather
//! than rounding it up to a CHS size as plain `qemu-img convert` does, keeps a MiB-aligned disk
//! MiB-aligned (Azure refuses fixed VHDs whose size is not a multiple of 1 MiB). The geometry
//! fields still hold the specification's CHS for the size, for tools that show it.
use super::{chs_geometry, Footer, FOOTER_LEN, FORMAT, HEADER_LEN, MAX_SECTORS, SECTOR, SPARSE_COOKIE, TYPE_DYNAMIC, TYPE_FIXED};
use crate::format::out::Out;
use crate::format::{ImageError, RebuildSource, WriteOptions};
use std::io::Write;

/// The block size of a written dynamic VHD: the specification's and qemu's default.
pub(crate) const BLOCK_SIZE: u64 = 2 << 20;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: i64 = 946_684_800;
const BUF: usize = 1 << 20;

impl Out<'_> {
    fn zeros(&mut self, n: u64) -> std::io::Result<()> {
        self.pad_to(self.pos + n)
    }
    /// Guest bytes `[from, to)`: the parts inside `ranges` read from `src`, zeros elsewhere.
    fn guest(&mut self, src: &mut dyn RebuildSource, ranges: &[(u64, u64)], from: u64, to: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let mut at = from;
        let first = ranges.partition_point(|&(o, l)| o.saturating_add(l) <= from);
        for &(o, l) in &ranges[first..] {
            if o >= to {
                break;
            }
            let (s, e) = (o.max(at), o.saturating_add(l).min(to));
            if e <= s {
                continue; // empty, or overlapping what was written (ranges are sorted and disjoint)
            }
            self.zeros(s - at)?;
            let mut p = s;
            while p < e {
                let k = (e - p).min(buf.len() as u64) as usize;
                src.read_guest(p, &mut buf[..k])?;
                self.put(&buf[..k])?;
                p += k as u64;
            }
            at = e;
        }
        Ok(self.zeros(to - at)?)
    }
}

/// The footer of a disk of `size` bytes written now.
fn new_footer(size: u64, disk_type: u32, data_offset: u64) -> Footer {
    let (cylinders, heads, sectors_per_track) = chs_geometry(size / SECTOR);
    Footer {
        features: 2, // "reserved", always set
        version: 0x0001_0000,
        data_offset,
        timestamp: (chrono::Utc::now().timestamp() - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32,
        creator_app: *b"qem2",
        creator_version: 0x0005_0003,
        creator_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        cylinders,
        heads,
        sectors_per_track,
        disk_type,
        checksum: 0,
        uuid: rand::random(),
        saved_state: 0,
    }
}

fn dynamic_header(table_offset: u64, max_entries: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(SPARSE_COOKIE);
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&table_offset.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&max_entries.to_be_bytes());
    h[32..36].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    let c = super::checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    h
}

/// Writes the guest disk as a VHD (see the module doc); returns the bytes written.
pub fn write(
    opts: &WriteOptions,
    virtual_size: u64,
    ranges: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    out: &mut dyn Write,
) -> Result<u64, ImageError> {
    let dynamic = opts.subformat_of("vhd", &["dynamic", "fixed"], "VHD has no compressed blocks")? == "dynamic";
    // VHD sizes are whole sectors: a guest disk of another length is padded with zeros.
    let size = virtual_size.div_ceil(SECTOR) * SECTOR;
    if size / SECTOR > MAX_SECTORS {
        return Err(ImageError::Writer {
            format: FORMAT,
            reason: format!("a {virtual_size}-byte disk exceeds the VHD maximum of 2040 GiB"),
        });
    }
    let mut o = Out::new(out);
    let mut buf = vec![0u8; BUF];
    if !dynamic {
        o.guest(src, ranges, 0, virtual_size, &mut buf)?;
        o.zeros(size - virtual_size)?;
        o.put(&new_footer(size, TYPE_FIXED, u64::MAX).encode())?;
        return Ok(o.pos);
    }
    let entries = size.div_ceil(BLOCK_SIZE);
    let table_offset = (FOOTER_LEN + HEADER_LEN) as u64;
    let bat_len = (entries * 4).div_ceil(SECTOR) * SECTOR;
    let first_block = table_offset + bat_len;
    // A block is allocated when an allocated range touches it; the others stay holes.
    let mut allocated = vec![false; entries as usize];
    for &(off, len) in ranges {
        if len == 0 || off >= virtual_size {
            continue;
        }
        let end = off.saturating_add(len).min(virtual_size);
        for b in off / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE) {
            allocated[b as usize] = true;
        }
    }
    let footer = new_footer(size, TYPE_DYNAMIC, FOOTER_LEN as u64).encode();
    o.put(&footer)?;
    o.put(&dynamic_header(table_offset, entries as u32))?;
    let mut bat = vec![0xffu8; bat_len as usize];
    let mut next = first_block;
    for (i, _) in allocated.iter().enumerate().filter(|(_, a)| **a) {
        bat[i * 4..i * 4 + 4].copy_from_slice(&((next / SECTOR) as u32).to_be_bytes());
        next += SECTOR + BLOCK_SIZE;
    }
    if next / SECTOR > u32::MAX as u64 {
        return Err(ImageError::Writer { format: FORMAT, reason: "the blocks lie beyond the 2 TiB a BAT entry can address".into() });
    }
    o.put(&bat)?;
    // qemu marks every sector of a block it allocates as present; so does imgarc.
    let bitmap = [0xffu8; SECTOR as usize];
    for (i, _) in allocated.iter().enumerate().filter(|(_, a)| **a) {
        let g = i as u64 * BLOCK_SIZE;
        let g_end = (g + BLOCK_SIZE).min(virtual_size);
        o.put(&bitmap)?;
        o.guest(src, ranges, g, g_end, &mut buf)?;
        o.zeros(g + BLOCK_SIZE - g_end)?;
    }
    o.put(&footer)?;
    Ok(o.pos)
}
