//! The one-pass VHD decomposer: guest pieces + literal stream + layout recipe, for fixed and
//! dynamic disks; differencing disks (they name a parent) are refused.
//!
//! The guest stream is what qemu's `vpc` driver reads (`format-spec/formats/vhd.md`): its size
//! follows qemu's creator rule ([`Footer::guest_size`]), a dynamic disk's allocated blocks are
//! read whole whatever their sector bitmap says (qemu ignores the bitmap of a non-differencing
//! disk), unallocated blocks are holes.
use super::{
    be32, be64, checksum, printable, uuid_str, Footer, FOOTER_LEN, FORMAT, HEADER_LEN, SECTOR, SPARSE_COOKIE, TYPE_DIFFERENCING,
    TYPE_DYNAMIC, TYPE_FIXED, UNALLOCATED,
};
use crate::chunking::is_zero;
use crate::format::recipe::{Recipe, SegList, Segment};
use crate::format::{DecomposeSink, Decomposition, ImageError, Policy};
use serde_json::json;
use std::io::Read;

const BUF: usize = 1 << 20;
/// Bytes of a fixed VHD held back from the guest stream until its footer (the last 512 bytes)
/// says how large the guest disk is: the footer, plus the largest gap a CHS geometry leaves
/// below `current_size` (under one cylinder of 16 heads × 255 sectors, about 2 MiB).
const FIXED_HOLDBACK: usize = (4 << 20) + FOOTER_LEN;

/// The reading position over the image and the recipe/literal stream built so far.
struct Walk<'a> {
    input: &'a mut dyn Read,
    sink: &'a mut dyn DecomposeSink,
    pos: u64,
    lit: u64,
    segs: SegList,
    buf: Vec<u8>,
}

impl Walk<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        let n = crate::util::read_full(self.input, buf)?;
        if n < buf.len() {
            return Err(ImageError::Truncated { format: FORMAT, expected: self.pos + buf.len() as u64, got: self.pos + n as u64 });
        }
        Ok(())
    }

    /// Records `data`, which sits at the current position, as literal bytes (zeros as a zero run).
    fn literal_here(&mut self, data: &[u8]) -> Result<(), ImageError> {
        let len = data.len() as u64;
        if is_zero(data) {
            self.segs.push(self.pos, Segment::Zero { len });
        } else {
            self.sink.literal(data)?;
            self.segs.push(self.pos, Segment::Literal { len, lit_off: self.lit });
            self.lit += len;
        }
        self.pos += len;
        Ok(())
    }

    fn guest_here(&mut self, guest_off: u64, data: &[u8]) -> Result<(), ImageError> {
        self.sink.guest(guest_off, data)?;
        self.segs.push(self.pos, Segment::Guest { len: data.len() as u64, guest_off });
        self.pos += data.len() as u64;
        Ok(())
    }

    fn copy_literal(&mut self, mut n: u64) -> Result<(), ImageError> {
        let mut buf = std::mem::take(&mut self.buf);
        while n > 0 {
            let k = n.min(BUF as u64) as usize;
            self.read_exact(&mut buf[..k])?;
            self.literal_here(&buf[..k])?;
            n -= k as u64;
        }
        self.buf = buf;
        Ok(())
    }

    fn copy_guest(&mut self, mut n: u64, mut guest_off: u64) -> Result<(), ImageError> {
        let mut buf = std::mem::take(&mut self.buf);
        while n > 0 {
            let k = n.min(BUF as u64) as usize;
            self.read_exact(&mut buf[..k])?;
            self.guest_here(guest_off, &buf[..k])?;
            n -= k as u64;
            guest_off += k as u64;
        }
        self.buf = buf;
        Ok(())
    }

    /// Everything up to the end of the input, as literal bytes.
    fn rest_literal(&mut self) -> Result<(), ImageError> {
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            let n = crate::util::read_full(self.input, &mut buf)?;
            if n == 0 {
                break;
            }
            self.literal_here(&buf[..n])?;
        }
        self.buf = buf;
        Ok(())
    }

    fn finish(self, virtual_size: u64, file_len: Option<u64>, info: serde_json::Value) -> Result<Decomposition, ImageError> {
        if let Some(len) = file_len {
            if self.pos != len {
                return Err(ImageError::Truncated { format: FORMAT, expected: len, got: self.pos });
            }
        }
        let segments = self.segs.finish(self.pos)?;
        let recipe = Recipe { file_len: self.pos, cluster_bits: 9, virtual_size, flags: 0, segments };
        Ok(Decomposition { recipe: recipe.encode(), virtual_size, literal_stream_bytes: self.lit, info, opaque: None })
    }
}

