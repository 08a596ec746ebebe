//! Throughput of the client against the real noauth Glance, for comparison
//! with curl (see docs/openstack.md). Not part of the normal run:
//! `IMGARC_BENCH_MIB=256 cargo test --release --features openstack-tests --test integration openstack_bench:: -- --ignored --nocapture`
use crate::support::openstack as support;

use serde_json::json;
use std::io::Read;
use std::time::Instant;
use support::*;

#[test]
#[ignore = "benchmark; run explicitly with --ignored"]
fn glance_throughput() {
    let _serial = serial();
    let mib: usize = std::env::var("IMGARC_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let g = noauth();
    let data = crate::support::bytes(mib * 1024 * 1024, 99, false);
    let rec = g.create(&meta(&unique("bench"), json!({}))).unwrap();
    let _c = Cleanup(g.clone(), rec.id.clone());
    let t = Instant::now();
    g.upload(&rec.id, std::io::Cursor::new(data.clone()), Some(data.len() as u64)).unwrap();
    let up = t.elapsed().as_secs_f64();
    let rec = g.wait_active(&rec.id, std::time::Duration::from_secs(120)).unwrap();
    assert_eq!(rec.os_hash_value.clone().unwrap(), sha512_hex(&data));
    drop(data);
    for _ in 0..2 {
        let t = Instant::now();
        let mut dl = g.download(&rec).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = dl.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        let down = t.elapsed().as_secs_f64();
        assert_eq!(n, (mib * 1024 * 1024) as u64);
        println!(
            "glance_throughput: {mib} MiB  upload {:.1} MB/s ({up:.2}s)  download {:.1} MB/s ({down:.2}s)  [{} build]",
            n as f64 / up / 1e6,
            n as f64 / down / 1e6,
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
    }
    // with the record's strongest digest (sha512) verified on its own thread (what `archive` does)
    let t = Instant::now();
    let mut r = imgarc::digest::HashingReader::verifying(g.download(&rec).unwrap(), rec.expected(&[]));
    let h = r.handle();
    let mut buf = vec![0u8; 1 << 20];
    while r.read(&mut buf).unwrap() > 0 {}
    let el = t.elapsed().as_secs_f64();
    assert!(h.get().unwrap().verified);
    println!("glance_throughput: download + sha512 verify {:.1} MB/s ({el:.2}s)", (mib * 1024 * 1024) as f64 / el / 1e6);
}
