//! The streaming VDI decomposer: one sequential pass over untrusted bytes — header, block map, data blocks in
//! allocation order — into guest pieces (each data block emitted at the guest offset the map gives it), the literal
//! stream (header, map, unreferenced blocks, trailing bytes; zero runs elided) and the recipe.
//!
//! The block map precedes the data in every image VirtualBox and qemu write, so each data block's guest offset is
//! known when its bytes arrive and nothing is held. A map placed after the data (never written by either tool) is
//! stored opaque: exact, without guest-data dedup.
use super::header::{self, Header, BLOCK_FREE, BLOCK_ZERO, FORMAT};
use crate::chunking::is_zero;
use crate::format::recipe::{Recipe, SegList, Segment, FLAG_OPAQUE};
use crate::format::{DecomposeSink, Decomposition, ImageError, Policy};
use crate::util::read_full;
use std::io::Read;

/// Bytes read at a time.
const READ: usize = 1 << 20;
/// Longest comment/pre-header text reported in `info` (the fields are 256 and 64 bytes on disk anyway).
const MAX_TEXT: usize = 256;

struct Dec<'a> {
    input: &'a mut dyn Read,
    sink: &'a mut dyn DecomposeSink,
    policy: &'a Policy,
    /// Host offset of the next byte read.
    pos: u64,
    segs: SegList,
    lit_off: u64,
    vsize: u64,
    opaque: Option<String>,
    guest_bytes: u64,
}

impl Dec<'_> {
    /// Reads exactly `buf.len()` bytes at the current position; a short read is a truncated image.
    fn read_exact(&mut self, buf: &mut [u8], expected_end: u64) -> Result<(), ImageError> {
        let n = read_full(self.input, buf)?;
        self.pos += n as u64;
        if n < buf.len() {
            return Err(ImageError::Truncated { format: FORMAT, expected: expected_end, got: self.pos });
        }
        Ok(())
    }

    /// Over the segment budget the rest of the file becomes literal (opaque from here; a strict policy refuses).
    fn check_budget(&mut self) -> Result<(), ImageError> {
        if self.opaque.is_none() && self.segs.len() >= self.policy.max_segments {
            let reason = format!("more than {} recipe segments", self.policy.max_segments);
            if self.policy.strict {
                return Err(ImageError::Limit(format!("strict policy refuses opaque storage: {reason}")));
            }
            self.opaque = Some(reason);
        }
        Ok(())
    }

    fn push_literal(&mut self, h: u64, piece: &[u8]) -> Result<(), ImageError> {
        if piece.is_empty() {
            return Ok(());
        }
        self.sink.literal(piece)?;
        self.segs.push(h, Segment::Literal { len: piece.len() as u64, lit_off: self.lit_off });
        self.lit_off += piece.len() as u64;
        Ok(())
    }

    /// Bytes kept verbatim at host `h`: zero runs become Zero segments, the rest literal.
    fn emit_literal(&mut self, h: u64, b: &[u8]) -> Result<(), ImageError> {
        for (start, end, zero) in crate::format::recipe::zero_runs(b) {
            self.check_budget()?;
            if self.opaque.is_some() {
                return self.push_literal(h + start as u64, &b[start..]);
            }
            if zero {
                self.segs.push(h + start as u64, Segment::Zero { len: (end - start) as u64 });
            } else {
                self.push_literal(h + start as u64, &b[start..end])?;
            }
        }
        Ok(())
    }

    /// Guest bytes at host `h` mapping guest offset `g`; what lies past the virtual size is literal.
    fn emit_guest(&mut self, h: u64, g: u64, b: &[u8]) -> Result<(), ImageError> {
        self.check_budget()?;
        if self.opaque.is_some() {
            return self.push_literal(h, b);
        }
        let n = (b.len() as u64).min(self.vsize.saturating_sub(g)) as usize;
        let (data, rest) = b.split_at(n);
        if is_zero(data) {
            self.segs.push(h, Segment::Zero { len: n as u64 });
        } else {
            self.sink.guest(g, data)?;
            self.segs.push(h, Segment::Guest { len: n as u64, guest_off: g });
            self.guest_bytes += n as u64;
        }
        self.emit_literal(h + n as u64, rest)
    }

    /// Reads `len` bytes and keeps them literal.
    fn literal_run(&mut self, len: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let end = self.pos + len;
        while self.pos < end {
            let n = (end - self.pos).min(buf.len() as u64) as usize;
            let h = self.pos;
            self.read_exact(&mut buf[..n], end)?;
            self.emit_literal(h, &buf[..n])?;
        }
        Ok(())
    }

    /// Reads to the end of the input, keeping it literal; returns the file length.
    fn literal_to_eof(&mut self, buf: &mut [u8]) -> Result<u64, ImageError> {
        loop {
            let n = read_full(self.input, buf)?;
            if n == 0 {
                return Ok(self.pos);
            }
            let h = self.pos;
            self.pos += n as u64;
            self.emit_literal(h, &buf[..n])?;
        }
    }
}

