//! The volumes on a guest disk: partitions of a GPT or MBR table (logical
//! MBR partitions inside extended ones, p5 upwards), LVM2 logical volumes
//! inside a partition (`pN/VG/LV`), or the bare disk when it has no table.
//! Parses untrusted bytes: bounded, checked, never panics.

use super::{FsError, ReadAt};
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

/// Every volume on `disk`, in path order. A disk with a partition table yields
/// its partitions (an LVM2 physical volume partition yields its logical volumes
/// too); a disk without one yields one unnamed volume, the disk itself.
pub fn volumes<'a>(disk: Arc<dyn ReadAt + 'a>) -> Result<Vec<Volume<'a>>, FsError> {
    // Partition tables and LVM come with their parsers (issue 13); until then the bare disk.
    Ok(vec![Volume { name: String::new(), description: "whole disk".into(), disk_offset: 0, bytes: disk }])
}
