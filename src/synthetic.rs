//! A deterministic synthetic VM disk series for `imgarc demo`, tests and
//! benchmarks that must run without the shared corpus.
//!
//! The disk is a sequence of 4 KiB blocks grouped into 256 KiB extents, each
//! free (zeros), text-like (compressible) or binary (random). Each night a
//! small fraction of the used blocks is rewritten in place (as a filesystem
//! does), and a log extent grows, so consecutive nights share most bytes at the
//! same offsets — like nightly Glance snapshots of one VM.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

const BLOCK: u64 = 4096;
const EXTENT_BLOCKS: u64 = 64;

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fast, well-distributed hash of the inputs.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Free,
    Text,
    Binary,
    Log,
}

pub struct SyntheticDisk {
    pub size: u64,
    pub seed: u64,
    /// Fraction of used blocks rewritten each night.
    pub churn: f64,
}

const WORDS: &[&str] = &[
    "the",
    "kernel",
    "module",
    "loaded",
    "service",
    "started",
    "network",
    "interface",
    "eth0",
    "up",
    "disk",
    "sda1",
    "mounted",
    "read-only",
    "user",
    "session",
    "opened",
    "closed",
    "for",
    "root",
    "cron",
    "job",
    "backup",
    "completed",
    "warning:",
    "error:",
    "info:",
    "debug:",
    "package",
    "upgraded",
    "libc6",
    "openssl",
    "python3",
    "systemd",
    "journal",
];

impl SyntheticDisk {
    pub fn new(size: u64, seed: u64) -> Self {
        SyntheticDisk { size, seed, churn: 0.004 }
    }

    fn kind(&self, block: u64) -> Kind {
        let extent = block / EXTENT_BLOCKS;
        let nextents = (self.size / BLOCK).div_ceil(EXTENT_BLOCKS);
        if extent + 8 >= nextents && nextents > 16 {
            return Kind::Log; // the last extents hold a growing log
        }
        match mix(self.seed ^ extent.wrapping_mul(0x1234_5677)) % 10 {
            0..=2 => Kind::Free,
            3..=6 => Kind::Text,
            _ => Kind::Binary,
        }
    }

    /// How many times `block` was rewritten up to `night`.
    fn version(&self, block: u64, night: u32) -> u64 {
        let threshold = (self.churn * u64::MAX as f64) as u64;
        (1..=night as u64).filter(|n| mix(self.seed ^ (block << 8) ^ n.wrapping_mul(0xABCD_EF01)) < threshold).count() as u64
    }

    /// Fills `buf` (one block) with the block's content on `night`; false if it is all zero.
    fn block(&self, block: u64, night: u32, buf: &mut [u8]) -> bool {
        let kind = self.kind(block);
        let log_start = {
            let nblocks = self.size / BLOCK;
            nblocks.saturating_sub(8 * EXTENT_BLOCKS)
        };
        let filled = match kind {
            Kind::Free => false,
            Kind::Log => block < log_start + 16 + night as u64 * 24,
            _ => true,
        };
        if !filled {
            buf.fill(0);
            return false;
        }
        let v = if kind == Kind::Log { 0 } else { self.version(block, night) };
        let mut x = mix(self.seed ^ block.wrapping_mul(0x9E37) ^ (v << 48)) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        match kind {
            Kind::Binary => buf.chunks_mut(8).for_each(|c| c.copy_from_slice(&next().to_le_bytes()[..c.len()])),
            _ => {
                let mut i = 0;
                while i < buf.len() {
                    let w = WORDS[(next() % WORDS.len() as u64) as usize].as_bytes();
                    let n = w.len().min(buf.len() - i);
                    buf[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                    if i < buf.len() {
                        buf[i] = if next() % 12 == 0 { b'\n' } else { b' ' };
                        i += 1;
                    }
                }
            }
        }
        true
    }

    /// Writes the disk as it is on `night` to `path` as a sparse raw file.
    pub fn write_night(&self, path: &Path, night: u32) -> Result<()> {
        let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut buf = vec![0u8; BLOCK as usize];
        let mut out = Vec::with_capacity(1 << 20);
        let mut out_start = 0u64;
        let nblocks = self.size.div_ceil(BLOCK);
        for b in 0..nblocks {
            let len = (self.size - b * BLOCK).min(BLOCK) as usize;
            let data = self.block(b, night, &mut buf[..len]);
            if data {
                if out.is_empty() {
                    out_start = b * BLOCK;
                }
                out.extend_from_slice(&buf[..len]);
            }
            if (!data || out.len() >= 1 << 20) && !out.is_empty() {
                f.seek(SeekFrom::Start(out_start))?;
                f.write_all(&out)?;
                out.clear();
            }
        }
        if !out.is_empty() {
            f.seek(SeekFrom::Start(out_start))?;
            f.write_all(&out)?;
        }
        f.set_len(self.size)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nights_are_deterministic_and_differ_a_little() {
        let dir = tempfile::tempdir().unwrap();
        let d = SyntheticDisk::new(8 << 20, 1);
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        d.write_night(&a, 0).unwrap();
        d.write_night(&b, 0).unwrap();
        d.write_night(&c, 1).unwrap();
        let (a, b, c) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), std::fs::read(c).unwrap());
        assert_eq!(a.len(), 8 << 20);
        assert_eq!(a, b);
        let differing = a.chunks(4096).zip(c.chunks(4096)).filter(|(x, y)| x != y).count();
        assert!(differing > 0 && differing < 2048 / 5, "{differing} blocks differ");
    }
}
