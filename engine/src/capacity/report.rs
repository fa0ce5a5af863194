//! Capacity reports (heartbeats) from application servers: the format and
//! its validation. The same format arrives on the capacity topic and on
//! `PUT /v1/targets/{id}/capacity`; its JSON Schema is
//! `sdk/capacity-report.schema.json`.

use crate::config::{valid_id, MAX_CAPACITY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest accepted report, bytes (topic record or HTTP body).
pub const MAX_REPORT_BYTES: usize = 4096;
/// Most labels a report may carry.
pub const MAX_LABELS: usize = 32;

/// One heartbeat. Unknown fields are rejected; every field but `capacity`
/// is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityReport {
    /// Target id. Required on the capacity topic; on HTTP, if given, it must
    /// match the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Delivery URL; needed for an unknown server to register itself
    /// (matched against `capacity.allow_endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Records the server can hold in flight (0..=10,000,000).
    pub capacity: u32,
    /// Records the server is processing now.
    #[serde(default)]
    pub inflight: u32,
    /// Records queued in the server, not yet processed.
    #[serde(default)]
    pub queue_depth: u32,
    /// CPU use in thousandths (0..=1000).
    #[serde(default)]
    pub cpu_permille: u16,
    /// Memory use in thousandths (0..=1000).
    #[serde(default)]
    pub mem_permille: u16,
    /// The server's own p99 processing latency, ms (0..=3,600,000).
    #[serde(default)]
    pub latency_p99_ms: u32,
    /// The server is shutting down: send it no new records.
    #[serde(default)]
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the server sent it, ms since the Unix epoch (its clock),
    /// 0..=9223372036854775807.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
}

/// Why a capacity report was refused. [`ReportError::reason`] is the
/// metric label (`cdrs_capacity_reports_total{result="rejected",reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("invalid capacity report: {0}")]
    Invalid(String),
    /// At least this many bytes (the HTTP body is not read past the limit).
    #[error("report is over the limit of {MAX_REPORT_BYTES} bytes ({0} bytes or more)")]
    Oversized(usize),
    #[error("field {field:?}: {value} is out of range 0..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("field \"sent_at_ms\": {ahead_ms} ms in the future (more than the allowed clock skew of {max_ms} ms)")]
    FromTheFuture { ahead_ms: i64, max_ms: u64 },
    /// The target id a report is for (the HTTP path) is not a valid id.
    #[error("target id {0}")]
    InvalidId(String),
    #[error("field \"server_id\" is required on the capacity topic")]
    MissingServerId,
    #[error("field \"server_id\" is {0:?} but the path names {1:?}")]
    IdMismatch(String, String),
    #[error("unknown target {0:?}: not in [[targets]], and the report has no \"endpoint\" to register it by")]
    UnknownTarget(String),
    #[error("unknown target {id:?}: endpoint {endpoint:?} matches no pattern of capacity.allow_endpoints")]
    EndpointNotAllowed { id: String, endpoint: String },
    /// The target sent more reports than `capacity.max_reports_per_second`;
    /// this one was dropped before it touched phi or the target's state.
    #[error("target {id:?} sent more than capacity.max_reports_per_second ({max_per_second}) reports per second; report dropped")]
    RateLimited { id: String, max_per_second: u32 },
    /// `capacity.max_dynamic_targets` dynamic targets are present already.
    #[error("unknown target {id:?} may not join: capacity.max_dynamic_targets ({max}) dynamic targets are present; it may join when silent ones are removed")]
    TooManyTargets { id: String, max: usize },
    /// More joins than `capacity.max_joins_per_second` for the process.
    #[error("unknown target {id:?} may not join now: more than capacity.max_joins_per_second ({max_per_second}) joins per second; retry with a later report")]
    JoinRateLimited { id: String, max_per_second: u32 },
}

impl ReportError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::Invalid(_) => "invalid",
            ReportError::Oversized(_) => "oversized",
            ReportError::OutOfRange { .. } => "out_of_range",
            ReportError::FromTheFuture { .. } => "future_timestamp",
            ReportError::InvalidId(_) => "invalid_id",
            ReportError::MissingServerId => "missing_server_id",
            ReportError::IdMismatch(..) => "id_mismatch",
            ReportError::UnknownTarget(_) => "unknown_target",
            ReportError::EndpointNotAllowed { .. } => "endpoint_not_allowed",
            ReportError::RateLimited { .. } => "rate_limited",
            ReportError::TooManyTargets { .. } => "too_many_targets",
            ReportError::JoinRateLimited { .. } => "join_rate_limited",
        }
    }
}

