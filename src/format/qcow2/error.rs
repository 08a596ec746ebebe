//! Error type of the QCOW2 module. Messages name the problem plainly, because they end up in
//! operator-facing logs and reports ("refused: backing file ...").
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Qcow2Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a qcow2 image: {0}")]
    NotQcow2(String),
    #[error("qcow2 header field {field} = {value} is out of range: {reason}; refused")]
    BadHeader { field: &'static str, value: u64, reason: String },
    #[error("qcow2 image has a backing file ({0:?}): refused; imgarc never opens other files — use --allow-backing-file-opaque to archive it as opaque bytes")]
    BackingFile(String),
    #[error("qcow2 image uses an external data file ({0:?}): refused; the guest data is not in the image and the name refers to a host path (OSSA-2024-001) — use --allow-data-file-opaque to archive it as opaque bytes")]
    DataFile(String),
    #[error("qcow2 stream truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: u64, got: u64 },
    #[error("qcow2 stream is longer than its declared length of {0} bytes")]
    TooLong(u64),
    #[error("resource limit exceeded: {0}")]
    Limit(String),
    /// The recipe or the rebuild (shared with the other container formats).
    #[error(transparent)]
    Layout(#[from] crate::format::ImageError),
    #[error("cannot write qcow2: {0}")]
    Writer(String),
}

pub(crate) fn bad(field: &'static str, value: u64, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::BadHeader { field, value, reason: reason.into() }
}