fn verify_footer(f: &Footer, raw: &[u8; FOOTER_LEN], at: u64) -> Result<(), ImageError> {
    let want = checksum(raw, 64);
    if f.checksum != want {
        return Err(ImageError::malformed(
            FORMAT,
            format!("footer at offset {at}: checksum {:#010x} does not match the computed {want:#010x}", f.checksum),
        ));
    }
    match f.disk_type {
        TYPE_FIXED | TYPE_DYNAMIC => Ok(()),
        TYPE_DIFFERENCING => Err(ImageError::refused(
            FORMAT,
            format!("footer at offset {at}: disk type 4 (differencing) names a parent disk; differencing VHDs are not archived"),
        )),
        t => Err(ImageError::malformed(FORMAT, format!("footer at offset {at}: unknown disk type {t}"))),
    }
}

fn footer_info(f: &Footer, subformat: &str, virtual_size: u64) -> serde_json::Value {
    json!({
        "format": FORMAT,
        "subformat": subformat,
        "virtual_size": virtual_size,
        "current_size": f.current_size,
        "original_size": f.original_size,
        "geometry": {"cylinders": f.cylinders, "heads": f.heads, "sectors_per_track": f.sectors_per_track},
        "size_from": if f.size_from_current_size() { "current_size" } else { "geometry" },
        "creator_app": f.creator_app_str(),
        "creator_version": format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xffff),
        "creator_host_os": printable(&f.creator_os),
        "features": f.features,
        "uuid": uuid_str(&f.uuid),
        "saved_state": f.saved_state != 0,
        "timestamp": f.timestamp,
        "checksum_ok": true,
    })
}

/// Decomposes a VHD read from `input` in one pass (see the module doc).
pub fn decompose(
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    let w = Walk { input, sink, pos: 0, lit: 0, segs: SegList::default(), buf: vec![0u8; BUF] };
    let mut head = [0u8; FOOTER_LEN];
    let n = crate::util::read_full(w.input, &mut head)?;
    match Footer::parse(&head) {
        Some(f) if n == FOOTER_LEN => {
            verify_footer(&f, &head, 0)?;
            if f.disk_type == TYPE_DYNAMIC {
                decompose_dynamic(w, f, &head, file_len, policy)
            } else {
                decompose_fixed(w, head.to_vec(), Some(head), file_len, policy)
            }
        }
        _ => decompose_fixed(w, head[..n].to_vec(), None, file_len, policy),
    }
}

