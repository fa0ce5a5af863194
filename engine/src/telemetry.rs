//! Traces: OpenTelemetry spans for records that carry a W3C `traceparent`
//! header (W3C Trace Context, Level 1), exported over OTLP/HTTP with JSON
//! bodies (`[telemetry] otlp_endpoint`; off by default).
//!
//! A record is traced when its `traceparent` says *sampled* and its trace id
//! falls in `telemetry.sample_ratio` (OpenTelemetry's `TraceIdRatioBased`
//! rule, so every service of a trace decides alike). It then gets, in the
//! producer's trace:
//! - a `process {topic}` span (kind consumer, parent and link: the
//!   producer's span) from intake to the router's decision;
//! - a `deliver` span (kind producer, child of `process`) from the decision
//!   until the last copy of the record is delivered, dead-lettered or
//!   dropped, with the target it went to;
//! - its `traceparent` header rewritten to name the `deliver` span, so the
//!   app server (record headers in the HTTP body; the Kafka record of a
//!   `kafka://` target) continues the same trace below CDRS;
//! - per HTTP delivery request that carries traced records, a `POST` span
//!   (kind client, child of the first one's `deliver` span, linked to the
//!   others') whose `traceparent` the request carries.
//!
//! Attributes follow the OpenTelemetry semantic conventions for messaging,
//! version 1.30.0 (`messaging.system`, `messaging.operation.type`,
//! `messaging.destination.name`, `messaging.destination.partition.id`,
//! `messaging.kafka.offset`, `messaging.kafka.message.key`,
//! `messaging.consumer.group.name`), and for the request span those of HTTP
//! client spans, same version (`http.request.method`, `server.address`,
//! `server.port`, `url.full` without credentials, `http.response.status_code`,
//! `error.type`). Records without a `traceparent`, or not sampled, cost one
//! header scan.

use crate::config::TelemetryConfig;
use crate::record::Record;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SdkTracer, SdkTracerProvider, ShouldSample, Span,
};
use opentelemetry_sdk::Resource;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The header of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";

/// How long one OTLP export may take before it is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer of a running CDRS.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The provider's sampler, asked first: a record the ratio leaves out
    /// costs no span, attribute or name.
    sampler: Sampler,
    group: String,
}

/// A traced record's `deliver` span, shared by its copies (fan-out); it
/// ends when the last copy is dropped.
pub struct RecordTrace {
    /// The `traceparent` naming the `deliver` span.
    pub traceparent: String,
    span: Mutex<Span>,
    tracer: SdkTracer,
}

/// The `POST` span of one HTTP delivery request (kind client).
pub struct RequestSpan {
    /// The `traceparent` naming this span, for the request's header.
    pub traceparent: String,
    span: Span,
}

