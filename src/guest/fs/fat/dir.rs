//! FAT directory entries: the 32-byte slots of a directory (end, deleted,
//! long-name part, volume label, `.`/`..`, short entry), 8.3 names with the
//! NT lower-case bits and code page 437, long file names (UTF-16 parts in
//! reverse order, each carrying the short name's checksum; a sequence that
//! does not check out falls back to the short name), and FAT's local
//! date/time fields (read as UTC).

use crate::guest::{FsError, Timestamp};

/// Bytes per directory slot.
pub const SLOT: usize = 32;

pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Read-only + hidden + system + volume id: the attribute byte of a long-name part.
const ATTR_LONG_NAME: u8 = 0x0F;
/// Long names are at most 255 UTF-16 units: 20 parts of 13.
const MAX_LFN_PARTS: u8 = 20;

/// A short (8.3) directory entry: a file or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortEntry {
    pub name: [u8; 11],
    pub attr: u8,
    /// Windows NT's case bits: 0x08 lower-case base name, 0x10 lower-case extension.
    pub nt_case: u8,
    /// Creation time's 10 ms units (0–199).
    pub ctime_cs: u8,
    pub ctime: u16,
    pub cdate: u16,
    pub adate: u16,
    pub first_cluster: u32,
    pub mtime: u16,
    pub mdate: u16,
    pub size: u32,
}

impl ShortEntry {
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// One long-name part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfnPart {
    /// 1-based position in the name (parts are stored last first).
    pub ordinal: u8,
    /// Set on the first stored part, which holds the end of the name.
    pub is_last: bool,
    pub checksum: u8,
    pub units: [u16; 13],
}

/// What a 32-byte slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// 0x00: this slot and every later one are unused.
    End,
    /// 0xE5: a deleted entry.
    Deleted,
    LongName(LfnPart),
    VolumeLabel([u8; 11]),
    /// `.` or `..` of a subdirectory.
    Dot,
    Short(ShortEntry),
}

fn u16_at(b: &[u8; SLOT], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Decodes one slot. `fat32`: the high 16 bits of the first cluster are
/// meaningful (FAT12/16 keep OS/2 extended attributes there).
pub fn parse_slot(b: &[u8; SLOT], fat32: bool) -> Slot {
    let attr = b[11];
    if b[0] == 0x00 {
        return Slot::End;
    }
    if b[0] == 0xE5 {
        return Slot::Deleted;
    }
    if attr & 0x3F == ATTR_LONG_NAME {
        let mut units = [0u16; 13];
        for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].into_iter().enumerate() {
            units[i] = u16_at(b, at);
        }
        return Slot::LongName(LfnPart { ordinal: b[0] & 0x1F, is_last: b[0] & 0x40 != 0, checksum: b[13], units });
    }
    let mut name = [0u8; 11];
    name.copy_from_slice(&b[..11]);
    if attr & ATTR_VOLUME_ID != 0 {
        return Slot::VolumeLabel(name);
    }
    if &name == b".          " || &name == b"..         " {
        return Slot::Dot;
    }
    let hi = if fat32 { u32::from(u16_at(b, 20)) } else { 0 };
    Slot::Short(ShortEntry {
        name,
        attr,
        nt_case: b[12],
        ctime_cs: b[13],
        ctime: u16_at(b, 14),
        cdate: u16_at(b, 16),
        adate: u16_at(b, 18),
        first_cluster: hi << 16 | u32::from(u16_at(b, 26)),
        mtime: u16_at(b, 22),
        mdate: u16_at(b, 24),
        size: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
    })
}

/// The checksum of an 8.3 name that every long-name part of it carries.
pub fn short_name_checksum(name: &[u8; 11]) -> u8 {
    name.iter().fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// Code page 437's upper half (Linux's default `codepage=437`), for short names.
const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{a0}',
];

fn cp437(b: u8) -> char {
    match b.checked_sub(0x80) {
        Some(i) => CP437_HIGH[usize::from(i)],
        None => char::from(b),
    }
}

