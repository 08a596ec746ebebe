//! Unit tests of the decomposer on crafted VHDX files (1 MiB blocks, so files stay small) and
//! on the writer's output.
use super::super::writer::{header, region_table};
use super::*;
use std::collections::BTreeMap;

#[derive(Default, Debug)]
struct Mem {
    guest: BTreeMap<u64, Vec<u8>>,
    literal: Vec<u8>,
}
impl DecomposeSink for Mem {
    fn guest(&mut self, off: u64, d: &[u8]) -> std::io::Result<()> {
        self.guest.insert(off, d.to_vec());
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
            if de <= off {
                continue;
            }
            let (a, b) = (o.max(off), de.min(end));
            buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&d[(a - o) as usize..(b - o) as usize]);
        }
        Ok(())
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.copy_from_slice(&self.literal[off as usize..off as usize + buf.len()]);
        Ok(())
    }
}

/// A crafted image: 1 MiB blocks, BAT at 1 MiB, metadata at 2 MiB, block 1 stored at 4 MiB
/// and block 0 at 3 MiB (allocation order differs from guest order); block 2 ZERO; vsize 3 MiB.
struct Crafted {
    vsize: u64,
    block_size: u32,
    file_flags: u32,
    bat: Vec<u64>,
    extra_meta: Vec<(Guid, u32)>,
}
impl Default for Crafted {
    fn default() -> Self {
        Crafted { vsize: 3 * MIB, block_size: MIB as u32, file_flags: 0, bat: vec![(3 * MIB) | 6, (4 * MIB) | 6, 2], extra_meta: vec![] }
    }
}

fn block_pattern(blk: u64) -> Vec<u8> {
    (0..MIB).map(|i| ((i * 7 + blk * 13) % 251) as u8 + 1).collect()
}

