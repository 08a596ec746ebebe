//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven: the one
//! implementation for every format that uses it (VHDX headers and log entries;
//! ext4 `metadata_csum` and JBD2 journal checksums).

/// The standard CRC-32C of `data` (initial value and final XOR `!0`): what VHDX stores.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// The raw register update, without the initial or final inversion: the Linux
/// kernel's `crc32c(seed, data, len)`. ext4 and JBD2 chain it (a seed from the
/// filesystem UUID, then the inode number, then the structure) and store the
/// register as is.
pub fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = crc;
    for &b in data {
        crc = t[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b""), 0);
        // Chaining the raw update equals one pass over the concatenation.
        assert_eq!(crc32c_update(crc32c_update(!0, b"1234"), b"56789"), !0xE306_9283);
    }
}
