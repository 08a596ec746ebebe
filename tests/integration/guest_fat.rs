//! FAT12/16/32 read through `guest::fs::fat` on images the real tools build
//! (dosfstools' mkfs.vfat, mtools' mcopy/mmd/mattrib/mdel, sgdisk for an EFI
//! system partition), compared with what mtools' `mdir` says and with the
//! source files; and hostile volumes (a FAT chain loop, a directory that
//! contains itself, every truncation of a small image, bytes flipped in its
//! metadata) that must give errors, never a panic or a hang.

use crate::support;
use imgarc::guest::fs::fat;
use imgarc::guest::{open_filesystem, FileType, Filesystem, FsError, Ino, Metadata, ReadAt, Slice};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TOOLS: &[&str] = &["mkfs.vfat", "mcopy", "mdir", "mmd", "mattrib", "mdel", "sgdisk"];

fn have_tools() -> bool {
    for t in TOOLS {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().is_ok_and(|o| o.status.success());
        if !found {
            support::skip_or_fail_in_ci(&format!("{t} (dosfstools / mtools / gdisk) is not installed"));
            return false;
        }
    }
    true
}

/// Runs a tool with TZ=UTC (mtools writes local times; the reader reads them as UTC) and
/// without a user's mtools configuration; returns stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `mkfs.vfat -C IMG KIB` with extra options.
fn mkfs(img: &Path, kib: u64, opts: &[&str]) {
    let _ = std::fs::remove_file(img);
    let mut args: Vec<&str> = opts.to_vec();
    let size = kib.to_string();
    args.extend(["-C", img.to_str().unwrap(), &size]);
    run("mkfs.vfat", &args);
}

fn open_image(img: &Path) -> Box<dyn Filesystem> {
    let bytes: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(img).unwrap());
    fat::open(bytes).unwrap().expect("a FAT volume")
}

/// A fixed, even-second mtime per file (FAT keeps 2 s): 2021-06-15 12:00:00 UTC + 2·`i` minutes + 2 s.
fn mtime_for(i: usize) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_623_758_400 + 120 * i as u64 + 2)
}

/// The tree every FAT variant is filled with: long names, spaces, UTF-8, a lower-case 8.3
/// name, a code page 437 short name, nested directories, 600 entries in one directory, an
/// empty file and one spanning many clusters. Returns relative path → content (None: directory).
fn make_tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut add = |rel: &str, data: Option<Vec<u8>>| {
        let p = root.join(rel);
        match &data {
            None => std::fs::create_dir_all(&p).unwrap(),
            Some(d) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, d).unwrap();
            }
        }
        files.insert(rel.to_string(), data);
    };
    add("hello.txt", Some(b"hello, FAT\n".to_vec()));
    add("UPPER.TXT", Some(b"upper\n".to_vec()));
    add("A file with spaces.txt", Some(b"spaces\n".to_vec()));
    add("Übergrößenträger €uro – ünïcödé.txt", Some("ünïcödé\n".as_bytes().to_vec()));
    add("grüße.txt", Some(b"cp437 short name\n".to_vec()));
    add("MixedCase.Md", Some(b"mixed\n".to_vec()));
    add("empty", Some(Vec::new()));
    add("big.bin", Some(support::bytes(300_000, 7, false)));
    add("a", None);
    add("a/b", None);
    add("a/b/c", None);
    add("a/b/c/deep file.txt", Some(b"deep\n".to_vec()));
    add("many", None);
    for i in 0..600 {
        add(&format!("many/entry number {i:04}.txt"), Some(format!("{i}\n").into_bytes()));
    }
    // Even-second mtimes, distinct per file, that mcopy -m keeps.
    for (i, (rel, data)) in files.iter().enumerate() {
        if data.is_some() {
            let f = std::fs::File::options().write(true).open(root.join(rel)).unwrap();
            f.set_modified(mtime_for(i)).unwrap();
        }
    }
    files
}

/// A walked tree: relative path → (metadata, content of regular files).
type Tree = BTreeMap<String, (Metadata, Option<Vec<u8>>)>;

