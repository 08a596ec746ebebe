//! `--metrics-file` in the binary: the verbs that take it, the one metered run of this process
//! (its verb, start, and the series its report adds), and writing the file exactly once when the
//! run ends — with success, with an error, or on a signal. The format and the series are
//! `imgarc::metrics`.

use anyhow::{Context, Result};
use imgarc::metrics::{previous_last_success, run_series, ReportSeries, RunOutcome, Textfile};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The verbs that write `--metrics-file`.
pub const METERED: &[&str] = &["sync", "forget", "prune", "check", "copy", "drill"];
/// The usage error of `--metrics-file` on a verb that writes no metrics.
pub fn not_metered(verb: &str) -> String {
    format!("--metrics-file is for {} (not {verb})", METERED.join(", "))
}

struct Run {
    path: PathBuf,
    command: &'static str,
    started: Instant,
    series: Mutex<Textfile>,
    /// The exit code the file was written with, once it was: the first to finish (the
    /// command, or the signal thread) writes; the other learns the code.
    finished: Mutex<Option<i32>>,
}

static RUN: OnceLock<Run> = OnceLock::new();

/// Starts metering this process's run of `command`, to be written to `path`.
pub fn start(path: PathBuf, command: &'static str) {
    let _ = RUN.set(Run { path, command, started: Instant::now(), series: Mutex::new(Textfile::new()), finished: Mutex::new(None) });
}

/// Adds the series of an operation's report to the run's file (nothing without `--metrics-file`).
pub fn record(report: &dyn ReportSeries) {
    if let Some(run) = RUN.get() {
        if let Ok(mut t) = run.series.lock() {
            report.add_series(&mut t);
        }
    }
}

/// Writes the metrics file for a run that ended with `exit_code`, unless it was already written
/// (then returns that code: a signal's 130/143 wins over the command's own ending). Without
/// `--metrics-file`, returns `exit_code`.
pub fn finish(exit_code: i32) -> (i32, Result<()>) {
    let Some(run) = RUN.get() else { return (exit_code, Ok(())) };
    let Ok(mut finished) = run.finished.lock() else { return (exit_code, Ok(())) };
    if let Some(code) = *finished {
        return (code, Ok(()));
    }
    *finished = Some(exit_code);
    (exit_code, write(run, exit_code))
}

fn write(run: &Run, exit_code: i32) -> Result<()> {
    let ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    // A failed run keeps the previous success's time (from the file it replaces), so "no
    // success in 26 h" stays true across failures; with no readable earlier value, the series is left out.
    let last_success = if exit_code == 0 {
        Some(ended)
    } else {
        std::fs::read_to_string(&run.path).ok().and_then(|text| previous_last_success(&text, run.command))
    };
    let mut t = Textfile::new();
    run_series(
        &mut t,
        &RunOutcome { command: run.command, ended, duration_seconds: run.started.elapsed().as_secs_f64(), exit_code, last_success },
    );
    if let Ok(series) = run.series.lock() {
        t.extend(&series);
    }
    t.write(&run.path).with_context(|| format!("cannot write the metrics file {}", run.path.display()))
}
