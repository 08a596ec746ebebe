//! LVM2 physical volumes and the logical volumes in them.
//!
//! A PV carries a label in one of its first four sectors (`LABELONE`, type
//! `LVM2 001`, CRC over the rest of the sector), a PV header (its UUID, data
//! and metadata area locations), and a metadata area: a 512-byte
//! `mda_header` (magic ` LVM2 x[5A%r0N*>`, CRC) whose first raw location
//! points at the current text metadata in a circular buffer. The text
//! (`config`) names the VG, its PVs by id, and each LV's segments.
//!
//! Only what maps plainly onto extents of PVs on this disk is readable:
//! `striped` segments (one stripe is linear). An LV needing a PV that is not
//! on this disk, or a segment of another type (thin, snapshot, raid, mirror,
//! cache, …), or the COW store of an old-style snapshot is listed with a
//! description saying why, and its bytes refuse every read: never wrong bytes.

pub mod config;

use super::{crc32, le32, le64, read_bytes, FsError, ReadAt, Volume};
use config::{Section, Value};
use std::sync::Arc;

const SECTOR: u64 = 512;
/// The seed of LVM's CRC (`INITIAL_CRC` in lib/misc/crc.c).
const LVM_CRC_SEED: u32 = 0xf597_a6cf;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// Segments of one LV and LVs of one VG read at most.
const MAX_SEGMENTS: usize = 4096;
const MAX_STRIPES: usize = 128;

/// LVM's checksum: CRC-32 register seeded with `INITIAL_CRC`, not inverted
/// (label sector from byte 20, `mda_header` from byte 4, metadata text).
pub fn lvm_crc(data: &[u8]) -> u32 {
    crc32::update(LVM_CRC_SEED, data)
}

/// A PV found on the disk, with the VG metadata it carries.
pub struct PhysicalVolume {
    /// Where the PV starts on the disk, and its length.
    pub start: u64,
    pub len: u64,
    /// The PV UUID from the label (32 characters, no dashes).
    pub uuid: String,
    /// The VG's name and id, its metadata sequence number, and the VG section.
    pub vg_name: String,
    pub vg_id: String,
    pub seqno: i64,
    pub vg: Section,
}

impl PhysicalVolume {
    pub fn vg_name(&self) -> &str {
        &self.vg_name
    }
}

/// The PV at `[start, start + len)` of `disk`, or `None` when there is no
/// LVM2 label. A label that is there but bad, or metadata that cannot be
/// read, is an error naming what.
pub fn probe(disk: &dyn ReadAt, start: u64, len: u64) -> Result<Option<PhysicalVolume>, FsError> {
    for s in 0..4u64 {
        if (s + 1) * SECTOR > len {
            break;
        }
        let Some(sector) = read_bytes(disk, start + s * SECTOR, SECTOR as usize)? else { break };
        if &sector[0..8] != LABEL_ID {
            continue;
        }
        return label(disk, start, len, s, &sector).map(Some);
    }
    Ok(None)
}

/// A `LABELONE` sector `s`: checks it, reads the PV header and metadata.
fn label(disk: &dyn ReadAt, start: u64, len: u64, s: u64, sector: &[u8]) -> Result<PhysicalVolume, FsError> {
    let bad = |what: String| FsError::Malformed(format!("LVM2 label in sector {s}: {what}"));
    let sector_xl = le64(sector, 8);
    if sector_xl != s {
        return Err(bad(format!("says it is in sector {sector_xl}")));
    }
    let (stored, computed) = (le32(sector, 16), lvm_crc(&sector[20..]));
    if stored != computed {
        return Err(bad(format!("CRC {stored:#010x}, computed {computed:#010x}")));
    }
    if &sector[24..32] != LABEL_TYPE {
        return Err(bad(format!("type {:?}, not \"LVM2 001\"", String::from_utf8_lossy(&sector[24..32]))));
    }
    let at = le32(sector, 20) as usize;
    // The PV header: UUID (32), device size (8), then two lists of
    // (offset, size) pairs ended by a zero pair: data areas, metadata areas.
    if !(32..=SECTOR as usize - 40).contains(&at) {
        return Err(bad(format!("PV header offset {at}")));
    }
    let uuid = String::from_utf8_lossy(&sector[at..at + 32]).into_owned();
    let mut pos = at + 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        loop {
            if pos + 16 > SECTOR as usize {
                return Err(bad("PV header area lists run past the sector".into()));
            }
            let (offset, size) = (le64(sector, pos), le64(sector, pos + 8));
            pos += 16;
            if offset == 0 && size == 0 {
                break;
            }
            list.push((offset, size));
        }
    }
    let [_data_areas, metadata_areas] = lists;
    let mut why = Vec::new();
    for (offset, size) in &metadata_areas {
        match metadata(disk, start, len, *offset, *size) {
            Ok(Some(text)) => return pv_from_text(start, len, uuid, &text),
            Ok(None) => why.push(format!("metadata area at {offset}: holds no metadata")),
            Err(e) => why.push(format!("metadata area at {offset}: {e}")),
        }
    }
    if metadata_areas.is_empty() {
        why.push("no metadata area on this PV".into());
    }
    Err(FsError::Unsupported(format!("LVM2 PV {uuid}: {}", why.join("; "))))
}

