//! The XFS reader against real images made by `mkfs.xfs -p PROTOFILE` from a
//! source tree: every file's bytes equal the source, directory listings and
//! inode numbers equal what `xfs_db` says, modes and owners are those of the
//! proto file; a corrupted inode CRC is an error naming the inode; a log
//! whose last record is no unmount record (`xfs_logprint` says DIRTY) is noted.

use crate::support;
use imgarc::guest::fs::xfs;
use imgarc::guest::{FileType, Filesystem, ReadAt};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn have_tools() -> bool {
    for tool in ["mkfs.xfs", "xfs_db", "xfs_logprint"] {
        if Command::new(tool).arg("-V").output().is_err() {
            support::skip_or_fail_in_ci(&format!("{tool} (xfsprogs) missing"));
            return false;
        }
    }
    true
}

/// The source tree: regular files (a multi-MiB one, an empty one, a setuid
/// one), a file with a gap, symlinks short (inline) and long (remote),
/// nested directories, directories of 5 (short-form), 200 (block) and 5000
/// (leaf/node) entries.
fn make_tree(root: &Path, big: usize) {
    let w = |p: &str, d: &[u8]| std::fs::write(root.join(p), d).unwrap();
    for d in ["d5", "d200", "d5000", "deep/a/b/c", "empty_dir"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    w("big.bin", &support::bytes(big, 1, false));
    w("empty", b"");
    w("small.txt", b"hello\n");
    std::fs::set_permissions(root.join("small.txt"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    let mut sparse = support::bytes(8192, 2, false);
    sparse.resize(4 << 20, 0);
    sparse.extend_from_slice(&support::bytes(8192, 3, false));
    w("sparse.bin", &sparse);
    for i in 0..5 {
        w(&format!("d5/f{i}"), format!("{i}\n").as_bytes());
    }
    for i in 0..200 {
        w(&format!("d200/entry_with_a_longer_name_{i}"), format!("file {i}\n").as_bytes());
    }
    for i in 0..5000 {
        w(&format!("d5000/n{i}"), b"");
    }
    w("deep/a/b/c/leaf.txt", b"deep\n");
    std::os::unix::fs::symlink("small.txt", root.join("short_link")).unwrap();
    // 300 bytes still fit the inode (local); 500 need a remote block.
    std::os::unix::fs::symlink(format!("/{}/{}", "x".repeat(200), "y".repeat(98)), root.join("long_link")).unwrap();
    std::os::unix::fs::symlink(format!("/{}/{}", "r".repeat(200), "s".repeat(298)), root.join("remote_link")).unwrap();
}

/// The proto file for `root`: owners 1000+depth / 2000+depth so that they
/// differ from the source's and prove they come from the proto file.
fn proto(root: &Path) -> String {
    fn mode(m: &std::fs::Metadata) -> String {
        let t = if m.is_dir() {
            'd'
        } else if m.file_type().is_symlink() {
            'l'
        } else {
            '-'
        };
        let p = m.mode();
        format!("{t}{}{}{:03o}", if p & 0o4000 != 0 { 'u' } else { '-' }, if p & 0o2000 != 0 { 'g' } else { '-' }, p & 0o777)
    }
    fn walk(dir: &Path, depth: u32, out: &mut String) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (n, uid, gid) = (name.to_str().unwrap(), 1000 + depth, 2000 + depth);
            if m.is_dir() {
                out.push_str(&format!("{n} {} {uid} {gid}\n", mode(&m)));
                walk(&p, depth + 1, out);
                out.push_str("$\n");
            } else if m.file_type().is_symlink() {
                out.push_str(&format!("{n} {} {uid} {gid} {}\n", mode(&m), std::fs::read_link(&p).unwrap().display()));
            } else {
                out.push_str(&format!("{n} {} {uid} {gid} {}\n", mode(&m), p.display()));
            }
        }
    }
    let mut out = String::from("imgarc-test\n0 0\nd--755 0 0\n");
    walk(root, 0, &mut out);
    out.push_str("$\n");
    out
}

/// Makes an image of `size` bytes from `src` with extra mkfs.xfs options.
fn mkfs(dir: &Path, src: &Path, size: u64, opts: &[&str]) -> PathBuf {
    let proto_path = dir.join("proto");
    std::fs::write(&proto_path, proto(src)).unwrap();
    let img = dir.join("xfs.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-p"])
        .arg(&proto_path)
        .args(opts)
        .arg(&img)
        // mkfs.xfs refuses images under 300 MB unless it believes it runs under xfstests.
        .envs([("TEST_DEV", "1"), ("TEST_DIR", "1"), ("QA_CHECK_FS", "1")])
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.xfs: {}", String::from_utf8_lossy(&out.stderr));
    img
}

