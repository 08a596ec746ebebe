//! The pool of host clusters read before their role is known (a data cluster whose L2 table
//! comes later in the file, a compressed stream still arriving): held in RAM up to
//! `Policy::max_pending_ram`, then in an unlinked, mode-0600 spill file up to
//! `Policy::max_spill_bytes`; all-zero clusters cost no memory. Entries are keyed by host
//! offset and taken out, exactly, once the decomposer learns what they are.

use super::Policy;
use crate::chunking::is_zero;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

enum Store {
    Ram(Vec<u8>),
    Spill(u64),
    Zero,
}

/// One pooled host range.
pub(super) struct Held {
    len: u64,
    store: Store,
}

impl Held {
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn is_zero(&self) -> bool {
        matches!(self.store, Store::Zero)
    }
}

/// What [`ClusterPool::insert`] did with a cluster.
pub(super) enum Admitted {
    Pooled,
    /// Spilling it would pass the spill limit: the bytes are handed back, nothing was written.
    OverSpillLimit(Vec<u8>),
}

pub(super) struct ClusterPool {
    entries: BTreeMap<u64, Held>,
    /// Bytes of `Store::Ram` entries.
    ram: usize,
    /// Bytes pooled in all entries.
    bytes: u64,
    /// Largest `bytes` seen (`ImageInfo::pending_peak_bytes`).
    peak: u64,
    spill: Option<File>,
    /// Bytes written to the spill file; never shrinks (freed ranges are not reused).
    spill_len: u64,
    max_ram: usize,
    max_spill: u64,
    spill_dir: PathBuf,
}

impl ClusterPool {
    pub(super) fn new(policy: &Policy) -> ClusterPool {
        ClusterPool {
            entries: BTreeMap::new(),
            ram: 0,
            bytes: 0,
            peak: 0,
            spill: None,
            spill_len: 0,
            max_ram: policy.max_pending_ram,
            max_spill: policy.max_spill_bytes,
            spill_dir: policy.spill_dir.clone(),
        }
    }

    /// Bytes ever spilled to disk (`ImageInfo::spilled_bytes`).
    pub(super) fn spilled_bytes(&self) -> u64 {
        self.spill_len
    }

    /// Most bytes pooled at once (`ImageInfo::pending_peak_bytes`).
    pub(super) fn peak_bytes(&self) -> u64 {
        self.peak
    }

    /// Pools the cluster bytes `b` read at host offset `h`.
    pub(super) fn insert(&mut self, h: u64, b: Vec<u8>) -> std::io::Result<Admitted> {
        let len = b.len() as u64;
        let store = if is_zero(&b) {
            Store::Zero
        } else if self.ram + b.len() <= self.max_ram {
            self.ram += b.len();
            Store::Ram(b)
        } else {
            if self.spill_len + len > self.max_spill {
                // Checked before writing: the spill file never grows past the limit.
                return Ok(Admitted::OverSpillLimit(b));
            }
            if self.spill.is_none() {
                let dir = &self.spill_dir;
                let f = open_spill(dir)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create a spill file in {}: {e}", dir.display())))?;
                self.spill = Some(f);
            }
            let off = self.spill_len;
            if let Some(f) = self.spill.as_mut() {
                f.write_all(&b)?;
            }
            self.spill_len += len;
            Store::Spill(off)
        };
        self.put(h, Held { len, store });
        self.bytes += len;
        self.peak = self.peak.max(self.bytes);
        Ok(Admitted::Pooled)
    }

    /// Insert an entry, coalescing with the previous one when both are zero runs or
    /// contiguous spill extents, so bookkeeping stays small for long unresolved stretches.
    fn put(&mut self, h: u64, held: Held) {
        if let Some((&pk, prev)) = self.entries.range_mut(..h).next_back() {
            if pk + prev.len == h {
                let merge = match (&prev.store, &held.store) {
                    (Store::Zero, Store::Zero) => true,
                    (Store::Spill(a), Store::Spill(b)) => a + prev.len == *b,
                    _ => false,
                };
                if merge {
                    prev.len += held.len;
                    return;
                }
            }
        }
        self.entries.insert(h, held);
    }

    /// Bytes `[from, from+len)` of one pooled entry (never more than asked for).
    pub(super) fn read(&self, held: &Held, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let (f, n) = (from as usize, len as usize);
        Ok(match &held.store {
            Store::Ram(v) => v.get(f..f + n).map(|s| s.to_vec()).unwrap_or_default(),
            Store::Zero => vec![0u8; n],
            Store::Spill(o) => {
                let mut v = vec![0u8; n];
                if let Some(file) = self.spill.as_ref() {
                    file.read_exact_at(&mut v, o + from)?;
                }
                v
            }
        })
    }