/// Everything under the root.
fn walk(fs: &dyn Filesystem) -> Result<Tree, FsError> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Ino, String, usize)> = vec![(fs.root(), String::new(), 0)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        for e in fs.read_dir(dir)? {
            let name = String::from_utf8(e.name.clone()).expect("UTF-8 name");
            let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let md = fs.metadata(e.ino)?;
            assert_eq!(md.file_type, e.file_type, "{path}");
            let content = match e.file_type {
                FileType::Directory => {
                    assert!(depth < 16, "{path}: too deep");
                    stack.push((e.ino, path.clone(), depth + 1));
                    None
                }
                _ => {
                    let mut data = vec![0u8; md.size as usize];
                    // Read in odd-sized pieces so reads cross cluster and run boundaries.
                    let mut at = 0;
                    while at < data.len() {
                        let end = (at + 7777).min(data.len());
                        let n = fs.read(e.ino, at as u64, &mut data[at..end])?;
                        assert!(n > 0, "{path}: short read at {at}");
                        at += n;
                    }
                    assert_eq!(fs.read(e.ino, md.size, &mut [0u8; 16])?, 0, "{path}: read past the end");
                    Some(data)
                }
            };
            out.insert(path, (md, content));
        }
    }
    Ok(out)
}

/// One entry of `mdir -/ -a`: the name (long if there is one), the size (None: a directory),
/// and the date and time as mdir prints them.
#[derive(Debug, PartialEq, Eq)]
struct MdirEntry {
    size: Option<u64>,
    stamp: String,
}

/// Parses `mdir -/ -a -i IMG ::` into path → entry (`.` and `..` left out).
fn mdir(img: &Path) -> BTreeMap<String, MdirEntry> {
    let text = run("mdir", &["-/", "-a", "-i", img.to_str().unwrap(), "::"]);
    let mut out = BTreeMap::new();
    let mut dir: Option<String> = None;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("Directory for ::/") {
            dir = Some(d.to_string());
            continue;
        }
        let Some(d) = &dir else { continue };
        let chars: Vec<char> = line.chars().collect();
        if chars.len() < 13 {
            continue;
        }
        let base: String = chars[..8].iter().collect::<String>().trim_end().to_string();
        let ext: String = chars[9..12].iter().collect::<String>().trim_end().to_string();
        let rest: String = chars[12..].iter().collect();
        let mut words = rest.split_whitespace();
        let (Some(size), Some(date), Some(time)) = (words.next(), words.next(), words.next()) else { continue };
        // Entry lines only (not the "N files  M bytes" summaries): a YYYY-MM-DD date third.
        if date.len() != 10 || date.as_bytes()[4] != b'-' || base == "." || base == ".." {
            continue;
        }
        // What follows the time is the long name (it may hold spaces).
        let long = rest[rest.find(time).unwrap() + time.len()..].trim();
        let name = if !long.is_empty() {
            long.to_string()
        } else if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        };
        let path = if d.is_empty() { name } else { format!("{d}/{name}") };
        let size = if size == "<DIR>" { None } else { Some(size.parse().unwrap()) };
        out.insert(path, MdirEntry { size, stamp: format!("{date} {time:>5}") });
    }
    out
}

/// `YYYY-MM-DD HH:MM` of a timestamp, as mdir prints it (hour space-padded).
fn mdir_stamp(t: imgarc::guest::Timestamp) -> String {
    let dt = chrono::DateTime::from_timestamp(t.secs, 0).unwrap();
    format!("{} {:>5}", dt.format("%Y-%m-%d"), format!("{}:{}", dt.format("%-H"), dt.format("%M")))
}

