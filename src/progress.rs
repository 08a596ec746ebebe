//! Progress of long operations, as the library reports it: a byte count
//! against an optional total. The library never draws; the binary implements
//! [`Progress`] with a terminal bar (and shows nothing in a pipe, with
//! `--json` or with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
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

impl Progress for ProgressBar {
    fn set_length(&self, total: u64) {
        ProgressBar::set_length(self, total)
    }
    fn set_position(&self, position: u64) {
        ProgressBar::set_position(self, position)
    }
    fn inc(&self, delta: u64) {
        ProgressBar::inc(self, delta)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    pub fn show_progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// A byte progress bar (hidden when progress should not show).
    pub fn bar(&self, total: Option<u64>, what: &str) -> ProgressBar {
        if !self.show_progress() {
            return ProgressBar::hidden();
        }
        let pb = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        pb.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{msg} {spinner} {bytes} {bytes_per_sec}"
        };
        pb.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        pb.set_message(what.to_string());
        pb
    }
}
