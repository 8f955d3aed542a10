//! One way to set up `tracing` for gearfleet's binaries and tests (feature `logging`): a filter
//! read from an environment variable (with a default when it is unset or invalid), text or JSON
//! lines, on stdout, stderr or the test harness's capture.
//!
//! ```no_run
//! use gearfleet_proto::logging::{self, LogFormat, Writer};
//!
//! let format: LogFormat = "json".parse().expect("text or json");
//! logging::init(format, "RUST_LOG", "info", Writer::Stderr);
//! ```

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::TestWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {0:?}: expected text or json")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<LogFormat, UnknownLogFormat> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_string())),
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Stdout,
    Stderr,
    /// The test harness's output capture (shown for failing tests only).
    Test,
}

/// Installs the global subscriber: events pass the filter in `filter_env` (e.g. `RUST_LOG`,
/// `GEARFLEET_LOG`), or `default_filter` (e.g. `info`) when that variable is unset or does not
/// parse. Panics if a global subscriber is already set, as tracing-subscriber's `init` does.
pub fn init(format: LogFormat, filter_env: &str, default_filter: &str, writer: Writer) {
    try_init(format, filter_env, default_filter, writer).expect("Unable to install global subscriber")
}

/// As [`init`], but an already installed subscriber is an error to return, not a panic (tests
/// call it once per test and ignore the error).
pub fn try_init(
    format: LogFormat,
    filter_env: &str,
    default_filter: &str,
    writer: Writer,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new(default_filter));
    match writer {
        Writer::Stdout => install(format, filter, std::io::stdout),
        Writer::Stderr => install(format, filter, std::io::stderr),
        Writer::Test => install(format, filter, TestWriter::new()),
    }
}

fn install<W>(format: LogFormat, filter: EnvFilter, writer: W) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.finish().try_init(),
        LogFormat::Json => builder.json().finish().try_init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_back() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }

    #[test]
    fn other_formats_are_refused_with_the_choices() {
        let err = "JSON".parse::<LogFormat>().unwrap_err();
        assert_eq!(err, UnknownLogFormat("JSON".into()));
        assert_eq!(err.to_string(), r#"unknown log format "JSON": expected text or json"#);
        assert!("".parse::<LogFormat>().is_err());
    }
}