/// Decomposes one VDI image read from `input` (see the module doc).
pub fn decompose(
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    let mut d = Dec { input, sink, policy, pos: 0, segs: SegList::default(), lit_off: 0, vsize: 0, opaque: None, guest_bytes: 0 };
    let mut hb = vec![0u8; header::MIN_HEADER_END as usize];
    d.read_exact(&mut hb, header::MIN_HEADER_END)?;
    let end = header::header_end(&hb)?;
    let mut more = vec![0u8; (end - header::MIN_HEADER_END) as usize];
    d.read_exact(&mut more, end)?;
    hb.extend_from_slice(&more);
    let h = header::parse(&hb, policy.max_virtual_size, file_len)?;
    d.vsize = h.disk_size;
    d.emit_literal(0, &hb)?;
    let mut buf = vec![0u8; READ.min(h.block_size as usize).max(64 << 10)];

    let mut zero_blocks = 0u64;
    let mut mapped = 0u64;
    if h.offset_bmap > h.offset_data {
        // The map follows the data: each data block's guest offset is unknown when it is read.
        let reason = format!("the block map at {:#x} follows the data area at {:#x}", h.offset_bmap, h.offset_data);
        if policy.strict {
            return Err(ImageError::Limit(format!("strict policy refuses opaque storage: {reason}")));
        }
        d.opaque = Some(reason);
    } else {
        d.literal_run(h.offset_bmap - d.pos, &mut buf)?;
        let (map, data_to_guest) = read_map(&mut d, &h)?;
        zero_blocks = map.iter().filter(|&&e| e == BLOCK_ZERO).count() as u64;
        mapped = data_to_guest.iter().filter(|&&g| g != BLOCK_FREE).count() as u64;
        drop(map);
        d.literal_run(h.offset_data - d.pos, &mut buf)?;
        let bs = h.block_size as u64;
        for (index, &guest_block) in data_to_guest.iter().enumerate() {
            let block_start = d.pos;
            let block_end = block_start + bs;
            while d.pos < block_end {
                let n = (block_end - d.pos).min(buf.len() as u64) as usize;
                let at = d.pos;
                d.read_exact(&mut buf[..n], h.data_end()).map_err(|e| match e {
                    ImageError::Truncated { .. } => ImageError::malformed(
                        FORMAT,
                        format!("data block {index} of {} ends at {block_end:#x}, past the end of the file", h.blocks_allocated),
                    ),
                    e => e,
                })?;
                if guest_block == BLOCK_FREE {
                    // A data block no map entry names: its bytes are not guest data.
                    d.emit_literal(at, &buf[..n])?;
                } else {
                    d.emit_guest(at, guest_block as u64 * bs + (at - block_start), &buf[..n])?;
                }
            }
        }
    }
    let total = d.literal_to_eof(&mut buf)?;
    if let Some(fl) = file_len {
        if fl != total {
            return Err(ImageError::malformed(FORMAT, format!("the file was announced as {fl} bytes but holds {total}")));
        }
    }
    let trailing = total.saturating_sub(h.data_end().max(h.offset_bmap + h.bmap_len()));
    let segments = d.segs.finish(total)?;
    let cluster_bits = h.block_size.trailing_zeros().clamp(9, 21) as u8;
    let recipe = Recipe {
        file_len: total,
        cluster_bits,
        virtual_size: h.disk_size,
        flags: if d.opaque.is_some() { FLAG_OPAQUE } else { 0 },
        segments,
    };
    let info = info(&h, zero_blocks, mapped, trailing, d.guest_bytes, d.lit_off, d.opaque.as_deref());
    Ok(Decomposition { recipe: recipe.encode(), virtual_size: h.disk_size, literal_stream_bytes: d.lit_off, info, opaque: d.opaque })
}

