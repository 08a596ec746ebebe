//! The terminal progress bars: the binary's implementation of the library's
//! [`imgarc::progress::Progress`] trait with indicatif, and when to show them
//! (never in a pipe, with `--json` or with `--quiet`).

use imgarc::progress::{Progress, SharedProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;

/// A progress bar the library reports to; cleared from the terminal when the
/// last handle is dropped (so a dropped bar never stays behind on stderr).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_length(&self, total: u64) {
        self.0.set_length(total)
    }
    fn set_position(&self, position: u64) {
        self.0.set_position(position)
    }
    fn inc(&self, delta: u64) {
        self.0.inc(delta)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// How the command's results are shown: one JSON document, nothing (quiet), or prose and progress.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    pub fn show_progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// A byte progress bar (hidden when progress should not show); drop it to clear it.
    pub fn bar(&self, total: Option<u64>, what: &str) -> SharedProgress {
        if !self.show_progress() {
            return imgarc::progress::none();
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
        Arc::new(Bar(pb))
    }
}
