//! Digests of a byte stream computed on their own threads while it flows
//! (md5 for Glance's `checksum`, the `os_hash_algo` of the record; the
//! algorithms are `crate::digest`'s), and
//! verification against an image record: a mismatch or a short stream
//! turns the final `read` into an error, so a pipeline that reads to EOF
//! fails before it stores anything.
//!
//! ```no_run
//! # use imgarc::openstack::{glance::GlanceClient, verify::HashingReader};
//! # let g = GlanceClient::standalone("http://127.0.0.1:9292", None)?;
//! let rec = g.image("cirros")?;
//! let mut r = HashingReader::verifying(g.download(&rec)?, &rec);
//! let digests = r.handle();
//! std::io::copy(&mut r, &mut std::io::sink())?;   // Err on mismatch
//! let d = digests.get().unwrap();                    // md5, os_hash, bytes, verified
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::glance::ImageRecord;
use super::Error;
use crossbeam_channel::{bounded, Sender};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A digest algorithm Glance uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algo {
    /// From an `os_hash_algo` value.
    pub fn parse(s: &str) -> Option<Algo> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Some(Algo::Md5),
            "sha1" => Some(Algo::Sha1),
            "sha224" => Some(Algo::Sha224),
            "sha256" => Some(Algo::Sha256),
            "sha384" => Some(Algo::Sha384),
            "sha512" => Some(Algo::Sha512),
            _ => None,
        }
    }
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

type Chunk = Arc<Vec<u8>>;

/// Pass-through reader that hashes on one thread per algorithm.
pub struct HashingReader<R> {
    inner: R,
    workers: Vec<(Algo, Sender<Chunk>, JoinHandle<String>)>,
    expected: Vec<(Algo, String)>,
    expected_size: Option<u64>,
    what: String,
    bytes: u64,
    handle: DigestHandle,
    finished: bool,
    finish_at_size: bool,
}

fn spawn(algo: Algo) -> (Sender<Chunk>, JoinHandle<String>) {
    let (tx, rx) = bounded::<Chunk>(16);
    let mut hasher = crate::digest::hasher_for(algo.name()).expect("every Algo is a supported digest");
    let h = std::thread::Builder::new()
        .name(format!("imgarc-{}", algo.name()))
        .spawn(move || {
            rx.iter().for_each(|c| hasher.update(&c));
            hasher.hex()
        })
        .expect("spawn hasher thread");
    (tx, h)
}

impl<R: Read> HashingReader<R> {
    /// Compute `algos`, verify nothing.
    pub fn new(inner: R, algos: &[Algo]) -> Self {
        let mut v: Vec<Algo> = algos.to_vec();
        v.dedup();
        HashingReader {
            inner,
            workers: v
                .into_iter()
                .map(|a| {
                    let (t, h) = spawn(a);
                    (a, t, h)
                })
                .collect(),
            expected: Vec::new(),
            expected_size: None,
            what: "stream".into(),
            bytes: 0,
            handle: DigestHandle::default(),
            finished: false,
            finish_at_size: false,
        }
    }

    /// Compute and check what the record offers: `checksum` (md5),
    /// `os_hash_algo`/`os_hash_value`, and `size`. With neither digest,
    /// computes md5 + sha512 and reports `verified: false`.
    pub fn verifying(inner: R, rec: &ImageRecord) -> Self {
        let mut expected = Vec::new();
        if let Some(c) = rec.checksum.as_deref().filter(|c| !c.is_empty()) {
            expected.push((Algo::Md5, c.to_ascii_lowercase()));
        }
        if let (Some(a), Some(v)) = (rec.os_hash_algo.as_deref().and_then(Algo::parse), rec.os_hash_value.as_deref()) {
            if !expected.iter().any(|(x, _)| *x == a) {
                expected.push((a, v.to_ascii_lowercase()));
            }
        }
        let mut algos: Vec<Algo> = expected.iter().map(|(a, _)| *a).collect();
        if algos.is_empty() {
            algos = vec![Algo::Md5, Algo::Sha512];
        }
        let mut r = Self::new(inner, &algos);
        r.expected = expected;
        r.expected_size = rec.size;
        r.what = format!("image {}", rec.id);
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
        self.expected_size = Some(n);
        self.finish_at_size = true;
        self
    }

    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        let mut values = Vec::new();
        for (a, tx, h) in self.workers.drain(..) {
            drop(tx);
            values.push((a, h.join().map_err(|_| io::Error::other("hasher thread panicked"))?));
        }
        let mut problems = Vec::new();
        if let Some(s) = self.expected_size {
            if s != self.bytes {
                problems.push(format!("size: expected {s} bytes, got {}", self.bytes));
            }
        }
        for (a, want) in &self.expected {
            let got = values.iter().find(|(x, _)| x == a).map(|(_, v)| v.as_str()).unwrap_or("");
            if got != want {
                problems.push(format!("{}: expected {want}, computed {got}", a.name()));
            }
        }
        let verified = !self.expected.is_empty() && problems.is_empty();
        *self.handle.0.lock().unwrap() = Some(Digests { bytes: self.bytes, values, verified });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(Error::Download {
                id: self.what.trim_start_matches("image ").to_string(),
                message: format!("data does not match the image record: {}", problems.join("; ")),
            }))
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.bytes += n as u64;
        if !self.workers.is_empty() {
            let chunk: Chunk = Arc::new(buf[..n].to_vec());
            for (_, tx, _) in &self.workers {
                let _ = tx.send(chunk.clone());
            }
        }
        if self.finish_at_size && self.expected_size.is_some_and(|s| self.bytes >= s) {
            self.finish()?;
        }
        Ok(n)
    }
}

