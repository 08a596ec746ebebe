//! The VDI 1.1 header (VirtualBox `VDIHEADER1`/`VDIHEADER1PLUS` after the 0x40-byte pre-header text): parsing of
//! untrusted bytes with every field checked, and the encoding the writer uses. Offsets are file offsets
//! (format-spec/formats/vdi.md, "Header").
use crate::format::ImageError;

pub const FORMAT: &str = "vdi";
/// `u32Signature` at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1 (`u32Version` at 0x44: major in the high half).
pub const VERSION_1_1: u32 = 0x0001_0001;
/// `cbHeader` of `VDIHEADER1` (what qemu writes) and of `VDIHEADER1PLUS` (VirtualBox, with the LCHS geometry).
pub const HEADER_SIZE_V1: u32 = 0x180;
pub const HEADER_SIZE_V1_PLUS: u32 = 0x190;
/// `cbHeader` is counted from its own field at 0x48.
pub const HEADER_SIZE_BASE: u64 = 0x48;
/// Bytes read before `cbHeader` is known: the pre-header and a `VDIHEADER1`.
pub const MIN_HEADER_END: u64 = HEADER_SIZE_BASE + HEADER_SIZE_V1 as u64;

pub const TYPE_NORMAL: u32 = 1;
pub const TYPE_FIXED: u32 = 2;
pub const TYPE_UNDO: u32 = 3;
pub const TYPE_DIFF: u32 = 4;

/// Block map entry of a block never written (reads zero).
pub const BLOCK_FREE: u32 = 0xffff_ffff;
/// Block map entry of a block discarded to zeros (reads zero; no data block).
pub const BLOCK_ZERO: u32 = 0xffff_fffe;

pub const SECTOR_SIZE: u32 = 512;
/// Block sizes accepted: qemu writes and reads 1 MiB only; VirtualBox allows other powers of two. The upper bound
/// keeps one block's worth of reading within a sane buffer and the lower bound is one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;

/// Field offsets (file offsets) the parser and the writer share.
pub mod off {
    pub const SIGNATURE: usize = 0x40;
    pub const VERSION: usize = 0x44;
    pub const HEADER_SIZE: usize = 0x48;
    pub const IMAGE_TYPE: usize = 0x4c;
    pub const FLAGS: usize = 0x50;
    pub const COMMENT: usize = 0x54;
    pub const OFFSET_BMAP: usize = 0x154;
    pub const OFFSET_DATA: usize = 0x158;
    pub const CYLINDERS: usize = 0x15c;
    pub const HEADS: usize = 0x160;
    pub const SECTORS: usize = 0x164;
    pub const SECTOR_SIZE: usize = 0x168;
    pub const DISK_SIZE: usize = 0x170;
    pub const BLOCK_SIZE: usize = 0x178;
    pub const BLOCK_EXTRA: usize = 0x17c;
    pub const BLOCKS: usize = 0x180;
    pub const BLOCKS_ALLOCATED: usize = 0x184;
    pub const UUID_CREATE: usize = 0x188;
    pub const UUID_MODIFY: usize = 0x198;
    pub const UUID_LINKAGE: usize = 0x1a8;
    pub const UUID_PARENT_MODIFY: usize = 0x1b8;
    pub const LCHS: usize = 0x1c8;
}
pub const COMMENT_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub pre_header: String,
    pub header_size: u32,
    pub image_type: u32,
    pub flags: u32,
    pub comment: String,
    pub offset_bmap: u64,
    pub offset_data: u64,
    /// Legacy geometry: cylinders, heads, sectors (the sector size is checked to be 512).
    pub legacy_chs: [u32; 3],
    pub disk_size: u64,
    pub block_size: u32,
    pub blocks: u32,
    pub blocks_allocated: u32,
    pub uuid_create: [u8; 16],
    pub uuid_modify: [u8; 16],
    /// LCHS geometry (cylinders, heads, sectors, sector size) of a `VDIHEADER1PLUS`.
    pub lchs: Option<[u32; 4]>,
}

impl Header {
    pub fn fixed(&self) -> bool {
        self.image_type == TYPE_FIXED
    }
    pub fn subformat(&self) -> &'static str {
        if self.fixed() {
            "fixed"
        } else {
            "dynamic"
        }
    }
    /// Bytes of the block map.
    pub fn bmap_len(&self) -> u64 {
        self.blocks as u64 * 4
    }
    /// End of the data area: the last allocated block's end.
    pub fn data_end(&self) -> u64 {
        self.offset_data + self.blocks_allocated as u64 * self.block_size as u64
    }
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