/// What is wrong with a target id from a report, if anything: it must be
/// 1..=64 chars of `[A-Za-z0-9._-]`, as in `[[targets]]`. A long id is cut
/// in the message.
pub fn id_problem(id: &str) -> Option<String> {
    if valid_id(id) {
        return None;
    }
    let shown = if id.chars().count() > 64 {
        let cut: String = id.chars().take(64).collect();
        format!("{cut:?}… ({} bytes)", id.len())
    } else {
        format!("{id:?}")
    };
    Some(format!("{shown} is not 1..=64 chars of [A-Za-z0-9._-]"))
}

impl CapacityReport {
    /// A report of `capacity` with every other field at its default.
    pub fn new(capacity: u32) -> CapacityReport {
        CapacityReport {
            server_id: None,
            endpoint: None,
            capacity,
            inflight: 0,
            queue_depth: 0,
            cpu_permille: 0,
            mem_permille: 0,
            latency_p99_ms: 0,
            draining: false,
            zone: None,
            labels: BTreeMap::new(),
            sent_at_ms: None,
        }
    }

    /// Parses a report from JSON bytes (size, syntax, types, unknown fields).
    ///
    /// # Errors
    /// [`ReportError`]: too large, not JSON, a field of the wrong type, or an
    /// unknown field (named by its path).
    pub fn parse(bytes: &[u8]) -> Result<CapacityReport, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::Oversized(bytes.len()));
        }
        // The path names the field even when it is nested (`labels.zone`).
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let report = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ReportError::Invalid(if path == "." {
                inner.to_string()
            } else {
                format!("field \"{path}\": {inner}")
            })
        })?;
        // Trailing characters after the object, as `from_slice` refuses.
        de.end().map_err(|e| ReportError::Invalid(e.to_string()))?;
        Ok(report)
    }

    /// Checks ranges and the timestamp against `now_ms` (wall clock) with
    /// `max_skew_ms` of tolerance.
    ///
    /// # Errors
    /// [`ReportError`]: a value out of range (named), or a timestamp further
    /// than `max_skew_ms` in the future.
    pub fn validate(&self, now_ms: i64, max_skew_ms: u64) -> Result<(), ReportError> {
        let check = |field, value: u64, max: u64| {
            if value > max {
                Err(ReportError::OutOfRange { field, value, max })
            } else {
                Ok(())
            }
        };
        check("capacity", self.capacity.into(), MAX_CAPACITY.into())?;
        check("inflight", self.inflight.into(), MAX_CAPACITY.into())?;
        check("queue_depth", self.queue_depth.into(), 1_000_000_000)?;
        check("cpu_permille", self.cpu_permille.into(), 1000)?;
        check("mem_permille", self.mem_permille.into(), 1000)?;
        check("latency_p99_ms", self.latency_p99_ms.into(), 3_600_000)?;
        check("labels", self.labels.len() as u64, MAX_LABELS as u64)?;
        if let Some(sent) = self.sent_at_ms {
            if sent < 0 {
                return Err(ReportError::Invalid(format!(
                    "field \"sent_at_ms\": {sent} is out of range 0..={} (ms since the Unix epoch)",
                    i64::MAX
                )));
            }
            let ahead_ms = sent.saturating_sub(now_ms);
            if ahead_ms > i64::try_from(max_skew_ms).unwrap_or(i64::MAX) {
                return Err(ReportError::FromTheFuture {
                    ahead_ms,
                    max_ms: max_skew_ms,
                });
            }
        }
        if let Some(problem) = self.server_id.as_deref().and_then(id_problem) {
            return Err(ReportError::Invalid(format!(
                "field \"server_id\": {problem}"
            )));
        }
        if let Some(e) = &self.endpoint {
            match reqwest::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(ReportError::Invalid(format!(
                        "field \"endpoint\": {e:?} is not an http(s)://host:port/path URL"
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_bad_field_is_named_by_its_path() {
        let e = CapacityReport::parse(br#"{"capacity":1,"labels":{"pool":1}}"#).unwrap_err();
        assert!(e.to_string().contains("labels.pool"), "{e}");
        let e = CapacityReport::parse(br#"{"capacity":1} trailing"#).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
    }

    fn parse(json: &str) -> Result<CapacityReport, ReportError> {
        let r = CapacityReport::parse(json.as_bytes())?;
        r.validate(1_000_000, 30_000)?;
        Ok(r)
    }

    #[test]
    fn bad_reports_name_what_is_wrong() {
        let cases = [
            (r#"{"capacity": -1}"#, "invalid"),
            (r#"{"capacity": "10"}"#, "invalid"),
            (r#"{"capacity": 1, "colour": "red"}"#, "invalid"),
            (r#"not json"#, "invalid"),
            (r#"{"capacity": 20000000}"#, "out_of_range"),
            (r#"{"capacity": 1, "cpu_permille": 1001}"#, "out_of_range"),
            (
                r#"{"capacity": 1, "sent_at_ms": 99000000}"#,
                "future_timestamp",
            ),
            (r#"{"capacity": 1, "server_id": "bad id!"}"#, "invalid"),
            (r#"{"capacity": 1, "endpoint": "ftp://x/"}"#, "invalid"),
        ];
        for (json, reason) in cases {
            let e = parse(json).unwrap_err();
            assert_eq!(e.reason(), reason, "{json}: {e}");
        }
        let big = format!(r#"{{"capacity": 1, "zone": "{}"}}"#, "x".repeat(5000));
        assert_eq!(parse(&big).unwrap_err().reason(), "oversized");
        let e = parse(r#"{"capacity": 1, "colour": "red"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn sent_at_ms_extremes_are_judged_without_overflow() {
        let e = parse(r#"{"capacity": 1, "sent_at_ms": -9223372036854775808}"#).unwrap_err();
        assert_eq!(e.reason(), "invalid");
        assert_eq!(
            e.to_string(),
            "invalid capacity report: field \"sent_at_ms\": -9223372036854775808 is out of \
             range 0..=9223372036854775807 (ms since the Unix epoch)"
        );
        let e = parse(r#"{"capacity": 1, "sent_at_ms": 9223372036854775807}"#).unwrap_err();
        assert_eq!(e.reason(), "future_timestamp");
        let r = CapacityReport::parse(br#"{"capacity": 1, "sent_at_ms": 9223372036854775807}"#)
            .unwrap();
        r.validate(0, u64::MAX).unwrap();
        r.validate(i64::MIN, 0).unwrap_err();
    }

    #[test]
    fn ids_are_checked_and_long_ones_cut_in_messages() {
        assert_eq!(id_problem("blotter-1"), None);
        assert_eq!(
            id_problem("bad id!😀").unwrap(),
            "\"bad id!😀\" is not 1..=64 chars of [A-Za-z0-9._-]"
        );
        let long = id_problem(&"x".repeat(3000)).unwrap();
        assert!(long.len() < 140, "{long}");
        assert!(
            long.contains("… (3000 bytes) is not 1..=64 chars"),
            "{long}"
        );
    }

    #[test]
    fn the_published_json_schema_matches_this_struct() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../sdk/capacity-report.schema.json")).unwrap();
        let example = serde_json::to_vec(&schema["examples"][0]).unwrap();
        let r = CapacityReport::parse(&example).unwrap();
        r.validate(1_764_000_000_000, 30_000).unwrap();
        let documented: std::collections::BTreeSet<&String> =
            schema["properties"].as_object().unwrap().keys().collect();
        let full = serde_json::to_value(&r).unwrap();
        let fields: std::collections::BTreeSet<&String> =
            full.as_object().unwrap().keys().collect();
        assert_eq!(documented, fields, "schema properties vs struct fields");
    }

    #[test]
    fn a_full_report_parses() {
        let r = parse(
            r#"{"server_id":"blotter-9","endpoint":"http://127.0.0.1:9/records","capacity":400,
                "inflight":3,"queue_depth":1,"cpu_permille":350,"mem_permille":200,"latency_p99_ms":12,
                "draining":false,"zone":"a","labels":{"pool":"x"},"sent_at_ms":999000}"#,
        )
        .unwrap();
        assert_eq!(r.server_id.as_deref(), Some("blotter-9"));
        assert_eq!(r.labels["pool"], "x");
    }
}
