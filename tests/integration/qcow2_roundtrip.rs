//! Round-trip tests over every qcow2 variant qemu-img 10 creates: byte-exact rebuild, guest
//! view equal to `qemu-img convert -O raw`, qcow2-rs agreement where it can open the image,
//! and write_qcow2 output accepted by `qemu-img check` / `qemu-img compare`.
use crate::support::qcow2_util as util;
use imgarc::format::qcow2::{self, Policy};
use std::path::{Path, PathBuf};
use util::*;

const MIB: u64 = 1 << 20;

fn raw(dir: &Path, size: u64, seed: u64) -> PathBuf {
    let p = dir.join(format!("src-{size}-{seed}.raw"));
    make_raw(&p, size, seed);
    p
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut a = vec!["-f", "qcow2"];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(img.to_str().unwrap());
    run("qemu-io", &a);
}

fn check_qcow2rs(path: &Path, sink: &MemSink) {
    let img = std::fs::read(path).unwrap();
    let g = qcow2rs_guest(&img).unwrap_or_else(|| panic!("qcow2-rs could not read {}", path.display()));
    assert!(g == sink.guest, "{}: qcow2-rs guest view differs from ours", path.display());
}

#[test]
fn v3_default_and_v2() {
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 1);
    for (name, opts) in [("v3.qcow2", &[][..]), ("v2.qcow2", &["-o", "compat=0.10"][..])] {
        let p = convert(t.path(), &r, name, opts);
        let (d, mut sink) = check_image(&p, &Policy::default());
        assert!(d.opaque.is_none());
        assert_eq!(d.info.version, if name == "v2.qcow2" { 2 } else { 3 });
        assert_eq!(d.info.pending_peak_bytes, 0, "qemu-img convert output needs no pending");
        assert!(sink.guest == std::fs::read(&r).unwrap());
        assert_eq!(sink.out_of_order, 0);
        // Only metadata goes to the literal stream (header, refcounts, L1, L2 — mostly zeros).
        assert!(d.info.literal_stream_bytes < 64 * 1024, "literal {}", d.info.literal_stream_bytes);
        check_qcow2rs(&p, &sink);
        check_writer(&p, &mut sink, false);
    }
}

#[test]
fn cluster_sizes() {
    let t = tmp();
    let r = raw(t.path(), 3 * MIB, 2);
    for cs in ["512", "4k", "16k", "2M"] {
        let p = convert(t.path(), &r, &format!("cs{cs}.qcow2"), &["-o", &format!("cluster_size={cs}")]);
        let (d, sink) = check_image(&p, &Policy::default());
        assert!(d.opaque.is_none(), "{cs}: {:?}", d.opaque);
        if cs != "512" {
            // qcow2-rs hangs on 512-byte clusters (design note §1.3).
            check_qcow2rs(&p, &sink);
        }
    }
}

#[test]
fn compressed_zlib_reproducible() {
    // CI guard: stock zlib must reproduce qemu's compressed clusters exactly; a build that
    // links another zlib (zlib-ng, zlib-rs) fails here loudly.
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 3);
    for (name, cs) in [("c64k.qcow2", "64k"), ("c4k.qcow2", "4k"), ("c2m.qcow2", "2M")] {
        let p = convert(t.path(), &r, name, &["-c", "-o", &format!("cluster_size={cs}")]);
        let (d, mut sink) = check_image(&p, &Policy::default());
        assert!(d.info.compressed_clusters > 0, "{name}: no compressed clusters");
        assert_eq!(
            d.info.reproducible_clusters, d.info.compressed_clusters,
            "{name}: zlib {} did not reproduce qemu's compressed clusters",
            d.info.zlib_version
        );
        assert!(d.info.pending_peak_bytes <= 2 * 2 * MIB, "{name}: pending {}", d.info.pending_peak_bytes);
        // Highly compressible clusters share host clusters with streams of later guest
        // offsets, so uncompressed clusters may legitimately arrive before them: no ordering
        // assertion here (the sink accepts out-of-order pieces).
        check_qcow2rs(&p, &sink);
        if cs == "64k" {
            check_writer(&p, &mut sink, true);
            check_writer(&p, &mut sink, false);
        }
    }
}

