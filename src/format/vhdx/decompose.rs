//! The streaming VHDX decomposer: one sequential pass over untrusted bytes.
//!
//! The *prefix* — the header section and everything up to the end of the BAT and metadata
//! regions — is held in memory (within `Policy::max_pending_ram`), because the BAT can only be
//! interpreted with the block size from the metadata, and qemu puts the BAT before the metadata.
//! Once both are parsed, every file byte has a known fate: payload bytes of FULLY_PRESENT
//! blocks are guest data at their guest offset, everything else is literal (zero runs elided).
//! A prefix larger than the cap, or a recipe over the segment budget, stores the file (or its
//! rest) opaque: exact, no dedup, never a guess.
use super::*;
use crate::chunking::is_zero;
use crate::format::recipe::{Recipe, SegList, Segment, FLAG_OPAQUE};
use crate::util::read_full;

/// Granularity of zero detection inside payload blocks.
const GGRAIN: usize = 64 << 10;
/// The recipe's cluster size field (no compressed segments in VHDX: informational only).
const RECIPE_CLUSTER_BITS: u8 = 16;
/// Bytes read from the input per step after the prefix.
const READ_STEP: usize = 1 << 20;
/// The first bytes of every file: identifier, both headers, both region tables.
const HEAD_LEN: u64 = REGION_OFFSETS[1] + REGION_TABLE_LEN as u64;

#[derive(Debug, Clone)]
struct Header {
    offset: u64,
    seq: u64,
    log_guid: Guid,
    log_version: u16,
    version: u16,
    log_len: u32,
    log_off: u64,
}

/// A payload block's bytes in the file that hold guest data.
#[derive(Debug, Clone, Copy)]
struct Span {
    off: u64,
    len: u64,
    guest: u64,
}

fn malformed(reason: impl Into<String>) -> ImageError {
    ImageError::malformed(FMT, reason)
}

fn parse_header(b: &[u8], offset: u64) -> Option<Header> {
    if &b[0..4] != b"head" || le32(b, 4) != structure_checksum(&b[..HEADER_LEN]) {
        return None;
    }
    Some(Header {
        offset,
        seq: le64(b, 8),
        log_guid: b[48..64].try_into().unwrap_or([0; 16]),
        log_version: le16(b, 64),
        version: le16(b, 66),
        log_len: le32(b, 68),
        log_off: le64(b, 72),
    })
}

/// A region's (file offset, length).
type Region = (u64, u64);

