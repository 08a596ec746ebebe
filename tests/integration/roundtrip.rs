//! Byte-exact round trips through the real binary, edge cases and dedup.

use crate::support;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use support::*;

fn round_trip(env: &Env, name: &str, data: &[u8]) -> serde_json::Value {
    let p = env.path(name);
    std::fs::write(&p, data).unwrap();
    let a = env.json(&["archive", p.to_str().unwrap(), "--digest", "md5,sha256"]);
    assert_eq!(u(&a, "logical_bytes"), data.len() as u64);
    assert_eq!(a["digests"]["sha256"], sha256(data));
    let out = env.restore_bytes(&s(&a, "snapshot"));
    assert!(out == data, "{name}: restored bytes differ");
    a
}

#[test]
fn edge_cases_round_trip() {
    let env = Env::init("16K");
    let empty = round_trip(&env, "empty", &[]);
    assert_eq!(u(&empty, "chunks"), 0);
    round_trip(&env, "one", b"x");
    let one_chunk = round_trip(&env, "one-chunk", &bytes(3000, 1, false));
    assert_eq!(u(&one_chunk, "chunks"), 1);
    round_trip(&env, "odd", &bytes(1_000_003, 2, true));
    let rnd = round_trip(&env, "random", &bytes(3 << 20, 3, false));
    // Incompressible chunks are stored as they are, not grown by zstd framing.
    assert!(u(&rnd, "stored_bytes_added") < (3 << 20) + (3 << 20) / 50, "{rnd}");
    let text = round_trip(&env, "text", &bytes(3 << 20, 4, true));
    assert!(u(&text, "stored_bytes_added") < (3 << 20) / 3, "text should compress: {text}");
}

#[test]
fn zeros_are_holes_and_restore_sparse() {
    let env = Env::init("64K");
    let mut data = vec![0u8; 8 << 20];
    data[(5 << 20) + 17] = 1; // one non-zero block in the middle
    let a = round_trip(&env, "zeros", &data);
    assert_eq!(u(&a, "hole_bytes"), (8 << 20) - 65536);
    assert_eq!(u(&a, "new_bytes"), 65536);
    let out = env.path("sparse.raw");
    env.ok(&["restore", &s(&a, "snapshot"), "-o", out.to_str().unwrap()]);
    let m = std::fs::metadata(&out).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "restored file is not sparse: {} bytes allocated", m.blocks() * 512);
}