#[test]
fn compressed_zstd() {
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 4);
    let p = convert(t.path(), &r, "zstd.qcow2", &["-c", "-o", "compression_type=zstd"]);
    let (d, _sink) = check_image(&p, &Policy::default());
    assert_eq!(d.info.compression_type, "zstd");
    assert!(d.info.compressed_clusters > 0);
    // zstd output is library-version specific: every cluster is either reproduced or literal.
    assert_eq!(d.info.reproducible_clusters + d.info.literal_compressed_clusters, d.info.compressed_clusters);
}

#[test]
fn extended_l2_decomposes_like_plain_qcow2() {
    // Extended L2 entries (128 bits, 32 subclusters): guest data must come out as the raw
    // disk, for every cluster size qemu allows with subclusters, compressed or not.
    let t = tmp();
    let r = raw(t.path(), 3 * MIB, 5);
    let disk = std::fs::read(&r).unwrap();
    for (name, opts) in [
        ("el2-16k.qcow2", "extended_l2=on,cluster_size=16k"),
        ("el2-64k.qcow2", "extended_l2=on,cluster_size=64k"),
        ("el2-2m.qcow2", "extended_l2=on,cluster_size=2M"),
    ] {
        let p = convert(t.path(), &r, name, &["-o", opts]);
        let (d, sink) = check_image(&p, &Policy::default());
        assert!(d.info.extended_l2, "{name}");
        assert!(d.opaque.is_none(), "{name}: {:?}", d.opaque);
        assert!(sink.guest == disk, "{name}: guest view differs from the raw disk");
        assert!(d.info.literal_stream_bytes < 64 * 1024, "{name}: literal {}", d.info.literal_stream_bytes);
    }
    let p = convert(t.path(), &r, "el2-c.qcow2", &["-c", "-o", "extended_l2=on,cluster_size=64k"]);
    let (d, sink) = check_image(&p, &Policy::default());
    assert!(d.opaque.is_none(), "{:?}", d.opaque);
    assert!(d.info.compressed_clusters > 0);
    assert!(sink.guest == disk);
}

