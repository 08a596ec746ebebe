//! Compressed-cluster codecs: decompression of qemu's compressed clusters (bounded to exactly
//! one cluster of output — no decompression bombs) and recompression with the exact settings
//! qemu uses, so a compressed cluster can be stored as guest data plus a codec id.
//!
//! Why raw FFI to zlib: qemu calls `deflateInit2(level -1, Z_DEFLATED, windowBits -12,
//! memLevel 9, Z_DEFAULT_STRATEGY)`; safe wrappers (flate2) cannot set memLevel 9, and only
//! *stock* zlib (linked statically through `libz-sys`, not the host's zlib-ng, not zlib-rs or
//! miniz) reproduces qemu's bytes. A test asserts reproduction so a build that picks another
//! zlib fails loudly.
// The one place of this module that calls C: every unsafe block is a zlib or libc call.
#![allow(unsafe_code)]
use libz_sys as z;
use std::os::raw::c_int;

/// Codec ids as stored in the recipe (see format-spec/qcow2-layout.md).
pub const CODEC_ZLIB: u8 = 1;
pub const CODEC_ZSTD: u8 = 2;
/// VMDK streamOptimized grains as qemu writes them: zlib `compress()` (zlib wrapper,
/// level 6 = Z_DEFAULT_COMPRESSION, windowBits 15, memLevel 8, default strategy) with stock zlib.
pub const CODEC_VMDK: u8 = 3;

/// Result of decompressing one compressed cluster.
pub(crate) struct Inflated {
    /// Exact number of compressed bytes the stream used (known when the stream ended).
    pub exact_len: Option<usize>,
    /// True when the output filled exactly one cluster (qemu's success condition).
    pub full: bool,
}

unsafe extern "C" fn zalloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    // SAFETY: calloc with the sizes zlib asks for; zlib checks for NULL.
    unsafe { libc::calloc(items as libc::size_t, size as libc::size_t) }
}
unsafe extern "C" fn zfree(_: z::voidpf, p: z::voidpf) {
    // SAFETY: p was returned by zalloc (calloc) above.
    unsafe { libc::free(p) }
}

/// A fresh z_stream. libz-sys models zalloc/zfree as non-nullable function pointers, so
/// they must be real functions (not Z_NULL); ours wrap the C allocator.
fn zstream() -> z::z_stream {
    z::z_stream {
        next_in: std::ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: std::ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: std::ptr::null_mut(),
        state: std::ptr::null_mut(),
        zalloc,
        zfree,
        opaque: std::ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    }
}

/// Raw-deflate decompression exactly as qemu's `qcow2_zlib_decompress`: windowBits -12,
/// output capped at `out.len()` (one cluster).
pub(crate) fn inflate_raw(input: &[u8], out: &mut [u8]) -> Option<Inflated> {
    let mut s = zstream();
    // SAFETY: standard zlib usage; pointers stay valid for the duration of the calls, the
    // lengths given are the slice lengths, and inflateEnd is always called after init.
    unsafe {
        let rc = z::inflateInit2_(&mut s, -12, z::zlibVersion(), size_of::<z::z_stream>() as c_int);
        if rc != z::Z_OK {
            return None;
        }
        s.next_in = input.as_ptr() as *mut _;
        s.avail_in = input.len().min(u32::MAX as usize) as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        let rc = z::inflate(&mut s, z::Z_FINISH);
        let total_in = s.total_in as usize;
        let full = s.avail_out == 0;
        z::inflateEnd(&mut s);
        match rc {
            z::Z_STREAM_END => Some(Inflated { exact_len: Some(total_in), full }),
            z::Z_BUF_ERROR if full => Some(Inflated { exact_len: None, full }),
            _ => None,
        }
    }
}

/// Stock-zlib raw deflate with qemu's parameters. Returns the compressed bytes, or None if
/// they would not fit in `limit` bytes.
pub fn deflate_qemu(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; limit];
    let mut s = zstream();
    // SAFETY: as above; output buffer length is passed exactly.
    unsafe {
        let rc =
            z::deflateInit2_(&mut s, -1, z::Z_DEFLATED, -12, 9, z::Z_DEFAULT_STRATEGY, z::zlibVersion(), size_of::<z::z_stream>() as c_int);
        if rc != z::Z_OK {
            return None;
        }
        s.next_in = input.as_ptr() as *mut _;
        s.avail_in = input.len() as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len() as u32;
        let rc = z::deflate(&mut s, z::Z_FINISH);
        let n = s.total_out as usize;
        z::deflateEnd(&mut s);
        if rc != z::Z_STREAM_END {
            return None;
        }
        out.truncate(n);
    }
    Some(out)
}

