//! The one-pass VMDK decomposer (monolithicSparse and streamOptimized) of untrusted bytes:
//! guest grains go to the sink, metadata to the literal stream, zero padding to `Zero`, and a
//! compressed grain that stock zlib's `compress()` reproduces exactly to a `Compressed`
//! segment of codec 3 (format-spec/formats/vmdk.md).
//!
//! The file is read front to back. Up to the grain stream every byte range whose role is
//! known (descriptor, grain directories and tables, grains named by a table already read) is
//! kept in a map of regions; bytes between regions are padding. A monolithicSparse grain can
//! only be recognised once its grain table was read, so non-zero bytes met while tables are
//! still outstanding end the interpretation: the rest of the file is stored opaque. The
//! streamOptimized grain stream is self-describing (each marker names its LBA), so its grains
//! are emitted as they stream and checked against the grain tables at the end.
use super::header::*;
use crate::format::codec::{self, CODEC_VMDK};
use crate::format::recipe::{compressed_check, Recipe, SegList, Segment, FLAG_OPAQUE};
use crate::format::{DecomposeSink, Decomposition, ImageError, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

const F: &str = "vmdk";
const CHUNK: usize = 1 << 20;
const GT_BYTES: u64 = GTES_PER_GT * 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Descriptor,
    Gd,
    RedundantGd,
    Gt(u64),
    RedundantGt,
    Grain(u64),
}

impl Role {
    fn name(&self) -> String {
        match self {
            Role::Descriptor => "the descriptor".into(),
            Role::Gd => "the grain directory".into(),
            Role::RedundantGd => "the redundant grain directory".into(),
            Role::Gt(i) => format!("grain table {i}"),
            Role::RedundantGt => "a redundant grain table".into(),
            Role::Grain(g) => format!("the grain of guest grain {g}"),
        }
    }
    fn is_table(&self) -> bool {
        matches!(self, Role::Gd | Role::Gt(_))
    }
}

struct Dec<'a> {
    input: &'a mut dyn Read,
    pos: u64,
    file_len: Option<u64>,
    sink: &'a mut dyn DecomposeSink,
    policy: &'a Policy,
    segs: SegList,
    lit_off: u64,
    h: Header,
    regions: BTreeMap<u64, (u64, Role)>,
    pending_tables: usize,
    opaque: Option<String>,
    // streamOptimized: (marker sector, guest grain) in host order, and what the tables say.
    markers: Vec<(u64, u64)>,
    expected: Vec<(u64, u64)>,
    in_order_grains: Vec<u64>,
    out_of_order_grains: BTreeSet<u64>,
    stream_gts: BTreeMap<u64, Vec<u32>>,
    stream_gd: Option<(u64, Vec<u32>)>,
    footer: Option<Header>,
    eos: bool,
    allocated: u64,
    zero_grains: u64,
    reproduced: u64,
    literal_grains: u64,
    stored_grains: u64,
    descriptor: Option<Descriptor>,
}

/// The pieces of a zlib stream made only of stored (uncompressed) deflate blocks whose data
/// is exactly `out`: `(offset in comp, len, Some(offset in out) for block data | None for
/// header, block headers and checksum)`. None when any block is compressed.
fn stored_blocks(comp: &[u8], out: &[u8]) -> Option<Vec<(usize, usize, Option<usize>)>> {
    let (cmf, flg) = (*comp.first()?, *comp.get(1)?);
    if cmf & 0x0f != 8 || flg & 0x20 != 0 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
        return None;
    }
    let mut v = vec![(0, 2, None)];
    let (mut p, mut g) = (2usize, 0usize);
    loop {
        let hdr = *comp.get(p)?;
        // A stored block header is 3 bits then padding to the byte; the padding bits are kept
        // literally with the header byte, so any value rebuilds exactly.
        if (hdr >> 1) & 3 != 0 {
            return None;
        }
        let len = u16::from_le_bytes([*comp.get(p + 1)?, *comp.get(p + 2)?]);
        let nlen = u16::from_le_bytes([*comp.get(p + 3)?, *comp.get(p + 4)?]);
        if len != !nlen {
            return None;
        }
        let len = len as usize;
        v.push((p, 5, None));
        if comp.get(p + 5..p + 5 + len)? != out.get(g..g + len)? {
            return None;
        }
        if len > 0 {
            v.push((p + 5, len, Some(g)));
        }
        p += 5 + len;
        g += len;
        if hdr & 1 == 1 {
            break;
        }
    }
    if g != out.len() {
        return None;
    }
    if p < comp.len() {
        v.push((p, comp.len() - p, None));
    }
    Some(v)
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

