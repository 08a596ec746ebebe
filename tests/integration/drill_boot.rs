//! `drill --boot` against real qemu-system-x86_64 (TCG, so it behaves alike everywhere): small
//! BIOS disks built by ci/make-bootable from Debian packages (syslinux, the Debian kernel, a
//! busybox initramfs that prints a marker on the serial console) are archived with the CLI as
//! QCOW2 and booted from the archive over NBD by `imgarc::drill::boot::boot_snapshot`. A disk
//! that boots reaches its marker; one without its kernel, one that powers off early, one that
//! never prints and one that floods its console do not, or do within bounds, and say why.

use crate::support;
use imgarc::drill::boot::{boot_snapshot, Accel, BootOptions, BootOutcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// One boot at a time in this process: under `cargo test` the tests share a process, and
/// [`assert_no_qemu_left`] looks at all of its children (nextest runs each test alone anyway).
static ONE_BOOT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_boot_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the boot tests need: qemu to boot, qemu-img to convert, what make-bootable runs.
fn tools_present() -> bool {
    let tools: [(&str, &[&str], &str); 7] = [
        ("qemu-system-x86_64", &["--version"], "qemu-system-x86"),
        ("qemu-img", &["--version"], "qemu-utils"),
        ("syslinux", &["--version"], "syslinux"),
        ("mcopy", &["-V"], "mtools"),
        ("mkfs.vfat", &["--help"], "dosfstools"),
        ("sfdisk", &["--version"], "fdisk"),
        ("cpio", &["--version"], "cpio"),
    ];
    for (tool, args, package) in tools {
        if Command::new(tool).args(args).output().is_err() {
            skip_or_fail_in_ci(&format!("{tool} is not installed ({package}); the boot drill tests need it"));
            return false;
        }
    }
    if !Path::new("/usr/lib/syslinux/mbr/mbr.bin").exists() {
        skip_or_fail_in_ci("/usr/lib/syslinux/mbr/mbr.bin is missing (syslinux-common)");
        return false;
    }
    true
}

/// A disk from ci/make-bootable with `args`, converted to QCOW2 as a Glance image would be.
fn make_disk(env: &Env, name: &str, args: &[&str]) -> PathBuf {
    let raw = env.path(&format!("{name}.raw"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/make-bootable");
    let o = Command::new("bash").arg(&script).arg(&raw).args(args).output().unwrap();
    assert!(o.status.success(), "make-bootable {args:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let qcow2 = env.path(&format!("{name}.qcow2"));
    let o = Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).output().unwrap();
    assert!(o.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&o.stderr));
    qcow2
}

/// Archives `disk` with the CLI, then boots the snapshot through the library as the drill
/// verb does: a shared lock held, the local index the archive brought up to date.
fn archive_and_boot(env: &Env, disk: &Path, expect: Option<&str>, timeout: Duration) -> (BootOutcome, String) {
    let name = disk.file_stem().unwrap().to_str().unwrap();
    let archived = env.archive(disk, name);
    assert_eq!(s(&archived, "format"), "qcow2", "{archived}");
    let snapshot = s(&archived, "snapshot");
    let repo = env.open_repo();
    let lock = repo.acquire_lock(false, "drill").unwrap();
    repo.hold_lock(&lock);
    let index_path = env.cache.join(&repo.config().id).join("index.sqlite");
    let index = imgarc::index::Index::open_at(&index_path, &repo.config().id).unwrap();
    let id = index.resolve_snapshot(&snapshot).unwrap();
    let snap = index.snapshot(&id).unwrap().expect("the archived snapshot is in the index");
    let opts = BootOptions { timeout, expect: expect.map(str::to_string), accel: Accel::Tcg };
    let outcome = boot_snapshot(&repo, &index, &id, &snap, &opts).unwrap();
    drop(lock);
    assert_no_qemu_left();
    eprintln!("{name}: reached {} in {:.1} s ({}), why {:?}", outcome.reached, outcome.seconds, outcome.accel, outcome.why);
    (outcome, snapshot)
}

#[test]
fn auto_accel_boots_under_kvm_or_falls_back_to_tcg_when_kvm_cannot_run_the_guest() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "auto", &[]);
    let archived = env.archive(&disk, "auto");
    let repo = env.open_repo();
    let lock = repo.acquire_lock(false, "drill").unwrap();
    repo.hold_lock(&lock);
    let index = imgarc::index::Index::open_at(&env.cache.join(&repo.config().id).join("index.sqlite"), &repo.config().id).unwrap();
    let id = index.resolve_snapshot(&s(&archived, "snapshot")).unwrap();
    let snap = index.snapshot(&id).unwrap().unwrap();
    let opts = BootOptions { timeout: Duration::from_secs(300), expect: Some("IMGARC-BOOT-OK".into()), accel: Accel::Auto };
    let outcome = boot_snapshot(&repo, &index, &id, &snap, &opts).unwrap();
    assert_no_qemu_left();
    eprintln!("auto: {} in {:.1} s, kvm_failed {:?}", outcome.accel, outcome.seconds, outcome.kvm_failed);
    assert!(outcome.reached, "{outcome:?}");
    let kvm_opens = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    match outcome.accel {
        // Without a /dev/kvm to open there is nothing to fall back from.
        "tcg" => assert!(kvm_opens == outcome.kvm_failed.is_some(), "/dev/kvm opens: {kvm_opens}; {outcome:?}"),
        "kvm" => assert!(kvm_opens && outcome.kvm_failed.is_none(), "{outcome:?}"),
        other => panic!("accel {other}"),
    }
}

