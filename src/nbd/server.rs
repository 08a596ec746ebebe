//! The NBD server: the listener (a unix socket or TCP), one thread per connection (at most
//! [`ServeNbdOptions::max_connections`]), and the disk readers the connections share.
//!
//! Why disk-reader threads: a [`GuestDisk`] borrows the SQLite [`Index`], whose connection is
//! not `Sync`, so connections cannot share one. Each of a few reader threads owns its own
//! index connection (a second connection to the same cache file, as `sync` opens one per
//! job; opening one costs a file open, no catch-up) and its own [`GuestDisk`]; connection
//! threads send them `(offset, len)` and wait for the bytes. A read goes to the reader of
//! its disk stripe ([`STRIPE`]), so each chunk is fetched and cached by one reader only,
//! however many clients read it, and the readers' caches do not overlap. Memory is bounded:
//! each reader's chunk cache (the chunk reader's own bound) plus one [`proto::PIECE`] per
//! connection.

use super::proto::{self, Allocation, Export};
use crate::guest::{GuestDisk, ReadAt};
use crate::ids::Id;
use crate::index::Index;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Bytes of the disk one reader thread owns before the next one takes over.
pub const STRIPE: u64 = 16 << 20;
/// How long a client may take over the handshake before it is dropped (a client that
/// connects and says nothing must not hold a connection slot for ever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `imgarc serve-nbd`'s flags.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ServeNbdOptions {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// Where to listen: unix:PATH, HOST:PORT, or PORT (on 127.0.0.1); default unix:$XDG_RUNTIME_DIR/imgarc-nbd-<id>.sock. A non-loopback address is warned about: the disk is served decrypted and without authentication
    #[cfg_attr(feature = "clap", arg(long, value_name = "ADDRESS"))]
    pub listen: Option<String>,
    /// The export's name; without it the snapshot is the default (empty-name) export and also answers to its id (full or short)
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME"))]
    pub export_name: Option<String>,
    /// Clients connected at once at most; a connection beyond is closed at once
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 64, value_name = "N"))]
    pub max_connections: usize,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Listen {
    /// `unix:PATH`, `HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
    pub fn parse(s: &str) -> Result<Listen> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("--listen unix: needs a path (unix:/run/user/1000/disk.sock)");
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let port_only = s.strip_prefix(':').unwrap_or(s);
        if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
            let port: u16 = port_only.parse().map_err(|_| anyhow!("--listen {s}: port out of range"))?;
            return Ok(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        let addr = s
            .to_socket_addrs()
            .with_context(|| format!("--listen {s}: not unix:PATH, HOST:PORT or PORT"))?
            .next()
            .ok_or_else(|| anyhow!("--listen {s}: the name resolves to no address"))?;
        Ok(Listen::Tcp(addr))
    }

    /// The default: a socket in the user's runtime directory (else the temporary directory,
    /// with the process id in the name), named after the snapshot.
    pub fn default_for(id: &Id) -> Listen {
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => Listen::Unix(Path::new(&dir).join(format!("imgarc-nbd-{}.sock", id.short()))),
            None => Listen::Unix(std::env::temp_dir().join(format!("imgarc-nbd-{}-{}.sock", id.short(), std::process::id()))),
        }
    }
}

/// What `serve-nbd` prints once it accepts connections (`--json`: this document).
#[derive(Debug, Clone, Serialize)]
pub struct ServeReady {
    /// The NBD URI clients connect to (`nbd+unix:///?socket=PATH`, `nbd://HOST:PORT/`).
    pub uri: String,
    /// The unix socket's path (null for TCP).
    pub socket: Option<String>,
    /// The TCP address actually bound, port included (null for a unix socket).
    pub address: Option<String>,
    /// Every name the export answers to; "" is the default export.
    pub export_names: Vec<String>,
    /// The guest disk's size in bytes.
    pub size: u64,
    pub snapshot: String,
    pub name: String,
    pub warnings: Vec<String>,
}

enum Listener {
    /// The socket file goes with the listener (and on a signal: `util::remove_paths_on_exit`).
    Unix(UnixListener, #[allow(dead_code)] crate::util::RemovedOnExit),
    Tcp(TcpListener),
}

/// One accepted connection.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A connection as the protocol sees it: requests read as they come, replies buffered and
/// sent at each flush (one reply's headers and data leave together).
struct Duplex {
    read: Stream,
    write: io::BufWriter<Stream>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write.flush()
    }
}

/// A read for a disk-reader thread.
struct Job {
    offset: u64,
    buf: Vec<u8>,
    reply: mpsc::SyncSender<(Vec<u8>, io::Result<()>)>,
}