/// A fixed VHD: the guest data from offset 0, then the footer in the last 512 bytes. Since the
/// footer comes last, the last [`FIXED_HOLDBACK`] bytes are held back until it has been read.
fn decompose_fixed(
    mut w: Walk<'_>,
    mut held: Vec<u8>,
    head_footer: Option<[u8; FOOTER_LEN]>,
    file_len: Option<u64>,
    policy: &Policy,
) -> Result<Decomposition, ImageError> {
    // Guest bytes emitted so far, at host offsets [0, emitted) = guest offsets [0, emitted).
    let mut emitted = 0u64;
    let mut buf = std::mem::take(&mut w.buf);
    loop {
        let n = crate::util::read_full(w.input, &mut buf)?;
        if n == 0 {
            break;
        }
        held.extend_from_slice(&buf[..n]);
        if held.len() >= 2 * FIXED_HOLDBACK {
            let out = held.len() - FIXED_HOLDBACK;
            if emitted + out as u64 > policy.max_virtual_size {
                return Err(ImageError::Limit(format!("fixed VHD data exceeds max_virtual_size {}", policy.max_virtual_size)));
            }
            w.guest_here(emitted, &held[..out])?;
            emitted += out as u64;
            held.drain(..out);
        }
    }
    w.buf = buf;
    let total = emitted + held.len() as u64;
    let not_vhd = |why: String| {
        ImageError::malformed(
            FORMAT,
            format!("not a VHD: no `conectix` footer copy at offset 0 (dynamic) and {why} (fixed); the bytes do not match disk_format vhd"),
        )
    };
    if held.len() < FOOTER_LEN {
        return Err(not_vhd(format!("the file is only {total} bytes, shorter than a footer")));
    }
    let footer_at = total - FOOTER_LEN as u64;
    let tail: [u8; FOOTER_LEN] = held[held.len() - FOOTER_LEN..].try_into().expect("512 bytes");
    let f = Footer::parse(&tail).ok_or_else(|| not_vhd(format!("no `conectix` footer in the last 512 bytes (offset {footer_at})")))?;
    verify_footer(&f, &tail, footer_at)?;
    if f.disk_type != TYPE_FIXED {
        return Err(ImageError::malformed(
            FORMAT,
            format!(
                "footer at offset {footer_at}: disk type {} but no footer copy at offset 0 (a dynamic VHD starts with one)",
                f.disk_type
            ),
        ));
    }
    if head_footer.is_some_and(|h| h != tail) {
        // qemu would size such a disk from its first sector, which is guest data here.
        return Err(ImageError::refused(
            FORMAT,
            "fixed VHD whose first sector is a VHD footer different from the one at its end (a VHD inside the guest disk?)",
        ));
    }
    if f.current_size != footer_at {
        return Err(ImageError::malformed(
            FORMAT,
            format!("fixed VHD footer at offset {footer_at}: current size {} does not equal the data length {footer_at}", f.current_size),
        ));
    }
    let virtual_size = f.guest_size()?;
    if virtual_size > footer_at {
        return Err(ImageError::malformed(
            FORMAT,
            format!(
                "fixed VHD footer at offset {footer_at}: its CHS geometry gives {virtual_size} bytes, more than the data's {footer_at}"
            ),
        ));
    }
    if virtual_size < emitted {
        return Err(ImageError::refused(
            FORMAT,
            format!("fixed VHD: the guest size {virtual_size} (CHS geometry) is far below the data length {footer_at}; not decomposed"),
        ));
    }
    let guest_tail = (virtual_size - emitted) as usize;
    w.guest_here(emitted, &held[..guest_tail])?;
    w.literal_here(&held[guest_tail..held.len() - FOOTER_LEN])?;
    w.literal_here(&tail)?;
    let mut info = footer_info(&f, "fixed", virtual_size);
    info["data_length"] = json!(footer_at);
    w.finish(virtual_size, file_len, info)
}

