//! The FAT boot sector: recognising one (signature, jump, a sane BIOS
//! parameter block) and deriving the volume's geometry from it — where the
//! FAT, the FAT12/16 root directory region and the data clusters are, how
//! many clusters there are and therefore, by Microsoft's rule (the cluster
//! count, never the type label string), whether it is FAT12, FAT16 or FAT32.

use crate::guest::FsError;

/// The FAT variant, decided by the cluster count alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// What the variant is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }
}

/// Microsoft's rule (fatgen103, "FAT Type Determination"): fewer than 4085
/// clusters is FAT12, fewer than 65525 is FAT16, anything else FAT32.
const MAX_FAT12_CLUSTERS: u64 = 4084;
const MAX_FAT16_CLUSTERS: u64 = 65524;
/// Cluster numbers are 28 bits and 0x0FFFFFF7 upwards are markers, so the
/// highest data cluster is 0x0FFFFFF6 (clusters are numbered from 2).
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF6 - 1;

/// Where everything is, in bytes from the start of the volume.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub fat_type: FatType,
    pub cluster_size: u32,
    /// Data clusters; valid cluster numbers are `2..cluster_count + 2`.
    pub cluster_count: u32,
    /// The FAT copy that is read (the first, or FAT32's active one when mirroring is off).
    pub fat_offset: u64,
    pub fat_len: u64,
    /// FAT12/16: the fixed root directory region (`root_len` = entries × 32). FAT32: empty.
    pub root_offset: u64,
    pub root_len: u64,
    /// FAT32: the root directory's first cluster. FAT12/16: 0.
    pub root_cluster: u32,
    pub data_offset: u64,
    /// The boot sector's volume label (`BS_VolLab`), when the extended boot signature says it is there.
    pub boot_label: Option<[u8; 11]>,
    /// The boot sector's "not cleanly unmounted" bit (Linux's `FAT_STATE_DIRTY`).
    pub dirty: bool,
}

impl Geometry {
    /// Byte offset of data cluster `cluster` (already checked to be in range).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * u64::from(self.cluster_size)
    }

    /// Whether `cluster` names a data cluster.
    pub fn is_data_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && u64::from(cluster) < u64::from(self.cluster_count) + 2
    }

    /// The end of the data area (the last cluster's end).
    pub fn data_end(&self) -> u64 {
        self.data_offset + u64::from(self.cluster_count) * u64::from(self.cluster_size)
    }
}

