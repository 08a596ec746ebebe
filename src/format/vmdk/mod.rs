//! VMDK (VMware, VirtualBox, OVA exports): `monolithicSparse` and `streamOptimized`, the two
//! single-file subformats. [`header`] owns the sparse extent header, the stream markers and the
//! descriptor whitelist; [`decompose`] the one-pass decomposer into guest grains + literal
//! stream + recipe; [`writer`] the one-pass writer used by `restore --disk-format vmdk`.
//! Every other VMDK kind (text descriptors, flat/VMFS extents, several extents, parents) is
//! refused: they name other files. Spec: format-spec/formats/vmdk.md.
mod decompose;
pub mod header;
mod writer;

pub use decompose::decompose;
pub use writer::write;

/// Whether [`decompose`] is implemented (archive stores the container opaque otherwise).
pub const DECOMPOSES: bool = true;
/// Whether [`write`] is implemented.
pub const WRITES: bool = true;
