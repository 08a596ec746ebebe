//! The tracing subscriber (binary only): which events reach standard error and how they look.
//! Default: INFO and up as the lines users have always seen (`imgarc: warning: …`, `imgarc: …`);
//! `--quiet` keeps warnings and errors; `-v` adds imgarc's debug events, `-vv` imgarc's trace and
//! the libraries' debug events; `IMGARC_LOG` (tracing's `EnvFilter` syntax) overrides all of these.
//! `--log-format json` prints one JSON object per event and line.

use super::{GlobalArgs, LogFormat, UsageError};
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The variable that takes a filter in `EnvFilter` syntax (`imgarc=debug,reqwest=info`).
pub const LOG_ENV: &str = "IMGARC_LOG";

pub fn init(global: &GlobalArgs) -> anyhow::Result<()> {
    let filter = filter(std::env::var(LOG_ENV).ok().as_deref(), global.verbose, global.quiet)?;
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let _ = match global.log_format {
        LogFormat::Text => builder.event_format(Plain).try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
    Ok(())
}

/// The binary's own final error line (never filtered out): `imgarc: error: …`, or with
/// `--log-format json` an ERROR object like the events', its `fields` holding the exit code.
pub fn error_line(format: LogFormat, message: &str, exit_code: i32) {
    match format {
        LogFormat::Text => eprintln!("imgarc: error: {message}"),
        LogFormat::Json => eprintln!("{}", json_line("ERROR", "imgarc", message, serde_json::json!({ "exit_code": exit_code }))),
    }
}

/// One line of a run's activity (sync's line per image, its deleted-upstream lines): in text
/// `<RFC 3339 time> <line>`, as sync has always printed it for journald and cron mail; with
/// `--log-format json` an event object like the others, `fields` holding the entry, so the
/// standard error of a json-logging run is JSON lines only.
pub fn activity(format: LogFormat, level: tracing::Level, line: &str, fields: serde_json::Value) {
    match format {
        LogFormat::Text => eprintln!("{} {line}", imgarc::util::now_rfc3339()),
        LogFormat::Json => eprintln!("{}", json_line(level.as_str(), "imgarc::sync", line, fields)),
    }
}

/// The one shape of a JSON log line: events, activity lines and the final error line alike.
fn json_line(level: &str, target: &str, message: &str, fields: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": level,
        "target": target,
        "message": message,
        "fields": fields,
    })
}

/// The filter of a run: `IMGARC_LOG` when set and not empty (an invalid one is a usage error), else by verbosity.
fn filter(env: Option<&str>, verbose: u8, quiet: bool) -> anyhow::Result<EnvFilter> {
    if let Some(spec) = env.filter(|s| !s.trim().is_empty()) {
        return EnvFilter::builder()
            .parse(spec)
            .map_err(|e| UsageError(format!("{LOG_ENV}={spec:?} is not a log filter ({e}); e.g. {LOG_ENV}=imgarc=debug")).into());
    }
    let spec = match verbose {
        0 if quiet => "warn",
        0 => "info",
        1 => "info,imgarc=debug",
        _ => "debug,imgarc=trace",
    };
    Ok(EnvFilter::new(spec))
}

/// The library's events in the words the user has always seen: `imgarc: error: …`,
/// `imgarc: warning: …`, `imgarc: …`; debug and trace events also name their level and target.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        match *meta.level() {
            tracing::Level::ERROR => write!(w, "imgarc: error: ")?,
            tracing::Level::WARN => write!(w, "imgarc: warning: ")?,
            tracing::Level::INFO => write!(w, "imgarc: ")?,
            tracing::Level::DEBUG => write!(w, "imgarc: debug: {}: ", meta.target())?,
            tracing::Level::TRACE => write!(w, "imgarc: trace: {}: ", meta.target())?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// One JSON object per line: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, and the
/// event's other `fields` (values as JSON numbers and booleans where they are, else strings).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = json_line(meta.level().as_str(), meta.target(), &fields.message.unwrap_or_default(), fields.other.into());
        writeln!(w, "{line}")
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    other: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            });
        } else {
            self.other.insert(field.name().to_string(), value);
        }
    }
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_picks_the_filter_and_imgarc_log_overrides_it() {
        assert_eq!(filter(None, 0, false).unwrap().to_string(), "info");
        assert_eq!(filter(None, 0, true).unwrap().to_string(), "warn");
        assert_eq!(filter(None, 1, true).unwrap().to_string(), "imgarc=debug,info");
        assert_eq!(filter(None, 2, false).unwrap().to_string(), "imgarc=trace,debug");
        assert_eq!(filter(Some("imgarc::sync=trace"), 0, false).unwrap().to_string(), "imgarc::sync=trace");
        assert_eq!(filter(Some("  "), 0, false).unwrap().to_string(), "info");
    }

    #[test]
    fn an_invalid_imgarc_log_is_a_usage_error_naming_it() {
        let e = filter(Some("imgarc=loud"), 0, false).unwrap_err();
        assert!(e.is::<UsageError>(), "{e:#}");
        assert!(format!("{e}").contains("IMGARC_LOG=\"imgarc=loud\""), "{e}");
    }
}