/// The current metadata text of the metadata area at `offset` (bytes from
/// the PV's start, `size` long), or `None` when it is empty or ignored.
fn metadata(disk: &dyn ReadAt, start: u64, len: u64, offset: u64, size: u64) -> Result<Option<Vec<u8>>, FsError> {
    let bad = |what: String| FsError::Malformed(format!("mda_header: {what}"));
    let fits = offset.checked_add(size).is_some_and(|end| end <= len);
    if !fits || size < 2 * SECTOR {
        return Err(bad(format!("area of {size} bytes at {offset} does not fit the PV ({len} bytes)")));
    }
    let Some(h) = read_bytes(disk, start + offset, SECTOR as usize)? else {
        return Err(bad("passes the disk's end".into()));
    };
    let (stored, computed) = (le32(&h, 0), lvm_crc(&h[4..]));
    if stored != computed {
        return Err(bad(format!("CRC {stored:#010x}, computed {computed:#010x}")));
    }
    if &h[4..20] != MDA_MAGIC {
        return Err(bad("magic is not \" LVM2 x[5A%r0N*>\"".into()));
    }
    let (version, h_start, h_size) = (le32(&h, 20), le64(&h, 24), le64(&h, 32));
    if version != 1 {
        return Err(bad(format!("version {version}")));
    }
    if h_start != offset || h_size != size {
        return Err(bad(format!("says it is {h_size} bytes at {h_start}, the PV header says {size} at {offset}")));
    }
    // The first raw location is the committed metadata.
    let (t_off, t_size, t_crc, flags) = (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
    if t_off == 0 || t_size == 0 || flags & 1 != 0 {
        return Ok(None);
    }
    let ring = size - SECTOR;
    if t_off < SECTOR || t_off >= size || t_size > ring || t_size > config::MAX_TEXT as u64 {
        return Err(bad(format!("metadata of {t_size} bytes at {t_off} does not fit the area of {size} bytes")));
    }
    // A circular buffer after the header: text running past the end wraps to just after the header.
    let first = t_size.min(size - t_off);
    let mut text = read_bytes(disk, start + offset + t_off, first as usize)?.ok_or_else(|| bad("text passes the disk's end".into()))?;
    if first < t_size {
        let rest = read_bytes(disk, start + offset + SECTOR, (t_size - first) as usize)?
            .ok_or_else(|| bad("text passes the disk's end".into()))?;
        text.extend_from_slice(&rest);
    }
    let computed = lvm_crc(&text);
    if computed != t_crc {
        return Err(bad(format!("metadata text CRC {t_crc:#010x}, computed {computed:#010x}")));
    }
    Ok(Some(text))
}

/// The PV `uuid` at `[start, start + len)` with the VG of a metadata text
/// (the one top-level section with `physical_volumes`).
pub fn pv_from_text(start: u64, len: u64, uuid: String, text: &[u8]) -> Result<PhysicalVolume, FsError> {
    let top = config::parse(text)?;
    let (vg_name, vg) = top
        .sections()
        .find(|(_, s)| s.section("physical_volumes").is_some())
        .ok_or_else(|| FsError::Malformed("LVM2 metadata text: no volume group section".into()))?;
    Ok(PhysicalVolume {
        start,
        len,
        uuid,
        vg_name: vg_name.to_string(),
        vg_id: vg.str("id").unwrap_or("").to_string(),
        seqno: vg.int("seqno").unwrap_or(0),
        vg: vg.clone(),
    })
}

/// The logical volumes of every VG whose PVs are in `pvs`, each paired with
/// the index (in `pvs`) of the first PV of its VG. Names are `VG/LV`.
pub fn logical_volumes<'a>(
    disk: &Arc<dyn ReadAt + 'a>,
    pvs: &[&PhysicalVolume],
    notes: &mut Vec<String>,
) -> Result<Vec<(usize, Volume<'a>)>, FsError> {
    let mut out = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for (home, pv) in pvs.iter().enumerate() {
        if done.contains(&pv.vg_id.as_str()) {
            continue;
        }
        done.push(&pv.vg_id);
        let group: Vec<&PhysicalVolume> = pvs.iter().copied().filter(|p| p.vg_id == pv.vg_id).collect();
        // The newest metadata of the group speaks for it.
        let newest = group.iter().copied().max_by_key(|p| p.seqno).unwrap_or(pv);
        if group.iter().any(|p| p.seqno != newest.seqno) {
            notes.push(format!("VG {}: PVs carry metadata of different sequence numbers: read seqno {}", newest.vg_name, newest.seqno));
        }
        for lv in vg_volumes(disk, newest, &group, notes)? {
            out.push((home, lv));
        }
    }
    Ok(out)
}

