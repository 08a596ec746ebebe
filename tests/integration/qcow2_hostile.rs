//! Hostile and malformed inputs: every crafted image is refused with a clear message or
//! handled (opaque + flagged) — never a panic — and whatever is accepted still rebuilds
//! byte-exactly. Also format detection and the declared-format rule (OSSA-2024-002), and a
//! deterministic mutation run over seed images (what CI runs instead of libFuzzer).
use crate::support::qcow2_util as util;
use imgarc::format::detect::{check_declared, decide, detect, FormatError, FormatKind};
use imgarc::format::qcow2::{self, Policy, Qcow2Error};
use std::path::{Path, PathBuf};
use util::*;

/// 1 MiB disk, 64 KiB clusters: header@0, reftable@0x10000, refblock@0x20000, L1@0x30000,
/// L2@0x40000, data from 0x50000.
fn base(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let r = dir.join("b.raw");
    make_raw(&r, 1 << 20, 42);
    let p = convert(dir, &r, "b.qcow2", extra);
    let img = std::fs::read(&p).unwrap();
    assert_eq!(u64::from_be_bytes(img[40..48].try_into().unwrap()), 0x30000, "unexpected qemu-img layout");
    img
}

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

fn dec(img: &[u8], policy: &Policy, with_len: bool) -> Result<(qcow2::Decomposed, MemSink), Qcow2Error> {
    let vs = if img.len() >= 32 { vsize_of(img).min(64 << 20) } else { 0 };
    let mut sink = MemSink::new(vs);
    qcow2::decompose(img, with_len.then_some(img.len() as u64), policy, &mut sink).map(|d| (d, sink))
}

/// Accepted-but-corrupt images: opaque with a reason, flagged, and still byte-exact.
fn expect_opaque(img: &[u8], needle: &str) {
    for with_len in [true, false] {
        let (d, mut sink) = dec(img, &Policy::default(), with_len).unwrap_or_else(|e| panic!("expected opaque ({needle}), got error {e}"));
        let reason = d.opaque.clone().unwrap_or_else(|| panic!("expected opaque ({needle}), got a clean decomposition"));
        assert!(reason.contains(needle), "reason {reason:?} does not mention {needle:?}");
        assert!(qcow2::decode_recipe(&d.recipe).unwrap().flags & qcow2::FLAG_OPAQUE != 0);
        assert_rebuild(img, &d, &mut sink);
    }
}

fn expect_err(img: &[u8], needle: &str) -> String {
    let e = dec(img, &Policy::default(), true).err().unwrap_or_else(|| panic!("expected refusal mentioning {needle:?}"));
    let m = e.to_string();
    assert!(m.contains(needle), "message {m:?} does not mention {needle:?}");
    m
}

#[test]
fn backing_file_host_path_refused() {
    let t = tmp();
    let mut img = base(t.path(), &[]);
    let name = b"/etc/passwd";
    img[0x1000..0x1000 + name.len()].copy_from_slice(name);
    put64(&mut img, 8, 0x1000);
    put32(&mut img, 16, name.len() as u32);
    let m = expect_err(&img, "/etc/passwd");
    assert!(m.contains("refused") && m.contains("backing file"));
    // Explicitly allowed: opaque bytes, flagged, exact, and no guest data at all.
    let policy = Policy { allow_backing_file_opaque: true, ..Policy::default() };
    let (d, mut sink) = dec(&img, &policy, true).unwrap();
    assert_eq!(d.info.backing_file.as_deref(), Some("/etc/passwd"));
    assert!(d.opaque.unwrap().contains("backing file"));
    assert!(sink.covered.is_empty());
    let mut out = Vec::new();
    qcow2::rebuild(&d.recipe, &mut sink, &mut out).unwrap();
    assert!(out == img);
    // A real qemu-made overlay is refused the same way.
    let ov = t.path().join("ov.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", t.path().join("b.qcow2").to_str().unwrap(), "-F", "qcow2", ov.to_str().unwrap()]);
    expect_err(&std::fs::read(&ov).unwrap(), "b.qcow2");
}

#[test]
fn data_file_refused() {
    let t = tmp();
    let p = t.path().join("df.qcow2");
    let df = t.path().join("df.raw");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("data_file={}", df.display()), p.to_str().unwrap(), "1M"]);
    let img = std::fs::read(&p).unwrap();
    let m = expect_err(&img, "external data file");
    assert!(m.contains("df.raw"), "{m}");
    let policy = Policy { allow_data_file_opaque: true, ..Policy::default() };
    let (d, mut sink) = dec(&img, &policy, true).unwrap();
    assert!(d.info.data_file.is_some() && d.opaque.is_some());
    assert_rebuild(&img, &d, &mut sink);
}