impl Crafted {
    fn build(&self) -> Vec<u8> {
        let mut f = vec![0u8; 5 * MIB as usize];
        f[0..8].copy_from_slice(SIGNATURE);
        for (i, c) in "test".encode_utf16().enumerate() {
            f[8 + 2 * i..10 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        for (i, &at) in HEADER_OFFSETS.iter().enumerate() {
            let mut h = header(10 + i as u64, [1; 16], [2; 16]);
            h[68..72].fill(0); // no log
            h[72..80].fill(0);
            let c = structure_checksum(&h);
            h[4..8].copy_from_slice(&c.to_le_bytes());
            f[at as usize..at as usize + HEADER_LEN].copy_from_slice(&h);
        }
        // The writer's table has BAT at 2 MiB: patch it to 1 MiB, metadata at 2 MiB.
        let mut t = region_table(MIB, 2 * MIB);
        t[32..40].copy_from_slice(&MIB.to_le_bytes());
        let c = structure_checksum(&t);
        t[4..8].copy_from_slice(&c.to_le_bytes());
        for &at in &REGION_OFFSETS {
            f[at as usize..at as usize + REGION_TABLE_LEN].copy_from_slice(&t);
        }
        for (i, e) in self.bat.iter().enumerate() {
            f[MIB as usize + 8 * i..MIB as usize + 8 * i + 8].copy_from_slice(&e.to_le_bytes());
        }
        let m = 2 * MIB as usize;
        f[m..m + 8].copy_from_slice(b"metadata");
        let mut items: Vec<(Guid, u32, Vec<u8>)> = vec![
            (FILE_PARAMETERS, 4, [self.block_size.to_le_bytes(), self.file_flags.to_le_bytes()].concat()),
            (VIRTUAL_DISK_SIZE, 6, self.vsize.to_le_bytes().to_vec()),
            (PAGE83_DATA, 6, vec![9; 16]),
            (LOGICAL_SECTOR_SIZE, 6, 512u32.to_le_bytes().to_vec()),
            (PHYSICAL_SECTOR_SIZE, 6, 4096u32.to_le_bytes().to_vec()),
        ];
        for (g, fl) in &self.extra_meta {
            items.push((*g, *fl, vec![0; 8]));
        }
        f[m + 10..m + 12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut off = 65536usize;
        for (i, (g, fl, d)) in items.iter().enumerate() {
            let e = m + 32 + 32 * i;
            f[e..e + 16].copy_from_slice(g);
            f[e + 16..e + 20].copy_from_slice(&(off as u32).to_le_bytes());
            f[e + 20..e + 24].copy_from_slice(&(d.len() as u32).to_le_bytes());
            f[e + 24..e + 28].copy_from_slice(&fl.to_le_bytes());
            f[m + off..m + off + d.len()].copy_from_slice(d);
            off += d.len();
        }
        for (blk, e) in self.bat.iter().enumerate() {
            if e & 7 == 6 {
                let at = ((e >> 20) << 20) as usize;
                if at.checked_add(MIB as usize).is_some_and(|e| e <= f.len()) {
                    f[at..at + MIB as usize].copy_from_slice(&block_pattern(blk as u64));
                }
            }
        }
        f
    }
}

fn run(f: &[u8], len: Option<u64>) -> Result<(Decomposition, Mem), ImageError> {
    let mut m = Mem::default();
    let policy = Policy::default();
    let d = decompose(&mut &f[..], len, &policy, &mut m)?;
    Ok((d, m))
}

fn rebuilt(d: &Decomposition, m: &mut Mem) -> Vec<u8> {
    let mut out = Vec::new();
    crate::format::rebuild::rebuild(&d.recipe, m, &mut out).unwrap();
    out
}

#[test]
fn crafted_image_decomposes_and_rebuilds_exactly() {
    let f = Crafted::default().build();
    for len in [Some(f.len() as u64), None] {
        let (d, mut m) = run(&f, len).unwrap();
        assert_eq!(d.virtual_size, 3 * MIB);
        assert!(d.opaque.is_none());
        assert_eq!(d.info["allocated_blocks"], 2);
        assert_eq!(d.info["zero_blocks"], 1);
        assert_eq!(d.info["subformat"], "dynamic");
        assert_eq!(d.info["creator"], "test");
        assert_eq!(d.info["header_sequence"], 11);
        assert_eq!(rebuilt(&d, &mut m), f);
        let mut g = vec![0u8; 3 * MIB as usize];
        m.read_guest(0, &mut g).unwrap();
        assert_eq!(&g[..MIB as usize], &block_pattern(0)[..]);
        assert_eq!(&g[MIB as usize..2 * MIB as usize], &block_pattern(1)[..]);
        assert!(g[2 * MIB as usize..].iter().all(|&b| b == 0));
        // Guest data is not in the literal stream.
        assert!(d.literal_stream_bytes < 300 << 10, "{}", d.literal_stream_bytes);
    }
}

#[test]
fn writer_output_decomposes_to_its_guest_disk() {
    let vsize = 40 * MIB;
    let mut src = Mem::default();
    src.guest.insert(33 * MIB, vec![0xab; 5000]);
    src.guest.insert(0, vec![0x11; 512]);
    for fixed in [false, true] {
        let opts = WriteOptions { subformat: fixed.then(|| "fixed".into()), compress: false };
        let mut out = Vec::new();
        let n = write(&opts, vsize, &[(0, 512), (33 * MIB, 5000)], &mut src, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(out.len() as u64, 17 * MIB + 2 * 32 * MIB); // metadata at 16 MiB (writer::METADATA_MIN_OFFSET), 1 MiB long, then two blocks
        let (d, mut m) = run(&out, Some(n)).unwrap();
        assert_eq!(d.info["subformat"], if fixed { "fixed" } else { "dynamic" });
        assert_eq!(d.info["allocated_blocks"], 2);
        assert_eq!(d.virtual_size, vsize);
        let mut g = vec![0u8; vsize as usize];
        m.read_guest(0, &mut g).unwrap();
        let mut want = vec![0u8; vsize as usize];
        want[..512].fill(0x11);
        want[33 * MIB as usize..33 * MIB as usize + 5000].fill(0xab);
        assert!(g == want);
        assert_eq!(rebuilt(&d, &mut m), out);
    }
    // An empty dynamic disk stores no block.
    let mut out = Vec::new();
    write(&WriteOptions::default(), vsize, &[], &mut src, &mut out).unwrap();
    assert_eq!(out.len() as u64, 17 * MIB);
    let (d, _) = run(&out, None).unwrap();
    assert_eq!(d.info["allocated_blocks"], 0);
}

#[test]
fn writer_refuses_what_it_cannot_write() {
    let mut src = Mem::default();
    let mut out = Vec::new();
    let bad = WriteOptions { subformat: Some("differencing".into()), compress: false };
    assert!(write(&bad, MIB, &[], &mut src, &mut out).unwrap_err().to_string().contains("no subformat"));
    let comp = WriteOptions { subformat: None, compress: true };
    assert!(write(&comp, MIB, &[], &mut src, &mut out).is_err());
    assert!(write(&WriteOptions::default(), 1000, &[], &mut src, &mut out).unwrap_err().to_string().contains("logical sector"));
    assert!(write(&WriteOptions::default(), 65 << 40, &[], &mut src, &mut out).is_err());
}

#[test]
fn refuses_differencing_disks_and_unknown_required_items() {
    let f = Crafted { file_flags: HAS_PARENT, ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("differencing"));
    let f = Crafted { extra_meta: vec![(PARENT_LOCATOR, 0)], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("parent locator"));
    let f = Crafted { extra_meta: vec![([0x77; 16], META_IS_REQUIRED)], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("unknown required"));
    // An unknown optional item is ignored.
    let f = Crafted { extra_meta: vec![([0x77; 16], 0)], ..Default::default() }.build();
    run(&f, None).unwrap();
    let f = Crafted { bat: vec![(3 * MIB) | 7, (4 * MIB) | 6, 2], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("PARTIALLY_PRESENT"));
}

fn rechecksum(f: &mut [u8], at: usize, len: usize) {
    f[at + 4..at + 8].fill(0);
    let c = crc32c(&f[at..at + len]);
    f[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn refuses_a_log_to_replay() {
    let mut f = Crafted::default().build();
    for &at in &HEADER_OFFSETS {
        let at = at as usize;
        f[at + 48..at + 64].fill(0x5a);
        rechecksum(&mut f, at, HEADER_LEN);
    }
    let e = run(&f, None).unwrap_err().to_string();
    assert!(e.contains("log to replay") && e.contains("qemu-img check -r all"), "{e}");
    // Only the current header (larger sequence number with a valid checksum) counts.
    let mut f = Crafted::default().build();
    let at = HEADER_OFFSETS[0] as usize;
    f[at + 48..at + 64].fill(0x5a);
    rechecksum(&mut f, at, HEADER_LEN);
    run(&f, None).unwrap();
    // Header 2 (current) corrupt: header 1 becomes current.
    let mut f = Crafted::default().build();
    f[HEADER_OFFSETS[1] as usize + 100] ^= 1;
    assert_eq!(run(&f, None).unwrap().0.info["header_sequence"], 10);
}

#[test]
fn overlapping_and_out_of_file_blocks_are_malformed() {
    // Two guest blocks on one file block.
    let f = Crafted { bat: vec![(3 * MIB) | 6, (3 * MIB) | 6, 2], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("overlap"));
    // A block on the metadata region, in the header section, beyond the file.
    for off in [2 * MIB, 0, 9 * MIB] {
        let f = Crafted { bat: vec![off | 6, (4 * MIB) | 6, 2], ..Default::default() }.build();
        assert!(run(&f, Some(f.len() as u64)).is_err(), "block at {off:#x} accepted");
    }
    // Beyond the end without a known length: truncated at the end of the stream.
    let f = Crafted { bat: vec![(9 * MIB) | 6, (4 * MIB) | 6, 2], ..Default::default() }.build();
    assert!(matches!(run(&f, None), Err(ImageError::Truncated { .. })));
    // An offset whose block end overflows u64, in a stream of unknown length.
    let f = Crafted { bat: vec![!0xfffff_u64 | 6, (4 * MIB) | 6, 2], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("beyond the end"));
    // Unknown state.
    let f = Crafted { bat: vec![(3 * MIB) | 4, (4 * MIB) | 6, 2], ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("unknown block state"));
}

#[test]
fn bad_metadata_values_are_malformed() {
    for bs in [0u32, 3 << 20, 512 << 20, 1 << 19] {
        let f = Crafted { block_size: bs, ..Default::default() }.build();
        assert!(run(&f, None).is_err(), "block size {bs} accepted");
    }
    let f = Crafted { vsize: 3 * MIB + 1, ..Default::default() }.build();
    assert!(run(&f, None).is_err());
    // More blocks than BAT entries fit in its 1 MiB region: 2^17 entries.
    let f = Crafted { vsize: (1 << 17) * MIB + MIB, ..Default::default() }.build();
    assert!(run(&f, None).unwrap_err().to_string().contains("entries"));
    let f = Crafted { vsize: 1 << 50, ..Default::default() }.build();
    assert!(matches!(run(&f, None), Err(ImageError::Limit(_))));
}

#[test]
fn truncation_at_every_structure_boundary_is_an_error() {
    let f = Crafted::default().build();
    let cuts = [
        0usize,
        7,
        8,
        0x10000,
        0x11000,
        0x20000,
        0x30000,
        0x40000,
        0x4ffff,
        0x50000,
        0x100000,
        0x200000,
        0x2fffff,
        0x300000,
        0x300001,
        0x400000,
        f.len() - 1,
    ];
    for &cut in &cuts {
        let t = &f[..cut];
        assert!(run(t, Some(cut as u64)).is_err(), "cut at {cut:#x} accepted with its length");
        assert!(run(t, None).is_err(), "cut at {cut:#x} accepted as a stream");
        // A stream shorter than its announced length.
        assert!(run(t, Some(f.len() as u64)).is_err(), "cut at {cut:#x} accepted against the full length");
    }
}

#[test]
fn bit_flips_are_errors_or_exact() {
    let f = Crafted::default().build();
    // Every third byte of each structure's fields (one bit, rotating), and bits of the BAT entries
    // (a debug build decomposes the 5 MiB file ~150 times here).
    let mut flips: Vec<(usize, u8)> = (0..24).step_by(3).map(|i| (i, (i % 8) as u8)).collect();
    for (base, n) in [(0x10000usize, 80), (0x20000, 16), (0x30000, 80), (0x200000, 96), (0x210000, 40)] {
        flips.extend((base..base + n).step_by(3).map(|i| (i, (i % 8) as u8)));
    }
    flips.extend((0x100000..0x100018).flat_map(|i| [(i, 0u8), (i, 2), (i, 5)]));
    for (at, bit) in flips {
        {
            let mut g = f.clone();
            g[at] ^= 1 << bit;
            if let Ok((d, mut m)) = run(&g, Some(g.len() as u64)) {
                assert_eq!(rebuilt(&d, &mut m), g, "flip at {at:#x} bit {bit}: rebuild differs");
            }
        }
    }
}

#[test]
fn tables_beyond_the_hold_cap_go_opaque_exactly() {
    let f = Crafted::default().build();
    let policy = Policy { max_pending_ram: 1 << 20, ..Policy::default() };
    let mut m = Mem::default();
    let d = decompose(&mut &f[..], Some(f.len() as u64), &policy, &mut m).unwrap();
    assert!(d.opaque.as_deref().unwrap().contains("beyond"));
    assert!(m.guest.is_empty());
    assert_eq!(rebuilt(&d, &mut m), f);
    let strict = Policy { max_pending_ram: 1 << 20, strict: true, ..Policy::default() };
    assert!(decompose(&mut &f[..], None, &strict, &mut Mem::default()).is_err());
}

#[test]
fn segment_budget_goes_opaque_for_the_rest() {
    let f = Crafted::default().build();
    let policy = Policy { max_segments: 8, ..Policy::default() };
    let mut m = Mem::default();
    let d = decompose(&mut &f[..], None, &policy, &mut m).unwrap();
    assert!(d.opaque.as_deref().unwrap().contains("segments"));
    assert_eq!(rebuilt(&d, &mut m), f);
}
