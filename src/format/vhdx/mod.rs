//! VHDX (Hyper-V, [MS-VHDX]): fixed and dynamic disks. This module owns the on-disk constants
//! and structures both directions share (GUIDs, header/region-table/metadata layout, the BAT
//! entry encoding, CRC-32C), the streaming decomposer ([`decompose`]: guest pieces + literal
//! stream + recipe, `format-spec/formats/vhdx.md`) and the one-pass writer ([`write`]).
//!
//! Differencing disks (HasParent, a parent locator, PARTIALLY_PRESENT blocks) and files with a
//! log to replay are refused: imgarc never opens a parent, and the guest view of a file with a
//! pending log is not what its BAT says until the log is replayed.
use super::{DecomposeSink, Decomposition, ImageError, Policy, RebuildSource, WriteOptions};
use std::io::{Read, Write};

mod decompose;
mod writer;

/// Whether [`decompose`] is implemented (archive stores the container opaque otherwise).
pub const DECOMPOSES: bool = true;
/// Whether [`write`] is implemented.
pub const WRITES: bool = true;

pub(crate) const FMT: &str = "vhdx";
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const KIB64: u64 = 64 << 10;
/// The file type identifier: `vhdxfile` at offset 0, then the creator (UTF-16LE, 512 bytes).
pub(crate) const SIGNATURE: &[u8; 8] = b"vhdxfile";
pub(crate) const CREATOR_LEN: usize = 512;
/// The two headers (4 KiB structures, each in a 64 KiB slot).
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
pub(crate) const HEADER_LEN: usize = 4096;
/// The two region tables (64 KiB each).
pub(crate) const REGION_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
pub(crate) const REGION_TABLE_LEN: usize = 64 << 10;
/// The fixed header section: identifier, headers, region tables (the first MiB of every file).
pub(crate) const HEADER_SECTION: u64 = MIB;
/// The metadata table occupies the first 64 KiB of the metadata region.
pub(crate) const METADATA_TABLE_LEN: usize = 64 << 10;
/// Entry limit of the region and metadata tables (the spec's 2047; both fit 64 KiB).
pub(crate) const MAX_TABLE_ENTRIES: u32 = 2047;

/// A GUID as its 16 on-disk bytes (first three fields little-endian, as Windows stores them).
pub(crate) type Guid = [u8; 16];

/// The on-disk bytes of the GUID `a-b-c-d-e`.
pub(crate) const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

pub(crate) const BAT_REGION: Guid = guid(0x2DC27766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
pub(crate) const METADATA_REGION: Guid = guid(0x8B7CA206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
pub(crate) const FILE_PARAMETERS: Guid = guid(0xCAA16737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
pub(crate) const VIRTUAL_DISK_SIZE: Guid = guid(0x2FA54224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
pub(crate) const PAGE83_DATA: Guid = guid(0xBECA12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
pub(crate) const LOGICAL_SECTOR_SIZE: Guid = guid(0x8141BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
pub(crate) const PHYSICAL_SECTOR_SIZE: Guid = guid(0xCDA348C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
pub(crate) const PARENT_LOCATOR: Guid = guid(0xA8D35F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);

/// File Parameters flags.
pub(crate) const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
pub(crate) const HAS_PARENT: u32 = 2;
/// Metadata entry flags.
pub(crate) const META_IS_VIRTUAL_DISK: u32 = 2;
pub(crate) const META_IS_REQUIRED: u32 = 4;

/// BAT entry: state in bits 0–2, file offset in MiB in bits 20–63.
pub(crate) const BAT_STATE_MASK: u64 = 7;
pub(crate) const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;

/// Payload blocks per sector-bitmap block: 2^23 sectors of `logical_sector_size` bytes.
pub(crate) fn chunk_ratio(logical_sector_size: u64, block_size: u64) -> u64 {
    ((1u64 << 23) * logical_sector_size) / block_size
}

/// BAT entries of a non-differencing disk with `data_blocks` payload blocks: a sector-bitmap
/// entry follows every `chunk_ratio` payload entries (qemu's count: none after the last chunk).
pub(crate) fn bat_entries(data_blocks: u64, chunk_ratio: u64) -> u64 {
    if data_blocks == 0 {
        0
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    }
}

/// The BAT index of payload block `block`.
pub(crate) fn bat_index(block: u64, chunk_ratio: u64) -> u64 {
    block + block / chunk_ratio
}

pub use crate::crc32c::crc32c;

/// The checksum of a header or region table: CRC-32C over `block` with its checksum field
/// (bytes 4..8) taken as zero.
pub(crate) fn structure_checksum(block: &[u8]) -> u32 {
    let mut v = block.to_vec();
    if v.len() >= 8 {
        v[4..8].fill(0);
    }
    crc32c(&v)
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Decomposes a VHDX file read from `input` in one pass (`format-spec/formats/vhdx.md`).
pub fn decompose(
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    decompose::decompose(input, file_len, policy, sink)
}

/// Writes the guest disk as a VHDX file (`--subformat dynamic` (default) | `fixed`) in one pass.
pub fn write(
    opts: &WriteOptions,
    virtual_size: u64,
    ranges: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    out: &mut dyn Write,
) -> Result<u64, ImageError> {
    writer::write(opts, virtual_size, ranges, src, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_test_vectors() {
        // RFC 3720 B.4 / the common check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn guids_have_the_on_disk_byte_order() {
        assert_eq!(hex::encode(BAT_REGION), "6677c22d23f600429d64115e9bfd4a08");
        assert_eq!(hex::encode(METADATA_REGION), "06a27c8b90479a4bb8fe575f050f886e");
    }

    #[test]
    fn bat_geometry() {
        assert_eq!(chunk_ratio(512, 32 << 20), 128);
        assert_eq!(chunk_ratio(4096, 1 << 20), 32768);
        assert_eq!(bat_entries(0, 128), 0);
        assert_eq!(bat_entries(128, 128), 128);
        assert_eq!(bat_entries(129, 128), 130);
        assert_eq!(bat_index(128, 128), 129);
    }
}