fn xfs_db(img: &Path, cmds: &[&str]) -> String {
    let mut c = Command::new("xfs_db");
    c.arg("-r");
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(img).output().unwrap();
    assert!(out.status.success(), "xfs_db {cmds:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `xfs_db ls` of a path: name → inode number (without . and ..).
fn xfs_db_ls(img: &Path, path: &str) -> BTreeMap<Vec<u8>, u64> {
    let mut out = BTreeMap::new();
    for line in xfs_db(img, &[&format!("ls {path}")]).lines().skip(1) {
        // "offset inode type hash namelen name (good)"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 || f[5] == "." || f[5] == ".." {
            continue;
        }
        out.insert(f[5].as_bytes().to_vec(), f[1].parse().unwrap());
    }
    out
}

/// `xfs_db inode N` field values.
fn xfs_db_field(img: &Path, ino: u64, field: &str) -> String {
    let s = xfs_db(img, &[&format!("inode {ino}"), &format!("print {field}")]);
    s.trim().split(" = ").nth(1).unwrap_or_default().to_string()
}

fn open(img: &Path) -> Box<dyn Filesystem> {
    let file: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(img).unwrap());
    xfs::open(file).unwrap().expect("an XFS")
}

/// Looks a path up from the root.
fn lookup(fs: &dyn Filesystem, path: &str) -> u64 {
    let mut ino = fs.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let entries = fs.read_dir(ino).unwrap();
        ino = entries.iter().find(|e| e.name == part.as_bytes()).unwrap_or_else(|| panic!("{path}: {part} missing")).ino;
    }
    ino
}

fn read_all(fs: &dyn Filesystem, ino: u64, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let mut at = 0;
    while at < out.len() {
        // Uneven pieces so that reads start and end inside extents.
        let n = fs.read(ino, at as u64, &mut out[at..(at + 1_000_003).min(size as usize)]).unwrap();
        assert!(n > 0, "short read at {at} of {size}");
        at += n;
    }
    out
}

/// Walks the image and the source tree side by side; returns the files compared.
fn compare_tree(fs: &dyn Filesystem, ino: u64, src: &Path, depth: u32, seen: &mut usize) {
    let mut entries = fs.read_dir(ino).unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(src).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
    names.sort();
    assert_eq!(entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), names, "entries of {}", src.display());
    for e in entries {
        let p = src.join(std::str::from_utf8(&e.name).unwrap());
        let sm = std::fs::symlink_metadata(&p).unwrap();
        let md = fs.metadata(e.ino).unwrap();
        assert_eq!(md.file_type, e.file_type, "{}: ftype in the directory entry", p.display());
        assert_eq!((md.uid, md.gid), (1000 + depth, 2000 + depth), "{}: owner from the proto file", p.display());
        *seen += 1;
        if sm.is_dir() {
            assert_eq!(md.file_type, FileType::Directory);
            assert_eq!(md.mode, sm.mode() & 0o7777, "{}", p.display());
            compare_tree(fs, e.ino, &p, depth + 1, seen);
        } else if sm.file_type().is_symlink() && e.name == b"remote_link" {
            // mkfs.xfs 6.1 -p writes a remote symlink's target without the v5 "XSLM" block
            // header; xfs_db reports "Metadata CRC error" on that block, so must we.
            let err = fs.read_link(e.ino).unwrap_err().to_string();
            assert!(err.contains(&format!("XFS inode {}: symlink block: CRC mismatch", e.ino)), "{err}");
        } else if sm.file_type().is_symlink() {
            assert_eq!(md.file_type, FileType::Symlink);
            let target = std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes();
            assert_eq!(fs.read_link(e.ino).unwrap(), target, "{}", p.display());
            assert_eq!(md.size, target.len() as u64);
        } else {
            assert_eq!(md.file_type, FileType::Regular);
            assert_eq!(md.mode, sm.mode() & 0o7777, "{}", p.display());
            assert_eq!(md.size, sm.len(), "{}", p.display());
            let data = std::fs::read(&p).unwrap();
            assert!(read_all(fs, e.ino, md.size) == data, "{}: bytes differ", p.display());
            // The data map covers the file and reads the same bytes.
            if let Some(runs) = fs.data_map(e.ino).unwrap() {
                let mut next = 0;
                for r in &runs {
                    assert_eq!(r.file_offset, next);
                    next += r.len;
                }
                assert_eq!(next, md.size, "{}: data map length", p.display());
            }
        }
    }
}

