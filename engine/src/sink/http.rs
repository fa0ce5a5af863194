//! HTTP sink: one POST per batch of records for one target.
//!
//! Body (`application/json`): `{"records": [WireRecord, ...]}` in offset order.
//! Bytes that are valid UTF-8 travel as strings (`key`, `value`, header
//! `value`), others base64-encoded (RFC 4648, standard alphabet) in the `*_b64`
//! field. Each record carries `id` = `topic/partition/offset` so servers can
//! de-duplicate redeliveries (delivery is at-least-once). The target must
//! answer 2xx once it has taken the whole batch; anything else (refused
//! connection, timeout, other status) fails the batch.

use crate::config::DeliveryConfig;
use crate::record::Record;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    },
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
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(200);
        Err(DeliveryError::Status {
            url: url.into(),
            status: status.as_u16(),
            body,
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
    }
}
