//! Criterion benchmarks of the engine's stages and of a whole archive/restore.
//! Run: `cargo bench --bench engine`. Throughput is reported per input byte.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imgarc::chunking::{Gear, GuestChunker};
use imgarc::crypto::keyfile::KdfParams;
use imgarc::index::Index;
use imgarc::repository::config::{ChunkerParams, Config};
use imgarc::repository::pack::{encode_blob, BlobKind};
use imgarc::repository::Repository;
use imgarc::synthetic::SyntheticDisk;
use std::sync::Arc;

fn disk_bytes(size: u64, night: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.raw");
    SyntheticDisk::new(size, 3).write_night(&p, night).unwrap();
    std::fs::read(p).unwrap()
}

fn stages(c: &mut Criterion) {
    let data = disk_bytes(64 << 20, 0);
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    // The keyed table (encrypted repositories) next to FastCDC's own: the same work per byte.
    for (label, gear) in [("", Gear::standard()), (", keyed gear table", Gear::keyed(&[7; 32]))] {
        g.bench_function(format!("chunking (zero detection + FastCDC, 64K avg{label})"), |b| {
            b.iter(|| {
                let mut ch = GuestChunker::new(ChunkerParams::with_average(64 * 1024).unwrap(), 65536, gear.clone());
                let mut n = 0usize;
                for (i, piece) in data.chunks(4 << 20).enumerate() {
                    ch.push((i * (4 << 20)) as u64, piece, &mut |c| n += c.data.len());
                }
                ch.finish(&mut |c| n += c.data.len());
                n
            })
        });
    }
    g.bench_function("blake3 of 64 KiB chunks (1 thread)", |b| {
        b.iter(|| data.chunks(65536).map(|c| blake3::hash(c).as_bytes()[0] as u64).sum::<u64>())
    });
    // Whole-image digests (one thread each in an archive): imgarc's (aws-lc for SHA, md-5) next to
    // RustCrypto's sha2, which src/digest.rs used before.
    for algo in [imgarc::digest::Algo::Sha512, imgarc::digest::Algo::Sha256, imgarc::digest::Algo::Sha1, imgarc::digest::Algo::Md5] {
        g.bench_function(format!("{} of 4 MiB reads (imgarc::digest)", algo.name()), |b| {
            b.iter(|| {
                let mut h = algo.hasher();
                data.chunks(4 << 20).for_each(|c| h.update(c));
                h.hex()
            })
        });
    }
    {
        use sha2::Digest;
        g.bench_function("sha512 of 4 MiB reads (RustCrypto sha2)", |b| {
            b.iter(|| {
                let mut h = sha2::Sha512::new();
                data.chunks(4 << 20).for_each(|c| h.update(c));
                h.finalize()[0]
            })
        });
        g.bench_function("sha256 of 4 MiB reads (RustCrypto sha2)", |b| {
            b.iter(|| {
                let mut h = sha2::Sha256::new();
                data.chunks(4 << 20).for_each(|c| h.update(c));
                h.finalize()[0]
            })
        });
    }
    let sample = &data[..16 << 20];
    g.throughput(Throughput::Bytes(sample.len() as u64));
    for level in [1, 3] {
        g.bench_function(format!("zstd-{level} of 64 KiB chunks (1 thread)"), |b| {
            b.iter(|| sample.chunks(65536).map(|c| encode_blob(BlobKind::Data, c, level).stored.len()).sum::<usize>())
        });
    }
    g.finish();
}

fn whole(c: &mut Criterion) {
    let size = 128u64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let nights: Vec<_> = (0..2)
        .map(|n| {
            let p = dir.path().join(format!("n{n}.raw"));
            SyntheticDisk::new(size, 5).write_night(&p, n).unwrap();
            p
        })
        .collect();
    std::env::set_var("IMGARC_CACHE_DIR", dir.path().join("cache"));
    let mut g = c.benchmark_group("archive");
    g.throughput(Throughput::Bytes(size));
    g.sample_size(10);
    let request = |p: &std::path::Path| imgarc::archive::ArchiveRequest {
        name: "bench".into(),
        tags: vec![],
        source: imgarc::repository::snapshot::Source::File { path: p.display().to_string() },
        digests: vec![],
        expected_digests: Default::default(),
        expected_size: None,
        metadata: Default::default(),
        declared_format: None,
        qcow2_policy: Default::default(),
        project: None,
    };
    let pb = imgarc::progress::none();
    g.bench_function("night 0 into an empty repository", |b| {
        b.iter_batched(
            || {
                let r = dir.path().join(format!("repo-{}", rand::random::<u64>()));
                let repo =
                    Repository::init(Arc::new(imgarc::backend::local::LocalBackend::new(&r)), Config::new(65536, 3).unwrap()).unwrap();
                let index = Index::open(&repo).unwrap();
                (repo, index)
            },
            |(repo, mut index)| {
                imgarc::archive::archive(&repo, &mut index, Box::new(std::fs::File::open(&nights[0]).unwrap()), request(&nights[0]), &pb)
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    // One repository per encryption, side by side in one run (the budget: at most
    // 10 % over `none`). Every iteration opens the repository first, so an encrypted row
    // includes its key unwrap (Argon2id at the default parameters).
    let password = imgarc::secret::Secret::new("bench password".to_string());
    for encryption in ["none", "aes-256-gcm", "xchacha20-poly1305"] {
        let r = dir.path().join(format!("repo-incr-{encryption}"));
        let backend = || -> Arc<dyn imgarc::backend::Backend> { Arc::new(imgarc::backend::local::LocalBackend::new(&r)) };
        let config = Config::new(65536, 3).unwrap();
        let repo = match imgarc::crypto::Cipher::from_name(encryption) {
            None => Repository::init(backend(), config).unwrap(),
            Some(cipher) => {
                let key = imgarc::repository::NewKey { password: &password, kdf: KdfParams::DEFAULT, label: "bench" };
                Repository::init_encrypted(backend(), config.with_encryption(Some(cipher)), &key).unwrap()
            }
        };
        let open = || Repository::open_with(backend(), &password).unwrap();
        let mut index = Index::open(&repo).unwrap();
        let first =
            imgarc::archive::archive(&repo, &mut index, Box::new(std::fs::File::open(&nights[0]).unwrap()), request(&nights[0]), &pb)
                .unwrap();
        let label = if encryption == "none" { String::new() } else { format!(", {encryption}") };
        g.bench_function(format!("night 1 after night 0 (mostly stored){label}"), |b| {
            b.iter(|| {
                let repo = open();
                imgarc::archive::archive(&repo, &mut index, Box::new(std::fs::File::open(&nights[1]).unwrap()), request(&nights[1]), &pb)
                    .unwrap()
            })
        });
        let id = imgarc::ids::Id::from_hex(&first.snapshot).unwrap();
        let snap = index.snapshot(&id).unwrap().unwrap();
        g.bench_function(format!("restore to a sparse file{label}"), |b| {
            b.iter(|| {
                let repo = open();
                imgarc::restore::restore(
                    &repo,
                    &index,
                    &snap,
                    imgarc::restore::Target::File(dir.path().join("out.raw")),
                    &Default::default(),
                    &pb,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages, whole);
criterion_main!(benches);