/// The BAT and metadata regions of a valid region table; `Ok(None)` if the table's signature
/// or checksum is wrong.
fn parse_region_table(b: &[u8], at: u64) -> Result<Option<(Region, Region)>, ImageError> {
    if &b[0..4] != b"regi" || le32(b, 4) != structure_checksum(b) {
        return Ok(None);
    }
    let count = le32(b, 8);
    if count > MAX_TABLE_ENTRIES {
        return Err(malformed(format!("region table at {at:#x}: entry count {count} exceeds {MAX_TABLE_ENTRIES}")));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count as usize {
        let e = &b[16 + 32 * i..48 + 32 * i];
        let g: Guid = e[0..16].try_into().unwrap_or([0; 16]);
        let (off, len, required) = (le64(e, 16), le32(e, 24) as u64, le32(e, 28) & 1 != 0);
        let at_e = at + 16 + 32 * i as u64;
        let slot = if g == BAT_REGION {
            &mut bat
        } else if g == METADATA_REGION {
            &mut meta
        } else if required {
            return Err(ImageError::refused(
                FMT,
                format!("region table entry at {at_e:#x} names an unknown required region {}", hex::encode(g)),
            ));
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(malformed(format!("region table entry at {at_e:#x}: the region {} appears twice", hex::encode(g))));
        }
        if off % MIB != 0 || off < HEADER_SECTION || len == 0 || len % MIB != 0 || off.checked_add(len).is_none() {
            return Err(malformed(format!(
                "region table entry at {at_e:#x}: region at {off:#x} of {len} bytes is not MiB-aligned, inside the header section or empty"
            )));
        }
        *slot = Some((off, len));
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok(Some((b, m))),
        _ => Err(malformed(format!("region table at {at:#x} lacks the BAT or the metadata region"))),
    }
}

/// What the metadata region says.
struct Metadata {
    block_size: u64,
    file_flags: u32,
    virtual_size: u64,
    logical_sector_size: u64,
    physical_sector_size: u64,
    page83: Guid,
}

fn parse_metadata(r: &[u8], region_off: u64) -> Result<Metadata, ImageError> {
    if &r[0..8] != b"metadata" {
        return Err(malformed(format!("metadata table at {region_off:#x}: signature is not 'metadata'")));
    }
    let count = le16(r, 10) as u32;
    if count > MAX_TABLE_ENTRIES {
        return Err(malformed(format!("metadata table at {region_off:#x}: entry count {count} exceeds {MAX_TABLE_ENTRIES}")));
    }
    let mut items: [Option<&[u8]>; 5] = [None; 5];
    let known = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE83_DATA, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE];
    let lens = [8u64, 8, 16, 4, 4];
    for i in 0..count as usize {
        let e = &r[32 + 32 * i..64 + 32 * i];
        let at = region_off + 32 + 32 * i as u64;
        let g: Guid = e[0..16].try_into().unwrap_or([0; 16]);
        let (off, len, flags) = (le32(e, 16) as u64, le32(e, 20) as u64, le32(e, 24));
        if g == PARENT_LOCATOR {
            return Err(ImageError::refused(
                FMT,
                format!("metadata entry at {at:#x} is a parent locator: a differencing disk (its parent is never opened)"),
            ));
        }
        let Some(k) = known.iter().position(|x| *x == g) else {
            if flags & META_IS_REQUIRED != 0 {
                return Err(ImageError::refused(FMT, format!("metadata entry at {at:#x} is an unknown required item {}", hex::encode(g))));
            }
            continue;
        };
        if items[k].is_some() {
            return Err(malformed(format!("metadata entry at {at:#x}: item {} appears twice", hex::encode(g))));
        }
        if len != lens[k] || off < METADATA_TABLE_LEN as u64 || off.checked_add(len).is_none_or(|e| e > r.len() as u64) {
            return Err(malformed(format!(
                "metadata entry at {at:#x}: item {} at region offset {off:#x} of {len} bytes is outside the metadata region or has the wrong length",
                hex::encode(g)
            )));
        }
        items[k] = Some(&r[off as usize..(off + len) as usize]);
    }
    let names = ["File Parameters", "Virtual Disk Size", "Page 83 Data", "Logical Sector Size", "Physical Sector Size"];
    let mut got = [&[][..]; 5];
    for k in 0..5 {
        got[k] = items[k].ok_or_else(|| malformed(format!("metadata table at {region_off:#x} lacks the {} item", names[k])))?;
    }
    let m = Metadata {
        block_size: le32(got[0], 0) as u64,
        file_flags: le32(got[0], 4),
        virtual_size: le64(got[1], 0),
        page83: got[2].try_into().unwrap_or([0; 16]),
        logical_sector_size: le32(got[3], 0) as u64,
        physical_sector_size: le32(got[4], 0) as u64,
    };
    if m.file_flags & HAS_PARENT != 0 {
        return Err(ImageError::refused(FMT, "File Parameters HasParent is set: a differencing disk (its parent is never opened)"));
    }
    if !m.block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&m.block_size) {
        return Err(malformed(format!("File Parameters block size {} is not a power of two between 1 and 256 MiB", m.block_size)));
    }
    for (name, v) in [("Logical", m.logical_sector_size), ("Physical", m.physical_sector_size)] {
        if v != 512 && v != 4096 {
            return Err(malformed(format!("{name} Sector Size {v} is neither 512 nor 4096")));
        }
    }
    if m.virtual_size % m.logical_sector_size != 0 {
        return Err(malformed(format!(
            "Virtual Disk Size {} is not a multiple of the logical sector size {}",
            m.virtual_size, m.logical_sector_size
        )));
    }
    Ok(m)
}

