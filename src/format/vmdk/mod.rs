//! VMDK (VMware, VirtualBox): `monolithicSparse` and `streamOptimized`: the streaming decomposer into guest pieces + literal stream + recipe, and the
//! streaming writer for conversion on restore. (Not implemented yet: archived as opaque bytes.)
use super::{DecomposeSink, Decomposition, ImageError, Policy, RebuildSource, WriteOptions};
use std::io::{Read, Write};

/// Whether [`decompose`] is implemented (archive stores the container opaque otherwise).
pub const DECOMPOSES: bool = false;
/// Whether [`write`] is implemented.
pub const WRITES: bool = false;

pub fn decompose(
    _input: &mut dyn Read,
    _file_len: Option<u64>,
    _policy: &Policy,
    _sink: &mut dyn DecomposeSink,
) -> Result<Decomposition, ImageError> {
    Err(ImageError::refused("vmdk", "not decomposed by this imgarc"))
}

pub fn write(
    _opts: &WriteOptions,
    _virtual_size: u64,
    _ranges: &[(u64, u64)],
    _src: &mut dyn RebuildSource,
    _out: &mut dyn Write,
) -> Result<u64, ImageError> {
    Err(ImageError::Usage("imgarc does not write vmdk images yet".into()))
}
