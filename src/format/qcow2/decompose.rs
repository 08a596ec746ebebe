//! The streaming decomposer (design note §4.2): one sequential pass over an untrusted qcow2
//! stream, producing guest data pieces, the literal stream and the layout recipe.
//!
//! Every host cluster gets exactly one fate when it is read (or when its role becomes known):
//! metadata/free → literal (zero runs elided), data → guest data, compressed stream →
//! recompression recipe or literal. Clusters whose role is unknown wait in the cluster pool
//! (`pool`: RAM, then an unlinked spill file); what is refused or stored opaque from the header
//! alone is the safety policy's call (`policy`). Because the bytes of every host
//! range are recorded the moment they are consumed, a problem found late (corrupt tables,
//! limits) switches to *opaque* mode without ever re-reading the input: the rest of the file
//! and everything still pending becomes literal, and the recipe stays exact.
use super::error::Qcow2Error;
use super::header::{self, Header};
use super::pool::{Admitted, ClusterPool};
use super::{DecomposeSink, Decomposed, ImageInfo, Policy};
use crate::chunking::is_zero;
use crate::format::codec::{self, Reproduced, CODEC_ZLIB, CODEC_ZSTD};
use crate::format::recipe::{Recipe, SegList, Segment, FLAG_OPAQUE};
use crate::util::read_full;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Header,
    RefTable,
    L1 {
        first: u64,
    },
    L2 {
        l1_index: u64,
    },
    /// A standard data cluster. `alloc`: which of its 32 subclusters hold guest data (bit x
    /// = subcluster x; all set without extended L2); the others' host bytes are stale.
    Data {
        guest: u64,
        alloc: u32,
    },
    /// Soft roles: hints that a cluster is metadata we do not interpret (refcount block) or
    /// carries no guest data (zero-flag cluster with a host offset). A hard role replaces them.
    RefBlock,
    Free,
}
impl Role {
    fn soft(self) -> bool {
        matches!(self, Role::RefBlock | Role::Free)
    }
}

/// A compressed stream waiting for [`codec::reproduce`]: its host offset, its guest offset and
/// its bytes (up to the upper bound its L2 entry gives).
struct Job {
    off: u64,
    guest: u64,
    bytes: Vec<u8>,
}

/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

struct Dec<'a> {
    sink: &'a mut dyn DecomposeSink,
    policy: &'a Policy,
    h: Header,
    cs: u64,
    file_len: Option<u64>,
    /// Bytes read so far (host offset of the next byte).
    pos: u64,
    roles: HashMap<u64, Role>,
    pool: ClusterPool,
    /// Registered compressed streams, keyed by (end of upper bound, host offset).
    streams: BTreeMap<(u64, u64), u64>,
    jobs: Vec<Job>,
    segs: SegList,
    lit_off: u64,
    opaque: Option<String>,
    codec: u8,
    info: ImageInfo,
}

