//! Restoring a snapshot: rebuilds the image byte-exactly from its extents.
//!
//! Chunks come from the one chunk reader (`index::ChunkReader`: batched
//! ranged reads, parallel verify, read-ahead), through the indexed repository;
//! this module only writes them, in order, by a writer thread (sparse `pwrite`
//! for a file, zeros for holes on a stream) that also feeds the digest threads.
//! Every digest the snapshot records is checked at the end; a file target is
//! written under a temporary name (created exclusively, mode 0600 unless told
//! otherwise), fsynced and renamed only when everything matched, so a file
//! under the requested name is always complete and durable. A block device is
//! written in place, every byte (holes too: it holds old data), and flushed;
//! FIFOs and character devices are streams ([`Target::for_path`] decides).

use crate::digest::{Digesters, Piece};
use crate::format::qcow2;
use crate::index::{ChunkReader, Index, IndexedRepository};
use crate::progress::SharedProgress;
use crate::repository::extents::{Extent, StreamRef};
use crate::repository::snapshot::{Layout, Snapshot};
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::bounded;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a restore writes.
pub enum Target {
    /// A regular file at this path, created with mode [`DEFAULT_FILE_MODE`]; what
    /// was there (a symlink included, not what it points to) is replaced when
    /// the restore succeeded.
    File(PathBuf),
    /// [`Target::File`] with other permission bits (`restore --mode`).
    FileWithMode(PathBuf, u32),
    /// A block device, written in place.
    BlockDevice(BlockDevice),
    /// A byte stream (standard output, a FIFO, a character device): holes become zeros.
    Stream(Box<dyn Write + Send>),
}

/// Permission bits of a restored file: an image holds a whole disk, secrets included.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// An open block device and how to write it.
pub struct BlockDevice {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
    /// Write the holes' zeros too: the device holds old data (`--no-write-zeros` turns it off).
    write_zeros: bool,
}

impl Target {
    /// The target `-o PATH` names, by what is at PATH (symlinks followed):
    /// nothing or a regular file → [`Target::File`]; a block device → written
    /// in place; a FIFO or character device (e.g. `/dev/null`) → a stream.
    /// Anything else (a directory, a socket) is refused naming it. `mode`
    /// applies to a created file only, `write_zeros` to a block device only.
    pub fn for_path(path: &Path, mode: Option<u32>, write_zeros: bool) -> Result<Target> {
        let shown = path.display();
        let file_target = || match mode {
            Some(m) => Target::FileWithMode(path.to_path_buf(), m),
            None => Target::File(path.to_path_buf()),
        };
        let kind = match std::fs::metadata(path) {
            Ok(m) => m.file_type(),
            // Nothing there, or a dangling symlink: a new file replaces the name.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(file_target()),
            Err(e) => return Err(e).with_context(|| format!("cannot inspect the output {shown}")),
        };
        if kind.is_file() {
            return Ok(file_target());
        }
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else {
            "not a file, block device, FIFO or character device"
        };
        if !(kind.is_block_device() || kind.is_fifo() || kind.is_char_device()) {
            bail!("the output {shown} is {what}: imgarc restores into a file, a block device, a FIFO or a character device");
        }
        if mode.is_some() {
            bail!("--mode applies to a file the restore creates; the output {shown} is {what}");
        }
        // No create, no truncate: the device or FIFO is written as it is (a FIFO waits for its reader here).
        let file = std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("cannot open {what} {shown} for writing"))?;
        let opened = file.metadata().with_context(|| format!("cannot inspect the output {shown}"))?.file_type();
        if (opened.is_block_device(), opened.is_fifo(), opened.is_char_device())
            != (kind.is_block_device(), kind.is_fifo(), kind.is_char_device())
        {
            bail!("the output {shown} changed while it was being opened");
        }
        if kind.is_block_device() {
            let size = block_device_size(&file).with_context(|| format!("cannot read the size of the block device {shown}"))?;
            return Ok(Target::BlockDevice(BlockDevice { file, path: path.to_path_buf(), size, write_zeros }));
        }
        Ok(Target::Stream(Box::new(std::io::BufWriter::with_capacity(1 << 20, file))))
    }
}

