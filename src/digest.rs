//! The one digest engine: whole-stream digests (md5, sha1 and the SHA-2
//! family — every `os_hash_algo` a Glance can be configured with except
//! sha3/blake2), each computed on its own thread beside the pipeline so
//! that no serial hash caps throughput. SHA-1 and SHA-2 are aws-lc-rs's
//! (assembly, as OpenSSL's; the TLS stack links it anyway), md5 the `md-5` crate's.
//!
//! * [`Algo`] names the algorithms (`--digest` values and Glance's
//!   `os_hash_algo` map onto it); [`SUPPORTED`] lists their names.
//! * [`Digesters`] hash a stream of [`Piece`]s (data or runs of zeros): the
//!   archive and restore pipelines feed it.
//! * [`HashingReader`] wraps any `Read` and hashes what passes through, with
//!   optional verification against [`Expected`] digests (a Glance image
//!   record supplies them): a mismatch or a short stream turns the final
//!   `read` into an error, so a pipeline that reads to EOF fails before it
//!   stores anything.
//!
//! ```
//! use imgarc::digest::{Algo, HashingReader};
//! let mut r = HashingReader::new(&b"abc"[..], &[Algo::Md5]);
//! let digests = r.handle();
//! std::io::copy(&mut r, &mut std::io::sink()).unwrap();
//! assert_eq!(digests.get().unwrap().get(Algo::Md5), Some("900150983cd24fb0d6963f7d28e17f72"));
//! ```

use anyhow::{bail, Result};
use crossbeam_channel::{bounded, Sender};
use md5::Digest as _;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algo {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algo {
    /// Every algorithm, in the order of [`SUPPORTED`].
    pub const ALL: [Algo; 6] = [Algo::Md5, Algo::Sha1, Algo::Sha224, Algo::Sha256, Algo::Sha384, Algo::Sha512];

    /// From a `--digest` or `os_hash_algo` value (any case).
    pub fn parse(s: &str) -> Option<Algo> {
        let s = s.trim().to_ascii_lowercase();
        Algo::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The canonical lowercase name (`sha512`).
    pub fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha1 => "sha1",
            Algo::Sha224 => "sha224",
            Algo::Sha256 => "sha256",
            Algo::Sha384 => "sha384",
            Algo::Sha512 => "sha512",
        }
    }

    /// A running hasher of this algorithm.
    pub fn hasher(self) -> Box<dyn Hasher> {
        use aws_lc_rs::digest as lc;
        let sha = |a: &'static lc::Algorithm| -> Box<dyn Hasher> { Box::new(Sha(lc::Context::new(a))) };
        match self {
            Algo::Md5 => Box::new(md5::Md5::new()),
            Algo::Sha1 => sha(&lc::SHA1_FOR_LEGACY_USE_ONLY),
            Algo::Sha224 => sha(&lc::SHA224),
            Algo::Sha256 => sha(&lc::SHA256),
            Algo::Sha384 => sha(&lc::SHA384),
            Algo::Sha512 => sha(&lc::SHA512),
        }
    }

    /// The strongest of `algos` (SHA-512 over SHA-384 … over SHA-1 over md5), if any.
    pub fn strongest(algos: impl IntoIterator<Item = Algo>) -> Option<Algo> {
        // The variants are declared weakest first.
        algos.into_iter().max()
    }
}

