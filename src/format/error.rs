//! The error type shared by the layout recipe, the rebuild and every container format except
//! QCOW2 (whose older [`super::qcow2::Qcow2Error`] wraps it). Messages name the format, the
//! field and the offset, because they end up in operator-facing logs ("refused: VMDK extent
//! names another file ...").
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not what the format says (bad magic, field out of range, table out of
    /// bounds, overlapping blocks); `format` is "vmdk", "vdi", "vhd" or "vhdx".
    #[error("malformed {format} image: {reason}")]
    Malformed { format: &'static str, reason: String },
    /// A well-formed image imgarc will not decompose (a parent reference, an extent naming
    /// another file, an encrypted image): refused, never opened.
    #[error("{format} image refused: {reason}")]
    Refused { format: &'static str, reason: String },
    #[error("{format} stream truncated: expected {expected} bytes, got {got}")]
    Truncated { format: &'static str, expected: u64, got: u64 },
    #[error("resource limit exceeded: {0}")]
    Limit(String),
    #[error("invalid recipe: {0}")]
    BadRecipe(String),
    #[error("rebuild failed: {0}")]
    Rebuild(String),
    /// A conversion on restore could not be written (`format` is the output format).
    #[error("cannot write {format}: {reason}")]
    Writer { format: &'static str, reason: String },
    /// The option (e.g. a `--subformat`) does not apply to this output format.
    #[error("{0}")]
    Usage(String),
}

impl ImageError {
    pub fn malformed(format: &'static str, reason: impl Into<String>) -> ImageError {
        ImageError::Malformed { format, reason: reason.into() }
    }
    pub fn refused(format: &'static str, reason: impl Into<String>) -> ImageError {
        ImageError::Refused { format, reason: reason.into() }
    }
}
