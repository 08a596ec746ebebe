//! Images built by the real e2fsprogs (`mke2fs -d` from a source tree made
//! here), read back and compared with the source tree and with `debugfs`.

use super::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `true` when `tool` runs; outside CI a missing tool skips the test, in CI it fails.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-V").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{tool}: required in CI");
        eprintln!("skipped: {tool} is not installed");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs(img: &Path, request: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(request).arg(img))
}

/// Deterministic noise.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The source tree: every kind of file the reader must handle.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    fs::write(root.join("small.txt"), b"hello, ext4\n").unwrap();
    fs::write(root.join("a/b/c/deep.bin"), noise(3 << 20, 1)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    // Six 8 KiB islands 400 KiB apart and a hole at the end: more extents than
    // the inode's root holds (4), so the tree has a leaf block.
    let sparse = fs::File::create(root.join("sparse.bin")).unwrap();
    for i in 0..6u64 {
        std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(8192, 10 + i), i * 400 * 1024).unwrap();
    }
    sparse.set_len(3 << 20).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("fast-link")).unwrap();
    let long_target = format!("{}/target", "long-directory-name/".repeat(8));
    std::os::unix::fs::symlink(&long_target, root.join("slow-link")).unwrap();
    fs::hard_link(root.join("small.txt"), root.join("a/hard-link")).unwrap();
    run(Command::new("mkfifo").arg(root.join("fifo")));
    fs::write(root.join("with space.txt"), b"spaces\n").unwrap();
    fs::write(root.join("ünïcødé-файл.txt"), "utf-8 ✓\n").unwrap();
    fs::write(root.join("inline-sized"), b"fits in the inode\n").unwrap();
    for i in 0..2000 {
        fs::write(root.join(format!("many/entry-{i:04}")), format!("{i}\n")).unwrap();
    }
    let suid = root.join("a/suid");
    fs::write(&suid, b"#!/bin/sh\n").unwrap();
    if std::os::unix::fs::chown(&suid, Some(1234), Some(5678)).is_err() {
        eprintln!("not root: uid/gid stay the runner's");
    }
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o1750)).unwrap();
}

struct Image {
    _dir: tempfile::TempDir,
    src: PathBuf,
    img: PathBuf,
}

/// `mke2fs ARGS -d SRC img SIZE`.
fn build(args: &[&str], size: &str) -> Option<Image> {
    if !have("mke2fs") || !have("debugfs") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let img = dir.path().join("fs.img");
    run(Command::new("mke2fs").arg("-q").arg("-F").args(args).arg("-d").arg(&src).arg(&img).arg(size));
    Some(Image { _dir: dir, src, img })
}

fn open_image(path: &Path) -> Result<Box<dyn Filesystem + 'static>, FsError> {
    let file: Arc<dyn ReadAt> = Arc::new(fs::File::open(path).unwrap());
    open(file).map(|fs| fs.expect("an ext filesystem"))
}

fn lookup(fs: &dyn Filesystem, path: &str) -> Ino {
    let mut ino = fs.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let entries = fs.read_dir(ino).unwrap();
        ino = entries.iter().find(|e| e.name == part.as_bytes()).unwrap_or_else(|| panic!("{path}: {part}")).ino;
    }
    ino
}

fn read_all(fs: &dyn Filesystem, ino: Ino) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = fs.read(ino, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A `Field: value` of `debugfs stat` output.
fn stat_field<'s>(stat: &'s str, field: &str) -> &'s str {
    let at = stat.find(&format!("{field}:")).unwrap_or_else(|| panic!("{field} in {stat}")) + field.len() + 1;
    stat[at..].split_whitespace().next().unwrap()
}