/// No qemu child of this process is left running (or unreaped) after a boot.
fn assert_no_qemu_left() {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        assert!(!(ppid == me && head.contains("qemu-system")), "a qemu child is left: {stat}");
    }
}

/// The tail is what a record and a terminal can hold: bounded, no control characters but newlines and tabs.
fn assert_clean_tail(outcome: &BootOutcome) {
    let tail = &outcome.console_tail;
    assert!(tail.len() <= imgarc::repository::drill::MAX_CONSOLE_TAIL, "{} bytes", tail.len());
    assert!(!tail.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{tail:?}");
}

#[test]
fn a_bootable_qcow2_disk_boots_from_the_archive_and_reaches_its_marker() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "bootable", &[]);
    let (outcome, _) = archive_and_boot(&env, &disk, Some("IMGARC-BOOT-OK [0-9]+\\.[0-9]+"), Duration::from_secs(300));
    assert!(outcome.reached, "{outcome:?}");
    assert_eq!(outcome.why, None);
    assert_eq!(outcome.accel, "tcg");
    assert!(outcome.seconds > 0.5 && outcome.seconds < 300.0, "{}", outcome.seconds);
    // The kernel's release follows the marker: the Debian kernel booted from the archived disk.
    assert!(outcome.console_tail.contains("IMGARC-BOOT-OK 6."), "{:?}", outcome.console_tail);
    assert!(outcome.console_tail.contains("SYSLINUX"), "{:?}", outcome.console_tail);
    assert_clean_tail(&outcome);
}

#[test]
fn the_same_disk_without_its_kernel_does_not_boot_and_the_console_says_why() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "no-kernel", &["--no-kernel"]);
    let (outcome, _) = archive_and_boot(&env, &disk, Some("IMGARC-BOOT-OK"), Duration::from_secs(30));
    assert!(!outcome.reached, "{outcome:?}");
    let why = outcome.why.as_deref().unwrap();
    assert!(why.contains("timed out after 30 s") && why.contains("IMGARC-BOOT-OK"), "{why}");
    assert!((30.0..60.0).contains(&outcome.seconds), "{}", outcome.seconds);
    // syslinux's complaint, through SeaBIOS's serial mirror of the text screen.
    assert!(outcome.console_tail.contains("Loading vmlinuz failed"), "{:?}", outcome.console_tail);
    assert!(!outcome.console_tail.contains("IMGARC-BOOT-OK"), "{:?}", outcome.console_tail);
    assert_clean_tail(&outcome);
}

#[test]
fn a_flooding_console_keeps_a_bounded_tail_and_the_default_expect_finds_the_login_prompt() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    // Coloured noise, then the marker, then a getty-like prompt with no newline; the guest then waits.
    let disk = make_disk(&env, "flood", &["--flood", "20000", "--prompt", "imgarc-test login: "]);
    let (outcome, _) = archive_and_boot(&env, &disk, None, Duration::from_secs(300));
    assert!(outcome.reached, "the default expect (a login prompt) was not seen: {outcome:?}");
    let tail = &outcome.console_tail;
    assert!(tail.contains("\nIMGARC-BOOT-OK 6."), "{tail:?}");
    // `login: ?$` may match before the prompt's last space has arrived.
    assert!(tail.trim_end().ends_with("\nimgarc-test login:"), "the watch stopped at the prompt: {tail:?}");
    assert!(tail.contains("noise line 19999 of the flood\n"), "{tail:?}");
    assert!(!tail.contains("noise line 100 of"), "the tail is the end of the console, not its start: {tail:?}");
    assert!(!tail.contains("[1;3") && !tail.contains('\r'), "escape sequences and \\r are removed: {tail:?}");
    assert!(tail.len() > imgarc::repository::drill::MAX_CONSOLE_TAIL - 100, "{} bytes", tail.len());
    assert_clean_tail(&outcome);
}