/// A PV of the VG as the metadata names it, and where its extents lie on this disk.
struct PvPlace {
    /// Disk offset of extent 0, and the extent count.
    pe_base: u64,
    pe_count: u64,
}

// Volumes share the disk as `Arc<dyn ReadAt>` (the seam's type); the disk
// (`GuestDisk`) is not Sync, so neither are they, by design.
#[allow(clippy::arc_with_non_send_sync)]
fn vg_volumes<'a>(
    disk: &Arc<dyn ReadAt + 'a>,
    meta: &PhysicalVolume,
    group: &[&PhysicalVolume],
    notes: &mut Vec<String>,
) -> Result<Vec<Volume<'a>>, FsError> {
    let vg_name = &meta.vg_name;
    let bad = |what: String| FsError::Malformed(format!("LVM2 VG {vg_name}: {what}"));
    let extent_sectors = meta.vg.int("extent_size").ok_or_else(|| bad("no extent_size".into()))?;
    let extent_bytes = u64::try_from(extent_sectors)
        .ok()
        .filter(|&e| e > 0 && e <= 1 << 32)
        .and_then(|e| e.checked_mul(SECTOR))
        .ok_or_else(|| bad(format!("extent_size {extent_sectors}")))?;

    // pvN → where it is on this disk (None: not on this disk).
    let mut places: Vec<(String, Option<PvPlace>)> = Vec::new();
    if let Some(pvs) = meta.vg.section("physical_volumes") {
        for (name, s) in pvs.sections() {
            let id: String = s.str("id").unwrap_or("").chars().filter(|&c| c != '-').collect();
            let place = group.iter().find(|p| p.uuid == id).and_then(|p| {
                let pe_start = u64::try_from(s.int("pe_start")?).ok()?;
                let pe_count = u64::try_from(s.int("pe_count")?).ok()?;
                let base = pe_start.checked_mul(SECTOR)?;
                let end = pe_count.checked_mul(extent_bytes)?.checked_add(base)?;
                if end > p.len {
                    return None;
                }
                Some(PvPlace { pe_base: p.start + base, pe_count })
            });
            if place.is_none() && group.iter().any(|p| p.uuid == id) {
                notes.push(format!("VG {vg_name}: {name}: pe_start/pe_count do not fit the PV"));
            }
            places.push((name.to_string(), place));
        }
    }

    let Some(lvs) = meta.vg.section("logical_volumes") else { return Ok(Vec::new()) };
    // Old-style snapshots: their COW store is a visible striped LV whose bytes are not a filesystem.
    let mut cow_stores: Vec<(String, String)> = Vec::new();
    for (_, lv) in lvs.sections() {
        for (_, seg) in lv.sections() {
            if seg.str("type") == Some("snapshot") {
                if let (Some(cow), Some(origin)) = (seg.str("cow_store"), seg.str("origin")) {
                    cow_stores.push((cow.to_string(), origin.to_string()));
                }
            }
        }
    }

    let mut out = Vec::new();
    for (count, (lv_name, lv)) in lvs.sections().enumerate() {
        if count >= MAX_SEGMENTS {
            notes.push(format!("VG {vg_name}: more than {MAX_SEGMENTS} LVs: the rest not listed"));
            break;
        }
        let visible = lv.array("status").is_some_and(|a| a.iter().any(|v| v == &Value::Str("VISIBLE".into())));
        if !visible {
            continue; // a component of another LV (thin pool data, mirror image, snapshot)
        }
        let name = format!("{vg_name}/{lv_name}");
        let mapped = match cow_stores.iter().find(|(cow, _)| cow == lv_name) {
            Some((_, origin)) => Err(format!("the copy-on-write store of a snapshot of {origin}")),
            None => map_lv(lv, extent_bytes, &places),
        };
        let volume = match mapped {
            Ok(m) => Volume {
                name,
                description: m.description(),
                disk_offset: m.segments.first().and_then(|s| s.areas.first().copied()).unwrap_or(0),
                bytes: Arc::new(LvBytes { disk: disk.clone(), size: m.size, segments: m.segments }),
            },
            Err(why) => {
                notes.push(format!("LVM2 LV {name}: unreadable: {why}"));
                let size = lv_size(lv, extent_bytes);
                Volume {
                    name: name.clone(),
                    description: format!("LVM2 LV, unreadable: {why}"),
                    disk_offset: 0,
                    bytes: Arc::new(Unreadable { size, why: format!("LVM2 LV {name}: {why}") }),
                }
            }
        };
        out.push(volume);
    }
    Ok(out)
}