struct Dec<'a> {
    sink: &'a mut dyn DecomposeSink,
    policy: &'a Policy,
    segs: SegList,
    lit_off: u64,
    virtual_size: u64,
    /// Payload spans sorted by file offset, and the next one not fully consumed.
    spans: Vec<Span>,
    next: usize,
    opaque: Option<String>,
    guest_bytes: u64,
}

impl Dec<'_> {
    fn push_literal(&mut self, h: u64, piece: &[u8]) -> std::io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        self.sink.literal(piece)?;
        self.segs.push(h, Segment::Literal { len: piece.len() as u64, lit_off: self.lit_off });
        self.lit_off += piece.len() as u64;
        Ok(())
    }

    /// Non-guest bytes at host `h`: zero runs become Zero segments, the rest literal.
    fn emit_literal(&mut self, h: u64, b: &[u8]) -> std::io::Result<()> {
        for (start, end, zero) in crate::format::recipe::zero_runs(b) {
            if self.over_budget() {
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

    /// Past the segment budget the rest of the file is stored literal (opaque from here on).
    fn over_budget(&mut self) -> bool {
        if self.opaque.is_none() && self.segs.len() >= self.policy.max_segments {
            self.opaque =
                Some(format!("the recipe would exceed {} segments; the rest of the file is stored literal", self.policy.max_segments));
        }
        self.opaque.is_some()
    }

    /// Guest bytes of a payload block at host `h`, guest offset `g`.
    fn emit_guest(&mut self, h: u64, g: u64, b: &[u8]) -> std::io::Result<()> {
        let mut i = 0usize;
        while i < b.len() {
            if self.over_budget() {
                return self.push_literal(h + i as u64, &b[i..]);
            }
            // Pieces aligned to GGRAIN in the guest, so zero detection follows the guest grid.
            let n = ((GGRAIN as u64 - (g + i as u64) % GGRAIN as u64) as usize).min(b.len() - i);
            let piece = &b[i..i + n];
            if is_zero(piece) {
                self.segs.push(h + i as u64, Segment::Zero { len: n as u64 });
            } else {
                self.sink.guest(g + i as u64, piece)?;
                self.segs.push(h + i as u64, Segment::Guest { len: n as u64, guest_off: g + i as u64 });
                self.guest_bytes += n as u64;
            }
            i += n;
        }
        Ok(())
    }

    /// The file's bytes at host offset `h` (contiguous with what came before).
    fn feed(&mut self, h: u64, b: &[u8]) -> std::io::Result<()> {
        let end = h + b.len() as u64;
        let mut pos = h;
        while pos < end {
            let at = (pos - h) as usize;
            match self.spans.get(self.next).copied() {
                Some(s) if s.off < end => {
                    if s.off > pos {
                        let n = (s.off - pos) as usize;
                        self.emit_literal(pos, &b[at..at + n])?;
                        pos = s.off;
                        continue;
                    }
                    let stop = (s.off + s.len).min(end);
                    let n = (stop - pos) as usize;
                    self.emit_guest(pos, s.guest + (pos - s.off), &b[at..at + n])?;
                    pos = stop;
                    if stop == s.off + s.len {
                        self.next += 1;
                    }
                }
                _ => {
                    self.emit_literal(pos, &b[at..])?;
                    pos = end;
                }
            }
        }
        Ok(())
    }
}

/// Reads the rest of the input after `pos` bytes (to `file_len` when known) in steps, handing
/// each step to `f`; returns the end offset.
fn read_rest(
    input: &mut dyn Read,
    file_len: Option<u64>,
    mut pos: u64,
    mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; READ_STEP];
    loop {
        let want = match file_len {
            Some(fl) => (fl - pos).min(READ_STEP as u64) as usize,
            None => READ_STEP,
        };
        if want == 0 {
            return Ok(pos);
        }
        let n = read_full(input, &mut buf[..want])?;
        f(pos, &buf[..n])?;
        pos += n as u64;
        if n < want {
            if let Some(fl) = file_len {
                return Err(ImageError::Truncated { format: FMT, expected: fl, got: pos });
            }
            return Ok(pos);
        }
    }
}

pub(super) fn decompose(
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    // ---- the first 320 KiB: identifier, headers, region tables ----
    let mut prefix = vec![0u8; HEAD_LEN as usize];
    let n = read_full(input, &mut prefix)?;
    if (n as u64) < HEAD_LEN || file_len.is_some_and(|fl| fl < HEAD_LEN) {
        return Err(ImageError::Truncated { format: FMT, expected: file_len.unwrap_or(HEAD_LEN).max(HEAD_LEN), got: n as u64 });
    }
    if &prefix[0..8] != SIGNATURE {
        return Err(malformed("no file type identifier 'vhdxfile' at offset 0"));
    }
    let creator_raw: Vec<u16> =
        prefix[8..8 + CREATOR_LEN].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
    let creator: String = String::from_utf16_lossy(&creator_raw).chars().filter(|c| !c.is_control()).collect();
    let headers: Vec<Header> =
        HEADER_OFFSETS.iter().filter_map(|&o| parse_header(&prefix[o as usize..o as usize + HEADER_LEN], o)).collect();
    let h = headers
        .iter()
        .max_by_key(|h| (h.seq, std::cmp::Reverse(h.offset)))
        .cloned()
        .ok_or_else(|| malformed("neither header (at 0x10000 and 0x20000) has the signature 'head' and a valid CRC-32C"))?;
    if h.version != 1 {
        return Err(malformed(format!("header at {:#x}: version {} (only 1 is defined)", h.offset, h.version)));
    }
    if h.log_guid != [0; 16] {
        return Err(ImageError::refused(
            FMT,
            format!(
                "header at {:#x} has a log to replay (LogGuid {}): open it once in Hyper-V or run `qemu-img check -r all` on it, then archive it again",
                h.offset,
                hex::encode(h.log_guid)
            ),
        ));
    }
    if h.log_len != 0 && (h.log_off % MIB != 0 || h.log_off < HEADER_SECTION || h.log_len as u64 % MIB != 0) {
        return Err(malformed(format!(
            "header at {:#x}: log at {:#x} of {} bytes is not MiB-aligned or inside the header section",
            h.offset, h.log_off, h.log_len
        )));
    }
    let mut tables = None;
    for &o in &REGION_OFFSETS {
        if let Some(t) = parse_region_table(&prefix[o as usize..o as usize + REGION_TABLE_LEN], o)? {
            tables = Some(t);
            break;
        }
    }
    let ((bat_off, bat_len), (meta_off, meta_len)) =
        tables.ok_or_else(|| malformed("neither region table (at 0x30000 and 0x40000) has the signature 'regi' and a valid CRC-32C"))?;
    // The structures imgarc interprets: none may overlap another.
    let mut regions: Vec<(u64, u64, &str)> =
        vec![(0, HEADER_SECTION, "header section"), (bat_off, bat_len, "BAT"), (meta_off, meta_len, "metadata")];
    if h.log_len != 0 {
        regions.push((h.log_off, h.log_len as u64, "log"));
    }
    regions.sort_unstable();
    for w in regions.windows(2) {
        if w[0].0.saturating_add(w[0].1) > w[1].0 {
            return Err(malformed(format!("the {} region at {:#x} overlaps the {} region at {:#x}", w[0].2, w[0].0, w[1].2, w[1].0)));
        }
    }
    let regions_end = regions.iter().map(|r| r.0.saturating_add(r.1)).max().unwrap_or(0);
    if let Some(fl) = file_len {
        if regions_end > fl {
            return Err(malformed(format!("a region ends at {regions_end:#x}, beyond the end of the file ({fl} bytes)")));
        }
    }
    let prefix_end = (bat_off + bat_len).max(meta_off + meta_len);
    let mut d = Dec {
        sink,
        policy,
        segs: SegList::default(),
        lit_off: 0,
        virtual_size: 0,
        spans: Vec::new(),
        next: 0,
        opaque: None,
        guest_bytes: 0,
    };
    let cap = (policy.max_pending_ram as u64).max(HEAD_LEN);
    if prefix_end > cap {
        // The tables lie beyond what imgarc holds: store the file opaque (exact, no dedup).
        let reason =
            format!("the BAT and metadata regions end at {prefix_end:#x}, beyond the {cap} bytes held before the block map is known");
        if policy.strict {
            return Err(ImageError::Limit(format!("strict policy refuses opaque storage: {reason}")));
        }
        d.opaque = Some(reason.clone());
        d.emit_literal(0, &prefix)?;
        drop(prefix);
        let end = read_rest(input, file_len, HEAD_LEN, |h, b| d.emit_literal(h, b))?;
        let info = serde_json::json!({ "format": FMT, "creator": creator, "header_sequence": h.seq, "opaque": reason });
        return finish(d, end, 0, info);
    }
    prefix.resize(prefix_end as usize, 0);
    let got = read_full(input, &mut prefix[HEAD_LEN as usize..])?;
    if got < (prefix_end - HEAD_LEN) as usize {
        return Err(ImageError::Truncated { format: FMT, expected: file_len.unwrap_or(prefix_end), got: HEAD_LEN + got as u64 });
    }

    // ---- metadata and BAT ----
    let m = parse_metadata(&prefix[meta_off as usize..(meta_off + meta_len) as usize], meta_off)?;
    if m.virtual_size > policy.max_virtual_size {
        return Err(ImageError::Limit(format!(
            "vhdx virtual size {} exceeds the limit of {} bytes",
            m.virtual_size, policy.max_virtual_size
        )));
    }
    d.virtual_size = m.virtual_size;
    let ratio = chunk_ratio(m.logical_sector_size, m.block_size);
    let data_blocks = m.virtual_size.div_ceil(m.block_size);
    let entries = bat_entries(data_blocks, ratio);
    if entries.checked_mul(8).is_none_or(|b| b > bat_len) {
        return Err(malformed(format!(
            "the BAT region at {bat_off:#x} holds {} entries, {entries} needed for {data_blocks} blocks of {} bytes",
            bat_len / 8,
            m.block_size
        )));
    }
    let bat = &prefix[bat_off as usize..(bat_off + entries * 8) as usize];
    let (mut zero_blocks, mut unallocated) = (0u64, 0u64);
    let mut spans: Vec<Span> = Vec::new();
    for blk in 0..data_blocks {
        let idx = bat_index(blk, ratio);
        let e = le64(bat, idx as usize * 8);
        let guest = blk * m.block_size;
        match e & BAT_STATE_MASK {
            PAYLOAD_BLOCK_FULLY_PRESENT => {
                let off = (e >> 20) << 20;
                let len = m.block_size.min(m.virtual_size - guest);
                let at = bat_off + idx * 8;
                if off < HEADER_SECTION {
                    return Err(malformed(format!(
                        "BAT entry {idx} at {at:#x}: block {blk} at file offset {off:#x} lies in the header section"
                    )));
                }
                // Without a known length the end must still be representable (the stream ends first).
                if off.checked_add(len).is_none_or(|e| e > file_len.unwrap_or(u64::MAX)) {
                    let size = file_len.map(|fl| format!(" ({fl} bytes)")).unwrap_or_default();
                    return Err(malformed(format!(
                        "BAT entry {idx} at {at:#x}: block {blk} at {off:#x} lies beyond the end of the file{size}"
                    )));
                }
                if spans.len() >= policy.max_segments {
                    return Err(ImageError::Limit(format!("vhdx: more than {} allocated blocks", policy.max_segments)));
                }
                spans.push(Span { off, len, guest });
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                return Err(ImageError::refused(
                    FMT,
                    format!("BAT entry {idx}: block {blk} is PARTIALLY_PRESENT, a state only differencing disks use"),
                ));
            }
            // NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED and qemu's UNMAPPED_v095 (5) all read as zeros;
            // a file offset they carry points at bytes that are not guest data.
            PAYLOAD_BLOCK_NOT_PRESENT | 1 | 3 | 5 => unallocated += 1,
            2 => zero_blocks += 1,
            s => return Err(malformed(format!("BAT entry {idx} at {:#x}: unknown block state {s}", bat_off + idx * 8))),
        }
    }
    spans.sort_unstable_by_key(|s| s.off);
    for w in spans.windows(2) {
        if w[0].off + w[0].len > w[1].off {
            return Err(malformed(format!(
                "the blocks at guest offsets {:#x} and {:#x} overlap in the file at {:#x}",
                w[0].guest, w[1].guest, w[1].off
            )));
        }
    }
    for s in &spans {
        if let Some(r) = regions.iter().find(|r| s.off < r.0.saturating_add(r.1) && r.0 < s.off + s.len) {
            return Err(malformed(format!(
                "the block at guest offset {:#x} (file offset {:#x}) overlaps the {} region",
                s.guest, s.off, r.2
            )));
        }
    }
    let allocated = spans.len() as u64;
    let fixed = m.file_flags & LEAVE_BLOCKS_ALLOCATED != 0;
    d.spans = spans;

    // ---- the bytes, in file order ----
    d.feed(0, &prefix)?;
    drop(prefix);
    let end = read_rest(input, file_len, prefix_end, |h, b| d.feed(h, b))?;
    if let Some(s) = d.spans.get(d.next) {
        return Err(ImageError::Truncated { format: FMT, expected: s.off + s.len, got: end });
    }
    let info = serde_json::json!({
        "format": FMT,
        "virtual_size": m.virtual_size,
        "subformat": if fixed { "fixed" } else { "dynamic" },
        "block_size": m.block_size,
        "logical_sector_size": m.logical_sector_size,
        "physical_sector_size": m.physical_sector_size,
        "blocks": data_blocks,
        "allocated_blocks": allocated,
        "zero_blocks": zero_blocks,
        "unallocated_blocks": unallocated,
        "leave_blocks_allocated": fixed,
        "creator": creator,
        "log": if h.log_len == 0 { "none" } else { "empty" },
        "log_offset": h.log_off,
        "log_length": h.log_len,
        "log_version": h.log_version,
        "header_sequence": h.seq,
        "current_header_offset": h.offset,
        "bat_offset": bat_off,
        "bat_entries": entries,
        "metadata_offset": meta_off,
        "page83": hex::encode(m.page83),
        "guest_bytes": d.guest_bytes,
    });
    let vs = m.virtual_size;
    finish(d, end, vs, info)
}

fn finish(d: Dec<'_>, file_len: u64, virtual_size: u64, mut info: serde_json::Value) -> Result<Decomposition, ImageError> {
    if let Some(r) = &d.opaque {
        if d.policy.strict {
            return Err(ImageError::Limit(format!("strict policy refuses opaque storage: {r}")));
        }
        info["opaque"] = serde_json::Value::String(r.clone());
    }
    info["file_len"] = file_len.into();
    info["literal_bytes"] = d.lit_off.into();
    let segments = d.segs.finish(file_len)?;
    info["segments"] = (segments.len() as u64).into();
    let recipe = Recipe {
        file_len,
        cluster_bits: RECIPE_CLUSTER_BITS,
        virtual_size,
        flags: if d.opaque.is_some() { FLAG_OPAQUE } else { 0 },
        segments,
    };
    let enc = recipe.encode();
    if let Err(e) = Recipe::decode(&enc) {
        return Err(ImageError::Limit(format!("the layout recipe ({} bytes) would not be readable at restore: {e}", enc.len())));
    }
    Ok(Decomposition { recipe: enc, virtual_size, literal_stream_bytes: d.lit_off, info, opaque: d.opaque })
}

#[cfg(test)]
mod tests;
