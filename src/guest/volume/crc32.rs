//! CRC-32 with the IEEE 802.3 polynomial (reflected 0xEDB88320), table-driven:
//! GPT's header and entry-array checksum (standard form) and LVM2's label and
//! metadata checksum (the same register, started at LVM's own value, not inverted).
//! CRC-32C, a different polynomial, is `format::vhdx::crc32c`.

fn table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    })
}

/// The register after feeding `data` into `crc` (no inversion on either side).
pub(super) fn update(mut crc: u32, data: &[u8]) -> u32 {
    let t = table();
    for &b in data {
        crc = t[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC-32 (zlib's, GPT's).
pub(super) fn crc32(data: &[u8]) -> u32 {
    !update(!0, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_check_value() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
