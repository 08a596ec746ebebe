//! Unit tests of the VDI decomposer and writer on crafted bytes: round trips through the writer, refusals,
//! malformed block maps, truncation at every header boundary, bit flips.
use super::header::{off, BLOCK_FREE, BLOCK_ZERO};
use super::*;
use crate::format::rebuild::rebuild;
use crate::format::recipe::{Recipe, Segment};
use crate::format::{DecomposeSink, ImageError, Policy, RebuildSource, WriteOptions};
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

#[derive(Default)]
struct Mem {
    guest: BTreeMap<u64, Vec<u8>>,
    literal: Vec<u8>,
}
impl DecomposeSink for Mem {
    fn guest(&mut self, off: u64, d: &[u8]) -> std::io::Result<()> {
        assert!(self.guest.insert(off, d.to_vec()).is_none(), "guest offset {off} emitted twice");
        Ok(())
    }
    fn literal(&mut self, d: &[u8]) -> std::io::Result<()> {
        self.literal.extend_from_slice(d);
        Ok(())
    }
}
impl RebuildSource for Mem {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (&o, d) in self.guest.range(..end) {
            let de = o + d.len() as u64;
            if de > off {
                let (a, b) = (o.max(off), de.min(end));
                buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&d[(a - o) as usize..(b - o) as usize]);
            }
        }
        Ok(())
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.copy_from_slice(&self.literal[off as usize..off as usize + buf.len()]);
        Ok(())
    }
}

/// A guest disk in memory as a rebuild source (for the writer).
struct Disk(Vec<u8>);
impl RebuildSource for Disk {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.copy_from_slice(&self.0[off as usize..off as usize + buf.len()]);
        Ok(())
    }
    fn read_literal(&mut self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("the writer reads no literal"))
    }
}

fn guest_disk(vsize: usize) -> Vec<u8> {
    let mut d = vec![0u8; vsize];
    for (at, len) in [(0usize, 4096usize), (2 * MIB as usize + 17, 70_000), (5 * MIB as usize - 3, 6)] {
        for (i, b) in d[at.min(vsize)..(at + len).min(vsize)].iter_mut().enumerate() {
            *b = (i * 7 + at) as u8 | 1;
        }
    }
    d
}

