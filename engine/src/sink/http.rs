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
use crate::tls::Clients;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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
        let id = r.id();
        WireRecord {
            id: id.clone(),
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
                    value: Some(id),
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
    /// The TLS handshake failed; `cause` says why in an operator's words
    /// ([`crate::tls::handshake_failure`]).
    #[error("TLS handshake with target {target:?} ({url}) failed: {cause}")]
    Tls {
        target: String,
        url: String,
        cause: String,
    },
    #[error("{url} timed out after {ms} ms")]
    Timeout { url: String, ms: u64 },
    /// Some records of the batch can never be written by this sink (a
    /// Kafka producer's `message.max.bytes`, an invalid record); the others
    /// were delivered. `records`: (index in the batch, why).
    #[error("{url} rejected {} record(s): {}", records.len(), records.first().map_or("", |r| r.1.as_str()))]
    Rejected {
        url: String,
        records: Vec<(usize, String)>,
    },
    /// An `sse://` target's stream has no subscriber connected; nothing
    /// was delivered (see [`crate::sink::sse`]).
    #[error("no subscriber connected to stream {stream:?}")]
    NoSubscriber { stream: String },
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
    /// the request as such; 3xx: redirects are not followed) are not
    /// retried; the records are routed again.
    pub fn retryable(&self) -> bool {
        match self {
            DeliveryError::Request { .. }
            | DeliveryError::Tls { .. }
            | DeliveryError::Timeout { .. } => true,
            DeliveryError::Rejected { .. } | DeliveryError::NoSubscriber { .. } => false,
            DeliveryError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
        }
    }

    /// The HTTP status the target answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The kind of failure as OpenTelemetry's `error.type`: the status code
    /// for an answer, else `timeout`, `tls`, `request`, `rejected` or
    /// `no_subscriber`.
    pub fn kind(&self) -> String {
        match self {
            DeliveryError::Status { status, .. } => status.to_string(),
            DeliveryError::Timeout { .. } => "timeout".into(),
            DeliveryError::Tls { .. } => "tls".into(),
            DeliveryError::Request { .. } => "request".into(),
            DeliveryError::Rejected { .. } => "rejected".into(),
            DeliveryError::NoSubscriber { .. } => "no_subscriber".into(),
        }
    }

    /// Whether the target answered with a redirect (3xx), which CDRS does
    /// not follow.
    pub fn is_redirect(&self) -> bool {
        matches!(
            self,
            DeliveryError::Status {
                status: 300..=399,
                ..
            }
        )
    }

    /// Whether the target could not be reached at all (refused connection,
    /// DNS, failed TLS handshake): it is marked down at once instead of
    /// retried.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            DeliveryError::Request { .. } | DeliveryError::Tls { .. }
        )
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
            DeliveryError::Tls { .. } => "tls".into(),
            DeliveryError::Rejected { .. } => "rejected".into(),
            DeliveryError::NoSubscriber { .. } => "no_subscriber".into(),
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

/// The HTTP sink: keep-alive clients per TLS setting ([`Clients`]),
/// shared with the health checks and replaced on reload.
#[derive(Clone)]
pub struct HttpSink {
    pub clients: Arc<ArcSwap<Clients>>,
    timeout_ms: u64,
}

impl HttpSink {
    /// A sink over `clients` (built from the same `[delivery]`).
    pub fn new(cfg: &DeliveryConfig, clients: Arc<ArcSwap<Clients>>) -> HttpSink {
        HttpSink {
            clients,
            timeout_ms: cfg.timeout_ms,
        }
    }

    /// A sink with its own clients for `cfg` and no per-target TLS.
    ///
    /// # Errors
    /// A `[delivery.tls]` file cannot be used.
    pub fn standalone(cfg: &DeliveryConfig) -> Result<HttpSink, crate::tls::TlsError> {
        let clients = Clients::new(cfg, &[], None)?;
        Ok(HttpSink::new(cfg, Arc::new(ArcSwap::from_pointee(clients))))
    }

    /// POSTs `records` to `url` of target `target`; Ok only on a 2xx answer.
    ///
    /// # Errors
    /// [`DeliveryError`]: the request failed (connection, TLS handshake,
    /// timeout), or the server answered other than 2xx (its status,
    /// `Retry-After` and the start of its body).
    pub async fn post(
        &self,
        target: &str,
        url: &str,
        records: &[&Record],
    ) -> Result<(), DeliveryError> {
        self.post_traced(target, url, records, None).await
    }