/// The W3C `traceparent` of a span context.
fn traceparent_of(sc: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

impl RequestSpan {
    /// Starts the span of a request to `url` carrying `traces`, the traced
    /// records of its batch: the first is its parent, the others (up to
    /// the SDK's 128 links) are linked. `None` when `traces` is empty.
    pub fn start<'a>(
        url: &str,
        mut traces: impl Iterator<Item = &'a RecordTrace>,
    ) -> Option<RequestSpan> {
        let first = traces.next()?;
        let parent = first.span.lock().expect("span lock").span_context().clone();
        let links: Vec<Link> = traces
            .take(127)
            .map(|t| Link::with_context(t.span.lock().expect("span lock").span_context().clone()))
            .collect();
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.full", crate::redact::url(url).into_owned()),
        ];
        if let Ok(u) = url::Url::parse(url) {
            if let Some(host) = u.host_str() {
                attributes.push(KeyValue::new("server.address", host.to_string()));
            }
            if let Some(port) = u.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        let span = first
            .tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_links(links)
            .with_attributes(attributes)
            .start_with_context(&first.tracer, &cx);
        Some(RequestSpan {
            traceparent: traceparent_of(span.span_context()),
            span,
        })
    }

    /// Ends the span of a request answered with a 2xx status.
    pub fn succeeded(mut self) {
        self.span.set_status(Status::Ok);
    }

    /// Ends the span of a failed request: `status` is the answer's HTTP
    /// status, `None` when none came (`error_type` then names why, e.g.
    /// `timeout`); `message` is the error's text.
    pub fn failed(mut self, status: Option<u16>, error_type: &str, message: &str) {
        if let Some(code) = status {
            self.span
                .set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        self.span
            .set_attribute(KeyValue::new("error.type", error_type.to_string()));
        self.span.set_status(Status::error(message.to_string()));
    }
}

impl RecordTrace {
    /// The trace id, 32 hex digits (for log lines about this record).
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The `deliver` span's id, 16 hex digits.
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// A `tracing` span named `record` with this record's `trace_id` and
    /// `span_id` (the `deliver` span's): log lines written inside it carry
    /// both, at the top level of a JSON log line. Its level is ERROR only so
    /// that no log level filters the span out while it lets the line through.
    pub fn log_span(&self) -> tracing::Span {
        tracing::error_span!(
            "record",
            trace_id = self.trace_id(),
            span_id = self.span_id()
        )
    }

    /// A copy was delivered to `target`.
    pub fn delivered(&self, target: &str) {
        let mut span = self.span.lock().expect("span lock");
        span.add_event(
            "delivered",
            vec![KeyValue::new("cdrs.target.id", target.to_string())],
        );
        span.set_status(Status::Ok);
    }

    /// The record `record` (its `topic/partition/offset`) was dead-lettered
    /// at `stage` for `reason`: the `deliver` span ends in error, and a
    /// DEBUG line inside [`RecordTrace::log_span`] says so.
    pub fn dead_lettered(&self, record: &str, stage: &str, reason: &str) {
        {
            let mut span = self.span.lock().expect("span lock");
            span.set_attribute(KeyValue::new("cdrs.dead_letter.stage", stage.to_string()));
            span.set_status(Status::error(reason.to_string()));
        }
        let _in = self.log_span().entered();
        tracing::debug!(record, stage, reason, "traced record dead-lettered");
    }
}

/// Reads a record's headers for the propagator.
struct Headers<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The OTLP/HTTP traces URL for `endpoint`: as given, or with `/v1/traces`
/// when it names only a collector's address (no path).
pub fn traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) if u.path().is_empty() || u.path() == "/" => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