/// The size in bytes of an open block device (the BLKGETSIZE64 ioctl).
fn block_device_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOR(0x12, 114, size_t) in the common ioctl encoding; libc does not export it.
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc64"
    )))]
    {
        let request = (2u32 << 30) | ((size_of::<libc::size_t>() as u32) << 16) | (0x12 << 8) | 114;
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which lives for the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut size as *mut u64) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(size)
    }
    #[cfg(any(target_arch = "mips", target_arch = "mips64", target_arch = "powerpc", target_arch = "powerpc64", target_arch = "sparc64"))]
    {
        use std::io::Seek;
        let _ = file.as_raw_fd();
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
    }
}

/// A target opened for writing.
enum Sink {
    /// A regular file, being written under its temporary name `tmp`.
    File {
        file: std::fs::File,
        tmp: PathBuf,
        path: PathBuf,
    },
    Device(BlockDevice),
    Stream(Box<dyn Write + Send>),
}

impl Sink {
    /// Opens `target` for an image of `size` bytes (`None`: known only once written).
    /// A block device too small for it is refused before anything is written.
    fn open(target: Target, size: Option<u64>) -> Result<Sink> {
        match target {
            Target::File(path) => Sink::create_file(path, DEFAULT_FILE_MODE, size),
            Target::FileWithMode(path, mode) => Sink::create_file(path, mode, size),
            Target::BlockDevice(d) => {
                if let Some(size) = size.filter(|&s| s > d.size) {
                    bail!(
                        "the block device {} holds {} bytes ({}), the image needs {size} ({}); nothing was written",
                        d.path.display(),
                        d.size,
                        crate::util::human_bytes(d.size),
                        crate::util::human_bytes(size)
                    );
                }
                Ok(Sink::Device(d))
            }
            Target::Stream(w) => Ok(Sink::Stream(w)),
        }
    }

