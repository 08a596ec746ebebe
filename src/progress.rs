//! Progress of long operations, as the library reports it: a byte count
//! against an optional total. The library never draws; the binary implements
//! [`Progress`] with a terminal bar (and shows nothing in a pipe, with
//! `--json` or with `--quiet`).

use std::sync::Arc;

/// Where an operation reports how far it got. Every method has a no-op
/// default, so a caller that shows nothing passes [`none`].
pub trait Progress: Send + Sync {
    /// The total, once it is known.
    fn set_length(&self, _total: u64) {}
    /// Bytes done so far (absolute).
    fn set_position(&self, _position: u64) {}
    /// Bytes done since the last report.
    fn inc(&self, _delta: u64) {}
}

/// A shareable progress handle (operations hand it to their worker threads).
pub type SharedProgress = Arc<dyn Progress>;

/// Reports nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A handle that reports nowhere.
pub fn none() -> SharedProgress {
    Arc::new(NoProgress)
}