/// The LV's length from its segments' extent counts (for an unreadable LV's size).
fn lv_size(lv: &Section, extent_bytes: u64) -> u64 {
    lv.sections()
        .filter_map(|(_, s)| u64::try_from(s.int("extent_count")?).ok())
        .fold(0u64, |a, n| a.saturating_add(n.saturating_mul(extent_bytes)))
}

/// One segment of an LV in bytes: `[lv_start, lv_start + len)` striped over
/// `areas` (disk offsets) in chunks of `stripe_bytes` (one area: linear).
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    lv_start: u64,
    len: u64,
    stripe_bytes: u64,
    areas: Vec<u64>,
}

struct Mapped {
    size: u64,
    segments: Vec<Segment>,
}

impl Mapped {
    fn description(&self) -> String {
        let max_stripes = self.segments.iter().map(|s| s.areas.len()).max().unwrap_or(1);
        let layout = if max_stripes > 1 { format!("striped ×{max_stripes}") } else { "linear".into() };
        match self.segments.len() {
            1 => format!("LVM2 LV ({layout})"),
            n => format!("LVM2 LV ({layout}, {n} segments)"),
        }
    }
}

/// Maps an LV's segments onto disk offsets, or says why it cannot be read.
fn map_lv(lv: &Section, extent_bytes: u64, places: &[(String, Option<PvPlace>)]) -> Result<Mapped, String> {
    let mut segs: Vec<(u64, &Section)> = Vec::new();
    for (name, s) in lv.sections() {
        if segs.len() >= MAX_SEGMENTS {
            return Err(format!("more than {MAX_SEGMENTS} segments"));
        }
        let start = s.int("start_extent").and_then(|v| u64::try_from(v).ok()).ok_or(format!("{name}: bad start_extent"))?;
        segs.push((start, s));
    }
    segs.sort_by_key(|(start, _)| *start);
    let mut next_extent = 0u64;
    let mut segments = Vec::new();
    for (i, (start, s)) in segs.iter().enumerate() {
        let n = i + 1;
        let kind = s.str("type").unwrap_or("(none)");
        if kind != "striped" {
            return Err(format!("segment {n} is of type {kind}, which imgarc does not read"));
        }
        if *start != next_extent {
            return Err(format!("segment {n} starts at extent {start}, the LV so far ends at {next_extent}"));
        }
        let count =
            s.int("extent_count").and_then(|v| u64::try_from(v).ok()).filter(|&c| c > 0).ok_or(format!("segment {n}: bad extent_count"))?;
        let stripes = s.array("stripes").ok_or(format!("segment {n}: no stripes"))?;
        let stripe_count = stripes.len() / 2;
        if stripe_count == 0 || stripes.len() % 2 != 0 || stripe_count > MAX_STRIPES {
            return Err(format!("segment {n}: stripes list of {} values", stripes.len()));
        }
        if s.int("stripe_count").is_some_and(|c| c != stripe_count as i64) {
            return Err(format!("segment {n}: stripe_count does not match its stripes list"));
        }
        let per_stripe = count / stripe_count as u64;
        if per_stripe * stripe_count as u64 != count {
            return Err(format!("segment {n}: {count} extents over {stripe_count} stripes"));
        }
        let stripe_bytes = if stripe_count == 1 {
            0
        } else {
            let sb = s.int("stripe_size").and_then(|v| u64::try_from(v).ok()).and_then(|v| v.checked_mul(SECTOR));
            match sb {
                Some(sb) if sb > 0 && sb.is_power_of_two() && extent_bytes.is_multiple_of(sb) => sb,
                _ => return Err(format!("segment {n}: bad stripe_size")),
            }
        };
        let mut areas = Vec::with_capacity(stripe_count);
        for pair in stripes.chunks_exact(2) {
            let (Value::Str(pv), Value::Int(pe)) = (&pair[0], &pair[1]) else {
                return Err(format!("segment {n}: stripes list is not (\"pvN\", extent) pairs"));
            };
            let place = match places.iter().find(|(name, _)| name == pv) {
                Some((_, Some(place))) => place,
                Some((_, None)) => return Err(format!("segment {n} lies on {pv}, which is not on this disk")),
                None => return Err(format!("segment {n} names {pv}, which the VG does not list")),
            };
            let pe = u64::try_from(*pe).map_err(|_| format!("segment {n}: extent {pe}"))?;
            if pe.checked_add(per_stripe).is_none_or(|end| end > place.pe_count) {
                return Err(format!("segment {n}: extents {pe}+{per_stripe} pass the end of {pv} ({} extents)", place.pe_count));
            }
            // Fits: pe_base + pe_count * extent_bytes was checked against the PV.
            areas.push(place.pe_base + pe * extent_bytes);
        }
        let lv_start = next_extent.checked_mul(extent_bytes).ok_or("LV size overflows")?;
        let len = count.checked_mul(extent_bytes).ok_or("LV size overflows")?;
        segments.push(Segment { lv_start, len, stripe_bytes, areas });
        next_extent = next_extent.checked_add(count).ok_or("LV size overflows")?;
    }
    if segments.is_empty() {
        return Err("no segments".into());
    }
    let size = next_extent.checked_mul(extent_bytes).ok_or("LV size overflows")?;
    Ok(Mapped { size, segments })
}