/// Compares the whole tree under `rel` with the source and with debugfs.
fn compare_tree(fs: &dyn Filesystem, image: &Image, rel: &str, ino: Ino, checked: &mut usize) {
    let src_dir = image.src.join(rel.trim_start_matches('/'));
    let mut want: Vec<Vec<u8>> =
        fs::read_dir(&src_dir).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).filter(|n| n != b"lost+found").collect();
    let entries = fs.read_dir(ino).unwrap();
    let mut got: Vec<Vec<u8>> = entries.iter().map(|e| e.name.clone()).filter(|n| n != b"lost+found").collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "entries of {rel}");
    for e in entries.iter().filter(|e| e.name != b"lost+found") {
        let name = String::from_utf8(e.name.clone()).unwrap();
        let path = format!("{rel}/{name}");
        let src = src_dir.join(&name);
        let sm = fs::symlink_metadata(&src).unwrap();
        let md = fs.metadata(e.ino).unwrap();
        assert_eq!(md.ino, e.ino);
        assert_eq!(md.file_type, e.file_type, "{path}: dirent type");
        assert_eq!(md.mode, sm.mode() & 0o7777, "{path}: mode");
        assert_eq!((md.uid, md.gid), (sm.uid(), sm.gid()), "{path}: owner");
        assert_eq!(md.mtime.secs, sm.mtime(), "{path}: mtime");
        assert_eq!(md.nlink as u64, sm.nlink(), "{path}: links");
        // debugfs on the same image: inode number, size, links, mode.
        if !path.starts_with("/many/") || path.ends_with("-0007") {
            let stat = debugfs(&image.img, &format!("stat \"{path}\""));
            assert_eq!(stat_field(&stat, "Inode"), e.ino.to_string(), "{path}: inode (debugfs)");
            assert_eq!(stat_field(&stat, "Links"), md.nlink.to_string(), "{path}: links (debugfs)");
            assert_eq!(stat_field(&stat, "Mode"), format!("{:04o}", md.mode), "{path}: mode (debugfs)");
            assert_eq!(stat_field(&stat, "User"), md.uid.to_string(), "{path}: uid (debugfs)");
            if md.file_type != FileType::Directory {
                assert_eq!(stat_field(&stat, "Size"), md.size.to_string(), "{path}: size (debugfs)");
            }
        }
        match md.file_type {
            FileType::Directory => compare_tree(fs, image, &path, e.ino, checked),
            FileType::Regular => {
                let want = fs::read(&src).unwrap();
                assert_eq!(md.size, want.len() as u64, "{path}: size");
                let got = read_all(fs, e.ino);
                assert!(got == want, "{path}: contents differ");
                if let Some(runs) = fs.data_map(e.ino).unwrap() {
                    let mut at = 0;
                    for r in &runs {
                        assert_eq!(r.file_offset, at, "{path}: runs tile the file");
                        if r.disk_offset.is_none() {
                            assert!(want[at as usize..(at + r.len) as usize].iter().all(|&b| b == 0), "{path}: hole");
                        }
                        at += r.len;
                    }
                    assert_eq!(at, md.size, "{path}: runs cover the file");
                }
            }
            FileType::Symlink => {
                let target = fs::read_link(&src).unwrap().into_os_string().into_encoded_bytes();
                assert_eq!(fs.read_link(e.ino).unwrap(), target, "{path}: target");
                assert_eq!(md.size, target.len() as u64);
            }
            FileType::Fifo => assert!(sm.file_type().is_fifo(), "{path}"),
            other => panic!("{path}: unexpected {other:?}"),
        }
        *checked += 1;
    }
}

fn check_variant(args: &[&str], size: &str, kind: &str) -> Option<Image> {
    let image = build(args, size)?;
    let fs = open_image(&image.img).unwrap();
    assert_eq!(fs.kind(), kind, "{args:?}");
    let mut checked = 0;
    compare_tree(fs.as_ref(), &image, "", fs.root(), &mut checked);
    assert!(checked > 2000, "{args:?}: {checked} files compared");
    Some(image)
}