#[test]
fn header_fields_out_of_range() {
    let t = tmp();
    let img = base(t.path(), &[]);
    type Patch = (&'static str, fn(&mut Vec<u8>));
    let cases: &[Patch] = &[
        ("version", |b| put32(b, 4, 4)),
        ("version", |b| put32(b, 4, 1)),
        ("cluster_bits", |b| put32(b, 20, 8)),
        ("cluster_bits", |b| put32(b, 20, 22)),
        ("cluster_bits", |b| put32(b, 20, 0xffff_ffff)),
        ("l1_size", |b| put32(b, 36, 0x1000_0000)),
        ("l1_size", |b| put32(b, 36, 0)),
        ("l1_size", |b| put64(b, 24, 1 << 60)),
        ("l1_table_offset", |b| put64(b, 40, 0x30001)),
        ("l1_table_offset", |b| put64(b, 40, 0x7fff_0000)),
        ("l1_table_offset", |b| put64(b, 40, 0)),
        ("overlaps", |b| put64(b, 40, 0x10000)),
        ("refcount_table_offset", |b| put64(b, 48, 0)),
        ("refcount_table_offset", |b| put64(b, 48, 0x10200)),
        ("refcount_table_clusters", |b| put32(b, 56, 0x100_0000)),
        ("nb_snapshots", |b| put32(b, 60, 0x100_0000)),
        ("snapshots_offset", |b| {
            put32(b, 60, 1);
            put64(b, 64, 0x123)
        }),
        ("refcount_order", |b| put32(b, 96, 7)),
        ("header_length", |b| put32(b, 100, 100)),
        ("header_length", |b| put32(b, 100, 0x20000)),
        ("compression_type", |b| b[104] = 1),
        ("compression_type", |b| {
            b[79] |= 8;
            b[104] = 2
        }),
        ("backing_file_offset", |b| {
            put64(b, 8, 0xfff0);
            put32(b, 16, 0x100)
        }),
        ("header_extension", |b| put32(b, 0x74, 0xffff)),
    ];
    for (needle, patch) in cases {
        let mut b = img.clone();
        patch(&mut b);
        expect_err(&b, needle);
    }
    // Virtual size over the policy limit.
    let policy = Policy { max_virtual_size: 512 * 1024, ..Policy::default() };
    let e = dec(&img, &policy, true).err().expect("limit");
    assert!(e.to_string().contains("virtual size"));
}

#[test]
fn structural_corruption_goes_opaque() {
    let t = tmp();
    let img = base(t.path(), &[]);
    const COPIED: u64 = 1 << 63;
    let l2e = |i: usize| 0x40000 + 8 * i;
    // L1 entry beyond EOF.
    let mut b = img.clone();
    put64(&mut b, 0x30000, COPIED | 0x7fff_0000);
    expect_opaque(&b, "beyond the end");
    // L2 entry beyond EOF.
    let mut b = img.clone();
    put64(&mut b, l2e(1), COPIED | 0x7fff_0000);
    expect_opaque(&b, "beyond the end");
    // L2 entry into the header (compressed descriptor with byte offset 100).
    let mut b = img.clone();
    put64(&mut b, l2e(1), (1 << 62) | 100);
    expect_opaque(&b, "header");
    // L2 entry pointing at the L1 table (overlapping roles).
    let mut b = img.clone();
    put64(&mut b, l2e(1), COPIED | 0x30000);
    expect_opaque(&b, "corrupt");
    // L1 entry pointing at the L1 itself.
    let mut b = img.clone();
    put64(&mut b, 0x30000, COPIED | 0x30000);
    expect_opaque(&b, "corrupt");
    // Two guest clusters mapped to one host cluster.
    let mut b = img.clone();
    let e1 = u64::from_be_bytes(b[l2e(1)..l2e(1) + 8].try_into().unwrap());
    assert_ne!(e1, 0);
    put64(&mut b, l2e(2), e1);
    expect_opaque(&b, "corrupt");
    // Reserved bits in an L2 entry.
    let mut b = img.clone();
    put64(&mut b, l2e(1), e1 | 0x2);
    expect_opaque(&b, "reserved");
    // Unaligned data offset.
    let mut b = img.clone();
    put64(&mut b, l2e(1), COPIED | 0x50200);
    expect_opaque(&b, "unaligned");
    // Corrupt bit and unknown incompatible bits: opaque, flagged.
    let mut b = img.clone();
    b[79] |= 2;
    expect_opaque(&b, "corrupt bit");
    let mut b = img.clone();
    b[79] |= 0x40;
    expect_opaque(&b, "unknown incompatible");
}

#[test]
fn garbage_compressed_cluster_goes_opaque() {
    let t = tmp();
    let img = base(t.path(), &["-c"]);
    // First L2 entry that is compressed: overwrite its stream with garbage.
    let l2 = 0x40000;
    let mut b = img.clone();
    let mut hit = false;
    for i in 0..16 {
        let e = u64::from_be_bytes(b[l2 + 8 * i..l2 + 8 * i + 8].try_into().unwrap());
        if e & (1 << 62) != 0 {
            let off = (e & ((1 << 54) - 1)) as usize;
            b[off..off + 64].iter_mut().for_each(|x| *x = 0xff);
            hit = true;
            break;
        }
    }
    assert!(hit);
    expect_opaque(&b, "does not decompress");
}

#[test]
fn truncated_streams() {
    let t = tmp();
    let img = base(t.path(), &["-c"]);
    for cut in [10, 80, 200, 0x10000, 0x30004, img.len() / 2, img.len() - 1] {
        let part = &img[..cut];
        let mut sink = MemSink::new(1 << 20);
        // Declared length longer than the stream: refused as truncated (or not qcow2 when the
        // header itself is cut).
        let e = qcow2::decompose(part, Some(img.len() as u64), &Policy::default(), &mut sink).expect_err("truncated must fail");
        assert!(matches!(e, Qcow2Error::Truncated { .. } | Qcow2Error::NotQcow2(_)), "{cut}: {e}");
        // Unknown length: whatever is accepted rebuilds exactly.
        if let Ok((d, mut sink)) = dec(part, &Policy::default(), false) {
            assert_rebuild(part, &d, &mut sink);
        }
    }
    // Stream longer than declared.
    let mut sink = MemSink::new(1 << 20);
    let e = qcow2::decompose(&img[..], Some(img.len() as u64 - 512), &Policy::default(), &mut sink).err().unwrap();
    assert!(e.to_string().contains("longer") || e.to_string().contains("beyond"), "{e}");
}

#[test]
fn garbage_declared_qcow2() {
    let mut r = Rng(7);
    let g: Vec<u8> = (0..1 << 20).map(|_| r.next() as u8).collect();
    let e = dec(&g, &Policy::default(), true).err().expect("garbage");
    assert!(matches!(e, Qcow2Error::NotQcow2(_)), "{e}");
    let det = detect(&g[..65536]);
    assert_eq!(det.kind, FormatKind::Raw);
    assert!(matches!(check_declared(Some("qcow2"), &det), Err(FormatError::Mismatch { .. })));
    // Magic + garbage: refused or opaque, never a panic.
    let mut g2 = g.clone();
    g2[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut g2, 4, 3);
    put32(&mut g2, 20, 16);
    let _ = dec(&g2, &Policy::default(), true);
}

#[test]
fn declared_raw_with_qcow2_magic_stays_raw() {
    let t = tmp();
    let mut img = base(t.path(), &[]);
    // OSSA-2024-002: a "raw" upload that is really a qcow2 with a backing file.
    let name = b"/etc/shadow";
    img[0x1000..0x1000 + name.len()].copy_from_slice(name);
    put64(&mut img, 8, 0x1000);
    put32(&mut img, 16, name.len() as u32);
    let det = detect(&img[..65536]);
    assert_eq!(det.kind, FormatKind::Qcow2);
    assert_eq!(det.version, Some(3));
    assert_eq!(decide(Some("raw"), &det), Ok(FormatKind::Raw));
    assert!(check_declared(Some("raw"), &det).is_ok());
    assert_eq!(decide(None, &det), Ok(FormatKind::Qcow2));
    assert_eq!(decide(Some("qcow2"), &det), Ok(FormatKind::Qcow2));
    let e = check_declared(Some("vmdk"), &det).unwrap_err();
    assert!(e.to_string().contains("vmdk") && e.to_string().contains("qcow2"));
    assert!(matches!(check_declared(Some("bogus"), &det), Err(FormatError::UnknownDeclared(_))));
}

#[test]
fn detects_other_formats() {
    let t = tmp();
    let mk = |fmt: &str, opts: &[&str]| -> PathBuf {
        let p = t.path().join(format!("x.{fmt}"));
        let mut a = vec!["create", "-q", "-f", fmt];
        a.extend_from_slice(opts);
        a.extend_from_slice(&[p.to_str().unwrap(), "1M"]);
        qemu_img(&a);
        p
    };
    for (fmt, kind) in [
        ("vmdk", FormatKind::Vmdk),
        ("vpc", FormatKind::Vhd),
        ("vhdx", FormatKind::Vhdx),
        ("vdi", FormatKind::Vdi),
        ("qed", FormatKind::Qed),
        ("qcow2", FormatKind::Qcow2),
    ] {
        let b = std::fs::read(mk(fmt, &[])).unwrap();
        let d = detect(&b[..b.len().min(65536)]);
        assert_eq!(d.kind, kind, "{fmt}");
    }
    let qed = std::fs::read(t.path().join("x.qed")).unwrap();
    assert!(matches!(decide(None, &detect(&qed[..65536.min(qed.len())])), Err(FormatError::Banned(_))));
    // LUKS via qemu-img's secret object.
    let p = t.path().join("x.luks");
    qemu_img(&["create", "-q", "--object", "secret,id=s0,data=123456", "-f", "luks", "-o", "key-secret=s0", p.to_str().unwrap(), "1M"]);
    let b = std::fs::read(&p).unwrap();
    assert_eq!(detect(&b[..65536]).kind, FormatKind::Luks);
    // ISO 9660: CD001 at 0x8001.
    let mut iso = vec![0u8; 65536];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    assert_eq!(detect(&iso).kind, FormatKind::Iso);
    // Two container signatures: refused as ambiguous.
    let mut both = std::fs::read(t.path().join("x.qcow2")).unwrap();
    both.resize(65536, 0);
    both[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    assert!(matches!(check_declared(None, &detect(&both)), Err(FormatError::Ambiguous(_))));
}

#[test]
fn encrypted_is_opaque_flagged() {
    let t = tmp();
    let p = t.path().join("enc.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=s0,data=123456",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0",
        p.to_str().unwrap(),
        "1M",
    ]);
    let img = std::fs::read(&p).unwrap();
    let (d, mut sink) = dec(&img, &Policy::default(), true).unwrap();
    assert!(d.info.encrypted);
    assert!(d.opaque.unwrap().contains("encrypted"));
    assert!(sink.covered.is_empty());
    let mut out = Vec::new();
    qcow2::rebuild(&d.recipe, &mut sink, &mut out).unwrap();
    assert!(out == img);
}

/// Writer that fails after `left` bytes, so hostile recipes cannot make rebuild run forever.
struct Capped {
    left: u64,
}
impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if (b.len() as u64) > self.left {
            return Err(std::io::Error::other("cap"));
        }
        self.left -= b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let r = dir.join("s.raw");
    make_raw(&r, 512 * 1024, 99);
    let mut v = Vec::new();
    for (i, opts) in [
        &["-o", "cluster_size=4k"][..],
        &["-c", "-o", "cluster_size=4k"][..],
        &["-c", "-o", "compression_type=zstd,cluster_size=4k"][..],
        &["-o", "compat=0.10,cluster_size=512"][..],
        &["-o", "extended_l2=on,cluster_size=16k"][..],
    ]
    .iter()
    .enumerate()
    {
        let p = convert(dir, &r, &format!("s{i}.qcow2"), opts);
        v.push(std::fs::read(&p).unwrap());
    }
    v
}

