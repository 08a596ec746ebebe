//! Stable replay of the fuzz corpora: every file under `fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same target function the libFuzzer binary
//! runs (fuzz/src/lib.rs, included by path), so a fixed crash that comes back fails CI
//! without nightly or cargo-fuzz. Regressions are crash inputs found by fuzzing.

#[allow(dead_code)]
use crate::fuzz_targets;
use crate::support;

use std::path::Path;

#[test]
fn seeds_and_regressions_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, run) in fuzz_targets::TARGETS {
        let mut files = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    panic!("fuzz target {name} panics on {}", path.display());
                }
                files += 1;
            }
        }
        assert!(root.join("seeds").join(name).is_dir(), "fuzz target {name} has no committed seed corpus");
        eprintln!("fuzz target {name}: {files} inputs replayed");
        replayed += files;
    }
    assert!(replayed > 0);
}

/// Regenerates the committed seed corpora of the repository-object and header targets from
/// real objects the code writes (the qcow2 decompose/recipe seeds come from
/// `qcow2_hostile::write_fuzz_seeds`): `cargo test --test integration fuzz_replay::write_fuzz_seeds -- --ignored`.
/// Needs qemu-img for the header and detection seeds. Every seed stays under 64 KiB.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    use imgarc::ids::Id;
    use imgarc::repository::{extents, lock::LockInfo, marks, upstream::DeletedUpstream};
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let save = |target: &str, name: &str, data: &[u8]| {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &data[..data.len().min(64 << 10)]).unwrap();
    };

    // A real repository: config, index objects, packs and snapshots as `archive` writes them.
    let env = support::Env::init_unencrypted("64K");
    let input = env.path("input.bin");
    let mut data = support::bytes(96 << 10, 7, true);
    data.extend(vec![0u8; 64 << 10]);
    std::fs::write(&input, &data).unwrap();
    env.archive(&input, "seed");
    for (dir, target) in [("snapshots", "snapshot"), ("index", "index_object"), ("data", "pack")] {
        let mut files = Vec::new();
        collect(&env.repo.join(dir), &mut files);
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).unwrap();
            assert!(bytes.len() <= 64 << 10, "{} is too large for a seed", f.display());
            save(target, &format!("archive-{i}"), &bytes);
            if target == "index_object" {
                // The target also compresses its input: the JSON itself reaches the JSON layer.
                save(target, &format!("archive-{i}.json"), &zstd::decode_all(&bytes[..]).unwrap());
            }
        }
    }
    save("config", "archive", &std::fs::read(env.repo.join("config")).unwrap());

    // Extent lists: the target's 16-byte prefix (stream size, end of the previous tree), then records.
    let id = |b: u8| Id::of(&[b]);
    let list = [
        extents::Extent { offset: 0, len: 65536, id: id(1) },
        extents::Extent { offset: 65536, len: 4096, id: id(2) },
        extents::Extent { offset: 1 << 20, len: 512, id: id(3) },
    ];
    for (name, size, after, n) in [("three", 2u64 << 20, 0u64, 3), ("one-after", 1 << 30, 0, 1), ("empty", 0, 0, 0)] {
        let mut b = size.to_le_bytes().to_vec();
        b.extend_from_slice(&after.to_le_bytes());
        b.extend(extents::encode(&list[..n]));
        save("extents", name, &b);
    }

    // Lock, prune-mark and deleted-upstream objects as their writers serialize them.
    let lock = LockInfo {
        hostname: "seed-host".into(),
        pid: 4242,
        time: "2026-01-01T00:00:00Z".into(),
        expires: "2026-01-01T00:30:00Z".into(),
        exclusive: true,
        purpose: "prune".into(),
        since: Some("2026-01-01T00:00:00Z".into()),
        process: Some(imgarc::repository::lock::ProcessIdentity {
            boot_id: "0f3c9a2e-5b1d-4c7e-9a8b-2d6e4f1a3c5b".into(),
            pid_namespace: "pid:[4026531836]".into(),
            start_ticks: 123456,
        }),
        lease: Some("5b1d4c7e9a8b2d6e4f1a3c5b0f3c9a2e".into()),
        releases: None,
        shard: None,
    };
    save("objects", "lock", &serde_json::to_vec_pretty(&lock).unwrap());
    let mark = marks::PruneMark {
        version: marks::MARK_VERSION,
        created: "2026-01-01T00:00:00Z".into(),
        hostname: "seed-host".into(),
        packs: vec![marks::MarkedPack { id: id(9), size: 1234, reason: "unused".into() }],
    };
    save("objects", "mark", &serde_json::to_vec_pretty(&mark).unwrap());
    let gone = DeletedUpstream {
        image_id: "0b7c4f36-2a5e-4a3b-9d1e-3c0f6f1d2a11".into(),
        name: "cirros".into(),
        cloud: Some("devstack".into()),
        detected: "2026-01-01T00:00:00Z".into(),
    };
    save("objects", "upstream", &serde_json::to_vec_pretty(&gone).unwrap());

    // QCOW2 headers (cluster 0 of real qemu-img images, with extensions) and format heads.
    let t = tempfile::tempdir().unwrap();
    let img = |name: &str, args: &[&str]| {
        let p = t.path().join(name);
        let mut a = vec!["create", "-q"];
        a.extend_from_slice(args);
        a.push(p.to_str().unwrap());
        a.push("1M");
        let ok = std::process::Command::new("qemu-img").args(&a).status().is_ok_and(|s| s.success());
        ok.then(|| std::fs::read(&p).unwrap())
    };
    let base = t.path().join("base.qcow2");
    let qcow2_variants: &[(&str, &[&str])] = &[
        ("v3", &["-f", "qcow2"]),
        ("v2", &["-f", "qcow2", "-o", "compat=0.10"]),
        ("c512", &["-f", "qcow2", "-o", "cluster_size=512"]),
        ("c2m", &["-f", "qcow2", "-o", "cluster_size=2M"]),
        ("extl2", &["-f", "qcow2", "-o", "extended_l2=on"]),
        ("zstd", &["-f", "qcow2", "-o", "compression_type=zstd"]),
        ("rb64", &["-f", "qcow2", "-o", "refcount_bits=64"]),
        ("lazy", &["-f", "qcow2", "-o", "lazy_refcounts=on"]),
        ("datafile", &["-f", "qcow2", "-o", "data_file=/tmp/imgarc-seed-data.raw"]),
        ("luks", &["-f", "qcow2", "--object", "secret,id=s0,data=seed", "-o", "encrypt.format=luks,encrypt.key-secret=s0"]),
    ];
    let mut made = 0;
    for (name, args) in qcow2_variants {
        if let Some(b) = img(&format!("{name}.qcow2"), args) {
            // The header, its extensions and a backing file name all sit in the first 4 KiB.
            save("qcow2_header", name, &b[..b.len().min(4096)]);
            if *name == "v3" {
                std::fs::write(&base, &b).unwrap();
            }
            made += 1;
        }
    }
    let _ = std::fs::remove_file("/tmp/imgarc-seed-data.raw");
    if let Some(b) = img("overlay.qcow2", &["-f", "qcow2", "-b", base.to_str().unwrap(), "-F", "qcow2"]) {
        save("qcow2_header", "backing", &b[..b.len().min(4096)]);
    }
    for fmt in ["qcow2", "vmdk", "vpc", "vdi", "vhdx", "qed", "raw"] {
        if let Some(b) = img(&format!("d.{fmt}"), &["-f", fmt]) {
            save("detect", fmt, &b[..b.len().min(8 << 10)]);
        }
    }
    assert!(made > 0, "qemu-img is needed for the qcow2 header seeds");
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
    out.sort();
}
