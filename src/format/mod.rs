//! Image-format layer: everything imgarc knows about container formats of VM images.
//!
//! This module owns
//! * [`detect`] — format sniffing of the first bytes of a stream (qcow2, vmdk, vhd/vhdx, vdi,
//!   iso, luks, qed, raw) and the rule that a declared `disk_format` and the detected format
//!   must agree (a declared raw image is never decomposed, OSSA-2024-002);
//! * the *layout recipe* every decomposed container shares ([`recipe`]: segments that tile the
//!   file — zeros, literal bytes, guest bytes, recompressed clusters/grains), its byte-exact
//!   [`rebuild`] and the [`codec`]s that reproduce qemu's compressed clusters and grains;
//! * one module per container: [`qcow2`] (decomposer, writer, safety policy), [`vmdk`],
//!   [`vdi`], [`vhd`], [`vhdx`]: each a one-pass decomposer of untrusted bytes into guest
//!   pieces + literal stream + recipe, and a streaming writer for conversion on restore;
//! * the dispatch by [`FormatKind`]: [`decompose`], [`write_image`].
//!
//! Nothing here opens files named by an image, and nothing here knows about chunking or the
//! repository: callers hand bytes in through [`DecomposeSink`] and get them back through
//! [`RebuildSource`].
pub mod codec;
pub mod detect;
mod error;
mod out;
pub mod qcow2;
pub mod rebuild;
pub mod recipe;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use detect::FormatKind;
pub use error::ImageError;
/// The safety policy and resource limits of every decomposer (QCOW2's came first; its
/// backing-file and data-file switches apply to QCOW2 only).
pub use qcow2::Policy;
use std::io::{Read, Write};

/// Receiver of the decomposer's two output streams.
pub trait DecomposeSink {
    /// Guest data of the virtual disk at `guest_offset`. Pieces never overlap, lie inside the
    /// virtual size, and usually (qemu-img convert output) arrive in increasing guest order;
    /// out-of-order pieces are allowed. The sink does zero-block detection and chunking itself.
    fn guest(&mut self, guest_offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// The next bytes of the *literal stream*: one contiguous byte stream (offsets start at 0)
    /// holding every byte of the file the recipe cannot express as guest data / zeros / recompression.
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()>;
}

/// Random-access source of the two streams at rebuild/conversion time.
pub trait RebuildSource {
    /// Guest bytes at `guest_offset` (holes read as zeros).
    fn read_guest(&mut self, guest_offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Literal-stream bytes at `literal_offset`.
    fn read_literal(&mut self, literal_offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// What a decomposer of a container other than QCOW2 returns (QCOW2 returns its richer
/// [`qcow2::Decomposed`]).
#[derive(Debug, Clone)]
pub struct Decomposition {
    /// Encoded recipe (format-spec/qcow2-layout.md, shared by every container).
    pub recipe: Vec<u8>,
    /// The guest disk's size: the guest stream spans exactly this.
    pub virtual_size: u64,
    /// Bytes handed to [`DecomposeSink::literal`] in total.
    pub literal_stream_bytes: u64,
    /// The structure `imgarc inspect` reports and the snapshot records as `image`
    /// (format-specific fields: grain/block size, allocation, subformat, flags; always a
    /// `"format"` string and `"virtual_size"`).
    pub info: serde_json::Value,
    /// Why the image was stored opaque (all or partly literal), if it was.
    pub opaque: Option<String>,
}

/// Whether imgarc decomposes `kind` into its guest disk with [`decompose`]. QCOW2 has its
/// own path ([`qcow2::decompose`]); raw and ISO are their own guest disk.
pub fn decomposes(kind: FormatKind) -> bool {
    match kind {
        FormatKind::Vmdk => vmdk::DECOMPOSES,
        FormatKind::Vdi => vdi::DECOMPOSES,
        FormatKind::Vhd => vhd::DECOMPOSES,
        FormatKind::Vhdx => vhdx::DECOMPOSES,
        _ => false,
    }
}

/// Decomposes one container of `kind` (for which [`decomposes`] is true) read from `input`
/// in one pass. `file_len` is the length the source announced, when it did.
pub fn decompose(
    kind: FormatKind,
    input: &mut dyn Read,
    file_len: Option<u64>,
    policy: &Policy,
    sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    match kind {
        FormatKind::Vmdk => vmdk::decompose(input, file_len, policy, sink),
        FormatKind::Vdi => vdi::decompose(input, file_len, policy, sink),
        FormatKind::Vhd => vhd::decompose(input, file_len, policy, sink),
        FormatKind::Vhdx => vhdx::decompose(input, file_len, policy, sink),
        other => Err(ImageError::Usage(format!("{} images are not decomposed by format::decompose", other.name()))),
    }
}

/// How a conversion on restore writes its output format.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `--subformat`: vmdk `streamOptimized` (default) | `monolithicSparse`; vdi, vhd, vhdx
    /// `dynamic` (default) | `fixed`. Each writer refuses a name it does not know.
    pub subformat: Option<String>,
    /// `--compress` (qcow2 only today; a writer that cannot compress refuses it).
    pub compress: bool,
}

impl WriteOptions {
    /// The `--subformat` a writer of `format` was asked for, among the names it `knows` (the first
    /// is the default; names compare case-insensitively, as qemu-img's do), and the refusal of
    /// `--compress`, which no writer of this module honours (`why_not_compressed` says why).
    pub fn subformat_of(&self, format: &str, knows: &[&'static str], why_not_compressed: &str) -> Result<&'static str, ImageError> {
        if self.compress {
            return Err(ImageError::Usage(format!("--compress does not apply to {format}: {why_not_compressed}")));
        }
        match self.subformat.as_deref() {
            None => Ok(knows[0]),
            Some(name) => knows.iter().find(|k| k.eq_ignore_ascii_case(name)).copied().ok_or_else(|| {
                ImageError::Usage(format!("{format} has no subformat {name:?}: {} (default) or {}", knows[0], knows[1..].join(", ")))
            }),
        }
    }
}

/// The output formats [`write_image`] writes (raw and qcow2 are written by `restore` itself).
pub fn writes(kind: FormatKind) -> bool {
    match kind {
        FormatKind::Vmdk => vmdk::WRITES,
        FormatKind::Vdi => vdi::WRITES,
        FormatKind::Vhd => vhd::WRITES,
        FormatKind::Vhdx => vhdx::WRITES,
        _ => false,
    }
}

/// Writes the guest disk of `virtual_size` bytes as a new `kind` image to `out`, in one
/// sequential pass. `ranges` are the allocated (non-hole) guest ranges, sorted, disjoint;
/// everything outside them reads as zeros and is left unallocated where the format allows.
/// Returns the bytes written.
pub fn write_image(
    kind: FormatKind,
    opts: &WriteOptions,
    virtual_size: u64,
    ranges: &[(u64, u64)],
    src: &mut dyn RebuildSource,
    out: &mut dyn Write,
) -> Result<u64, ImageError> {
    match kind {
        FormatKind::Vmdk => vmdk::write(opts, virtual_size, ranges, src, out),
        FormatKind::Vdi => vdi::write(opts, virtual_size, ranges, src, out),
        FormatKind::Vhd => vhd::write(opts, virtual_size, ranges, src, out),
        FormatKind::Vhdx => vhdx::write(opts, virtual_size, ranges, src, out),
        other => Err(ImageError::Usage(format!("imgarc does not write {} images", other.name()))),
    }
}
