//! The layout recipe: how to rebuild the original qcow2 file byte-exactly from guest data,
//! the literal stream and recompression. Encoding (versioned, varint + zstd) is specified
//! byte by byte in `format-spec/qcow2-layout.md`; this file is the only implementation.
//!
//! A recipe is a list of segments that tile the file `[0, file_len)` in host order, so host
//! offsets are implicit and rebuild is a single sequential pass.
use super::error::ImageError;
use std::io::Read;

pub const RECIPE_MAGIC: &[u8; 4] = b"IQCR";
/// Version written. Version 1 (no per-cluster checks) is still read.
pub const RECIPE_VERSION: u8 = 2;
/// Cap on the decoded body size (a recipe is ~1 byte per 64 KiB of image; 256 MiB is far
/// beyond any real image and bounds hostile recipes).
pub const MAX_BODY: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Segment {
    /// `len` zero bytes.
    Zero { len: u64 },
    /// `len` bytes of the literal stream starting at `lit_off`.
    Literal { len: u64, lit_off: u64 },
    /// `len` bytes of guest data starting at `guest_off` (holes read as zeros).
    Guest { len: u64, guest_off: u64 },
    /// One compressed cluster: recompress the guest cluster at `guest_off` (zero-padded past
    /// the virtual size) with `codec`; the result is exactly `len` bytes, and its
    /// [`compressed_check`] is `check` (absent in version-1 recipes: length checked only).
    Compressed { len: u64, guest_off: u64, codec: u8, check: Option<u64> },
}

