//! The boot check of a drill (`imgarc drill --boot`): the snapshot's guest disk,
//! served over NBD from the archive on a private unix socket, booted under
//! `qemu-system-x86_64` with writes discarded; the serial console is watched
//! until the expected line, then the VM is powered off.
//!
//! This module owns the qemu command line, the console watcher ([`Console`]: ANSI and
//! control bytes stripped, matched line by line and on the line being written, a bounded
//! tail kept) and the clean-up: the NBD server is stopped and joined, the VM killed and
//! reaped, and the private directory (socket, qemu's discarded writes) removed on every
//! path; a qemu child dies with imgarc (`PR_SET_PDEATHSIG`), and the signal path removes
//! the directory (`util::remove_paths_on_exit`). docs/drill.md is the user's guide.

use crate::ids::Id;
use crate::index::Index;
use crate::nbd::{NbdServer, ServeNbdOptions};
use crate::repository::drill::MAX_CONSOLE_TAIL;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How to boot (the `drill --boot*` flags).
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Give up (a failed boot) when the expected line has not appeared by then.
    pub timeout: Duration,
    /// The console line that proves the boot; `None`: [`DEFAULT_EXPECT`].
    pub expect: Option<String>,
    pub accel: Accel,
}

/// A login prompt, or cloud-init's final message.
pub const DEFAULT_EXPECT: &str = r"(login: ?$|Cloud-init v\. .* finished)";

/// The emulator `--boot` runs, and the Debian package that has it.
pub const QEMU: &str = "qemu-system-x86_64";
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Guest memory when the image asks for no more (Glance `min_ram`), and the most it may ask for.
const DEFAULT_MEMORY_MIB: u64 = 512;
const MAX_MEMORY_MIB: u64 = 8192;
/// The longest console line kept for matching; a guest that writes more without a newline
/// has the line's start dropped (the console tail is bounded separately).
const MAX_LINE: usize = 64 << 10;
/// The longest line still being written that is matched (a prompt); a longer one is
/// matched once it ends.
const MAX_PARTIAL: usize = 4096;
/// Console reads queued for the watcher at most: a guest that writes faster than the
/// watcher reads is slowed down (qemu's serial port waits), memory stays bounded.
const QUEUED_READS: usize = 64;
/// An escape sequence longer than this is not one: a console that opens `ESC ]` and never
/// closes it must not hide everything after it.
const MAX_ESCAPE: usize = 256;
/// How long the console is still read after the match, for the rest of the matching line.
const LINGER: Duration = Duration::from_millis(300);
/// qemu's last stderr lines kept for an error message.
const STDERR_LINES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM if `/dev/kvm` can be opened read-write, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// What a boot showed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootOutcome {
    /// The expected line appeared in time.
    pub reached: bool,
    /// From starting qemu to the expected line (or to giving up).
    pub seconds: f64,
    /// The console's last bytes (at most `repository::drill::MAX_CONSOLE_TAIL`).
    pub console_tail: String,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    /// Why it did not reach the line (timed out, qemu exited with …), when it did not.
    pub why: Option<String>,
    /// `--accel auto` chose KVM, which could not run the guest (qemu's message): the boot
    /// then ran under TCG, and `seconds` is that boot's.
    pub kvm_failed: Option<String>,
}

/// The `--expect` pattern (or [`DEFAULT_EXPECT`]) compiled: a usage error names the
/// pattern, so the drill refuses it before any work. It is matched against each console
/// line, ANSI sequences and `\r` removed, and against the line still being written (a
/// login prompt has no newline), so `$` is the end of a line.
pub fn compile_expect(expect: Option<&str>) -> Result<regex_lite::Regex> {
    let pattern = expect.unwrap_or(DEFAULT_EXPECT);
    if pattern.is_empty() {
        bail!("--expect: an empty pattern matches any console at once; give the line that proves the boot");
    }
    regex_lite::Regex::new(pattern).map_err(|e| anyhow!("--expect {pattern:?} is not a valid regular expression: {e}"))
}

