//! Run metrics in the node_exporter textfile-collector format (the Prometheus text exposition
//! format, gauges only): the [`Textfile`] builder and its renderer, the one label-value escape, the
//! series every run of a command writes ([`run_series`]) and the series each operation's report adds
//! ([`ReportSeries`]). `imgarc --metrics-file` (sync, forget, prune, check, copy, drill)
//! records into one `Textfile` and writes it with [`Textfile::write`] (temp file + rename, 0644).

use crate::check::CheckReport;
use crate::forget::ForgetReport;
use crate::prune::PruneReport;
use crate::sync::SyncReport;
use std::fmt::Write as _;

/// One metric family: its HELP text and its samples (label set, value), in insertion order.
#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// A textfile being built: families in the order first added, each rendered with its
/// `# HELP` and `# TYPE … gauge` lines before its samples (the format wants a family's
/// samples together, so a second `gauge` call with the same name joins the first).
#[derive(Debug, Clone, Default)]
pub struct Textfile {
    families: Vec<Family>,
}

impl Textfile {
    pub fn new() -> Textfile {
        Textfile::default()
    }

    /// Adds one gauge sample. `name` and the label names come from code, never from input:
    /// they must be valid Prometheus names (checked in debug builds).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) -> &mut Textfile {
        debug_assert!(valid_name(name, true), "metric name {name:?}");
        debug_assert!(labels.iter().all(|(k, _)| valid_name(k, false)), "label names of {name}: {labels:?}");
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, value)),
            None => self.families.push(Family { name: name.to_string(), help: help.to_string(), samples: vec![(labels, value)] }),
        }
        self
    }

    /// Adds every sample of `other`, after this textfile's own.
    pub fn extend(&mut self, other: &Textfile) -> &mut Textfile {
        for f in &other.families {
            for (labels, value) in &f.samples {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                self.gauge(&f.name, &f.help, &labels, *value);
            }
        }
        self
    }

    /// The exposition text: one HELP and one TYPE line per family, then its samples; ends with a newline.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for f in &self.families {
            // HELP text escapes backslash and newline (not quotes), per the format.
            let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            writeln!(s, "# HELP {} {help}\n# TYPE {} gauge", f.name, f.name).expect("writing to a String");
            for (labels, value) in &f.samples {
                s.push_str(&f.name);
                if !labels.is_empty() {
                    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect();
                    write!(s, "{{{}}}", inner.join(",")).expect("writing to a String");
                }
                writeln!(s, " {}", format_value(*value)).expect("writing to a String");
            }
        }
        s
    }

    /// Writes the rendered text to `path` atomically (a temporary file in the same directory,
    /// then a rename), mode 0644 so node_exporter's user can read it.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::util::write_public_file(path, self.render().as_bytes())
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped (the one escape;
/// `report --format prometheus` uses it too).
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value as the format spells it: `NaN`, `+Inf`, `-Inf`, else Rust's shortest
/// round-tripping decimal (integers without a fraction).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn valid_name(name: &str, metric: bool) -> bool {
    let mut chars = name.chars();
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
    chars.next().is_some_and(first_ok) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':'))
}

/// `imgarc_<command>_last_success_timestamp_seconds` as an earlier run wrote it into the
/// textfile `text`: what a failed run carries forward (None if absent or unparsable).
pub fn previous_last_success(text: &str, command: &str) -> Option<f64> {
    let name = format!("imgarc_{command}_last_success_timestamp_seconds");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name.as_str())?;
        // The sample carries no labels: the name is followed by the value alone.
        let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
        value.parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0)
    })
}

/// What every run of a metered command says about itself.
#[derive(Debug, Clone)]
pub struct RunOutcome<'a> {
    /// The verb: `sync`, `forget`, `prune`, `check` (a Prometheus name part).
    pub command: &'a str,
    /// When the run ended, seconds since the Unix epoch.
    pub ended: f64,
    pub duration_seconds: f64,
    pub exit_code: i32,
    /// When the last successful run ended: this run's end if it succeeded, else the previous
    /// file's value ([`previous_last_success`]); None leaves the series out (never a success yet).
    pub last_success: Option<f64>,
}