    fn create_file(path: PathBuf, mode: u32, size: Option<u64>) -> Result<Sink> {
        let tmp = partial_path(&path);
        // A leftover of an interrupted restore, or a symlink planted there: remove the name, never follow it.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the stale temporary file {}", tmp.display())),
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        // Exactly the bits asked for, whatever the umask.
        let prepared = file
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))
            .and_then(|()| match size {
                Some(n) => file.set_len(n).with_context(|| format!("cannot size {}", tmp.display())),
                None => Ok(()),
            });
        let sink = Sink::File { file, tmp, path };
        match prepared {
            Ok(()) => Ok(sink),
            Err(e) => Err(sink.discard(e)),
        }
    }

    /// Writes `data` at `offset`; a stream is written in order, so `offset` is where it stands.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Sink::File { file, tmp, .. } => file.write_all_at(data, offset).with_context(|| format!("writing {}", tmp.display())),
            Sink::Device(d) => d.file.write_all_at(data, offset).with_context(|| format!("writing the block device {}", d.path.display())),
            Sink::Stream(w) => w.write_all(data).context("writing the output"),
        }
    }

    /// The zeros of a hole from `from` to `to`: nothing for a sparse file, written elsewhere.
    fn write_zeros(&mut self, from: u64, to: u64, zeros: &[u8]) -> Result<()> {
        if matches!(self, Sink::File { .. } | Sink::Device(BlockDevice { write_zeros: false, .. })) {
            return Ok(());
        }
        let mut at = from;
        while at < to {
            let k = (to - at).min(zeros.len() as u64) as usize;
            self.write_at(at, &zeros[..k])?;
            at += k as u64;
        }
        Ok(())
    }

    /// A verified restore: flush it to stable storage and give a file its final name.
    fn commit(self) -> Result<()> {
        match self {
            Sink::File { file, tmp, path } => {
                let durable = file.sync_all().with_context(|| format!("cannot flush {} to disk", tmp.display()));
                drop(file);
                if let Err(e) = durable.and_then(|()| {
                    std::fs::rename(&tmp, &path).with_context(|| format!("cannot move the restored image to {}", path.display()))
                }) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                // The new name is durable once its directory is (best effort: some filesystems refuse).
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            Sink::Device(d) => d.file.sync_all().with_context(|| format!("cannot flush the block device {}", d.path.display())),
            Sink::Stream(mut w) => w.flush().context("flushing the output"),
        }
    }

    /// A failed restore: a file's temporary name goes; a device keeps what was written, and the error says so.
    fn discard(self, error: anyhow::Error) -> anyhow::Error {
        match self {
            Sink::File { file, tmp, .. } => {
                drop(file);
                let _ = std::fs::remove_file(&tmp);
                error
            }
            Sink::Device(d) => error.context(format!("the block device {} now holds a partial image", d.path.display())),
            Sink::Stream(_) => error,
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File { file, .. } => file.write(buf),
            Sink::Device(d) => d.file.write(buf),
            Sink::Stream(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stream(w) => w.flush(),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    pub bytes: u64,
    pub seconds: f64,
    pub digests: BTreeMap<String, String>,
    /// Chunks fetched from the repository to produce the output. A chunk
    /// fetched again (evicted before its last use) counts again, so against
    /// the snapshot's chunk count this is the restore's read amplification.
    pub chunks_fetched: u64,
    /// What the restore noticed and the user must know (each also logged as it happened).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

enum Write_ {
    Data(u64, Vec<u8>),
}

/// Writes one stored stream (`size` bytes) to `target`: sparse for a file.
fn restore_stream(
    source: IndexedRepository,
    stream: &StreamRef,
    size: u64,
    expected: &BTreeMap<String, String>,
    target: Target,
    progress: &SharedProgress,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let mut reader = source.reader(stream).context("cannot read the snapshot's extent list")?;
    let digest_names: Vec<String> = expected.keys().cloned().collect();
    let digesters = Digesters::start(&digest_names);

    let mut sink = Sink::open(target, Some(size))?;

    let (tx, rx) = bounded::<Write_>(2 * 128);
    let pb = progress.clone();
    let writer = std::thread::Builder::new().name("restore-write".into()).spawn(move || -> (Sink, Result<Digesters>) {
        let written = (|| -> Result<Digesters> {
            let mut pos = 0u64;
            let zeros = vec![0u8; 1 << 20];
            for Write_::Data(off, data) in rx {
                if off > pos {
                    digesters.feed(Piece::Zeros(off - pos));
                    sink.write_zeros(pos, off, &zeros)?;
                }
                sink.write_at(off, &data)?;
                pos = off + data.len() as u64;
                let len = data.len();
                digesters.feed(Piece::Data(Arc::new(data), 0..len));
                pb.set_position(pos);
            }
            if size > pos {
                digesters.feed(Piece::Zeros(size - pos));
                sink.write_zeros(pos, size, &zeros)?;
            }
            pb.set_position(size);
            Ok(digesters)
        })();
        (sink, written)
    })?;

    // A send fails only when the writer failed; its error is reported below.
    let fetch = reader.read_sequential(|e, d| Ok(tx.send(Write_::Data(e.offset, d)).is_ok()));
    drop(tx);
    let (sink, written) = writer.join().map_err(|_| anyhow!("restore writer panicked"))?;
    let digests = finish_output(fetch.and(written), expected, sink)?;
    let chunks_fetched = reader.chunks_fetched();
    Ok(RestoreOutcome { bytes: size, seconds: started.elapsed().as_secs_f64(), digests, chunks_fetched, warnings: Vec::new() })
}

/// Ends a restore: the digests must match what the snapshot recorded; then the
/// output is made durable (a file takes its final name), or on any failure a
/// file's temporary name goes.
fn finish_output(written: Result<Digesters>, expected: &BTreeMap<String, String>, sink: Sink) -> Result<BTreeMap<String, String>> {
    let result = written.and_then(|d| d.finish()).and_then(|digests| {
        for (alg, want) in expected {
            if digests.get(alg) != Some(want) {
                bail!("restored bytes have {alg} {}, the snapshot recorded {want}", digests.get(alg).map_or("?", |s| s.as_str()));
            }
        }
        Ok(digests)
    });
    match result {
        Ok(digests) => sink.commit().map(|()| digests),
        Err(e) => Err(sink.discard(e)),
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".imgarc-partial");
    path.with_file_name(name)
}

/// What a restore writes (the `imgarc restore` flags: each doc line is its `--help`).
/// `disk_format` `None`: the archived file byte-exactly; `raw`: the guest disk; any other: a
/// new image of that format holding the guest disk.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct RestoreOptions {
    /// Convert instead of restoring the archived file: raw (the guest disk, sparse), qcow2 (clean v3), vmdk, vdi, vhd or vhdx
    #[cfg_attr(feature = "clap", arg(long, value_parser = CONVERSION_FORMATS))]
    pub disk_format: Option<String>,
    /// With --disk-format vmdk: streamOptimized (default) or monolithicSparse; vdi, vhd, vhdx: dynamic (default) or fixed
    #[cfg_attr(feature = "clap", arg(long, requires = "disk_format"))]
    pub subformat: Option<String>,
    /// With --disk-format qcow2: compress clusters (zlib, like qemu-img convert -c)
    #[cfg_attr(feature = "clap", arg(long, requires = "disk_format"))]
    pub compress: bool,
}

/// Every `--disk-format` a restore converts to.
pub const CONVERSION_FORMATS: [&str; 6] = ["raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx"];

pub fn restore(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    target: Target,
    opts: &RestoreOptions,
    progress: &SharedProgress,
) -> Result<RestoreOutcome> {
    repo.require_full_key("restore")?;
    let no_digests = BTreeMap::new();
    let source = IndexedRepository::new(repo, index);
    if opts.disk_format.is_some() {
        ensure_guest_stream_is_disk(source, snap)?;
    }
    if opts.subformat.is_some() && matches!(opts.disk_format.as_deref(), Some("raw" | "qcow2")) {
        bail!("--subformat applies to --disk-format vmdk, vdi, vhd and vhdx");
    }
    match (opts.disk_format.as_deref(), &snap.layout) {
        (None, Layout::Raw) => restore_stream(source, &snap.guest, snap.logical_bytes, &snap.digests, target, progress),
        (Some("raw"), Layout::Raw) if !opts.compress => {
            restore_stream(source, &snap.guest, snap.logical_bytes, &snap.digests, target, progress)
        }
        (None, Layout::Qcow2 { recipe, literals } | Layout::Container { recipe, literals }) => {
            let recipe_bytes = source.read_recipe(recipe)?;
            let unchecked = qcow2::decode_recipe(&recipe_bytes).map(|r| r.unchecked_compressed()).unwrap_or(0);
            let warnings = Warnings::new();
            if unchecked > 0 && snap.digests.is_empty() {
                // A version-1 recipe has no per-cluster checks and no whole-file digest backs it.
                warnings.warn(format!(
                    "{unchecked} compressed clusters of this snapshot are rebuilt with their length checked only (recipe version 1, no image digest recorded)"
                ));
            }
            let mut src = TwoStreams { guest: source.reader(&snap.guest)?, literal: source.reader(literals)? };
            // Clusters may lie in any host order: fetch chunks in the order the rebuild reads them.
            src.guest.follow(crate::format::rebuild::guest_reads(&recipe_bytes).map_err(|e| anyhow!("the snapshot's layout recipe: {e}"))?);
            write_sequential(snap.logical_bytes, &snap.digests, target, progress, |out| {
                crate::format::rebuild::rebuild(&recipe_bytes, &mut src, out)
                    .map_err(|e| anyhow!("rebuilding the {} file: {e}", snap.format))
            })
            .map(|o| RestoreOutcome { warnings: warnings.take(), chunks_fetched: src.chunks_fetched(), ..o })
        }
        (Some("raw"), _) => {
            if opts.compress {
                bail!("--compress applies to --disk-format qcow2 only");
            }
            restore_stream(source, &snap.guest, snap.guest.size, &no_digests, target, progress)
        }
        (Some("qcow2"), _) => {
            let extents = source.load_extents(&snap.guest)?;
            let ranges = merge_ranges(&extents);
            let mut src = TwoStreams { guest: source.reader(&snap.guest)?, literal: ChunkReader::empty(source) };
            let virtual_size = snap.guest.size;
            write_sequential_unknown(target, progress, |out| {
                qcow2::write_qcow2(virtual_size, &ranges, &mut src, opts.compress, out).map_err(|e| anyhow!("writing qcow2: {e}"))
            })
            .map(|o| RestoreOutcome { chunks_fetched: src.chunks_fetched(), ..o })
        }
        (Some(name), _) => {
            let kind = crate::format::FormatKind::from_name(name)
                .filter(|k| crate::format::writes(*k))
                .ok_or_else(|| anyhow!("--disk-format {name:?}: imgarc converts to {}", CONVERSION_FORMATS.join(", ")))?;
            let extents = source.load_extents(&snap.guest)?;
            let ranges = merge_ranges(&extents);
            let mut src = TwoStreams { guest: source.reader(&snap.guest)?, literal: ChunkReader::empty(source) };
            let virtual_size = snap.guest.size;
            let write = crate::format::WriteOptions { subformat: opts.subformat.clone(), compress: opts.compress };
            write_sequential_unknown(target, progress, |out| {
                crate::format::write_image(kind, &write, virtual_size, &ranges, &mut src, out).map_err(|e| anyhow!("writing {name}: {e}"))
            })
            .map(|o| RestoreOutcome { chunks_fetched: src.chunks_fetched(), ..o })
        }
    }
}

/// A conversion reads the guest stream as the virtual disk; refuse when it is not. The rule
/// is derived from what every snapshot records: a raw layout holds the disk only when the
/// file was raw (or ISO); a qcow2 layout only when its recipe is not opaque (an opaque
/// decomposition stopped interpreting the image, so its guest stream is incomplete).
pub(crate) fn ensure_guest_stream_is_disk(source: IndexedRepository, snap: &Snapshot) -> Result<()> {
    let refuse = |why: String| {
        anyhow!(
            "cannot convert this snapshot: {why}; `restore` without --disk-format gives back the archived {} file byte for byte",
            snap.format
        )
    };
    match &snap.layout {
        Layout::Raw => match crate::format::detect::FormatKind::from_name(&snap.format) {
            Some(kind) if kind.is_guest_disk() => Ok(()),
            _ => Err(refuse(format!(
                "it holds a {} container as opaque bytes (imgarc does not decompose {0}), not the guest disk",
                snap.format
            ))),
        },
        Layout::Qcow2 { recipe, .. } | Layout::Container { recipe, .. } => {
            let recipe = qcow2::decode_recipe(&source.read_recipe(recipe)?).map_err(|e| anyhow!("the snapshot's layout recipe: {e}"))?;
            if recipe.flags & qcow2::FLAG_OPAQUE == 0 {
                return Ok(());
            }
            let reason = snap.image.as_ref().and_then(|i| i.get("opaque")).and_then(|r| r.as_str()).unwrap_or("reason not recorded");
            Err(refuse(format!("the {} image was stored opaque ({reason}), so its guest disk is not in the repository", snap.format)))
        }
    }
}

/// Contiguous allocated ranges of the guest stream.
fn merge_ranges(extents: &[Extent]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in extents {
        match out.last_mut() {
            Some((start, len)) if *start + *len == e.offset => *len += e.len as u64,
            _ => out.push((e.offset, e.len as u64)),
        }
    }
    out
}

/// A small stored stream (a layout recipe) read whole; larger than a recipe may be is refused.
struct TwoStreams<'a> {
    guest: ChunkReader<'a>,
    literal: ChunkReader<'a>,
}

impl TwoStreams<'_> {
    fn chunks_fetched(&self) -> u64 {
        self.guest.chunks_fetched() + self.literal.chunks_fetched()
    }
}

impl qcow2::RebuildSource for TwoStreams<'_> {
    fn read_guest(&mut self, guest_offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.guest.read_at(guest_offset, buf).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
    fn read_literal(&mut self, literal_offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.literal.read_at(literal_offset, buf).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}

/// Bytes a sequential producer hands to the writer thread at a time.
const WRITE_BLOCK: usize = 4 << 20;
/// Blocks in flight between producer and writer (bounds memory: 2 × 4 MiB).
const WRITE_BLOCKS_IN_FLIGHT: usize = 2;

/// The producer's side of a sequential restore: bytes are gathered into blocks
/// that the writer thread writes to the sink and hands to the digest threads
/// (shared, not copied), so producing (rebuilding, converting) overlaps writing
/// and hashing instead of waiting on them.
struct BlockWriter {
    block: Vec<u8>,
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    pos: u64,
    pb: SharedProgress,
}

impl BlockWriter {
    fn send_block(&mut self) -> std::io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.block, Vec::with_capacity(WRITE_BLOCK));
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(full).is_ok());
        // A closed channel means the writer failed; its error is the one reported.
        if sent {
            Ok(())
        } else {
            Err(std::io::Error::other("the restore writer stopped"))
        }
    }
}