/// zlib `compress()` exactly (what qemu's vmdk driver calls for a streamOptimized grain):
/// zlib wrapper, Z_DEFAULT_COMPRESSION, windowBits 15, memLevel 8. None if the output would
/// not fit in `limit` bytes.
pub fn deflate_vmdk(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; limit];
    let mut s = zstream();
    // SAFETY: as in deflate_qemu; the output buffer length is passed exactly.
    unsafe {
        let rc =
            z::deflateInit2_(&mut s, -1, z::Z_DEFLATED, 15, 8, z::Z_DEFAULT_STRATEGY, z::zlibVersion(), size_of::<z::z_stream>() as c_int);
        if rc != z::Z_OK {
            return None;
        }
        s.next_in = input.as_ptr() as *mut _;
        s.avail_in = input.len().min(u32::MAX as usize) as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len().min(u32::MAX as usize) as u32;
        let rc = z::deflate(&mut s, z::Z_FINISH);
        let n = s.total_out as usize;
        z::deflateEnd(&mut s);
        if rc != z::Z_STREAM_END {
            return None;
        }
        out.truncate(n);
    }
    Some(out)
}

/// An upper bound of [`deflate_vmdk`]'s output for `n` input bytes (zlib's `compressBound`
/// plus slack), for writers that must never fail on incompressible data.
pub fn deflate_vmdk_bound(n: usize) -> usize {
    n + (n >> 12) + (n >> 14) + (n >> 25) + 64
}

/// zlib-wrapped inflate as qemu's vmdk read path (`uncompress()`), output capped at
/// `out.len()` (one grain). Returns the bytes produced when the stream ended cleanly within
/// `input` and within `out`; None otherwise (corrupt, truncated, or more than one grain).
pub(crate) fn inflate_zlib(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut s = zstream();
    // SAFETY: standard zlib usage as in inflate_raw; inflateEnd always follows init.
    unsafe {
        let rc = z::inflateInit2_(&mut s, 15, z::zlibVersion(), size_of::<z::z_stream>() as c_int);
        if rc != z::Z_OK {
            return None;
        }
        s.next_in = input.as_ptr() as *mut _;
        s.avail_in = input.len().min(u32::MAX as usize) as u32;
        s.next_out = out.as_mut_ptr();
        s.avail_out = out.len().min(u32::MAX as usize) as u32;
        let rc = z::inflate(&mut s, z::Z_FINISH);
        let produced = s.total_out as usize;
        z::inflateEnd(&mut s);
        (rc == z::Z_STREAM_END).then_some(produced)
    }
}

/// Version string of the zlib actually linked (for reports and the reproduction test).
pub fn zlib_version() -> String {
    // SAFETY: zlibVersion returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(z::zlibVersion()).to_string_lossy().into_owned() }
}

/// zstd frame decompression as qemu's `qcow2_zstd_decompress`, bounded to one cluster.
/// The exact length is the first frame's compressed size.
pub(crate) fn unzstd(input: &[u8], out: &mut [u8]) -> Option<Inflated> {
    let exact = zstd::zstd_safe::find_frame_compressed_size(input).ok()?;
    if exact > input.len() {
        return None;
    }
    // One-shot decompression writes straight into `out` and fails if the frame would produce
    // more than `out.len()` bytes, so no window or output allocation depends on the input.
    thread_local!(static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) });
    let n = DCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Decompressor::new().ok();
        }
        c.as_mut()?.decompress_to_buffer(&input[..exact], out).ok()
    })?;
    Some(Inflated { exact_len: Some(exact), full: n == out.len() })
}

/// zstd compression as qemu (default level 3, no checksum) with the linked libzstd.
pub fn zstd_qemu(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    // One compression context per thread: creating one per cluster costs more than the work.
    thread_local!(static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) });
    let v = CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(3).ok();
        }
        c.as_mut()?.compress(input).ok()
    })?;
    (v.len() <= limit).then_some(v)
}

