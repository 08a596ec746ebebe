//! VHD (Virtual PC, Azure, Hyper-V generation 1), fixed and dynamic: the on-disk structures
//! (footer, dynamic-disk header, their checksum), qemu's rule for the guest disk's size, and
//! the dispatch to the one-pass [`decompose`]r and the streaming [`write`]r. The byte mapping
//! is specified in `format-spec/formats/vhd.md`.
//!
//! Both directions are one sequential pass: a dynamic VHD keeps its metadata (footer copy,
//! header, BAT) before its blocks, and a fixed VHD is its data followed by one footer.
mod decompose;
mod writer;

pub use decompose::decompose;
pub use writer::write;

/// Whether [`decompose`] is implemented (archive stores the container opaque otherwise).
pub const DECOMPOSES: bool = true;
/// Whether [`write`] is implemented.
pub const WRITES: bool = true;

pub(crate) const FORMAT: &str = "vhd";
pub(crate) const SECTOR: u64 = 512;
pub(crate) const FOOTER_LEN: usize = 512;
pub(crate) const HEADER_LEN: usize = 1024;
pub(crate) const COOKIE: &[u8; 8] = b"conectix";
pub(crate) const SPARSE_COOKIE: &[u8; 8] = b"cxsparse";
pub(crate) const TYPE_FIXED: u32 = 2;
pub(crate) const TYPE_DYNAMIC: u32 = 3;
pub(crate) const TYPE_DIFFERENCING: u32 = 4;
pub(crate) const UNALLOCATED: u32 = 0xffff_ffff;
/// qemu's limit (`VHD_MAX_SECTORS`, 2040 GiB): it refuses larger disks.
pub(crate) const MAX_SECTORS: u64 = 0xff00_0000;
/// The largest CHS geometry (65535 cylinders, 16 heads, 255 sectors): qemu reads such a
/// disk's size from `current_size`, whatever the creator (`VHD_MAX_GEOMETRY`).
pub(crate) const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// The 512-byte hard disk footer (big-endian), at the end of every VHD and copied at offset
/// 0 of a dynamic one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
    pub disk_type: u32,
    pub checksum: u32,
    pub uuid: [u8; 16],
    pub saved_state: u8,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
pub(crate) fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The VHD checksum: one's complement of the byte sum, the checksum field (at
/// `checksum_at`) counted as zero.
pub(crate) fn checksum(b: &[u8], checksum_at: usize) -> u32 {
    let sum =
        b.iter().enumerate().filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i)).fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    !sum
}

impl Footer {
    /// Parses a footer whose cookie is `conectix`; `None` otherwise.
    pub fn parse(b: &[u8; FOOTER_LEN]) -> Option<Footer> {
        if &b[..8] != COOKIE {
            return None;
        }
        Some(Footer {
            features: be32(b, 8),
            version: be32(b, 12),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: b[28..32].try_into().expect("4 bytes"),
            creator_version: be32(b, 32),
            creator_os: b[36..40].try_into().expect("4 bytes"),
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors_per_track: b[59],
            disk_type: be32(b, 60),
            checksum: be32(b, 64),
            uuid: b[68..84].try_into().expect("16 bytes"),
            saved_state: b[84],
        })
    }

