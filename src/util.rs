//! Small helpers shared by every layer: time stamps, host names, byte sizes.

use anyhow::{bail, Context, Result};

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&chrono::Utc))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The one parser of byte sizes and rates, with one unit rule: every suffix
/// is binary. `65536`, `64K`, `64KiB`, `64KB` (all 65 536), `1.5G`, `10MiB/s`.
/// Chunk sizes, spill limits, capacities and (through [`parse_rate`])
/// `--limit-upload` / `--limit-download` all read sizes here.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = match num.parse() {
        Ok(n) => n,
        Err(_) => bail!("invalid size {s:?}"),
    };
    let mult: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches("/s").trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("invalid size unit in {s:?} (use K, M, G or T)"),
    };
    let v = n * mult as f64;
    if !(v.is_finite() && (0.0..1.8e19).contains(&v)) {
        bail!("size {s:?} is out of range");
    }
    Ok(v as u64)
}

/// A rate in bytes per second for `--limit-upload` / `--limit-download`:
/// a [`parse_size`] (binary units: `50M` = 50·2^20 B/s), optionally ending in
/// `/s` or `ps`; a `bit` suffix counts bits (`100Mbit` = 100·2^20/8 B/s).
/// Zero is refused: no limit is written by leaving the option out.
pub fn parse_rate(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(&t);
    let (t, bits) = match t.strip_suffix("bits").or_else(|| t.strip_suffix("bit")) {
        Some(u) => (u, true),
        None => (t, false),
    };
    let bytes =
        parse_size(t).map_err(|_| anyhow::anyhow!("bad rate {s:?}: expected a number with an optional unit, e.g. 50M or 10MiB/s"))?;
    let bytes = if bits { bytes / 8 } else { bytes };
    if bytes == 0 {
        bail!("bad rate {s:?}: must be at least 1 byte/s");
    }
    Ok(bytes)
}

/// `1.23 GiB` style rendering for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Tells the user about something that works but is unsafe or surprising
/// about this process's setup (not about one operation's data: that is
/// `warnings::Warnings`), as a `tracing` warning; each distinct message once
/// per process, however many clients or backends repeat it.
pub fn warn_once(message: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|m| m == message) {
        seen.push(message.to_string());
        tracing::warn!("{message}");
    }
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The most one `write(2)` of [`write_all_in_pieces`] hands the kernel.
const WRITE_PIECE: usize = 256 << 10;

/// Writes all of `data` in calls of at most 256 KiB. Measured here (README,
/// "Performance"; Linux 6.18, ext4): page-cache writes of 4 MiB at a time ran
/// at anything from 0.4 to 3 GB/s from one run to the next, of 256 KiB
/// steadily at ~3 GB/s — a restore of a 1.4 GB image spent up to 3.7 CPU-s
/// in the kernel's copy with 4 MiB writes, 0.7 with these.
pub fn write_all_in_pieces(w: &mut (impl std::io::Write + ?Sized), data: &[u8]) -> std::io::Result<()> {
    data.chunks(WRITE_PIECE).try_for_each(|piece| w.write_all(piece))
}

/// An in-process pipe: what one thread writes, another reads, with a bounded
/// buffer (back-pressure). Used to stream a restore straight into an upload.
///
/// The stream ends only when the producing side says so: [`PipeEnd::finish`]
/// is a clean end of stream, [`PipeEnd::fail`] (or every writing handle
/// dropped without a finish) reaches the reader as an `Err`. The reader holds
/// back the last byte it has until it knows which, so a consumer that stops
/// at a known length (an HTTP upload with `Content-Length`) cannot complete
/// before the producer has vouched for the whole stream.
pub fn pipe(buffers: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = crossbeam_channel::bounded(buffers);
    (PipeWriter { tx, buf: Vec::new() }, PipeReader { rx, cur: Vec::new(), pos: 0, next: None, ended: false })
}

const PIPE_CHUNK: usize = 1 << 20;

enum PipeMessage {
    Data(Vec<u8>),
    Finished,
    Failed(String),
}

pub struct PipeWriter {
    tx: crossbeam_channel::Sender<PipeMessage>,
    buf: Vec<u8>,
}

impl PipeWriter {
    /// A handle that ends the stream, for the code that knows whether the
    /// producer succeeded after the writer itself was handed away (and dropped).
    pub fn end_handle(&self) -> PipeEnd {
        PipeEnd { tx: self.tx.clone() }
    }
}

impl std::io::Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx
                .send(PipeMessage::Data(chunk))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reading side stopped"))?;
        }
        Ok(())
    }
}

impl Drop for PipeWriter {
    /// Hands on what was written; the stream still needs a [`PipeEnd::finish`].
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

/// Ends a pipe's stream: cleanly, or with the producer's error.
pub struct PipeEnd {
    tx: crossbeam_channel::Sender<PipeMessage>,
}

impl PipeEnd {
    /// The producer wrote everything and it is good: the reader sees end of stream.
    pub fn finish(self) {
        let _ = self.tx.send(PipeMessage::Finished);
    }