#[test]
fn stdin_archive_and_stdout_restore() {
    let env = Env::init("64K");
    let data = bytes(2_500_000, 9, true);
    let mut child = env.cmd(&["--json", "archive", "-", "--name", "piped"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s(&a, "name"), "piped");
    let o = env.run(&["--json", "restore", &s(&a, "snapshot")[..8], "-o", "-"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == data);
    // With -o - the JSON report goes to stderr.
    let rep: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(u(&rep, "bytes"), data.len() as u64);
}

#[test]
fn synthetic_nights_dedup() {
    let env = Env::init("64K");
    let disk = imgarc::synthetic::SyntheticDisk::new(32 << 20, 7);
    let mut last = None;
    let mut results = vec![];
    for n in 0..3 {
        let p = env.path(&format!("night-{n}.raw"));
        disk.write_night(&p, n).unwrap();
        let a = env.archive(&p, "vm");
        results.push(a.clone());
        last = Some((p, a));
    }
    let (n0, n1) = (&results[0], &results[1]);
    // Measured: a night adds about 10 % of night 0's new data; 35 % leaves margin.
    assert!(u(n1, "new_bytes") * 100 < u(n0, "new_bytes") * 35, "night 1 stored too much: {n1} vs {n0}");
    let (p, a) = last.unwrap();
    assert!(env.restore_bytes(&s(&a, "snapshot")) == std::fs::read(&p).unwrap());
    // The same image again stores nothing new.
    let again = env.archive(&p, "vm");
    assert_eq!(u(&again, "new_chunks"), 0);
    assert_eq!(u(&again, "stored_bytes_added"), 0);
    let list = env.json(&["list", "--name", "vm"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    for row in list.as_array().unwrap() {
        for k in ["id", "name", "time", "logical_bytes", "tags"] {
            assert!(!row[k].is_null(), "list row lacks {k}: {row}");
        }
    }
}

fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img").args(args).status().expect("qemu-img is required (apt-get install qemu-utils)");
    assert!(st.success(), "qemu-img {args:?} failed");
}

#[test]
fn qcow2_dedups_with_raw_restores_exactly_and_converts() {
    let env = Env::init("64K");
    let disk = imgarc::synthetic::SyntheticDisk::new(24 << 20, 11);
    let raw = env.path("d.raw");
    disk.write_night(&raw, 0).unwrap();
    let raw_bytes = std::fs::read(&raw).unwrap();
    let first = env.archive(&raw, "d.raw");
    assert_eq!(s(&first, "format"), "raw");
    for (name, extra) in [("d.qcow2", vec![]), ("d.c.qcow2", vec!["-c"])] {
        let q = env.path(name);
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend(extra);
        args.extend([raw.to_str().unwrap(), q.to_str().unwrap()]);
        qemu_img(&args);
        let data = std::fs::read(&q).unwrap();
        let a = env.json(&["archive", q.to_str().unwrap(), "--name", name, "--digest", "sha512"]);
        assert_eq!(s(&a, "format"), "qcow2");
        assert!(a["opaque"].is_null(), "{a}");
        // The guest data is already stored from the raw image: only the recipe and
        // metadata literals are new (a few KiB against MiBs of data).
        assert!(u(&a, "new_bytes") < u(&first, "new_bytes") / 50, "{name} stored too much: {a}");
        let snap = s(&a, "snapshot");
        assert!(env.restore_bytes(&snap) == data, "{name} differs after restore");
        let conv = env.path(&format!("{name}.raw"));
        env.ok(&["restore", &snap, "-o", conv.to_str().unwrap(), "--disk-format", "raw"]);
        assert!(std::fs::read(&conv).unwrap() == raw_bytes, "{name} guest view differs from the raw disk");
        let conv = env.path(&format!("{name}.new.qcow2"));
        env.ok(&["restore", &snap, "-o", conv.to_str().unwrap(), "--disk-format", "qcow2", "--compress"]);
        qemu_img(&["check", conv.to_str().unwrap()]);
        qemu_img(&["compare", conv.to_str().unwrap(), raw.to_str().unwrap()]);
    }
    // inspect: of a file (nothing stored) and of a snapshot.
    let q = env.path("d.c.qcow2");
    let i = env.json(&["inspect", q.to_str().unwrap()]);
    assert_eq!(s(&i, "format"), "qcow2");
    assert_eq!(u(&i, "virtual_size"), 24 << 20);
    assert!(u(&i, "compressed_clusters") > 0);
    assert_eq!(u(&i, "reproducible_clusters"), u(&i, "compressed_clusters"), "stock zlib must reproduce qemu's clusters: {i}");

    // A backing file is refused by default, naming the reason; opaque on request.
    let overlay = env.path("overlay.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", overlay.to_str().unwrap(), "1M"]);
    let o = env.run(&["archive", overlay.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("backing file"), "{}", String::from_utf8_lossy(&o.stderr));
    let a = env.json(&["archive", overlay.to_str().unwrap(), "--allow-backing-file-opaque"]);
    assert!(!a["opaque"].is_null(), "{a}");
    assert!(env.restore_bytes(&s(&a, "snapshot")) == std::fs::read(&overlay).unwrap());
    let si = env.json(&["inspect", &s(&a, "snapshot")]);
    assert_eq!(s(&si, "backing_file"), "/etc/passwd");

    // A raw image that merely begins with the qcow2 magic, declared raw, is never decomposed.
    let mut fake = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    fake.extend(bytes(100_000, 3, false));
    let p = env.path("fake.raw");
    std::fs::write(&p, &fake).unwrap();
    let a = env.json(&["archive", p.to_str().unwrap(), "--disk-format", "raw"]);
    assert_eq!(s(&a, "format"), "raw");
    assert!(env.restore_bytes(&s(&a, "snapshot")) == fake);
    // Undeclared, the same bytes are garbage claiming to be qcow2: refused, clearly.
    let o = env.run(&["archive", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("qcow2"));
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn qemu_io(img: &std::path::Path, cmds: &[&str]) {
    let mut c = std::process::Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    assert!(c.arg(img).output().unwrap().status.success(), "qemu-io {cmds:?} failed");
}

/// Restores `snap --disk-format raw` and has `qemu-img compare` check it against `image`.
fn assert_converts_exactly(env: &Env, snap: &str, image: &std::path::Path) {
    let conv = env.path(&format!("{}.conv.raw", &snap[..12]));
    env.ok(&["restore", snap, "-o", conv.to_str().unwrap(), "--disk-format", "raw"]);
    qemu_img(&["compare", "-q", "-F", "raw", image.to_str().unwrap(), conv.to_str().unwrap()]);
}

#[test]
fn conversions_are_exact_or_refused() {
    if !have("qemu-img") || !have("qemu-io") {
        skip_or_fail_in_ci("qemu-img / qemu-io (qemu-utils) not installed");
        return;
    }
    let env = Env::init("64K");
    let disk = imgarc::synthetic::SyntheticDisk::new(24 << 20, 13);
    let raw = env.path("d.raw");
    disk.write_night(&raw, 0).unwrap();
    let first = env.archive(&raw, "d.raw");
    assert_eq!(u(&first, "virtual_bytes"), 24 << 20);

    // Extended L2 images decompose: they dedup against the raw disk and convert exactly.
    for (name, opts) in [("el2.qcow2", "extended_l2=on,cluster_size=64k"), ("el2-2m.qcow2", "extended_l2=on,cluster_size=2M")] {
        let q = env.path(name);
        qemu_img(&["convert", "-q", "-O", "qcow2", "-o", opts, raw.to_str().unwrap(), q.to_str().unwrap()]);
        let a = env.json(&["archive", q.to_str().unwrap(), "--name", name]);
        assert!(a["opaque"].is_null(), "{name}: {a}");
        assert_eq!(u(&a, "virtual_bytes"), 24 << 20);
        assert!(u(&a, "new_bytes") < u(&first, "new_bytes") / 50, "{name} stored too much: {a}");
        let snap = s(&a, "snapshot");
        assert!(env.restore_bytes(&snap) == std::fs::read(&q).unwrap(), "{name} differs after restore");
        assert_converts_exactly(&env, &snap, &q);
    }
    // Partially written subclusters (and zeroed ones over stale data).
    let q = env.path("el2-part.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", q.to_str().unwrap(), "8M"]);
    qemu_io(&q, &["write -P 0x11 1k 3k", "write -P 0x22 70k 2k", "write -P 0x33 1M 200k", "write -z 1030k 8k"]);
    let a = env.json(&["archive", q.to_str().unwrap(), "--name", "el2-part"]);
    assert!(a["opaque"].is_null(), "{a}");
    assert_converts_exactly(&env, &s(&a, "snapshot"), &q);
    // check --read-data decodes every layout recipe as restore would.
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["ok"], true, "{c}");
}

#[test]
fn containers_stored_as_bytes_refuse_conversion() {
    if !have("qemu-img") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed");
        return;
    }
    let env = Env::init("64K");
    let disk = imgarc::synthetic::SyntheticDisk::new(24 << 20, 13);
    let raw = env.path("d.raw");
    disk.write_night(&raw, 0).unwrap();
    // A container imgarc does not decompose: stored as its bytes, said so, never converted.
    let v = env.path("d.vmdk");
    qemu_img(&["convert", "-q", "-O", "vmdk", raw.to_str().unwrap(), v.to_str().unwrap()]);
    // imgarc decomposes qemu's vmdk; moving grain table 0 behind the grains (qemu still reads
    // it) makes one it stores opaque: grains arrive before the table that names them.
    let mut img = std::fs::read(&v).unwrap();
    let gd = u64::from_le_bytes(img[56..64].try_into().unwrap()) as usize * 512;
    let gt0 = u32::from_le_bytes(img[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let moved = (img.len() / 512) as u32;
    img.extend_from_within(gt0..gt0 + 2048);
    img[gd..gd + 4].copy_from_slice(&moved.to_le_bytes());
    std::fs::write(&v, &img).unwrap();
    let a = env.json(&["archive", v.to_str().unwrap(), "--name", "d.vmdk"]);
    assert_eq!(s(&a, "format"), "vmdk");
    assert!(s(&a, "opaque").contains("vmdk"), "{a}");
    assert_eq!(u(&a, "virtual_bytes"), 24 << 20, "virtual_bytes must be the disk size from the VMDK header, not the file length");
    let snap = s(&a, "snapshot");
    assert!(env.restore_bytes(&snap) == std::fs::read(&v).unwrap());
    for target in ["raw", "qcow2"] {
        let out = env.path(&format!("vmdk-as.{target}"));
        let o = env.run(&["restore", &snap, "-o", out.to_str().unwrap(), "--disk-format", target]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "converting a stored vmdk to {target} must fail");
        assert!(err.contains("vmdk") && err.contains("opaque"), "{err}");
        assert!(!out.exists(), "a refused conversion left {}", out.display());
    }

    // A qcow2 stored opaque (here: its corrupt bit is set) cannot be converted either.
    let q = env.path("corrupt.qcow2");
    qemu_img(&["convert", "-q", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    let mut img = std::fs::read(&q).unwrap();
    img[79] |= 2; // incompatible_features bit 1: corrupt
    std::fs::write(&q, &img).unwrap();
    let a = env.json(&["archive", q.to_str().unwrap(), "--name", "corrupt"]);
    assert!(!a["opaque"].is_null(), "{a}");
    let snap = s(&a, "snapshot");
    assert!(env.restore_bytes(&snap) == img);
    let o = env.run(&["restore", &snap, "-o", env.path("corrupt.raw").to_str().unwrap(), "--disk-format", "raw"]);
    assert!(!o.status.success(), "converting an opaque qcow2 must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains("corrupt bit"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn check_read_data_decodes_layout_recipes() {
    if !have("qemu-img") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed");
        return;
    }
    // A snapshot whose chunks are all intact but whose recipe does not fit what it records:
    // only decoding the recipe finds it (here the recorded file length is off by one).
    // The snapshot is forged as plaintext: an unencrypted repository.
    let env = Env::init_unencrypted("64K");
    let raw = env.path("d.raw");
    std::fs::write(&raw, bytes(2 << 20, 5, true)).unwrap();
    let q = env.path("d.qcow2");
    qemu_img(&["convert", "-q", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    let a = env.archive(&q, "d");
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
    let old = env.repo.join("snapshots").join(s(&a, "snapshot"));
    let mut snap: serde_json::Value = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    snap["logical_bytes"] = (u(&snap, "logical_bytes") + 1).into();
    let bytes = serde_json::to_vec_pretty(&snap).unwrap();
    std::fs::write(env.repo.join("snapshots").join(blake3::hash(&bytes).to_hex().as_str()), &bytes).unwrap();
    std::fs::remove_file(&old).unwrap();
    env.ok(&["index", "rebuild"]);
    let o = env.run(&["--json", "check", "--read-data"]);
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(!o.status.success(), "check --read-data passed a snapshot whose recipe does not match it: {c}");
    assert!(c.to_string().contains("layout recipe"), "{c}");
}

#[test]
fn archive_spill_flags() {
    if !have("qemu-img") || !have("qemu-io") {
        skip_or_fail_in_ci("qemu-img / qemu-io (qemu-utils) not installed");
        return;
    }
    // `qemu-img resize` moves the L1 behind the data, so all of it waits for its role: more
    // than the decomposer's 64 MiB of RAM, so the rest spills.
    let env = Env::init("64K");
    let raw = env.path("r.raw");
    std::fs::write(&raw, bytes(72 << 20, 9, true)).unwrap();
    let q = env.path("resized.qcow2");
    qemu_img(&["convert", "-q", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    qemu_img(&["resize", "-q", q.to_str().unwrap(), "1G"]);
    qemu_io(&q, &["write -P 0x77 900M 12k"]);
    let spill = env.path("spill");
    std::fs::create_dir(&spill).unwrap();
    let a = env.json(&["archive", q.to_str().unwrap(), "--spill-dir", spill.to_str().unwrap(), "--spill-limit", "1M"]);
    assert!(s(&a, "opaque").contains("spill limit"), "{a}");
    assert!(env.restore_bytes(&s(&a, "snapshot")) == std::fs::read(&q).unwrap());
    // IMGARC_SPILL_DIR names the directory too; one that does not exist is named in the error.
    let o = env.cmd(&["archive", q.to_str().unwrap()]).env("IMGARC_SPILL_DIR", env.path("nowhere")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn shared_corpus_round_trip() {
    // CI sets IMGARC_CORPUS to a make-series output; elsewhere the same round trip runs on a
    // generated corpus of the same shape (two nights, raw and qcow2).
    let env = Env::init("64K");
    let images = match std::env::var("IMGARC_CORPUS") {
        Ok(dir) => corpus_images(std::path::Path::new(&dir)),
        Err(_) => {
            eprintln!("IMGARC_CORPUS not set: the round trip runs on a generated corpus (the .ci/run script sets it)");
            generated_corpus(&env)
        }
    };
    let mut n = 0;
    for (path, sha) in &images {
        let file = path.file_name().unwrap().to_str().unwrap();
        let a = env.archive(path, file);
        let out = env.path("corpus.out");
        env.ok(&["restore", &s(&a, "snapshot"), "-o", out.to_str().unwrap()]);
        assert_eq!(&sha256(&std::fs::read(&out).unwrap()), sha, "{file}");
        n += 1;
    }
    assert!(n >= 4, "corpus had only {n} images");
    let check = env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true);
}

/// The images of a make-series corpus with their SHA-256 (`manifest.tsv`).
fn corpus_images(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (dir.join(f[3]), f[5].to_string())
        })
        .collect()
}

/// Two nights of a synthetic disk, raw and (with qemu-img) qcow2, as make-series lays them out.
fn generated_corpus(env: &Env) -> Vec<(std::path::PathBuf, String)> {
    let disk = imgarc::synthetic::SyntheticDisk::new(16 << 20, 31);
    let mut images = Vec::new();
    for night in 0..2 {
        let raw = env.path(&format!("a-night{night}.raw"));
        disk.write_night(&raw, night).unwrap();
        images.push(raw.clone());
        if have("qemu-img") {
            let q = env.path(&format!("a-night{night}.qcow2"));
            qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
            images.push(q);
        } else {
            skip_or_fail_in_ci("qemu-img (qemu-utils) not installed: the generated corpus has no qcow2 images");
            let copy = env.path(&format!("a-night{night}-copy.raw"));
            std::fs::copy(&raw, &copy).unwrap();
            images.push(copy);
        }
    }
    images
        .into_iter()
        .map(|p| {
            let sha = sha256(&std::fs::read(&p).unwrap());
            (p, sha)
        })
        .collect()
}

/// An image with a hole in the middle (zeros a block device must get written).
fn image_with_hole(env: &Env) -> (Vec<u8>, String) {
    let mut data = bytes(3 << 20, 21, false);
    data[(1 << 20)..(2 << 20)].fill(0);
    let p = env.path("holey.raw");
    std::fs::write(&p, &data).unwrap();
    let a = env.json(&["archive", p.to_str().unwrap(), "--digest", "sha256"]);
    (data, s(&a, "snapshot"))
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn restore_streams_into_a_fifo_and_a_symlink_to_a_character_device() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::init("64K");
    let (data, snap) = image_with_hole(&env);
    let fifo = env.path("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let link = env.path("pipe-link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    env.ok(&["restore", &snap, "-o", link.to_str().unwrap()]);
    // Types first: a restore that replaced the link never opened the FIFO, and its reader would wait forever.
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    let got = reader.join().unwrap();
    assert!(got == data, "the FIFO's reader got {} bytes, not the image", got.len());

    // /dev/null through a symlink: a character device is a stream too, and stays what it is.
    let null = env.path("null-link");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    env.ok(&["restore", &snap, "-o", null.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn restore_refuses_a_directory_or_socket_target_naming_it() {
    let env = Env::init("64K");
    let (_, snap) = image_with_hole(&env);
    let dir = env.path("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let o = env.run(&["restore", &snap, "-o", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_of(&o);
    assert!(err.contains("a-dir") && err.contains("is a directory"), "{err}");
    assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());

    let sock_path = env.path("a-socket");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let o = env.run(&["restore", &snap, "-o", sock_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a socket must not be replaced by a file");
    let err = stderr_of(&o);
    assert!(err.contains("a-socket") && err.contains("is a socket"), "{err}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&sock_path).unwrap().file_type().is_socket());
}

#[test]
fn restored_files_are_private_unless_mode_says_otherwise_and_never_follow_planted_links() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::init("64K");
    let (data, snap) = image_with_hole(&env);
    let out = env.path("private.raw");
    env.ok(&["restore", &snap, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777, 0o600);
    let shared = env.path("shared.raw");
    env.ok(&["restore", &snap, "-o", shared.to_str().unwrap(), "--mode", "0644"]);
    assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o644);
    let o = env.run(&["restore", &snap, "-o", shared.to_str().unwrap(), "--mode", "0x9"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));

    // A symlink planted at the temporary name is not followed: its target stays intact.
    let victim = env.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = env.path("planted.raw");
    std::os::unix::fs::symlink(&victim, env.path("planted.raw.imgarc-partial")).unwrap();
    env.ok(&["restore", &snap, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::read(&out).unwrap() == data);

    // A symlink to a regular file is replaced like the file; what it pointed to stays.
    let link = env.path("link.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    env.ok(&["restore", &snap, "-o", link.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_file());
    assert!(std::fs::read(&link).unwrap() == data);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// A loop device over a file of `size` bytes of 0xAA, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(backing: &std::path::Path, size: usize) -> Option<Loop> {
        if !std::path::Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: /dev/loop-control is missing, no loop devices here");
            return None;
        }
        std::fs::write(backing, vec![0xAAu8; size]).unwrap();
        let o = std::process::Command::new("losetup").args(["-f", "--show"]).arg(backing).output();
        match o {
            Ok(o) if o.status.success() => Some(Loop { dev: String::from_utf8_lossy(&o.stdout).trim().to_string() }),
            Ok(o) => {
                eprintln!("skipped: losetup failed: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run losetup: {e}");
                None
            }
        }
    }

    fn read(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        std::io::Read::read_exact(&mut std::fs::File::open(&self.dev).unwrap(), &mut buf).unwrap();
        buf
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn restore_writes_a_block_device_in_place_zeros_included() {
    let env = Env::init("64K");
    let (data, snap) = image_with_hole(&env);
    let Some(lo) = Loop::attach(&env.path("lv.img"), data.len() + (1 << 20)) else { return };
    // Reached through a symlink, as /dev/vg/lv is: the symlink and the node stay, the device gets the image.
    let link = env.path("lv");
    std::os::unix::fs::symlink(&lo.dev, &link).unwrap();
    let o = env.json(&["restore", &snap, "-o", link.to_str().unwrap()]);
    assert_eq!(u(&o, "bytes"), data.len() as u64);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let got = lo.read(data.len() + 4096);
    assert!(got[..data.len()] == data[..], "the device does not hold the image (holes must be written as zeros)");
    assert!(got[data.len()..].iter().all(|&b| b == 0xAA), "bytes past the image were touched");

    // --no-write-zeros leaves the hole's old bytes.
    let Some(lo2) = Loop::attach(&env.path("lv2.img"), data.len()) else { return };
    env.ok(&["restore", &snap, "-o", &lo2.dev, "--no-write-zeros"]);
    let got = lo2.read(data.len());
    assert!(got[..1 << 20] == data[..1 << 20] && got[(2 << 20)..] == data[(2 << 20)..]);
    assert!(got[(1 << 20)..(2 << 20)].iter().all(|&b| b == 0xAA));
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(&std::fs::metadata(&lo2.dev).unwrap().file_type()));

    // A device smaller than the image is refused before anything is written.
    let Some(small) = Loop::attach(&env.path("small.img"), data.len() - (1 << 20)) else { return };
    let o = env.run(&["restore", &snap, "-o", &small.dev]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr_of(&o);
    assert!(err.contains(&small.dev) && err.contains("nothing was written"), "{err}");
    assert!(small.read(data.len() - (1 << 20)).iter().all(|&b| b == 0xAA));
}

/// A minimal Glance v2 that serves one image record and its data.
fn fake_glance(record: serde_json::Value, data: Vec<u8>) -> String {
    use std::io::{BufRead, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let id = record["id"].as_str().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (ctype, body) = if path == format!("/v2/images/{id}/file") {
                ("application/octet-stream", data.clone())
            } else if path.starts_with(&format!("/v2/images/{id}")) {
                ("application/json", record.to_string().into_bytes())
            } else {
                ("application/json", br#"{"images": []}"#.to_vec())
            };
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    url
}

fn glance_record(id: &str, data: &[u8], algo: &str, value: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": "fips-image", "status": "active", "size": data.len(),
        "disk_format": "raw", "container_format": "bare", "visibility": "private",
        "os_hash_algo": algo, "os_hash_value": value,
        "direct_url": "swift+https://svc:STORE-KEY-42@swift.example/v1/AUTH_x/glance/img",
        "locations": [{"url": "rbd://fsid/images/img/snap?key=STORE-KEY-42", "metadata": {}}],
        "stores": "ceph",
    })
}

#[test]
fn glance_sha384_records_are_verified_and_store_locations_never_archived() {
    use sha2::Digest;
    // The snapshot object is read as plaintext: an unencrypted repository.
    let env = Env::init_unencrypted("64K");
    let data = bytes(1_500_000, 31, false);
    let id = "6f0a3c7e-0000-4000-8000-000000000384";
    let good = hex::encode(sha2::Sha384::digest(&data));
    let url = fake_glance(glance_record(id, &data, "sha384", &good), data.clone());
    let a = env.json(&["--glance-url", &url, "archive", &format!("glance:{id}")]);
    let verified: Vec<String> = serde_json::from_value(a["verified_digests"].clone()).unwrap();
    assert_eq!(verified, ["sha384"], "{a}");
    let snap = s(&a, "snapshot");
    // Store locations carry credentials: not in the snapshot object, not in `show`.
    for e in std::fs::read_dir(env.repo.join("snapshots")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("STORE-KEY-42") && !text.contains("direct_url"), "{text}");
    }
    let shown = env.json(&["show", &snap]);
    assert_eq!(shown["metadata"]["os_hash_algo"], "sha384");
    assert!(shown["metadata"].get("locations").is_none() && shown["metadata"].get("stores").is_none(), "{shown}");

    // A wrong sha384 fails the archive and stores nothing.
    let env2 = Env::init("64K");
    let bad = hex::encode(sha2::Sha384::digest(b"other bytes"));
    let url = fake_glance(glance_record(id, &data, "sha384", &bad), data.clone());
    let o = env2.run(&["--glance-url", &url, "archive", &format!("glance:{id}")]);
    assert_eq!(o.status.code(), Some(1), "a sha384 mismatch must fail the archive");
    assert!(stderr_of(&o).contains("sha384"), "{}", stderr_of(&o));
    assert!(env2.json(&["list"]).as_array().unwrap().is_empty());

    // An algorithm imgarc cannot compute: archived, and the output says it was not checked.
    let url = fake_glance(glance_record(id, &data, "sha3_512", "00ff"), data.clone());
    let o = env2.run(&["--glance-url", &url, "--json", "archive", &format!("glance:{id}")]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(a["verified_digests"], serde_json::json!([]), "{a}");
    assert_eq!(a["unverifiable_digests"], serde_json::json!(["sha3_512"]), "{a}");
    let o = env2.run(&["--glance-url", &url, "archive", &format!("glance:{id}")]);
    let prose = String::from_utf8_lossy(&o.stdout);
    assert!(prose.contains("warning") && prose.contains("sha3_512"), "{prose}");
}

#[test]
fn show_and_report_redact_store_locations_of_older_snapshots() {
    // The older snapshot is forged as plaintext: an unencrypted repository.
    let env = Env::init_unencrypted("64K");
    let data = bytes(300_000, 32, false);
    let p = env.path("old.raw");
    std::fs::write(&p, &data).unwrap();
    let snap = s(&env.archive(&p, "old"), "snapshot");
    // Rewrite the snapshot as an older imgarc stored Glance records: with their store locations.
    let key = env.repo.join("snapshots").join(&snap);
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    doc["metadata"] = serde_json::json!({"id": "img-1", "direct_url": "s3://AKIA:STORE-KEY-42@s3/b/img", "locations": [{"url": "s3://AKIA:STORE-KEY-42@s3/b/img"}], "stores": "s3", "hw_disk_bus": "scsi"});
    let bytes_ = serde_json::to_vec(&doc).unwrap();
    let old = imgarc::ids::Id::of(&bytes_).to_hex();
    std::fs::write(env.repo.join("snapshots").join(&old), &bytes_).unwrap();
    std::fs::remove_file(&key).unwrap();
    env.ok(&["index", "rebuild"]);

    let shown = env.ok(&["--json", "show", &old[..16]]);
    assert!(!shown.contains("STORE-KEY-42") && !shown.contains("direct_url") && !shown.contains("\"stores\""), "{shown}");
    assert!(shown.contains("scsi"), "the other metadata stays: {shown}");
    let report = env.ok(&["--json", "report"]);
    assert!(!report.contains("STORE-KEY-42"), "{report}");
}