/// An LV's bytes: its segments mapped onto the disk.
struct LvBytes<'a> {
    disk: Arc<dyn ReadAt + 'a>,
    size: u64,
    segments: Vec<Segment>,
}

impl LvBytes<'_> {
    /// Where LV byte `offset` is on the disk, and how many bytes from there are contiguous.
    fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let i = self.segments.partition_point(|s| s.lv_start + s.len <= offset);
        let s = self.segments.get(i)?;
        let within = offset - s.lv_start;
        if s.areas.len() == 1 {
            return Some((s.areas[0] + within, s.len - within));
        }
        let n = s.areas.len() as u64;
        let chunk = within / s.stripe_bytes;
        let in_chunk = within % s.stripe_bytes;
        let area = *s.areas.get((chunk % n) as usize)?;
        Some((area + (chunk / n) * s.stripe_bytes + in_chunk, (s.stripe_bytes - in_chunk).min(s.len - within)))
    }
}

impl ReadAt for LvBytes<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        crate::guest::check_bounds(self.size, offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (disk_at, run) = self.locate(at).ok_or_else(|| std::io::Error::other(format!("LV offset {at} maps nowhere")))?;
            let n = run.min((buf.len() - done) as u64) as usize;
            self.disk.read_at(disk_at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// The bytes of an LV imgarc cannot read: every read fails, saying why.
struct Unreadable {
    size: u64,
    why: String,
}

impl ReadAt for Unreadable {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, self.why.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_mapping_alternates_chunks() {
        let disk: Arc<dyn ReadAt> = Arc::new((0..64u32).map(|i| i as u8).collect::<Vec<u8>>());
        // Two stripes of 4-byte chunks: areas at 0 and 32.
        let lv = LvBytes { disk, size: 16, segments: vec![Segment { lv_start: 0, len: 16, stripe_bytes: 4, areas: vec![0, 32] }] };
        let mut b = [0u8; 16];
        lv.read_at(0, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3, 32, 33, 34, 35, 4, 5, 6, 7, 36, 37, 38, 39]);
        let mut c = [0u8; 3];
        lv.read_at(3, &mut c).unwrap();
        assert_eq!(c, [3, 32, 33]);
        assert!(lv.read_at(15, &mut c).is_err());
    }
}