#[test]
fn xfs_tree_matches_source_and_xfs_db() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, 3_000_000 + 123);
    let img = mkfs(dir.path(), &src, 320 << 20, &["-L", "imgarc-xfs"]);
    let fs = open(&img);
    assert_eq!(fs.kind(), "xfs");
    assert_eq!(fs.label().as_deref(), Some("imgarc-xfs"));
    assert!(fs.notes().is_empty(), "a fresh image has a clean log: {:?}", fs.notes());
    assert_eq!(fs.root(), xfs_db(&img, &["sb 0", "print rootino"]).trim().trim_start_matches("rootino = ").parse::<u64>().unwrap());

    let mut seen = 0;
    compare_tree(&*fs, fs.root(), &src, 0, &mut seen);
    assert!(seen > 5200, "compared {seen} files");

    // Listings and inode numbers as xfs_db gives them, for each directory format.
    for (path, format) in [("/", "local"), ("/d5", "local"), ("/d200", "extents"), ("/d5000", "btree"), ("/deep/a", "local")] {
        let ino = lookup(&*fs, path);
        let got: BTreeMap<Vec<u8>, u64> = fs.read_dir(ino).unwrap().into_iter().map(|e| (e.name, e.ino)).collect();
        assert_eq!(got, xfs_db_ls(&img, path), "ls {path}");
        let fmt = xfs_db_field(&img, ino, "core.format");
        assert!(fmt.contains(format), "{path}: xfs_db says format {fmt}, the test expects {format}");
    }
    // Sizes, modes and link counts via xfs_db inode N.
    for path in ["/big.bin", "/small.txt", "/empty", "/long_link", "/d5000", "/sparse.bin"] {
        let ino = lookup(&*fs, path);
        let md = fs.metadata(ino).unwrap();
        assert_eq!(xfs_db_field(&img, ino, "core.size"), md.size.to_string(), "{path} size");
        assert_eq!(xfs_db_field(&img, ino, "core.nlinkv2"), md.nlink.to_string(), "{path} nlink");
        let mode = u32::from_str_radix(xfs_db_field(&img, ino, "core.mode").trim_start_matches('0'), 8).unwrap();
        assert_eq!(mode & 0o7777, md.mode, "{path} mode");
        assert_eq!(xfs_db_field(&img, ino, "core.mtime.nsec"), md.mtime.nanos.to_string(), "{path} mtime nsec");
    }
    // Timestamps are those of the run that made the image (bigtime on), not garbage.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let md = fs.metadata(lookup(&*fs, "/small.txt")).unwrap();
    assert!((md.mtime.secs - now).abs() < 600 && (md.ctime.secs - now).abs() < 600, "mtime {:?}", md.mtime);
    assert_eq!(md.mode, 0o4750);

    // The big file: one read_at per extent piece, not per block.
    let big = lookup(&*fs, "/big.bin");
    let runs = fs.data_map(big).unwrap().unwrap();
    assert!(runs.iter().all(|r| r.disk_offset.is_some()));
    // A symlink with an inline target and a remote one.
    assert_eq!(xfs_db_field(&img, lookup(&*fs, "/short_link"), "core.format"), "1 (local)");
    assert_eq!(xfs_db_field(&img, lookup(&*fs, "/long_link"), "core.format"), "1 (local)");
    let remote = lookup(&*fs, "/remote_link");
    assert_eq!(xfs_db_field(&img, remote, "core.format"), "2 (extents)");
    let db = Command::new("xfs_db")
        .args(["-r", "-c", &format!("inode {remote}"), "-c", "dblock 0", "-c", "type symlink", "-c", "print"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&db.stderr).contains("Metadata CRC error"), "xfs_db agrees the remote symlink block is bad");
    // Not a directory.
    assert!(matches!(fs.read_dir(big), Err(imgarc::guest::FsError::NotADirectory(_))));
}