#[test]
fn extended_l2_partial_subclusters() {
    // Writes smaller than a cluster allocate single subclusters; `write -z` sets zero bits,
    // also over allocated ones (stale host bytes that must not show as guest data).
    let t = tmp();
    for cs in ["16k", "64k", "256k"] {
        let p = t.path().join(format!("el2-part-{cs}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("extended_l2=on,cluster_size={cs}"), p.to_str().unwrap(), "4M"]);
        qemu_io(
            &p,
            &[
                "write -P 0x11 2k 4k",
                "write -P 0x22 100k 1k",
                "write -P 0x33 1M 300k",
                "write -z 1100k 16k",
                "write -P 0x44 3M 512",
                "write -z 3M 512",
                "write -P 0x55 4092k 4k",
            ],
        );
        let (d, sink) = check_image(&p, &Policy::default()); // guest view == qemu-img convert -O raw
        assert!(d.opaque.is_none(), "{cs}: {:?}", d.opaque);
        assert!(sink.guest[2048..6144].iter().all(|&b| b == 0x11), "{cs}");
        assert!(sink.guest[1100 << 10..1116 << 10].iter().all(|&b| b == 0), "{cs}: zeroed subclusters read back data");
        assert!(sink.guest[3 << 20..(3 << 20) + 512].iter().all(|&b| b == 0), "{cs}");
    }
}

#[test]
fn extended_l2_preallocation() {
    // Preallocated clusters have a host offset but unallocated (or zero) subclusters: their
    // host bytes are stale, never guest data.
    let t = tmp();
    for mode in ["metadata", "falloc", "full"] {
        let p = t.path().join(format!("el2-pre-{mode}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("extended_l2=on,preallocation={mode}"), p.to_str().unwrap(), "2M"]);
        qemu_io(&p, &["write -P 0xab 64k 3k", "write -z 1M 64k"]);
        let (d, sink) = check_image(&p, &Policy::default());
        assert!(d.opaque.is_none(), "{mode}: {:?}", d.opaque);
        assert!(sink.guest[65536..65536 + 3072].iter().all(|&b| b == 0xab), "{mode}");
    }
}

#[test]
fn extended_l2_bad_subcluster_bitmap_is_opaque_and_exact() {
    // A subcluster both allocated and zero is invalid (qemu-img check calls it corrupt).
    let t = tmp();
    let p = t.path().join("el2-bad.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", p.to_str().unwrap(), "1M"]);
    qemu_io(&p, &["write -P 0x11 0 64k"]);
    let mut img = std::fs::read(&p).unwrap();
    let l1 = u64::from_be_bytes(img[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(img[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let good = img.clone();
    img[l2 + 8..l2 + 12].copy_from_slice(&1u32.to_be_bytes()); // zero bit of subcluster 0
    std::fs::write(&p, &img).unwrap();
    let (d, _) = check_image(&p, &Policy::default());
    assert!(d.opaque.as_deref().unwrap_or("").contains("subcluster bitmap"), "{:?}", d.opaque);
    // Allocated subclusters in an entry without a host cluster (guest offset 64k).
    let mut img = good.clone();
    img[l2 + 16 + 12..l2 + 16 + 16].copy_from_slice(&1u32.to_be_bytes());
    std::fs::write(&p, &img).unwrap();
    let (d, _) = check_image(&p, &Policy::default());
    assert!(d.opaque.as_deref().unwrap_or("").contains("subcluster bitmap"), "{:?}", d.opaque);
    // Bit 0 of the first word is reserved with extended L2.
    let mut img = good;
    img[l2 + 7] |= 1;
    std::fs::write(&p, &img).unwrap();
    let (d, _) = check_image(&p, &Policy::default());
    assert!(d.opaque.as_deref().unwrap_or("").contains("reserved bits"), "{:?}", d.opaque);
}

#[test]
fn lazy_refcounts_and_refcount_bits() {
    let t = tmp();
    let r = raw(t.path(), 2 * MIB, 6);
    let p = convert(t.path(), &r, "lazy.qcow2", &["-o", "lazy_refcounts=on"]);
    let (d, sink) = check_image(&p, &Policy::default());
    assert!(d.info.lazy_refcounts);
    check_qcow2rs(&p, &sink);
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let p = convert(t.path(), &r, &format!("rb{bits}.qcow2"), &["-o", &format!("refcount_bits={bits}")]);
        let (d, _) = check_image(&p, &Policy::default());
        assert_eq!(d.info.refcount_bits, bits);
        assert!(d.opaque.is_none());
    }
}

#[test]
fn preallocation_modes() {
    let t = tmp();
    for mode in ["metadata", "falloc", "full"] {
        let p = t.path().join(format!("pre-{mode}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &format!("preallocation={mode}"), p.to_str().unwrap(), "3M"]);
        qemu_io(&p, &["write -P 0xab 64k 128k", "write -P 0x17 1M 4k", "write -z 2M 64k"]);
        let (d, sink) = check_image(&p, &Policy::default());
        assert!(d.opaque.is_none());
        assert!(sink.guest[65536..65536 + 131072].iter().all(|&b| b == 0xab));
        check_qcow2rs(&p, &sink);
    }
}

#[test]
fn zero_clusters_with_stale_data() {
    let t = tmp();
    let r = raw(t.path(), 2 * MIB, 7);
    let p = convert(t.path(), &r, "z.qcow2", &[]);
    // Zeroing allocated clusters keeps their host clusters (zero flag + offset, stale bytes).
    qemu_io(&p, &["write -z 64k 128k"]);
    let (d, sink) = check_image(&p, &Policy::default());
    assert!(d.info.zero_prealloc_clusters > 0 || d.info.literal_bytes > 0);
    assert!(sink.guest[65536..196608].iter().all(|&b| b == 0));
}

#[test]
fn internal_snapshot_then_writes_spills() {
    let t = tmp();
    let r = raw(t.path(), 3 * MIB, 8);
    let p = convert(t.path(), &r, "snap.qcow2", &["-o", "cluster_size=4k"]);
    qemu_img(&["snapshot", "-c", "s1", p.to_str().unwrap()]);
    qemu_io(&p, &["write -P 0x5a 0 8k", "write -P 0x33 1M 64k"]);
    let policy = Policy { max_pending_ram: 64 * 1024, spill_dir: t.path().to_path_buf(), ..Policy::default() };
    let (d, sink) = check_image(&p, &policy);
    assert_eq!(d.info.snapshots, 1);
    assert!(d.info.spilled_bytes > 0, "expected spill with a 64 KiB RAM limit");
    assert!(sink.guest[..8192].iter().all(|&b| b == 0x5a));
    check_qcow2rs(&p, &sink);
    // Spill budget exceeded: opaque (flagged), still byte-exact; strict policy refuses.
    let tight = Policy { max_spill_bytes: 64 * 1024, ..policy.clone() };
    let (img, r) = decompose_file(&p, &tight, true);
    let (d, mut s) = r.expect("opaque, not an error");
    assert!(d.opaque.as_deref().unwrap_or("").contains("spill limit"), "{:?}", d.opaque);
    assert!(d.info.spilled_bytes <= 64 * 1024, "spilled {} bytes past the limit", d.info.spilled_bytes);
    assert_rebuild(&img, &d, &mut s);
    let strict = Policy { strict: true, ..tight };
    let (_, r) = decompose_file(&p, &strict, true);
    assert!(r.err().expect("strict refuses").to_string().contains("spill limit"));
    // No spill file is left behind (it is unlinked at creation).
    assert!(std::fs::read_dir(t.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("spill")));
}

#[test]
fn spill_stops_at_its_limit_and_the_default_is_bounded() {
    // `qemu-img resize` moves the L1 behind the data: everything before it waits for its role.
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 9);
    let p = convert(t.path(), &r, "resized.qcow2", &["-o", "cluster_size=4k"]);
    qemu_img(&["resize", "-q", p.to_str().unwrap(), "12M"]);
    qemu_io(&p, &["write -P 0x77 10M 12k"]);
    let limit = 100 * 1024 + 7; // not a cluster multiple: the check must come before writing
    let policy = Policy { max_pending_ram: 0, max_spill_bytes: limit, spill_dir: t.path().to_path_buf(), ..Policy::default() };
    let (img, r) = decompose_file(&p, &policy, true);
    let (d, mut s) = r.expect("opaque, not an error");
    assert!(d.opaque.as_deref().unwrap_or("").contains("spill limit"), "{:?}", d.opaque);
    assert!(d.info.spilled_bytes > 0 && d.info.spilled_bytes <= limit, "spilled {}", d.info.spilled_bytes);
    assert_rebuild(&img, &d, &mut s);
    assert_eq!(Policy::default().max_spill_bytes, qcow2::DEFAULT_SPILL_LIMIT);
}

#[test]
fn segment_budget_bounds_recipe_and_memory() {
    // Trailing bytes alternating 512 zero / 512 non-zero used to cost one segment per sector
    // (~6 % of the file in RAM). Past the budget, literals stop eliding zeros and merge.
    let t = tmp();
    let r = raw(t.path(), MIB, 4);
    let p = convert(t.path(), &r, "seg.qcow2", &[]);
    let mut img = std::fs::read(&p).unwrap();
    for i in 0..8192 {
        img.extend(std::iter::repeat_n(if i % 2 == 0 { 0u8 } else { 0x5a }, 512));
    }
    std::fs::write(&p, &img).unwrap();
    let budget = 500;
    let (img, res) = decompose_file(&p, &Policy { max_segments: budget, ..Policy::default() }, true);
    let (d, mut s) = res.expect("decompose");
    assert!(d.info.segments <= budget as u64 + 16, "{} segments for a budget of {budget}", d.info.segments);
    assert_rebuild(&img, &d, &mut s);
    // The same image without the budget has thousands of segments: the budget is what bounds it.
    let (_, res) = decompose_file(&p, &Policy::default(), true);
    assert!(res.unwrap().0.info.segments > 4 * budget as u64);
}

#[test]
fn resized_image_moves_l1() {
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 9);
    let p = convert(t.path(), &r, "resized.qcow2", &["-o", "cluster_size=4k"]);
    qemu_img(&["resize", "-q", p.to_str().unwrap(), "12M"]);
    qemu_io(&p, &["write -P 0x77 10M 12k"]);
    let img = std::fs::read(&p).unwrap();
    let l1_off = u64::from_be_bytes(img[40..48].try_into().unwrap());
    let (d, sink) = check_image(&p, &Policy::default());
    assert_eq!(d.info.virtual_size, 12 * MIB);
    assert!(sink.guest[10 << 20..(10 << 20) + 12288].iter().all(|&b| b == 0x77));
    // qemu moved the grown L1 behind the data, so all of it waited in the pool.
    assert!(l1_off > MIB, "L1 did not move ({l1_off:#x})");
    assert!(d.info.pending_peak_bytes > MIB, "pending peak {}", d.info.pending_peak_bytes);
    check_qcow2rs(&p, &sink);
}

#[test]
fn out_of_order_writes() {
    let t = tmp();
    let r = raw(t.path(), 4 * MIB, 10);
    for (name, opts) in [("w.qcow2", &["-W"][..]), ("wc.qcow2", &["-W", "-c"][..])] {
        let p = convert(t.path(), &r, name, opts);
        let (d, sink) = check_image(&p, &Policy::default());
        assert!(d.opaque.is_none());
        assert_eq!(d.info.reproducible_clusters, d.info.compressed_clusters);
        check_qcow2rs(&p, &sink);
    }
}

#[test]
fn empty_and_odd_sizes() {
    let t = tmp();
    for size in ["0", "1M"] {
        let p = t.path().join(format!("empty{size}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), size]);
        let (d, mut sink) = check_image(&p, &Policy::default());
        assert_eq!(d.info.guest_bytes, 0);
        assert!(sink.covered.is_empty());
        if size == "1M" {
            check_writer(&p, &mut sink, false);
        }
    }
    // Not a cluster multiple (but a sector multiple), plain and compressed.
    let r = raw(t.path(), 3 * MIB + 4608, 11);
    for (name, opts) in [("odd.qcow2", &[][..]), ("oddc.qcow2", &["-c"][..]), ("odd2m.qcow2", &["-c", "-o", "cluster_size=2M"][..])] {
        let p = convert(t.path(), &r, name, opts);
        let (d, mut sink) = check_image(&p, &Policy::default());
        assert_eq!(d.info.virtual_size, 3 * MIB + 4608);
        assert!(sink.guest == std::fs::read(&r).unwrap());
        assert_eq!(d.info.reproducible_clusters, d.info.compressed_clusters);
        if name == "oddc.qcow2" {
            check_writer(&p, &mut sink, true);
        }
    }
}

#[test]
fn writer_output_decomposes_exactly() {
    // Our own writer's output is a valid input too: decompose it and rebuild.
    let t = tmp();
    let r = raw(t.path(), 2 * MIB, 12);
    let p = convert(t.path(), &r, "base.qcow2", &[]);
    let (_, mut sink) = check_image(&p, &Policy::default());
    for c in [false, true] {
        let w = check_writer(&p, &mut sink, c);
        let (d, s2) = check_image(&w, &Policy::default());
        assert!(d.opaque.is_none());
        assert!(s2.guest == sink.guest);
        check_qcow2rs(&w, &s2);
    }
}

#[test]
fn recipe_is_small() {
    let t = tmp();
    let r = raw(t.path(), 8 * MIB, 13);
    let p = convert(t.path(), &r, "c.qcow2", &["-c"]);
    let (d, _) = check_image(&p, &Policy::default());
    let rec = qcow2::decode_recipe(&d.recipe).unwrap();
    assert_eq!(rec.file_len, std::fs::metadata(&p).unwrap().len());
    assert!(d.recipe.len() < 4096, "recipe {} bytes for {} compressed clusters", d.recipe.len(), d.info.compressed_clusters);
}

#[test]
fn dirty_bit_and_bitmaps_are_flagged_not_opaque() {
    let t = tmp();
    let r = raw(t.path(), 2 * MIB, 14);
    let p = convert(t.path(), &r, "bm.qcow2", &[]);
    qemu_img(&["bitmap", "--add", p.to_str().unwrap(), "b0"]);
    qemu_io(&p, &["write -P 0x42 128k 64k"]);
    let (d, sink) = check_image(&p, &Policy::default());
    assert_eq!(d.info.bitmaps, 1);
    assert!(d.opaque.is_none());
    assert!(sink.guest[128 << 10..192 << 10].iter().all(|&b| b == 0x42));
    // Dirty bit (refcounts untrusted): harmless for us, flagged only.
    let mut img = std::fs::read(&p).unwrap();
    img[79] |= 1;
    let dp = t.path().join("dirty.qcow2");
    std::fs::write(&dp, &img).unwrap();
    let (d, _) = check_image(&dp, &Policy::default());
    assert!(d.info.dirty && d.opaque.is_none());
}