/// Builds a volume of the given variant, fills it with [`make_tree`], and checks every name,
/// size, date and byte against mdir and the source tree.
fn check_variant(fat_opts: &[&str], kib: u64, label: &str) {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = make_tree(&src);
    let img = tmp.path().join("fat.img");
    let mut opts = fat_opts.to_vec();
    opts.extend(["-n", label]);
    mkfs(&img, kib, &opts);
    let entries: Vec<String> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path().to_str().unwrap().to_string()).collect();
    let mut args = vec!["-s", "-m", "-i", img.to_str().unwrap()];
    args.extend(entries.iter().map(String::as_str));
    args.push("::");
    run("mcopy", &args);
    run("mattrib", &["-i", img.to_str().unwrap(), "+r", "::/UPPER.TXT"]);
    run("mattrib", &["-i", img.to_str().unwrap(), "+r", "::/a/b"]);

    let bytes: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(&img).unwrap());
    let fs = open_filesystem(bytes).unwrap().expect("recognised as a filesystem");
    assert_eq!(fs.kind(), "vfat");
    assert_eq!(fs.label().as_deref(), Some(label));
    assert!(fs.notes().is_empty(), "{:?}", fs.notes());
    let got = walk(&*fs).unwrap();

    // Names, types and contents equal the source tree.
    let got_names: Vec<&String> = got.keys().collect();
    let want_names: Vec<&String> = files.keys().collect();
    assert_eq!(got_names, want_names);
    for (path, want) in &files {
        let (md, content) = &got[path];
        assert_eq!(content, want, "{path}: content");
        match want {
            None => assert_eq!(md.file_type, FileType::Directory, "{path}"),
            Some(d) => {
                assert_eq!(md.size, d.len() as u64, "{path}: size");
                // mcopy -m kept the source's mtime (FAT: 2 s resolution).
                let src_mtime = std::fs::metadata(src.join(path)).unwrap().modified().unwrap();
                let secs = src_mtime.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
                assert_eq!(md.mtime.secs, secs, "{path}: mtime");
            }
        }
    }
    // Names, sizes and dates equal mdir's.
    let listed = mdir(&img);
    assert_eq!(listed.keys().collect::<Vec<_>>(), want_names, "mdir's names");
    for (path, m) in &listed {
        let (md, _) = &got[path];
        let size = (md.file_type == FileType::Regular).then_some(md.size);
        assert_eq!(m, &MdirEntry { size, stamp: mdir_stamp(md.mtime) }, "{path}");
    }
    // FAT has no owners; modes come from the read-only attribute.
    assert_eq!((got["hello.txt"].0.mode, got["hello.txt"].0.uid, got["hello.txt"].0.gid), (0o644, 0, 0));
    assert_eq!(got["UPPER.TXT"].0.mode, 0o444);
    assert_eq!(got["a"].0.mode, 0o755);
    assert_eq!(got["a/b"].0.mode, 0o555);
    // The 600-entry directory spans many clusters (3 slots of 32 bytes per long-named entry).
    let many = &got["many"].0;
    assert!(many.size >= 600 * 3 * 32, "many/: {} bytes", many.size);
    // Every id leads back to its entry; an id that is no entry is refused.
    for (path, (md, _)) in &got {
        assert_eq!(&fs.metadata(md.ino).unwrap(), md, "{path}");
    }
    let hello = got["hello.txt"].0.ino;
    for bad in [0, 2, hello + 1, hello + 16, u64::MAX - 31, std::fs::metadata(&img).unwrap().len()] {
        assert!(fs.metadata(bad).is_err(), "id {bad} accepted");
    }
    assert!(matches!(fs.read_dir(hello), Err(FsError::NotADirectory(_))));
    assert!(fs.read(got["a"].0.ino, 0, &mut [0u8; 8]).is_err());
    // The big file's data map, read straight from the image, is the file.
    let big = got["big.bin"].0.ino;
    let map = fs.data_map(big).unwrap().unwrap();
    let image = std::fs::read(&img).unwrap();
    let mut joined = Vec::new();
    for r in &map {
        assert_eq!(r.file_offset, joined.len() as u64);
        let at = r.disk_offset.unwrap() as usize;
        joined.extend_from_slice(&image[at..at + r.len as usize]);
    }
    assert_eq!(&joined, files["big.bin"].as_ref().unwrap());
    assert_eq!(fs.data_map(got["empty"].0.ino).unwrap().unwrap(), vec![]);
}

#[test]
fn fat12_tree_matches_mdir_and_the_source() {
    check_variant(&["-F", "12"], 4096, "FLOPPY12");
}

#[test]
fn fat16_tree_matches_mdir_and_the_source() {
    check_variant(&["-F", "16", "-s", "2"], 16384, "VOLUME16");
}