#[test]
fn ext4_default_metadata_csum_64bit() {
    let Some(image) = check_variant(&["-t", "ext4", "-O", "metadata_csum,64bit"], "64M", "ext4") else { return };
    let fs = open_image(&image.img).unwrap();
    // More than four extents: the tree has a leaf block; the holes are holes.
    let runs = fs.data_map(lookup(fs.as_ref(), "/sparse.bin")).unwrap().unwrap();
    assert!(runs.iter().filter(|r| r.disk_offset.is_none()).count() >= 6, "{runs:?}");
    let many = lookup(fs.as_ref(), "/many");
    let stat = debugfs(&image.img, "stat /many");
    assert!(stat.contains("Flags: 0x81000") || stat.contains("Flags: 0x1000"), "htree-indexed: {stat}");
    assert_eq!(fs.read_dir(many).unwrap().len(), 2000);
    assert!(fs.notes().is_empty(), "{:?}", fs.notes());
}

#[test]
fn ext4_vm_b_like_layout() {
    check_variant(&["-t", "ext4", "-O", "^metadata_csum,^64bit"], "64M", "ext4");
}

#[test]
fn ext4_4k_blocks() {
    check_variant(&["-t", "ext4", "-b", "4096"], "64M", "ext4");
}

#[test]
fn ext4_1k_blocks() {
    check_variant(&["-t", "ext4", "-b", "1024"], "64M", "ext4");
}

#[test]
fn ext2_and_ext3_block_maps() {
    check_variant(&["-t", "ext2"], "64M", "ext2");
    check_variant(&["-t", "ext3", "-b", "4096"], "64M", "ext3");
}

#[test]
fn ext4_inline_data() {
    let Some(image) = check_variant(&["-t", "ext4", "-O", "inline_data", "-I", "256"], "64M", "ext4") else {
        return;
    };
    let fs = open_image(&image.img).unwrap();
    let ino = lookup(fs.as_ref(), "/inline-sized");
    assert!(debugfs(&image.img, "stat /inline-sized").contains("Size of inline data"));
    assert_eq!(fs.data_map(ino).unwrap(), None, "inline data has no runs");
    // An inline directory: a/b holds one entry (c).
    assert!(debugfs(&image.img, "stat /a/b").contains("Size of inline data"));
}

/// Overwrites `len` bytes at `offset` of the image.
fn poke(img: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, offset).unwrap();
}

fn peek(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(img).unwrap(), &mut b, offset).unwrap();
    b
}

/// Where `debugfs imap` says inode `path` is: byte offset in the image.
fn inode_offset(img: &Path, path: &str, bs: u64) -> u64 {
    let out = debugfs(img, &format!("imap {path}"));
    let block: u64 = stat_field(&out, "located at block").trim_end_matches(',').parse().unwrap();
    let off = out.split("offset 0x").nth(1).unwrap().trim();
    block * bs + u64::from_str_radix(off, 16).unwrap()
}

#[test]
fn corrupted_structures_are_named() {
    let Some(image) = build(&["-t", "ext4", "-b", "4096", "-O", "metadata_csum,64bit"], "64M") else { return };
    let img = &image.img;
    let fs = open_image(img).unwrap();
    let small = lookup(fs.as_ref(), "/small.txt");
    let sparse = lookup(fs.as_ref(), "/sparse.bin");
    let a = lookup(fs.as_ref(), "/a");
    drop(fs);
    // One byte of an inode (its atime) → that inode's checksum fails.
    let at = inode_offset(img, "/small.txt", 4096) + 0x08;
    let b = peek(img, at, 1);
    poke(img, at, &[b[0] ^ 0x55]);
    let fs = open_image(img).unwrap();
    let err = fs.metadata(small).unwrap_err().to_string();
    assert!(err.contains(&format!("ext4 inode {small}: checksum")), "{err}");
    // The extent leaf block of sparse.bin: a payload byte → its checksum, the magic → the magic.
    let stat = debugfs(img, "stat /sparse.bin");
    let etb: u64 = stat.split("(ETB0):").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    poke(img, etb * 4096 + 20, &[0xAA]);
    let err = open_image(img).unwrap().data_map(sparse).unwrap_err().to_string();
    assert!(err.contains(&format!("extent block {etb}: checksum")), "{err}");
    poke(img, etb * 4096, &[0x34, 0x12]);
    let err = open_image(img).unwrap().read(sparse, 0, &mut [0u8; 16]).unwrap_err().to_string();
    assert!(err.contains("extent header magic 0x1234"), "{err}");
    // A directory block of /a → the directory's checksum.
    let blocks = debugfs(img, "blocks /a");
    let dblock: u64 = blocks.split_whitespace().next().unwrap().parse().unwrap();
    let b = peek(img, dblock * 4096 + 30, 1);
    poke(img, dblock * 4096 + 30, &[b[0] ^ 1]);
    let err = open_image(img).unwrap().read_dir(a).unwrap_err().to_string();
    assert!(err.contains(&format!("directory inode {a}, block {dblock}: checksum")), "{err}");
    // The superblock's checksum.
    poke(img, 1024 + 0x78, b"tampered");
    let err = open_image(img).err().expect("refused").to_string();
    assert!(err.contains("ext4 superblock: checksum"), "{err}");
}