/// The names of [`Algo::ALL`].
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
        if Algo::parse(&name).is_none() {
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

impl Hasher for md5::Md5 {
    fn update(&mut self, data: &[u8]) {
        md5::Digest::update(self, data)
    }
    fn hex(self: Box<Self>) -> String {
        hex::encode(self.finalize())
    }
}

/// SHA-1 or SHA-2, by aws-lc.
struct Sha(aws_lc_rs::digest::Context);

impl Hasher for Sha {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    fn hex(self: Box<Self>) -> String {
        hex::encode(self.0.finish().as_ref())
    }
}

/// A hasher for one of [`SUPPORTED`] (lowercase), or `None` for any other name.
pub fn hasher_for(name: &str) -> Option<Box<dyn Hasher>> {
    Algo::parse(name).map(Algo::hasher)
}

/// Lowercase hex MD5 of `data` (Swift's PUT `ETag`).
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

/// Digest threads fed with pieces of the stream in order.
pub struct Digesters {
    senders: Vec<Sender<Piece>>,
    threads: Vec<(Algo, JoinHandle<String>)>,
}

impl Digesters {
    /// One thread per named algorithm; the names come from [`parse_list`].
    pub fn start(names: &[String]) -> Digesters {
        let algos: Vec<Algo> =
            names.iter().map(|n| Algo::parse(n).unwrap_or_else(|| panic!("digest {n:?} is not one of {SUPPORTED:?}"))).collect();
        Digesters::start_algos(&algos)
    }

    /// One thread per algorithm (duplicates hashed once).
    pub fn start_algos(algos: &[Algo]) -> Digesters {
        let mut senders = Vec::new();
        let mut threads: Vec<(Algo, JoinHandle<String>)> = Vec::new();
        for &algo in algos {
            if threads.iter().any(|(a, _)| *a == algo) {
                continue;
            }
            let (tx, rx) = bounded::<Piece>(16);
            let mut h = algo.hasher();
            let t = std::thread::Builder::new()
                .name(format!("digest-{}", algo.name()))
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
            threads.push((algo, t));
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

    /// The hex digests by algorithm, in the order they were started.
    pub fn finish_algos(self) -> Result<Vec<(Algo, String)>> {
        drop(self.senders);
        let mut out = Vec::new();
        for (algo, t) in self.threads {
            match t.join() {
                Ok(hex) => out.push((algo, hex)),
                Err(_) => bail!("the {} digest thread failed", algo.name()),
            }
        }
        Ok(out)
    }

    /// The hex digests by name.
    pub fn finish(self) -> Result<BTreeMap<String, String>> {
        Ok(self.finish_algos()?.into_iter().map(|(a, h)| (a.name().to_string(), h)).collect())
    }
}

/// What was computed, and how it compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub bytes: u64,
    /// (algorithm, lowercase hex) for every algorithm computed.
    pub values: Vec<(Algo, String)>,
    /// True when at least one expected digest was given and all matched.
    pub verified: bool,
}

impl Digests {
    pub fn get(&self, a: Algo) -> Option<&str> {
        self.values.iter().find(|(x, _)| *x == a).map(|(_, v)| v.as_str())
    }
}

/// What a stream must hash to, and what to call it in an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// (algorithm, lowercase hex); empty: nothing to verify.
    pub digests: Vec<(Algo, String)>,
    pub size: Option<u64>,
    /// Prefix of the error message, e.g. `download of image 1234`.
    pub what: String,
    /// What the data is compared with, e.g. `the image record`.
    pub against: String,
}

/// Data that did not hash to what was [`Expected`] (inside the `io::Error`
/// the last `read` returns). The message names every mismatch.
#[derive(Debug, thiserror::Error)]
#[error("{what}: data does not match {against}: {problems}")]
pub struct Mismatch {
    pub what: String,
    pub against: String,
    pub problems: String,
}

/// Shared view of the result, usable after the reader was moved away
/// (e.g. into `GlanceClient::upload`).
#[derive(Debug, Clone, Default)]
pub struct DigestHandle(Arc<Mutex<Option<Digests>>>);

impl DigestHandle {
    /// The digests once the stream reached EOF (and verified, if asked).
    pub fn get(&self) -> Option<Digests> {
        self.0.lock().unwrap().clone()
    }
}

/// Pass-through reader that hashes with [`Digesters`] (one thread per algorithm).
pub struct HashingReader<R> {
    inner: R,
    digesters: Option<Digesters>,
    expected: Expected,
    bytes: u64,
    handle: DigestHandle,
    finish_at_size: bool,
}

impl<R: Read> HashingReader<R> {
    /// Compute `algos`, verify nothing.
    pub fn new(inner: R, algos: &[Algo]) -> Self {
        HashingReader {
            inner,
            digesters: Some(Digesters::start_algos(algos)),
            expected: Expected { what: "stream".into(), ..Default::default() },
            bytes: 0,
            handle: DigestHandle::default(),
            finish_at_size: false,
        }
    }

    /// Compute and check `expected` (its digests and size). With no expected
    /// digest, computes md5 + sha512 and reports `verified: false`.
    pub fn verifying(inner: R, expected: Expected) -> Self {
        let mut algos: Vec<Algo> = expected.digests.iter().map(|(a, _)| *a).collect();
        if algos.is_empty() {
            algos = vec![Algo::Md5, Algo::Sha512];
        }
        let mut r = Self::new(inner, &algos);
        r.expected = expected;
        r
    }

    pub fn handle(&self) -> DigestHandle {
        self.handle.clone()
    }

    /// The stream is exactly `n` bytes: finish (and publish the digests)
    /// as soon as `n` bytes went through, without waiting for an EOF read.
    /// Needed when the consumer stops at a known length, as an HTTP upload
    /// with `Content-Length` does.
    pub fn with_size(mut self, n: u64) -> Self {
        self.expected.size = Some(n);
        self.finish_at_size = true;
        self
    }

    fn finish(&mut self) -> io::Result<()> {
        let Some(d) = self.digesters.take() else { return Ok(()) };
        let values = d.finish_algos().map_err(|e| io::Error::other(e.to_string()))?;
        let mut problems = Vec::new();
        if let Some(s) = self.expected.size {
            if s != self.bytes {
                problems.push(format!("size: expected {s} bytes, got {}", self.bytes));
            }
        }
        for (a, want) in &self.expected.digests {
            let got = values.iter().find(|(x, _)| x == a).map(|(_, v)| v.as_str()).unwrap_or("");
            if got != want {
                problems.push(format!("{}: expected {want}, computed {got}", a.name()));
            }
        }
        let verified = !self.expected.digests.is_empty() && problems.is_empty();
        *self.handle.0.lock().unwrap() = Some(Digests { bytes: self.bytes, values, verified });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(Mismatch {
                what: self.expected.what.clone(),
                against: self.expected.against.clone(),
                problems: problems.join("; "),
            }))
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.digesters.is_none() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.bytes += n as u64;
        if let Some(d) = &self.digesters {
            if !d.is_empty() {
                d.feed(Piece::Data(Arc::new(buf[..n].to_vec()), 0..n));
            }
        }
        if self.finish_at_size && self.expected.size.is_some_and(|s| self.bytes >= s) {
            self.finish()?;
        }
        Ok(n)
    }
}

