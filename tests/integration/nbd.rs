//! `imgarc serve-nbd` against real NBD clients (libnbd's nbdinfo and nbdcopy, qemu-img): a
//! sparse raw disk and its QCOW2 conversion are archived with the CLI and served; what the
//! clients read, the size they see and the holes block status reports are compared with the
//! disk. A raw-socket client written here speaks the protocol for what the tools cannot be
//! made to send (a write, a read past the end, an unknown export by old-style name).

use crate::support;
use imgarc::crypto::keyfile::{KdfParams, KeyFile};
use imgarc::crypto::KeyKind;
use imgarc::repository::Repository;
use imgarc::secret::Secret;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::*;

const MIB: u64 = 1 << 20;
/// The test disk: 24 MiB, data in these ranges, holes between them.
const SIZE: u64 = 24 * MIB;
const DATA: [(u64, u64); 4] = [(0, MIB), (4 * MIB, 2 * MIB), (10 * MIB, MIB / 2), (20 * MIB, 4 * MIB)];

fn tools_present() -> bool {
    for tool in ["nbdinfo", "nbdcopy", "qemu-img"] {
        if Command::new(tool).arg("--version").output().is_err() {
            skip_or_fail_in_ci(&format!("{tool} is not installed (libnbd-bin, qemu-utils)"));
            return false;
        }
    }
    true
}

/// A sparse raw disk with [`DATA`] filled with random bytes and holes elsewhere.
fn make_disk(path: &Path) -> Vec<u8> {
    let mut disk = vec![0u8; SIZE as usize];
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    for (i, &(o, l)) in DATA.iter().enumerate() {
        let b = bytes(l as usize, 40 + i as u64, false);
        std::os::unix::fs::FileExt::write_all_at(&f, &b, o).unwrap();
        disk[o as usize..(o + l) as usize].copy_from_slice(&b);
    }
    disk
}

/// A running `imgarc --json serve-nbd`, killed when dropped.
struct Server {
    child: Child,
    /// Kept open: the server prints its exit document here on a signal.
    _stdout: BufReader<std::process::ChildStdout>,
    ready: Value,
    stderr: PathBuf,
}

impl Server {
    fn start(env: &Env, args: &[&str]) -> Server {
        let stderr = env.path(&format!("serve-{}.stderr", std::process::id() ^ rand_tag()));
        let mut a = vec!["--json", "serve-nbd"];
        a.extend_from_slice(args);
        let mut child =
            env.cmd(&a).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).unwrap()).spawn().unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("serve-nbd's ready line {line:?}: {e}; stderr: {}", std::fs::read_to_string(&stderr).unwrap()));
        Server { child, _stdout: stdout, ready, stderr }
    }
    fn uri(&self) -> String {
        s(&self.ready, "uri")
    }
    fn socket(&self) -> PathBuf {
        PathBuf::from(s(&self.ready, "socket"))
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed) << 20
}

fn tool(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog).args(args).stdin(Stdio::null()).output().unwrap()
}

fn tool_ok(prog: &str, args: &[&str]) -> String {
    let o = tool(prog, args);
    assert!(o.status.success(), "{prog} {args:?}: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stdout).unwrap()
}

fn unix_uri(socket: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", socket.display())
}

/// `nbdinfo --map --json`: `(offset, length, is_hole)` entries.
fn map(uri: &str) -> Vec<(u64, u64, bool)> {
    let v: Value = serde_json::from_str(&tool_ok("nbdinfo", &["--map", "--json", uri])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["type"].as_u64().unwrap() & 1 == 1))
        .collect()
}