#[test]
fn a_guest_that_powers_off_before_its_marker_is_a_failed_boot() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "silent-poweroff", &["--no-marker"]);
    let (outcome, _) = archive_and_boot(&env, &disk, Some("IMGARC-BOOT-OK"), Duration::from_secs(300));
    assert!(!outcome.reached, "{outcome:?}");
    let why = outcome.why.as_deref().unwrap();
    assert!(why.contains("qemu exited (exit status: 0) before a line matching \"IMGARC-BOOT-OK\" appeared"), "{why}");
    assert!(outcome.seconds < 290.0, "qemu's exit ended the watch, not the timeout: {}", outcome.seconds);
    assert!(outcome.console_tail.contains("reboot: Power down"), "{:?}", outcome.console_tail);
}

#[test]
fn a_disk_that_never_prints_times_out_and_an_expect_that_matches_at_once_ends_the_boot_at_once() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    // 8 MiB of zeros: no boot sector; only the firmware speaks.
    let blank = env.path("blank.raw");
    std::fs::File::create(&blank).unwrap().set_len(8 << 20).unwrap();
    let blank_qcow2 = env.path("blank.qcow2");
    let o = Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&blank).arg(&blank_qcow2).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (outcome, _) = archive_and_boot(&env, &blank_qcow2, Some("login: "), Duration::from_secs(5));
    assert!(!outcome.reached);
    assert!(outcome.why.as_deref().unwrap().starts_with("timed out after 5 s"), "{outcome:?}");
    assert!((5.0..20.0).contains(&outcome.seconds), "{}", outcome.seconds);
    assert_clean_tail(&outcome);

    // The firmware's banner matches at once: the boot ends there, long before the kernel's line.
    let disk = make_disk(&env, "early", &[]);
    let (outcome, _) = archive_and_boot(&env, &disk, Some("Booting from Hard Disk"), Duration::from_secs(300));
    assert!(outcome.reached, "{outcome:?}");
    assert!(outcome.console_tail.contains("Booting from Hard Disk"), "{:?}", outcome.console_tail);
    assert!(!outcome.console_tail.contains("IMGARC-BOOT-OK"), "the VM ran on after the match: {:?}", outcome.console_tail);
    assert!(outcome.seconds < 30.0, "{}", outcome.seconds);
}

// ---- The verb: `imgarc drill --boot` end to end.

/// `imgarc --json drill ARGS` with XDG_RUNTIME_DIR set to `run` (where the boot's private
/// directory goes) and `path` as PATH: (exit code, stdout document, stderr).
fn drill_cli(env: &Env, run: &Path, path: Option<&str>, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = vec!["--json", "drill"];
    a.extend_from_slice(args);
    let mut c = env.cmd(&a);
    c.env("XDG_RUNTIME_DIR", run).stdin(std::process::Stdio::null());
    if let Some(p) = path {
        c.env("PATH", p);
    }
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let doc = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("drill's stdout is not JSON ({e}): {:?}; stderr: {stderr}", String::from_utf8_lossy(&o.stdout)));
    (o.status.code().unwrap_or(-1), doc, stderr)
}

fn run_dir(env: &Env) -> PathBuf {
    let run = env.path("run");
    std::fs::create_dir_all(&run).unwrap();
    run
}