impl Segment {
    #[allow(clippy::len_without_is_empty)] // a segment's length; a recipe never holds an empty one
    pub fn len(&self) -> u64 {
        match *self {
            Segment::Zero { len } | Segment::Literal { len, .. } | Segment::Guest { len, .. } | Segment::Compressed { len, .. } => len,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recipe {
    pub file_len: u64,
    pub cluster_bits: u8,
    pub virtual_size: u64,
    /// Bit 0: opaque (the whole file is literal, or the decomposer stopped interpreting).
    pub flags: u8,
    pub segments: Vec<Segment>,
}

pub const FLAG_OPAQUE: u8 = 1;

/// The check recorded for a compressed cluster's original bytes: the first 8 bytes of their
/// BLAKE3 hash, little-endian. Rebuild recomputes it over what the linked codec produced, so a
/// codec that compresses differently (another zlib/zstd build) is caught at that cluster.
pub fn compressed_check(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 of 32 bytes"))
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn put_zz(out: &mut Vec<u8>, v: i64) {
    put_var(out, ((v << 1) ^ (v >> 63)) as u64);
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}
impl Cur<'_> {
    fn u8(&mut self) -> Result<u8, ImageError> {
        let v = *self.b.get(self.p).ok_or_else(|| ImageError::BadRecipe("truncated".into()))?;
        self.p += 1;
        Ok(v)
    }
    fn var(&mut self) -> Result<u64, ImageError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(ImageError::BadRecipe("varint overflows 64 bits".into()));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ImageError::BadRecipe("varint too long".into()))
    }
    fn u64_le(&mut self) -> Result<u64, ImageError> {
        let b = self.b.get(self.p..self.p + 8).ok_or_else(|| ImageError::BadRecipe("truncated".into()))?;
        self.p += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn zz(&mut self) -> Result<i64, ImageError> {
        let v = self.var()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
}

const T_ZERO: u8 = 0;
const T_LIT: u8 = 1;
const T_GUEST: u8 = 2;
const T_COMP: u8 = 3;

impl Recipe {
    /// Encode: header + zstd-compressed body. Version 2 when every compressed segment has a
    /// check (what the decomposer produces), else version 1 (kept for tests and old recipes).
    pub fn encode(&self) -> Vec<u8> {
        let version = if self.segments.iter().all(|s| !matches!(s, Segment::Compressed { check: None, .. })) { RECIPE_VERSION } else { 1 };
        let mut body = Vec::with_capacity(16 + self.segments.len() * 4);
        put_var(&mut body, self.file_len);
        body.push(self.cluster_bits);
        put_var(&mut body, self.virtual_size);
        body.push(self.flags);
        put_var(&mut body, self.segments.len() as u64);
        let (mut next_lit, mut next_guest) = (0u64, 0u64);
        let cs = 1u64 << self.cluster_bits.min(63);
        for s in &self.segments {
            match *s {
                Segment::Zero { len } => {
                    body.push(T_ZERO);
                    put_var(&mut body, len);
                }
                Segment::Literal { len, lit_off } => {
                    body.push(T_LIT);
                    put_var(&mut body, len);
                    put_zz(&mut body, lit_off.wrapping_sub(next_lit) as i64);
                    next_lit = lit_off.wrapping_add(len);
                }
                Segment::Guest { len, guest_off } => {
                    body.push(T_GUEST);
                    put_var(&mut body, len);
                    put_zz(&mut body, guest_off.wrapping_sub(next_guest) as i64);
                    next_guest = guest_off.wrapping_add(len);
                }
                Segment::Compressed { len, guest_off, codec, check } => {
                    body.push(T_COMP);
                    body.push(codec);
                    put_var(&mut body, len);
                    put_zz(&mut body, guest_off.wrapping_sub(next_guest) as i64);
                    if version >= 2 {
                        body.extend_from_slice(&check.unwrap_or(0).to_le_bytes());
                    }
                    next_guest = guest_off.wrapping_add(cs);
                }
            }
        }
        let mut out = Vec::with_capacity(body.len() / 4 + 16);
        out.extend_from_slice(RECIPE_MAGIC);
        out.push(version);
        out.push(1); // body compression: zstd
        put_var(&mut out, body.len() as u64);
        out.extend_from_slice(&zstd::bulk::compress(&body, 19).unwrap_or_else(|_| body.clone()));
        out
    }

    /// Decode and validate (segments tile `[0, file_len)`, every length non-zero).
    pub fn decode(data: &[u8]) -> Result<Recipe, ImageError> {
        let e = |m: &str| ImageError::BadRecipe(m.into());
        if data.len() < 6 || &data[..4] != RECIPE_MAGIC {
            return Err(e("bad magic (not an imgarc qcow2 recipe)"));
        }
        let version = data[4];
        if !(1..=RECIPE_VERSION).contains(&version) {
            return Err(ImageError::BadRecipe(format!("unsupported recipe version {version}")));
        }
        let comp = data[5];
        let mut c = Cur { b: data, p: 6 };
        let body_len = c.var()?;
        if body_len > MAX_BODY {
            return Err(e("body too large"));
        }
        let rest = &data[c.p..];
        let body = match comp {
            0 => rest.to_vec(),
            1 => {
                // Streaming decoder + take(): allocation follows real output, never the claim.
                let mut v = Vec::new();
                let dec = zstd::stream::read::Decoder::new(rest).map_err(|_| e("bad zstd body"))?;
                dec.take(body_len + 1).read_to_end(&mut v).map_err(|_| e("bad zstd body"))?;
                v
            }
            _ => return Err(e("unknown body compression")),
        };
        if body.len() as u64 != body_len {
            return Err(e("body length mismatch"));
        }
        let mut c = Cur { b: &body, p: 0 };
        let file_len = c.var()?;
        let cluster_bits = c.u8()?;
        if !(9..=21).contains(&cluster_bits) {
            return Err(e("cluster_bits out of range"));
        }
        let cs = 1u64 << cluster_bits;
        let virtual_size = c.var()?;
        let flags = c.u8()?;
        let n = c.var()?;
        // Every segment takes at least 2 bytes, so this bounds the allocation by the body.
        if n > (body.len() as u64) / 2 {
            return Err(e("segment count exceeds body"));
        }
        let mut segments = Vec::with_capacity(n as usize);
        let (mut next_lit, mut next_guest, mut pos) = (0u64, 0u64, 0u64);
        for _ in 0..n {
            let tag = c.u8()?;
            let s = match tag {
                T_ZERO => Segment::Zero { len: c.var()? },
                T_LIT => {
                    let len = c.var()?;
                    let lit_off = next_lit.wrapping_add(c.zz()? as u64);
                    next_lit = lit_off.checked_add(len).ok_or_else(|| e("literal offset overflow"))?;
                    Segment::Literal { len, lit_off }
                }
                T_GUEST => {
                    let len = c.var()?;
                    let guest_off = next_guest.wrapping_add(c.zz()? as u64);
                    next_guest = guest_off.checked_add(len).ok_or_else(|| e("guest offset overflow"))?;
                    if next_guest > virtual_size {
                        return Err(e("guest segment beyond the virtual size"));
                    }
                    Segment::Guest { len, guest_off }
                }
                T_COMP => {
                    let codec = c.u8()?;
                    let len = c.var()?;
                    let guest_off = next_guest.wrapping_add(c.zz()? as u64);
                    if guest_off % cs != 0 || guest_off >= virtual_size {
                        return Err(e("compressed cluster guest offset invalid"));
                    }
                    if len >= cs || !(1..=3).contains(&codec) {
                        return Err(e("compressed segment length or codec invalid"));
                    }
                    let check = if version >= 2 { Some(c.u64_le()?) } else { None };
                    next_guest = guest_off + cs;
                    Segment::Compressed { len, guest_off, codec, check }
                }
                _ => return Err(e("unknown segment tag")),
            };
            if s.len() == 0 {
                return Err(e("empty segment"));
            }
            pos = pos.checked_add(s.len()).ok_or_else(|| e("length overflow"))?;
            segments.push(s);
        }
        if c.p != body.len() {
            return Err(e("trailing bytes after segments"));
        }
        if pos != file_len {
            return Err(ImageError::BadRecipe(format!("segments cover {pos} bytes, file length is {file_len}")));
        }
        Ok(Recipe { file_len, cluster_bits, virtual_size, flags, segments })
    }

    /// Compressed segments without a recorded check (version-1 recipes): rebuild can only
    /// check their length.
    pub fn unchecked_compressed(&self) -> u64 {
        self.segments.iter().filter(|s| matches!(s, Segment::Compressed { check: None, .. })).count() as u64
    }

    /// Bytes of the literal stream the recipe references (max end offset).
    pub fn literal_len(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| match *s {
                Segment::Literal { len, lit_off } => Some(lit_off + len),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Zero elision of literal bytes, shared by every decomposer: `b` as alternating runs of
/// all-zero [`ZERO_GRAIN`]-byte pieces and of other pieces (the last piece may be shorter),
/// `(start, end, zero)` in order, tiling `b`. A zero run becomes a `Segment::Zero` instead of
/// literal-stream bytes.
pub(crate) fn zero_runs(b: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (k, piece) in b.chunks(ZERO_GRAIN).enumerate() {
        let (start, zero) = (k * ZERO_GRAIN, crate::chunking::is_zero(piece));
        match runs.last_mut() {
            Some(last) if last.2 == zero => last.1 = start + piece.len(),
            _ => runs.push((start, start + piece.len(), zero)),
        }
    }
    runs
}

/// The granularity of [`zero_runs`]: one sector.
pub(crate) const ZERO_GRAIN: usize = 512;

/// Builder used by the decomposer: collects segments (in any order), then sorts and merges.
#[derive(Default)]
pub(crate) struct SegList {
    pub items: Vec<(u64, Segment)>,
}

impl SegList {
    /// Adds a segment; one continuing the last pushed one (same kind, contiguous host and
    /// stream offsets) extends it, so host-ordered literal stretches cost one item.
    pub fn push(&mut self, host: u64, s: Segment) {
        if s.len() == 0 {
            return;
        }
        if let Some((last_host, last)) = self.items.last_mut() {
            if *last_host + last.len() == host {
                if let Some(merged) = merge(*last, s) {
                    *last = merged;
                    return;
                }
            }
        }
        self.items.push((host, s));
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Sort by host offset, merge continuations, verify exact tiling of `[0, file_len)`.
    pub fn finish(mut self, file_len: u64) -> Result<Vec<Segment>, ImageError> {
        self.items.sort_unstable_by_key(|x| x.0);
        let mut out: Vec<Segment> = Vec::with_capacity(self.items.len());
        let mut pos = 0u64;
        for (host, s) in self.items {
            if host != pos {
                return Err(ImageError::Rebuild(format!(
                    "internal error: recipe gap/overlap at host offset {pos} (next segment at {host})"
                )));
            }
            pos += s.len();
            if let Some(last) = out.last_mut() {
                if let Some(merged) = merge(*last, s) {
                    *last = merged;
                    continue;
                }
            }
            out.push(s);
        }
        if pos != file_len {
            return Err(ImageError::Rebuild(format!("internal error: recipe covers {pos} of {file_len} bytes")));
        }
        Ok(out)
    }
}

/// `a` followed by `b` as one segment, when they continue each other.
fn merge(a: Segment, b: Segment) -> Option<Segment> {
    match (a, b) {
        (Segment::Zero { len }, Segment::Zero { len: l2 }) => Some(Segment::Zero { len: len + l2 }),
        (Segment::Literal { len, lit_off }, Segment::Literal { len: l2, lit_off: o2 }) if lit_off + len == o2 => {
            Some(Segment::Literal { len: len + l2, lit_off })
        }
        (Segment::Guest { len, guest_off }, Segment::Guest { len: l2, guest_off: g2 }) if guest_off + len == g2 => {
            Some(Segment::Guest { len: len + l2, guest_off })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recipe {
        Recipe {
            file_len: 512 + 1000 + 65536 + 300 + 7,
            cluster_bits: 16,
            virtual_size: 1 << 30,
            flags: 0,
            segments: vec![
                Segment::Literal { len: 512, lit_off: 0 },
                Segment::Zero { len: 1000 },
                Segment::Guest { len: 65536, guest_off: 1 << 20 },
                Segment::Compressed { len: 300, guest_off: 0, codec: 1, check: Some(0x0123_4567_89ab_cdef) }, // backwards guest delta
                Segment::Literal { len: 7, lit_off: 100_000 },                                                // forward literal delta
            ],
        }
    }

    #[test]
    fn roundtrip_all_segment_kinds() {
        let r = sample();
        let enc = r.encode();
        assert_eq!(&enc[..4], RECIPE_MAGIC);
        assert_eq!(Recipe::decode(&enc).unwrap(), r);
        assert_eq!(r.literal_len(), 100_007);
    }

    #[test]
    fn every_truncation_and_bitflip_is_an_error_or_valid() {
        let enc = sample().encode();
        for n in 0..enc.len() {
            assert!(Recipe::decode(&enc[..n]).is_err(), "prefix {n} accepted");
        }
        for i in 0..enc.len() {
            for b in 0..8 {
                let mut e = enc.clone();
                e[i] ^= 1 << b;
                if let Ok(r) = Recipe::decode(&e) {
                    assert_eq!(r.segments.iter().map(|s| s.len()).sum::<u64>(), r.file_len);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_tiling_and_fields() {
        let mut r = sample();
        r.file_len += 1;
        assert!(Recipe::decode(&r.encode()).unwrap_err().to_string().contains("cover"));
        let mut r = sample();
        r.segments[3] = Segment::Compressed { len: 300, guest_off: 5, codec: 1, check: Some(1) };
        assert!(Recipe::decode(&r.encode()).is_err());
        let mut r = sample();
        r.segments[3] = Segment::Compressed { len: 300, guest_off: 0, codec: 9, check: Some(1) };
        assert!(Recipe::decode(&r.encode()).is_err());
        let mut r = sample();
        r.virtual_size = 1000;
        assert!(Recipe::decode(&r.encode()).is_err());
    }

    #[test]
    fn version_1_recipes_still_decode_without_checks() {
        let mut r = sample();
        r.segments[3] = Segment::Compressed { len: 300, guest_off: 0, codec: 1, check: None };
        let enc = r.encode();
        assert_eq!(enc[4], 1);
        let back = Recipe::decode(&enc).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.unchecked_compressed(), 1);
        assert_eq!(Recipe::decode(&sample().encode()).unwrap().unchecked_compressed(), 0);
        assert_eq!(sample().encode()[4], RECIPE_VERSION);
    }

    #[test]
    fn seglist_merges_and_detects_gaps() {
        let mut s = SegList::default();
        s.push(10, Segment::Zero { len: 5 });
        s.push(0, Segment::Literal { len: 4, lit_off: 0 });
        s.push(4, Segment::Literal { len: 6, lit_off: 4 });
        let v = s.finish(15).unwrap();
        assert_eq!(v, vec![Segment::Literal { len: 10, lit_off: 0 }, Segment::Zero { len: 5 }]);
        let mut s = SegList::default();
        s.push(1, Segment::Zero { len: 5 });
        assert!(s.finish(6).is_err());
    }
}
