//! Whole-file digests (md5, sha1, sha256, sha512), each computed on its own
//! thread beside the pipeline so that no serial hash caps throughput.

use anyhow::{bail, Result};
use crossbeam_channel::{bounded, Sender};
use md5::Digest as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

pub const SUPPORTED: &[&str] = &["md5", "sha1", "sha256", "sha512"];

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

trait Hasher: Send {
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

fn hasher_for(name: &str) -> Box<dyn Hasher> {
    match name {
        "md5" => Box::new(md5::Md5::new()),
        "sha1" => Box::new(sha1::Sha1::new()),
        "sha256" => Box::new(sha2::Sha256::new()),
        _ => Box::new(sha2::Sha512::new()),
    }
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
            let mut h = hasher_for(name);
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
}