/// What the boot left in its runtime directory: nothing, once it is over.
fn leftovers(run: &Path) -> Vec<String> {
    std::fs::read_dir(run).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn the_drill_verb_boots_a_qcow2_snapshot_and_records_the_boot() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "cli-bootable", &[]);
    let snap = s(&env.archive(&disk, "cli-bootable"), "snapshot");
    let run = run_dir(&env);
    // What a drill killed with SIGKILL leaves (its process gone) is removed by the next one; a
    // live process's directory (pid 1 always exists) is not touched.
    let abandoned = run.join("imgarc-drill-999999999-0badc0ffee00");
    std::fs::create_dir(&abandoned).unwrap();
    std::fs::write(abandoned.join("nbd.sock"), b"").unwrap();
    let live = run.join("imgarc-drill-1-0badc0ffee01");
    std::fs::create_dir(&live).unwrap();
    let (code, doc, stderr) = drill_cli(&env, &run, None, &["--boot", "--accel", "tcg", "--expect", "IMGARC-BOOT-OK", &snap]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_eq!(leftovers(&run), vec!["imgarc-drill-1-0badc0ffee01".to_string()], "the abandoned directory stays or the live one went");
    std::fs::remove_dir(&live).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    let d = &doc["drills"][0];
    assert_eq!(d["snapshot"], snap.as_str(), "{d}");
    assert!(d["boot_seconds"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["seconds"].as_f64().unwrap() >= d["boot_seconds"].as_f64().unwrap(), "{d}");
    assert!(d["console_tail"].as_str().unwrap().contains("IMGARC-BOOT-OK 6."), "{d}");
    let boot = d["checks"].as_array().unwrap().iter().find(|c| c["check"] == "boot").unwrap_or_else(|| panic!("no boot check: {d}"));
    assert_eq!(boot["status"], "passed", "{boot}");
    assert!(boot["detail"].as_str().unwrap().contains("(tcg)"), "{boot}");
    assert!(leftovers(&run).is_empty(), "the boot left {:?}", leftovers(&run));
    assert_no_qemu_left();

    // Without qemu on PATH the boot could not be tried: exit 1, the package named.
    let (code, doc, stderr) = drill_cli(&env, &run, Some("/nonexistent"), &["--boot", "--accel", "tcg", &snap]);
    assert_eq!(code, 1, "{doc}\n{stderr}");
    let error = doc["drills"][0]["error"].as_str().unwrap_or_else(|| panic!("{doc}"));
    assert!(error.starts_with("boot: could not boot") && error.contains("apt-get install qemu-system-x86"), "{error}");

    // A pattern that is not one is a usage error before any work.
    let o = env.run(&["drill", "--boot", "--expect", "(", &snap]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--expect \"(\" is not a valid regular expression"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_drill_verb_fails_a_disk_without_kernel_shows_its_console_and_leaves_nothing_on_sigterm() {
    if !tools_present() {
        return;
    }
    let _one = one_boot_at_a_time();
    let env = Env::init("64K");
    let disk = make_disk(&env, "cli-no-kernel", &["--no-kernel"]);
    let snap = s(&env.archive(&disk, "cli-no-kernel"), "snapshot");
    let run = run_dir(&env);
    let (code, doc, stderr) =
        drill_cli(&env, &run, None, &["--boot", "--accel", "tcg", "--boot-timeout", "20s", "--expect", "IMGARC-BOOT-OK", &snap]);
    assert_eq!(code, 3, "{doc}\n{stderr}");
    assert_eq!(doc["ok"], false, "{doc}");
    let d = &doc["drills"][0];
    assert!(d["console_tail"].as_str().unwrap().contains("Loading vmlinuz failed"), "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(error.starts_with("boot: did not boot: timed out after 20 s"), "{error}");
    // The restore itself passed: only the boot failed.
    let rebuild = d["checks"].as_array().unwrap().iter().find(|c| c["check"] == "rebuild").unwrap();
    assert_eq!(rebuild["status"], "passed", "{d}");
    assert!(leftovers(&run).is_empty(), "the boot left {:?}", leftovers(&run));

    // SIGTERM mid-boot: imgarc exits 143 and takes its VM, socket and directory with it.
    let mut child = env
        .cmd(&["drill", "--boot", "--accel", "tcg", "--boot-timeout", "300s", &snap])
        .env("XDG_RUNTIME_DIR", &run)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = std::time::Instant::now();
    let qemu = loop {
        if let Some(pid) = child_named(child.id(), "qemu-system") {
            break pid;
        }
        assert!(waited.elapsed() < Duration::from_secs(120), "drill started no qemu");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!leftovers(&run).is_empty(), "the boot's private directory is in the runtime directory while it runs");
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status}");
    let gone = std::time::Instant::now();
    while Path::new(&format!("/proc/{qemu}")).exists() && gone.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "qemu {qemu} outlived the drill: {state}");
    assert!(leftovers(&run).is_empty(), "SIGTERM left {:?}", leftovers(&run));
}

/// A child of `parent` whose command name starts with `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let ppid: u32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let (pid, comm) = head.split_once(" (").unwrap_or(("", ""));
        if ppid == parent && comm.starts_with(name) {
            return pid.parse().ok();
        }
    }
    None
}
