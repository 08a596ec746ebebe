//! GUID partition tables: the primary header at LBA 1 (512-byte sectors, or
//! 4096 for a 4Kn disk whose LBA 1 at 512 holds none), its CRC32 and the
//! entry array's CRC32; a bad primary falls back to the backup header at the
//! last LBA, with a note saying so. Entries are named `pN` by index + 1.

use super::{crc32, le32, le64, read_bytes, FsError, Partition, ReadAt};

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The entry array a header may describe, at most (sgdisk writes 16 KiB;
/// the bound keeps a crafted count from allocating more than this).
const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// The partitions of a GPT disk, or `None` when the disk has no GPT
/// (no header at LBA 1 and no protective MBR pointing at one).
pub(super) fn read(disk: &dyn ReadAt, notes: &mut Vec<String>) -> Result<Option<Vec<Partition>>, FsError> {
    let Some(mbr) = read_bytes(disk, 0, 512)? else { return Ok(None) };
    let protective = mbr[510] == 0x55 && mbr[511] == 0xAA && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE);
    for sector in [512u64, 4096] {
        let primary = header_at(disk, sector, 1);
        let has_signature = read_bytes(disk, sector, 8)?.is_some_and(|s| s == SIGNATURE);
        match primary {
            Ok(h) => return Ok(Some(h.partitions(sector)?)),
            Err(why) if has_signature || (protective && sector == 512) => {
                // The primary is there (or promised) but bad: the backup at the last LBA.
                let last = (disk.size() / sector).saturating_sub(1);
                match header_at(disk, sector, last) {
                    Ok(h) => {
                        notes.push(format!("GPT primary header unusable ({why}): read the backup header at LBA {last}"));
                        return Ok(Some(h.partitions(sector)?));
                    }
                    Err(backup_why) if has_signature || sector == 4096 => {
                        return Err(FsError::Malformed(format!("GPT: primary header: {why}; backup header at LBA {last}: {backup_why}")))
                    }
                    // A protective MBR without a 512-byte GPT: perhaps a 4Kn disk.
                    Err(_) => continue,
                }
            }
            Err(_) => continue,
        }
    }
    if protective {
        return Err(FsError::Malformed("GPT: protective MBR (type 0xEE) but no GPT header at LBA 1".into()));
    }
    Ok(None)
}

struct Header {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
    /// The entry array, its CRC32 checked.
    entries: Vec<u8>,
}

/// The header at `lba`, checked: signature, size, CRC32, its own LBA, a
/// bounded entry array.
fn header_at(disk: &dyn ReadAt, sector: u64, lba: u64) -> Result<Header, String> {
    let offset = lba.checked_mul(sector).ok_or("LBA overflows")?;
    let sector_len = sector as usize;
    let h = match read_bytes(disk, offset, sector_len) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(format!("LBA {lba} passes the disk's end")),
        Err(e) => return Err(e.to_string()),
    };
    if &h[0..8] != SIGNATURE {
        return Err(format!("no \"EFI PART\" signature at LBA {lba}"));
    }
    let header_size = le32(&h, 12) as usize;
    if !(92..=sector_len).contains(&header_size) {
        return Err(format!("header size {header_size}"));
    }
    let stored = le32(&h, 16);
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    let computed = crc32::crc32(&copy);
    if stored != computed {
        return Err(format!("header CRC32 {stored:#010x}, computed {computed:#010x}"));
    }
    let my_lba = le64(&h, 24);
    if my_lba != lba {
        return Err(format!("header at LBA {lba} says it is at LBA {my_lba}"));
    }
    let mut header =
        Header { entries_lba: le64(&h, 72), count: le32(&h, 80), entry_size: le32(&h, 84), entries_crc: le32(&h, 88), entries: Vec::new() };
    if header.entry_size < 128 || !header.entry_size.is_multiple_of(8) {
        return Err(format!("entry size {}", header.entry_size));
    }
    let array = header.count as u64 * header.entry_size as u64;
    if array > MAX_ARRAY_BYTES {
        return Err(format!("{} entries of {} bytes: more than {MAX_ARRAY_BYTES} bytes", header.count, header.entry_size));
    }
    let array_at = header.entries_lba.checked_mul(sector).ok_or("entry array LBA overflows")?;
    let entries = match read_bytes(disk, array_at, array as usize) {
        Ok(Some(e)) => e,
        Ok(None) => return Err(format!("entry array at LBA {} passes the disk's end", header.entries_lba)),
        Err(e) => return Err(e.to_string()),
    };
    let computed = crc32::crc32(&entries);
    if computed != header.entries_crc {
        return Err(format!("entry array CRC32 {:#010x}, computed {computed:#010x}", header.entries_crc));
    }
    header.entries = entries;
    Ok(header)
}

impl Header {
    fn partitions(&self, sector: u64) -> Result<Vec<Partition>, FsError> {
        let mut parts = Vec::new();
        for (i, e) in self.entries.chunks_exact(self.entry_size as usize).enumerate() {
            let type_guid: [u8; 16] = e[0..16].try_into().unwrap_or([0; 16]);
            if type_guid == [0; 16] {
                continue;
            }
            let number = i as u32 + 1;
            let (first, last) = (le64(e, 32), le64(e, 40));
            if first > last {
                return Err(FsError::Malformed(format!("GPT entry {number} (p{number}): first LBA {first} after last LBA {last}")));
            }
            let start = first.checked_mul(sector);
            let len = (last - first).checked_add(1).and_then(|n| n.checked_mul(sector));
            let (Some(start), Some(len)) = (start, len) else {
                return Err(FsError::Malformed(format!("GPT entry {number} (p{number}): LBAs {first}..{last} overflow")));
            };
            let name = utf16_name(&e[56..128]);
            let mut description = format!("GPT {}", type_name(&type_guid));
            if !name.is_empty() {
                description.push_str(&format!(" \"{name}\""));
            }
            parts.push(Partition { number, description, start, len });
        }
        Ok(parts)
    }
}

/// A partition name: UTF-16LE up to the first NUL, bad units replaced.
fn utf16_name(b: &[u8]) -> String {
    let units = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0);
    char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

/// A GUID as text (the first three fields little-endian, as GPT stores them).
pub(super) fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16].iter().map(|b| format!("{b:02X}")).collect::<String>()
    )
}

/// The common partition type GUIDs by name; others as the GUID.
fn type_name(g: &[u8; 16]) -> String {
    let text = guid_text(g);
    let name = match text.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        _ => return format!("type {text}"),
    };
    name.to_string()
}