fn write_vdi(disk: &[u8], ranges: &[(u64, u64)], subformat: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let opts = WriteOptions { subformat: subformat.map(String::from), compress: false };
    let n = write(&opts, disk.len() as u64, ranges, &mut Disk(disk.to_vec()), &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

/// Decomposes `img` (with and without a known length), checks the exact rebuild and returns the guest disk.
fn roundtrip(img: &[u8]) -> (Vec<u8>, serde_json::Value) {
    let mut result = None;
    for file_len in [Some(img.len() as u64), None] {
        let mut m = Mem::default();
        let d = decompose(&mut &img[..], file_len, &Policy::default(), &mut m).unwrap();
        let mut out = Vec::new();
        rebuild(&d.recipe, &mut m, &mut out).unwrap();
        assert!(out == img, "rebuild differs");
        let mut g = vec![0u8; d.virtual_size as usize];
        m.read_guest(0, &mut g).unwrap();
        result = Some((g, d.info));
    }
    result.unwrap()
}

fn decompose_err(img: &[u8]) -> ImageError {
    let mut m = Mem::default();
    decompose(&mut &img[..], Some(img.len() as u64), &Policy::default(), &mut m).unwrap_err()
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn dynamic_writer_output_decomposes_to_the_disk() {
    let disk = guest_disk(8 * MIB as usize);
    // One range spans the all-zero block 1: it must stay unallocated.
    let img = write_vdi(&disk, &[(0, 3 * MIB), (5 * MIB - 3, 6)], None);
    assert_eq!(&img[..4], b"<<< ");
    assert_eq!(header::u32_at(&img, off::IMAGE_TYPE), header::TYPE_NORMAL);
    assert_eq!(header::u32_at(&img, off::OFFSET_BMAP), 0x200);
    assert_eq!(header::u32_at(&img, off::OFFSET_DATA), 0x400);
    assert_eq!(header::u32_at(&img, off::BLOCKS_ALLOCATED), 4);
    assert_eq!(img.len() as u64, 0x400 + 4 * MIB);
    assert_eq!(header::u32_at(&img, 0x200 + 4), BLOCK_FREE);
    // Fresh version-4 uuids per write; no parent.
    let again = write_vdi(&disk, &[(0, 3 * MIB), (5 * MIB - 3, 6)], None);
    assert_ne!(img[off::UUID_CREATE..off::UUID_CREATE + 16], again[off::UUID_CREATE..off::UUID_CREATE + 16]);
    assert_ne!(img[off::UUID_CREATE..off::UUID_CREATE + 16], img[off::UUID_MODIFY..off::UUID_MODIFY + 16]);
    assert_eq!(img[off::UUID_CREATE + 7] >> 4, 4);
    assert!(img[off::UUID_LINKAGE..0x200].iter().all(|&b| b == 0));
    assert!(img[..0x40].starts_with(writer::PRE_HEADER.as_bytes()));
    assert!(img[0x200..0x400] == again[0x200..0x400] && img[0x400..] == again[0x400..]);
    let (g, info) = roundtrip(&img);
    assert!(g == disk);
    assert_eq!(info["subformat"], "dynamic");
    assert_eq!(info["blocks"], 8);
    assert_eq!(info["blocks_mapped"], 4);
    assert_eq!(info["block_size"], MIB);
}

#[test]
fn fixed_writer_output_decomposes_to_the_disk() {
    let disk = guest_disk(6 * MIB as usize);
    let img = write_vdi(&disk, &[(0, 6 * MIB)], Some("fixed"));
    assert_eq!(img.len() as u64, 0x400 + 6 * MIB);
    assert_eq!(header::u32_at(&img, off::IMAGE_TYPE), header::TYPE_FIXED);
    let (g, info) = roundtrip(&img);
    assert!(g == disk);
    assert_eq!(info["subformat"], "fixed");
    assert_eq!(info["blocks_allocated"], 6);
}

#[test]
fn writer_refuses_unknown_subformat_and_compression() {
    let disk = guest_disk(MIB as usize);
    let mut out = Vec::new();
    let e = write(&WriteOptions { subformat: Some("split2g".into()), compress: false }, MIB, &[], &mut Disk(disk.clone()), &mut out);
    assert!(e.unwrap_err().to_string().contains("split2g"));
    let e = write(&WriteOptions { subformat: None, compress: true }, MIB, &[], &mut Disk(disk), &mut out);
    assert!(e.unwrap_err().to_string().contains("--compress"));
}

#[test]
fn unaligned_disk_size_keeps_the_block_tail_literal() {
    // 3000000 bytes: qemu-img rounds to 3000320; the writer does the same, the last block's tail is past it.
    let mut disk = guest_disk(3_000_000);
    disk[2_999_999] = 9;
    let img = write_vdi(&disk, &[(0, 3_000_000)], None);
    assert_eq!(header::u64_at(&img, off::DISK_SIZE), 3_000_320);
    let (g, _) = roundtrip(&img);
    assert_eq!(g.len(), 3_000_320);
    assert!(g[..3_000_000] == disk[..] && g[3_000_000..].iter().all(|&b| b == 0));
}

#[test]
fn blocks_in_allocation_order_land_at_their_guest_offsets() {
    let disk = guest_disk(6 * MIB as usize);
    let mut img = write_vdi(&disk, &[(0, 6 * MIB)], None);
    // Allocated: guest blocks 0, 2, 4 at data indices 0, 1, 2. Swap the data of indices 0 and 2 and their entries.
    let (d0, d2) = (0x400usize, 0x400 + 2 * MIB as usize);
    let b0 = img[d0..d0 + MIB as usize].to_vec();
    let b2 = img[d2..d2 + MIB as usize].to_vec();
    img[d0..d0 + MIB as usize].copy_from_slice(&b2);
    img[d2..d2 + MIB as usize].copy_from_slice(&b0);
    put32(&mut img, 0x200, 2);
    put32(&mut img, 0x200 + 16, 0);
    let (g, _) = roundtrip(&img);
    assert!(g == disk);
}

#[test]
fn zero_entries_and_unreferenced_blocks() {
    let disk = guest_disk(6 * MIB as usize);
    let mut img = write_vdi(&disk, &[(0, 6 * MIB)], None);
    // Guest block 2 discarded (zero entry): its data block is no longer referenced and becomes literal.
    put32(&mut img, 0x200 + 8, BLOCK_ZERO);
    let (g, info) = roundtrip(&img);
    assert!(g[..2 * MIB as usize] == disk[..2 * MIB as usize]);
    assert!(g[2 * MIB as usize..3 * MIB as usize].iter().all(|&b| b == 0));
    assert_eq!(info["zero_blocks"], 1);
    assert_eq!(info["blocks_mapped"], 3);
}

#[test]
fn refusals_name_the_field() {
    let disk = guest_disk(6 * MIB as usize);
    let img = write_vdi(&disk, &[(0, 6 * MIB)], None);
    let cases: Vec<(usize, u32, &str)> = vec![
        (off::IMAGE_TYPE, 3, "undo"),
        (off::IMAGE_TYPE, 4, "differencing"),
        (off::IMAGE_TYPE, 9, "unknown image type"),
        (off::UUID_LINKAGE, 1, "linkage uuid"),
        (off::UUID_PARENT_MODIFY + 12, 1, "parent modification uuid"),
        (off::VERSION, 0x0001_0000, "version 1.0"),
        (off::SIGNATURE, 0, "signature"),
        (off::HEADER_SIZE, 0x200, "header size"),
        (off::SECTOR_SIZE, 4096, "sector size"),
        (off::BLOCK_SIZE, 3 << 19, "block size"),
        (off::BLOCK_SIZE, 128 << 20, "block size"),
        (off::BLOCK_EXTRA, 512, "block extra"),
        (off::BLOCKS, 7, "blocks in disk"),
        (off::BLOCKS_ALLOCATED, 7, "blocks allocated"),
        (off::OFFSET_BMAP, 0x201, "not sector aligned"),
        (off::OFFSET_BMAP, 0, "inside the header"),
        (off::OFFSET_DATA, 0x200, "overlaps"),
        (off::OFFSET_DATA, 0x600, "past the file end"),
    ];
    for (at, v, want) in cases {
        let mut b = img.clone();
        put32(&mut b, at, v);
        let e = decompose_err(&b).to_string();
        assert!(e.contains(want) && e.contains("vdi"), "field {at:#x} = {v:#x}: {e}");
    }
    let mut b = img.clone();
    b[off::DISK_SIZE..off::DISK_SIZE + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(decompose_err(&b), ImageError::Limit(_)));
}

#[test]
fn malformed_block_maps() {
    let disk = guest_disk(6 * MIB as usize);
    let img = write_vdi(&disk, &[(0, 6 * MIB)], None);
    let mut b = img.clone();
    put32(&mut b, 0x200 + 4, 0); // guest block 1 also names data block 0
    assert!(decompose_err(&b).to_string().contains("both name data block 0"));
    let mut b = img.clone();
    put32(&mut b, 0x200 + 4, 4); // only 4 are allocated
    assert!(decompose_err(&b).to_string().contains("only 4 are allocated"));
    let fixed = write_vdi(&disk, &[(0, 6 * MIB)], Some("fixed"));
    let mut b = fixed.clone();
    put32(&mut b, 0x200, 1);
    put32(&mut b, 0x204, 0);
    assert!(decompose_err(&b).to_string().contains("fixed image"));
    let mut b = fixed.clone();
    put32(&mut b, 0x200, BLOCK_FREE);
    assert!(decompose_err(&b).to_string().contains("unallocated"));
}

/// A small hand-built dynamic image: 4 KiB disk, 512-byte blocks, the map out of guest order
/// ([1, free, 0, zero, 2, free, free, free]), three data blocks and a VDIHEADER1PLUS (with LCHS).
fn small_image() -> Vec<u8> {
    let h = header::Header {
        pre_header: "<<< test >>>\n".into(),
        header_size: header::HEADER_SIZE_V1_PLUS,
        image_type: header::TYPE_NORMAL,
        flags: 0,
        comment: "comment".into(),
        offset_bmap: 0x200,
        offset_data: 0x400,
        legacy_chs: [0; 3],
        disk_size: 4096,
        block_size: 512,
        blocks: 8,
        blocks_allocated: 3,
        uuid_create: [1; 16],
        uuid_modify: [2; 16],
        lchs: None,
    };
    let mut b = header::encode(&h);
    put32(&mut b, off::LCHS + 12, 512);
    for e in [1, BLOCK_FREE, 0, BLOCK_ZERO, 2, BLOCK_FREE, BLOCK_FREE, BLOCK_FREE] {
        b.extend_from_slice(&e.to_le_bytes());
    }
    b.resize(0x400, 0);
    for block in 0..3u8 {
        b.extend((0..512).map(|i| if i % 5 == 0 { 0 } else { block.wrapping_mul(31).wrapping_add(i as u8) | 1 }));
    }
    b
}

#[test]
fn small_block_image_with_a_header_plus() {
    let img = small_image();
    let (g, info) = roundtrip(&img);
    assert!(g[..512] == img[0x600..0x800], "guest block 0 is data block 1");
    assert!(g[1024..1536] == img[0x400..0x600], "guest block 2 is data block 0");
    assert!(g[2048..2560] == img[0x800..0xa00], "guest block 4 is data block 2");
    assert!(g[512..1024].iter().chain(&g[1536..2048]).chain(&g[2560..]).all(|&b| b == 0));
    assert_eq!(info["comment"], "comment");
    assert_eq!(info["lchs_geometry"][3], 512);
    assert_eq!(info["zero_blocks"], 1);
    assert_eq!(info["uuid_create"], "01010101-0101-0101-0101-010101010101");
}

#[test]
fn every_truncation_is_an_error() {
    let img = small_image();
    for n in 0..img.len() {
        for file_len in [Some(n as u64), None, Some(img.len() as u64)] {
            let mut m = Mem::default();
            assert!(decompose(&mut &img[..n], file_len, &Policy::default(), &mut m).is_err(), "prefix {n} ({file_len:?}) accepted");
        }
    }
}

#[test]
fn bit_flips_are_errors_or_exact() {
    let img = small_image();
    let small = Policy { max_virtual_size: 1 << 30, ..Policy::default() };
    for i in 0..img.len() {
        for bit in 0..8 {
            let mut b = img.clone();
            b[i] ^= 1 << bit;
            for file_len in [Some(b.len() as u64), None] {
                let mut m = Mem::default();
                if let Ok(d) = decompose(&mut &b[..], file_len, &small, &mut m) {
                    let mut out = Vec::new();
                    rebuild(&d.recipe, &mut m, &mut out).unwrap();
                    assert!(out == b, "flip {i}:{bit} rebuilds differently");
                }
            }
        }
    }
}

#[test]
fn map_after_the_data_is_stored_opaque() {
    // Hand-built: header, data block 0 at 0x200, the map at 0x200 + 1 MiB.
    let disk = guest_disk(MIB as usize);
    let img = write_vdi(&disk, &[(0, MIB)], None);
    let mut b = img[..0x200].to_vec();
    put32(&mut b, off::OFFSET_DATA, 0x200);
    put32(&mut b, off::OFFSET_BMAP, 0x200 + MIB as u32);
    b.extend_from_slice(&img[0x400..]);
    b.extend_from_slice(&img[0x200..0x400]);
    let mut m = Mem::default();
    let d = decompose(&mut &b[..], Some(b.len() as u64), &Policy::default(), &mut m).unwrap();
    assert!(d.opaque.as_deref().unwrap().contains("follows the data"));
    assert!(m.guest.is_empty());
    let r = Recipe::decode(&d.recipe).unwrap();
    assert_eq!(r.flags, crate::format::recipe::FLAG_OPAQUE);
    assert!(r.segments.iter().all(|s| !matches!(s, Segment::Guest { .. })));
    let mut out = Vec::new();
    rebuild(&d.recipe, &mut m, &mut out).unwrap();
    assert!(out == b);
    let strict = Policy { strict: true, ..Policy::default() };
    assert!(decompose(&mut &b[..], None, &strict, &mut Mem::default()).is_err());
}

#[test]
fn trailing_bytes_are_literal_and_the_announced_length_is_checked() {
    let disk = guest_disk(2 * MIB as usize);
    let mut img = write_vdi(&disk, &[(0, 2 * MIB)], None);
    img.extend_from_slice(b"trailer");
    let (g, info) = roundtrip(&img);
    assert!(g == disk);
    assert_eq!(info["trailing_bytes"], 7);
    let mut m = Mem::default();
    let e = decompose(&mut &img[..], Some(img.len() as u64 - 1), &Policy::default(), &mut m).unwrap_err();
    assert!(e.to_string().contains("announced"), "{e}");
}

#[test]
fn segment_budget_turns_the_rest_opaque() {
    let disk = guest_disk(6 * MIB as usize);
    let img = write_vdi(&disk, &[(0, 6 * MIB)], None);
    let tight = Policy { max_segments: 4, ..Policy::default() };
    let mut m = Mem::default();
    let d = decompose(&mut &img[..], None, &tight, &mut m).unwrap();
    assert!(d.opaque.as_deref().unwrap().contains("segments"));
    let mut out = Vec::new();
    rebuild(&d.recipe, &mut m, &mut out).unwrap();
    assert!(out == img);
    let strict = Policy { strict: true, ..tight };
    assert!(matches!(decompose(&mut &img[..], None, &strict, &mut Mem::default()), Err(ImageError::Limit(_))));
}
