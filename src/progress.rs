//! Progress display: a bar with bytes, rate and ETA on a terminal; nothing in
//! a pipe, with `--json` or with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

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