    /// Copy of the contiguous pooled bytes starting at `a`, up to `b` (shorter at a gap).
    pub(super) fn peek(&self, a: u64, b: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = a;
        let start = self.entries.range(..=a).next_back().map(|(k, _)| *k).unwrap_or(a);
        for (&k, held) in self.entries.range(start..) {
            if k > at || at >= b {
                break;
            }
            if k + held.len <= at {
                continue;
            }
            let to = b.min(k + held.len);
            out.extend_from_slice(&self.read(held, at - k, to - at)?);
            at = to;
        }
        Ok(out)
    }

    /// Remove exactly `[a, b)` from the pool and return its bytes; None if any byte of the
    /// range is not pooled (already consumed by another role → caller treats as conflict).
    pub(super) fn take(&mut self, a: u64, b: u64) -> std::io::Result<Option<Vec<u8>>> {
        let start = match self.entries.range(..=a).next_back() {
            Some((&k, h)) if k + h.len > a => k,
            _ => return Ok(None),
        };
        let mut keys = Vec::new();
        let mut at = start;
        for (&k, held) in self.entries.range(start..) {
            if k != at || at >= b {
                break;
            }
            keys.push(k);
            at = k + held.len;
        }
        if at < b {
            return Ok(None);
        }
        let mut out = Vec::with_capacity((b - a) as usize);
        for k in keys {
            let Some(held) = self.entries.remove(&k) else { continue };
            let lo = a.max(k);
            let hi = b.min(k + held.len);
            out.extend_from_slice(&self.read(&held, lo - k, hi - lo)?);
            self.bytes -= hi - lo;
            if k < lo {
                let head = self.split(&held, 0, lo - k);
                self.entries.insert(k, head);
            }
            if hi < k + held.len {
                let tail = self.split(&held, hi - k, k + held.len - hi);
                self.entries.insert(hi, tail);
            }
            if let Store::Ram(v) = &held.store {
                self.ram -= v.len();
            }
        }
        Ok(Some(out))
    }

    /// The sub-range `[from, from+len)` of an entry as a new entry of the same kind; RAM
    /// leftovers (at most one cluster) that are all zero stop costing memory.
    fn split(&mut self, held: &Held, from: u64, len: u64) -> Held {
        let store = match &held.store {
            Store::Zero => Store::Zero,
            Store::Spill(o) => Store::Spill(o + from),
            Store::Ram(v) => {
                let part = v.get(from as usize..(from + len) as usize).map(|s| s.to_vec()).unwrap_or_default();
                if is_zero(&part) {
                    Store::Zero
                } else {
                    self.ram += part.len();
                    Store::Ram(part)
                }
            }
        };
        Held { len, store }
    }

    /// Every entry, in host order, leaving the pool empty; their bytes stay readable with
    /// [`ClusterPool::read`] (the spill file is kept).
    pub(super) fn drain(&mut self) -> BTreeMap<u64, Held> {
        self.ram = 0;
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

fn open_spill(dir: &std::path::Path) -> std::io::Result<File> {
    // Create, then unlink at once: the spill file never outlives the process and is never
    // visible to anyone looking for it by name.
    for i in 0..100u32 {
        let p = dir.join(format!(
            ".imgarc-qcow2-spill-{}-{}-{i}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        ));
        // Mode 0600 set at creation (not left to the umask): the file holds image bytes.
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create spill file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    #[allow(unsafe_code)] // umask(2), restored before any assertion
    fn spill_file_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // A permissive umask must not widen the mode: it is set at creation.
        let old = unsafe { libc::umask(0o000) };
        let f = open_spill(dir.path());
        unsafe { libc::umask(old) };
        let mode = f.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "spill file mode {mode:o}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "spill file not unlinked");
    }

    #[test]
    fn take_splits_entries_and_refuses_ranges_not_pooled() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy { max_pending_ram: 8, spill_dir: dir.path().to_path_buf(), ..Policy::default() };
        let mut pool = ClusterPool::new(&policy);
        assert!(matches!(pool.insert(0, vec![1; 8]).unwrap(), Admitted::Pooled)); // RAM
        assert!(matches!(pool.insert(8, vec![2; 8]).unwrap(), Admitted::Pooled)); // spilled
        assert!(matches!(pool.insert(16, vec![0; 8]).unwrap(), Admitted::Pooled)); // zero run
        assert_eq!((pool.spilled_bytes(), pool.peak_bytes()), (8, 24));
        assert_eq!(pool.peek(4, 12).unwrap(), [1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(pool.take(6, 18).unwrap().unwrap(), [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0]);
        assert!(pool.take(6, 7).unwrap().is_none(), "a byte taken once is gone");
        let left: Vec<(u64, u64)> = pool.drain().iter().map(|(k, h)| (*k, h.len())).collect();
        assert_eq!(left, [(0, 6), (18, 6)]);
    }
}