/// The series of every metered run: last run and last success timestamps, duration, exit code
/// and `imgarc_build_info{version}`.
pub fn run_series(t: &mut Textfile, run: &RunOutcome<'_>) {
    let c = run.command;
    t.gauge(&format!("imgarc_{c}_last_run_timestamp_seconds"), &format!("When the last imgarc {c} ended (Unix time)."), &[], run.ended);
    if let Some(ok) = run.last_success {
        t.gauge(
            &format!("imgarc_{c}_last_success_timestamp_seconds"),
            &format!("When the last imgarc {c} that exited 0 ended (Unix time)."),
            &[],
            ok,
        );
    }
    t.gauge(&format!("imgarc_{c}_duration_seconds"), &format!("How long the last imgarc {c} ran."), &[], run.duration_seconds);
    t.gauge(
        &format!("imgarc_{c}_exit_code"),
        &format!("Exit code of the last imgarc {c} (0 ok, 1 failed, 3 some items failed, 10 no repository, 11 locked, 12 wrong password, 130/143 interrupted)."),
        &[],
        f64::from(run.exit_code),
    );
    t.gauge("imgarc_build_info", "The imgarc version that wrote these metrics.", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
}

/// The series an operation's report adds to its run's textfile.
pub trait ReportSeries {
    fn add_series(&self, t: &mut Textfile);
}

impl ReportSeries for SyncReport {
    /// With `--shard K/N`, every series carries `shard="K/N"` (N shards' files on one host must
    /// not collide), and `imgarc_sync_shard{index,count}` says which shard wrote the file.
    fn add_series(&self, t: &mut Textfile) {
        let shard = self.shard.map(|s| s.to_string());
        let labels = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            shard.iter().map(|s| ("shard", s.as_str())).chain(extra.iter().copied()).collect()
        };
        if let Some(s) = self.shard {
            let (index, count) = (s.index.to_string(), s.count.to_string());
            t.gauge(
                "imgarc_sync_shard",
                "The --shard K/N of the last sync (1; absent unsharded).",
                &[("index", index.as_str()), ("count", count.as_str())],
                1.0,
            );
        }
        const HELP: &str = "Images of the last sync by outcome (deleted_upstream: archived images gone from Glance).";
        for (result, n) in self.outcome_counts() {
            t.gauge("imgarc_sync_images", HELP, &labels(&[("outcome", result.name())]), n as f64);
        }
        t.gauge("imgarc_sync_images", HELP, &labels(&[("outcome", "deleted_upstream")]), self.deleted_upstream.len() as f64);
        t.gauge("imgarc_sync_bytes_read", "Image bytes the last sync read from Glance.", &labels(&[]), self.bytes_read as f64);
        t.gauge(
            "imgarc_sync_bytes_stored",
            "Bytes the last sync added to the repository (new chunks, compressed).",
            &labels(&[]),
            self.bytes_stored as f64,
        );
        t.gauge("imgarc_sync_warnings", "Warnings of the last sync.", &labels(&[]), self.warnings.len() as f64);
        const DISKS: &str = "Cinder disks of volume-backed instance snapshots the last sync followed, by outcome.";
        for (outcome, n) in [
            ("archived", self.volume_backed_archived.len()),
            ("unchanged", self.volume_backed_unchanged.len()),
            ("failed", self.volume_backed_failed.len()),
        ] {
            t.gauge("imgarc_sync_volume_backed_disks", DISKS, &labels(&[("outcome", outcome)]), n as f64);
        }
        const VOLUMES: &str = "Cinder volumes of the last sync --volumes, by outcome.";
        let failed = self.volumes_failed();
        t.gauge("imgarc_sync_volumes", VOLUMES, &labels(&[("outcome", "archived")]), (self.volumes.len() - failed) as f64);
        t.gauge("imgarc_sync_volumes", VOLUMES, &labels(&[("outcome", "failed")]), failed as f64);
    }
}