impl<R> Drop for HashingReader<R> {
    /// A reader dropped before EOF still publishes what it hashed (not verified).
    fn drop(&mut self) {
        if self.finished || self.workers.is_empty() {
            return;
        }
        let mut values = Vec::new();
        for (a, tx, h) in self.workers.drain(..) {
            drop(tx);
            if let Ok(v) = h.join() {
                values.push((a, v));
            }
        }
        let mut slot = self.handle.0.lock().unwrap();
        if slot.is_none() {
            *slot = Some(Digests { bytes: self.bytes, values, verified: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::Digest;

    fn rec(data: &[u8]) -> ImageRecord {
        ImageRecord::from_json(json!({
            "id": "i1", "status": "active", "size": data.len(),
            "checksum": hex::encode(md5::Md5::digest(data)),
            "os_hash_algo": "sha512", "os_hash_value": hex::encode(sha2::Sha512::digest(data)),
        }))
        .unwrap()
    }

    #[test]
    fn verifies_and_detects_tampering() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let r = rec(&data);
        let mut h = HashingReader::verifying(&data[..], &r);
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(d.verified);
        assert_eq!(d.bytes, data.len() as u64);
        assert_eq!(d.get(Algo::Sha512), r.os_hash_value.as_deref());

        let mut bad = data.clone();
        bad[1234] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], &r), &mut io::sink()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("md5: expected") && s.contains("sha512: expected"), "{s}");

        let e = io::copy(&mut HashingReader::verifying(&data[..1000], &r), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("size: expected 300000 bytes, got 1000"), "{e}");
    }

    #[test]
    fn with_size_finishes_without_eof_and_drop_publishes() {
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

    #[test]
    fn sha384_records_are_verified() {
        let data = vec![9u8; 70_000];
        let good = ImageRecord::from_json(json!({
            "id": "fips", "status": "active", "size": data.len(),
            "os_hash_algo": "sha384", "os_hash_value": hex::encode(sha2::Sha384::digest(&data)),
        }))
        .unwrap();
        let mut h = HashingReader::verifying(&data[..], &good);
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert!(d.get().unwrap().verified);
        let mut bad = data.clone();
        bad[7] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], &good), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("sha384: expected"), "{e}");
    }

    #[test]
    fn unverifiable_record_computes_only() {
        let r = ImageRecord::from_json(json!({"id": "old", "status": "active"})).unwrap();
        let mut h = HashingReader::verifying(&b"abc"[..], &r);
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(!d.verified);
        assert_eq!(d.get(Algo::Md5), Some("900150983cd24fb0d6963f7d28e17f72"));
        assert!(d.get(Algo::Sha512).unwrap().starts_with("ddaf35a193617aba"));
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use sha2::Digest;
    #[test]
    #[ignore = "micro benchmark"]
    fn hashing_speed() {
        let data = vec![7u8; 128 << 20];
        for chunk in [16 << 10, 1 << 20] {
            let t = std::time::Instant::now();
            let mut r = HashingReader::new(&data[..], &[Algo::Md5, Algo::Sha512]);
            let mut buf = vec![0u8; chunk];
            while r.read(&mut buf).unwrap() > 0 {}
            println!("chunk {chunk}: {:.0} MB/s", data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        let t = std::time::Instant::now();
        let _ = sha2::Sha512::digest(&data);
        println!("sha512 direct: {:.0} MB/s", data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        let t = std::time::Instant::now();
        let _ = md5::Md5::digest(&data);
        println!("md5 direct: {:.0} MB/s", data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
}