impl Telemetry {
    /// The tracer of `[telemetry]`, or `None` when no endpoint is set.
    /// `group`: the consumer group (a span attribute).
    ///
    /// # Errors
    /// The exporter cannot be built (an endpoint that is not a URL).
    pub fn new(cfg: &TelemetryConfig, group: &str) -> anyhow::Result<Option<Arc<Telemetry>>> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(None);
        };
        // The exporter's reqwest client takes rustls's process default.
        crate::tls::provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces_url(endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::TraceIdRatioBased(cfg.sample_ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("cdrs");
        Ok(Some(Arc::new(Telemetry {
            provider,
            tracer,
            sampler: Sampler::TraceIdRatioBased(cfg.sample_ratio),
            group: group.to_string(),
        })))
    }

    /// Whether `telemetry.sample_ratio` keeps the trace `id`.
    fn keeps(&self, id: TraceId) -> bool {
        self.sampler
            .should_sample(None, id, "", &SpanKind::Consumer, &[], &[])
            .decision
            == SamplingDecision::RecordAndSample
    }

    /// Starts the spans of `r` if it carries a sampled `traceparent` that
    /// the ratio keeps, and rewrites its header to name the `deliver` span.
    /// Returns the `process` span (it ends when dropped) and the record's
    /// trace.
    pub fn start(&self, r: &mut Record) -> Option<(Span, Arc<RecordTrace>)> {
        let headers = Headers(&r.headers);
        let header = headers.get(TRACEPARENT)?;
        // The ratio decides by trace id alone (`00-<trace id>-…`): asked
        // first, it spares the records it leaves out the propagator's parse
        // and its context (about 0.2 µs a record). What it keeps, or a
        // header of another shape, the propagator checks in full below.
        let asked = header.get(3..35).and_then(|h| TraceId::from_hex(h).ok());
        if asked.is_some_and(|id| !self.keeps(id)) {
            return None;
        }
        let parent = TraceContextPropagator::new().extract(&headers);
        let remote = parent.span().span_context().clone();
        if !remote.is_valid()
            || !remote.is_sampled()
            || (asked != Some(remote.trace_id()) && !self.keeps(remote.trace_id()))
        {
            return None;
        }
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", r.topic.to_string()),
            KeyValue::new(
                "messaging.destination.partition.id",
                r.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", r.offset),
            KeyValue::new("messaging.consumer.group.name", self.group.clone()),
        ];
        if let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) {
            attributes.push(KeyValue::new(
                "messaging.kafka.message.key",
                key.to_string(),
            ));
        }
        let process = self
            .tracer
            .span_builder(format!("process {}", r.topic))
            .with_kind(SpanKind::Consumer)
            .with_links(vec![Link::with_context(remote)])
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        if !process.span_context().is_sampled() {
            return None;
        }
        let cx = parent.with_remote_span_context(process.span_context().clone());
        let deliver = self
            .tracer
            .span_builder("deliver")
            .with_kind(SpanKind::Producer)
            .with_attributes(vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "send"),
            ])
            .start_with_context(&self.tracer, &cx);
        let traceparent = traceparent_of(deliver.span_context());
        r.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(TRACEPARENT));
        r.headers.push((
            TRACEPARENT.to_string(),
            Some(traceparent.clone().into_bytes()),
        ));
        Some((
            process,
            Arc::new(RecordTrace {
                traceparent,
                span: Mutex::new(deliver),
                tracer: self.tracer.clone(),
            }),
        ))
    }

    /// Exports what is still buffered (at most [`EXPORT_TIMEOUT`]); on stop.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(error = %e, "traces not all exported at stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::json_layer;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::EnvFilter;

    /// A tracer exporting to a port nobody listens on.
    fn telemetry() -> Arc<Telemetry> {
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            ..TelemetryConfig::default()
        };
        Telemetry::new(&cfg, "g").unwrap().unwrap()
    }

    /// A record of topic "t" whose header `name` is a sampled traceparent.
    fn traced_record(name: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: vec![(
                name.into(),
                Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
            )],
        }
    }

    #[test]
    fn a_sampled_traceparent_continues_its_trace_and_others_pass_as_they_are() {
        let t = telemetry();
        let mut r = traced_record("TraceParent");
        let (_process, trace) = t.start(&mut r).expect("sampled");
        assert_eq!(trace.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(trace.span_id(), "b7ad6b7169203331");
        assert_eq!(r.headers.len(), 1, "replaced, not added: {:?}", r.headers);
        assert_eq!(
            r.headers[0].1.as_deref(),
            Some(trace.traceparent.as_bytes())
        );
        for unsampled in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "not a traceparent",
        ] {
            r.headers = vec![("traceparent".into(), Some(unsampled.as_bytes().to_vec()))];
            assert!(t.start(&mut r).is_none(), "{unsampled}");
            assert_eq!(r.headers[0].1.as_deref(), Some(unsampled.as_bytes()));
        }
        t.shutdown();
    }

    #[test]
    fn a_collector_address_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_a_traced_records_ids_at_the_top_level() {
        let telemetry = telemetry();
        let mut r = traced_record("traceparent");
        let (_process, trace) = telemetry.start(&mut r).expect("sampled");
        let out = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("warn"))
            .with(json_layer(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(record = "t/0/1", "outside any span");
            let _in = trace.log_span().entered();
            tracing::warn!(
                record = "t/0/1",
                reason = "gone",
                "inside the record's span"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for l in &lines {
            assert_eq!(l["level"], "WARN", "{l}");
            assert_eq!(l["target"], module_path!(), "{l}");
            assert_eq!(l["record"], "t/0/1", "event fields at the top level: {l}");
            assert!(l["timestamp"].is_string(), "{l}");
        }
        assert_eq!(lines[0]["message"], "outside any span");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["message"], "inside the record's span");
        assert_eq!(lines[1]["reason"], "gone");
        assert_eq!(lines[1]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(lines[1]["span_id"], trace.span_id());
        assert_eq!(trace.span_id().len(), 16);
        telemetry.shutdown();
    }
}