/// Boots the snapshot's guest disk from the archive. An error is a boot that could not be
/// tried (no qemu, the NBD export failed, KVM asked for and broken); a boot that ran and
/// did not reach the line is `Ok` with `reached: false`. The caller holds a shared
/// repository lock for as long as this runs (the NBD server stops if it is lost).
pub fn boot_snapshot(repo: &Repository, index: &Index, id: &Id, snap: &Snapshot, opts: &BootOptions) -> Result<BootOutcome> {
    let expect = compile_expect(opts.expect.as_deref())?;
    let qemu = find_qemu(&std::env::var_os("PATH").unwrap_or_default())?;
    let machine = Machine::for_image(&snap.name, &snap.metadata)?;
    let dir = BootDir::create()?;
    let socket = dir.path().join("nbd.sock");
    let serve_opts = ServeNbdOptions {
        snapshot: id.to_hex(),
        listen: Some(format!("unix:{}", socket.display())),
        export_name: None,
        // qemu opens one connection; a few more do no harm and cost nothing until used.
        max_connections: 4,
    };
    let server = NbdServer::bind(repo, index, id, snap, &serve_opts).context("cannot serve the guest disk to qemu over NBD")?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop_ref = &stop;
        let serving = std::thread::Builder::new().name("drill-nbd".into()).spawn_scoped(scope, move || server.serve(stop_ref))?;
        // Stops the server on every way out of this block (also a panic); the scope then joins it.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stopper = StopOnDrop(&stop);
        let server_gone = || serving.is_finished();
        let mut accel = match opts.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto if kvm_usable() => "kvm",
            Accel::Auto => "tcg",
        };
        let mut kvm_failed = None;
        let outcome = loop {
            let run =
                Run { qemu: &qemu, dir: dir.path(), socket: &socket, machine: &machine, accel, expect: &expect, timeout: opts.timeout };
            match run.boot(&server_gone)? {
                Attempt::Done(outcome) => break BootOutcome { kvm_failed, ..outcome },
                // `/dev/kvm` opened but KVM could not run the guest (a nested or emulated
                // host): auto means "KVM if it works", so the boot is tried again on TCG.
                Attempt::KvmFailed(why) if opts.accel == Accel::Auto && accel == "kvm" => {
                    tracing::warn!("drill --boot: KVM cannot run the guest ({why}): booting under TCG");
                    kvm_failed = Some(why);
                    accel = "tcg";
                }
                Attempt::KvmFailed(why) => bail!("KVM cannot run the guest ({why}); --accel tcg boots without it, slower"),
            }
        };
        drop(stopper);
        let served = serving.join().map_err(|_| anyhow!("the NBD server thread panicked"))?;
        served.context("the NBD server serving qemu stopped")?;
        Ok(outcome)
    })
}

/// The VM's shape, from the image's Glance properties where it recorded them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Machine {
    memory_mib: u64,
    /// qemu's `if=` for the disk: Glance `hw_disk_bus` (`virtio` when unset, as Nova defaults).
    disk_interface: &'static str,
}

impl Machine {
    /// From the snapshot's name and source metadata (the Glance image record).
    fn for_image(name: &str, meta: &serde_json::Map<String, serde_json::Value>) -> Result<Machine> {
        let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(str::to_ascii_lowercase);
        if text("hw_firmware_type").as_deref() == Some("uefi") {
            bail!("snapshot {}: the image boots with UEFI (hw_firmware_type=uefi); --boot boots BIOS guests only", name);
        }
        let disk_interface = match text("hw_disk_bus").as_deref() {
            None | Some("virtio") => "virtio",
            Some("ide") => "ide",
            Some("scsi") => "scsi",
            // qemu's `if=` has no sata; IDE is what a BIOS guest without AHCI drivers boots from too.
            Some("sata") => "ide",
            Some(other) => bail!("snapshot {}: hw_disk_bus={other} is not a disk bus --boot can attach (virtio, ide, scsi, sata)", name),
        };
        let min_ram = meta.get("min_ram").and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))).unwrap_or(0);
        Ok(Machine { memory_mib: min_ram.clamp(DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB), disk_interface })
    }
}

/// `qemu-system-x86_64` on `path` (the `PATH` value), or an error naming the package.
fn find_qemu(path: &std::ffi::OsStr) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(QEMU);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Ok(candidate);
        }
    }
    bail!("--boot needs {QEMU}, which is not on PATH: install it (Debian/Ubuntu: apt-get install {QEMU_PACKAGE}; Fedora: dnf install qemu-system-x86-core)")
}

/// `/dev/kvm` opens read-write and answers the API version ioctl (12, stable since 2007).
#[allow(unsafe_code)] // one ioctl on a file descriptor we own
fn kvm_usable() -> bool {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    let Ok(kvm) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else { return false };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    version == 12
}

/// A directory only this user can enter (0700), removed when dropped: the NBD socket and
/// qemu's temporary files (the writes it discards) live there.
struct BootDir(crate::util::RemovedOnExit);