/// Reads the block map (literal) and returns it with its inverse: for each data block (by index in the data area),
/// the guest block it holds, or [`BLOCK_FREE`]. Both grow with the bytes actually read (the header's counts were
/// checked against the file length and the virtual size limit).
fn read_map(d: &mut Dec<'_>, h: &Header) -> Result<(Vec<u32>, Vec<u32>), ImageError> {
    let mut map: Vec<u32> = Vec::new();
    let mut remaining = h.bmap_len();
    let mut chunk = vec![0u8; 64 << 10];
    while remaining > 0 {
        let n = remaining.min(chunk.len() as u64) as usize;
        let at = d.pos;
        d.read_exact(&mut chunk[..n], h.offset_bmap + h.bmap_len())?;
        d.emit_literal(at, &chunk[..n])?;
        map.extend(chunk[..n].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))));
        remaining -= n as u64;
    }
    let mut data_to_guest = vec![BLOCK_FREE; h.blocks_allocated as usize];
    for (guest_block, &entry) in map.iter().enumerate() {
        let entry_at = h.offset_bmap + guest_block as u64 * 4;
        if entry == BLOCK_FREE || entry == BLOCK_ZERO {
            if h.fixed() {
                return Err(ImageError::malformed(
                    FORMAT,
                    format!("fixed image: block map entry {guest_block} at {entry_at:#x} is unallocated"),
                ));
            }
            continue;
        }
        if h.fixed() && entry as usize != guest_block {
            return Err(ImageError::malformed(
                FORMAT,
                format!("fixed image: block map entry {guest_block} at {entry_at:#x} names data block {entry}, not {guest_block}"),
            ));
        }
        let slot = data_to_guest.get_mut(entry as usize).ok_or_else(|| {
            ImageError::malformed(
                FORMAT,
                format!(
                    "block map entry {guest_block} at {entry_at:#x} names data block {entry}, but only {} are allocated",
                    h.blocks_allocated
                ),
            )
        })?;
        if *slot != BLOCK_FREE {
            return Err(ImageError::malformed(
                FORMAT,
                format!("block map entries {} and {guest_block} (at {entry_at:#x}) both name data block {entry}", *slot),
            ));
        }
        *slot = guest_block as u32;
    }
    Ok((map, data_to_guest))
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

fn info(
    h: &Header,
    zero_blocks: u64,
    mapped: u64,
    trailing: u64,
    guest_bytes: u64,
    literal_bytes: u64,
    opaque: Option<&str>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "format": FORMAT,
        "virtual_size": h.disk_size,
        "subformat": h.subformat(),
        "version": "1.1",
        "header_size": h.header_size,
        "image_type": h.image_type,
        "flags": h.flags,
        "pre_header": bounded(h.pre_header.trim_end()),
        "comment": bounded(&h.comment),
        "block_size": h.block_size,
        "blocks": h.blocks,
        "blocks_allocated": h.blocks_allocated,
        "blocks_mapped": mapped,
        "zero_blocks": zero_blocks,
        "offset_bmap": h.offset_bmap,
        "offset_data": h.offset_data,
        "legacy_geometry": h.legacy_chs,
        "uuid_create": header::uuid_string(&h.uuid_create),
        "uuid_modify": header::uuid_string(&h.uuid_modify),
        "trailing_bytes": trailing,
        "guest_bytes": guest_bytes,
        "literal_bytes": literal_bytes,
    });
    if let Some(l) = h.lchs {
        v["lchs_geometry"] = serde_json::json!(l);
    }
    if let Some(r) = opaque {
        v["opaque"] = serde_json::json!(r);
    }
    v
}
