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

fn wit_headers<'a>(hs: impl Iterator<Item = &'a (String, Option<Vec<u8>>)>) -> Vec<wit::Header> {
    hs.map(|(k, v)| wit::Header {
        key: k.clone(),
        value: v.clone(),
    })
    .collect()
}

/// The records of one partition as a filter batch.
pub fn filter_batch(topic: &str, partition: i32, records: &[&Record]) -> wit::FilterBatch {
    wit::FilterBatch {
        topic: topic.to_string(),
        partition,
        messages: records
            .iter()
            .map(|r| wit::Message {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: wit_headers(r.headers.iter()),
            })
            .collect(),
    }
}

/// Applies a filter's `transform` verdict: key, value and headers replaced.
pub fn apply_rewrite(r: &mut Record, rw: wit::Rewrite) {
    r.key = rw.key;
    r.value = rw.value;
    r.headers = rw.headers.into_iter().map(|h| (h.key, h.value)).collect();
}

/// The slim view a router asked for in its `router-options`.
pub fn route_batch(
    topic: &str,
    partition: i32,
    records: &[&Record],
    options: &wit::RouterOptions,
) -> wit::RouteBatch {
    wit::RouteBatch {
        topic: topic.to_string(),
        partition,
        records: records
            .iter()
            .map(|r| wit::RouteInput {
                offset: r.offset,
                key: r.key.clone(),
                headers: if options.headers.is_empty() {
                    Vec::new()
                } else {
                    wit_headers(
                        r.headers
                            .iter()
                            .filter(|(k, _)| options.headers.contains(k)),
                    )
                },
                value: if options.needs_value {
                    r.value.clone()
                } else {
                    None
                },
            })
            .collect(),
    }
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
