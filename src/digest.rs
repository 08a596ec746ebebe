//! Whole-file digests (md5, sha1 and the SHA-2 family: every `os_hash_algo`
//! a Glance can be configured with except sha3/blake2), each computed on its
//! own thread beside the pipeline so that no serial hash caps throughput.
//! This module owns the algorithms: `openstack::verify` hashes with them too.

use anyhow::{bail, Result};
use crossbeam_channel::{bounded, Sender};
use md5::Digest as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

pub const SUPPORTED: &[&str] = &["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

/// A piece of the byte stream: shared data, or a run of zeros (holes on restore).
#[derive(Clone)]
pub enum Piece {
    Data(Arc<Vec<u8>>, std::ops::Range<usize>),
    Zeros(u64),
}

/// Parses `md5,sha512` into canonical names, refusing unknown ones.
pub fn parse_list(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in s.split(',').map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()) {
        if !SUPPORTED.contains(&name.as_str()) {
            bail!("unknown digest {name:?} (supported: {})", SUPPORTED.join(", "));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// One running digest.
pub trait Hasher: Send {
    fn update(&mut self, data: &[u8]);
    fn hex(self: Box<Self>) -> String;
}

impl<D: md5::Digest + Send> Hasher for D {
    fn update(&mut self, data: &[u8]) {
        md5::Digest::update(self, data)
    }
    fn hex(self: Box<Self>) -> String {
        hex::encode(self.finalize())
    }
}

/// A hasher for one of [`SUPPORTED`] (lowercase), or `None` for any other name.
pub fn hasher_for(name: &str) -> Option<Box<dyn Hasher>> {
    Some(match name {
        "md5" => Box::new(md5::Md5::new()),
        "sha1" => Box::new(sha1::Sha1::new()),
        "sha224" => Box::new(sha2::Sha224::new()),
        "sha256" => Box::new(sha2::Sha256::new()),
        "sha384" => Box::new(sha2::Sha384::new()),
        "sha512" => Box::new(sha2::Sha512::new()),
        _ => return None,
    })
}

/// Digest threads fed with pieces of the stream in order.
pub struct Digesters {
    senders: Vec<Sender<Piece>>,
    threads: Vec<(String, JoinHandle<String>)>,
}

impl Digesters {
    pub fn start(names: &[String]) -> Digesters {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for name in names {
            let (tx, rx) = bounded::<Piece>(8);
            let mut h = hasher_for(name).unwrap_or_else(|| panic!("digest {name:?} is not one of {SUPPORTED:?}"));
            let t = std::thread::Builder::new()
                .name(format!("digest-{name}"))
                .spawn(move || {
                    let zeros = vec![0u8; 1 << 20];
                    for p in rx {
                        match p {
                            Piece::Data(d, r) => h.update(&d[r]),
                            Piece::Zeros(mut n) => {
                                while n > 0 {
                                    let k = n.min(zeros.len() as u64) as usize;
                                    h.update(&zeros[..k]);
                                    n -= k as u64;
                                }
                            }
                        }
                    }
                    h.hex()
                })
                .expect("spawn digest thread");
            senders.push(tx);
            threads.push((name.clone(), t));
        }
        Digesters { senders, threads }
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    pub fn feed(&self, piece: Piece) {
        for s in &self.senders {
            // A send fails only if the thread died, which `finish` reports.
            let _ = s.send(piece.clone());
        }
    }

    pub fn finish(self) -> Result<BTreeMap<String, String>> {
        drop(self.senders);
        let mut out = BTreeMap::new();
        for (name, t) in self.threads {
            match t.join() {
                Ok(hex) => {
                    out.insert(name, hex);
                }
                Err(_) => bail!("the {name} digest thread failed"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values_with_zero_runs() {
        let d = Digesters::start(&parse_list("md5,sha256").unwrap());
        let data = Arc::new(b"abc".to_vec());
        d.feed(Piece::Data(data, 0..3));
        let out = d.finish().unwrap();
        assert_eq!(out["md5"], "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(out["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let d = Digesters::start(&["md5".to_string()]);
        d.feed(Piece::Zeros(3));
        let a = d.finish().unwrap();
        let d = Digesters::start(&["md5".to_string()]);
        d.feed(Piece::Data(Arc::new(vec![0, 0, 0]), 0..3));
        assert_eq!(a, d.finish().unwrap());
        assert!(parse_list("md5,crc").is_err());
    }

    #[test]
    fn every_supported_algorithm_has_its_standard_value() {
        // FIPS 180-4 / RFC 1321 test vectors for "abc".
        let known = [
            ("md5", "900150983cd24fb0d6963f7d28e17f72"),
            ("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            ("sha224", "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"),
            ("sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("sha384", "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
            ("sha512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ];
        assert_eq!(known.map(|(n, _)| n), SUPPORTED);
        let names = parse_list(&SUPPORTED.join(",")).unwrap();
        let d = Digesters::start(&names);
        d.feed(Piece::Data(Arc::new(b"abc".to_vec()), 0..3));
        let out = d.finish().unwrap();
        for (name, hex) in known {
            assert_eq!(out[name], hex, "{name}");
        }
        assert!(hasher_for("sha3_512").is_none());
    }
}