#[test]
fn raw_snapshot_is_served_exactly_with_its_holes_to_nbdinfo_nbdcopy_and_qemu_img() {
    if !tools_present() {
        return;
    }
    let env = Env::init("64K");
    let raw = env.path("disk.raw");
    let disk = make_disk(&raw);
    let snap = s(&env.archive(&raw, "vm-nbd"), "snapshot");
    let sock = env.path("raw.sock");
    let server = Server::start(&env, &[&snap, "--listen", &format!("unix:{}", sock.display())]);
    assert_eq!(u(&server.ready, "size"), SIZE);
    assert_eq!(server.socket(), sock);
    let names: Vec<String> = server.ready["export_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    assert_eq!(names, vec![String::new(), snap.clone(), snap[..8].to_string()]);
    let uri = server.uri();
    assert!(uri.starts_with("nbd+unix:///?socket="), "{uri}");
    // The socket is private to this user.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // nbdinfo: size, read-only, the description.
    let info: Value = serde_json::from_str(&tool_ok("nbdinfo", &["--json", &uri])).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"].as_u64(), Some(SIZE), "{info}");
    assert_eq!(export["is_read_only"].as_bool(), Some(true), "{info}");
    assert_eq!(export["can_multi_conn"].as_bool(), Some(true), "{info}");
    assert!(export["description"].as_str().unwrap_or("").contains(&snap[..8]), "{info}");

    // qemu-img compare of the export against the original disk.
    tool_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", raw.to_str().unwrap(), &uri]);

    // Block status: every data range is data, the middle of every hole is a hole.
    let m = map(&uri);
    assert_eq!(m.iter().map(|e| e.1).sum::<u64>(), SIZE, "{m:?}");
    for &(o, l) in &DATA {
        for &(eo, el, hole) in &m {
            if eo < o + l && o < eo + el {
                assert!(!hole, "data at {o}+{l} reported as a hole: {m:?}");
            }
        }
    }
    let holes = [(MIB, 3 * MIB), (6 * MIB, 4 * MIB), (10 * MIB + MIB / 2, 9 * MIB + MIB / 2)];
    for (o, l) in holes {
        let mid = o + l / 2;
        assert!(m.iter().any(|&(eo, el, hole)| hole && eo <= mid && mid < eo + el), "hole at {o}+{l} not reported: {m:?}");
    }
    let hole_bytes: u64 = m.iter().filter(|e| e.2).map(|e| e.1).sum();
    assert!(hole_bytes >= 14 * MIB, "only {hole_bytes} bytes of holes reported: {m:?}");

    // nbdcopy to a file, twice at once (two clients, each with several connections).
    let outs: Vec<PathBuf> = (0..2).map(|i| env.path(&format!("copy{i}.raw"))).collect();
    let copies: Vec<_> = outs
        .iter()
        .map(|o| Command::new("nbdcopy").args([&uri, o.to_str().unwrap()]).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in copies {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&o.stderr));
    }
    for o in &outs {
        assert!(std::fs::read(o).unwrap() == disk, "{} differs from the disk", o.display());
    }

    // qemu-img convert from the export.
    let converted = env.path("converted.raw");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "raw", &uri, converted.to_str().unwrap()]);
    assert!(std::fs::read(&converted).unwrap() == disk);

    // The snapshot's id, full and short, names the export too; any other name is refused.
    for name in [snap.as_str(), &snap[..8]] {
        let v: Value = serde_json::from_str(&tool_ok("nbdinfo", &["--json", &unix_uri(&sock, name)])).unwrap();
        assert_eq!(v["exports"][0]["export-size"].as_u64(), Some(SIZE), "{v}");
    }
    let o = tool("nbdinfo", &["--json", &unix_uri(&sock, "not-this-one")]);
    assert!(!o.status.success(), "an unknown export name was served");
    // `nbdinfo --list` lists the names it answers to.
    let list = tool_ok("nbdinfo", &["--list", "--json", &uri]);
    assert!(list.contains(&snap), "{list}");

    // Raw protocol: what the tools never send.
    raw_protocol_checks(&sock, &disk);

    // SIGTERM: exit 143, the socket file gone, the lock released.
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "stderr: {}", server.stderr());
    assert!(!sock.exists(), "the socket file is left behind after SIGTERM");
    let locks = std::fs::read_dir(env.repo.join("locks")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(locks, 0, "serve-nbd's lock is left behind after SIGTERM");
}

/// A minimal NBD client over the socket: the fixed newstyle handshake, then requests.
struct RawClient {
    s: UnixStream,
}

impl RawClient {
    fn connect(sock: &Path) -> RawClient {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]) & 3, 3, "fixed newstyle and no zeroes");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        RawClient { s }
    }
    fn option(&mut self, opt: u32, data: &[u8]) {
        let mut m = b"IHAVEOPT".to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }
    /// One option reply: (type, data).
    fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), 0x3e889045565a9);
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        self.s.read_exact(&mut d).unwrap();
        (kind, d)
    }
    /// NBD_OPT_GO on `name`: the replies up to the final one (ACK or an error).
    fn go(&mut self, name: &str) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
        self.option(7, &d);
        let mut replies = Vec::new();
        loop {
            let r = self.option_reply();
            let last = r.0 != 3;
            replies.push(r);
            if last {
                return replies;
            }
        }
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut r = 0x25609513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r).unwrap();
    }
    /// A simple reply: (error, cookie).
    fn simple_reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x67446698);
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..].try_into().unwrap()))
    }
}

