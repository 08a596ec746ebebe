//! Image-format layer: everything imgarc knows about container formats of VM images.
//!
//! This module owns
//! * [`detect`] — format sniffing of the first bytes of a stream (qcow2, vmdk, vhd/vhdx, vdi,
//!   iso, luks, qed, raw) and the rule that a declared `disk_format` and the detected format
//!   must agree (a declared raw image is never decomposed as qcow2, OSSA-2024-002);
//! * [`qcow2`] — the streaming QCOW2 decomposer (container bytes → guest data, literal stream
//!   and layout recipe), the byte-exact rebuild from a recipe, the recipe codec, the streaming
//!   QCOW2 writer used for conversion on restore, and the safety policy for untrusted images.
//!
//! Nothing here opens files named by an image, and nothing here knows about chunking or the
//! repository: callers hand bytes in through [`qcow2::DecomposeSink`] and get them back through
//! [`qcow2::RebuildSource`].
pub mod detect;
pub mod qcow2;