impl BootDir {
    fn create() -> Result<BootDir> {
        use std::os::unix::fs::DirBuilderExt;
        // A unix socket path has at most 107 bytes, and the path goes into qemu's `-drive`
        // (commas separate its options) as a URI: a long or unusual directory falls back to /tmp.
        let plain =
            |d: &Path| d.to_str().is_some_and(|s| s.len() <= 60 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)));
        let base = [std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from), Some(std::env::temp_dir())]
            .into_iter()
            .flatten()
            .find(|d| d.is_absolute() && plain(d) && d.is_dir())
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        remove_abandoned(&base);
        let path = base.join(format!("{BOOT_DIR_PREFIX}{}-{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>())));
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(BootDir(crate::util::RemovedOnExit::register(path)))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

const BOOT_DIR_PREFIX: &str = "imgarc-drill-";

/// Removes the boot directories in `base` that this user's drills killed with SIGKILL left
/// (their qemu died with them; the socket and directory could not be removed): those whose
/// process (`imgarc-drill-<pid>-<random>`) no longer exists.
fn remove_abandoned(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else { return };
    // SAFETY: getuid cannot fail and has no preconditions.
    #[allow(unsafe_code)]
    let me = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix(BOOT_DIR_PREFIX)).and_then(|rest| rest.split_once('-')).map(|(pid, _)| pid)
        else {
            continue;
        };
        let owned = std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if owned && pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One qemu run.
struct Run<'a> {
    qemu: &'a Path,
    dir: &'a Path,
    socket: &'a Path,
    machine: &'a Machine,
    accel: &'static str,
    expect: &'a regex_lite::Regex,
    timeout: Duration,
}

enum Attempt {
    Done(BootOutcome),
    /// KVM was chosen and could not run the guest (qemu's message).
    KvmFailed(String),
}

/// What the watcher hears.
enum Event {
    Console(Vec<u8>),
    ConsoleClosed,
    Stderr(String),
}

/// A qemu child, killed and reaped when dropped (every path out of [`Run::boot`]).
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        // Writes are discarded (snapshot=on), so there is nothing to shut down cleanly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Run<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new(self.qemu);
        let socket = self.socket.display().to_string();
        // `-drive` separates options with commas: the socket's directory has none (BootDir).
        let drive = format!("file=nbd+unix:///?socket={socket},format=raw,if={},snapshot=on,cache=unsafe", self.machine.disk_interface);
        // -nographic (not -display none): SeaBIOS then mirrors the text screen onto the serial
        // port, so a boot loader's complaint is in the console too. -nodefaults: no NIC (a
        // restored production VM must not reach the network), no VGA, CD-ROM or floppy.
        c.args(["-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio", "-monitor", "none", "-parallel", "none"]);
        c.args(["-no-reboot", "-smp", "1", "-m", &self.machine.memory_mib.to_string()]);
        c.args(["-accel", self.accel, "-cpu", if self.accel == "kvm" { "host" } else { "max" }]);
        c.args(["-name", "imgarc-drill", "-drive", &drive]);
        // qemu puts the overlay that takes the discarded writes in TMPDIR: ours, removed after.
        c.env("TMPDIR", self.dir).current_dir(self.dir);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        die_with_parent(&mut c);
        c
    }

    fn boot(&self, server_gone: &dyn Fn() -> bool) -> Result<Attempt> {
        let mut command = self.command();
        let started = Instant::now();
        let mut vm = Vm(command.spawn().with_context(|| format!("cannot start {}", self.qemu.display()))?);
        let (tx, events) = mpsc::sync_channel(QUEUED_READS);
        let stdout = vm.0.stdout.take().context("qemu's stdout")?;
        let stderr = vm.0.stderr.take().context("qemu's stderr")?;
        let console_tx = tx.clone();
        std::thread::Builder::new().name("drill-console".into()).spawn(move || read_console(stdout, &console_tx))?;
        std::thread::Builder::new().name("drill-qemu-err".into()).spawn(move || read_stderr(stderr, &tx))?;
        let mut console = Console::default();
        let mut errors: VecDeque<String> = VecDeque::new();
        let deadline = started + self.timeout;
        let stop = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Stop::TimedOut;
            }
            match events.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(Event::Console(bytes)) => {
                    if console.feed(&bytes, self.expect) {
                        break Stop::Reached;
                    }
                }
                Ok(Event::Stderr(line)) => {
                    if self.accel == "kvm" && line.contains("KVM internal error") {
                        return Ok(Attempt::KvmFailed(line));
                    }
                    if errors.len() == STDERR_LINES {
                        errors.pop_front();
                    }
                    errors.push_back(line);
                }
                // qemu closes its console when it exits: wait for the status.
                Ok(Event::ConsoleClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => break Stop::Exited(vm.0.wait()?),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = vm.0.try_wait()? {
                        break Stop::Exited(status);
                    }
                    if server_gone() {
                        // The NBD server ended under the VM: its error (a lost lock) is the caller's.
                        break Stop::ServerGone;
                    }
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        if matches!(stop, Stop::Reached) {
            // The match may have come on the line still being written: let its end into the
            // tail (briefly; a prompt never ends), so the record shows the whole line.
            let (line, until) = (console.lines, Instant::now() + LINGER);
            while console.lines == line {
                match events.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(Event::Console(bytes)) => {
                        console.feed(&bytes, self.expect);
                    }
                    Ok(Event::Stderr(_)) => {}
                    _ => break,
                }
            }
        }
        drop(vm);
        // The stderr thread has seen qemu's last words once its pipe is closed.
        while let Ok(event) = events.try_recv() {
            if let Event::Stderr(line) = event {
                errors.push_back(line);
            }
        }
        let qemu_said = errors.iter().map(String::as_str).collect::<Vec<_>>().join("; ");
        let why = match stop {
            Stop::Reached => None,
            Stop::TimedOut => Some(format!(
                "timed out after {} s: the console never showed a line matching {:?}",
                self.timeout.as_secs(),
                self.expect.as_str()
            )),
            Stop::ServerGone => bail!("the NBD server stopped while qemu booted from it"),
            Stop::Exited(status) if !status.success() && console.is_empty() => {
                if self.accel == "kvm" && qemu_said.to_ascii_lowercase().contains("kvm") {
                    return Ok(Attempt::KvmFailed(qemu_said));
                }
                bail!("{} could not boot the disk ({status}): {}", QEMU, if qemu_said.is_empty() { "it said nothing" } else { &qemu_said });
            }
            Stop::Exited(status) => {
                let detail = if qemu_said.is_empty() { String::new() } else { format!("; qemu: {qemu_said}") };
                Some(format!(
                    "qemu exited ({status}) before a line matching {:?} appeared: the guest powered off, rebooted or crashed{detail}",
                    self.expect.as_str()
                ))
            }
        };
        Ok(Attempt::Done(BootOutcome {
            reached: why.is_none(),
            seconds,
            console_tail: console.tail(),
            accel: self.accel,
            why,
            kvm_failed: None,
        }))
    }
}