#[test]
fn fat32_tree_matches_mdir_and_the_source() {
    check_variant(&["-F", "32", "-s", "1"], 40960, "ESP32");
}

/// A file written into the gap a deleted file left is fragmented: its data map has several
/// runs, and reading it (and reading its runs from the image) gives its bytes.
#[test]
fn a_fragmented_file_reads_across_its_runs() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("frag.img");
    mkfs(&img, 16384, &["-F", "16", "-s", "4"]);
    let write = |name: &str, data: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        run("mcopy", &["-i", img.to_str().unwrap(), p.to_str().unwrap(), "::"]);
    };
    let c = support::bytes(50_000, 3, false);
    write("a", &support::bytes(20_000, 1, false));
    write("b", &support::bytes(3_000, 2, false));
    run("mdel", &["-i", img.to_str().unwrap(), "::a"]);
    write("c", &c);
    let fs = open_image(&img);
    let entry = fs.read_dir(fs.root()).unwrap().into_iter().find(|e| e.name == b"c").unwrap();
    let map = fs.data_map(entry.ino).unwrap().unwrap();
    assert!(map.len() >= 2, "c is not fragmented: {map:?}");
    assert_eq!(map.iter().map(|r| r.len).sum::<u64>(), c.len() as u64);
    let mut got = vec![0u8; c.len()];
    assert_eq!(fs.read(entry.ino, 0, &mut got).unwrap(), c.len());
    assert_eq!(got, c);
    // A read that starts inside the second run.
    let at = map[1].file_offset as usize + 5;
    let mut part = vec![0u8; 1000];
    fs.read(entry.ino, at as u64, &mut part).unwrap();
    assert_eq!(part, c[at..at + 1000]);
}

