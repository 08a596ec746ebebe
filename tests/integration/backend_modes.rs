//! File modes: with a permissive umask, the local repository and the index
//! cache are private to the user (0600 files, 0700 directories) and report
//! files are readable by everyone (0644) — modes are set per file, never
//! inherited from the umask.

use crate::support;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// Every file and directory under `root`, `root` included.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&out[i]).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

fn assert_private(root: &Path) {
    for p in walk(root) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{} is {:o}, want {want:o}", p.display(), mode(&p));
    }
}

#[test]
fn repository_and_cache_are_private_and_reports_public_whatever_the_umask() {
    // The children inherit the umask, which is process-wide: nextest runs this test in a process
    // of its own; under `cargo test` the other tests' own files only become private meanwhile
    // (imgarc sets every mode it promises explicitly), and the umask is restored at the end.
    let inherited = unsafe { libc::umask(0o022) };
    let env = Env::init("64K");
    let img = env.path("img.raw");
    std::fs::write(&img, bytes(3 << 20, 7, false)).unwrap();
    env.archive(&img, "modes");
    env.ok(&["check"]);

    assert!(walk(&env.repo).iter().any(|p| p.starts_with(env.repo.join("data")) && p.is_file()), "no pack written");
    assert_private(&env.repo);
    let cache_files: Vec<String> = walk(&env.cache).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(cache_files.iter().any(|n| n == "index.sqlite"), "{cache_files:?}");
    assert_private(&env.cache);

    let report = env.path("report.prom");
    env.ok(&["report", "--format", "prometheus", "-o", report.to_str().unwrap()]);
    assert_eq!(mode(&report), 0o644);
    // A strict umask does not hide a report from the scraper either.
    unsafe { libc::umask(0o077) };
    let strict = env.path("strict.html");
    env.ok(&["report", "--format", "html", "-o", strict.to_str().unwrap()]);
    assert_eq!(mode(&strict), 0o644);
    unsafe { libc::umask(inherited) };
}
