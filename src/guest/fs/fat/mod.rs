//! FAT12, FAT16 and FAT32 (vfat), read-only (issue 13: the parser comes with its own change).

use crate::guest::{Filesystem, FsError, ReadAt};
use std::sync::Arc;

/// Opens FAT12, FAT16 and FAT32 (vfat) when `bytes` hold one (a FAT boot sector); `Ok(None)` when they do not.
pub fn open<'a>(bytes: Arc<dyn ReadAt + 'a>) -> Result<Option<Box<dyn Filesystem + 'a>>, FsError> {
    let _ = bytes;
    Ok(None)
}