enum Stop {
    Reached,
    TimedOut,
    Exited(std::process::ExitStatus),
    ServerGone,
}

fn read_console(mut out: impl Read, tx: &mpsc::SyncSender<Event>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Event::Console(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Event::ConsoleClosed);
}

fn read_stderr(err: impl Read, tx: &mpsc::SyncSender<Event>) {
    use std::io::BufRead;
    // Lines are bounded: qemu's own messages are short; anything longer is cut.
    let mut reader = std::io::BufReader::new(err.take(1 << 20));
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let text = clean_text(&String::from_utf8_lossy(&line[..line.len().min(1024)]));
        line.clear();
        if !text.trim().is_empty() && tx.send(Event::Stderr(text.trim().to_string())).is_err() {
            return;
        }
    }
}

/// Kills the child when the thread that started it ends (the drill's thread, or the whole
/// process on a signal): a drill never leaves a VM running.
#[allow(unsafe_code)] // prctl/getppid/_exit between fork and exec
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe; it runs before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: prctl, getppid and _exit are async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal would never come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Where the console's escape-sequence parser is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// ESC followed by a character-set or line-attribute introducer: one more byte.
    Argument,
    /// ESC [ … final byte.
    Csi,
    /// ESC ] … BEL or ESC \.
    Osc,
    /// ESC inside an OSC: `\` ends it.
    OscEnd,
}

/// The serial console as text: escape sequences, `\r` and other control bytes dropped, the
/// current line kept for matching (bounded), and the last bytes kept for the tail.
#[derive(Default)]
struct Console {
    escape: Escape,
    escape_len: usize,
    line: Vec<u8>,
    /// Complete lines seen.
    lines: u64,
    tail: VecDeque<u8>,
}