fn u16_at(b: &[u8; 512], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; 512], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `Ok(None)` when the first sector is not a FAT boot sector; `Err` when it is
/// one whose numbers do not add up; the geometry otherwise. `volume_size` is
/// the size of the bytes the filesystem lives on.
pub fn parse(sector: &[u8; 512], volume_size: u64) -> Result<Option<Geometry>, FsError> {
    // Recognition: the boot signature, the x86 jump every FAT boot sector starts
    // with, and BPB fields no other filesystem's first sector has in this
    // combination (NTFS shares the jump and signature but has 0 reserved sectors and 0 FATs).
    if sector[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    if !(sector[0] == 0xE9 || (sector[0] == 0xEB && sector[2] == 0x90)) {
        return Ok(None);
    }
    let bytes_per_sector = u16_at(sector, 11);
    let sectors_per_cluster = sector[13];
    let reserved_sectors = u16_at(sector, 14);
    let fat_count = sector[16];
    let media = sector[21];
    if !(512..=4096).contains(&bytes_per_sector)
        || !bytes_per_sector.is_power_of_two()
        || sectors_per_cluster == 0
        || !sectors_per_cluster.is_power_of_two()
        || reserved_sectors == 0
        || fat_count == 0
        || !(media == 0xF0 || media >= 0xF8)
    {
        return Ok(None);
    }

    // From here on it is FAT: numbers that do not add up are a damaged volume.
    let bad = |what: String| FsError::Malformed(format!("vfat boot sector: {what}"));
    let bps = u64::from(bytes_per_sector);
    let root_entries = u64::from(u16_at(sector, 17));
    let total_sectors = match u16_at(sector, 19) {
        0 => u64::from(u32_at(sector, 32)),
        n => u64::from(n),
    };
    let fat_size16 = u16_at(sector, 22);
    let fat_sectors = match fat_size16 {
        0 => u64::from(u32_at(sector, 36)),
        n => u64::from(n),
    };
    if total_sectors == 0 {
        return Err(bad("total sector count is 0".into()));
    }
    if fat_sectors == 0 {
        return Err(bad("FAT size is 0 sectors".into()));
    }
    let root_dir_sectors = (root_entries * 32).div_ceil(bps);
    // u64 arithmetic of 16- and 32-bit fields: nothing here can overflow.
    let meta_sectors = u64::from(reserved_sectors) + u64::from(fat_count) * fat_sectors + root_dir_sectors;
    let Some(data_sectors) = total_sectors.checked_sub(meta_sectors) else {
        return Err(bad(format!(
            "reserved, FAT and root directory sectors ({meta_sectors}) exceed the total sector count ({total_sectors})"
        )));
    };
    let cluster_count = data_sectors / u64::from(sectors_per_cluster);
    let fat_type = if cluster_count <= MAX_FAT12_CLUSTERS {
        FatType::Fat12
    } else if cluster_count <= MAX_FAT16_CLUSTERS {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    if cluster_count == 0 {
        return Err(bad("no data clusters".into()));
    }
    if cluster_count > MAX_FAT32_CLUSTERS {
        return Err(bad(format!("{cluster_count} clusters, more than FAT32 can number")));
    }
    let layout_is_fat32 = fat_size16 == 0;
    match fat_type {
        FatType::Fat32 if root_entries != 0 || !layout_is_fat32 => {
            return Err(bad(format!(
                "{cluster_count} clusters make it FAT32, but it has a FAT12/16 layout \
                 ({root_entries} root directory entries, 16-bit FAT size {fat_size16})"
            )))
        }
        FatType::Fat12 | FatType::Fat16 if root_entries == 0 || layout_is_fat32 => {
            return Err(bad(format!(
                "{cluster_count} clusters make it {} by Microsoft's cluster-count rule, but it has a FAT32 layout \
                 ({root_entries} root directory entries, 16-bit FAT size {fat_size16})",
                fat_type.name()
            )))
        }
        _ => {}
    }
    let fat_len = fat_sectors * bps;
    // Entries 0 and 1 are reserved, so the FAT must describe cluster_count + 2 entries.
    let fat_bits = match fat_type {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    };
    let needed = ((cluster_count + 2) * fat_bits).div_ceil(8);
    if fat_len < needed {
        return Err(bad(format!(
            "a FAT of {fat_len} bytes cannot describe {cluster_count} {} clusters ({needed} bytes needed)",
            fat_type.name()
        )));
    }
    let volume_len = total_sectors * bps;
    if volume_len > volume_size {
        return Err(bad(format!(
            "the filesystem claims {volume_len} bytes ({total_sectors} sectors of {bps}), the volume holds {volume_size}"
        )));
    }

    let mut active_fat = 0u64;
    let mut root_cluster = 0;
    let label_at;
    if fat_type == FatType::Fat32 {
        let ext_flags = u16_at(sector, 40);
        // Bit 7: mirroring off, only the FAT numbered in bits 0-3 is in use.
        if ext_flags & 0x80 != 0 {
            active_fat = u64::from(ext_flags & 0x0F);
            if active_fat >= u64::from(fat_count) {
                return Err(bad(format!("active FAT {active_fat} of {fat_count}")));
            }
        }
        root_cluster = u32_at(sector, 44);
        if !(2..cluster_count + 2).contains(&u64::from(root_cluster)) {
            return Err(bad(format!("root directory cluster {root_cluster} of {cluster_count} clusters")));
        }
        label_at = 66;
    } else {
        label_at = 38;
    }
    // The extended boot signature 0x29 says the serial number, label and type string follow;
    // 0x28 (and 0x29) that the state byte before it is meaningful.
    let dirty = matches!(sector[label_at], 0x28 | 0x29) && sector[label_at - 1] & 0x01 != 0;
    let boot_label = (sector[label_at] == 0x29).then(|| {
        let mut l = [0u8; 11];
        l.copy_from_slice(&sector[label_at + 5..label_at + 16]);
        l
    });

    let fat_offset = (u64::from(reserved_sectors) + active_fat * fat_sectors) * bps;
    let root_offset = (u64::from(reserved_sectors) + u64::from(fat_count) * fat_sectors) * bps;
    Ok(Some(Geometry {
        fat_type,
        cluster_size: u32::from(bytes_per_sector) * u32::from(sectors_per_cluster),
        // Bounded by MAX_FAT32_CLUSTERS above.
        cluster_count: cluster_count as u32,
        fat_offset,
        fat_len,
        root_offset,
        root_len: if fat_type == FatType::Fat32 { 0 } else { root_entries * 32 },
        root_cluster,
        data_offset: meta_sectors * bps,
        boot_label,
        dirty,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector as mkfs.fat writes it for a 16 MiB volume (fields only).
    fn fat16() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&4u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[19..21].copy_from_slice(&32768u16.to_le_bytes());
        b[21] = 0xF8;
        b[22..24].copy_from_slice(&32u16.to_le_bytes());
        b[38] = 0x29;
        b[43..54].copy_from_slice(b"MYLABEL    ");
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn geometry_of_a_fat16_volume() {
        let g = parse(&fat16(), 16 << 20).unwrap().unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.fat_offset, 4 * 512);
        assert_eq!(g.root_offset, (4 + 64) * 512);
        assert_eq!(g.root_len, 512 * 32);
        assert_eq!(g.data_offset, (4 + 64 + 32) * 512);
        assert_eq!(g.cluster_count, (32768 - 100) / 4);
        assert_eq!(&g.boot_label.unwrap(), b"MYLABEL    ");
    }

    #[test]
    fn not_fat_is_none_and_inconsistent_fat_is_an_error() {
        let mut b = fat16();
        b[510] = 0;
        assert!(parse(&b, 16 << 20).unwrap().is_none());
        let mut b = fat16();
        b[14] = 0; // NTFS-like: no reserved sectors
        b[15] = 0;
        assert!(parse(&b, 16 << 20).unwrap().is_none());
        // The volume is shorter than the filesystem.
        assert!(matches!(parse(&fat16(), 1 << 20), Err(FsError::Malformed(m)) if m.contains("claims")));
        // A FAT too small for the clusters.
        let mut b = fat16();
        b[22..24].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(parse(&b, 16 << 20), Err(FsError::Malformed(m)) if m.contains("cannot describe")));
        // FAT16 by cluster count, but laid out as FAT32.
        let mut b = fat16();
        b[17..19].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(parse(&b, 16 << 20), Err(FsError::Malformed(m)) if m.contains("FAT32 layout")));
    }

    #[test]
    fn the_type_follows_the_cluster_count_not_the_label() {
        // 4084 clusters is FAT12, 4085 FAT16 (the boundary of Microsoft's rule).
        for (clusters, want) in [(4084u64, FatType::Fat12), (4085, FatType::Fat16)] {
            let mut b = fat16();
            b[13] = 1;
            b[54..62].copy_from_slice(b"FAT32   ");
            let total = 4 + 64 + 32 + clusters;
            b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
            let g = parse(&b, total * 512).unwrap().unwrap();
            assert_eq!((g.fat_type, u64::from(g.cluster_count)), (want, clusters));
        }
    }
}
