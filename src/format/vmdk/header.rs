//! The VMDK sparse extent header (`KDMV`, 512 bytes, little-endian), the stream markers of
//! streamOptimized files, and the embedded descriptor with its whitelist (OSSA-2023-002 /
//! CVE-2022-47951: a descriptor that names another file, a parent or another extent kind is
//! refused, never followed). Parsing and encoding live together so the writer cannot drift
//! from what the decomposer accepts.
use super::super::ImageError;

const F: &str = "vmdk";
pub const SECTOR: u64 = 512;
pub const MAGIC: &[u8; 4] = b"KDMV";
/// gdOffset of a streamOptimized header: the real grain directory is named by the footer.
pub const GD_AT_END: u64 = u64::MAX;
pub const FLAG_NL_DETECT: u32 = 1;
pub const FLAG_RGD: u32 = 1 << 1;
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
const KNOWN_FLAGS: u32 = FLAG_NL_DETECT | FLAG_RGD | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;
pub const COMPRESS_DEFLATE: u16 = 1;
/// Grain table entries per grain table (the only value VMware, VirtualBox and qemu write).
pub const GTES_PER_GT: u64 = 512;
/// A GTE of 1 with [`FLAG_ZERO_GRAIN`]: the grain reads as zeros.
pub const GTE_ZEROED: u32 = 1;
/// Metadata marker types (streamOptimized).
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
/// Largest embedded descriptor read (qemu reads at most 1 MiB too).
pub const MAX_DESCRIPTOR: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub flags: u32,
    /// Sectors.
    pub capacity: u64,
    /// Sectors.
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub over_head: u64,
    pub unclean_shutdown: u8,
    pub compress_algorithm: u16,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Parses and validates the 512-byte header at file offset `at` (0, or the footer's).
    pub fn parse(b: &[u8; 512], at: u64) -> Result<Header, ImageError> {
        if &b[..4] != MAGIC {
            return Err(ImageError::malformed(F, format!("no KDMV magic at offset {at}")));
        }
        let h = Header {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_size: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            num_gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            over_head: u64_at(b, 64),
            unclean_shutdown: b[72],
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        let bad =
            |field: &str, off: u64, why: String| ImageError::malformed(F, format!("header field {field} at offset {}: {why}", at + off));
        if !(1..=3).contains(&h.version) {
            return Err(ImageError::refused(F, format!("header version {} at offset {} (only 1, 2, 3 are known)", h.version, at + 4)));
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(ImageError::refused(F, format!("unknown header flags {:#x} at offset {}", h.flags & !KNOWN_FLAGS, at + 8)));
        }
        if h.flags & FLAG_NL_DETECT != 0 && b[73..77] != *b"\n \r\n" {
            return Err(bad("newline detection bytes", 73, "not \\n \\x20 \\r \\n: the file went through a text-mode transfer".into()));
        }
        if !h.grain_size.is_power_of_two() || !(8..=4096).contains(&h.grain_size) {
            return Err(bad("grainSize", 20, format!("{} sectors (a power of two from 8 to 4096 sectors)", h.grain_size)));
        }
        if h.num_gtes_per_gt as u64 != GTES_PER_GT {
            return Err(bad("numGTEsPerGT", 44, format!("{} (only 512 is supported)", h.num_gtes_per_gt)));
        }
        let compressed = h.flags & FLAG_COMPRESSED != 0;
        match (compressed, h.compress_algorithm) {
            (true, COMPRESS_DEFLATE) | (false, 0) => {}
            (_, a) => {
                return Err(bad(
                    "compressAlgorithm",
                    77,
                    format!("{a} with the compressed-grains flag {}", if compressed { "set" } else { "clear" }),
                ))
            }
        }
        if compressed != (h.flags & FLAG_MARKERS != 0) {
            return Err(ImageError::refused(
                F,
                format!(
                    "header flags {:#x} at offset {}: compressed grains without markers (or the reverse) are not a known subformat",
                    h.flags,
                    at + 8
                ),
            ));
        }
        if h.capacity.checked_mul(SECTOR).is_none() {
            return Err(bad("capacity", 12, format!("{} sectors overflows", h.capacity)));
        }
        if h.gd_offset == GD_AT_END && !compressed {
            return Err(bad("gdOffset", 56, "GD_AT_END without stream markers".into()));
        }
        Ok(h)
    }

    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }
    pub fn virtual_size(&self) -> u64 {
        self.capacity * SECTOR
    }
    /// Grains of the disk (the last one may be partial).
    pub fn grains(&self) -> u64 {
        self.capacity.div_ceil(self.grain_size)
    }
    pub fn gt_count(&self) -> u64 {
        self.grains().div_ceil(GTES_PER_GT)
    }
    pub fn gd_sectors(&self) -> u64 {
        (self.gt_count() * 4).div_ceil(SECTOR)
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.over_head.to_le_bytes());
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

/// The descriptor fields imgarc reports (`info`) and checks against the header.
#[derive(Debug, Clone, Default)]
pub struct Descriptor {
    pub create_type: String,
    pub cid: Option<String>,
    pub adapter_type: Option<String>,
    pub hw_version: Option<String>,
    /// Sectors of the single SPARSE extent.
    pub extent_sectors: u64,
    pub extent_name: String,
}

/// `ddb.` keys that describe the disk and name nothing outside it.
fn ddb_allowed(key: &str) -> bool {
    matches!(
        key,
        "ddb.virtualHWVersion"
            | "ddb.adapterType"
            | "ddb.longContentID"
            | "ddb.toolsVersion"
            | "ddb.thinProvisioned"
            | "ddb.encoding"
            | "ddb.deletable"
    ) || key.starts_with("ddb.geometry.")
        || key.starts_with("ddb.uuid")
}

/// Parses the embedded descriptor text (`text` ends at the first NUL) against the whitelist.
/// `at` is its file offset, for the messages.
pub fn parse_descriptor(text: &[u8], at: u64) -> Result<Descriptor, ImageError> {
    let text = std::str::from_utf8(text).map_err(|e| ImageError::malformed(F, format!("descriptor at offset {at} is not UTF-8 ({e})")))?;
    let mut d = Descriptor::default();
    let mut extents = 0;
    let mut line_off = at;
    for raw in text.split('\n') {
        let this_off = line_off;
        line_off += raw.len() as u64 + 1;
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let refuse = |why: &str| {
            ImageError::refused(F, format!("descriptor line at offset {this_off} `{}`: {why}", line.chars().take(120).collect::<String>()))
        };
        if let Some((k, v)) = line.split_once('=') {
            let (key, value) = (k.trim(), v.trim().trim_matches('"'));
            match key {
                "version" => {
                    if !matches!(value, "1" | "2" | "3") {
                        return Err(refuse("unknown descriptor version"));
                    }
                }
                "encoding" => {}
                "CID" => d.cid = Some(value.to_string()),
                "parentCID" => {
                    if !value.eq_ignore_ascii_case("ffffffff") {
                        return Err(refuse("names a parent disk (differencing images are refused)"));
                    }
                }
                "createType" => {
                    if !matches!(value, "monolithicSparse" | "streamOptimized") {
                        return Err(refuse("only monolithicSparse and streamOptimized are decomposed (other types name other files)"));
                    }
                    d.create_type = value.to_string();
                }
                k if k.starts_with("ddb.") && ddb_allowed(k) => match k {
                    "ddb.adapterType" => d.adapter_type = Some(value.to_string()),
                    "ddb.virtualHWVersion" => d.hw_version = Some(value.to_string()),
                    _ => {}
                },
                _ => return Err(refuse("not on the descriptor whitelist")),
            }
            continue;
        }
        // Extent line: access, sectors, kind, "file name" (nothing else is allowed).
        let mut parts = line.splitn(4, char::is_whitespace).filter(|p| !p.is_empty());
        let access = parts.next().unwrap_or("");
        if !matches!(access, "RW" | "RDONLY") {
            return Err(refuse("not on the descriptor whitelist"));
        }
        let rest: Vec<&str> = line[access.len()..].split_whitespace().collect();
        if rest.len() < 3 || rest[1] != "SPARSE" {
            return Err(refuse(
                "only one SPARSE extent (the file itself) is decomposed; FLAT, VMFS, ZERO and other extents name other files",
            ));
        }
        let sectors: u64 = rest[0].parse().map_err(|_| refuse("extent size is not a number"))?;
        let name = rest[2..].join(" ");
        if name.len() < 2 || !name.starts_with('"') || !name.ends_with('"') {
            return Err(refuse("extent file name is not quoted"));
        }
        extents += 1;
        if extents > 1 {
            return Err(refuse("a second extent (several extents name other files)"));
        }
        d.extent_sectors = sectors;
        d.extent_name = name[1..name.len() - 1].to_string();
    }
    if d.create_type.is_empty() {
        return Err(ImageError::malformed(F, format!("descriptor at offset {at} has no createType")));
    }
    if extents != 1 {
        return Err(ImageError::malformed(F, format!("descriptor at offset {at} has no extent line")));
    }
    Ok(d)
}

/// The descriptor imgarc writes: qemu's text (its defaults: hardware version 4, IDE adapter,
/// CHS geometry of 16 heads x 63 sectors).
pub fn write_descriptor(create_type: &str, capacity: u64, cid: u32) -> String {
    let cylinders = (capacity / (16 * 63)).min(16383);
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\nRW {capacity} SPARSE \"disk.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_whitelist() {
        let ok = write_descriptor("streamOptimized", 131072, 0x1234);
        let d = parse_descriptor(ok.as_bytes(), 512).unwrap();
        assert_eq!((d.create_type.as_str(), d.extent_sectors, d.adapter_type.as_deref()), ("streamOptimized", 131072, Some("ide")));
        for (bad, what) in [
            ("parentCID=12345678", "parent"),
            ("parentFileNameHint=\"base.vmdk\"", "whitelist"),
            ("RW 131072 FLAT \"x-flat.vmdk\" 0", "SPARSE"),
            ("RW 131072 SPARSE \"other.vmdk\"", "second extent"),
            ("RW 131072 ZERO", "SPARSE"),
            ("ddb.foo = \"1\"", "whitelist"),
            ("createType=\"monolithicFlat\"", "only monolithicSparse"),
            ("garbage", "whitelist"),
        ] {
            let text = format!("{ok}{bad}\n");
            let e = parse_descriptor(text.as_bytes(), 512).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("refused"), "{bad}: {e}");
        }
        assert!(parse_descriptor(b"version=1\n", 512).is_err());
    }

    #[test]
    fn header_roundtrip_and_refusals() {
        let h = Header {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 131072,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 1,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            over_head: 2,
            unclean_shutdown: 0,
            compress_algorithm: 1,
        };
        let b = h.encode();
        assert_eq!(Header::parse(&b, 0).unwrap(), h);
        for (off, val) in [(20usize, 7u8), (20, 0), (44, 1), (4, 9), (77, 2), (10, 4), (73, b'\r'), (0, b'x')] {
            let mut c = b;
            c[off] = val;
            assert!(Header::parse(&c, 0).is_err(), "byte {off} = {val}");
        }
    }
}