    /// The producer failed: the reader's next read returns this error.
    pub fn fail(self, why: String) {
        let _ = self.tx.send(PipeMessage::Failed(why));
    }
}

pub struct PipeReader {
    rx: crossbeam_channel::Receiver<PipeMessage>,
    cur: Vec<u8>,
    pos: usize,
    /// The message after `cur`, received early to decide whether the last byte of `cur` may go.
    next: Option<PipeMessage>,
    ended: bool,
}

impl PipeReader {
    fn receive(&mut self) -> PipeMessage {
        self.rx.recv().unwrap_or_else(|_| PipeMessage::Failed("the writing side stopped without finishing the stream".into()))
    }
}

impl std::io::Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.ended {
                return Ok(0);
            }
            let left = self.cur.len() - self.pos;
            if left > 0 {
                let n = out.len().min(left);
                if n == left {
                    // This read would hand out the rest of the chunk: only if the stream goes on
                    // or finished cleanly, never the last bytes of a stream that failed.
                    if self.next.is_none() {
                        self.next = Some(self.receive());
                    }
                    if let Some(PipeMessage::Failed(why)) = &self.next {
                        return Err(std::io::Error::other(why.clone()));
                    }
                }
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let message = match self.next.take() {
                Some(m) => m,
                None => self.receive(),
            };
            match message {
                PipeMessage::Data(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                PipeMessage::Finished => self.ended = true,
                PipeMessage::Failed(why) => {
                    // Sticky: every later read fails the same way.
                    self.next = Some(PipeMessage::Failed(why.clone()));
                    return Err(std::io::Error::other(why));
                }
            }
        }
    }
}