    /// [`HttpSink::post`] with a W3C `traceparent` request header (the
    /// first traced record's, see [`crate::telemetry`]).
    ///
    /// # Errors
    /// As [`HttpSink::post`].
    pub async fn post_traced(
        &self,
        target: &str,
        url: &str,
        records: &[&Record],
        traceparent: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let body = WireBatch {
            records: records.iter().map(|r| WireRecord::from_record(r)).collect(),
        };
        let clients = self.clients.load_full();
        let mut request = clients.client(target).post(url).json(&body);
        if let Some(tp) = traceparent {
            request = request.header(crate::telemetry::TRACEPARENT, tp);
        }
        let sent = request.send().await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // Error texts travel to logs, `GET /v1/targets` and
                // dead-letter headers: never with the URL's credentials.
                let shown = crate::redact::url(url).into_owned();
                if e.is_timeout() {
                    return Err(DeliveryError::Timeout {
                        url: shown,
                        ms: self.timeout_ms,
                    });
                }
                let cause = match crate::tls::handshake_failure(&e) {
                    Some(cause) => Some(cause),
                    None => clients.diagnose(target, url).await,
                };
                return Err(match cause {
                    Some(cause) => DeliveryError::Tls {
                        target: target.into(),
                        url: shown,
                        cause,
                    },
                    None => DeliveryError::Request {
                        url: shown,
                        msg: crate::redact::error_chain(&e.without_url()),
                    },
                });
            }
        };
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
        let body = error_excerpt(resp).await;
        Err(DeliveryError::Status {
            url: crate::redact::url(url).into_owned(),
            status: status.as_u16(),
            body,
            retry_after,
        })
    }
}

/// Bytes of an error answer's body kept for the error message.
const ERROR_EXCERPT_BYTES: usize = 200;

/// Bytes of an error answer's body read at most: a small body is read to
/// its end so the connection can be reused; a larger one is not held in
/// memory (the connection is closed instead).
const ERROR_BODY_READ_BYTES: usize = 64 * 1024;

/// The start of an error answer's body as text: at most
/// [`ERROR_EXCERPT_BYTES`], cut at a character boundary (bytes that are not
/// UTF-8 shown as U+FFFD).
async fn error_excerpt(mut resp: reqwest::Response) -> String {
    let mut head = Vec::with_capacity(ERROR_EXCERPT_BYTES);
    let mut read = 0;
    while read < ERROR_BODY_READ_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = ERROR_EXCERPT_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&chunk[..room.min(chunk.len())]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut text = String::from_utf8_lossy(&head).into_owned();
    // A character cut by the byte limit became U+FFFD (3 bytes): trim to
    // the limit again, at a boundary.
    let mut end = text.len().min(ERROR_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_status_and_kind_for_the_request_span() {
        let answered = DeliveryError::Status {
            url: "u".into(),
            status: 503,
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(
            (answered.status(), answered.kind().as_str()),
            (Some(503), "503")
        );
        let timeout = DeliveryError::Timeout {
            url: "u".into(),
            ms: 1,
        };
        assert_eq!(
            (timeout.status(), timeout.kind().as_str()),
            (None, "timeout")
        );
        let refused = DeliveryError::Request {
            url: "u".into(),
            msg: "refused".into(),
        };
        assert_eq!(refused.kind(), "request");
    }

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
        for s in [301, 302, 307, 400, 401, 404, 413] {
            assert!(!status(s).retryable(), "{s}");
        }
        let refused = DeliveryError::Request {
            url: "u".into(),
            msg: "refused".into(),
        };
        assert!(refused.retryable() && refused.unreachable());
    }

    /// An app server on 127.0.0.1 that answers every request with `status`
    /// and `body` (HTTP/1.1, then closes).
    async fn answering(status: &'static str, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/records", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut req = vec![0u8; 64 * 1024];
                    let _ = conn.read(&mut req).await;
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        url
    }

    /// POSTs one small record to `url` with the default settings.
    async fn post_one(url: &str) -> Result<(), DeliveryError> {
        let sink = HttpSink::standalone(&DeliveryConfig::default()).unwrap();
        let r = Record {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: None,
            value: Some(b"{}".to_vec()),
            headers: vec![],
        };
        sink.post("t", url, &[&r]).await
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_nor_taken_for_delivery() {
        let url = answering(
            "302 Found\r\nlocation: http://127.0.0.1:9/elsewhere",
            vec![],
        )
        .await;
        match post_one(&url).await {
            Err(e @ DeliveryError::Status { status: 302, .. }) => {
                assert!(!e.retryable() && e.is_redirect())
            }
            other => panic!("expected the 302 itself, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_error_body_is_cut_at_a_character_boundary_and_not_held_whole() {
        // 199 ASCII bytes, then a 2-byte character across the 200-byte
        // cut, then 1 MiB: the cut must land on a character boundary and
        // keep at most 200 bytes.
        let mut body = vec![b'a'; 199];
        body.extend_from_slice("é".as_bytes());
        body.extend(std::iter::repeat_n(b'b', 1 << 20));
        let url = answering("500 Internal Server Error", body).await;
        match post_one(&url).await {
            Err(DeliveryError::Status { status, body, .. }) => {
                assert_eq!(status, 500);
                assert!(body.len() <= ERROR_EXCERPT_BYTES, "{}", body.len());
                assert!(body.starts_with(&"a".repeat(199)), "{body}");
            }
            other => panic!("expected a 500, got {other:?}"),
        }
    }
}