impl<R> Drop for HashingReader<R> {
    /// A reader dropped before EOF still publishes what it hashed (not verified).
    fn drop(&mut self) {
        let Some(d) = self.digesters.take() else { return };
        if d.is_empty() {
            return;
        }
        let values = d.finish_algos().unwrap_or_default();
        let mut slot = self.handle.0.lock().unwrap();
        if slot.is_none() {
            *slot = Some(Digests { bytes: self.bytes, values, verified: false });
        }
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

    /// aws-lc's streaming hashers agree with an independent implementation (RustCrypto's,
    /// a dev-dependency) on data fed in uneven pieces across block boundaries.
    #[test]
    fn aws_lc_hashers_agree_with_rustcrypto_across_pieces() {
        use sha2::Digest;
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let d = Digesters::start_algos(&Algo::ALL);
        let shared = Arc::new(data.clone());
        let mut at = 0;
        for (i, len) in [1usize, 127, 128, 129, 4096, 65_537, 333_333].iter().cycle().enumerate() {
            if at >= data.len() {
                break;
            }
            let end = (at + len).min(data.len());
            if i == 3 {
                d.feed(Piece::Zeros(0));
            }
            d.feed(Piece::Data(shared.clone(), at..end));
            at = end;
        }
        let out: BTreeMap<Algo, String> = d.finish_algos().unwrap().into_iter().collect();
        assert_eq!(out[&Algo::Sha224], hex::encode(sha2::Sha224::digest(&data)));
        assert_eq!(out[&Algo::Sha256], hex::encode(sha2::Sha256::digest(&data)));
        assert_eq!(out[&Algo::Sha384], hex::encode(sha2::Sha384::digest(&data)));
        assert_eq!(out[&Algo::Sha512], hex::encode(sha2::Sha512::digest(&data)));
        assert_eq!(out[&Algo::Md5], hex::encode(md5::Md5::digest(&data)));
        let hex_of = |algo: Algo, data: &[u8]| {
            let mut h = algo.hasher();
            h.update(data);
            h.hex()
        };
        assert_eq!(hex_of(Algo::Sha512, &data), out[&Algo::Sha512]);
        assert_eq!(hex_of(Algo::Sha1, b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn strongest_prefers_sha2_over_sha1_over_md5() {
        assert_eq!(Algo::strongest([Algo::Md5, Algo::Sha512, Algo::Sha256]), Some(Algo::Sha512));
        assert_eq!(Algo::strongest([Algo::Md5, Algo::Sha1]), Some(Algo::Sha1));
        assert_eq!(Algo::strongest([Algo::Sha224, Algo::Sha384]), Some(Algo::Sha384));
        assert_eq!(Algo::strongest([]), None);
    }

    #[test]
    fn algo_names_round_trip() {
        assert_eq!(Algo::ALL.map(Algo::name), SUPPORTED);
        assert_eq!(Algo::parse(" SHA384 "), Some(Algo::Sha384));
        assert_eq!(Algo::parse("sha3_512"), None);
    }

    #[test]
    fn verification_names_every_mismatch() {
        use sha2::Digest;
        let data = vec![9u8; 70_000];
        let expected = Expected {
            digests: vec![(Algo::Sha384, hex::encode(sha2::Sha384::digest(&data)))],
            size: Some(70_000),
            what: "download of image fips".into(),
            against: "the image record".into(),
        };
        let mut h = HashingReader::verifying(&data[..], expected.clone());
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert!(d.get().unwrap().verified);
        let e = io::copy(&mut HashingReader::verifying(&data[..1000], expected), &mut io::sink()).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("download of image fips: data does not match the image record: "), "{s}");
        assert!(s.contains("size: expected 70000 bytes, got 1000") && s.contains("sha384: expected"), "{s}");
    }

    #[test]
    fn with_size_finishes_without_eof_and_drop_publishes() {
        use sha2::Digest;
        let data = vec![5u8; 100_000];
        let mut r = HashingReader::new(&data[..], &[Algo::Md5]).with_size(100_000);
        let h = r.handle();
        let mut buf = vec![0u8; 60_000];
        r.read_exact(&mut buf).unwrap();
        assert!(h.get().is_none());
        r.read_exact(&mut buf[..40_000]).unwrap();
        assert_eq!(h.get().unwrap().bytes, 100_000);
        assert_eq!(h.get().unwrap().get(Algo::Md5), Some(hex::encode(md5::Md5::digest(&data)).as_str()));
        // dropped half-way: digests of what went through, not verified
        let mut r = HashingReader::new(&data[..], &[Algo::Sha256]);
        let h = r.handle();
        r.read_exact(&mut buf[..1000]).unwrap();
        drop(r);
        let d = h.get().unwrap();
        assert_eq!((d.bytes, d.verified), (1000, false));
        assert_eq!(d.get(Algo::Sha256), Some(hex::encode(sha2::Sha256::digest(&data[..1000])).as_str()));
    }
}
