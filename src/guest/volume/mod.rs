//! The volumes on a guest disk: partitions of a GPT or MBR table (logical
//! MBR partitions inside extended ones, p5 upwards), LVM2 logical volumes
//! inside a partition (`pN/VG/LV`), or the bare disk when it has no table.
//! Parses untrusted bytes: bounded, checked, never panics. Reads only the
//! table and metadata sectors (a few KiB), never partition contents.
//!
//! * `gpt`: protective MBR, primary header at LBA 1 (backup at the last LBA
//!   when the primary is bad), CRC32 of the header and of the entry array.
//! * `mbr`: four primary slots and the EBR chain of an extended partition.
//! * `lvm`: LVM2 physical volume label, metadata area, the text metadata
//!   (`lvm::config`) and the mapping of logical volumes onto extents.
//!
//! Naming: partition N is `pN` by its table slot (GPT entry index + 1, MBR
//! slot 1–4, logical partitions from 5). An MBR extended partition is a
//! container, not a volume: it is named in [`Layout::notes`]. A partition
//! that is an LVM2 physical volume is listed as `pN` (it holds no
//! filesystem) and its logical volumes follow as `pN/VG/LV`.

mod crc32;
mod gpt;
pub mod lvm;
mod mbr;

use super::{FsError, ReadAt, Slice};
use std::sync::Arc;

/// One volume: a name for paths and a view of its bytes.
pub struct Volume<'a> {
    /// `p1`, `p5`, `p2/vg0/root`, or empty for the bare disk.
    pub name: String,
    /// What the table says it is (`GPT Linux filesystem`, `MBR 0x83`, `LVM2 LV`, …).
    pub description: String,
    /// Where it starts on the guest disk (the first extent of a logical volume).
    pub disk_offset: u64,
    pub bytes: Arc<dyn ReadAt + 'a>,
}

/// What a disk holds: its partition table (if any), conditions worth
/// telling (backup GPT header used, clipped partitions, unreadable LVs), and
/// the volumes in path order.
pub struct Layout<'a> {
    /// `GPT`, `MBR`, or `none` for a disk without a partition table.
    pub table: &'static str,
    pub notes: Vec<String>,
    pub volumes: Vec<Volume<'a>>,
}

/// Every volume on `disk`, in path order. A disk with a partition table yields
/// its partitions (an LVM2 physical volume partition yields its logical volumes
/// too); a disk without one yields one unnamed volume, the disk itself.
pub fn volumes<'a>(disk: Arc<dyn ReadAt + 'a>) -> Result<Vec<Volume<'a>>, FsError> {
    Ok(layout(disk)?.volumes)
}

/// One partition as a table describes it, in bytes on the disk.
struct Partition {
    /// Table slot number: `pN`.
    number: u32,
    description: String,
    start: u64,
    len: u64,
}

/// The partition table and volumes of `disk` (what `volumes` returns, plus
/// what an `inspect`-like listing shows).
// Volumes share the disk as `Arc<dyn ReadAt>` (the seam's type); the disk
// (`GuestDisk`) is not Sync, so neither are they, by design.
#[allow(clippy::arc_with_non_send_sync)]
pub fn layout<'a>(disk: Arc<dyn ReadAt + 'a>) -> Result<Layout<'a>, FsError> {
    let mut notes = Vec::new();
    let (table, parts) = if let Some(parts) = gpt::read(&*disk, &mut notes)? {
        ("GPT", parts)
    } else if let Some(parts) = mbr::read(&*disk, &mut notes)? {
        ("MBR", parts)
    } else {
        ("none", Vec::new())
    };

    let mut volumes = Vec::new();
    // (volume index, name prefix, PV) of every LVM2 physical volume found.
    let mut pvs: Vec<(usize, String, lvm::PhysicalVolume)> = Vec::new();
    if table == "none" {
        volumes.push(Volume { name: String::new(), description: "whole disk".into(), disk_offset: 0, bytes: disk.clone() });
        match lvm::probe(&*disk, 0, disk.size()) {
            Ok(Some(pv)) => {
                volumes[0].description = format!("whole disk, LVM2 PV of VG \"{}\"", pv.vg_name());
                pvs.push((0, String::new(), pv));
            }
            Ok(None) => {}
            Err(e) => {
                volumes[0].description.push_str(", LVM2 PV label unusable");
                notes.push(format!("the bare disk: LVM2 PV label unusable: {e}"));
            }
        }
    }
    for p in parts {
        let name = format!("p{}", p.number);
        let disk_size = disk.size();
        let mut description = p.description;
        let mut len = p.len;
        // A partition passing the disk's end is clipped to it, with a note: a
        // truncated image still gives what it holds, reads past it fail.
        let end = p.start.saturating_add(p.len);
        if end > disk_size {
            len = disk_size.saturating_sub(p.start);
            let note = format!(
                "{name}: the table says {} bytes at offset {}, the disk ends at {disk_size}: clipped to {len} bytes",
                p.len, p.start
            );
            description.push_str(" (clipped at the disk's end)");
            notes.push(note);
        }
        let start = p.start.min(disk_size);
        let bytes: Arc<dyn ReadAt + 'a> = Arc::new(Slice::new(disk.clone(), start, len)?);
        // A PV whose label or metadata is bad stays a plain partition, with a note.
        match lvm::probe(&*disk, start, len) {
            Ok(Some(pv)) => {
                description.push_str(&format!(", LVM2 PV of VG \"{}\"", pv.vg_name()));
                pvs.push((volumes.len(), name.clone(), pv));
            }
            Ok(None) => {}
            Err(e) => {
                description.push_str(", LVM2 PV label unusable");
                notes.push(format!("{name}: LVM2 PV label unusable: {e}"));
            }
        }
        volumes.push(Volume { name, description, disk_offset: start, bytes });
    }

    // Logical volumes, each after the first physical volume of its group on
    // this disk (a VG may span several partitions of one disk).
    let lvs = lvm::logical_volumes(&disk, &pvs.iter().map(|(_, _, pv)| pv).collect::<Vec<_>>(), &mut notes)?;
    let mut out: Vec<Volume<'a>> = Vec::with_capacity(volumes.len() + lvs.len());
    let mut lvs_by_pv: Vec<Vec<Volume<'a>>> = (0..pvs.len()).map(|_| Vec::new()).collect();
    for (pv_index, mut lv) in lvs {
        let prefix = &pvs[pv_index].1;
        if !prefix.is_empty() {
            lv.name = format!("{prefix}/{}", lv.name);
        }
        lvs_by_pv[pv_index].push(lv);
    }
    let mut pending: Vec<(usize, Vec<Volume<'a>>)> = pvs.iter().map(|(vi, _, _)| *vi).zip(lvs_by_pv).collect();
    for (i, v) in volumes.into_iter().enumerate() {
        out.push(v);
        for (vi, lvs) in pending.iter_mut() {
            if *vi == i {
                out.append(lvs);
            }
        }
    }
    Ok(Layout { table, notes, volumes: out })
}

/// Reads `len` bytes at `offset`, or `None` when they pass the end of `disk`
/// (a table that does not fit is no table). `len` is always a small constant
/// or a bounded field: callers check it first.
fn read_bytes(disk: &dyn ReadAt, offset: u64, len: usize) -> Result<Option<Vec<u8>>, FsError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= disk.size() => {
            let mut buf = vec![0u8; len];
            disk.read_at(offset, &mut buf)?;
            Ok(Some(buf))
        }
        _ => Ok(None),
    }
}

/// Little-endian fields of a sector whose length the caller checked.
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

#[cfg(test)]
mod tests;