/// Recompress a guest cluster with the codec named by `codec`.
pub(crate) fn recompress(codec: u8, input: &[u8], limit: usize) -> Option<Vec<u8>> {
    match codec {
        CODEC_ZLIB => deflate_qemu(input, limit),
        CODEC_ZSTD => zstd_qemu(input, limit),
        CODEC_VMDK => deflate_vmdk(input, limit),
        _ => None,
    }
}

/// A compressed cluster that decompressed to exactly one cluster.
pub(crate) struct Reproduced {
    /// The guest cluster.
    pub data: Vec<u8>,
    /// How many of the compressed bytes the stream used (None: the stream did not say).
    pub exact: Option<u64>,
    /// The codec that recompresses `data` to exactly those bytes, if the linked one does.
    pub codec: Option<u8>,
}

/// Decompresses one compressed cluster (`compressed`, up to its upper bound) with `codec` and
/// checks whether recompression reproduces its exact bytes; None when it does not decompress to
/// exactly one cluster of `cluster_size`. `guest_len` is the part of the cluster inside the
/// virtual size: rebuild recompresses the cluster zero-padded past it, so that is what is compared.
pub(crate) fn reproduce(compressed: &[u8], cluster_size: usize, codec: u8, guest_len: usize) -> Option<Reproduced> {
    let mut out = vec![0u8; cluster_size];
    let r = match codec {
        CODEC_ZSTD => unzstd(compressed, &mut out),
        _ => inflate_raw(compressed, &mut out),
    }?;
    if !r.full {
        return None;
    }
    let exact = r.exact_len.map(|e| e as u64);
    let mut input = std::borrow::Cow::Borrowed(&out[..]);
    if guest_len < cluster_size && !crate::chunking::is_zero(&out[guest_len..]) {
        let mut v = out.clone();
        v[guest_len..].fill(0);
        input = std::borrow::Cow::Owned(v);
    }
    let codec = exact.and_then(|e| {
        let orig = compressed.get(..e as usize)?;
        let again = recompress(codec, &input, cluster_size - 1)?;
        (again == orig).then_some(codec)
    });
    Some(Reproduced { data: out, exact, codec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_roundtrip_and_exact_length() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 251) as u8).collect();
        let c = deflate_qemu(&data, 65535).unwrap();
        let mut padded = c.clone();
        padded.extend_from_slice(&[0xaa; 300]); // next stream's bytes follow in a real image
        let mut out = vec![0u8; 65536];
        let r = inflate_raw(&padded, &mut out).unwrap();
        assert_eq!(r.exact_len, Some(c.len()));
        assert!(r.full && out == data);
    }

    #[test]
    fn decompression_is_capped_at_one_cluster() {
        // Two clusters of zeros compress to a tiny stream: decompressing into one cluster
        // must stop there (no bomb), and it is not a clean end of stream.
        let c = deflate_qemu(&vec![0u8; 131072], 65535).unwrap();
        let mut out = vec![0u8; 65536];
        let r = inflate_raw(&c, &mut out).unwrap();
        assert!(r.full && r.exact_len.is_none());
        let z = zstd_qemu(&vec![0u8; 131072], 65535).unwrap();
        assert!(unzstd(&z, &mut out).is_none());
    }

    #[test]
    fn incompressible_data_does_not_fit() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(deflate_qemu(&data, 65535).is_none());
        assert!(zlib_version().starts_with("1."), "not stock zlib: {}", zlib_version());
    }

    #[test]
    fn vmdk_codec_is_zlib_compress_and_inflates_bounded() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 5 % 241) as u8).collect();
        let c = deflate_vmdk(&data, 65535).unwrap();
        assert_eq!(&c[..2], &[0x78, 0x9c], "zlib header of level 6, windowBits 15");
        let mut out = vec![0u8; 65536];
        assert_eq!(inflate_zlib(&c, &mut out), Some(65536));
        assert_eq!(out, data);
        // More than one grain of output is refused, not truncated.
        let big = deflate_vmdk(&vec![0u8; 131072], 65535).unwrap();
        assert_eq!(inflate_zlib(&big, &mut out), None);
        // A truncated stream does not end cleanly.
        assert_eq!(inflate_zlib(&c[..c.len() / 2], &mut out), None);
        assert_eq!(recompress(CODEC_VMDK, &data, 65535), Some(c));
    }
}
