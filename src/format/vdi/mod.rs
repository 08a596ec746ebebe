//! VDI (VirtualBox disk images, version 1.1), dynamic and fixed: the streaming decomposer into guest pieces +
//! literal stream + recipe ([`decompose()`]), and the streaming writer for conversion on restore ([`write()`]).
//! Undo and differencing images, and any image naming a parent uuid, are refused. Byte mapping and refusals:
//! format-spec/formats/vdi.md.
mod decompose;
mod header;
mod writer;

pub use decompose::decompose;
pub use writer::write;

/// Whether [`decompose`] is implemented (archive stores the container opaque otherwise).
pub const DECOMPOSES: bool = true;
/// Whether [`write`] is implemented.
pub const WRITES: bool = true;

#[cfg(test)]
mod tests;