/// A text field up to its first NUL, lossily decoded, control characters other than newline dropped.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).chars().filter(|c| !c.is_control() || *c == '\n').collect()
}

/// The header's size from the first [`MIN_HEADER_END`] bytes, after checking the signature and version (so the
/// caller knows how many more bytes to read before [`parse`]).
pub fn header_end(b: &[u8]) -> Result<u64, ImageError> {
    let sig = u32_at(b, off::SIGNATURE);
    if sig != SIGNATURE {
        return Err(ImageError::malformed(FORMAT, format!("signature at 0x40 is {sig:#010x}, not {SIGNATURE:#010x}")));
    }
    let version = u32_at(b, off::VERSION);
    if version != VERSION_1_1 {
        return Err(ImageError::refused(
            FORMAT,
            format!("header version {}.{} (field at 0x44) is not supported: only 1.1 is", version >> 16, version & 0xffff),
        ));
    }
    let hs = u32_at(b, off::HEADER_SIZE);
    if hs != HEADER_SIZE_V1 && hs != HEADER_SIZE_V1_PLUS {
        return Err(ImageError::malformed(
            FORMAT,
            format!("header size {hs:#x} at 0x48 is neither {HEADER_SIZE_V1:#x} nor {HEADER_SIZE_V1_PLUS:#x}"),
        ));
    }
    Ok(HEADER_SIZE_BASE + hs as u64)
}

/// Parses and checks the header (`b` holds at least [`header_end`] bytes). `max_virtual_size` bounds the disk size;
/// `file_len`, when known, bounds the block map and the data area.
pub fn parse(b: &[u8], max_virtual_size: u64, file_len: Option<u64>) -> Result<Header, ImageError> {
    let end = header_end(b)?;
    let bad = |m: String| Err(ImageError::malformed(FORMAT, m));
    let image_type = u32_at(b, off::IMAGE_TYPE);
    match image_type {
        TYPE_NORMAL | TYPE_FIXED => {}
        TYPE_UNDO => return Err(ImageError::refused(FORMAT, "image type 3 (undo, field at 0x4c) names a parent image")),
        TYPE_DIFF => return Err(ImageError::refused(FORMAT, "image type 4 (differencing, field at 0x4c) names a parent image")),
        t => return bad(format!("unknown image type {t} at 0x4c")),
    }
    for (name, at) in [("linkage", off::UUID_LINKAGE), ("parent modification", off::UUID_PARENT_MODIFY)] {
        let u = uuid_at(b, at);
        if u != [0; 16] {
            return Err(ImageError::refused(
                FORMAT,
                format!("the {name} uuid at {at:#x} is {} : the image names a parent", uuid_string(&u)),
            ));
        }
    }
    let sector_size = u32_at(b, off::SECTOR_SIZE);
    if sector_size != SECTOR_SIZE {
        return bad(format!("sector size {sector_size} at 0x168 is not 512"));
    }
    let block_size = u32_at(b, off::BLOCK_SIZE);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return bad(format!("block size {block_size} at 0x178 is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"));
    }
    let extra = u32_at(b, off::BLOCK_EXTRA);
    if extra != 0 {
        return Err(ImageError::refused(
            FORMAT,
            format!("block extra data of {extra} bytes (field at 0x17c) is not supported (qemu refuses it too)"),
        ));
    }
    let disk_size = u64_at(b, off::DISK_SIZE);
    if disk_size == 0 {
        return bad("disk size at 0x170 is 0".into());
    }
    if disk_size > max_virtual_size {
        return Err(ImageError::Limit(format!("vdi disk size {disk_size} (field at 0x170) exceeds the limit of {max_virtual_size} bytes")));
    }
    let blocks = u32_at(b, off::BLOCKS);
    let want_blocks = disk_size.div_ceil(block_size as u64);
    if blocks as u64 != want_blocks {
        return bad(format!(
            "blocks in disk {blocks} at 0x180 does not match disk size {disk_size} / block size {block_size} = {want_blocks}"
        ));
    }
    if blocks >= BLOCK_ZERO {
        return bad(format!("blocks in disk {blocks} at 0x180 leaves no room for the free/zero block markers"));
    }
    let blocks_allocated = u32_at(b, off::BLOCKS_ALLOCATED);
    if blocks_allocated > blocks {
        return bad(format!("blocks allocated {blocks_allocated} at 0x184 exceeds blocks in disk {blocks}"));
    }
    let offset_bmap = u32_at(b, off::OFFSET_BMAP) as u64;
    let offset_data = u32_at(b, off::OFFSET_DATA) as u64;
    for (name, at, v) in [("block map", 0x154, offset_bmap), ("data", 0x158, offset_data)] {
        if v % SECTOR_SIZE as u64 != 0 {
            return bad(format!("{name} offset {v:#x} at {at:#x} is not sector aligned"));
        }
        if v < end {
            return bad(format!("{name} offset {v:#x} at {at:#x} lies inside the header (which ends at {end:#x})"));
        }
    }
    let h = Header {
        pre_header: text(&b[..0x40]),
        header_size: u32_at(b, off::HEADER_SIZE),
        image_type,
        flags: u32_at(b, off::FLAGS),
        comment: text(&b[off::COMMENT..off::COMMENT + COMMENT_LEN]),
        offset_bmap,
        offset_data,
        legacy_chs: [u32_at(b, off::CYLINDERS), u32_at(b, off::HEADS), u32_at(b, off::SECTORS)],
        disk_size,
        block_size,
        blocks,
        blocks_allocated,
        uuid_create: uuid_at(b, off::UUID_CREATE),
        uuid_modify: uuid_at(b, off::UUID_MODIFY),
        lchs: (end >= (off::LCHS + 16) as u64)
            .then(|| [u32_at(b, off::LCHS), u32_at(b, off::LCHS + 4), u32_at(b, off::LCHS + 8), u32_at(b, off::LCHS + 12)]),
    };
    let bmap_end = h.offset_bmap + h.bmap_len();
    // The data area may not overlap the map (both are u32-based, so these sums cannot overflow a u64).
    let map_before_data = bmap_end <= h.offset_data;
    let map_after_data = h.offset_bmap >= h.data_end();
    if !map_before_data && !map_after_data {
        return bad(format!(
            "block map [{:#x}, {bmap_end:#x}) overlaps the data area [{:#x}, {:#x})",
            h.offset_bmap,
            h.offset_data,
            h.data_end()
        ));
    }
    if h.fixed() && h.blocks_allocated != h.blocks {
        return bad(format!("fixed image with {} of {} blocks allocated (field at 0x184)", h.blocks_allocated, h.blocks));
    }
    if let Some(fl) = file_len {
        if bmap_end > fl {
            return bad(format!("block map ends at {bmap_end:#x}, past the file end {fl:#x}"));
        }
        if h.data_end() > fl {
            return bad(format!("data area of {} blocks ends at {:#x}, past the file end {fl:#x}", h.blocks_allocated, h.data_end()));
        }
    }
    Ok(h)
}

