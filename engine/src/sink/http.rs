//! HTTP sink: one POST per batch of records for one target.
//!
//! Body (`application/json`): `{"records": [WireRecord, ...]}` in offset order.
//! Bytes that are valid UTF-8 travel as strings (`key`, `value`, header
//! `value`), others base64-encoded (RFC 4648, standard alphabet) in the `*_b64`
//! field. Each record carries `id` = `topic/partition/offset` so servers can
//! de-duplicate redeliveries (delivery is at-least-once); the same key is
//! also the record's last header, [`IDEMPOTENCY_HEADER`]. The target must
//! answer 2xx once it has taken the whole batch; anything else (refused
//! connection, timeout, other status) fails the batch. Which failures are
//! worth a retry is [`DeliveryError::retryable`]; `Retry-After` (RFC 9110
//! §10.2.3, seconds or HTTP date) on 429/503 is read into the error.

use crate::config::DeliveryConfig;
use crate::record::Record;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Header carrying `topic/partition/offset` on every delivered record (HTTP
/// and Kafka sinks), so app servers can de-duplicate redeliveries.
pub const IDEMPOTENCY_HEADER: &str = "cdrs-idempotency-key";

/// One record on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// `topic/partition/offset`: idempotency key.
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WireHeader>,
}

/// One header on the wire; both values absent for a null header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHeader {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
}

/// The POST body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBatch {
    pub records: Vec<WireRecord>,
}

fn encode(bytes: &Option<Vec<u8>>) -> (Option<String>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(B64.encode(b))),
        },
    }
}

fn decode(text: &Option<String>, b64: &Option<String>) -> Option<Vec<u8>> {
    match (text, b64) {
        (Some(t), _) => Some(t.clone().into_bytes()),
        (None, Some(b)) => B64.decode(b).ok(),
        (None, None) => None,
    }
}

impl WireHeader {
    /// The header value bytes, decoded (none for a null header).
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        decode(&self.value, &self.value_b64)
    }
}

impl WireRecord {
    /// The wire form of `r`.
    pub fn from_record(r: &Record) -> WireRecord {
        let (key, key_b64) = encode(&r.key);
        let (value, value_b64) = encode(&r.value);
        WireRecord {
            id: r.id(),
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key,
            key_b64,
            value,
            value_b64,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    let (value, value_b64) = encode(v);
                    WireHeader {
                        key: k.clone(),
                        value,
                        value_b64,
                    }
                })
                .chain(std::iter::once(WireHeader {
                    key: IDEMPOTENCY_HEADER.into(),
                    value: Some(r.id()),
                    value_b64: None,
                }))
                .collect(),
        }
    }

    /// The key bytes, decoded.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        decode(&self.key, &self.key_b64)
    }

    /// The value bytes, decoded.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        decode(&self.value, &self.value_b64)
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("request to {url} failed: {msg}")]
    Request { url: String, msg: String },
    #[error("{url} timed out after {ms} ms")]
    Timeout { url: String, ms: u64 },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
        /// `Retry-After` of a 429 or 503 answer.
        retry_after: Option<Duration>,
    },
}

impl DeliveryError {
    /// Whether trying the same target again may help: connection errors,
    /// timeouts, 408, 429 and 5xx. Other statuses (4xx: the target refuses
    /// the request as such) are not retried; the records are routed again.
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Request { .. } | DeliveryError::Timeout { .. } => true,
            DeliveryError::Status { status, .. } => {
                matches!(status, 408 | 429) || *status >= 500 || *status < 400
            }
        }
    }

    /// Whether the target could not be reached at all (refused connection,
    /// DNS): it is marked down at once instead of retried.
    pub fn unreachable(&self) -> bool {
        matches!(self, DeliveryError::Request { .. })
    }

    /// How long the target asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics: `unreachable`, `timeout` or the status.
    pub fn label(&self) -> String {
        match self {
            DeliveryError::Request { .. } => "unreachable".into(),
            DeliveryError::Timeout { .. } => "timeout".into(),
            DeliveryError::Status { status, .. } => status.to_string(),
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The HTTP sink: a shared keep-alive client.
#[derive(Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    timeout_ms: u64,
}

impl HttpSink {
    pub fn new(cfg: &DeliveryConfig) -> anyhow::Result<HttpSink> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(2_000)))
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(HttpSink {
            client,
            timeout_ms: cfg.timeout_ms,
        })
    }

    /// POSTs `records` to `url`; Ok only on a 2xx answer.
    pub async fn post(&self, url: &str, records: &[&Record]) -> Result<(), DeliveryError> {
        let body = WireBatch {
            records: records.iter().map(|r| WireRecord::from_record(r)).collect(),
        };
        let resp = self
            .client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    DeliveryError::Timeout {
                        url: url.into(),
                        ms: self.timeout_ms,
                    }
                } else {
                    DeliveryError::Request {
                        url: url.into(),
                        msg: error_chain(&e),
                    }
                }
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = if matches!(status.as_u16(), 429 | 503) {
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(200);
        Err(DeliveryError::Status {
            url: url.into(),
            status: status.as_u16(),
            body,
            retry_after,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_travels_as_text_and_binary_as_base64() {
        let r = Record {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: Some(1),
            key: Some(b"client-1".to_vec()),
            value: Some(vec![0xff, 0x00]),
            headers: vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
        };
        let w = WireRecord::from_record(&r);
        assert_eq!(w.id, "t/2/7");
        assert_eq!(w.key.as_deref(), Some("client-1"));
        assert_eq!(w.value_b64.as_deref(), Some("/wA="));
        assert_eq!(w.value_bytes(), Some(vec![0xff, 0x00]));
        let back: WireRecord = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.headers[1].value, None);
        assert_eq!(back.headers[2].key, IDEMPOTENCY_HEADER);
        assert_eq!(back.headers[2].value.as_deref(), Some("t/2/7"));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn which_failures_are_retried() {
        let status = |s| DeliveryError::Status {
            url: "u".into(),
            status: s,
            body: String::new(),
            retry_after: None,
        };
        for s in [408, 429, 500, 503] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 404, 413] {
            assert!(!status(s).retryable(), "{s}");
        }
        let refused = DeliveryError::Request {
            url: "u".into(),
            msg: "refused".into(),
        };
        assert!(refused.retryable() && refused.unreachable());
    }
}
