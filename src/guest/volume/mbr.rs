//! MBR (DOS) partition tables: four primary slots in sector 0 and, inside
//! an extended partition (0x05, 0x0f, 0x85), the chain of extended boot
//! records whose first entry is a logical partition (p5, p6, … in chain
//! order, as Linux numbers them) and whose second links the next EBR. The
//! chain is bounded and a loop is an error.

use super::{le32, read_bytes, FsError, Partition, ReadAt};

const SECTOR: u64 = 512;
/// Logical partitions read at most (Linux stops near this too).
const MAX_LOGICAL: usize = 256;

struct Entry {
    status: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

fn entries(sector: &[u8]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let e = 446 + 16 * i;
        Entry { status: sector[e], kind: sector[e + 4], start: le32(sector, e + 8), sectors: le32(sector, e + 12) }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// The partitions of an MBR disk, or `None` when sector 0 is no partition
/// table: no 0x55AA signature, a boot flag other than 0x00/0x80, no used
/// slot, or a FAT boot sector (a bare FAT filesystem carries the signature too).
pub(super) fn read(disk: &dyn ReadAt, notes: &mut Vec<String>) -> Result<Option<Vec<Partition>>, FsError> {
    let Some(s0) = read_bytes(disk, 0, 512)? else { return Ok(None) };
    if s0[510] != 0x55 || s0[511] != 0xAA {
        return Ok(None);
    }
    let slots = entries(&s0);
    if slots.iter().any(|e| e.status != 0 && e.status != 0x80) || slots.iter().all(|e| e.kind == 0 || e.sectors == 0) {
        return Ok(None);
    }
    let fat_boot_sector = (s0[0] == 0xEB || s0[0] == 0xE9) && (&s0[0x36..0x39] == b"FAT" || &s0[0x52..0x57] == b"FAT32");
    if fat_boot_sector {
        return Ok(None);
    }

    let mut parts = Vec::new();
    let mut extended_seen = false;
    for (i, e) in slots.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        let number = i as u32 + 1;
        if is_extended(e.kind) {
            if extended_seen {
                notes.push(format!("p{number}: a second extended partition (0x{:02x}): not read", e.kind));
                continue;
            }
            extended_seen = true;
            let logicals = chain(disk, number, e)?;
            let names: Vec<String> = logicals.iter().map(|p| format!("p{}", p.number)).collect();
            notes.push(format!(
                "p{number}: MBR 0x{:02x} extended partition holding {}",
                e.kind,
                if names.is_empty() { "no logical partitions".to_string() } else { names.join(", ") }
            ));
            parts.extend(logicals);
            continue;
        }
        parts.push(Partition {
            number,
            description: format!("MBR 0x{:02x} {}", e.kind, type_name(e.kind)),
            start: e.start as u64 * SECTOR,
            len: e.sectors as u64 * SECTOR,
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(Some(parts))
}

/// The logical partitions of the extended partition in slot `slot`.
fn chain(disk: &dyn ReadAt, slot: u32, ext: &Entry) -> Result<Vec<Partition>, FsError> {
    let ext_start = ext.start as u64;
    let ext_end = ext_start + ext.sectors as u64;
    let mut logicals = Vec::new();
    let mut visited = std::collections::HashSet::new();
    let mut ebr = ext_start;
    loop {
        if !visited.insert(ebr) {
            return Err(FsError::Malformed(format!("MBR extended partition p{slot}: EBR chain loops back to sector {ebr}")));
        }
        if visited.len() > MAX_LOGICAL {
            return Err(FsError::Malformed(format!("MBR extended partition p{slot}: more than {MAX_LOGICAL} EBRs")));
        }
        if ebr >= ext_end {
            return Err(FsError::Malformed(format!(
                "MBR extended partition p{slot}: EBR at sector {ebr} outside the extended partition (sectors {ext_start}..{ext_end})"
            )));
        }
        let Some(s) = read_bytes(disk, ebr * SECTOR, 512)? else {
            return Err(FsError::Malformed(format!("MBR extended partition p{slot}: EBR at sector {ebr} passes the disk's end")));
        };
        if s[510] != 0x55 || s[511] != 0xAA {
            return Err(FsError::Malformed(format!(
                "MBR extended partition p{slot}: EBR at sector {ebr} has signature {:02x}{:02x}, not 55aa",
                s[510], s[511]
            )));
        }
        let [first, link, ..] = entries(&s);
        if first.kind != 0 && first.sectors != 0 && !is_extended(first.kind) {
            let number = 5 + logicals.len() as u32;
            logicals.push(Partition {
                number,
                description: format!("MBR logical 0x{:02x} {}", first.kind, type_name(first.kind)),
                start: (ebr + first.start as u64) * SECTOR,
                len: first.sectors as u64 * SECTOR,
            });
        }
        if link.kind == 0 || link.sectors == 0 || !is_extended(link.kind) {
            return Ok(logicals);
        }
        ebr = ext_start + link.start as u64;
    }
}

/// The common MBR partition type ids by name.
fn type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT protective",
        0xef => "EFI system",
        0xfd => "Linux raid autodetect",
        _ => "unknown type",
    }
}