/// A label (the root directory's volume-label entry or the boot sector's) as text, or `None` when blank.
pub fn label_text(raw: &[u8; 11]) -> Option<String> {
    let s: String = raw.iter().map(|&b| cp437(b)).collect();
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

/// The 8.3 name as UTF-8: base, and `.ext` when there is one, lower-cased
/// where the NT case bits say so. `where_` names the entry in errors: a
/// control byte or a slash is not a name, and would be a path outside it.
pub fn short_name(e: &ShortEntry, where_: &str) -> Result<Vec<u8>, FsError> {
    let mut raw = e.name;
    // 0x05 in the first byte stands for 0xE5 (which marks a deleted entry).
    if raw[0] == 0x05 {
        raw[0] = 0xE5;
    }
    let part = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        // Lower-casing is the code page's (Linux's nls tolower): "GR\x9a\xe1E" is "grüße".
        let mut s = String::new();
        for c in bytes[..end].iter().map(|&b| cp437(b)) {
            if lower {
                s.extend(c.to_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    };
    let base = part(&raw[..8], e.nt_case & 0x08 != 0);
    let ext = part(&raw[8..], e.nt_case & 0x10 != 0);
    if base.is_empty() || raw.iter().any(|&b| b < 0x20 || b == b'/' || b == b'\\') {
        return Err(FsError::Malformed(format!("{where_}: short name {:?} is not a file name", e.name.escape_ascii().to_string())));
    }
    let mut name = base;
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    Ok(name.into_bytes())
}

/// Collects long-name parts as they come and hands the name to the short
/// entry that follows them, when the sequence is whole and its checksum is the entry's.
#[derive(Default)]
pub struct LongName {
    /// Parts in stored order (the end of the name first).
    parts: Vec<[u16; 13]>,
    /// The ordinal the next part must have; 0 once part 1 has been seen.
    expect: u8,
    checksum: u8,
    active: bool,
}

impl LongName {
    /// Takes the next long-name part; one out of sequence drops what was collected.
    pub fn push(&mut self, p: &LfnPart) {
        if p.is_last {
            self.parts.clear();
            self.active = (1..=MAX_LFN_PARTS).contains(&p.ordinal);
            self.expect = p.ordinal.saturating_sub(1);
            self.checksum = p.checksum;
            self.parts.push(p.units);
        } else if self.active && self.expect != 0 && p.ordinal == self.expect && p.checksum == self.checksum {
            self.expect -= 1;
            self.parts.push(p.units);
        } else {
            self.reset();
        }
    }

    /// Something other than a long-name part or its short entry came: drop what was collected.
    pub fn reset(&mut self) {
        self.parts.clear();
        self.active = false;
    }

    /// The long name for the short entry `short`, if the collected parts are its
    /// whole, valid name; `None` (use the short name) otherwise. Resets.
    pub fn take(&mut self, short: &[u8; 11]) -> Option<Vec<u8>> {
        let complete = self.active && self.expect == 0 && self.checksum == short_name_checksum(short);
        let parts = std::mem::take(&mut self.parts);
        self.active = false;
        if !complete {
            return None;
        }
        let units: Vec<u16> = parts.iter().rev().flatten().copied().take_while(|&u| u != 0).collect();
        let name: String = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        // A long name that is no name, or one that would leave its directory, is not used.
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return None;
        }
        Some(name.into_bytes())
    }
}

/// A FAT date and time (local time of whoever wrote it; FAT has no zone) read
/// as UTC, as Linux does with `tz=UTC`. Out-of-range fields are taken as
/// Linux takes them: month and day 0 as 1, a day past the month's end runs into the next.
pub fn fat_time(date: u16, time: u16, centis: u8) -> Timestamp {
    let year = 1980 + i32::from(date >> 9);
    let month = u32::from((date >> 5) & 0x0F).clamp(1, 12);
    let day = i64::from((date & 0x1F).max(1));
    let month_start =
        chrono::NaiveDate::from_ymd_opt(year, month, 1).map_or(0, |d| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    let secs = month_start
        + (day - 1) * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2
        + i64::from(centis / 100);
    Timestamp { secs, nanos: u32::from(centis % 100) * 10_000_000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_the_specification() {
        // fatgen103's algorithm, computed by hand for "README  TXT".
        let mut sum = 0u8;
        for &c in b"README  TXT" {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(c);
        }
        assert_eq!(short_name_checksum(b"README  TXT"), sum);
    }

    #[test]
    fn times_read_as_utc() {
        // 2024-02-29 13:45:58, created with 1.23 s extra.
        let date = (44 << 9) | (2 << 5) | 29;
        let time = (13 << 11) | (45 << 5) | 29;
        assert_eq!(fat_time(date, time, 0), Timestamp { secs: 1_709_214_358, nanos: 0 });
        assert_eq!(fat_time(date, time, 123), Timestamp { secs: 1_709_214_359, nanos: 230_000_000 });
        // Date 0 is 1980-01-01.
        assert_eq!(fat_time(0, 0, 0).secs, 315_532_800);
    }

    #[test]
    fn short_names_take_the_case_bits() {
        let mut e = match parse_slot(
            &[
                b'R', b'E', b'A', b'D', b'M', b'E', b' ', b' ', b'T', b'X', b'T', 0x20, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0,
            ],
            false,
        ) {
            Slot::Short(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(short_name(&e, "t").unwrap(), b"readme.txt");
        e.nt_case = 0x10;
        assert_eq!(short_name(&e, "t").unwrap(), b"README.txt");
        e.name = *b"\x05BC     \x80  ";
        assert_eq!(short_name(&e, "t").unwrap(), "σBC.ç".as_bytes());
        e.name = *b"GR\x9a\xe1E   TXT";
        e.nt_case = 0x18;
        assert_eq!(short_name(&e, "t").unwrap(), "grüße.txt".as_bytes());
        e.name = *b"A/B        ";
        assert!(short_name(&e, "t").is_err());
    }

    #[test]
    fn long_names_need_the_whole_sequence_and_the_checksum() {
        let short = *b"LONGNA~1TXT";
        let sum = short_name_checksum(&short);
        let part = |ordinal: u8, is_last: bool, text: &str, checksum: u8| {
            let mut units = [0xFFFFu16; 13];
            let t: Vec<u16> = text.encode_utf16().collect();
            units[..t.len()].copy_from_slice(&t);
            if t.len() < 13 {
                units[t.len()] = 0;
            }
            LfnPart { ordinal, is_last, checksum, units }
        };
        let mut ln = LongName::default();
        ln.push(&part(2, true, "ame.txt", sum));
        ln.push(&part(1, false, "a long file n", sum));
        assert_eq!(ln.take(&short).unwrap(), b"a long file name.txt");
        // Wrong checksum: the short name is used.
        ln.push(&part(1, true, "other", sum ^ 1));
        assert_eq!(ln.take(&short), None);
        // A missing part: the short name is used.
        ln.push(&part(3, true, "x", sum));
        ln.push(&part(1, false, "y", sum));
        assert_eq!(ln.take(&short), None);
        // A long name with a slash is not used.
        ln.push(&part(1, true, "../etc", sum));
        assert_eq!(ln.take(&short), None);
    }
}