impl Write for BlockWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(WRITE_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == WRITE_BLOCK {
            self.send_block()?;
        }
        self.pos += n as u64;
        self.pb.set_position(self.pos);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_block()
    }
}

/// Runs a sequential producer into `target` (temporary name for a file), then
/// checks the length and every expected digest. The producer runs on this
/// thread; a writer thread writes its blocks and feeds the digests.
fn write_sequential(
    size: u64,
    expected: &BTreeMap<String, String>,
    target: Target,
    progress: &SharedProgress,
    produce: impl FnOnce(&mut dyn Write) -> Result<u64>,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let digesters = Digesters::start(&expected.keys().cloned().collect::<Vec<_>>());
    let mut sink = Sink::open(target, (size != u64::MAX).then_some(size))?;
    let (tx, rx) = bounded::<Vec<u8>>(WRITE_BLOCKS_IN_FLIGHT);
    let writer = std::thread::Builder::new().name("restore-write".into()).spawn(move || -> (Sink, Result<Digesters>) {
        let written = (|| -> Result<Digesters> {
            for block in rx {
                crate::util::write_all_in_pieces(&mut sink, &block).context("writing the output")?;
                if !digesters.is_empty() {
                    let len = block.len();
                    digesters.feed(Piece::Data(Arc::new(block), 0..len));
                }
            }
            sink.flush().context("writing the output")?;
            Ok(digesters)
        })();
        (sink, written)
    })?;
    let mut out = BlockWriter { block: Vec::with_capacity(WRITE_BLOCK), tx: Some(tx), pos: 0, pb: progress.clone() };
    let produced = produce(&mut out).and_then(|n| {
        out.flush().context("writing the output")?;
        if size != u64::MAX && n != size {
            bail!("rebuilt {n} bytes, the snapshot records {size}");
        }
        Ok(())
    });
    let written = out.pos;
    drop(out.tx.take());
    let (sink, digesters) = writer.join().map_err(|_| anyhow!("restore writer panicked"))?;
    // The writer's own error explains a producer that stopped because the writer did.
    let result = match (produced, digesters) {
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(d)) => Ok(d),
    };
    let digests = finish_output(result, expected, sink)?;
    // The producer's readers count the chunks; the caller fills them in.
    Ok(RestoreOutcome { bytes: written, seconds: started.elapsed().as_secs_f64(), digests, chunks_fetched: 0, warnings: Vec::new() })
}

/// A conversion: the output length is whatever the writer produces.
fn write_sequential_unknown(
    target: Target,
    progress: &SharedProgress,
    produce: impl FnOnce(&mut dyn Write) -> Result<u64>,
) -> Result<RestoreOutcome> {
    write_sequential(u64::MAX, &BTreeMap::new(), target, progress, produce)
}