#[test]
fn extent_magic_without_checksums() {
    let Some(image) = build(&["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"], "64M") else { return };
    let img = &image.img;
    let ino = lookup(open_image(img).unwrap().as_ref(), "/a/b/c/deep.bin");
    // The root header in i_block (inode + 0x28).
    poke(img, inode_offset(img, "/a/b/c/deep.bin", 4096) + 0x28, &[0x34, 0x12]);
    let err = open_image(img).unwrap().read(ino, 0, &mut [0u8; 16]).unwrap_err().to_string();
    assert_eq!(err, format!("malformed ext4 inode {ino}: extent root: extent header magic 0x1234"));
}

#[test]
fn directory_loop_is_just_an_entry() {
    let Some(image) = build(&["-t", "ext4"], "64M") else { return };
    run(Command::new("debugfs").arg("-w").arg("-R").arg("link /a /a/b/loop").arg(&image.img));
    let fs = open_image(&image.img).unwrap();
    let a = lookup(fs.as_ref(), "/a");
    let b = lookup(fs.as_ref(), "/a/b");
    let entries = fs.read_dir(b).unwrap();
    let lp = entries.iter().find(|e| e.name == b"loop").expect("the loop entry");
    assert_eq!(lp.ino, a);
    assert_eq!(fs.read_dir(lp.ino).unwrap().len(), fs.read_dir(a).unwrap().len());
}

#[test]
fn not_ext_and_unsupported_features() {
    let zeros: Arc<dyn ReadAt> = Arc::new(vec![0u8; 8192]);
    assert!(open(zeros).unwrap().is_none());
    let Some(image) = build(&["-t", "ext4", "-O", "^metadata_csum"], "16M") else { return };
    let mut bytes = fs::read(&image.img).unwrap();
    // An incompat bit nobody knows, and compression, are refused by name.
    bytes[1024 + 0x60..1024 + 0x64].copy_from_slice(&(0x40_0001u32 | 0x2c2).to_le_bytes());
    let err = open(Arc::new(bytes.clone())).err().unwrap().to_string();
    assert!(err.contains("compression") && err.contains("0x400000"), "{err}");
    // Block size 128 KiB.
    bytes[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x2c2u32.to_le_bytes());
    bytes[1024 + 0x18] = 7;
    let err = open(Arc::new(bytes)).err().unwrap().to_string();
    assert!(err.contains("block size"), "{err}");
}

/// Everything a walk sees (names, metadata, contents), for comparing two views.
fn snapshot_tree(fs: &dyn Filesystem, ino: Ino, path: &str, out: &mut Vec<String>) {
    let mut entries = fs.read_dir(ino).unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
        let md = fs.metadata(e.ino).unwrap();
        let body = match md.file_type {
            FileType::Regular => crate::digest::md5_hex(&read_all(fs, e.ino)),
            FileType::Symlink => String::from_utf8_lossy(&fs.read_link(e.ino).unwrap()).into_owned(),
            _ => String::new(),
        };
        out.push(format!("{p} {md:?} {body}"));
        if md.file_type == FileType::Directory {
            snapshot_tree(fs, e.ino, &p, out);
        }
    }
}