/// File modes, set per file rather than through the process umask. Private:
/// repository objects, the index cache, spill files (disk contents).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Reports and metrics: read by node_exporter and web servers as other users.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// Writes a report or metrics file readable by everyone (`PUBLIC_FILE_MODE`,
/// whatever the umask). The bytes go to a temporary name in the same directory
/// first and are renamed into place, so a scraper never reads half a file.
/// The temporary file is created new (`O_EXCL | O_NOFOLLOW`, a random name):
/// node_exporter's textfile directory is often writable by several users, and a
/// name planted there (a symlink to a file of ours) must not be written through.
pub fn write_public_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let tmp = path.with_file_name(format!(".{}.{:016x}.tmp", name.to_string_lossy(), rand::random::<u64>()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(PUBLIC_FILE_MODE).custom_flags(libc::O_NOFOLLOW).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        f.set_permissions(std::fs::Permissions::from_mode(PUBLIC_FILE_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Parses a duration of the command line: `0`, or numbers with units s, m (minutes), h, d —
/// `600s`, `23h`, `90m`, `2d12h` (prune's `--grace`, drill's `--boot-timeout`).
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(chrono::Duration::zero());
    }
    let (mut total, mut digits) = (chrono::Duration::zero(), String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().with_context(|| format!("{s:?}: expected a number before {c:?}"))?;
        digits.clear();
        total += match c {
            's' => chrono::Duration::seconds(n),
            'm' => chrono::Duration::minutes(n),
            'h' => chrono::Duration::hours(n),
            'd' => chrono::Duration::days(n),
            _ => bail!("{s:?}: unknown unit {c:?} (use s, m, h, d as in 23h or 90m)"),
        };
    }
    if !digits.is_empty() || s.is_empty() {
        bail!("{s:?}: write it as numbers with units, e.g. 23h, 90m, 0");
    }
    Ok(total)
}

/// Paths this process made and must not leave behind (a served unix socket, a boot drill's
/// private directory), for [`remove_paths_on_exit`]: the signal path exits without unwinding.
static REMOVE_ON_EXIT: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A file or directory tree removed when this guard drops, and by [`remove_paths_on_exit`] when
/// the process exits on a signal first.
#[derive(Debug)]
pub struct RemovedOnExit(std::path::PathBuf);

impl RemovedOnExit {
    /// Registers `path`, which the caller has just created.
    pub fn register(path: std::path::PathBuf) -> RemovedOnExit {
        REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
        RemovedOnExit(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

fn remove_path(path: &std::path::Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(path)),
        Ok(_) => drop(std::fs::remove_file(path)),
        Err(_) => {}
    }
}

impl Drop for RemovedOnExit {
    fn drop(&mut self) {
        let mut paths = REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = paths.iter().position(|p| *p == self.0) {
            paths.remove(i);
            remove_path(&self.0);
        }
    }
}

/// Removes every path still registered by a [`RemovedOnExit`]: for the signal path.
pub fn remove_paths_on_exit() {
    let paths = REMOVE_ON_EXIT.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
    for p in paths {
        remove_path(&p);
    }
}

/// How many requests a catch-up or compaction keeps in flight, and an object-store
/// restore its ranged reads ([`crate::backend::Backend::request_parallelism`]):
/// reading many objects is round trips, not bandwidth (`IMGARC_FETCH_THREADS`
/// overrides, 1 to 256).
pub fn fetch_threads() -> usize {
    std::env::var("IMGARC_FETCH_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).map_or(24, |n| n.clamp(1, 256))
}

/// Runs `fetch` on every item on up to `threads` threads, each with its own state
/// from `state` (a cache connection, say), and hands every result to `ingest` on
/// the calling thread as it arrives, in no particular order; at most
/// `2 * threads` results wait, so memory stays bounded however many items there
/// are. The first error of `state` or `ingest` stops the fetching and is returned.
pub fn fetch_parallel<T, S, R>(
    items: &[T],
    threads: usize,
    state: impl Fn() -> Result<S>,
    fetch: impl Fn(&mut S, &T) -> R + Sync,
    mut ingest: impl FnMut(&T, R) -> Result<()>,
) -> Result<()>
where
    T: Sync,
    S: Send,
    R: Send,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    if items.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, items.len());
    if threads == 1 {
        let mut s = state()?;
        for item in items {
            ingest(item, fetch(&mut s, item))?;
        }
        return Ok(());
    }
    let states = (0..threads).map(|_| state()).collect::<Result<Vec<S>>>()?;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, R)>(2 * threads);
        for mut s in states {
            let (tx, next, stop, fetch) = (tx.clone(), &next, &stop, &fetch);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if tx.send((i, fetch(&mut s, item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut outcome = Ok(());
        for (i, r) in rx.iter() {
            if outcome.is_ok() {
                outcome = ingest(&items[i], r);
                if outcome.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        outcome
    })
}

/// Test hook: `IMGARC_TEST_CRASH_AT=<point>` aborts the process at that point,
/// as a kill -9 would, so tests can prove every point is recoverable (prune's
/// phases, a volume archive between its scratch resources). Built only with
/// the `test-hooks` feature: a shipped binary has no such switch.
#[cfg(feature = "test-hooks")]
pub fn crash_point(point: &str) {
    if std::env::var("IMGARC_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::error!("crashing at {point} (IMGARC_TEST_CRASH_AT)");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn crash_point(_point: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_files_replace_a_planted_symlink_and_never_write_through_it() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = d.path().join("imgarc.prom");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_public_file(&target, b"metrics\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"metrics\n");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("10MiB/s").unwrap(), 10 << 20);
        assert!(parse_size("abc").is_err());
        assert!(parse_size("5X").is_err());
        assert_eq!(parse_size("64KB").unwrap(), 65536);
    }

    #[test]
    fn rates_are_binary() {
        assert_eq!(parse_rate("1048576").unwrap(), 1048576);
        assert_eq!(parse_rate("50M").unwrap(), 50 << 20);
        assert_eq!(parse_rate("50MB/s").unwrap(), 50 << 20);
        assert_eq!(parse_rate("10MiB/s").unwrap(), 10 << 20);
        assert_eq!(parse_rate("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("100Mbit").unwrap(), (100 << 20) / 8);
        assert_eq!(parse_rate(" 2 KiB ").unwrap(), 2048);
        assert_eq!(parse_rate("8mbps").unwrap(), 8 << 20);
        for bad in ["", "0", "-5M", "fast", "5X", "M"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }

    #[test]
    fn pipe_carries_bytes_in_order() {
        use std::io::{Read, Write};
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            let end = w.end_handle();
            for i in 0..3000u32 {
                w.write_all(&i.to_le_bytes().repeat(300)).unwrap();
            }
            drop(w);
            end.finish();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), 3000 * 1200);
        assert_eq!(&got[1200..1204], &1u32.to_le_bytes());
    }

    #[test]
    fn pipe_carries_a_writer_failure_to_the_reader() {
        use std::io::{Read, Write};
        let (mut w, mut r) = pipe(2);
        let end = w.end_handle();
        w.write_all(b"partial").unwrap();
        drop(w);
        end.fail("pack 1234 is unreadable".into());
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("pack 1234 is unreadable"), "{e}");
        // The last byte of a failed stream is never handed out; the failure is sticky.
        assert!(got.len() < b"partial".len(), "{got:?}");
        assert!(r.read(&mut [0u8; 8]).is_err());
    }

    #[test]
    fn pipe_writer_dropped_without_finish_is_an_error_not_eof() {
        use std::io::{Read, Write};
        let (mut w, mut r) = pipe(2);
        w.write_all(b"some bytes").unwrap();
        drop(w);
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("without finishing"), "{e}");

        // Exactly the bytes asked for, at a known length, still waits for the verdict.
        let (mut w, mut r) = pipe(2);
        let end = w.end_handle();
        let t = std::thread::spawn(move || {
            w.write_all(&[7u8; 10]).unwrap();
            drop(w);
            std::thread::sleep(std::time::Duration::from_millis(50));
            end.fail("digest mismatch".into());
        });
        let mut buf = [0u8; 10];
        assert!(r.read_exact(&mut buf).is_err(), "the 10th byte must wait for the writer's verdict");
        t.join().unwrap();
    }
}