#[test]
fn mutation_run_never_panics_and_stays_exact() {
    let t = tmp();
    let seeds = seeds(t.path());
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let policy = Policy { max_pending_ram: 1 << 20, spill_dir: t.path().to_path_buf(), ..Policy::default() };
    let iters = 600;
    let (mut ok, mut opaque) = (0, 0);
    for it in 0..iters {
        let mut b = seeds[it % seeds.len()].clone();
        let n = 1 + r.next() % 6;
        for _ in 0..n {
            // Mostly metadata (first 64 KiB), sometimes anywhere.
            let lim = if r.next() % 4 == 0 { b.len() } else { b.len().min(0x10000) };
            let i = (r.next() as usize) % lim;
            b[i] = match r.next() % 3 {
                0 => r.next() as u8,
                1 => b[i] ^ (1 << (r.next() % 8)),
                _ => 0xff,
            };
        }
        if r.next() % 10 == 0 {
            let cut = (r.next() as usize) % b.len();
            b.truncate(cut);
        }
        let with_len = r.next() % 2 == 0;
        if let Ok((d, mut sink)) = dec(&b, &policy, with_len) {
            ok += 1;
            opaque += d.opaque.is_some() as usize;
            assert_rebuild(&b, &d, &mut sink);
            // Mutated recipes: decode/rebuild must fail cleanly or succeed, never panic.
            let mut rec = d.recipe.clone();
            let i = (r.next() as usize) % rec.len();
            rec[i] ^= 1 << (r.next() % 8);
            let _ = qcow2::decode_recipe(&rec);
            let _ = qcow2::rebuild(&rec, &mut sink, &mut Capped { left: 64 << 20 });
        }
    }
    assert!(ok > iters / 4, "too few accepted mutants ({ok}/{iters})");
    assert!(opaque > 0, "no mutant took the opaque path");
}

