//! The NBD wire protocol, server side (doc/proto.md of NetworkBlockDevice/nbd): the fixed
//! newstyle handshake, option haggling ([`handshake`]) and the transmission phase
//! ([`transmission`]) of one read-only export. Every byte here comes from a client that may be
//! hostile: each length is checked against a cap before anything is allocated for it
//! ([`MAX_OPTION_LEN`], [`MAX_REQUEST_LEN`]), each offset with checked arithmetic, and a
//! structure that cannot be followed (bad magic, unknown client flags, a truncated message)
//! ends the connection with [`NbdError::Protocol`]; a request that is merely wrong (past the
//! end, too long, a write) gets an error reply and the connection goes on.
//!
//! The functions are generic over the stream (`Read + Write`) and the disk ([`ReadAt`]), so
//! the fuzz target drives them over bytes in memory exactly as the server does over sockets.

use crate::guest::ReadAt;
use std::io::{self, Read, Write};

/// `NBDMAGIC`: the first 8 bytes a newstyle server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the server's second 8 bytes, and the magic before every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic before every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// Info types of NBD_OPT_INFO / NBD_OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands and command flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

// Errors (errno values the protocol fixes).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

// Block status flags of base:allocation.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one meta context this server offers, and the id it is known by.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The longest option a client may send. Names are at most 4096 bytes (the spec's string
/// limit); a meta context query adds a few of those. Longer options are read and dropped
/// in fixed-size pieces, answered `NBD_REP_ERR_TOO_BIG`, never held in memory.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// The longest read (and the block-size maximum advertised): 32 MiB.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Advertised block sizes: any byte offset works (minimum 1); 4 KiB is what guests use.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
/// Bytes read from the disk per step of one read: bounds a connection's memory whatever the
/// request length, and is the largest data chunk of a structured reply.
pub const PIECE: usize = 1 << 20;
/// Descriptors in one block status reply at most (a client asks again from where it stops).
pub const MAX_DESCRIPTORS: usize = 8192;
/// Options one connection may send before it must choose an export: a client cycling
/// through `NBD_OPT_LIST` forever holds a connection slot for nothing.
pub const MAX_OPTIONS: u32 = 4096;

/// Why a connection ended abnormally. `Protocol` is a client that broke the protocol; the
/// connection is closed without a reply, as the spec requires where none can be given.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> NbdError {
    NbdError::Protocol(msg.into())
}

/// The allocated ranges of an export: sorted, merged, disjoint `[start, end)` inside its size.
/// Everything between them reads as zeros (a hole).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    ranges: Vec<(u64, u64)>,
}

impl Allocation {
    /// From `(offset, len)` pieces in any order (extents), clipped to `size`; adjacent and
    /// overlapping pieces merge.
    pub fn from_pieces(pieces: impl IntoIterator<Item = (u64, u64)>, size: u64) -> Self {
        let mut v: Vec<(u64, u64)> = pieces
            .into_iter()
            .filter_map(|(o, l)| {
                let end = o.saturating_add(l).min(size);
                (o < end).then_some((o, end))
            })
            .collect();
        v.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match ranges.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => ranges.push((s, e)),
            }
        }
        Allocation { ranges }
    }

    /// Everything allocated (a disk without hole information).
    pub fn all(size: u64) -> Self {
        Self::from_pieces([(0, size)], size)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The runs of `[offset, offset + len)` in order: `(start, len, is_data)`, alternating
    /// between data and holes, covering the range exactly.
    pub fn runs(&self, offset: u64, len: u64) -> Runs<'_> {
        let first = self.ranges.partition_point(|r| r.1 <= offset);
        Runs { ranges: &self.ranges[first..], pos: offset, end: offset.saturating_add(len) }
    }
}

/// Iterator of [`Allocation::runs`].
pub struct Runs<'a> {
    ranges: &'a [(u64, u64)],
    pos: u64,
    end: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64, bool);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let start = self.pos;
        let (stop, data) = match self.ranges.first() {
            Some(&(s, e)) if s <= start => {
                self.ranges = &self.ranges[1..];
                (e.min(self.end), true)
            }
            Some(&(s, _)) => (s.min(self.end), false),
            None => (self.end, false),
        };
        self.pos = stop;
        Some((start, stop - start, data))
    }
}