/// A dynamic VHD: footer copy, dynamic-disk header, BAT, blocks (sector bitmap + data) in any
/// order after the BAT, footer.
fn decompose_dynamic(
    mut w: Walk<'_>,
    f: Footer,
    head: &[u8; FOOTER_LEN],
    file_len: Option<u64>,
    policy: &Policy,
) -> Result<Decomposition, ImageError> {
    w.literal_here(head)?;
    let virtual_size = f.guest_size()?;
    if virtual_size > policy.max_virtual_size {
        return Err(ImageError::Limit(format!("VHD virtual size {virtual_size} exceeds max_virtual_size {}", policy.max_virtual_size)));
    }
    let past_file = |end: u64| end == u64::MAX || file_len.is_some_and(|l| end > l);
    let data_offset = f.data_offset;
    if data_offset < FOOTER_LEN as u64 || past_file(data_offset.saturating_add(HEADER_LEN as u64)) {
        return Err(ImageError::malformed(
            FORMAT,
            format!("footer: data offset {data_offset} (dynamic header) overlaps the footer copy or lies past the end of the file"),
        ));
    }
    w.copy_literal(data_offset - FOOTER_LEN as u64)?;
    let mut h = [0u8; HEADER_LEN];
    w.read_exact(&mut h)?;
    w.literal_here(&h)?;
    let at = data_offset;
    if &h[..8] != SPARSE_COOKIE {
        return Err(ImageError::malformed(FORMAT, format!("dynamic header at offset {at}: cookie is not `cxsparse`")));
    }
    let (stored, want) = (be32(&h, 36), checksum(&h, 36));
    if stored != want {
        return Err(ImageError::malformed(
            FORMAT,
            format!("dynamic header at offset {at}: checksum {stored:#010x} does not match the computed {want:#010x}"),
        ));
    }
    let parent_named = h[40..56].iter().any(|&b| b != 0) || h[64..576].iter().any(|&b| b != 0);
    let locator = (0..8).find(|i| be32(&h, 576 + 24 * i) != 0);
    if parent_named || locator.is_some() {
        return Err(ImageError::refused(
            FORMAT,
            format!("dynamic header at offset {at}: parent fields are set (a parent uuid, name or locator): it names a parent disk"),
        ));
    }
    let table_offset = be64(&h, 16);
    let max_entries = be32(&h, 28) as u64;
    let block_size = be32(&h, 32) as u64;
    if !block_size.is_power_of_two() || block_size < SECTOR {
        return Err(ImageError::malformed(
            FORMAT,
            format!("dynamic header at offset {at}: block size {block_size} is not a power of two ≥ 512"),
        ));
    }
    // qemu's formula; it is 0 for blocks under 4 KiB.
    let bitmap_size = (block_size / (8 * SECTOR) + 511) & !511;
    if max_entries.saturating_mul(block_size) < virtual_size {
        return Err(ImageError::malformed(
            FORMAT,
            format!(
                "dynamic header at offset {at}: {max_entries} BAT entries of {block_size} bytes cannot hold the {virtual_size}-byte disk"
            ),
        ));
    }
    if max_entries > policy.max_tracked as u64 {
        return Err(ImageError::Limit(format!("VHD BAT of {max_entries} entries exceeds the limit of {}", policy.max_tracked)));
    }
    let header_end = data_offset + HEADER_LEN as u64;
    let bat_end = table_offset.saturating_add(max_entries * 4);
    if table_offset < header_end || past_file(bat_end) {
        return Err(ImageError::malformed(
            FORMAT,
            format!("dynamic header at offset {at}: BAT at {table_offset} precedes the header's end {header_end} or lies past the end of the file"),
        ));
    }
    w.copy_literal(table_offset - header_end)?;
    // The BAT, read in pieces (its size is capped above) and kept as literal bytes.
    let mut allocated: Vec<(u64, u64)> = Vec::new(); // (file offset, block index)
    let mut buf = std::mem::take(&mut w.buf);
    let mut index = 0u64;
    while index < max_entries {
        let k = ((max_entries - index) * 4).min(BUF as u64) as usize;
        w.read_exact(&mut buf[..k])?;
        for e in buf[..k].chunks_exact(4) {
            let v = be32(e, 0);
            if v != UNALLOCATED {
                allocated.push((v as u64 * SECTOR, index));
            }
            index += 1;
        }
        w.literal_here(&buf[..k])?;
    }
    w.buf = buf;
    if allocated.len().saturating_mul(3).saturating_add(8) > policy.max_segments {
        return Err(ImageError::Limit(format!(
            "VHD with {} allocated blocks exceeds max_segments {}",
            allocated.len(),
            policy.max_segments
        )));
    }
    allocated.sort_unstable();
    let block_span = bitmap_size + block_size;
    let mut prev_end = bat_end;
    let mut prev_what = "the BAT".to_string();
    for &(start, index) in &allocated {
        let end = start + block_span; // start < 2^41, block_span ≤ 2^32: no overflow
        if start < prev_end {
            return Err(ImageError::malformed(
                FORMAT,
                format!("BAT entry {index}: block at offset {start} overlaps {prev_what} (ending at {prev_end})"),
            ));
        }
        if past_file(end) {
            return Err(ImageError::malformed(
                FORMAT,
                format!("BAT entry {index}: block at offset {start}..{end} lies past the end of the file"),
            ));
        }
        prev_end = end;
        prev_what = format!("the block of BAT entry {index}");
    }
    for &(start, index) in &allocated {
        w.copy_literal(start - w.pos)?;
        w.copy_literal(bitmap_size)?;
        let guest_off = index * block_size;
        let guest_len = block_size.min(virtual_size.saturating_sub(guest_off));
        w.copy_guest(guest_len, guest_off)?;
        w.copy_literal(block_size - guest_len)?;
    }
    w.rest_literal()?;
    let mut info = footer_info(&f, "dynamic", virtual_size);
    info["block_size"] = json!(block_size);
    info["bat_entries"] = json!(max_entries);
    info["allocated_blocks"] = json!(allocated.len());
    info["bat_offset"] = json!(table_offset);
    info["header_offset"] = json!(data_offset);
    w.finish(virtual_size, file_len, info)
}