/// Regenerates the committed fuzz seed corpus (small real images and their recipes):
/// `cargo test --test integration qcow2_hostile::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let t = tmp();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let r = t.path().join("seed.raw");
    // 4 KiB blocks: text, hole, noise, text ... (make_raw works in 64 KiB blocks, too coarse).
    let mut rng = Rng(5);
    let mut raw = vec![0u8; 48 * 1024];
    for (i, b) in raw.chunks_mut(4096).enumerate() {
        match i % 3 {
            0 => b.iter_mut().enumerate().for_each(|(j, x)| *x = b"imgarc seed block "[j % 18] ^ i as u8),
            2 if i % 2 == 0 => b.iter_mut().for_each(|x| *x = rng.next() as u8),
            _ => {}
        }
    }
    std::fs::write(&r, raw).unwrap();
    let variants: &[(&str, &[&str])] = &[
        ("v3-512", &["-o", "cluster_size=512"]),
        ("v2-512", &["-o", "compat=0.10,cluster_size=512"]),
        ("zlib-4k", &["-c", "-o", "cluster_size=4k"]),
        ("zstd-4k", &["-c", "-o", "compression_type=zstd,cluster_size=4k"]),
        ("rb1-1k", &["-o", "refcount_bits=1,cluster_size=1k"]),
    ];
    for (name, opts) in variants {
        let p = convert(t.path(), &r, &format!("{name}.qcow2"), opts);
        let img = std::fs::read(&p).unwrap();
        std::fs::write(root.join("decompose").join(name), &img).unwrap();
        let (d, _) = dec(&img, &Policy::default(), true).unwrap();
        std::fs::write(root.join("recipe").join(name), &d.recipe).unwrap();
    }
}