/// The one export a server offers: the names it answers to and what it serves.
#[derive(Debug, Clone)]
pub struct Export {
    /// Every name the export answers to, in the order `NBD_OPT_LIST` gives them
    /// (the empty name is the default export).
    pub names: Vec<String>,
    pub description: String,
    pub size: u64,
    pub allocation: Allocation,
}

impl Export {
    fn answers_to(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| n.as_bytes() == name)
    }
}

/// What the handshake settled, for the transmission phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub structured: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT`: block status works.
    pub base_allocation: bool,
}

impl Negotiated {
    /// The transmission flags: read-only, safe for many connections (nothing changes), and
    /// `SEND_DF` only where structured replies make it mean something.
    pub fn transmission_flags(&self) -> u16 {
        let df = if self.structured { TFLAG_SEND_DF } else { 0 };
        TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN | df
    }
}

/// Reads exactly `buf.len()` bytes.
fn read_exact<S: Read>(s: &mut S, buf: &mut [u8]) -> Result<(), NbdError> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => protocol("the client closed the connection in the middle of a message"),
        _ => NbdError::Io(e),
    })
}

fn read_u32<S: Read>(s: &mut S) -> Result<u32, NbdError> {
    let mut b = [0u8; 4];
    read_exact(s, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64<S: Read>(s: &mut S) -> Result<u64, NbdError> {
    let mut b = [0u8; 8];
    read_exact(s, &mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads and drops `n` bytes in fixed pieces (a payload the server will not keep).
fn discard<S: Read>(s: &mut S, mut n: u64) -> Result<(), NbdError> {
    let mut buf = [0u8; 16 << 10];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        read_exact(s, &mut buf[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// A cursor over one option's data: every read is checked against what is left.
struct OptionData<'a> {
    data: &'a [u8],
}

impl<'a> OptionData<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A `u32` length then that many bytes (a name, a query).
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(usize::try_from(n).ok()?)
    }
}

fn option_reply<S: Write>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> Result<(), NbdError> {
    let len = u32::try_from(data.len()).map_err(|_| protocol("option reply too long"))?;
    let mut head = [0u8; 20];
    head[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    head[8..12].copy_from_slice(&option.to_be_bytes());
    head[12..16].copy_from_slice(&kind.to_be_bytes());
    head[16..20].copy_from_slice(&len.to_be_bytes());
    s.write_all(&head)?;
    s.write_all(data)?;
    Ok(())
}

/// The `NBD_INFO_EXPORT` payload (also the body of the old-style `NBD_OPT_EXPORT_NAME` reply).
fn export_info(export: &Export, n: &Negotiated) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&export.size.to_be_bytes());
    b[8..].copy_from_slice(&n.transmission_flags().to_be_bytes());
    b
}

fn info_reply<S: Write>(s: &mut S, option: u32, kind: u16, body: &[u8]) -> Result<(), NbdError> {
    let mut data = Vec::with_capacity(2 + body.len());
    data.extend_from_slice(&kind.to_be_bytes());
    data.extend_from_slice(body);
    option_reply(s, option, REP_INFO, &data)
}

/// The handshake and option haggling. `Ok(Some(..))`: the client chose the export (by
/// `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) and transmission follows; `Ok(None)`: it aborted.
/// A client that breaks the protocol, or names an unknown export with `NBD_OPT_EXPORT_NAME`
/// (which has no error reply), ends with an error and the caller closes the connection.
pub fn handshake<S: Read + Write>(s: &mut S, export: &Export) -> Result<Option<Negotiated>, NbdError> {
    let mut hello = [0u8; 18];
    hello[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    s.flush()?;
    let client_flags = read_u32(s)?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol(format!("unknown client flags {client_flags:#x}")));
    }
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(protocol("the client does not speak the fixed newstyle handshake"));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let mut n = Negotiated::default();
    for _ in 0..MAX_OPTIONS {
        let magic = read_u64(s)?;
        if magic != IHAVEOPT {
            return Err(protocol(format!("option magic {magic:#x}")));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                return Err(protocol(format!("NBD_OPT_EXPORT_NAME of {len} bytes")));
            }
            discard(s, len.into())?;
            option_reply(s, option, REP_ERR_TOO_BIG, format!("option of {len} bytes (at most {MAX_OPTION_LEN})").as_bytes())?;
            s.flush()?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        read_exact(s, &mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !export.answers_to(&data) {
                    return Err(protocol(format!("NBD_OPT_EXPORT_NAME of unknown export {:?}", String::from_utf8_lossy(&data))));
                }
                s.write_all(&export_info(export, &n))?;
                if !no_zeroes {
                    s.write_all(&[0u8; 124])?;
                }
                s.flush()?;
                return Ok(Some(n));
            }
            OPT_ABORT => {
                // The client may already have gone: the acknowledgement is best effort.
                let _ = option_reply(s, option, REP_ACK, &[]).and_then(|()| s.flush().map_err(NbdError::Io));
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => option_reply(s, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?,
            OPT_LIST => {
                for name in &export.names {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    option_reply(s, option, REP_SERVER, &d)?;
                }
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                option_reply(s, option, REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")?
            }
            OPT_STRUCTURED_REPLY => {
                n.structured = true;
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                if info_or_go(s, export, &n, option, &data)? && option == OPT_GO {
                    s.flush()?;
                    return Ok(Some(n));
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => meta_context(s, export, &mut n, option, &data)?,
            OPT_STARTTLS => option_reply(s, option, REP_ERR_UNSUP, b"no TLS: use a unix socket or loopback")?,
            _ => option_reply(s, option, REP_ERR_UNSUP, b"option not supported")?,
        }
        s.flush()?;
    }
    Err(protocol(format!("more than {MAX_OPTIONS} options without choosing an export")))
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO`: true when the export was found and described.
fn info_or_go<S: Write>(s: &mut S, export: &Export, n: &Negotiated, option: u32, data: &[u8]) -> Result<bool, NbdError> {
    let mut d = OptionData { data };
    let parsed = (|| {
        let name = d.string()?;
        let count = d.u16()?;
        let mut wanted = Vec::new();
        for _ in 0..count {
            wanted.push(d.u16()?);
        }
        d.data.is_empty().then_some((name, wanted))
    })();
    let Some((name, wanted)) = parsed else {
        option_reply(s, option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/NBD_OPT_GO data")?;
        return Ok(false);
    };
    if !export.answers_to(name) {
        option_reply(s, option, REP_ERR_UNKNOWN, format!("no export named {:?}", String::from_utf8_lossy(name)).as_bytes())?;
        return Ok(false);
    }
    info_reply(s, option, INFO_EXPORT, &export_info(export, n))?;
    let mut sent = Vec::new();
    for kind in wanted {
        if sent.contains(&kind) {
            continue;
        }
        sent.push(kind);
        match kind {
            INFO_NAME => info_reply(s, option, INFO_NAME, name)?,
            INFO_DESCRIPTION => info_reply(s, option, INFO_DESCRIPTION, export.description.as_bytes())?,
            INFO_BLOCK_SIZE => {
                let mut b = [0u8; 12];
                b[..4].copy_from_slice(&MIN_BLOCK.to_be_bytes());
                b[4..8].copy_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                b[8..].copy_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                info_reply(s, option, INFO_BLOCK_SIZE, &b)?;
            }
            _ => {} // unknown information requests are ignored, as the spec says
        }
    }
    option_reply(s, option, REP_ACK, &[])?;
    Ok(true)
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`: only `base:allocation` exists.
fn meta_context<S: Write>(s: &mut S, export: &Export, n: &mut Negotiated, option: u32, data: &[u8]) -> Result<(), NbdError> {
    let set = option == OPT_SET_META_CONTEXT;
    if set && !n.structured {
        return option_reply(s, option, REP_ERR_INVALID, b"NBD_OPT_SET_META_CONTEXT needs structured replies first");
    }
    let mut d = OptionData { data };
    let parsed = (|| {
        let name = d.string()?;
        let count = d.u32()?;
        let mut queries = Vec::new();
        for _ in 0..count {
            queries.push(d.string()?); // each costs at least 4 bytes of the capped option
        }
        d.data.is_empty().then_some((name, queries))
    })();
    let Some((name, queries)) = parsed else {
        return option_reply(s, option, REP_ERR_INVALID, b"malformed meta context request");
    };
    if !export.answers_to(name) {
        return option_reply(s, option, REP_ERR_UNKNOWN, format!("no export named {:?}", String::from_utf8_lossy(name)).as_bytes());
    }
    // An empty list asks for every context (LIST) or selects none (SET).
    let matches = if set {
        queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes())
    } else {
        queries.is_empty() || queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes() || *q == b"base:")
    };
    if set {
        n.base_allocation = matches;
    }
    if matches {
        let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        option_reply(s, option, REP_META_CONTEXT, &d)?;
    }
    option_reply(s, option, REP_ACK, &[])
}

/// How the transmission phase ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection between requests.
    Closed,
}

/// One request's header.
#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

/// Reads the next request; `None` when the client closed the connection between requests.
fn read_request<S: Read>(s: &mut S) -> Result<Option<Request>, NbdError> {
    let mut b = [0u8; 28];
    // The first byte tells a clean close (EOF here) from a cut request (EOF later).
    loop {
        match s.read(&mut b[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    read_exact(s, &mut b[1..])?;
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(protocol(format!("request magic {magic:#x}")));
    }
    let be64 = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(x)
    };
    Ok(Some(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: u16::from_be_bytes([b[6], b[7]]),
        cookie: be64(8),
        offset: be64(16),
        len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    }))
}

fn simple_reply<S: Write>(s: &mut S, cookie: u64, error: u32) -> Result<(), NbdError> {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    s.write_all(&b)?;
    Ok(())
}

fn chunk_header<S: Write>(s: &mut S, cookie: u64, flags: u16, kind: u16, len: u32) -> Result<(), NbdError> {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    s.write_all(&b)?;
    Ok(())
}

/// A structured error chunk (with the offset it concerns, if any), ending the reply.
fn error_chunk<S: Write>(s: &mut S, cookie: u64, error: u32, message: &str, offset: Option<u64>) -> Result<(), NbdError> {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let kind = if offset.is_some() { REPLY_TYPE_ERROR_OFFSET } else { REPLY_TYPE_ERROR };
    let len = 6 + msg.len() + offset.map_or(0, |_| 8);
    chunk_header(s, cookie, REPLY_FLAG_DONE, kind, len as u32)?;
    s.write_all(&error.to_be_bytes())?;
    s.write_all(&(msg.len() as u16).to_be_bytes())?;
    s.write_all(msg)?;
    if let Some(o) = offset {
        s.write_all(&o.to_be_bytes())?;
    }
    Ok(())
}

/// An error reply to a request: a structured error chunk where structured replies are
/// negotiated and the command is one whose replies must be structured, else a simple one.
fn refuse<S: Write>(s: &mut S, n: &Negotiated, r: &Request, error: u32, message: &str) -> Result<(), NbdError> {
    if n.structured && matches!(r.kind, CMD_READ | CMD_BLOCK_STATUS) {
        error_chunk(s, r.cookie, error, message, None)
    } else {
        simple_reply(s, r.cookie, error)
    }
}

/// Serves requests until the client disconnects. Reads go to `disk` (holes, per the
/// export's allocation, are never read: they are zeros); everything that would change the
/// disk is refused with `EPERM`.
pub fn transmission<S: Read + Write, D: ReadAt + ?Sized>(s: &mut S, export: &Export, disk: &D, n: &Negotiated) -> Result<Ended, NbdError> {
    let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    loop {
        let Some(r) = read_request(s)? else { return Ok(Ended::Closed) };
        if r.kind == CMD_WRITE {
            // The payload follows whatever the answer: read past it to stay in step.
            discard(s, r.len.into())?;
        }
        let past_end = r.offset.checked_add(r.len.into()).is_none_or(|end| end > export.size);
        match r.kind {
            CMD_DISC => return Ok(Ended::Disconnect),
            _ if r.flags & !known_flags != 0 => refuse(s, n, &r, EINVAL, "unknown command flags")?,
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_FLUSH => refuse(s, n, &r, EPERM, "read-only export")?,
            CMD_READ | CMD_BLOCK_STATUS if past_end => refuse(s, n, &r, EINVAL, "request past the end of the export")?,
            CMD_READ if r.len > MAX_REQUEST_LEN => refuse(s, n, &r, EINVAL, "read longer than 32 MiB")?,
            CMD_READ if n.structured => read_structured(s, export, disk, &r)?,
            CMD_READ => read_simple(s, export, disk, &r)?,
            CMD_BLOCK_STATUS if !n.base_allocation => refuse(s, n, &r, EINVAL, "no meta context selected")?,
            CMD_BLOCK_STATUS if r.len == 0 => refuse(s, n, &r, EINVAL, "block status of 0 bytes")?,
            CMD_BLOCK_STATUS => block_status(s, export, &r)?,
            _ => refuse(s, n, &r, EINVAL, "unknown command")?,
        }
        s.flush()?;
    }
}

/// Fills `buf` with the export's bytes at `offset`: data runs from the disk, holes with zeros.
fn fill<D: ReadAt + ?Sized>(export: &Export, disk: &D, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    for (start, len, data) in export.allocation.runs(offset, buf.len() as u64) {
        let from = (start - offset) as usize;
        let part = &mut buf[from..from + len as usize];
        if data {
            disk.read_at(start, part)?;
        } else {
            part.fill(0);
        }
    }
    Ok(())
}

/// A read with a simple reply: the first piece is read before the header, so a disk error
/// there is an error reply; one after the header has been sent cannot be signalled, and
/// the connection is closed (as the spec requires).
fn read_simple<S: Write, D: ReadAt + ?Sized>(s: &mut S, export: &Export, disk: &D, r: &Request) -> Result<(), NbdError> {
    let len = r.len as usize;
    let mut buf = vec![0u8; len.min(PIECE)];
    if let Err(e) = fill(export, disk, r.offset, &mut buf) {
        tracing::warn!("nbd: read of {} bytes at {}: {e}", r.len, r.offset);
        return simple_reply(s, r.cookie, EIO);
    }
    simple_reply(s, r.cookie, 0)?;
    s.write_all(&buf)?;
    let mut done = buf.len();
    while done < len {
        let k = (len - done).min(PIECE);
        fill(export, disk, r.offset + done as u64, &mut buf[..k])
            .map_err(|e| protocol(format!("read failed after its reply began, closing: {e}")))?;
        s.write_all(&buf[..k])?;
        done += k;
    }
    Ok(())
}

/// A read with structured replies: holes as `OFFSET_HOLE` chunks, data in `OFFSET_DATA`
/// chunks of at most [`PIECE`]; with `NBD_CMD_FLAG_DF` one data chunk for the whole range.
/// A disk error ends the reply with an `ERROR_OFFSET` chunk; the connection goes on.
fn read_structured<S: Write, D: ReadAt + ?Sized>(s: &mut S, export: &Export, disk: &D, r: &Request) -> Result<(), NbdError> {
    if r.len == 0 {
        return chunk_header(s, r.cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0);
    }
    if r.flags & CMD_FLAG_DF != 0 {
        return read_one_chunk(s, export, disk, r);
    }
    // The chunks, planned first so the last one carries the DONE flag.
    let mut plan: Vec<(u64, u64, bool)> = Vec::new();
    for (start, len, data) in export.allocation.runs(r.offset, r.len.into()) {
        if data {
            let mut o = 0;
            while o < len {
                let k = (len - o).min(PIECE as u64);
                plan.push((start + o, k, true));
                o += k;
            }
        } else {
            plan.push((start, len, false));
        }
    }
    let mut buf = Vec::new();
    let last = plan.len().saturating_sub(1);
    for (i, &(start, len, data)) in plan.iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        if !data {
            chunk_header(s, r.cookie, flags, REPLY_TYPE_OFFSET_HOLE, 12)?;
            s.write_all(&start.to_be_bytes())?;
            s.write_all(&(len as u32).to_be_bytes())?;
            continue;
        }
        buf.resize(len as usize, 0);
        if let Err(e) = disk.read_at(start, &mut buf) {
            tracing::warn!("nbd: read of {len} bytes at {start}: {e}");
            return error_chunk(s, r.cookie, EIO, &format!("read failed: {e}"), Some(start));
        }
        chunk_header(s, r.cookie, flags, REPLY_TYPE_OFFSET_DATA, 8 + len as u32)?;
        s.write_all(&start.to_be_bytes())?;
        s.write_all(&buf)?;
    }
    Ok(())
}

/// `NBD_CMD_FLAG_DF`: the whole range as one `OFFSET_DATA` chunk, holes as zeros, streamed
/// piece by piece after a first piece read before the header (as a simple reply is).
fn read_one_chunk<S: Write, D: ReadAt + ?Sized>(s: &mut S, export: &Export, disk: &D, r: &Request) -> Result<(), NbdError> {
    let len = r.len as usize;
    let mut buf = vec![0u8; len.min(PIECE)];
    if let Err(e) = fill(export, disk, r.offset, &mut buf) {
        tracing::warn!("nbd: read of {} bytes at {}: {e}", r.len, r.offset);
        return error_chunk(s, r.cookie, EIO, &format!("read failed: {e}"), Some(r.offset));
    }
    chunk_header(s, r.cookie, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 8 + r.len)?;
    s.write_all(&r.offset.to_be_bytes())?;
    s.write_all(&buf)?;
    let mut done = buf.len();
    while done < len {
        let k = (len - done).min(PIECE);
        fill(export, disk, r.offset + done as u64, &mut buf[..k])
            .map_err(|e| protocol(format!("read failed after its reply began, closing: {e}")))?;
        s.write_all(&buf[..k])?;
        done += k;
    }
    Ok(())
}

/// `NBD_CMD_BLOCK_STATUS` for `base:allocation`: data is 0, a hole `HOLE | ZERO`; at most
/// [`MAX_DESCRIPTORS`] (one with `REQ_ONE`), never past the requested range.
fn block_status<S: Write>(s: &mut S, export: &Export, r: &Request) -> Result<(), NbdError> {
    let max = if r.flags & CMD_FLAG_REQ_ONE != 0 { 1 } else { MAX_DESCRIPTORS };
    let mut payload = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
    for (_, len, data) in export.allocation.runs(r.offset, r.len.into()).take(max) {
        payload.extend_from_slice(&(len as u32).to_be_bytes());
        payload.extend_from_slice(&(if data { 0 } else { STATE_HOLE | STATE_ZERO }).to_be_bytes());
    }
    chunk_header(s, r.cookie, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, payload.len() as u32)?;
    s.write_all(&payload)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_the_range_alternating_data_and_holes() {
        let a = Allocation::from_pieces([(100, 50), (0, 10), (10, 5), (140, 20), (500, 1000)], 600);
        assert_eq!(a.ranges(), &[(0, 15), (100, 160), (500, 600)]);
        let runs: Vec<_> = a.runs(5, 200).collect();
        assert_eq!(runs, vec![(5, 10, true), (15, 85, false), (100, 60, true), (160, 45, false)]);
        assert_eq!(a.runs(550, 50).collect::<Vec<_>>(), vec![(550, 50, true)]);
        assert_eq!(a.runs(0, 0).count(), 0);
        assert_eq!(Allocation::default().runs(0, 7).collect::<Vec<_>>(), vec![(0, 7, false)]);
    }
}
