//! XFS, read-only (issue 13: the parser comes with its own change).

use crate::guest::{Filesystem, FsError, ReadAt};
use std::sync::Arc;

/// Opens XFS when `bytes` hold one ("XFSB" at byte 0); `Ok(None)` when they do not.
pub fn open<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    let _ = bytes;
    Ok(None)
}