fn raw_protocol_checks(sock: &Path, disk: &[u8]) {
    let mut c = RawClient::connect(sock);
    // An unknown option is unsupported, the connection goes on.
    c.option(0x4000, b"");
    assert_eq!(c.option_reply().0, (1 << 31) | 1, "NBD_REP_ERR_UNSUP");
    // An unknown name is NBD_REP_ERR_UNKNOWN with NBD_OPT_GO.
    assert_eq!(c.go("nope").last().unwrap().0, (1 << 31) | 6);
    let replies = c.go("");
    assert_eq!(replies.last().unwrap().0, 1, "ACK");
    let export = replies.iter().find(|r| r.0 == 3 && r.1[..2] == [0, 0]).expect("NBD_INFO_EXPORT");
    assert_eq!(u64::from_be_bytes(export.1[2..10].try_into().unwrap()), SIZE);
    let flags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
    assert_eq!(flags & 3, 3, "HAS_FLAGS | READ_ONLY");
    let bs = replies.iter().find(|r| r.0 == 3 && r.1[..2] == [0, 3]).expect("NBD_INFO_BLOCK_SIZE");
    assert_eq!(u32::from_be_bytes(bs.1[10..14].try_into().unwrap()), 32 << 20, "maximum block size");

    // A write (with its payload) is refused with EPERM; so are trim and flush.
    c.request(1, 11, 0, 4096, &[0xaa; 4096]);
    assert_eq!(c.simple_reply(), (1, 11));
    c.request(4, 12, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (1, 12));
    c.request(3, 13, 0, 0, &[]);
    assert_eq!(c.simple_reply(), (1, 13));
    // Past the end, and longer than 32 MiB: EINVAL, and the connection stays usable.
    c.request(0, 14, SIZE - 10, 20, &[]);
    assert_eq!(c.simple_reply(), (22, 14));
    c.request(0, 15, 0, (32 << 20) + 1, &[]);
    assert_eq!(c.simple_reply(), (22, 15));
    // A read across data and a hole still works, byte-exact.
    let (o, l) = (MIB - 1000, 5000usize);
    c.request(0, 16, o, l as u32, &[]);
    assert_eq!(c.simple_reply(), (0, 16));
    let mut got = vec![0u8; l];
    c.s.read_exact(&mut got).unwrap();
    assert!(got == disk[o as usize..o as usize + l]);
    c.request(2, 17, 0, 0, &[]); // NBD_CMD_DISC
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closes after NBD_CMD_DISC");

    // Old-style NBD_OPT_EXPORT_NAME of an unknown export: the server can only close.
    let mut c = RawClient::connect(sock);
    c.option(1, b"nope");
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "an unknown old-style export got a reply");
    // A bad option magic closes the connection too.
    let mut c = RawClient::connect(sock);
    c.s.write_all(&[0u8; 16]).unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn qcow2_snapshot_is_served_as_its_raw_guest_disk_under_a_chosen_name_and_over_tcp() {
    if !tools_present() {
        return;
    }
    let env = Env::init("64K");
    let raw = env.path("disk.raw");
    let disk = make_disk(&raw);
    let qcow2 = env.path("disk.qcow2");
    tool_ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow2.to_str().unwrap()]);
    let snap = s(&env.archive(&qcow2, "vm-qcow2"), "snapshot");

    let sock = env.path("q.sock");
    let server = Server::start(&env, &[&snap[..12], "--listen", &format!("unix:{}", sock.display()), "--export-name", "disk0"]);
    assert_eq!(server.ready["export_names"], serde_json::json!(["disk0"]));
    assert_eq!(u(&server.ready, "size"), SIZE);
    let uri = server.uri();
    assert_eq!(uri, unix_uri(&sock, "disk0"));
    tool_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", raw.to_str().unwrap(), &uri]);
    // The default export does not exist with --export-name.
    assert!(!tool("nbdinfo", &[&unix_uri(&sock, "")]).status.success());
    let out = env.path("q-copy.raw");
    tool_ok("nbdcopy", &[&uri, out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == disk);
    drop(server);

    // TCP on loopback with a random port.
    let server = Server::start(&env, &[&snap, "--listen", "127.0.0.1:0"]);
    let addr = s(&server.ready, "address");
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    assert_eq!(server.uri(), format!("nbd://{addr}/"));
    assert!(server.ready["socket"].is_null());
    let info: Value = serde_json::from_str(&tool_ok("nbdinfo", &["--json", &server.uri()])).unwrap();
    assert_eq!(info["exports"][0]["export-size"].as_u64(), Some(SIZE), "{info}");
    tool_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", raw.to_str().unwrap(), &server.uri()]);
    assert!(server.ready["warnings"].as_array().unwrap().is_empty());
    drop(server);

    // Any other address is served with a warning (decrypted disk, no authentication).
    let server = Server::start(&env, &[&snap, "--listen", "0.0.0.0:0"]);
    let w = server.ready["warnings"].to_string();
    assert!(w.contains("not a loopback address"), "{w}");
    assert!(server.stderr().contains("not a loopback address"), "{}", server.stderr());
}