/// 8 KiB directory blocks (dirblklog 1, block and leaf/node formats), small
/// allocation groups, and a large read issued as one `read_at` per extent.
#[test]
fn xfs_8k_directory_blocks_and_large_reads() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 16 MiB AGs. (A file larger than an AG is not possible here: mkfs.xfs 6.1 -p writes only
    // its first AG's worth as one extent, leaves the rest a hole and damages the next AGF.)
    make_tree(&src, 12 << 20);
    let img = mkfs(dir.path(), &src, 560 << 20, &["-d", "agsize=16m", "-n", "size=8k"]);
    let fs = open(&img);
    let big = lookup(&*fs, "/big.bin");
    let format = xfs_db_field(&img, big, "core.format");
    assert!(format == "2 (extents)" || format == "3 (btree)", "{format}");
    let nextents: usize = xfs_db_field(&img, big, "core.nextents").parse().unwrap();
    let runs = fs.data_map(big).unwrap().unwrap();
    // One extent per AG at most: the runs are the extents (AGs are not adjacent on disk).
    assert!(runs.len() == nextents, "{nextents} extents, {} runs", runs.len());
    assert_eq!(xfs_db(&img, &["sb 0", "print dirblklog"]).trim(), "dirblklog = 1");
    let mut seen = 0;
    compare_tree(&*fs, fs.root(), &src, 0, &mut seen);
    assert!(seen > 5200);
    for path in ["/d200", "/d5000"] {
        let got: BTreeMap<Vec<u8>, u64> = fs.read_dir(lookup(&*fs, path)).unwrap().into_iter().map(|e| (e.name, e.ino)).collect();
        assert_eq!(got, xfs_db_ls(&img, path), "ls {path}");
    }

    // Reading 12 MiB in one call touches the disk once per extent.
    struct Counting(std::fs::File, std::sync::atomic::AtomicUsize);
    impl ReadAt for Counting {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_at(offset, buf)
        }
    }
    let counting = Arc::new(Counting(std::fs::File::open(&img).unwrap(), 0.into()));
    let fs = xfs::open(counting.clone()).unwrap().unwrap();
    let big = lookup(&*fs, "/big.bin");
    fs.metadata(big).unwrap();
    let before = counting.1.load(std::sync::atomic::Ordering::Relaxed);
    let mut buf = vec![0u8; 12 << 20];
    assert_eq!(fs.read(big, 0, &mut buf).unwrap(), buf.len());
    let calls = counting.1.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(calls <= nextents, "{calls} read_at calls for {nextents} extents");
    assert!(buf == support::bytes(12 << 20, 1, false));
}

#[test]
fn xfs_corrupt_inode_crc_is_named() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("victim"), b"data\n").unwrap();
    let img = mkfs(dir.path(), &src, 320 << 20, &[]);
    let ino = xfs_db_ls(&img, "/")[&b"victim".to_vec()];
    // The inode's byte offset from xfs_db's own address arithmetic ("current daddr is N":
    // the inode's 512-byte sector; mkfs.xfs makes 512-byte inodes).
    assert_eq!(xfs_db(&img, &["sb 0", "print inodesize"]).trim(), "inodesize = 512");
    let daddr: u64 = xfs_db(&img, &[&format!("inode {ino}"), "daddr"]).split_whitespace().last().unwrap().parse().unwrap();
    let at = daddr * 512 + 60; // inside di_size
    let fs = open(&img);
    assert_eq!(fs.metadata(ino).unwrap().size, 5);
    drop(fs);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x40], at).unwrap();
    drop(f);
    // xfs_db agrees the inode is now damaged (it reports the bad CRC).
    let db = Command::new("xfs_db").args(["-r", "-c", &format!("inode {ino}"), "-c", "print core.size"]).arg(&img).output().unwrap();
    let db_text = String::from_utf8_lossy(&db.stdout).to_string() + &String::from_utf8_lossy(&db.stderr);
    assert!(db_text.contains("CRC") || db_text.contains("crc") || db_text.contains("bad"), "xfs_db: {db_text}");
    let fs = open(&img);
    let err = fs.metadata(ino).unwrap_err().to_string();
    assert!(err.contains(&format!("XFS inode {ino}")) && err.contains("CRC"), "{err}");
    // The directory still lists it; the rest of the filesystem reads.
    assert!(fs.read_dir(fs.root()).unwrap().iter().any(|e| e.name == b"victim"));
}