impl Dec<'_> {
    fn read_upto(&mut self, buf: &mut [u8]) -> Result<usize, ImageError> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        let start = self.pos;
        let n = self.read_upto(buf)?;
        if n < buf.len() {
            return Err(ImageError::Truncated { format: F, expected: start + buf.len() as u64, got: start + n as u64 });
        }
        Ok(())
    }
    /// Exactly `n` bytes, read in pieces so the allocation follows the bytes that arrive, not
    /// the size a header claims (a grain directory may claim 128 MiB).
    fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, ImageError> {
        let start = self.pos;
        let mut v = Vec::with_capacity(n.min(CHUNK as u64) as usize);
        while (v.len() as u64) < n {
            let piece = (n - v.len() as u64).min(CHUNK as u64) as usize;
            let at = v.len();
            v.resize(at + piece, 0);
            let got = self.read_upto(&mut v[at..])?;
            if got < piece {
                return Err(ImageError::Truncated { format: F, expected: start + n, got: start + (at + got) as u64 });
            }
        }
        Ok(v)
    }
    fn literal(&mut self, host: u64, data: &[u8]) -> Result<(), ImageError> {
        if data.is_empty() {
            return Ok(());
        }
        self.segs.push(host, Segment::Literal { len: data.len() as u64, lit_off: self.lit_off });
        self.sink.literal(data)?;
        self.lit_off += data.len() as u64;
        Ok(())
    }
    /// Bytes without a guest role: all-zero sectors as `Zero`, the rest literal.
    fn filler(&mut self, host: u64, data: &[u8]) -> Result<(), ImageError> {
        let mut off = 0usize;
        while off < data.len() {
            let n = (SECTOR as usize - ((host + off as u64) % SECTOR) as usize).min(data.len() - off);
            let piece = &data[off..off + n];
            if crate::chunking::is_zero(piece) {
                self.segs.push(host + off as u64, Segment::Zero { len: n as u64 });
            } else {
                self.literal(host + off as u64, piece)?;
            }
            off += n;
        }
        Ok(())
    }
    fn guest(&mut self, host: u64, guest_off: u64, data: &[u8]) -> Result<(), ImageError> {
        if crate::chunking::is_zero(data) {
            self.segs.push(host, Segment::Zero { len: data.len() as u64 });
        } else {
            self.segs.push(host, Segment::Guest { len: data.len() as u64, guest_off });
            self.sink.guest(guest_off, data)?;
        }
        Ok(())
    }

    /// Stops interpreting: everything from here is literal, the guest stream is incomplete.
    fn rest_opaque(&mut self, reason: String) -> Result<(), ImageError> {
        tracing::warn!(target: "imgarc::format::vmdk", "storing the rest of the vmdk image opaque: {reason}");
        self.opaque = Some(format!("vmdk: {reason}"));
        let mut buf = vec![0u8; CHUNK];
        loop {
            let host = self.pos;
            let n = self.read_upto(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.literal(host, &buf[..n])?;
        }
    }

    fn add_region(&mut self, start_sector: u64, len: u64, role: Role) -> Result<(), ImageError> {
        let start = start_sector
            .checked_mul(SECTOR)
            .filter(|s| s.checked_add(len).is_some())
            .ok_or_else(|| ImageError::malformed(F, format!("{} at sector {start_sector} lies beyond any file", role.name())))?;
        if start < self.pos {
            return Err(ImageError::refused(
                F,
                format!(
                    "{} at file offset {start} precedes the table that names it (read up to {}): this layout is not decomposed",
                    role.name(),
                    self.pos
                ),
            ));
        }
        if let Some(fl) = self.file_len {
            let past = if matches!(role, Role::Grain(_)) { start >= fl } else { start + len > fl };
            if past {
                return Err(ImageError::malformed(
                    F,
                    format!("{} at file offset {start} (+{len}) lies beyond the end of the {fl}-byte file", role.name()),
                ));
            }
        }
        let overlap = |other_start: u64, other: &(u64, Role)| {
            let what = match (role, other.1) {
                (Role::Grain(a), Role::Grain(b)) => format!("guest grains {b} and {a} map to one file grain at offset {other_start}"),
                _ => format!("{} at file offset {start} overlaps {} at file offset {other_start}", role.name(), other.1.name()),
            };
            ImageError::malformed(F, what)
        };
        if let Some((&s, r)) = self.regions.range(..=start).next_back() {
            if s + r.0 > start {
                return Err(overlap(s, r));
            }
        }
        if let Some((&s, r)) = self.regions.range(start..).next() {
            if s < start + len {
                return Err(overlap(s, r));
            }
        }
        if self.regions.len() >= self.policy.max_tracked {
            return Err(ImageError::Limit(format!("vmdk: more than {} tracked regions", self.policy.max_tracked)));
        }
        if role.is_table() {
            self.pending_tables += 1;
        }
        self.regions.insert(start, (len, role));
        Ok(())
    }

    /// A grain table entry of guest grain `g`.
    fn gte(&mut self, g: u64, e: u32, stream_start: Option<u64>) -> Result<(), ImageError> {
        if g >= self.h.grains() || e == 0 {
            return Ok(());
        }
        if e == GTE_ZEROED && self.h.flags & FLAG_ZERO_GRAIN != 0 {
            self.zero_grains += 1;
            return Ok(());
        }
        match stream_start {
            Some(ss) => {
                if (e as u64) * SECTOR < ss {
                    return Err(ImageError::malformed(
                        F,
                        format!("grain table entry of guest grain {g} names sector {e}, before the grain stream at offset {ss}"),
                    ));
                }
                self.expected.push((e as u64, g));
                Ok(())
            }
            None => self.add_region(e as u64, self.h.grain_bytes(), Role::Grain(g)),
        }
    }

    fn process_region(&mut self, len: u64, role: Role, stream_start: Option<u64>) -> Result<(), ImageError> {
        let host = self.pos;
        if let Role::Grain(g) = role {
            let guest_off = g * self.h.grain_bytes();
            let guest_len = self.h.grain_bytes().min(self.h.virtual_size() - guest_off) as usize;
            let mut buf = vec![0u8; len as usize];
            let n = self.read_upto(&mut buf)?;
            if n == 0 {
                return Err(ImageError::malformed(
                    F,
                    format!("the grain of guest grain {g} at file offset {host} lies beyond the end of the file"),
                ));
            }
            let gl = guest_len.min(n);
            self.guest(host, guest_off, &buf[..gl])?;
            self.filler(host + gl as u64, &buf[gl..n])?;
            self.allocated += 1;
            return Ok(());
        }
        let buf = self.read_vec(len)?;
        match role {
            Role::Descriptor => {
                let text = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())];
                let d = parse_descriptor(text, host)?;
                self.check_descriptor(&d, host)?;
                self.descriptor = Some(d);
            }
            Role::Gd | Role::RedundantGd => {
                for i in 0..self.h.gt_count() {
                    let e = le32(&buf, i as usize);
                    if e != 0 {
                        let r = if role == Role::Gd { Role::Gt(i) } else { Role::RedundantGt };
                        self.add_region(e as u64, GT_BYTES, r)?;
                    }
                }
            }
            Role::Gt(t) => {
                for j in 0..GTES_PER_GT {
                    self.gte(t * GTES_PER_GT + j, le32(&buf, j as usize), stream_start)?;
                }
            }
            Role::RedundantGt | Role::Grain(_) => {}
        }
        if role.is_table() {
            self.pending_tables -= 1;
        }
        self.filler(host, &buf)
    }

    fn check_descriptor(&self, d: &Descriptor, at: u64) -> Result<(), ImageError> {
        let want = if self.h.compressed() { "streamOptimized" } else { "monolithicSparse" };
        if d.create_type != want {
            return Err(ImageError::refused(
                F,
                format!("descriptor at offset {at} says createType {} but the header flags {:#x} say {want}", d.create_type, self.h.flags),
            ));
        }
        if d.extent_sectors != self.h.capacity {
            return Err(ImageError::malformed(
                F,
                format!("descriptor extent of {} sectors at offset {at}, header capacity {}", d.extent_sectors, self.h.capacity),
            ));
        }
        Ok(())
    }

    /// Header to the grain stream (streamOptimized) or to the end (monolithicSparse).
    fn walk_regions(&mut self, stop: Option<u64>) -> Result<bool, ImageError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if let Some((&s, &(len, role))) = self.regions.range(self.pos..).next() {
                if s == self.pos {
                    self.regions.remove(&s);
                    self.process_region(len, role, stop)?;
                    if matches!(role, Role::Grain(_)) && self.segs.len() > self.policy.max_segments {
                        self.rest_opaque(format!("more than {} recipe segments", self.policy.max_segments))?;
                        return Ok(false);
                    }
                    continue;
                }
            }
            let mut limit = self.regions.range(self.pos..).next().map(|(&s, _)| s);
            if let Some(st) = stop {
                if self.pos >= st {
                    return Ok(true);
                }
                limit = Some(limit.map_or(st, |l| l.min(st)));
            }
            let want = limit.map_or(CHUNK as u64, |l| (l - self.pos).min(CHUNK as u64)) as usize;
            let host = self.pos;
            let n = self.read_upto(&mut buf[..want])?;
            if n == 0 {
                return Ok(true);
            }
            let data = buf[..n].to_vec();
            if stop.is_none() && self.pending_tables > 0 && !crate::chunking::is_zero(&data) {
                let first = data.iter().position(|&b| b != 0).unwrap_or(0) as u64;
                let aligned = (first / SECTOR) * SECTOR;
                self.filler(host, &data[..aligned as usize])?;
                self.literal(host + aligned, &data[aligned as usize..])?;
                self.rest_opaque(format!(
                    "non-zero bytes at file offset {} before every grain table was read (a grain stored before its table)",
                    host + first
                ))?;
                return Ok(false);
            }
            self.filler(host, &data)?;
        }
    }

    fn stream(&mut self) -> Result<(), ImageError> {
        let gb = self.h.grain_bytes();
        let max_comp = codec::deflate_vmdk_bound(gb as usize) as u64 + gb;
        let mut grain = vec![0u8; gb as usize];
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.eos {
                let host = self.pos;
                let n = self.read_upto(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                let data = buf[..n].to_vec();
                self.filler(host, &data)?;
                continue;
            }
            let host = self.pos;
            let mut m = [0u8; 12];
            let n = self.read_upto(&mut m)?;
            if n == 0 {
                // A stream ends with its end-of-stream marker (VMware's spec; qemu and VirtualBox
                // write one). Without it the file was cut short — a truncated download whose
                // grains happen to end on a marker must not pass for a whole image.
                return Err(ImageError::malformed(
                    F,
                    format!("the streamOptimized stream ends at offset {host} without its end-of-stream marker (truncated)"),
                ));
            }
            if n < 12 {
                return Err(ImageError::Truncated { format: F, expected: host + 12, got: host + n as u64 });
            }
            if host % SECTOR != 0 {
                return Err(ImageError::malformed(F, format!("stream marker at unaligned offset {host}")));
            }
            let lba = u64::from_le_bytes(m[..8].try_into().expect("8"));
            let size = u32::from_le_bytes(m[8..12].try_into().expect("4")) as u64;
            if size != 0 {
                self.grain_marker(host, &m, lba, size, max_comp, &mut grain)?;
                if self.segs.len() > self.policy.max_segments {
                    return self.rest_opaque(format!("more than {} recipe segments", self.policy.max_segments));
                }
                continue;
            }
            let mut rest = [0u8; 500];
            self.read_exact(&mut rest)?;
            let typ = u32::from_le_bytes(rest[..4].try_into().expect("4"));
            let mut whole = m.to_vec();
            whole.extend_from_slice(&rest);
            self.filler(host, &whole)?;
            let data_at = host + SECTOR;
            let sectors = lba;
            let expect_sectors = |want: u64, what: &str| {
                if sectors != want {
                    return Err(ImageError::malformed(
                        F,
                        format!("{what} marker at offset {host} spans {sectors} sectors, expected {want}"),
                    ));
                }
                Ok(())
            };
            match typ {
                MARKER_EOS => self.eos = true,
                MARKER_GT => {
                    expect_sectors(GT_BYTES / SECTOR, "grain table")?;
                    if self.stream_gts.len() as u64 >= self.h.gt_count() {
                        return Err(ImageError::malformed(
                            F,
                            format!("grain table marker at offset {host}: more grain tables than the disk has"),
                        ));
                    }
                    let mut gt = vec![0u8; GT_BYTES as usize];
                    self.read_exact(&mut gt)?;
                    self.filler(data_at, &gt)?;
                    self.stream_gts.insert(data_at / SECTOR, (0..GTES_PER_GT as usize).map(|i| le32(&gt, i)).collect());
                }
                MARKER_GD => {
                    expect_sectors(self.h.gd_sectors(), "grain directory")?;
                    if self.stream_gd.is_some() {
                        return Err(ImageError::malformed(F, format!("second grain directory marker at offset {host}")));
                    }
                    let gd = self.read_vec(self.h.gd_sectors() * SECTOR)?;
                    self.filler(data_at, &gd)?;
                    self.stream_gd = Some((data_at / SECTOR, (0..self.h.gt_count() as usize).map(|i| le32(&gd, i)).collect()));
                }
                MARKER_FOOTER => {
                    expect_sectors(1, "footer")?;
                    let mut f = [0u8; 512];
                    self.read_exact(&mut f)?;
                    self.filler(data_at, &f)?;
                    let footer = Header::parse(&f, data_at)?;
                    let same = Header { gd_offset: self.h.gd_offset, ..footer.clone() };
                    if same != self.h || self.footer.is_some() {
                        return Err(ImageError::malformed(
                            F,
                            format!("footer at offset {data_at} differs from the header in more than gdOffset (or is repeated)"),
                        ));
                    }
                    self.footer = Some(footer);
                }
                t => return Err(ImageError::malformed(F, format!("unknown stream marker type {t} at offset {host}"))),
            }
        }
    }

    fn grain_marker(&mut self, host: u64, m: &[u8; 12], lba: u64, size: u64, max_comp: u64, grain: &mut [u8]) -> Result<(), ImageError> {
        let gs = self.h.grain_size;
        if size > max_comp {
            return Err(ImageError::malformed(
                F,
                format!("grain marker at offset {host}: {size} compressed bytes for a {}-byte grain", grain.len()),
            ));
        }
        if lba % gs != 0 || lba >= self.h.capacity {
            return Err(ImageError::malformed(
                F,
                format!("grain marker at offset {host}: LBA {lba} is not a grain start inside the {}-sector disk", self.h.capacity),
            ));
        }
        let g = lba / gs;
        let dup = match self.in_order_grains.last() {
            Some(&last) if g <= last => self.in_order_grains.binary_search(&g).is_ok() || !self.out_of_order_grains.insert(g),
            _ => {
                self.in_order_grains.push(g);
                false
            }
        };
        if dup {
            return Err(ImageError::malformed(F, format!("grain marker at offset {host}: a second grain for LBA {lba}")));
        }
        let mut comp = vec![0u8; size as usize];
        self.read_exact(&mut comp)?;
        let guest_off = lba * SECTOR;
        let guest_len = grain.len().min((self.h.virtual_size() - guest_off) as usize);
        let produced = codec::inflate_zlib(&comp, grain).ok_or_else(|| {
            ImageError::malformed(
                F,
                format!("grain marker at offset {host} (guest offset {guest_off}): the zlib stream does not inflate to at most one grain"),
            )
        })?;
        if produced < guest_len {
            return Err(ImageError::malformed(
                F,
                format!(
                    "grain marker at offset {host} (guest offset {guest_off}) inflates to {produced} bytes, the grain holds {guest_len}"
                ),
            ));
        }
        // Rebuild recompresses the whole grain zero-padded past the virtual size: only a grain
        // that is exactly that can be a Compressed segment (qemu's partial last grain is not).
        let full = produced == grain.len() && crate::chunking::is_zero(&grain[guest_len..]);
        let again = if full && size < grain.len() as u64 { codec::deflate_vmdk(grain, grain.len() - 1) } else { None };
        self.literal(host, m)?;
        if again.as_deref() == Some(&comp[..]) {
            self.segs
                .push(host + 12, Segment::Compressed { len: size, guest_off, codec: CODEC_VMDK, check: Some(compressed_check(&comp)) });
            self.reproduced += 1;
        } else if let Some(pieces) = stored_blocks(&comp, &grain[..produced]) {
            // An incompressible grain: zlib wrote it as stored blocks, i.e. the guest bytes
            // verbatim between 5-byte block headers. Those bytes are guest data (they dedup);
            // only the headers and the checksum are literal.
            let at = host + 12;
            for (start, len, gpos) in pieces {
                let bytes = &comp[start..start + len];
                match gpos {
                    Some(gp) if gp < guest_len => {
                        let inside = len.min(guest_len - gp);
                        self.segs.push(at + start as u64, Segment::Guest { len: inside as u64, guest_off: guest_off + gp as u64 });
                        self.literal(at + (start + inside) as u64, &bytes[inside..])?;
                    }
                    _ => self.literal(at + start as u64, bytes)?,
                }
            }
            self.stored_grains += 1;
        } else {
            self.literal(host + 12, &comp)?;
            self.literal_grains += 1;
        }
        if !crate::chunking::is_zero(&grain[..guest_len]) {
            self.sink.guest(guest_off, &grain[..guest_len])?;
        }
        self.markers.push((host / SECTOR, g));
        self.allocated += 1;
        let pad = ((SECTOR - (12 + size) % SECTOR) % SECTOR) as usize;
        let mut p = vec![0u8; pad];
        let at = self.pos;
        let n = self.read_upto(&mut p)?;
        self.filler(at, &p[..n])
    }

    /// streamOptimized: the grain tables must name exactly the grains of the stream.
    fn verify_stream(&mut self) -> Result<(), ImageError> {
        if self.h.gd_offset == GD_AT_END {
            let footer = self
                .footer
                .clone()
                .ok_or_else(|| ImageError::malformed(F, "streamOptimized image with gdOffset GD_AT_END has no footer"))?;
            let (gd_sector, gd) =
                self.stream_gd.take().ok_or_else(|| ImageError::malformed(F, "streamOptimized image has no grain directory marker"))?;
            if footer.gd_offset != gd_sector {
                return Err(ImageError::malformed(
                    F,
                    format!("footer gdOffset {} is not the grain directory at sector {gd_sector}", footer.gd_offset),
                ));
            }
            for (t, &e) in gd.iter().enumerate() {
                if e == 0 {
                    continue;
                }
                let gt = self.stream_gts.get(&(e as u64)).cloned().ok_or_else(|| {
                    ImageError::malformed(
                        F,
                        format!("grain directory entry {t} names sector {e}, which holds no grain table of the stream"),
                    )
                })?;
                for (j, &v) in gt.iter().enumerate() {
                    self.gte(t as u64 * GTES_PER_GT + j as u64, v, Some(0))?;
                }
            }
        }
        self.expected.sort_unstable();
        if let Some(w) = self.expected.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ImageError::malformed(
                F,
                format!("guest grains {} and {} map to one grain marker at sector {}", w[0].1, w[1].1, w[0].0),
            ));
        }
        if self.expected != self.markers {
            let first =
                self.expected.iter().zip(&self.markers).position(|(a, b)| a != b).unwrap_or(self.expected.len().min(self.markers.len()));
            let what = match (self.expected.get(first), self.markers.get(first)) {
                (_, Some(&(s, g))) if !self.expected.contains(&(s, g)) => {
                    format!("the grain marker at offset {} (guest grain {g}) is not the one the grain tables name", s * SECTOR)
                }
                (Some(&(s, g)), _) => format!("the grain tables name sector {s} for guest grain {g}, which holds no grain marker for it"),
                _ => "grain tables and grain markers disagree".into(),
            };
            return Err(ImageError::malformed(F, what));
        }
        Ok(())
    }
}