#[test]
fn a_write_only_key_is_refused_before_anything_is_served() {
    let env = Env::new();
    let full = "full key pw";
    let run = |pw: &str, args: &[&str]| env.cmd(args).env("IMGARC_PASSWORD", pw).stdin(Stdio::null()).output().unwrap();
    assert!(run(full, &["init", "--chunk-size", "64K"]).status.success());
    let raw = env.path("d.raw");
    make_disk(&raw);
    let o = run(full, &["--json", "archive", raw.to_str().unwrap(), "--name", "wo"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap = s(&serde_json::from_slice(&o.stdout).unwrap(), "snapshot");
    let backend = std::sync::Arc::new(imgarc::backend::local::LocalBackend::new(&env.repo));
    let repo = Repository::open_with(backend, &Secret::new(full)).unwrap();
    let fast = KdfParams { m_kib: 64, t: 1, p: 1 };
    let file =
        KeyFile::create(repo.keys().unwrap(), KeyKind::WriteOnly, &Secret::new("wo"), fast, "host", &repo.config().id, repo.config_bytes())
            .unwrap();
    repo.save(&file).unwrap();
    let sock = env.path("wo.sock");
    let o = run("wo", &["serve-nbd", &snap, "--listen", &format!("unix:{}", sock.display())]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("write-only key") && stderr.contains("serve-nbd"), "{stderr}");
    assert!(!sock.exists());
    let locks = std::fs::read_dir(env.repo.join("locks")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(locks, 0, "a refused serve-nbd wrote a lock");
}

/// A stable stand-in for libFuzzer when nightly is not at hand: the committed seeds of the
/// `nbd` fuzz target, mutated at random (bytes flipped, inserted, cut, spliced), through the
/// same function the libFuzzer binary runs. `NBD_MUTATIONS` (default 20000) sets how many.
/// `cargo test --test integration nbd::seeds_mutated -- --ignored --nocapture`.
#[test]
#[ignore]
fn seeds_mutated_at_random_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/nbd");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    assert!(!seeds.is_empty());
    let n: u64 = std::env::var("NBD_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let start = std::time::Instant::now();
    for i in 0..n {
        let mut d = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 8 {
            let at = if d.is_empty() { 0 } else { (next() % d.len() as u64) as usize };
            match next() % 6 {
                0 if !d.is_empty() => d[at] ^= 1 << (next() % 8),
                1 if !d.is_empty() => d[at] = next() as u8,
                2 => d.insert(at, next() as u8),
                3 if !d.is_empty() => d.truncate(at),
                4 if at + 4 <= d.len() => d[at..at + 4].copy_from_slice(&(next() as u32).to_be_bytes()),
                _ => {
                    let other = &seeds[(next() % seeds.len() as u64) as usize];
                    let from = (next() % (other.len() as u64 + 1)) as usize;
                    d.extend_from_slice(&other[from..]);
                }
            }
        }
        if std::panic::catch_unwind(|| crate::fuzz_targets::nbd(&d)).is_err() {
            let out = std::env::temp_dir().join(format!("nbd-crash-{i}"));
            std::fs::write(&out, &d).unwrap();
            panic!("the nbd target panics on mutation {i}, saved to {}", out.display());
        }
    }
    eprintln!("nbd: {n} mutated inputs in {:.1} s, no panic", start.elapsed().as_secs_f64());
}
