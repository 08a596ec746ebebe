//! Format sniffing of the first bytes of an image and the declared-vs-detected rule.
//!
//! Mirrors oslo.utils `format_inspector` as Glance applies it on upload and import
//! (`[image_format] require_image_format_match`): a container format is recognised by its
//! magic; more than one signature in one file is an error (one header may be hiding inside
//! another; Glance's one exception, ISO + GPT, is a raw partition table here, so no exception is
//! needed); and the declared `disk_format` decides — a declared `raw` image is archived as raw
//! bytes and never probed or decomposed even if it starts with a container magic
//! (OSSA-2024-002; Glance too stores it and uses its byte size), while any other declared
//! format (`iso` included) must match what is detected. A VMDK descriptor file (text starting
//! `# Disk DescriptorFile`) is detected as vmdk, as oslo.utils does; the vmdk decomposer then
//! refuses it (its extents name other files, OSSA-2023-002). Differences from oslo.utils: a
//! fixed VHD (footer only at the end) is detected here (the vhd rule), oslo.utils sees raw; QED
//! is refused declared or detected.
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    Raw,
    Qcow2,
    Qed,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
    Iso,
    Luks,
}

impl FormatKind {
    pub fn name(self) -> &'static str {
        match self {
            FormatKind::Raw => "raw",
            FormatKind::Qcow2 => "qcow2",
            FormatKind::Qed => "qed",
            FormatKind::Vmdk => "vmdk",
            FormatKind::Vhd => "vhd",
            FormatKind::Vhdx => "vhdx",
            FormatKind::Vdi => "vdi",
            FormatKind::Iso => "iso",
            FormatKind::Luks => "luks",
        }
    }

    /// Whether a file of this format *is* its guest disk byte for byte (raw; an ISO 9660
    /// image is read by hypervisors as a raw disk). For every other format the file is a
    /// container, and its bytes are not the disk.
    pub fn is_guest_disk(self) -> bool {
        matches!(self, FormatKind::Raw | FormatKind::Iso)
    }

    /// Parses a snapshot's recorded `format` name (as written by [`FormatKind::name`]).
    pub fn from_name(name: &str) -> Option<FormatKind> {
        [
            FormatKind::Raw,
            FormatKind::Qcow2,
            FormatKind::Qed,
            FormatKind::Vmdk,
            FormatKind::Vhd,
            FormatKind::Vhdx,
            FormatKind::Vdi,
            FormatKind::Iso,
            FormatKind::Luks,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Detected {
    /// The detected format (Raw when no container signature is present).
    pub kind: FormatKind,
    /// Format version when the header carries one (qcow2 2/3, vmdk, luks, vdi ...).
    pub version: Option<u32>,
    /// Human-readable detail ("qcow2 v3, cluster 65536", "MBR partition table", ...).
    pub info: String,
    /// Every container signature found; more than one is suspicious.
    pub all: Vec<FormatKind>,
    /// The virtual disk size the container header states, where it sits at a fixed place in
    /// `head` (sparse VMDK capacity, VHD footer copy, VDI disk size). `None` for raw (the file
    /// is the disk), for qcow2 (its own parser reads it) and for formats whose size needs more
    /// than a fixed field (VHDX metadata region, LUKS payload, VMDK descriptor extents).
    pub virtual_size: Option<u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("declared disk_format {declared:?} but the image is {detected}: refused (declared and detected formats must agree)")]
    Mismatch { declared: String, detected: String },
    #[error("image matches several formats ({0}): refused, one header may be hiding inside another")]
    Ambiguous(String),
    #[error("unknown declared disk_format {0:?}")]
    UnknownDeclared(String),
    #[error("{0} images are not supported: refused")]
    Banned(String),
}

fn be32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn be64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn at(b: &[u8], o: usize, m: &[u8]) -> bool {
    b.get(o..o + m.len()) == Some(m)
}

/// Sniff the format from `head` (the first >= 64 KiB, or the whole file if shorter).
pub fn detect(head: &[u8]) -> Detected {
    let mut all = Vec::new();
    let mut version = None;
    let mut info = String::new();
    let mut virtual_size = None;
    if at(head, 0, b"QFI\xfb") {
        all.push(FormatKind::Qcow2);
        version = be32(head, 4);
        info = format!("qcow2 v{}, cluster_bits {}", version.unwrap_or(0), be32(head, 20).unwrap_or(0));
    }
    if at(head, 0, b"QED\0") {
        all.push(FormatKind::Qed);
    }
    if at(head, 0, b"KDMV") || at(head, 0, b"# Disk DescriptorFile") {
        all.push(FormatKind::Vmdk);
        if at(head, 0, b"KDMV") {
            version = le32(head, 4);
            // SparseExtentHeader.capacity: sectors of 512 bytes.
            virtual_size = le64(head, 12).and_then(|s| s.checked_mul(512));
        }
        // createType from an embedded descriptor, for the subformat whitelist.
        let txt = String::from_utf8_lossy(&head[..head.len().min(65536)]);
        if let Some(p) = txt.find("createType=") {
            let t: String = txt[p + 11..].chars().take_while(|c| *c != '\n' && *c != '\r').collect();
            info = format!("vmdk createType={}", t.trim_matches('"'));
        }
    }
    if at(head, 0, b"conectix") {
        all.push(FormatKind::Vhd);
        // Dynamic VHD: the footer copy at 0; `current_size` (bytes, big-endian) at 48.
        virtual_size = be64(head, 48);
    }
    if at(head, 0, b"vhdxfile") {
        all.push(FormatKind::Vhdx);
    }
    if le32(head, 64) == Some(0xbeda_107f) {
        all.push(FormatKind::Vdi);
        version = le32(head, 68);
        // VDI 1.1 header: `cbDisk` (bytes, little-endian) at 0x170.
        virtual_size = le64(head, 0x170);
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        all.push(FormatKind::Luks);
        version = head.get(6..8).map(|v| u16::from_be_bytes([v[0], v[1]]) as u32);
    }
    // ISO 9660 (CD001) or UDF (NSR02/NSR03) volume descriptor at 32 KiB, as oslo.utils' ISOInspector.
    if [&b"CD001"[..], b"NSR02", b"NSR03"].iter().any(|m| at(head, 0x8001, m)) {
        all.push(FormatKind::Iso);
    }
    // A fixed VHD has its footer only at the end and looks raw here, as it does to Glance's
    // inspector: only a declared `vhd` makes it one (see `decide`).
    let kind = all.first().copied().unwrap_or(FormatKind::Raw);
    if kind == FormatKind::Raw {
        if at(head, 512, b"EFI PART") {
            info = "GPT partition table".into();
        } else if at(head, 510, b"\x55\xaa") {
            info = "MBR boot sector".into();
        }
    } else if info.is_empty() {
        info = kind.name().into();
    }
    if all.len() != 1 {
        virtual_size = None; // raw, or ambiguous (refused anyway)
    }
    Detected { kind, version, info, all, virtual_size }
}

fn parse_declared(d: &str) -> Result<FormatKind, FormatError> {
    Ok(match d.to_ascii_lowercase().as_str() {
        "raw" | "aki" | "ari" | "ami" => FormatKind::Raw,
        "qcow2" => FormatKind::Qcow2,
        "vmdk" => FormatKind::Vmdk,
        "vhd" | "vpc" => FormatKind::Vhd,
        "vhdx" => FormatKind::Vhdx,
        "vdi" => FormatKind::Vdi,
        "iso" => FormatKind::Iso,
        "qed" => FormatKind::Qed,
        "luks" => FormatKind::Luks,
        other => return Err(FormatError::UnknownDeclared(other.into())),
    })
}

/// Declared `disk_format` (from Glance) must agree with the detected format. A declared raw
/// image always passes: it is archived as raw bytes and never interpreted.
pub fn check_declared(declared: Option<&str>, detected: &Detected) -> Result<(), FormatError> {
    decide(declared, detected).map(|_| ())
}

/// The format to process the image as, after [`check_declared`]'s rules.
pub fn decide(declared: Option<&str>, detected: &Detected) -> Result<FormatKind, FormatError> {
    let declared = declared.map(parse_declared).transpose()?;
    if declared == Some(FormatKind::Raw) {
        return Ok(FormatKind::Raw);
    }
    // More than one signature is refused, ISO with a container too (Glance allows only ISO +
    // GPT, a bootable ISO with a partition table in front; a partition table is no signature
    // here, the disk is raw). An ISO that also carries a qcow2 or VMDK header is exactly what a
    // hypervisor could be tricked into reading as the other format.
    if detected.all.len() > 1 {
        return Err(FormatError::Ambiguous(detected.all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")));
    }
    // QED is refused whether declared or detected (oslo.utils bans it: qemu deprecated it).
    if detected.kind == FormatKind::Qed || declared == Some(FormatKind::Qed) {
        return Err(FormatError::Banned("QED".into()));
    }
    match declared {
        None => Ok(detected.kind),
        // A fixed VHD starts with its guest data: a declared vhd without any signature is tried
        // as one (the VHD decomposer then requires a valid fixed-VHD footer at the end).
        Some(FormatKind::Vhd) if detected.all.is_empty() => Ok(FormatKind::Vhd),
        Some(d) if d == detected.kind => Ok(d),
        Some(d) => Err(FormatError::Mismatch { declared: d.name().into(), detected: detected.kind.name().into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut b = vec![0u8; 65536];
        assert_eq!(detect(&b).kind, FormatKind::Raw);
        b[510] = 0x55;
        b[511] = 0xaa;
        assert_eq!(detect(&b).info, "MBR boot sector");
        for (magic, kind) in [
            (&b"QFI\xfb"[..], FormatKind::Qcow2),
            (b"KDMV", FormatKind::Vmdk),
            (b"conectix", FormatKind::Vhd),
            (b"vhdxfile", FormatKind::Vhdx),
            (b"LUKS\xba\xbe", FormatKind::Luks),
            (b"QED\0", FormatKind::Qed),
        ] {
            let mut b = vec![0u8; 4096];
            b[..magic.len()].copy_from_slice(magic);
            assert_eq!(detect(&b).kind, kind);
        }
        assert_eq!(detect(&[]).kind, FormatKind::Raw);
        assert_eq!(detect(b"QF").kind, FormatKind::Raw);
    }

    #[test]
    fn container_virtual_size_from_fixed_header_fields() {
        let mut vmdk = vec![0u8; 4096];
        vmdk[..4].copy_from_slice(b"KDMV");
        vmdk[12..20].copy_from_slice(&(2048u64).to_le_bytes()); // capacity in sectors
        assert_eq!(detect(&vmdk).virtual_size, Some(1 << 20));
        let mut vhd = vec![0u8; 4096];
        vhd[..8].copy_from_slice(b"conectix");
        vhd[48..56].copy_from_slice(&(5u64 << 30).to_be_bytes());
        assert_eq!(detect(&vhd).virtual_size, Some(5 << 30));
        let mut vdi = vec![0u8; 4096];
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        vdi[0x170..0x178].copy_from_slice(&(3u64 << 30).to_le_bytes());
        assert_eq!(detect(&vdi).virtual_size, Some(3 << 30));
        // Raw has none (the file is the disk); neither does a format without a fixed field.
        assert_eq!(detect(&[0u8; 4096]).virtual_size, None);
        let mut vhdx = vec![0u8; 4096];
        vhdx[..8].copy_from_slice(b"vhdxfile");
        assert_eq!(detect(&vhdx).virtual_size, None);
        assert!(FormatKind::Raw.is_guest_disk() && FormatKind::Iso.is_guest_disk() && !FormatKind::Vmdk.is_guest_disk());
        assert_eq!(FormatKind::from_name("vdi"), Some(FormatKind::Vdi));
        assert_eq!(FormatKind::from_name("nope"), None);
    }

    #[test]
    fn declared_rules() {
        let q = detect(b"QFI\xfb\0\0\0\x03");
        assert_eq!(decide(Some("RAW"), &q), Ok(FormatKind::Raw));
        assert!(matches!(decide(Some("vhd"), &q), Err(FormatError::Mismatch { .. })));
        let r = detect(&[0u8; 100]);
        assert!(matches!(check_declared(Some("qcow2"), &r), Err(FormatError::Mismatch { .. })));
        assert_eq!(decide(Some("ami"), &r), Ok(FormatKind::Raw));
    }

    /// A 64 KiB head with `magic` at `offset` (and an MBR boot signature, which changes nothing).
    fn head_with(marks: &[(usize, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[510] = 0x55;
        b[511] = 0xaa;
        for (o, m) in marks {
            b[*o..*o + m.len()].copy_from_slice(m);
        }
        b
    }

    /// Every declared `disk_format` × every detected kind (Glance's rules): `=` processed as the
    /// detected format, `raw` as raw, `vhd` as a fixed VHD, `M` mismatch, `B` banned, `A` ambiguous.
    #[test]
    fn declared_times_detected_table() {
        let declared = [
            None,
            Some("raw"),
            Some("qcow2"),
            Some("vmdk"),
            Some("vdi"),
            Some("vhd"),
            Some("vhdx"),
            Some("iso"),
            Some("qed"),
            Some("luks"),
        ];
        let vdi_magic = 0xbeda_107fu32.to_le_bytes();
        let descriptor = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"other-flat.vmdk\" 0\n";
        let rows: Vec<(&str, Vec<u8>, FormatKind, [&str; 10])> = vec![
            ("raw", head_with(&[]), FormatKind::Raw, ["=", "raw", "M", "M", "M", "vhd", "M", "M", "B", "M"]),
            ("qcow2", head_with(&[(0, b"QFI\xfb\0\0\0\x03")]), FormatKind::Qcow2, ["=", "raw", "=", "M", "M", "M", "M", "M", "B", "M"]),
            ("vmdk sparse", head_with(&[(0, b"KDMV\x01\0\0\0")]), FormatKind::Vmdk, ["=", "raw", "M", "=", "M", "M", "M", "M", "B", "M"]),
            ("vmdk descriptor file", descriptor.to_vec(), FormatKind::Vmdk, ["=", "raw", "M", "=", "M", "M", "M", "M", "B", "M"]),
            ("vdi", head_with(&[(64, &vdi_magic)]), FormatKind::Vdi, ["=", "raw", "M", "M", "=", "M", "M", "M", "B", "M"]),
            ("vhd dynamic", head_with(&[(0, b"conectix")]), FormatKind::Vhd, ["=", "raw", "M", "M", "M", "=", "M", "M", "B", "M"]),
            ("vhdx", head_with(&[(0, b"vhdxfile")]), FormatKind::Vhdx, ["=", "raw", "M", "M", "M", "M", "=", "M", "B", "M"]),
            ("iso 9660", head_with(&[(0x8001, b"CD001")]), FormatKind::Iso, ["=", "raw", "M", "M", "M", "M", "M", "=", "B", "M"]),
            ("iso udf", head_with(&[(0x8001, b"NSR02")]), FormatKind::Iso, ["=", "raw", "M", "M", "M", "M", "M", "=", "B", "M"]),
            ("qed", head_with(&[(0, b"QED\0")]), FormatKind::Qed, ["B", "raw", "B", "B", "B", "B", "B", "B", "B", "B"]),
            ("luks", head_with(&[(0, b"LUKS\xba\xbe\0\x01")]), FormatKind::Luks, ["=", "raw", "M", "M", "M", "M", "M", "M", "B", "="]),
            (
                "qcow2 + iso",
                head_with(&[(0, b"QFI\xfb"), (0x8001, b"CD001")]),
                FormatKind::Qcow2,
                ["A", "raw", "A", "A", "A", "A", "A", "A", "A", "A"],
            ),
            (
                "vhd + vdi",
                head_with(&[(0, b"conectix"), (64, &vdi_magic)]),
                FormatKind::Vhd,
                ["A", "raw", "A", "A", "A", "A", "A", "A", "A", "A"],
            ),
        ];
        for (what, head, kind, cells) in &rows {
            let d = detect(head);
            assert_eq!(d.kind, *kind, "{what}: detected {d:?}");
            for (decl, cell) in declared.iter().zip(cells) {
                let got = decide(*decl, &d);
                let ok = match *cell {
                    "=" => got == Ok(*kind),
                    "raw" => got == Ok(FormatKind::Raw),
                    // A declared vhd without a head signature is tried as a fixed VHD (footer only at the end).
                    "vhd" => got == Ok(FormatKind::Vhd),
                    "M" => matches!(got, Err(FormatError::Mismatch { .. })),
                    "B" => matches!(got, Err(FormatError::Banned(_))),
                    "A" => matches!(got, Err(FormatError::Ambiguous(_))),
                    other => panic!("bad cell {other}"),
                };
                assert!(ok, "{what} declared {decl:?}: expected {cell}, got {got:?}");
            }
        }
        // Aliases and unknown names.
        let vhd = detect(&head_with(&[(0, b"conectix")]));
        assert_eq!(decide(Some("vpc"), &vhd), Ok(FormatKind::Vhd));
        assert_eq!(decide(Some("VHD"), &vhd), Ok(FormatKind::Vhd));
        for alias in ["aki", "ari", "ami"] {
            assert_eq!(decide(Some(alias), &vhd), Ok(FormatKind::Raw), "{alias}");
        }
        assert!(matches!(decide(Some("ploop"), &vhd), Err(FormatError::UnknownDeclared(_))));
        // The refusal texts name both sides.
        let e = decide(Some("vdi"), &vhd).unwrap_err().to_string();
        assert!(e.contains("\"vdi\"") && e.contains("vhd"), "{e}");
        let e = decide(None, &detect(&head_with(&[(0, b"QFI\xfb"), (0x8001, b"CD001")]))).unwrap_err().to_string();
        assert!(e.contains("qcow2, iso"), "{e}");
    }

    #[test]
    fn fixed_vhd_is_raw_unless_declared_vhd() {
        // A small fixed VHD: data, then its footer in the last 512 bytes.
        let mut b = vec![0u8; 4096];
        b[3584..3592].copy_from_slice(b"conectix");
        let d = detect(&b);
        assert_eq!(d.kind, FormatKind::Raw);
        assert_eq!(decide(None, &d), Ok(FormatKind::Raw));
        assert_eq!(decide(Some("vhd"), &d), Ok(FormatKind::Vhd));
        assert_eq!(decide(Some("vpc"), &d), Ok(FormatKind::Vhd));
        assert_eq!(decide(Some("raw"), &d), Ok(FormatKind::Raw));
        // Another container declared vhd is still a mismatch.
        let q = detect(b"QFI\xfb\0\0\0\x03");
        assert!(matches!(decide(Some("vhd"), &q), Err(FormatError::Mismatch { .. })));
        // An ISO declared vhd is not a fixed VHD either.
        let mut iso = vec![0u8; 0x8010];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert!(matches!(decide(Some("vhd"), &detect(&iso)), Err(FormatError::Mismatch { .. })));
    }
}
