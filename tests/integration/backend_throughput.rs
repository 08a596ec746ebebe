//! Throughput of 32 MiB objects (pack size) to the real servers vs a local
//! directory, and requests per GiB. Not a pass/fail benchmark, but it does
//! check every byte that comes back. Run explicitly:
//!
//!     . ci/objectstore.sh
//!     cargo test --features remote-tests --test integration backend_throughput:: -- --ignored --nocapture
use crate::support::backend_common;

use backend_common::*;
use imgarc::backend::{Backend, BackendResult, ObjectInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const MIB: usize = 1 << 20;

/// Counts calls (each is one HTTP request for S3/Swift, auth aside).
#[derive(Debug)]
struct Counting {
    inner: Box<dyn Backend>,
    calls: AtomicU64,
}

impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, k: &str, d: &[u8]) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.put(k, d)
    }
    fn get(&self, k: &str) -> BackendResult<Vec<u8>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.get(k)
    }
    fn get_range(&self, k: &str, o: u64, l: u64) -> BackendResult<Vec<u8>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(k, o, l)
    }
    fn size(&self, k: &str) -> BackendResult<u64> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.size(k)
    }
    fn list(&self, p: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.list(p)
    }
    fn delete(&self, k: &str) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(k)
    }
}

/// Minimal local-directory store for the baseline (tmp file + rename, like
/// a local repository would do; no fsync, as page cache is what a local
/// archive run sees too).
#[derive(Debug)]
struct LocalDir(std::path::PathBuf);

impl Backend for LocalDir {
    fn location(&self) -> String {
        self.0.display().to_string()
    }
    fn put(&self, k: &str, d: &[u8]) -> BackendResult<()> {
        let p = self.0.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let t = p.with_extension("tmp");
        std::fs::write(&t, d).unwrap();
        std::fs::rename(&t, &p).unwrap();
        Ok(())
    }
    fn get(&self, k: &str) -> BackendResult<Vec<u8>> {
        Ok(std::fs::read(self.0.join(k)).unwrap())
    }
    fn get_range(&self, k: &str, o: u64, l: u64) -> BackendResult<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(self.0.join(k)).unwrap();
        f.seek(std::io::SeekFrom::Start(o)).unwrap();
        let mut v = vec![0; l as usize];
        f.read_exact(&mut v).unwrap();
        Ok(v)
    }
    fn size(&self, k: &str) -> BackendResult<u64> {
        Ok(std::fs::metadata(self.0.join(k)).unwrap().len())
    }
    fn list(&self, _: &str) -> BackendResult<Vec<ObjectInfo>> {
        Ok(vec![])
    }
    fn delete(&self, k: &str) -> BackendResult<()> {
        let _ = std::fs::remove_file(self.0.join(k));
        Ok(())
    }
}

fn measure(name: &str, b: Box<dyn Backend>, objects: usize, threads: usize) {
    let b = Counting { inner: b, calls: AtomicU64::new(0) };
    let data: Vec<Vec<u8>> = (0..objects).map(|i| crate::support::bytes(32 * MIB, i as u64 + 7, false)).collect();
    let keys: Vec<String> = (0..objects).map(|i| format!("data/{:02x}/pack-{i}", i)).collect();
    let total = (objects * 32) as f64;
    let run = |f: &(dyn Fn(usize) + Sync)| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..threads {
                s.spawn(move || {
                    for i in (th..objects).step_by(threads) {
                        f(i)
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    let put_s = run(&|i| b.put(&keys[i], &data[i]).unwrap());
    let put_calls = b.calls.load(Ordering::Relaxed);
    let get_s = run(&|i| assert!(b.get(&keys[i]).unwrap() == data[i], "{name}: {} corrupted", keys[i]));
    // restore-style: 4 MiB ranged reads of every pack
    let range_s = run(&|i| {
        for off in (0..32 * MIB).step_by(4 * MIB) {
            assert!(b.get_range(&keys[i], off as u64, (4 * MIB) as u64).unwrap() == data[i][off..off + 4 * MIB]);
        }
    });
    for k in &keys {
        b.delete(k).unwrap();
    }
    println!(
        "THROUGHPUT {name:<12} {objects} x 32 MiB, {threads} threads: PUT {:7.1} MiB/s  GET {:7.1} MiB/s  \
         4MiB-range GET {:7.1} MiB/s  PUT requests/GiB {:.0}",
        total / put_s,
        total / get_s,
        total / range_s,
        put_calls as f64 / (total / 1024.0)
    );
}

#[test]
#[ignore]
fn throughput_32mib() {
    let n: usize = std::env::var("IMGARC_BENCH_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    measure("local-dir", Box::new(LocalDir(dir.path().to_path_buf())), n, 2);
    measure("rgw", s3_backend(&rgw(), &unique("bench"), 1000), n, 2);
    measure("swift", swift_backend(&unique("bench"), 10000), n, 2);
    // the client-side MD5 for Swift's ETag check is slow in debug builds
    let mut nb = swift_backend_with(std::sync::Arc::new(keystone(true)), &unique("bench"), 10000);
    nb.set_put_etag(false);
    measure("swift-noetag", Box::new(nb), n, 2);
    measure("swift-s3api", s3_backend(&swift_s3(), &unique("bench"), 1000), n, 2);
}