/// A uuid as VirtualBox prints it: the on-disk `RTUUID` has its first three fields little-endian.
pub fn uuid_string(u: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([u[0], u[1], u[2], u[3]]),
        u16::from_le_bytes([u[4], u[5]]),
        u16::from_le_bytes([u[6], u[7]]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..16])
    )
}

/// The 0x200 bytes of a header the writer produces (VDIHEADER1, the layout qemu-img writes; texts cut to leave a NUL).
pub fn encode(h: &Header) -> Vec<u8> {
    let mut b = vec![0u8; 0x200];
    let t = h.pre_header.as_bytes();
    b[..t.len().min(0x3f)].copy_from_slice(&t[..t.len().min(0x3f)]);
    let c = h.comment.as_bytes();
    let n = c.len().min(COMMENT_LEN - 1);
    b[off::COMMENT..off::COMMENT + n].copy_from_slice(&c[..n]);
    let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, off::SIGNATURE, SIGNATURE);
    put32(&mut b, off::VERSION, VERSION_1_1);
    put32(&mut b, off::HEADER_SIZE, h.header_size);
    put32(&mut b, off::IMAGE_TYPE, h.image_type);
    put32(&mut b, off::FLAGS, h.flags);
    put32(&mut b, off::OFFSET_BMAP, h.offset_bmap as u32);
    put32(&mut b, off::OFFSET_DATA, h.offset_data as u32);
    put32(&mut b, off::CYLINDERS, h.legacy_chs[0]);
    put32(&mut b, off::HEADS, h.legacy_chs[1]);
    put32(&mut b, off::SECTORS, h.legacy_chs[2]);
    put32(&mut b, off::SECTOR_SIZE, SECTOR_SIZE);
    b[off::DISK_SIZE..off::DISK_SIZE + 8].copy_from_slice(&h.disk_size.to_le_bytes());
    put32(&mut b, off::BLOCK_SIZE, h.block_size);
    put32(&mut b, off::BLOCKS, h.blocks);
    put32(&mut b, off::BLOCKS_ALLOCATED, h.blocks_allocated);
    b[off::UUID_CREATE..off::UUID_CREATE + 16].copy_from_slice(&h.uuid_create);
    b[off::UUID_MODIFY..off::UUID_MODIFY + 16].copy_from_slice(&h.uuid_modify);
    b
}
