//! Every conversion between rdkafka types, WIT binding types and the host's
//! own types, in one place.

use crate::capacity::{Health, TargetView};
use crate::plugin::bindings::types as wit;
use crate::record::Record;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::sync::Arc;

/// An rdkafka message as an owned [`Record`]; `topic` is shared per partition.
pub fn record_from_kafka(m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Record {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: topic.clone(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Encodes records of one partition as the contract's flat `batch`: one
/// `data` buffer with every key, value and header, spans into it per record.
/// `headers` picks the headers to pass (all for filters; the ones a router
/// asked for); `values` whether payloads are passed.
///
/// Lowering this shape costs three copies per call whatever the batch size,
/// instead of one guest allocation per key, value and header.
pub fn batch(
    topic: &str,
    partition: i32,
    records: &[&Record],
    headers: HeaderSelection<'_>,
    values: bool,
) -> wit::Batch {
    let bytes: usize = records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, Vec::len)
                + if values {
                    r.value.as_ref().map_or(0, Vec::len)
                } else {
                    0
                }
        })
        .sum();
    let mut b = wit::Batch {
        topic: topic.to_string(),
        partition,
        messages: Vec::with_capacity(records.len()),
        headers: Vec::new(),
        data: Vec::with_capacity(bytes),
    };
    for r in records {
        let first = b.headers.len() as u32;
        for (k, v) in &r.headers {
            if headers.passes(k) {
                let key = append(&mut b.data, k.as_bytes());
                let value = v.as_deref().map(|v| append(&mut b.data, v));
                b.headers.push(wit::HeaderSpan { key, value });
            }
        }
        let key = r.key.as_deref().map(|k| append(&mut b.data, k));
        let value = match &r.value {
            Some(v) if values => Some(append(&mut b.data, v)),
            _ => None,
        };
        b.messages.push(wit::Message {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key,
            value,
            headers: wit::Span {
                start: first,
                len: b.headers.len() as u32 - first,
            },
        });
    }
    b
}

/// Which record headers go into a batch.
#[derive(Clone, Copy)]
pub enum HeaderSelection<'a> {
    All,
    /// Exact, case-sensitive keys.
    Only(&'a [String]),
}

impl HeaderSelection<'_> {
    fn passes(&self, key: &str) -> bool {
        match self {
            HeaderSelection::All => true,
            HeaderSelection::Only(keys) => keys.iter().any(|k| k == key),
        }
    }
}

fn append(data: &mut Vec<u8>, bytes: &[u8]) -> wit::Span {
    let start = data.len() as u32;
    data.extend_from_slice(bytes);
    wit::Span {
        start,
        len: bytes.len() as u32,
    }
}

/// Applies a filter's `transform` verdict: key, value and headers replaced.
pub fn apply_rewrite(r: &mut Record, rw: wit::Rewrite) {
    r.key = rw.key;
    r.value = rw.value;
    r.headers = rw.headers.into_iter().map(|h| (h.key, h.value)).collect();
}

/// Bytes of a rewrite (key, value, header keys and values).
pub fn rewrite_bytes(rw: &wit::Rewrite) -> usize {
    rw.key.as_ref().map_or(0, Vec::len)
        + rw.value.as_ref().map_or(0, Vec::len)
        + rw.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// A snapshot target as the WIT `target` record.
pub fn wit_target(t: &TargetView) -> wit::Target {
    wit::Target {
        id: t.id.to_string(),
        zone: t.zone.clone(),
        labels: t.labels.clone(),
        weight: t.weight,
        capacity: t.capacity,
        inflight: t.inflight,
        queue_depth: t.queue_depth,
        cpu_permille: t.cpu_permille,
        latency_ewma_us: t.latency_ewma_us,
        error_rate_permille: t.error_rate_permille,
        health: match t.health {
            Health::Healthy => wit::Health::Healthy,
            Health::Degraded => wit::Health::Degraded,
            Health::Down => wit::Health::Down,
        },
        report_age_ms: t
            .report_age_ms
            .map_or(u32::MAX, |a| a.min(u32::MAX as u64 - 1) as u32),
    }
}