#[test]
fn xfs_dirty_log_is_noted() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let img = mkfs(dir.path(), &src, 320 << 20, &[]);
    let logprint = |img: &Path| {
        let out = Command::new("xfs_logprint").arg("-t").arg(img).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(logprint(&img).contains("<CLEAN>"));
    assert!(open(&img).notes().is_empty());
    // Turn the unmount record mkfs.xfs wrote into an ordinary transaction
    // record: its op header's flags (byte 9 of the record's data block).
    let logstart: u64 = xfs_db(&img, &["sb 0", "print logstart"]).trim().trim_start_matches("logstart = ").parse().unwrap();
    // "0x50030 (327728)"
    let converted = xfs_db(&img, &[&format!("convert fsb {logstart} daddr")]);
    let log_daddr: u64 = converted.split(['(', ')']).nth(1).unwrap().parse().unwrap();
    let at = log_daddr * 512 + 512 + 9;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    assert_eq!(b[0], 0x20, "mkfs.xfs's unmount record flag");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0], at).unwrap();
    drop(f);
    assert!(logprint(&img).contains("<DIRTY>"), "xfs_logprint: {}", logprint(&img));
    let fs = open(&img);
    let notes = fs.notes();
    assert!(notes.iter().any(|n| n.contains("XFS log is dirty: read without replaying it; recent changes may be missing")), "{notes:?}");
    assert_eq!(fs.read_dir(fs.root()).unwrap().len(), 1);
}

#[test]
fn xfs_truncated_and_garbled_images_are_errors() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let img = mkfs(dir.path(), &src, 320 << 20, &[]);
    let bytes = std::fs::read(&img).unwrap();
    // Truncated: the superblock says more blocks than there are.
    let cut: Arc<dyn ReadAt> = Arc::new(bytes[..1 << 20].to_vec());
    let err = xfs::open(cut).err().expect("truncated image refused").to_string();
    assert!(err.contains("pass the end of the volume"), "{err}");
    // A superblock byte flipped: CRC named.
    let mut bad = bytes.clone();
    bad[0x80] ^= 1;
    let err = xfs::open(Arc::new(bad) as Arc<dyn ReadAt>).err().expect("bad sb crc refused").to_string();
    assert!(err.contains("XFS superblock") && err.contains("CRC"), "{err}");
    // An unknown incompat feature bit (CRC recomputed so that only the bit is wrong).
    let mut unk = bytes.clone();
    let incompat = u32::from_be_bytes(unk[216..220].try_into().unwrap()) | 1 << 30;
    unk[216..220].copy_from_slice(&incompat.to_be_bytes());
    unk[224..228].fill(0);
    let c = imgarc::crc32c::crc32c(&unk[..512]);
    unk[224..228].copy_from_slice(&c.to_le_bytes());
    let err = xfs::open(Arc::new(unk) as Arc<dyn ReadAt>).err().expect("unknown feature refused").to_string();
    assert!(err.starts_with("unsupported") && err.contains("0x40000000"), "{err}");
    // Not XFS at all.
    assert!(xfs::open(Arc::new(vec![0u8; 4096]) as Arc<dyn ReadAt>).unwrap().is_none());
}

/// The committed XSPR fuzz seeds are real filesystems to the reader: each opens with every
/// CRC checked and lists a non-empty root (so the fuzzer starts deep, not at the magic).
#[test]
fn xfs_fuzz_seeds_open_and_list() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/xfs");
    let mut opened = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("xspr") {
            continue;
        }
        let image: Arc<dyn ReadAt> = Arc::new(crate::fuzz_targets::XfsFuzzImage::parse(&std::fs::read(&path).unwrap()));
        let fs = xfs::open(image).unwrap().unwrap_or_else(|| panic!("{}: not XFS", path.display()));
        let root = fs.read_dir(fs.root()).unwrap();
        assert!(!root.is_empty(), "{}: an empty root", path.display());
        opened += 1;
    }
    assert_eq!(opened, 3);
}
