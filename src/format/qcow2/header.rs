//! QCOW2 header and header-extension parsing with every bound the safety policy needs
//! (qemu's own limits: cluster_bits 9–21, L1 ≤ 32 MiB, refcount table ≤ 8 MiB, ...).
//! Pure function of the first cluster's bytes: no I/O, no allocation proportional to
//! attacker-controlled sizes.
use super::error::{bad, Qcow2Error};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 = 0x1f;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_RAW_DATA: u64 = 1 << 1;

const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

#[derive(Debug, Clone, Default)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub nb_bitmaps: u32,
    pub has_crypto_ext: bool,
}

fn be32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
fn be64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }
    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Guest bytes mapped by one L2 table.
    pub fn l2_span(&self) -> u64 {
        (self.cluster_size() / self.l2_entry_size()) * self.cluster_size()
    }
}

/// Minimum bytes needed to know cluster_bits.
pub const MIN_HEAD: usize = 72;

/// Parse and range-check the header. `head` holds cluster 0 (or the whole file if shorter).
/// Policy decisions (backing/data file/encryption) are left to the caller; this only refuses
/// what cannot be interpreted at all.
pub fn parse(head: &[u8], file_len: Option<u64>) -> Result<Header, Qcow2Error> {
    if head.len() < MIN_HEAD {
        return Err(Qcow2Error::NotQcow2(format!("only {} bytes, a qcow2 header needs at least {MIN_HEAD}", head.len())));
    }
    if &head[..4] != MAGIC {
        return Err(Qcow2Error::NotQcow2("magic is not QFI\\xfb".into()));
    }
    let mut h = Header {
        version: be32(head, 4),
        backing_file_offset: be64(head, 8),
        backing_file_size: be32(head, 16),
        cluster_bits: be32(head, 20),
        size: be64(head, 24),
        crypt_method: be32(head, 32),
        l1_size: be32(head, 36),
        l1_table_offset: be64(head, 40),
        refcount_table_offset: be64(head, 48),
        refcount_table_clusters: be32(head, 56),
        nb_snapshots: be32(head, 60),
        snapshots_offset: be64(head, 64),
        refcount_order: 4,
        header_length: 72,
        ..Default::default()
    };
    if h.version != 2 && h.version != 3 {
        return Err(bad("version", h.version as u64, "only versions 2 and 3 exist"));
    }
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(bad("cluster_bits", h.cluster_bits as u64, "must be 9..=21 (512 B to 2 MiB)"));
    }
    let cs = h.cluster_size();
    if h.version == 3 {
        if head.len() < 104 {
            return Err(Qcow2Error::NotQcow2(format!("v3 header needs 104 bytes, stream has {}", head.len())));
        }
        h.incompatible = be64(head, 72);
        h.compatible = be64(head, 80);
        h.autoclear = be64(head, 88);
        h.refcount_order = be32(head, 96);
        h.header_length = be32(head, 100);
        if h.header_length < 104 || h.header_length % 8 != 0 || h.header_length as u64 > cs {
            return Err(bad("header_length", h.header_length as u64, "must be >= 104, a multiple of 8 and inside cluster 0"));
        }
        if h.header_length > 104 {
            h.compression_type = head.get(104).copied().unwrap_or(0);
        }
        if h.refcount_order > 6 {
            return Err(bad("refcount_order", h.refcount_order as u64, "must be <= 6 (64-bit refcounts)"));
        }
        if h.incompatible & INCOMPAT_COMPRESSION == 0 && h.compression_type != 0 {
            return Err(bad("compression_type", h.compression_type as u64, "non-zero without incompatible bit 3"));
        }
        if h.compression_type > 1 {
            return Err(bad("compression_type", h.compression_type as u64, "only 0 (zlib) and 1 (zstd) exist"));
        }
        if h.extended_l2() && h.cluster_bits < 14 {
            return Err(bad("cluster_bits", h.cluster_bits as u64, "extended L2 needs clusters of at least 16 KiB"));
        }
    }
    if head.len() < h.header_length as usize {
        return Err(Qcow2Error::NotQcow2("stream ends inside the header".into()));
    }
    let l1_bytes = h.l1_size as u64 * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(bad("l1_size", h.l1_size as u64, "L1 table larger than 32 MiB (qemu's limit)"));
    }
    // L1 must cover the virtual size: entries needed = ceil(size / l2_span).
    let needed = h.size.div_ceil(h.l2_span());
    if (h.l1_size as u64) < needed {
        return Err(bad("l1_size", h.l1_size as u64, format!("too small for virtual size {} (needs {needed} entries)", h.size)));
    }
    let end_ok = |off: u64, len: u64| match file_len {
        Some(fl) => off.checked_add(len).is_some_and(|e| e <= fl),
        None => off.checked_add(len).is_some_and(|e| e < 1 << 56),
    };
    if h.l1_size > 0 && (h.l1_table_offset % cs != 0 || h.l1_table_offset == 0 || !end_ok(h.l1_table_offset, l1_bytes)) {
        return Err(bad("l1_table_offset", h.l1_table_offset, "must be cluster-aligned, after the header and inside the file"));
    }
    let rt_bytes = h.refcount_table_clusters as u64 * cs;
    if rt_bytes > MAX_REFTABLE_BYTES {
        return Err(bad("refcount_table_clusters", h.refcount_table_clusters as u64, "refcount table larger than 8 MiB (qemu's limit)"));
    }
    if h.refcount_table_offset % cs != 0 || h.refcount_table_offset == 0 || !end_ok(h.refcount_table_offset, rt_bytes) {
        return Err(bad("refcount_table_offset", h.refcount_table_offset, "must be cluster-aligned, after the header and inside the file"));
    }
    if h.nb_snapshots > MAX_SNAPSHOTS {
        return Err(bad("nb_snapshots", h.nb_snapshots as u64, "more than 65536 snapshots"));
    }
    if h.nb_snapshots > 0 && (h.snapshots_offset % cs != 0 || h.snapshots_offset == 0 || !end_ok(h.snapshots_offset, 1)) {
        return Err(bad("snapshots_offset", h.snapshots_offset, "must be cluster-aligned, after the header and inside the file"));
    }
    // Overlapping tables: L1 and refcount table must be disjoint (header is cluster 0, which
    // both already avoid by being non-zero and aligned).
    // Both ends were range-checked above; saturating keeps this safe if that order changes.
    let rt_end = h.refcount_table_offset.saturating_add(rt_bytes);
    let l1_end = h.l1_table_offset.saturating_add(l1_bytes);
    if h.l1_size > 0 && h.l1_table_offset < rt_end && h.refcount_table_offset < l1_end {
        return Err(bad("l1_table_offset", h.l1_table_offset, "L1 table overlaps the refcount table"));
    }
    // Header extensions (v3 only): bounded by cluster 0, each type at most once.
    if h.version == 3 {
        // Offsets are u64 so that `off + 8 + len` (len is an untrusted u32) cannot wrap, even
        // where usize is 32 bits; every offset used to index is <= lim <= head.len().
        let mut off = h.header_length as u64;
        let lim = (head.len() as u64).min(cs);
        let mut seen: Vec<u32> = Vec::new();
        loop {
            if off + 8 > lim {
                return Err(bad("header_extension", off, "extension list runs past cluster 0 without an end marker"));
            }
            let ty = be32(head, off as usize);
            let len = be32(head, off as usize + 4);
            if ty == 0 {
                break;
            }
            let data_end = off + 8 + len as u64;
            if data_end > lim {
                return Err(bad("header_extension", ty as u64, format!("extension of {len} bytes runs past cluster 0")));
            }
            if seen.contains(&ty) {
                return Err(bad("header_extension", ty as u64, "extension type appears twice"));
            }
            seen.push(ty);
            let data = &head[off as usize + 8..data_end as usize];
            match ty {
                EXT_BACKING_FORMAT => h.backing_format = Some(String::from_utf8_lossy(data).into_owned()),
                EXT_DATA_FILE => h.data_file = Some(String::from_utf8_lossy(data).into_owned()),
                EXT_BITMAPS => h.nb_bitmaps = be32(data, 0),
                EXT_CRYPTO => h.has_crypto_ext = true,
                EXT_FEATURE_TABLE => {}
                _ => {}
            }
            off = data_end.div_ceil(8) * 8;
        }
    }
    if h.backing_file_offset != 0 {
        let (o, n) = (h.backing_file_offset, h.backing_file_size as u64);
        if n > 1023 {
            return Err(bad("backing_file_size", n, "backing file name longer than 1023 bytes (qemu's limit)"));
        }
        // Both values are untrusted: `o + n` must not wrap, and the name must lie in the bytes we hold.
        let name = o
            .checked_add(n)
            .filter(|&end| o >= h.header_length as u64 && end <= cs.min(head.len() as u64))
            .and_then(|end| head.get(o as usize..end as usize));
        let Some(name) = name else {
            return Err(bad(
                "backing_file_offset",
                o,
                format!("backing file name ({n} bytes) must lie after the header and inside cluster 0"),
            ));
        };
        h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        b[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b
    }

    #[test]
    fn minimal_v2() {
        let h = parse(&v2(), Some(0x50000)).unwrap();
        assert_eq!((h.version, h.cluster_size(), h.refcount_order, h.l2_span()), (2, 65536, 4, 512 << 20));
        // L1 beyond a short file.
        assert!(parse(&v2(), Some(0x30000)).unwrap_err().to_string().contains("l1_table_offset"));
        assert!(matches!(parse(&v2()[..50], None), Err(Qcow2Error::NotQcow2(_))));
    }
}
