//! Logging: `tracing` to stderr with a filter that a config reload can
//! change (`[log] level`). `RUST_LOG`, when set, wins at startup.
//!
//! `[log] format = "json"` writes one JSON object per line (json-subscriber's
//! layout of tracing-subscriber's JSON format): `timestamp` (RFC 3339),
//! `level`, `target`, `message`, the event's fields and the fields of the
//! span it happened in, all at the top level. A line about a traced record
//! is written inside its `record` span (`telemetry::RecordTrace::log_span`),
//! so it carries the record's `trace_id` and `span_id` (32 and 16 hex
//! digits, as in its `traceparent`): the OpenTelemetry log data model's
//! correlation fields.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// `[log] format`: how lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// A line per event, coloured only at a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber with `level` (an `EnvFilter` directive such
/// as `info` or `cdrs=debug,rdkafka=warn`) unless `RUST_LOG` is set, writing
/// `format` to stderr.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                // Colour codes only for a person at a terminal, not in a
                // file, a pipe or a log collector.
                fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry.with(json_layer(std::io::stderr)).try_init(),
    };
    if installed.is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// The layer of `[log] format = "json"`, writing one object per line to
/// `make_writer`.
pub fn json_layer<S, W>(make_writer: W) -> json_subscriber::fmt::Layer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    json_subscriber::fmt::layer()
        .with_writer(make_writer)
        .flatten_event(true)
        .flatten_current_span_on_top_level(true)
        .with_span_list(false)
}

/// Checks a filter directive; the error says what is wrong.
pub fn validate(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Replaces the active filter (config reload). A no-op when [`init`] did
/// not install the subscriber (embedded use, tests).
///
/// # Errors
/// `level` is not a valid `tracing` filter directive (the parser's message).
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match HANDLE.get() {
        Some(h) => h.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