impl Console {
    /// Adds console bytes; true once a line (or the line being written) matches.
    fn feed(&mut self, bytes: &[u8], expect: &regex_lite::Regex) -> bool {
        let mut matched = false;
        for &b in bytes {
            let Some(b) = self.text_byte(b) else { continue };
            if self.tail.len() == 2 * MAX_CONSOLE_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
            if b == b'\n' {
                matched = matched || expect.is_match(&String::from_utf8_lossy(&self.line));
                self.line.clear();
                self.lines += 1;
            } else {
                if self.line.len() == MAX_LINE {
                    self.line.drain(..MAX_LINE / 2);
                }
                self.line.push(b);
            }
        }
        // The line being written is matched again after every read: only while it is short
        // (a prompt is), so a guest writing a long line byte by byte costs no quadratic time.
        matched || (!self.line.is_empty() && self.line.len() <= MAX_PARTIAL && expect.is_match(&String::from_utf8_lossy(&self.line)))
    }

    /// The byte as text, or `None` for part of an escape sequence or a control byte.
    fn text_byte(&mut self, b: u8) -> Option<u8> {
        const ESC: u8 = 0x1b;
        if self.escape != Escape::None {
            self.escape_len += 1;
            if self.escape_len > MAX_ESCAPE {
                self.escape = Escape::None;
            }
        }
        match self.escape {
            Escape::None => match b {
                ESC => {
                    self.escape = Escape::Start;
                    self.escape_len = 0;
                    None
                }
                b'\n' | b'\t' => Some(b),
                0..0x20 | 0x7f => None,
                _ => Some(b),
            },
            Escape::Start => {
                self.escape = match b {
                    b'[' => Escape::Csi,
                    b']' => Escape::Osc,
                    b'(' | b')' | b'*' | b'+' | b'#' | b'%' => Escape::Argument,
                    _ => Escape::None,
                };
                None
            }
            Escape::Argument => {
                self.escape = Escape::None;
                None
            }
            Escape::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.escape = Escape::None;
                }
                None
            }
            Escape::Osc => {
                if b == 0x07 {
                    self.escape = Escape::None;
                } else if b == ESC {
                    self.escape = Escape::OscEnd;
                }
                None
            }
            Escape::OscEnd => {
                self.escape = if b == b'\\' { Escape::None } else { Escape::Osc };
                None
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// The last at most [`MAX_CONSOLE_TAIL`] bytes as text: lossy UTF-8, control characters
    /// (C1 too) other than `\n` and `\t` removed, cut at a character boundary.
    fn tail(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let text = clean_text(&String::from_utf8_lossy(&[a, b].concat()));
        let mut start = text.len().saturating_sub(MAX_CONSOLE_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }
}

/// The console watcher over `chunks`, as reads of qemu's serial output would deliver them:
/// whether `expect` matched, and the tail a record keeps (the fuzz target `console` drives it).
pub fn watch_console(chunks: &[&[u8]], expect: &regex_lite::Regex) -> (bool, String) {
    let mut console = Console::default();
    let mut matched = false;
    for chunk in chunks {
        matched |= console.feed(chunk, expect);
    }
    (matched, console.tail())
}

/// Text without control characters other than `\n` and `\t`: safe in JSON and on a terminal.
fn clean_text(s: &str) -> String {
    s.chars().filter(|&c| !c.is_control() || c == '\n' || c == '\t').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]], expect: &str) -> (bool, Console) {
        let re = compile_expect(Some(expect)).unwrap();
        let mut c = Console::default();
        let mut matched = false;
        for chunk in chunks {
            matched = matched || c.feed(chunk, &re);
        }
        (matched, c)
    }

    #[test]
    fn a_login_prompt_matches_without_a_newline_and_through_escapes_split_across_reads() {
        let re = compile_expect(None).unwrap();
        let mut c = Console::default();
        assert!(!c.feed(b"\x1b[2J\x1b[0mDebian GNU/Linux 12 host ttyS0\r\n\r\nhost log", &re));
        assert!(!c.feed(b"\x1b[1", &re));
        assert!(c.feed(b"mi\x1b[0mn: ", &re), "tail: {:?}", c.tail());
        assert!(c.tail().ends_with("host login: "), "{:?}", c.tail());
    }

    #[test]
    fn cloud_init_finished_matches_and_other_lines_do_not() {
        let (m, _) = watch(
            &[b"Cloud-init v. 23.1.1 finished at Wed, 02 Dec 2026 06:00:00 +0000. Datasource DataSourceNoCloud.  Up 12.3 seconds\r\n"],
            DEFAULT_EXPECT,
        );
        assert!(m);
        let (m, _) = watch(
            &[b"Cloud-init v. 23.1.1 running 'modules:final' at Wed, 02 Dec 2026 06:00:00 +0000. Up 11.9 seconds.\r\n"],
            DEFAULT_EXPECT,
        );
        assert!(!m, "cloud-init's start of its last stage is not the end");
        let (m, _) = watch(&[b"Last login: yesterday\r\n", b"login: incorrect, try again\r\n"], DEFAULT_EXPECT);
        assert!(!m, "'login: ' in the middle of a line is not a prompt");
    }

    #[test]
    fn the_tail_is_bounded_text_without_control_characters() {
        let mut flood = Vec::new();
        for i in 0..20_000 {
            flood.extend_from_slice(format!("\x1b[31mnoise {i} \u{85}\x07é\x1b]0;title\x07\r\n").as_bytes());
        }
        flood.extend_from_slice(b"\xff\xfe last line");
        let (m, c) = watch(&[&flood], "IMGARC-BOOT-OK");
        assert!(!m);
        let tail = c.tail();
        assert!(tail.len() <= MAX_CONSOLE_TAIL && tail.len() > MAX_CONSOLE_TAIL - 8, "{}", tail.len());
        assert!(tail.ends_with("\u{fffd}\u{fffd} last line"), "{tail:?}");
        assert!(tail.contains("noise 19999 é\n"), "{tail:?}");
        assert!(!tail.chars().any(|c| c.is_control() && c != '\n'), "{tail:?}");
        assert!(!tail.contains("title"), "{tail:?}");
    }

    #[test]
    fn an_unterminated_escape_does_not_hide_the_rest_of_the_console() {
        let mut bytes = b"\x1b]".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', MAX_ESCAPE + 10));
        bytes.extend_from_slice(b"\nIMGARC-BOOT-OK 6.1\n");
        let (m, _) = watch(&[&bytes], "IMGARC-BOOT-OK");
        assert!(m);
    }

    #[test]
    fn a_line_without_end_stays_bounded_and_still_matches_its_end() {
        let mut c = Console::default();
        let re = compile_expect(Some("login: $")).unwrap();
        for _ in 0..100 {
            assert!(!c.feed(&[b'x'; 8192], &re));
        }
        assert!(c.line.len() <= MAX_LINE);
        // Too long to be a prompt: matched once it ends.
        assert!(!c.feed(b" login: ", &re));
        assert!(c.feed(b"\n", &re));
        assert!(c.feed(b"host login: ", &re), "a short line being written is matched");
    }

    #[test]
    fn a_bad_pattern_is_a_usage_error_naming_it() {
        let e = compile_expect(Some("(")).unwrap_err().to_string();
        assert!(e.contains("--expect \"(\"") && e.contains("not a valid regular expression"), "{e}");
        assert!(compile_expect(Some("")).unwrap_err().to_string().contains("empty"));
        assert!(compile_expect(None).is_ok());
    }

    #[test]
    fn the_machine_follows_the_glance_properties() {
        let mut meta = serde_json::Map::new();
        assert_eq!(Machine::for_image("vm", &meta).unwrap(), Machine { memory_mib: 512, disk_interface: "virtio" });
        meta.insert("hw_disk_bus".into(), "IDE".into());
        meta.insert("min_ram".into(), 2048.into());
        assert_eq!(Machine::for_image("vm", &meta).unwrap(), Machine { memory_mib: 2048, disk_interface: "ide" });
        meta.insert("min_ram".into(), 1_000_000.into());
        assert_eq!(Machine::for_image("vm", &meta).unwrap().memory_mib, MAX_MEMORY_MIB);
        meta.insert("hw_disk_bus".into(), "usb".into());
        assert!(Machine::for_image("vm", &meta).unwrap_err().to_string().contains("hw_disk_bus=usb"));
        meta.insert("hw_firmware_type".into(), "uefi".into());
        assert!(Machine::for_image("vm", &meta).unwrap_err().to_string().contains("UEFI"));
    }

    #[test]
    fn no_qemu_on_path_names_the_package() {
        let e = find_qemu(std::ffi::OsStr::new("/nonexistent:/usr/share")).unwrap_err().to_string();
        assert!(e.contains(QEMU) && e.contains("apt-get install qemu-system-x86"), "{e}");
    }
}