pub fn decompose(
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    let mut hb = [0u8; 512];
    let mut got = 0;
    while got < 512 {
        match input.read(&mut hb[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if hb.starts_with(b"# Disk DescriptorFile") || hb.starts_with(b"#Disk DescriptorFile") {
        return Err(ImageError::refused(F, "a text descriptor file (monolithicFlat, twoGbMaxExtent*, vmfs ...) names its extents in other files; only a single-file monolithicSparse or streamOptimized vmdk is decomposed"));
    }
    if hb.starts_with(b"COWD") {
        return Err(ImageError::refused(F, "a VMware ESX/GSX (COWD) sparse extent is not decomposed"));
    }
    if got < 512 {
        return Err(ImageError::Truncated { format: F, expected: 512, got: got as u64 });
    }
    let h = Header::parse(&hb, 0)?;
    let vsize = h.virtual_size();
    if vsize > policy.max_virtual_size {
        return Err(ImageError::Limit(format!("vmdk capacity of {vsize} bytes exceeds the limit of {}", policy.max_virtual_size)));
    }
    if h.descriptor_offset == 0 || h.descriptor_size == 0 {
        return Err(ImageError::refused(F, "sparse extent without an embedded descriptor (an extent of a multi-file disk)"));
    }
    if h.descriptor_size.saturating_mul(SECTOR) > MAX_DESCRIPTOR {
        return Err(ImageError::malformed(
            F,
            format!("header field descriptorSize at offset 36: {} sectors (at most 2048)", h.descriptor_size),
        ));
    }
    let mut d = Dec {
        input,
        pos: 512,
        file_len,
        sink,
        policy,
        segs: SegList::default(),
        lit_off: 0,
        h: h.clone(),
        regions: BTreeMap::new(),
        pending_tables: 0,
        opaque: None,
        markers: Vec::new(),
        expected: Vec::new(),
        in_order_grains: Vec::new(),
        out_of_order_grains: BTreeSet::new(),
        stream_gts: BTreeMap::new(),
        stream_gd: None,
        footer: None,
        eos: false,
        allocated: 0,
        zero_grains: 0,
        reproduced: 0,
        literal_grains: 0,
        stored_grains: 0,
        descriptor: None,
    };
    d.literal(0, &hb)?;
    d.add_region(h.descriptor_offset, h.descriptor_size * SECTOR, Role::Descriptor)?;
    let gd_bytes = h.gd_sectors() * SECTOR;
    if h.gd_offset != GD_AT_END {
        if h.gd_offset == 0 {
            return Err(ImageError::malformed(F, "header field gdOffset at offset 56 is 0"));
        }
        d.add_region(h.gd_offset, gd_bytes, Role::Gd)?;
        if h.flags & FLAG_RGD != 0 && h.rgd_offset != 0 && h.rgd_offset != h.gd_offset {
            d.add_region(h.rgd_offset, gd_bytes, Role::RedundantGd)?;
        }
    }
    let stream_start = if h.compressed() {
        let ss = h.over_head.checked_mul(SECTOR).ok_or_else(|| ImageError::malformed(F, "header field overHead at offset 64 overflows"))?;
        if ss < 1024 {
            return Err(ImageError::malformed(
                F,
                format!("header field overHead at offset 64: {} sectors leaves no room for header and descriptor", h.over_head),
            ));
        }
        Some(ss)
    } else {
        None
    };
    let interpreted = d.walk_regions(stream_start)?;
    if interpreted {
        if let Some((&s, &(_, role))) = d.regions.iter().next() {
            return Err(match (role, stream_start) {
                (Role::Grain(_), None) => {
                    ImageError::malformed(F, format!("{} at file offset {s} lies beyond the end of the file", role.name()))
                }
                (_, Some(ss)) if d.pos >= ss => {
                    ImageError::malformed(F, format!("{} at file offset {s} lies inside the grain stream (from offset {ss})", role.name()))
                }
                _ => ImageError::Truncated { format: F, expected: s + 1, got: d.pos },
            });
        }
        if d.descriptor.is_none() {
            return Err(ImageError::Truncated { format: F, expected: h.descriptor_offset * SECTOR + 1, got: d.pos });
        }
    }
    if interpreted && stream_start.is_some() {
        d.stream()?;
        if d.opaque.is_none() {
            d.verify_stream()?;
        }
    }
    let total = d.pos;
    let opaque = d.opaque.clone();
    let flags = if opaque.is_some() { FLAG_OPAQUE } else { 0 };
    let compressed_grains = if h.compressed() { d.allocated } else { 0 };
    let desc = d.descriptor.clone().unwrap_or_default();
    let segments = std::mem::take(&mut d.segs).finish(total)?;
    let recipe =
        Recipe { file_len: total, cluster_bits: h.grain_bytes().trailing_zeros() as u8, virtual_size: vsize, flags, segments }.encode();
    let mut info = serde_json::json!({
        "format": "vmdk",
        "virtual_size": vsize,
        "subformat": if h.compressed() { "streamOptimized" } else { "monolithicSparse" },
        "version": h.version,
        "flags": format!("{:#x}", h.flags),
        "capacity_sectors": h.capacity,
        "grain_size": h.grain_bytes(),
        "grains": h.grains(),
        "allocated_grains": d.allocated,
        "zero_grains": d.zero_grains,
        "compressed_grains": compressed_grains,
        "reproduced_grains": d.reproduced,
        "literal_grains": d.literal_grains,
        "stored_grains": d.stored_grains,
        "gd_at_end": h.gd_offset == GD_AT_END,
        "redundant_gd": h.flags & FLAG_RGD != 0,
        "unclean_shutdown": h.unclean_shutdown != 0,
        "descriptor": {
            "createType": desc.create_type,
            "CID": desc.cid,
            "adapterType": desc.adapter_type,
            "virtualHWVersion": desc.hw_version,
            "extent_file_name": desc.extent_name,
        },
    });
    if h.compressed() {
        info["zlib_version"] = codec::zlib_version().into();
    }
    if let Some(r) = &opaque {
        info["opaque"] = r.clone().into();
    }
    Ok(Decomposition { recipe, virtual_size: vsize, literal_stream_bytes: d.lit_off, info, opaque })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{RebuildSource, WriteOptions};

    #[derive(Default, Debug)]
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
            let (a, b) = ((off as usize).min(self.guest.len()), (off as usize + buf.len()).min(self.guest.len()));
            buf[..b - a].copy_from_slice(&self.guest[a..b]);
            Ok(())
        }
        fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let s = self.literal.get(off as usize..off as usize + buf.len()).ok_or_else(|| std::io::Error::other("literal range"))?;
            buf.copy_from_slice(s);
            Ok(())
        }
    }

    /// A 1 MiB disk with text, noise and a partial last grain, written by our writer.
    fn image(sub: &str) -> (Vec<u8>, Vec<u8>) {
        let mut disk = vec![0u8; 1 << 20];
        for (i, b) in disk[65536..3 * 65536].iter_mut().enumerate() {
            *b = b"imgarc vmdk unit test grain\n"[i % 28];
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in disk[5 * 65536..5 * 65536 + 70000].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        disk.truncate((1 << 20) - 4096);
        let n = disk.len();
        disk[n - 10..].copy_from_slice(b"last grain");
        let mut src = Mem { guest: disk.clone(), literal: Vec::new() };
        let ranges = [(65536u64, 2 * 65536u64), (5 * 65536, 70000), (n as u64 - 10, 10)];
        let mut out = Vec::new();
        super::super::write(&WriteOptions { subformat: Some(sub.into()), compress: false }, n as u64, &ranges, &mut src, &mut out).unwrap();
        (disk, out)
    }

    fn run(img: &[u8], with_len: bool) -> Result<(Decomposition, Mem), ImageError> {
        let policy = Policy { max_tracked: 1 << 16, ..Policy::default() };
        let mut m = Mem::default();
        let mut input = img;
        let d = decompose(&mut input, with_len.then_some(img.len() as u64), &policy, &mut m)?;
        Ok((d, m))
    }

    fn assert_exact(img: &[u8], d: &Decomposition, m: &mut Mem) {
        let mut out = Vec::new();
        crate::format::rebuild::rebuild(&d.recipe, m, &mut out).unwrap();
        assert!(out == img, "rebuild not byte-exact");
        assert!(m.guest.len() as u64 <= d.virtual_size);
    }

    #[test]
    fn both_subformats_decompose_to_the_disk_and_rebuild_exactly() {
        for sub in ["streamOptimized", "monolithicSparse"] {
            let (disk, img) = image(sub);
            for with_len in [true, false] {
                let (d, mut m) = run(&img, with_len).unwrap();
                assert!(d.opaque.is_none(), "{sub}: {:?}", d.opaque);
                assert_eq!(d.virtual_size, disk.len() as u64);
                let mut guest = m.guest.clone();
                guest.resize(disk.len(), 0);
                assert!(guest == disk, "{sub}: guest stream differs");
                assert_eq!(d.info["subformat"], sub);
                assert_eq!(d.info["allocated_grains"], 5, "{}", d.info);
                if sub == "streamOptimized" {
                    // Text grains reproduce; the noise grain is stored blocks (guest data); the
                    // partial last grain stays literal.
                    assert_eq!(d.info["reproduced_grains"], 3, "{}", d.info);
                    assert_eq!(d.info["stored_grains"], 1, "{}", d.info);
                    assert_eq!(d.info["literal_grains"], 1, "{}", d.info);
                    assert!(d.literal_stream_bytes < 8192, "{}", d.literal_stream_bytes);
                } else {
                    assert!(d.literal_stream_bytes < 16_384, "{}", d.literal_stream_bytes);
                }
                assert_exact(&img, &d, &mut m);
            }
        }
    }

    #[test]
    fn a_stream_without_its_end_of_stream_marker_is_truncated() {
        let (_, img) = image("streamOptimized");
        // The writer's last sector is the end-of-stream marker (lba 0, size 0, type 0).
        let eos = &img[img.len() - 512..];
        assert!(eos.iter().all(|&b| b == 0), "the writer ends with an end-of-stream marker");
        assert!(run(&img, false).is_ok());
        let cut = &img[..img.len() - 512];
        for with_len in [true, false] {
            let e = run(cut, with_len).map(|_| ()).expect_err("a stream cut before its end-of-stream marker is refused").to_string();
            assert!(e.contains("without its end-of-stream marker"), "{e}");
        }
    }

    #[test]
    fn every_truncation_and_bitflip_is_an_error_or_exact() {
        for sub in ["streamOptimized", "monolithicSparse"] {
            let (_, img) = image(sub);
            let cuts: Vec<usize> =
                (0..img.len()).step_by(1999).chain((0..img.len()).step_by(4096)).chain([511, 513, 1024, 1036, 1100]).collect();
            for cut in cuts {
                for with_len in [true, false] {
                    if let Ok((d, mut m)) = run(&img[..cut], with_len) {
                        assert_exact(&img[..cut], &d, &mut m);
                    }
                }
            }
            // Metadata bytes: header, descriptor, tables (stream: the tail with GT, GD, footer).
            let spots: Vec<usize> = if sub == "streamOptimized" {
                (0..1100).step_by(5).chain((img.len() - 4096..img.len()).step_by(7)).collect()
            } else {
                (0..80).chain((80..20480).step_by(41)).collect()
            };
            for i in spots {
                let mut v = img.clone();
                v[i] ^= 1 << (i % 8);
                if let Ok((d, mut m)) = run(&v, true) {
                    assert_exact(&v, &d, &mut m);
                }
            }
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let (_, img) = image("monolithicSparse");
        let mut text = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"x-flat.vmdk\" 0\n".to_vec();
        text.resize(1024, 0);
        assert!(run(&text, true).unwrap_err().to_string().contains("names its extents in other files"));
        let mut grain_before_table = img.clone();
        // Point grain table 0 past its own grains: the grains then precede the table naming them.
        let gd = u64::from_le_bytes(img[56..64].try_into().unwrap()) as usize * 512;
        let last = (img.len() / 512) as u32 - 4;
        grain_before_table[gd..gd + 4].copy_from_slice(&last.to_le_bytes());
        let e = run(&grain_before_table, true);
        assert!(e.as_ref().is_err() || e.as_ref().unwrap().0.opaque.is_some(), "grain before its table must not decompose silently");
        let mut so = image("streamOptimized").1;
        let n = so.len();
        so[n - 1024 + 56..n - 1024 + 64].copy_from_slice(&7u64.to_le_bytes()); // footer gdOffset
        assert!(run(&so, true).unwrap_err().to_string().contains("gdOffset"));
    }
}