impl ReportSeries for ForgetReport {
    fn add_series(&self, t: &mut Textfile) {
        t.gauge("imgarc_forget_snapshots_removed", "Snapshots the last forget removed.", &[], self.removed as f64);
        t.gauge("imgarc_forget_snapshots_kept", "Snapshots the last forget kept.", &[], self.keep.len() as f64);
    }
}

impl ReportSeries for PruneReport {
    fn add_series(&self, t: &mut Textfile) {
        t.gauge("imgarc_prune_bytes_freed", "Bytes the last prune deleted.", &[], self.bytes_freed as f64);
        t.gauge(
            "imgarc_prune_bytes_awaiting_grace",
            "Bytes marked unused that a later prune deletes once the grace period has passed.",
            &[],
            self.bytes_awaiting_grace as f64,
        );
        t.gauge("imgarc_prune_packs_deleted", "Packs the last prune deleted.", &[], self.packs_deleted as f64);
        t.gauge("imgarc_prune_warnings", "Warnings of the last prune.", &[], self.warnings.len() as f64);
    }
}

impl ReportSeries for CheckReport {
    fn add_series(&self, t: &mut Textfile) {
        t.gauge("imgarc_check_damaged_chunks", "Chunks the last check found damaged or missing.", &[], self.damaged_chunks.len() as f64);
        t.gauge("imgarc_check_errors", "Errors the last check found.", &[], self.errors.len() as f64);
        t.gauge("imgarc_check_warnings", "Warnings of the last check.", &[], self.warnings.len() as f64);
        t.gauge("imgarc_check_snapshots_checked", "Snapshots the last check verified.", &[], self.snapshots_checked as f64);
    }
}

impl ReportSeries for crate::drill::DrillReport {
    fn add_series(&self, t: &mut Textfile) {
        const HELP: &str = "Snapshots the last drill took, by result (not_run: a check could not be carried out).";
        t.gauge("imgarc_drill_snapshots", HELP, &[("result", "passed")], self.passed as f64);
        t.gauge("imgarc_drill_snapshots", HELP, &[("result", "failed")], self.failed as f64);
        t.gauge("imgarc_drill_snapshots", HELP, &[("result", "not_run")], self.not_run as f64);
        let slowest = self.drills.iter().map(|d| d.seconds).fold(0.0, f64::max);
        t.gauge(
            "imgarc_drill_slowest_seconds",
            "The longest drill of one snapshot in the last run: the worst recovery time it showed.",
            &[],
            slowest,
        );
        t.gauge("imgarc_drill_records_stored", "Drill records the last drill stored in the repository.", &[], self.records_stored as f64);
        t.gauge("imgarc_drill_warnings", "Warnings of the last drill.", &[], self.warnings.len() as f64);
    }
}