#[test]
fn rebuild_detects_recompression_with_other_bytes_of_the_same_length() {
    // Simulates a zlib that compresses a cluster differently but to the same length: the guest
    // bytes of one compressed cluster are changed so that deflate still gives `len` bytes.
    // Length checks alone rebuild a wrong file; the recorded per-cluster check must refuse.
    let t = tmp();
    let raw = t.path().join("c.raw");
    make_raw(&raw, 2 << 20, 21);
    let p = convert(t.path(), &raw, "c.qcow2", &["-c"]);
    let (img, r) = decompose_file(&p, &Policy::default(), true);
    let (d, mut sink) = r.unwrap();
    assert_rebuild(&img, &d, &mut sink);
    let rec = qcow2::decode_recipe(&d.recipe).unwrap();
    let cs = 1usize << rec.cluster_bits;
    let mut tampered = None;
    'find: for seg in &rec.segments {
        if let qcow2::Segment::Compressed { len, guest_off, codec: qcow2::CODEC_ZLIB, .. } = *seg {
            let g = guest_off as usize;
            for at in (0..cs).step_by(97) {
                let mut cluster = sink.guest[g..g + cs].to_vec();
                cluster[at] ^= 0x01;
                if qcow2::deflate_qemu(&cluster, cs - 1).is_some_and(|c| c.len() as u64 == len) {
                    tampered = Some((g + at, guest_off));
                    break 'find;
                }
            }
        }
    }
    let (byte, cluster) = tampered.expect("a one-bit change that keeps the compressed length");
    sink.guest[byte] ^= 0x01;
    let mut out = Vec::new();
    let err = qcow2::rebuild(&d.recipe, &mut sink, &mut out).expect_err("a rebuild with other bytes must fail");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{cluster:#x}")), "error must name the cluster: {msg}");
}