#[cfg(test)]
mod tests {
    use super::super::writer::write;
    use super::*;
    use crate::format::{rebuild::rebuild, RebuildSource, WriteOptions};

    #[derive(Default)]
    struct Mem {
        guest: Vec<u8>,
        literal: Vec<u8>,
    }
    impl DecomposeSink for Mem {
        fn guest(&mut self, off: u64, d: &[u8]) -> std::io::Result<()> {
            let end = off as usize + d.len();
            if self.guest.len() < end {
                self.guest.resize(end, 0);
            }
            self.guest[off as usize..end].copy_from_slice(d);
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
            let o = off as usize;
            if o < self.guest.len() {
                let n = buf.len().min(self.guest.len() - o);
                buf[..n].copy_from_slice(&self.guest[o..o + n]);
            }
            Ok(())
        }
        fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let o = off as usize;
            buf.copy_from_slice(self.literal.get(o..o + buf.len()).ok_or_else(|| std::io::Error::other("literal range"))?);
            Ok(())
        }
    }

    /// A 5 MiB + 3 KiB disk with data in blocks 0 and 2 (block 1 a hole).
    fn disk() -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut d = vec![0u8; (5 << 20) + 3072];
        let ranges = vec![(4096u64, 70_000u64), ((4 << 20) + 512, (1 << 20) + 2560)];
        for &(o, l) in &ranges {
            for i in o..o + l {
                d[i as usize] = (i * 7 % 251) as u8 + 1;
            }
        }
        (d, ranges)
    }

    fn written(subformat: &str) -> (Vec<u8>, Vec<u8>) {
        let (d, ranges) = disk();
        let mut src = Mem { guest: d.clone(), literal: vec![] };
        let mut out = Vec::new();
        let opts = WriteOptions { subformat: Some(subformat.into()), compress: false };
        write(&opts, d.len() as u64, &ranges, &mut src, &mut out).unwrap();
        (d, out)
    }

    fn run(file: &[u8], with_len: bool) -> Result<(Decomposition, Mem), ImageError> {
        let mut m = Mem::default();
        let policy = Policy { max_tracked: 1 << 16, ..Policy::default() };
        let d = decompose(&mut &file[..], with_len.then_some(file.len() as u64), &policy, &mut m)?;
        Ok((d, m))
    }

    fn assert_exact(file: &[u8], d: &Decomposition, m: &mut Mem) {
        let mut out = Vec::new();
        rebuild(&d.recipe, m, &mut out).unwrap();
        assert!(out == file, "rebuild is not byte-exact");
        assert_eq!(d.literal_stream_bytes, m.literal.len() as u64);
    }

    fn refix_footer(b: &mut [u8]) {
        let c = checksum(b, 64);
        b[64..68].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn written_dynamic_and_fixed_decompose_to_the_disk_and_rebuild_exactly() {
        for sub in ["dynamic", "fixed"] {
            let (disk, file) = written(sub);
            for with_len in [true, false] {
                let (d, mut m) = run(&file, with_len).unwrap();
                assert_eq!(d.virtual_size, disk.len() as u64, "{sub}");
                m.guest.resize(disk.len(), 0);
                assert!(m.guest == disk, "{sub}: guest stream differs");
                assert_eq!(d.info["subformat"], sub);
                assert_eq!(d.info["creator_app"], "qem2");
                assert_exact(&file, &d, &mut m);
                // Metadata only in the literal stream: the data is guest.
                assert!(m.literal.len() < 64 << 10, "{sub}: {} literal bytes", m.literal.len());
            }
        }
        let (_, file) = written("dynamic");
        let (d, _) = run(&file, true).unwrap();
        assert_eq!(d.info["allocated_blocks"], 2);
        assert_eq!(d.info["bat_entries"], 3);
        assert_eq!(d.info["block_size"], 2 << 20);
    }

    #[test]
    fn untrusted_creator_uses_the_geometry_and_keeps_the_rest_literal() {
        for sub in ["fixed", "dynamic"] {
            let (disk, mut file) = written(sub);
            let n = file.len();
            for at in [0, n - 512] {
                if sub == "dynamic" || at != 0 {
                    file[at + 28..at + 32].copy_from_slice(b"qemu");
                    refix_footer(&mut file[at..at + 512]);
                }
            }
            let f = Footer::parse(file[n - 512..].try_into().unwrap()).unwrap();
            let chs = f.geometry_sectors() * 512;
            assert!(chs < disk.len() as u64);
            let (d, mut m) = run(&file, true).unwrap();
            assert_eq!(d.virtual_size, chs, "{sub}");
            assert_eq!(d.info["size_from"], "geometry");
            assert!(m.guest.len() as u64 <= chs && m.guest[..] == disk[..m.guest.len()]);
            assert_exact(&file, &d, &mut m);
        }
    }

    #[test]
    fn truncation_at_every_boundary_is_an_error() {
        for sub in ["dynamic", "fixed"] {
            let (_, file) = written(sub);
            for cut in [0, 1, 100, 511, 512, 1000, 1535, 1536, 1540, 2048, 2560, 3000, 70_000, 2 << 20, file.len() - 513, file.len() - 1] {
                for with_len in [true, false] {
                    let mut short = file[..cut].to_vec();
                    if !with_len {
                        // The stream ends early, the announced length says more.
                        let r = decompose(&mut &short[..], Some(file.len() as u64), &Policy::default(), &mut Mem::default());
                        assert!(r.is_err(), "{sub} cut at {cut} with the full length announced");
                    }
                    short.truncate(cut);
                    if let Ok((d, mut m)) = run(&short, with_len) {
                        // Only a dynamic VHD cut inside its trailing footer can still read (qemu reads it too).
                        assert!(sub == "dynamic" && cut + 512 > file.len() - 512, "{sub} cut at {cut} accepted");
                        assert_exact(&short, &d, &mut m);
                    }
                }
            }
        }
    }

    #[test]
    fn bit_flips_never_panic_and_what_is_accepted_rebuilds() {
        for sub in ["dynamic", "fixed"] {
            let (_, file) = written(sub);
            let n = file.len();
            let positions: Vec<usize> = if sub == "dynamic" { (0..2048).step_by(5).collect() } else { (n - 512..n).collect() };
            for p in positions {
                let mut b = file.clone();
                b[p] ^= 0x41;
                if let Ok((d, mut m)) = run(&b, true) {
                    assert_exact(&b, &d, &mut m);
                }
                // With the checksums fixed, the fields behind them are reached too.
                if sub == "dynamic" {
                    refix_footer(&mut b[..512]);
                    let c = checksum(&b[512..1536], 36);
                    b[548..552].copy_from_slice(&c.to_be_bytes());
                } else {
                    refix_footer(&mut b[n - 512..]);
                }
                if let Ok((d, mut m)) = run(&b, true) {
                    assert_exact(&b, &d, &mut m);
                }
            }
        }
    }

    fn set_header(file: &mut [u8], at: usize, v: &[u8]) {
        file[512 + at..512 + at + v.len()].copy_from_slice(v);
        let c = checksum(&file[512..1536], 36);
        file[548..552].copy_from_slice(&c.to_be_bytes());
    }

    fn err_text(file: &[u8]) -> String {
        match run(file, true) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_dynamic_disks_are_refused_with_the_reason() {
        let (_, file) = written("dynamic");
        // Differencing: type 4 in the footer.
        let mut b = file.clone();
        b[60..64].copy_from_slice(&4u32.to_be_bytes());
        refix_footer(&mut b[..512]);
        assert!(err_text(&b).contains("differencing"), "{}", err_text(&b));
        // A parent locator or name in a dynamic disk's header.
        let mut b = file.clone();
        set_header(&mut b, 576, b"W2ku");
        assert!(err_text(&b).contains("names a parent"));
        let mut b = file.clone();
        set_header(&mut b, 64, b"\0p");
        assert!(err_text(&b).contains("names a parent"));
        // Bad checksums.
        let mut b = file.clone();
        b[100] = 1;
        assert!(err_text(&b).contains("checksum"));
        let mut b = file.clone();
        b[512 + 900] = 1;
        assert!(err_text(&b).contains("dynamic header at offset 512: checksum"));
        // Two BAT entries naming one block.
        let mut b = file.clone();
        let e0: [u8; 4] = b[1536..1540].try_into().unwrap();
        b[1540..1544].copy_from_slice(&e0);
        assert!(err_text(&b).contains("overlaps"), "{}", err_text(&b));
        // A block inside the BAT, a block past the end.
        let mut b = file.clone();
        b[1536..1540].copy_from_slice(&3u32.to_be_bytes());
        assert!(err_text(&b).contains("overlaps the BAT"));
        let mut b = file.clone();
        b[1536..1540].copy_from_slice(&0x0100_0000u32.to_be_bytes());
        assert!(err_text(&b).contains("past the end"));
        // A huge BAT claim: over the limit, and past the file.
        let mut b = file.clone();
        set_header(&mut b, 28, &0xffff_fff0u32.to_be_bytes());
        assert!(matches!(run(&b, true), Err(ImageError::Limit(_))));
        // A BAT too small for the disk, a block size that is not a power of two.
        let mut b = file.clone();
        set_header(&mut b, 28, &1u32.to_be_bytes());
        assert!(err_text(&b).contains("cannot hold"));
        let mut b = file.clone();
        set_header(&mut b, 32, &3000u32.to_be_bytes());
        assert!(err_text(&b).contains("power of two"));
        // The header's cookie.
        let mut b = file.clone();
        set_header(&mut b, 0, b"cxsparsf");
        assert!(err_text(&b).contains("cxsparse"));
        // A data offset pointing at the footer copy, or far beyond the file.
        for off in [0u64, 100, 1 << 40] {
            let mut b = file.clone();
            b[16..24].copy_from_slice(&off.to_be_bytes());
            refix_footer(&mut b[..512]);
            assert!(err_text(&b).contains("data offset"));
        }
    }

    #[test]
    fn hostile_fixed_disks_and_raw_declared_vhd_are_refused() {
        let (_, file) = written("fixed");
        let n = file.len();
        // Raw bytes declared vhd: no footer anywhere.
        let raw = vec![7u8; 1 << 20];
        assert!(err_text(&raw).contains("not a VHD"), "{}", err_text(&raw));
        assert!(err_text(&raw[..100]).contains("shorter than a footer"));
        // current_size not the data length.
        let mut b = file.clone();
        b[n - 512 + 48..n - 512 + 56].copy_from_slice(&((n as u64) - 1024).to_be_bytes());
        refix_footer(&mut b[n - 512..]);
        assert!(err_text(&b).contains("does not equal the data length"));
        // Differencing / dynamic type in a trailing-only footer.
        for (t, what) in [(4u32, "differencing"), (3, "no footer copy at offset 0"), (9, "unknown disk type")] {
            let mut b = file.clone();
            b[n - 512 + 60..n - 512 + 64].copy_from_slice(&t.to_be_bytes());
            refix_footer(&mut b[n - 512..]);
            assert!(err_text(&b).contains(what), "{}", err_text(&b));
        }
        // A geometry larger than the data under an untrusted creator.
        let mut b = file.clone();
        b[n - 512 + 28..n - 512 + 32].copy_from_slice(b"vpc ");
        b[n - 512 + 56..n - 512 + 60].copy_from_slice(&[0xff, 0xff, 16, 200]);
        refix_footer(&mut b[n - 512..]);
        assert!(err_text(&b).contains("more than the data"));
        // A geometry far below the data: beyond what is held back.
        let mut b = file.clone();
        b[n - 512 + 28..n - 512 + 32].copy_from_slice(b"vpc ");
        b[n - 512 + 56..n - 512 + 60].copy_from_slice(&[0, 1, 1, 1]);
        refix_footer(&mut b[n - 512..]);
        let big: Vec<u8> = [vec![1u8; 12 << 20], b[n - 512..].to_vec()].concat();
        let mut big = big;
        let l = big.len() as u64 - 512;
        let fo = big.len() - 512;
        big[fo + 48..fo + 56].copy_from_slice(&l.to_be_bytes());
        refix_footer(&mut big[fo..]);
        assert!(err_text(&big).contains("far below"), "{}", err_text(&big));
    }
}