impl ReportSeries for crate::copy::CopyReport {
    fn add_series(&self, t: &mut Textfile) {
        const HELP: &str = "Snapshots of the last copy by outcome (present: the target held a copy already).";
        t.gauge("imgarc_copy_snapshots", HELP, &[("outcome", "copied")], self.snapshots_copied as f64);
        t.gauge("imgarc_copy_snapshots", HELP, &[("outcome", "present")], self.snapshots_present as f64);
        t.gauge("imgarc_copy_snapshots", HELP, &[("outcome", "failed")], self.snapshots_failed as f64);
        t.gauge(
            "imgarc_copy_bytes_sent",
            "Bytes of packs and index objects the last copy added to the target.",
            &[],
            self.bytes_sent as f64,
        );
        t.gauge("imgarc_copy_chunks_sent", "Chunks the last copy sent to the target.", &[], self.chunks_sent as f64);
        t.gauge("imgarc_copy_warnings", "Warnings of the last copy.", &[], self.warnings.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::ImageResult;

    #[test]
    fn families_render_with_help_and_type_once_and_samples_together() {
        let mut t = Textfile::new();
        t.gauge("imgarc_a", "First.", &[("k", "x")], 1.0);
        t.gauge("imgarc_b", "Second.", &[], 2.5);
        t.gauge("imgarc_a", "First.", &[("k", "y")], 3.0);
        assert_eq!(
            t.render(),
            "# HELP imgarc_a First.\n# TYPE imgarc_a gauge\nimgarc_a{k=\"x\"} 1\nimgarc_a{k=\"y\"} 3\n\
             # HELP imgarc_b Second.\n# TYPE imgarc_b gauge\nimgarc_b 2.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut t = Textfile::new();
        t.gauge("imgarc_x", "a \\ b\nc", &[("name", "q\"uo\\te\nnl")], 0.0);
        let text = t.render();
        assert!(text.contains("# HELP imgarc_x a \\\\ b\\nc\n"), "{text}");
        assert!(text.contains("imgarc_x{name=\"q\\\"uo\\\\te\\nnl\"} 0\n"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn special_values_use_the_format_spelling() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1_764_612_000.0), "1764612000");
        assert_eq!(format_value(0.25), "0.25");
    }

    #[test]
    fn a_failed_run_carries_the_last_success_forward_only_from_a_parsable_file() {
        let mut t = Textfile::new();
        run_series(&mut t, &RunOutcome { command: "sync", ended: 200.0, duration_seconds: 1.5, exit_code: 0, last_success: Some(200.0) });
        let text = t.render();
        assert_eq!(previous_last_success(&text, "sync"), Some(200.0));
        assert_eq!(previous_last_success(&text, "prune"), None);
        assert_eq!(previous_last_success("imgarc_sync_last_success_timestamp_seconds garbage\n", "sync"), None);
        assert_eq!(previous_last_success("imgarc_sync_last_success_timestamp_seconds_x 5\n", "sync"), None);
        assert_eq!(previous_last_success("", "sync"), None);

        let mut failed = Textfile::new();
        run_series(&mut failed, &RunOutcome { command: "sync", ended: 300.0, duration_seconds: 2.0, exit_code: 1, last_success: None });
        let text = failed.render();
        assert!(!text.contains("last_success"), "{text}");
        assert!(text.contains("imgarc_sync_exit_code 1\n"), "{text}");
        assert!(text.contains(&format!("imgarc_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))), "{text}");
    }

    #[test]
    fn sync_series_name_every_outcome_with_zeros() {
        let report = SyncReport { bytes_read: 7, bytes_stored: 3, ..Default::default() };
        let mut t = Textfile::new();
        report.add_series(&mut t);
        let text = t.render();
        for r in ImageResult::ALL {
            assert!(text.contains(&format!("imgarc_sync_images{{outcome=\"{}\"}} 0\n", r.name())), "{text}");
        }
        assert!(text.contains("imgarc_sync_images{outcome=\"deleted_upstream\"} 0\n"), "{text}");
        assert!(text.contains("imgarc_sync_bytes_read 7\n"), "{text}");
        assert_eq!(text.matches("# TYPE imgarc_sync_images gauge").count(), 1, "{text}");
        assert!(!text.contains("shard"), "an unsharded sync's series are as before: {text}");

        let sharded = SyncReport { shard: Some(crate::shard::Shard::new(2, 3).unwrap()), bytes_read: 7, ..Default::default() };
        let mut t = Textfile::new();
        sharded.add_series(&mut t);
        let text = t.render();
        assert!(text.contains("imgarc_sync_shard{index=\"2\",count=\"3\"} 1\n"), "{text}");
        assert!(text.contains("imgarc_sync_images{shard=\"2/3\",outcome=\"archived\"} 0\n"), "{text}");
        assert!(text.contains("imgarc_sync_bytes_read{shard=\"2/3\"} 7\n"), "{text}");
    }
}