/// The disk as connections read it: each read is sent to the reader thread of its stripe.
#[derive(Clone)]
struct PooledDisk {
    readers: Arc<Vec<mpsc::Sender<Job>>>,
    size: u64,
}

impl ReadAt for PooledDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::guest::check_bounds(self.size, offset, buf.len())?;
        let gone = || io::Error::other("the disk reader stopped");
        let n = self.readers.len() as u64;
        let reader = &self.readers[((offset / STRIPE) % n) as usize];
        let (reply, answer) = mpsc::sync_channel(1);
        reader.send(Job { offset, buf: vec![0; buf.len()], reply }).map_err(|_| gone())?;
        let (data, result) = answer.recv().map_err(|_| gone())?;
        result?;
        buf.copy_from_slice(&data);
        Ok(())
    }
}

/// Starts `count` reader threads, each with its own index connection and guest disk.
fn start_readers(repo: &Repository, index: &Index, snap: &Snapshot, count: usize) -> Result<Vec<mpsc::Sender<Job>>> {
    let mut senders = Vec::with_capacity(count);
    for i in 0..count {
        let (tx, rx) = mpsc::channel::<Job>();
        let (opened_tx, opened) = mpsc::sync_channel::<Result<()>>(1);
        let (repo, path, snap) = (repo.clone(), index.path().to_path_buf(), snap.clone());
        std::thread::Builder::new().name(format!("nbd-disk-{i}")).spawn(move || {
            let open = || -> Result<(Index, Repository)> {
                let index = Index::open_at(&path, &repo.config().id)?;
                Ok((index, repo))
            };
            let (index, repo) = match open() {
                Ok(x) => x,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let disk = match GuestDisk::open(&repo, &index, &snap) {
                Ok(d) => d,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let _ = opened_tx.send(Ok(()));
            for mut job in rx {
                let result = disk.read_at(job.offset, &mut job.buf);
                let _ = job.reply.send((job.buf, result));
            }
        })?;
        opened.recv().map_err(|_| anyhow!("disk reader {i} stopped while opening"))??;
        senders.push(tx);
    }
    Ok(senders)
}

/// A server bound and ready: [`NbdServer::ready`] says where, [`NbdServer::serve`] serves.
pub struct NbdServer {
    listener: Listener,
    export: Arc<Export>,
    disk: PooledDisk,
    ready: ServeReady,
    max_connections: usize,
    repo: Repository,
}

impl NbdServer {
    /// Opens the snapshot's guest disk (refused for a write-only key or a snapshot without
    /// one) and binds the listener. The caller holds a shared repository lock for as long as
    /// the server lives, so that prune leaves the snapshot's packs alone.
    pub fn bind(repo: &Repository, index: &Index, id: &Id, snap: &Snapshot, opts: &ServeNbdOptions) -> Result<NbdServer> {
        let warnings = Warnings::new();
        let (size, allocation) = {
            let disk = GuestDisk::open(repo, index, snap).with_context(|| format!("snapshot {} ({})", id.short(), snap.name))?;
            let pieces = disk.extents().iter().map(|e| (e.offset, e.len as u64)).collect::<Vec<_>>();
            (disk.size(), Allocation::from_pieces(pieces, disk.size()))
        };
        if opts.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        let names = match &opts.export_name {
            Some(n) if n.len() > 4096 => bail!("--export-name: at most 4096 bytes (the NBD limit)"),
            Some(n) => vec![n.clone()],
            None => vec![String::new(), id.to_hex(), id.short()],
        };
        let export = Arc::new(Export {
            names: names.clone(),
            description: format!("imgarc snapshot {} ({}), guest disk", id.short(), snap.name),
            size,
            allocation,
        });
        let listen = match &opts.listen {
            Some(l) => Listen::parse(l)?,
            None => Listen::default_for(id),
        };
        let uri_name = opts.export_name.clone().unwrap_or_default();
        let (listener, uri, socket, address) = match listen {
            Listen::Unix(path) => {
                let listener = bind_unix(&path)?;
                let uri = format!("nbd+unix:///{}?socket={}", uri_escape(&uri_name), uri_escape(&path.display().to_string()));
                (listener, uri, Some(path.display().to_string()), None)
            }
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
                let bound = listener.local_addr()?;
                if !bound.ip().is_loopback() {
                    warnings.warn(format!(
                        "serve-nbd listens on {bound}, not a loopback address: anyone who can reach it reads the decrypted disk (NBD has no authentication here)"
                    ));
                }
                let uri = format!("nbd://{bound}/{}", uri_escape(&uri_name));
                (Listener::Tcp(listener), uri, None, Some(bound.to_string()))
            }
        };
        let readers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
        let disk = PooledDisk { readers: Arc::new(start_readers(repo, index, snap, readers)?), size };
        let ready = ServeReady {
            uri,
            socket,
            address,
            export_names: names,
            size,
            snapshot: id.to_hex(),
            name: snap.name.clone(),
            warnings: warnings.take(),
        };
        Ok(NbdServer { listener, export, disk, ready, max_connections: opts.max_connections, repo: repo.clone() })
    }

    pub fn ready(&self) -> &ServeReady {
        &self.ready
    }

    /// Accepts and serves clients until `stop` is set (the binary never sets it: a signal
    /// ends the process) or the repository lock is lost.
    pub fn serve(self, stop: &AtomicBool) -> Result<()> {
        let active = Arc::new(AtomicUsize::new(0));
        match &self.listener {
            Listener::Unix(l, _) => l.set_nonblocking(true)?,
            Listener::Tcp(l) => l.set_nonblocking(true)?,
        }
        let mut since_check = Duration::ZERO;
        let tick = Duration::from_millis(50);
        while !stop.load(Ordering::Relaxed) {
            let accepted = match &self.listener {
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
            };
            match accepted {
                Ok(stream) => self.start_connection(stream, &active),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(tick);
                    since_check += tick;
                    if since_check >= Duration::from_secs(1) {
                        since_check = Duration::ZERO;
                        // Once the lock is lost prune may delete packs under the clients.
                        self.repo.ensure_locks_held().context("serve-nbd stops: its repository lock was lost")?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("nbd: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(())
    }

    fn start_connection(&self, stream: Stream, active: &Arc<AtomicUsize>) {
        if active.fetch_add(1, Ordering::SeqCst) >= self.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("nbd: {} clients connected already (--max-connections): connection refused", self.max_connections);
            return; // dropping the stream closes it
        }
        let (export, disk, active) = (self.export.clone(), self.disk.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
            struct Slot(Arc<AtomicUsize>);
            impl Drop for Slot {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _slot = Slot(active);
            match serve_connection(stream, &export, &disk) {
                Ok(ended) => tracing::debug!("nbd: client done ({ended:?})"),
                Err(e) => tracing::info!("nbd: client dropped: {e:#}"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("nbd: cannot start a connection thread: {e}");
        }
    }
}

/// One client from handshake to disconnect.
fn serve_connection(stream: Stream, export: &Export, disk: &PooledDisk) -> Result<proto::Ended> {
    // Accepted sockets inherit non-blocking mode from the listener on some systems.
    match &stream {
        Stream::Unix(s) => s.set_nonblocking(false)?,
        Stream::Tcp(s) => s.set_nonblocking(false)?,
    }
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut conn = Duplex { write: io::BufWriter::with_capacity(256 << 10, stream.try_clone()?), read: stream };
    let Some(negotiated) = proto::handshake(&mut conn, export)? else { return Ok(proto::Ended::Disconnect) };
    // Between requests a client may be idle for as long as it likes.
    conn.read.set_read_timeout(None)?;
    Ok(proto::transmission(&mut conn, export, disk, &negotiated)?)
}

/// Percent-encodes what a URI path or query value cannot hold as is (RFC 3986: everything
/// but unreserved characters and `/`), as libnbd and qemu decode it.
fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Binds a unix socket at `path`, private to this user (mode 0600). A socket file left by a
/// server that died is replaced; one a live server answers on, or any other file, is not.
fn bind_unix(path: &Path) -> Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("--listen unix:{}: a file that is not a socket is in the way", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!("--listen unix:{}: another server is listening there", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on unix:{}", path.display()))?;
    let file = crate::util::RemovedOnExit::register(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(Listener::Unix(listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback_for_a_bare_port() {
        assert_eq!(Listen::parse("10809").unwrap(), Listen::Tcp("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(Listen::parse(":0").unwrap(), Listen::Tcp("127.0.0.1:0".parse().unwrap()));
        assert_eq!(Listen::parse("[::1]:5").unwrap(), Listen::Tcp("[::1]:5".parse().unwrap()));
        assert_eq!(Listen::parse("0.0.0.0:7").unwrap(), Listen::Tcp("0.0.0.0:7".parse().unwrap()));
        assert_eq!(Listen::parse("unix:/tmp/x.sock").unwrap(), Listen::Unix("/tmp/x.sock".into()));
        assert!(Listen::parse("unix:").is_err());
        assert!(Listen::parse("99999").is_err());
        assert!(Listen::parse("no port here").is_err());
    }

    #[test]
    fn uris_escape_what_a_uri_cannot_hold() {
        assert_eq!(uri_escape("/run/user/1000/imgarc-nbd-1a2b.sock"), "/run/user/1000/imgarc-nbd-1a2b.sock");
        assert_eq!(uri_escape("a b?c&d#é"), "a%20b%3Fc%26d%23%C3%A9");
    }
}
