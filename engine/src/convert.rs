//! Every conversion between rdkafka types, WIT binding types and the host's
//! own types, in one place.

use crate::capacity::{Health, TargetView};
use crate::plugin::bindings::types as wit;
use crate::record::Record;
use cdrs_plugin_sdk::layout::Tables;
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

/// Encodes records of one partition as the contract's packed `batch`
/// (layout in `sdk/wit/plugin.wit`, written by the SDK's `layout::Tables`)
/// into `out`, reusing its buffers: a plugin instance keeps one `wit::Batch`,
/// so once its buffers have grown to the batch size a call allocates
/// nothing here. `headers` picks the headers to pass (all for filters; the
/// ones a router asked for); `values` whether payloads are passed.
///
/// Lowering this shape costs four copies per call whatever the batch size;
/// a `list<record>` would cost a store per field per record.
pub fn batch_into(
    out: &mut wit::Batch,
    topic: &str,
    partition: i32,
    records: &[&Record],
    headers: HeaderSelection<'_>,
    values: bool,
) {
    if out.topic != topic {
        out.topic.clear();
        out.topic.push_str(topic);
    }
    out.partition = partition;
    let mut t = Tables {
        count: 0,
        records: std::mem::take(&mut out.records),
        headers: std::mem::take(&mut out.headers),
        data: std::mem::take(&mut out.data),
    };
    for buf in [&mut t.records, &mut t.headers, &mut t.data] {
        // A batch of large records does not pin its memory per instance.
        if buf.capacity() > KEEP_BATCH_BYTES {
            *buf = Vec::new();
        }
        buf.clear();
    }
    for r in records {
        t.push(
            r.offset,
            r.timestamp_ms,
            r.key.as_deref(),
            if values { r.value.as_deref() } else { None },
            r.headers
                .iter()
                .filter(|(k, _)| headers.passes(k))
                .map(|(k, v)| (k.as_str(), v.as_deref())),
        );
    }
    out.count = t.count;
    out.records = t.records;
    out.headers = t.headers;
    out.data = t.data;
}

/// Buffer capacity a plugin instance keeps between calls, bytes (4 MiB:
/// a batch of 1,024 records of 4 KiB). Larger buffers are dropped after
/// use, so an instance's host memory stays bounded.
pub const KEEP_BATCH_BYTES: usize = 4 << 20;

/// An empty batch, to be filled by [`batch_into`].
pub fn empty_batch() -> wit::Batch {
    wit::Batch {
        topic: String::new(),
        partition: 0,
        count: 0,
        records: Vec::new(),
        headers: Vec::new(),
        data: Vec::new(),
    }
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