    /// Serializes, computing the checksum (the `checksum` field is ignored).
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.cylinders.to_be_bytes());
        b[58] = self.heads;
        b[59] = self.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        b[84] = self.saved_state;
        let c = checksum(&b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    pub fn geometry_sectors(&self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64
    }

    /// Whether qemu takes this disk's size from `current_size` rather than from the CHS
    /// geometry: the creators it trusts (`vpc_open` in qemu's block/vpc.c, unchanged from
    /// qemu 2.6 to 10), or the maximum geometry (which cannot express larger disks).
    pub fn size_from_current_size(&self) -> bool {
        matches!(&self.creator_app, b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0") || self.geometry_sectors() == MAX_GEOMETRY_SECTORS
    }

    /// The guest disk's size as qemu reads it (whole sectors), or an error when qemu would
    /// refuse the disk as too large.
    pub fn guest_size(&self) -> Result<u64, super::ImageError> {
        let sectors = if self.size_from_current_size() { self.current_size / SECTOR } else { self.geometry_sectors() };
        if sectors > MAX_SECTORS {
            return Err(super::ImageError::malformed(
                FORMAT,
                format!("footer: disk of {sectors} sectors exceeds the VHD maximum of {MAX_SECTORS} (2040 GiB)"),
            ));
        }
        Ok(sectors * SECTOR)
    }

    pub fn creator_app_str(&self) -> String {
        printable(&self.creator_app)
    }
}

/// Four-character codes as text (non-printable bytes escaped).
pub(crate) fn printable(b: &[u8]) -> String {
    b.iter().map(|&c| if (0x20..0x7f).contains(&c) { (c as char).to_string() } else { format!("\\x{c:02x}") }).collect()
}

pub(crate) fn uuid_str(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The CHS geometry of the VHD specification's algorithm (appendix "CHS calculation"), as
/// qemu's `calculate_geometry`: the largest geometry whose size does not exceed `sectors`
/// (capped at the maximum geometry).
pub(crate) fn chs_geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(MAX_GEOMETRY_SECTORS);
    let (spt, heads, cyl_times_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cyl_times_heads = total / spt;
    } else {
        let mut s = 17u64;
        let mut cth = total / s;
        let mut h = cth.div_ceil(1024);
        if h < 4 {
            h = 4;
        }
        if cth >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if cth >= h * 1024 {
            s = 63;
            h = 16;
            cth = total / s;
        }
        spt = s;
        heads = h;
        cyl_times_heads = cth;
    }
    ((cyl_times_heads / heads).min(65535) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(creator: &[u8; 4], current: u64, chs: (u16, u8, u8)) -> Footer {
        Footer {
            features: 2,
            version: 0x0001_0000,
            data_offset: u64::MAX,
            timestamp: 0,
            creator_app: *creator,
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: current,
            current_size: current,
            cylinders: chs.0,
            heads: chs.1,
            sectors_per_track: chs.2,
            disk_type: TYPE_FIXED,
            checksum: 0,
            uuid: [7; 16],
            saved_state: 0,
        }
    }

    #[test]
    fn footer_roundtrip_and_checksum() {
        let f = footer(b"qemu", 64 << 20, (1040, 4, 17));
        let b = f.encode();
        let mut back = Footer::parse(&b).unwrap();
        assert_eq!(back.checksum, checksum(&b, 64));
        back.checksum = 0;
        assert_eq!(back, f);
        let mut bad = b;
        bad[100] ^= 1;
        assert_ne!(be32(&bad, 64), checksum(&bad, 64));
        bad[..8].copy_from_slice(b"conectiy");
        assert!(Footer::parse(&bad).is_none());
    }

    #[test]
    fn guest_size_follows_qemus_creator_rule() {
        // 64 MiB with the geometry of its CHS rounding down: qemu-made files read as CHS.
        let chs = chs_geometry(131072);
        let chs_bytes = chs.0 as u64 * chs.1 as u64 * chs.2 as u64 * 512;
        assert!(chs_bytes <= 64 << 20);
        assert_eq!(footer(b"qemu", 64 << 20, chs).guest_size().unwrap(), chs_bytes);
        assert_eq!(footer(b"vpc ", 64 << 20, chs).guest_size().unwrap(), chs_bytes);
        for trusted in [b"qem2", b"win ", b"d2v ", b"CTXS", b"tap\0"] {
            assert_eq!(footer(trusted, 64 << 20, chs).guest_size().unwrap(), 64 << 20);
        }
        // Maximum geometry: current size, even for an untrusted creator.
        assert_eq!(footer(b"vpc ", 1536 << 30, (65535, 16, 255)).guest_size().unwrap(), 1536 << 30);
        assert!(footer(b"qem2", 2041 << 30, (65535, 16, 255)).guest_size().is_err());
        // A size that is not whole sectors is truncated, as qemu does.
        assert_eq!(footer(b"qem2", 1000, (0, 0, 0)).guest_size().unwrap(), 512);
    }

    #[test]
    fn chs_matches_the_specification_examples() {
        assert_eq!(chs_geometry(131072), (963, 8, 17));
        assert_eq!(chs_geometry(u64::MAX), (65535, 16, 255));
        assert_eq!(chs_geometry(0), (0, 4, 17));
    }
}