#[test]
fn dirty_journal_is_replayed_in_memory() {
    let Some(image) = build(&["-t", "ext4", "-b", "1024", "-O", "metadata_csum,64bit"], "64M") else { return };
    let dir = image._dir.path();
    let base = &image.img;
    // The truth after: the same filesystem changed by debugfs (a chown, a new file, a removal).
    let changed = dir.join("changed.img");
    fs::copy(base, &changed).unwrap();
    fs::write(dir.join("newf"), b"written through the journal\n").unwrap();
    let cmds = format!("sif /small.txt uid 4242\nwrite {} /new-file\nrm \"/with space.txt\"\n", dir.join("newf").display());
    fs::write(dir.join("change.cmds"), cmds).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(dir.join("change.cmds")).arg(&changed));
    // The blocks that differ go into the base image's journal, in two
    // transactions; a third writes garbage over a free block and a fourth revokes it.
    let (a, b) = (fs::read(base).unwrap(), fs::read(&changed).unwrap());
    let differ: Vec<usize> = (0..a.len() / 1024).filter(|&i| a[i * 1024..][..1024] != b[i * 1024..][..1024]).collect();
    assert!(differ.len() >= 5, "{differ:?}");
    let (t1, t2) = differ.split_at(differ.len() / 2);
    let mut cmds = String::from("jo -c\n");
    for (n, part) in [t1, t2].iter().enumerate() {
        let file = dir.join(format!("t{n}"));
        let data: Vec<u8> = part.iter().flat_map(|&i| b[i * 1024..][..1024].to_vec()).collect();
        fs::write(&file, data).unwrap();
        let list: Vec<String> = part.iter().map(|i| i.to_string()).collect();
        cmds += &format!("jw -b {} {}\n", list.join(","), file.display());
    }
    let free_block = 50_000;
    fs::write(dir.join("garbage"), noise(1024, 99)).unwrap();
    cmds += &format!("jw -b {free_block} {}\njw -r {free_block}\njc\n", dir.join("garbage").display());
    fs::write(dir.join("journal.cmds"), cmds).unwrap();
    let before = dir.join("before.img");
    fs::copy(base, &before).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(dir.join("journal.cmds")).arg(base));
    assert!(run(Command::new("dumpe2fs").arg("-h").arg(base)).contains("needs_recovery"));
    // e2fsck -fy on a copy is the truth of the replayed filesystem.
    let fsck = dir.join("fsck.img");
    fs::copy(base, &fsck).unwrap();
    let status = Command::new("e2fsck").arg("-fy").arg(&fsck).output().unwrap().status;
    assert!(status.code().is_some_and(|c| c <= 1), "e2fsck: {status}");

    let file: Arc<dyn ReadAt> = Arc::new(fs::File::open(base).unwrap());
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    file.read_at(SUPERBLOCK_OFFSET, &mut raw).unwrap();
    let replayed = Ext4::open(file, &raw).unwrap();
    assert_eq!(
        replayed.notes(),
        vec![format!(
            "journal needed recovery: 3 transactions replayed in memory (sequence 1, {} block copies, {} blocks)",
            differ.len(),
            differ.len()
        )]
    );
    assert!(!replayed.vol.overlay.contains_key(&free_block), "revoked");
    let truth = open_image(&fsck).unwrap();
    assert!(truth.notes().is_empty());
    let (mut got, mut want) = (Vec::new(), Vec::new());
    snapshot_tree(&replayed, replayed.root(), "", &mut got);
    snapshot_tree(truth.as_ref(), truth.root(), "", &mut want);
    assert_eq!(got, want);
    assert!(got.iter().any(|l| l.starts_with("/new-file ")), "the journaled file is there");
    assert!(!got.iter().any(|l| l.starts_with("/with space.txt ")), "the removed one is not");
    // Without the replay the old tree shows: the journal really carries the change.
    let plain = open_image(&before).unwrap();
    let mut old = Vec::new();
    snapshot_tree(plain.as_ref(), plain.root(), "", &mut old);
    assert_ne!(got, old);
}