impl Dec<'_> {
    fn vsize(&self) -> u64 {
        self.h.size
    }

    // ---------- emission ----------

    /// Bytes at host offset `h` that are kept verbatim: zero runs become Zero segments,
    /// everything else goes to the literal stream.
    fn emit_literal(&mut self, h: u64, b: &[u8]) -> std::io::Result<()> {
        for (start, end, zero) in crate::format::recipe::zero_runs(b) {
            if self.segs.len() >= self.policy.max_segments {
                // Over the segment budget: no more zero elision, so host-ordered literal
                // bytes extend one segment instead of adding new ones.
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

    /// `piece` (at host `h`) goes to the literal stream verbatim.
    fn push_literal(&mut self, h: u64, piece: &[u8]) -> std::io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        self.sink.literal(piece)?;
        self.segs.push(h, Segment::Literal { len: piece.len() as u64, lit_off: self.lit_off });
        self.lit_off += piece.len() as u64;
        self.info.literal_bytes += piece.len() as u64;
        Ok(())
    }

    /// A data cluster's bytes at host `h`, mapping guest offset `g`: the allocated subclusters'
    /// bytes are guest data, the others' stale bytes are literal.
    fn emit_cluster(&mut self, h: u64, g: u64, b: &[u8], alloc: u32) -> std::io::Result<()> {
        let sub = (self.cs / SUBCLUSTERS) as usize;
        let allocated = |at: usize| alloc & (1u32 << (at / sub).min(31)) != 0;
        let mut i = 0usize;
        while i < b.len() {
            let (start, on) = (i, allocated(i));
            while i < b.len() && allocated(i) == on {
                i = (i + sub).min(b.len());
            }
            let (hh, piece) = (h + start as u64, &b[start..i]);
            if on {
                self.emit_guest(hh, g + start as u64, piece)?;
            } else {
                self.emit_literal(hh, piece)?;
            }
        }
        Ok(())
    }

    /// Guest bytes at host `h`, mapping guest offset `g`; trimmed at the virtual size.
    fn emit_guest(&mut self, h: u64, g: u64, b: &[u8]) -> std::io::Result<()> {
        let n = (b.len() as u64).min(self.vsize().saturating_sub(g)) as usize;
        let (data, rest) = b.split_at(n);
        if is_zero(data) {
            self.segs.push(h, Segment::Zero { len: n as u64 });
        } else {
            self.sink.guest(g, data)?;
            self.segs.push(h, Segment::Guest { len: n as u64, guest_off: g });
            self.info.guest_bytes += n as u64;
        }
        self.emit_literal(h + n as u64, rest)
    }

    // ---------- clusters with unknown role ----------

    /// Pools a cluster read before its role is known; past the spill limit the image goes
    /// opaque from here on, and the cluster with it.
    fn pool_insert(&mut self, h: u64, b: Vec<u8>) -> Result<(), Qcow2Error> {
        if let Admitted::OverSpillLimit(b) = self.pool.insert(h, b)? {
            self.go_opaque(format!(
                "clusters waiting for their role exceed the spill limit of {} bytes (--spill-limit)",
                self.policy.max_spill_bytes
            ))?;
            self.emit_literal(h, &b)?;
        }
        Ok(())
    }

    /// Everything still pooled becomes literal, in host order (in bounded pieces).
    fn drain_pool(&mut self) -> Result<(), Qcow2Error> {
        for (k, held) in self.pool.drain() {
            let mut done = 0u64;
            while done < held.len() {
                let n = (held.len() - done).min(1 << 20);
                if held.is_zero() {
                    self.segs.push(k + done, Segment::Zero { len: n });
                } else {
                    let bytes = self.pool.read(&held, done, n)?;
                    self.emit_literal(k + done, &bytes)?;
                }
                done += n;
            }
        }
        Ok(())
    }

    // ---------- opaque fallback ----------

    fn go_opaque(&mut self, reason: String) -> Result<(), Qcow2Error> {
        if self.opaque.is_some() {
            return Ok(());
        }
        self.opaque = Some(reason);
        self.jobs.clear();
        self.streams.clear();
        self.roles.clear();
        self.drain_pool()
    }

    fn corrupt(&mut self, reason: String) -> Result<(), Qcow2Error> {
        self.info.corrupt = true;
        self.go_opaque(format!("corrupt image: {reason}"))
    }

    // ---------- roles ----------

    fn in_file(&self, off: u64, len: u64) -> bool {
        match self.file_len {
            Some(fl) => off.checked_add(len).is_some_and(|e| e <= fl),
            None => off < 1 << 56,
        }
    }

    fn assign(&mut self, cluster: u64, role: Role) -> Result<(), Qcow2Error> {
        if self.opaque.is_some() {
            return Ok(());
        }
        let h = cluster * self.cs;
        if h >= self.pos {
            match self.roles.get(&cluster).copied() {
                Some(old) if role.soft() => {
                    let _ = old;
                }
                Some(old) if !old.soft() => {
                    return self.corrupt(format!("host cluster at offset {h:#x} has two roles ({old:?} and {role:?})"));
                }
                _ => {
                    if self.roles.len() >= self.policy.max_tracked {
                        return self.go_opaque(format!("more than {} outstanding table references", self.policy.max_tracked));
                    }
                    self.roles.insert(cluster, role);
                }
            }
            return Ok(());
        }
        // Already read: the bytes must still be pooled.
        let end = (h + self.cs).min(self.pos);
        match self.pool.take(h, end)? {
            Some(bytes) => self.handle(h, bytes, role),
            None if role.soft() => Ok(()),
            None => self.corrupt(format!("host cluster at offset {h:#x} ({role:?}) was already used for something else")),
        }
    }

    /// Give cluster bytes at host `h` their fate according to `role`.
    fn handle(&mut self, h: u64, b: Vec<u8>, role: Role) -> Result<(), Qcow2Error> {
        if self.opaque.is_some() {
            self.emit_literal(h, &b)?;
            return Ok(());
        }
        match role {
            Role::Data { guest, alloc } => {
                self.flush_jobs()?; // keep guest pieces in guest order
                if self.opaque.is_some() {
                    self.emit_literal(h, &b)?;
                } else {
                    self.emit_cluster(h, guest, &b, alloc)?;
                }
            }
            Role::Header | Role::RefBlock => {
                self.info.metadata_bytes += b.len() as u64;
                self.emit_literal(h, &b)?;
            }
            Role::Free => self.emit_literal(h, &b)?,
            Role::RefTable => {
                self.info.metadata_bytes += b.len() as u64;
                self.emit_literal(h, &b)?;
                for e in b.chunks_exact(8) {
                    let off = u64::from_be_bytes(e.try_into().unwrap_or([0; 8])) & !0x1ff;
                    if off != 0 && off % self.cs == 0 && self.in_file(off, 1) {
                        self.assign(off / self.cs, Role::RefBlock)?;
                    }
                }
            }
            Role::L1 { first } => {
                self.info.metadata_bytes += b.len() as u64;
                self.emit_literal(h, &b)?;
                self.parse_l1(first, &b)?;
            }
            Role::L2 { l1_index } => {
                self.info.metadata_bytes += b.len() as u64;
                self.emit_literal(h, &b)?;
                self.parse_l2(l1_index, &b)?;
            }
        }
        Ok(())
    }

    fn parse_l1(&mut self, first: u64, b: &[u8]) -> Result<(), Qcow2Error> {
        for (j, e) in b.chunks_exact(8).enumerate() {
            let idx = first + j as u64;
            if idx >= self.h.l1_size as u64 || self.opaque.is_some() {
                break;
            }
            let e = u64::from_be_bytes(e.try_into().unwrap_or([0; 8]));
            let off = e & 0x00ff_ffff_ffff_fe00;
            if e & 0x7f00_0000_0000_01ff != 0 {
                self.corrupt(format!("L1 entry {idx} has reserved bits set ({e:#x})"))?;
                break;
            }
            if off == 0 || idx * self.h.l2_span() >= self.vsize() {
                continue;
            }
            if off % self.cs != 0 || off < self.cs || !self.in_file(off, self.cs) {
                self.corrupt(format!("L1 entry {idx} points to {off:#x}: unaligned, into the header or beyond the end of the file"))?;
                break;
            }
            self.assign(off / self.cs, Role::L2 { l1_index: idx })?;
        }
        Ok(())
    }

    fn parse_l2(&mut self, l1_index: u64, b: &[u8]) -> Result<(), Qcow2Error> {
        let cs = self.cs;
        let cb = self.h.cluster_bits as u64;
        let extended = self.h.extended_l2();
        for (i, e) in b.chunks_exact(self.h.l2_entry_size() as usize).enumerate() {
            if self.opaque.is_some() {
                break;
            }
            let guest = l1_index * self.h.l2_span() + i as u64 * cs;
            if guest >= self.vsize() {
                break;
            }
            let be64 = |at: usize| u64::from_be_bytes(e[at..at + 8].try_into().unwrap_or([0; 8]));
            // Extended L2 (qcow2 spec "Extended L2 Entries"): a second word, bits 0..32 =
            // subcluster x allocated, bits 32..64 = subcluster x reads as zeros.
            let bitmap = if extended { be64(8) } else { 0 };
            let e = be64(0);
            if e & (1 << 62) != 0 && bitmap != 0 {
                self.corrupt(format!("compressed cluster for guest offset {guest:#x} has a subcluster bitmap ({bitmap:#x})"))?;
                break;
            }
            if e & (1 << 62) != 0 {
                let x = 62 - (cb - 8);
                let off = e & ((1u64 << x) - 1);
                let nsect = (e >> x) & ((1u64 << (cb - 8)) - 1);
                let upper = (nsect + 1) * 512 - (off & 511);
                if off < cs || !self.in_file(off, 1) {
                    self.corrupt(format!(
                        "compressed cluster for guest offset {guest:#x} at host {off:#x}: into the header or beyond the end of the file"
                    ))?;
                    break;
                }
                let end = match self.file_len {
                    Some(fl) => (off + upper).min(fl),
                    None => off + upper,
                };
                self.info.compressed_clusters += 1;
                self.info.allocated_bytes += cs;
                if self.streams.contains_key(&(end, off)) || self.streams.len() >= self.policy.max_tracked {
                    self.corrupt(format!("compressed stream at {off:#x} referenced twice or too many streams"))?;
                    break;
                }
                self.streams.insert((end, off), guest);
                continue;
            }
            let off = e & 0x00ff_ffff_ffff_fe00;
            let zero = e & 1 != 0;
            // With extended L2, bit 0 is reserved: zeros are said per subcluster.
            if e & 0x3f00_0000_0000_01fe != 0 || (zero && (self.h.version < 3 || extended)) {
                self.corrupt(format!("L2 entry for guest offset {guest:#x} has reserved bits set ({e:#x})"))?;
                break;
            }
            let (sub_alloc, sub_zero) = (bitmap as u32, (bitmap >> 32) as u32);
            if sub_alloc & sub_zero != 0 || (off == 0 && sub_alloc != 0) {
                self.corrupt(format!(
                    "L2 entry for guest offset {guest:#x} has an invalid subcluster bitmap ({bitmap:#x}) for host offset {off:#x}"
                ))?;
                break;
            }
            if off == 0 {
                continue;
            }
            // Without extended L2 every subcluster of a non-zero data cluster is allocated.
            let alloc = if extended { sub_alloc } else { u32::MAX };
            if off % cs != 0 || off < cs || !self.in_file(off, 1) {
                self.corrupt(format!("L2 entry for guest offset {guest:#x} points to host {off:#x}: unaligned, into the header or beyond the end of the file"))?;
                break;
            }
            if zero || alloc == 0 {
                self.info.zero_prealloc_clusters += 1;
                self.assign(off / cs, Role::Free)?;
            } else {
                self.info.allocated_bytes += cs;
                self.info.data_clusters += 1;
                self.assign(off / cs, Role::Data { guest, alloc })?;
            }
        }
        // Streams whose bytes have all arrived can be processed now.
        self.collect_ready(false)
    }

    // ---------- compressed clusters ----------

    fn collect_ready(&mut self, eof: bool) -> Result<(), Qcow2Error> {
        while let Some((&(end, off), &guest)) = self.streams.iter().next() {
            if !eof && end > self.pos {
                break;
            }
            self.streams.remove(&(end, off));
            let bytes = self.pool.peek(off, end.min(self.pos))?;
            self.jobs.push(Job { off, guest, bytes });
            if self.jobs.len() as u64 * self.cs >= 16 << 20 && self.jobs.len() >= 4 {
                self.flush_jobs()?;
                if self.opaque.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Decompress + recompress the batch in parallel, then apply results in order.
    fn flush_jobs(&mut self) -> Result<(), Qcow2Error> {
        if self.jobs.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::take(&mut self.jobs);
        let (cs, codec, vsize) = (self.cs as usize, self.codec, self.vsize());
        let guest_len = |j: &Job| (cs as u64).min(vsize.saturating_sub(j.guest)) as usize;
        let results: Vec<Option<Reproduced>> = jobs.par_iter().map(|j| codec::reproduce(&j.bytes, cs, codec, guest_len(j))).collect();
        for (j, r) in jobs.iter().zip(results) {
            if self.opaque.is_some() {
                break;
            }
            match r {
                None => {
                    self.corrupt(format!(
                        "compressed cluster at host {:#x} (guest {:#x}) does not decompress to one cluster",
                        j.off, j.guest
                    ))?;
                }
                Some(Reproduced { data, exact, codec }) => {
                    let n = (cs as u64).min(vsize - j.guest) as usize;
                    if !is_zero(&data[..n]) {
                        self.sink.guest(j.guest, &data[..n])?;
                        self.info.guest_bytes += n as u64;
                    }
                    let Some(exact) = exact else { continue }; // bytes stay pooled → literal
                    let Some(bytes) = self.pool.take(j.off, j.off + exact)? else {
                        self.corrupt(format!("compressed cluster at host {:#x} overlaps other data", j.off))?;
                        break;
                    };
                    match codec {
                        Some(c) => {
                            self.info.reproducible_clusters += 1;
                            let check = Some(crate::format::recipe::compressed_check(&bytes));
                            self.segs.push(j.off, Segment::Compressed { len: exact, guest_off: j.guest, codec: c, check });
                        }
                        None => {
                            self.info.literal_compressed_clusters += 1;
                            self.emit_literal(j.off, &bytes)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

pub fn decompose<R: Read>(
    mut input: R,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposed, Qcow2Error> {
    // Header: the first 104 bytes tell the cluster size; then the rest of cluster 0.
    let mut head = vec![0u8; 104];
    let n = read_full(&mut input, &mut head)?;
    head.truncate(n);
    let mut want = n;
    if n >= 24 && &head[..4] == header::MAGIC {
        let cb = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
        if (9..=21).contains(&cb) {
            want = 1usize << cb;
            if let Some(fl) = file_len {
                want = want.min(fl.min(usize::MAX as u64) as usize);
            }
            if want > n {
                head.resize(want, 0);
                let m = read_full(&mut input, &mut head[n..])?;
                head.truncate(n + m);
            }
        }
    }
    if let Some(fl) = file_len {
        if (head.len() as u64) < fl && head.len() < want.max(104) {
            return Err(Qcow2Error::Truncated { expected: fl, got: head.len() as u64 });
        }
    }
    let h = header::parse(&head, file_len)?;
    let cs = h.cluster_size();
    let mut info = ImageInfo {
        format: "qcow2".into(),
        version: h.version,
        virtual_size: h.size,
        cluster_size: cs,
        compression_type: if h.compression_type == 1 { "zstd" } else { "zlib" }.into(),
        backing_file: h.backing_file.clone(),
        backing_format: h.backing_format.clone(),
        data_file: h.data_file.clone(),
        encrypted: h.crypt_method != 0 || h.has_crypto_ext,
        snapshots: h.nb_snapshots,
        bitmaps: h.nb_bitmaps,
        dirty: h.incompatible & header::INCOMPAT_DIRTY != 0,
        corrupt: h.incompatible & header::INCOMPAT_CORRUPT != 0,
        lazy_refcounts: h.compatible & 1 != 0,
        extended_l2: h.extended_l2(),
        refcount_bits: 1 << h.refcount_order,
        ..Default::default()
    };
    let opaque = policy.admit(&h, &mut info)?;
    let codec = if h.compression_type == 1 { CODEC_ZSTD } else { CODEC_ZLIB };
    let mut d = Dec {
        sink,
        policy,
        cs,
        file_len,
        pos: 0,
        roles: HashMap::new(),
        pool: ClusterPool::new(policy),
        streams: BTreeMap::new(),
        jobs: Vec::new(),
        segs: SegList::default(),
        lit_off: 0,
        opaque,
        codec,
        info,
        h,
    };
    // Seed roles: header, refcount table, L1.
    let l1_bytes = d.h.l1_size as u64 * 8;
    if d.opaque.is_none() {
        let rt0 = d.h.refcount_table_offset / cs;
        for c in rt0..rt0 + d.h.refcount_table_clusters as u64 {
            d.roles.insert(c, Role::RefTable);
        }
        if l1_bytes > 0 {
            let l10 = d.h.l1_table_offset / cs;
            for c in l10..(d.h.l1_table_offset + l1_bytes).div_ceil(cs) {
                d.roles.insert(c, Role::L1 { first: (c * cs - d.h.l1_table_offset) / 8 });
            }
        }
    }
    // Cluster 0 (we may hold fewer bytes if the file is tiny).
    d.pos = head.len() as u64;
    d.handle(0, head, Role::Header)?;
    let mut buf_len = cs as usize;
    loop {
        if let Some(fl) = file_len {
            if d.pos >= fl {
                let mut probe = [0u8; 1];
                if read_full(&mut input, &mut probe)? != 0 {
                    return Err(Qcow2Error::TooLong(fl));
                }
                break;
            }
            buf_len = (fl - d.pos).min(cs) as usize;
        }
        let mut buf = vec![0u8; buf_len];
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            if let Some(fl) = file_len {
                return Err(Qcow2Error::Truncated { expected: fl, got: d.pos });
            }
            break;
        }
        buf.truncate(n);
        if let Some(fl) = file_len {
            if n < buf_len {
                return Err(Qcow2Error::Truncated { expected: fl, got: d.pos + n as u64 });
            }
        }
        let h = d.pos;
        d.pos += n as u64;
        let role = d.roles.remove(&(h / cs));
        match role {
            Some(r) => d.handle(h, buf, r)?,
            None if d.opaque.is_some() => d.emit_literal(h, &buf)?,
            None => d.pool_insert(h, buf)?,
        }
        if d.opaque.is_none() {
            d.collect_ready(false)?;
        }
        if d.opaque.is_none() && d.segs.len() > policy.max_segments {
            d.go_opaque(format!(
                "the layout recipe would exceed {} segments (an image this fragmented is stored as bytes from here on)",
                policy.max_segments
            ))?;
        }
        if n < buf_len {
            break;
        }
    }
    // End of stream.
    d.collect_ready(true)?;
    d.flush_jobs()?;
    if d.opaque.is_none() {
        if let Some((c, r)) = d.roles.iter().find(|(_, r)| !r.soft()).map(|(c, r)| (*c, *r)) {
            d.corrupt(format!("{r:?} at host offset {:#x} lies beyond the end of the file ({} bytes)", c * cs, d.pos))?;
        }
    }
    d.drain_pool()?;
    let file_len = d.pos;
    d.info.file_len = file_len;
    let segments = std::mem::take(&mut d.segs).finish(file_len)?;
    let recipe = Recipe {
        file_len,
        cluster_bits: d.h.cluster_bits as u8,
        virtual_size: d.h.size,
        flags: if d.opaque.is_some() { FLAG_OPAQUE } else { 0 },
        segments,
    };
    policy.refuse_opaque(d.opaque.as_deref())?;
    d.info.spilled_bytes = d.pool.spilled_bytes();
    d.info.pending_peak_bytes = d.pool.peak_bytes();
    d.info.literal_stream_bytes = d.lit_off;
    d.info.segments = recipe.segments.len() as u64;
    d.info.opaque = d.opaque.clone();
    d.info.zlib_version = codec::zlib_version();
    let enc = recipe.encode();
    // Refuse now what restore would refuse later: the recipe must decode within its caps.
    if let Err(e) = Recipe::decode(&enc) {
        return Err(Qcow2Error::Limit(format!("the layout recipe ({} bytes) would not be readable at restore: {e}", enc.len())));
    }
    if enc.len() as u64 > crate::format::recipe::MAX_BODY {
        return Err(Qcow2Error::Limit(format!(
            "the layout recipe is {} bytes, above the {} a reader accepts",
            enc.len(),
            crate::format::recipe::MAX_BODY
        )));
    }
    d.info.recipe_bytes = enc.len() as u64;
    Ok(Decomposed { recipe: enc, info: d.info, opaque: d.opaque })
}
