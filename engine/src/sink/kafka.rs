//! Kafka sink for dead letters: each record is produced to the dead-letter
//! topic with its original key and value byte for byte, its original headers,
//! and `cdrs-*` headers saying why.
//!
//! Headers added: `cdrs-dlq-reason`, `cdrs-dlq-stage` (filter | router |
//! delivery), `cdrs-dlq-plugin` (name) and `cdrs-dlq-plugin-version` (sha256)
//! when a plugin decided, `cdrs-original-topic`, `cdrs-original-partition`,
//! `cdrs-original-offset`, `cdrs-original-timestamp-ms` when known.

use crate::record::Record;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where and why a record is dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub stage: &'static str,
    pub plugin: Option<(&'a str, &'a str)>,
    pub reason: &'a str,
}

/// The dead-letter producer.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterSink {
    /// A producer for `topic` on `brokers`; `options` are raw librdkafka
    /// settings (the `[kafka.options]` table), filtered to producer ones.
    pub fn new(
        brokers: &str,
        topic: &str,
        options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        for (k, v) in options {
            if !is_consumer_only(k) {
                cfg.set(k, v);
            }
        }
        Ok(DeadLetterSink {
            producer: cfg.create()?,
            topic: topic.into(),
        })
    }

    /// Produces the dead letter and waits for the broker's ack.
    pub async fn send(&self, r: &Record, why: &DeadLetter<'_>) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 8);
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let ts = r.timestamp_ms.map(|t| t.to_string());
        let mut add = |k: &str, v: &str| {
            headers = std::mem::take(&mut headers).insert(Header {
                key: k,
                value: Some(v),
            });
        };
        add("cdrs-dlq-reason", why.reason);
        add("cdrs-dlq-stage", why.stage);
        if let Some((name, version)) = why.plugin {
            add("cdrs-dlq-plugin", name);
            add("cdrs-dlq-plugin-version", version);
        }
        add("cdrs-original-topic", &r.topic);
        add("cdrs-original-partition", &partition);
        add("cdrs-original-offset", &offset);
        if let Some(ts) = &ts {
            add("cdrs-original-timestamp-ms", ts);
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// librdkafka consumer-only properties, which a producer warns about.
pub fn is_consumer_only(key: &str) -> bool {
    key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("max.poll.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || key.starts_with("partition.assignment")
        || key.starts_with("fetch.")
        || key.starts_with("group.")
        || key.starts_with("isolation.")
}