/// An EFI system partition: a GPT disk (sgdisk) whose partition 1 (type EF00) holds a FAT32
/// filesystem written at its offset; read through a `Slice` of the disk at the offset sgdisk reports.
#[test]
fn an_efi_system_partition_reads_through_a_slice() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    run("sgdisk", &["-n", "1:2048:+40M", "-t", "1:EF00", "-c", "1:EFI system partition", disk.to_str().unwrap()]);
    let info = run("sgdisk", &["-i", "1", disk.to_str().unwrap()]);
    let sector = |key: &str| -> u64 {
        let line = info.lines().find(|l| l.starts_with(key)).unwrap();
        line[key.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (first, last) = (sector("First sector:"), sector("Last sector:"));
    assert!(info.contains("EFI system partition"), "{info}");
    let len = (last - first + 1) * 512;
    run(
        "mkfs.vfat",
        &["-F", "32", "-s", "1", "-n", "EFI", &format!("--offset={first}"), disk.to_str().unwrap(), &(len / 1024).to_string()],
    );
    let boot = tmp.path().join("BOOTX64.EFI");
    let loader = support::bytes(70_000, 9, false);
    std::fs::write(&boot, &loader).unwrap();
    let target = format!("{}@@{}", disk.display(), first * 512);
    run("mmd", &["-i", &target, "::/EFI", "::/EFI/BOOT"]);
    run("mcopy", &["-i", &target, boot.to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"]);

    let file: Arc<dyn ReadAt> = Arc::new(std::fs::File::open(&disk).unwrap());
    // The bare disk is a GPT (protective MBR), not FAT.
    assert!(fat::open(file.clone()).unwrap().is_none());
    // The seam shares volumes as Arc<dyn ReadAt> (not Send: the guest disk is not Sync).
    #[allow(clippy::arc_with_non_send_sync)]
    let part: Arc<dyn ReadAt> = Arc::new(Slice::new(file, first * 512, len).unwrap());
    let fs = fat::open(part).unwrap().expect("FAT32 in the ESP");
    assert_eq!(fs.label().as_deref(), Some("EFI"));
    let find = |dir: Ino, name: &[u8]| fs.read_dir(dir).unwrap().into_iter().find(|e| e.name == name).unwrap().ino;
    let efi = find(fs.root(), b"EFI");
    let bootdir = find(efi, b"BOOT");
    let loader_ino = find(bootdir, b"BOOTX64.EFI");
    let mut got = vec![0u8; loader.len()];
    assert_eq!(fs.read(loader_ino, 0, &mut got).unwrap(), loader.len());
    assert_eq!(got, loader);
    // Data offsets are the partition's, not the disk's.
    let map = fs.data_map(loader_ino).unwrap().unwrap();
    let image = std::fs::read(&disk).unwrap();
    let at = (first * 512 + map[0].disk_offset.unwrap()) as usize;
    assert_eq!(image[at..at + 512], loader[..512]);
}

/// Fields of a FAT16 image the hostile tests poke at.
struct Layout {
    fat: usize,
    root: usize,
    data: usize,
    cluster: usize,
}

fn layout(img: &[u8]) -> Layout {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([img[at], img[at + 1]]));
    let bps = u16_at(11);
    let (spc, reserved, fats, root_entries, fat_sectors) = (usize::from(img[13]), u16_at(14), usize::from(img[16]), u16_at(17), u16_at(22));
    let root = (reserved + fats * fat_sectors) * bps;
    Layout { fat: reserved * bps, root, data: root + root_entries * 32, cluster: spc * bps }
}

/// A FAT16 image with one file of several clusters and one subdirectory.
fn small_fat16(tmp: &Path) -> (PathBuf, Vec<u8>) {
    let img = tmp.join("h.img");
    mkfs(&img, 8192, &["-F", "16", "-s", "1"]);
    let f = tmp.join("file.bin");
    let data = support::bytes(5000, 4, false);
    std::fs::write(&f, &data).unwrap();
    run("mcopy", &["-i", img.to_str().unwrap(), f.to_str().unwrap(), "::"]);
    run("mmd", &["-i", img.to_str().unwrap(), "::/sub"]);
    (img, data)
}

fn mem_fs(bytes: Vec<u8>) -> Result<Option<Box<dyn Filesystem>>, FsError> {
    fat::open(Arc::new(bytes))
}

/// A FAT whose chain loops (cluster 4 → back to the file's first cluster) is an error naming
/// the loop, not an endless read; so is a free entry inside a chain, a link past the last
/// cluster and a subdirectory whose cluster is its own directory's.
#[test]
fn hostile_chains_and_directories_are_named_errors() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = small_fat16(tmp.path());
    let image = std::fs::read(&img).unwrap();
    let l = layout(&image);
    // The file is the first root entry (mcopy wrote it first): its first cluster.
    let slot = |name: &[u8]| (0..64).map(|i| l.root + 32 * i).find(|&at| &image[at..at + name.len()] == name).unwrap();
    let file_at = slot(b"FILE    BIN");
    let first = usize::from(u16::from_le_bytes([image[file_at + 26], image[file_at + 27]]));
    let set_fat = |img: &mut Vec<u8>, cluster: usize, value: u16| {
        img[l.fat + 2 * cluster..l.fat + 2 * cluster + 2].copy_from_slice(&value.to_le_bytes());
    };
    let read_file = |img: Vec<u8>| -> FsError {
        let fs = mem_fs(img).unwrap().unwrap();
        let mut buf = vec![0u8; 8192];
        fs.read(file_at as u64, 0, &mut buf).expect_err("a damaged chain read without error")
    };
    let msg = |e: FsError| e.to_string();

    let mut looped = image.clone();
    set_fat(&mut looped, first + 3, first as u16);
    let e = msg(read_file(looped));
    assert!(e.contains("loops back") && e.contains(&format!("cluster {first}")), "{e}");

    let mut freed = image.clone();
    set_fat(&mut freed, first + 1, 0);
    let e = msg(read_file(freed));
    assert!(e.contains("free FAT entry"), "{e}");

    let mut bad = image.clone();
    set_fat(&mut bad, first + 1, 0xFFF7);
    assert!(msg(read_file(bad)).contains("bad-cluster"));

    let mut far = image.clone();
    set_fat(&mut far, first + 1, 0xFFEF);
    assert!(msg(read_file(far)).contains("past the last"));

    // The subdirectory's entry points at the cluster of... itself is impossible to see from
    // the root, so make /sub contain an entry pointing at /sub.
    let sub_at = slot(b"SUB        ");
    let sub_cluster = usize::from(u16::from_le_bytes([image[sub_at + 26], image[sub_at + 27]]));
    let mut selfdir = image.clone();
    let sub_data = l.data + (sub_cluster - 2) * l.cluster;
    // Slot 2 (after . and ..): a directory entry "LOOP" with /sub's own cluster.
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(b"LOOP       ");
    e[11] = 0x10;
    e[26..28].copy_from_slice(&(sub_cluster as u16).to_le_bytes());
    selfdir[sub_data + 64..sub_data + 96].copy_from_slice(&e);
    let fs = mem_fs(selfdir).unwrap().unwrap();
    let err = fs.read_dir(sub_at as u64).unwrap_err().to_string();
    assert!(err.contains("is the directory itself"), "{err}");
}

/// Every truncation of a small image is refused at open (the filesystem claims more bytes
/// than the volume has), and the whole image with a 2 KiB window of it zeroed (a disk with a
/// hole where metadata was), slid over its metadata, opens or errors, and walks or errors,
/// without panicking.
#[test]
fn truncated_and_holed_images_error_without_panic() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("t.img");
    mkfs(&img, 200, &["-F", "12", "-n", "TRUNC"]);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir/sub")).unwrap();
    std::fs::write(src.join("dir/sub/long file name.txt"), support::bytes(9000, 5, true)).unwrap();
    std::fs::write(src.join("x.bin"), support::bytes(30_000, 6, false)).unwrap();
    run("mcopy", &["-s", "-i", img.to_str().unwrap(), src.join("dir").to_str().unwrap(), src.join("x.bin").to_str().unwrap(), "::"]);
    let image = std::fs::read(&img).unwrap();
    assert_eq!(walk(&*mem_fs(image.clone()).unwrap().unwrap()).unwrap().len(), 4);
    let mut refused = 0;
    for cut in (0..image.len()).step_by(97) {
        match mem_fs(image[..cut].to_vec()) {
            Ok(None) => assert!(cut < 512, "a {cut}-byte prefix is not recognised at all"),
            Ok(Some(_)) => panic!("a {cut}-byte prefix of a {}-byte volume opened", image.len()),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 2000, "{refused}");
    let l = layout(&image);
    let (mut walked, mut failed) = (0, 0);
    for hole in (0..l.data + 8 * l.cluster).step_by(256) {
        let mut holed = image.clone();
        holed[hole..hole + 2048].fill(0);
        match mem_fs(holed) {
            Ok(Some(fs)) => match walk(&*fs) {
                Ok(_) => walked += 1,
                Err(_) => failed += 1,
            },
            _ => failed += 1,
        }
    }
    assert!(walked > 0 && failed > 0, "walked {walked}, failed {failed}");
}

/// Each byte of the boot sector, the FAT's first sector and the root directory, set to a few
/// hostile values one at a time: open and walk return, never panic.
#[test]
fn flipped_metadata_bytes_never_panic() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = small_fat16(tmp.path());
    let image = std::fs::read(&img).unwrap();
    let l = layout(&image);
    let mut tried = 0;
    for at in (0..512).chain(l.fat..l.fat + 64).chain(l.root..l.root + 160) {
        for v in [0x00, 0xFF, 0x80, 0x01, image[at] ^ 0x10] {
            let mut m = image.clone();
            m[at] = v;
            if let Ok(Some(fs)) = mem_fs(m) {
                let _ = walk_bounded(&*fs);
            }
            tried += 1;
        }
    }
    assert!(tried > 3000);
}

/// A walk that tolerates errors (the damaged trees of `flipped_metadata_bytes_never_panic`).
fn walk_bounded(fs: &dyn Filesystem) -> usize {
    let mut seen = 0;
    let mut stack = vec![(fs.root(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(dir) else { continue };
        for e in entries {
            seen += 1;
            let _ = fs.metadata(e.ino);
            if e.file_type == FileType::Directory && depth < 8 {
                stack.push((e.ino, depth + 1));
            } else {
                let _ = fs.read(e.ino, 0, &mut [0u8; 4096]);
                let _ = fs.data_map(e.ino);
            }
        }
    }
    seen
}
