//! Is the XFS log clean? Finds the log head the way the kernel's
//! `xlog_find_head` does (the cycle number that starts every 512-byte log
//! block changes at the head), then looks at the last record header before
//! it: a clean log ends in an unmount record (one op, `XLOG_UNMOUNT_TRANS`).
//! The log is never replayed; a dirty one is reported in `notes()`.

use super::{be32, Xfs};
use crate::guest::FsError;

const RECORD_MAGIC: u32 = 0xFEED_BABE;
const BB: u64 = 512;
/// Most log blocks searched backwards from the head for the last record
/// header: a record is at most 256 KiB of data plus its headers.
const MAX_BACK_SCAN: u64 = 2 * 256 * 1024 / BB;
const UNMOUNT_TRANS: u8 = 0x20;
/// A v2 record header names its size; above 32 KiB extra header blocks follow.
const HEADER_CYCLE_SIZE: u64 = 32 * 1024;

/// What the log says about the filesystem's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    Clean,
    Dirty(String),
    /// The log is on another device (not part of this volume).
    External,
}

pub fn state(fs: &Xfs) -> Result<LogState, FsError> {
    let sb = &fs.sb;
    if sb.logstart == 0 {
        return Ok(LogState::External);
    }
    let bad = |what: String| FsError::Malformed(format!("XFS log: {what}"));
    let (start, left) =
        sb.fsblock_offset(sb.logstart).ok_or_else(|| bad(format!("starts at block {} outside the filesystem", sb.logstart)))?;
    if sb.logblocks == 0 || sb.logblocks as u64 > left {
        return Err(bad(format!("{} blocks at block {} run past its allocation group", sb.logblocks, sb.logstart)));
    }
    let bbs = (sb.logblocks as u64) << (sb.block_log - 9);
    let log = Log { fs, start };

    let first = log.cycle(0)?;
    if first == 0 {
        // Never written: a zeroed log has nothing to replay.
        return Ok(LogState::Clean);
    }
    let last = log.cycle(bbs - 1)?;
    // The head is the first block whose cycle differs from block 0's
    // (blocks before it were written in the current pass, after it in the
    // previous one, or never: cycle 0). Equal cycles: the head is at the end.
    let head = if last == first {
        bbs
    } else {
        let (mut lo, mut hi) = (0u64, bbs - 1); // cycle(lo) == first, cycle(hi) != first
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.cycle(mid)? == first {
                lo = mid
            } else {
                hi = mid
            }
        }
        hi
    };
    // The last record header before the head (wrapping to the log's end).
    let mut found = None;
    for back in 1..=MAX_BACK_SCAN.min(bbs) {
        let bb = (head + bbs - back) % bbs;
        let mut word = [0u8; 4];
        log.read(bb, &mut word)?;
        if be32(&word, 0) == RECORD_MAGIC {
            found = Some(bb);
            break;
        }
    }
    let Some(rec) = found else {
        return Ok(LogState::Dirty(format!("no log record header found before the head at log block {head}")));
    };
    let mut header = [0u8; 512];
    log.read(rec, &mut header)?;
    let version = be32(&header, 8);
    let num_ops = be32(&header, 40);
    let size = be32(&header, 320) as u64;
    let ext_headers = if version == 2 && size > HEADER_CYCLE_SIZE { size.div_ceil(HEADER_CYCLE_SIZE) } else { 1 };
    if num_ops == 1 {
        // The first op header of the record's data: tid, len, clientid, flags.
        let mut op = [0u8; 12];
        log.read((rec + ext_headers) % bbs, &mut op)?;
        if op[9] & UNMOUNT_TRANS != 0 {
            return Ok(LogState::Clean);
        }
    }
    Ok(LogState::Dirty(format!("the last log record (log block {rec}, {num_ops} ops) is not an unmount record")))
}

struct Log<'f, 'a> {
    fs: &'f Xfs<'a>,
    start: u64,
}

impl Log<'_, '_> {
    fn read(&self, bb: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.fs.read_exact(self.start + bb * BB, buf)
    }

    /// The cycle number of log block `bb`: its first word, or the record
    /// header's `h_cycle` when a header starts there.
    fn cycle(&self, bb: u64) -> Result<u32, FsError> {
        let mut word = [0u8; 8];
        self.read(bb, &mut word)?;
        Ok(if be32(&word, 0) == RECORD_MAGIC { be32(&word, 4) } else { be32(&word, 0) })
    }
}
