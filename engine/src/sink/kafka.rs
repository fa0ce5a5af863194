//! Kafka sinks, both with an idempotent producer (`enable.idempotence=true`,
//! `acks=all`, so librdkafka's own retries never duplicate or reorder):
//!
//! * [`TargetProducer`]: targets whose URL is `kafka://TOPIC` get their
//!   records produced to `TOPIC` on the cluster of `kafka.brokers`, key,
//!   value and headers byte for byte, plus the `cdrs-idempotency-key` header.
//! * [`DeadLetterSink`]: each dead record is produced to the dead-letter
//!   topic with its original key and value byte for byte, its original
//!   headers, and `cdrs-*` headers saying why: `cdrs-dlq-reason`,
//!   `cdrs-dlq-stage` (filter | router | delivery), `cdrs-dlq-plugin` (name)
//!   and `cdrs-dlq-plugin-version` (sha256) when a plugin decided,
//!   `cdrs-dlq-attempts` (delivery attempts made), `cdrs-original-topic`,
//!   `cdrs-original-partition`, `cdrs-original-offset`,
//!   `cdrs-original-timestamp-ms` when known. A record larger than the
//!   dead-letter producer's `message.max.bytes` is written without its
//!   value and headers, with `cdrs-dlq-omitted` saying so.
//!
//! A record the producer refuses as it is handed over (larger than
//! `message.max.bytes`, invalid) is not retried: the rest of its batch is
//! delivered and it is dead-lettered ([`DeliveryError::Rejected`]). A
//! topic whose `max.message.bytes` is smaller than that makes the broker
//! refuse whole produce requests, which fail like any other error: keep
//! `message.max.bytes` at or below the topics' limit.

use crate::record::Record;
use crate::sink::http::{DeliveryError, IDEMPOTENCY_HEADER};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Where and why a record is dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub stage: &'static str,
    pub plugin: Option<(&'a str, &'a str)>,
    pub reason: &'a str,
    /// Delivery attempts made before giving up (0: none).
    pub attempts: u32,
}

/// The Kafka sink of `kafka://` targets.
///
/// One acknowledgement per batch, not one future per record: every record of
/// a batch carries the same [`BatchAck`] as its delivery opaque, librdkafka's
/// delivery callback (on the producer's polling thread) counts it down, and
/// the lane wakes once, when the last record of its batch is acked. With a
/// future per record, each ack woke a task (a futex wake and a context switch
/// on 2 cores).
pub struct TargetProducer {
    producer: ThreadedProducer<AckContext>,
}

/// Counts the acks of one batch down; the first error wins.
struct BatchAck {
    pending: AtomicUsize,
    error: Mutex<Option<String>>,
    done: Notify,
}

impl BatchAck {
    fn ack(&self, error: Option<String>) {
        if let Some(e) = error {
            self.error.lock().expect("ack lock").get_or_insert(e);
        }
        self.count_down(1);
    }

    fn count_down(&self, n: usize) {
        if n > 0 && self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_one();
        }
    }
}

/// Errors that no retry, at this target or another `kafka://` one, can
/// fix when librdkafka returns them for one record as it is handed over:
/// the record is larger than the producer's `message.max.bytes`, or
/// invalid. The same codes from the broker (a topic's smaller
/// `max.message.bytes`) refuse a whole produce request, innocent records
/// with it, so they fail the batch like any other error instead.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// Why the producer refused `r` for good, for the dead letter.
fn refusal(e: &KafkaError, r: &Record) -> String {
    let too_large = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    );
    if too_large {
        let bytes = record_bytes(r);
        format!(
            "record of ~{bytes} bytes is larger than the Kafka producer's message.max.bytes \
             ([kafka.options]): {e}"
        )
    } else {
        format!("the Kafka producer refused the record: {e}")
    }
}

/// Key, value and header bytes of `r` (librdkafka adds some framing).
fn record_bytes(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Vec::len)
        + r.value.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<BatchAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<BatchAck>) {
        ack.ack(result.as_ref().err().map(|(e, _)| e.to_string()));
    }
}

impl TargetProducer {
    /// An idempotent producer on `brokers` (`options`: `[kafka.options]`).
    ///
    /// # Errors
    /// librdkafka refuses the settings.
    pub fn new(brokers: &str, options: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        Ok(TargetProducer {
            producer: crate::kafka::producer_config(brokers, options)
                .create_with_context(AckContext)?,
        })
    }

    /// Connects to the cluster and loads the metadata of `topics` (at most
    /// `timeout` each), so the first records do not wait for it: in
    /// `cdrs bench` on Tansu the first delivery otherwise waited ~0.4 s.
    ///
    /// Errors: the first topic whose metadata could not be fetched.
    pub fn warm_up(&self, topics: &[String], timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        for t in topics {
            self.producer.client().fetch_metadata(Some(t), timeout)?;
        }
        Ok(())
    }

    /// Produces `records` to the topic of `url` and waits for every ack
    /// (at most `timeout`). Any failure fails the whole batch (the records
    /// that did land are sent again: at-least-once, de-duplicated by the
    /// idempotency header), except records that can never be produced (too
    /// large, invalid: see [`permanent`]): the others are delivered and
    /// those come back as [`DeliveryError::Rejected`].
    pub async fn send(
        &self,
        url: &str,
        records: &[&Record],
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        let fail = |msg: String| DeliveryError::Request {
            url: url.into(),
            msg,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let topic = crate::config::target_topic(url).unwrap_or_default();
        let ack = Arc::new(BatchAck {
            pending: AtomicUsize::new(records.len()),
            error: Mutex::new(None),
            done: Notify::new(),
        });
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut id = String::new();
        for (i, r) in records.iter().enumerate() {
            r.write_id(&mut id);
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: IDEMPOTENCY_HEADER,
                value: Some(&id),
            });
            let mut rec: BaseRecord<'_, [u8], [u8], Arc<BatchAck>> =
                BaseRecord::with_opaque_to(topic, ack.clone()).headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_slice());
            }
            if let Some(ts) = r.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            // The local queue is full (`queue.buffering.max.*`): wait for
            // acks to drain it, up to the deadline.
            while let Err((e, back)) = self.producer.send(rec) {
                if permanent(&e) {
                    // librdkafka checks `message.max.bytes` before queueing.
                    refused.push((i, refusal(&e, r)));
                    ack.count_down(1);
                    break;
                }
                let full = matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                );
                if !full || tokio::time::Instant::now() >= deadline {
                    // Records never handed over will not be acked.
                    ack.count_down(records.len() - i);
                    let _ = tokio::time::timeout_at(deadline, wait_acked(&ack)).await;
                    return Err(fail(e.to_string()));
                }
                rec = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
        }
        if tokio::time::timeout_at(deadline, wait_acked(&ack))
            .await
            .is_err()
        {
            return Err(fail(format!(
                "{} of {} records not acknowledged within {} ms",
                ack.pending.load(Ordering::Acquire),
                records.len(),
                timeout.as_millis()
            )));
        }
        let error = ack.error.lock().expect("ack lock").take();
        if let Some(e) = error {
            return Err(fail(e));
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(DeliveryError::Rejected {
                url: url.into(),
                records: refused,
            })
        }
    }
}

/// How long a send waits before retrying when librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

async fn wait_acked(ack: &BatchAck) {
    loop {
        let notified = ack.done.notified();
        if ack.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

/// The dead-letter producer.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    /// The producer's `message.max.bytes`: larger records are written as
    /// stubs.
    max_message_bytes: usize,
}

impl DeadLetterSink {
    /// A producer for `topic` on `brokers`; `options` are raw librdkafka
    /// settings (the `[kafka.options]` table), filtered to producer ones.
    ///
    /// # Errors
    /// librdkafka refuses the settings.
    pub fn new(
        brokers: &str,
        topic: &str,
        options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        Ok(DeadLetterSink {
            producer: crate::kafka::producer_config(brokers, options).create()?,
            topic: topic.into(),
            max_message_bytes: options
                .get("message.max.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        })
    }

    /// Produces the dead letter and waits for the broker's ack. A record
    /// larger than the producer's `message.max.bytes` is dead-lettered
    /// without its value and headers, with a `cdrs-dlq-omitted` header
    /// saying so, rather than retried forever.
    ///
    /// # Errors
    /// The broker did not acknowledge the record within the producer's
    /// `message.timeout.ms`, or refused it.
    pub async fn send(&self, r: &Record, why: &DeadLetter<'_>) -> Result<(), KafkaError> {
        // Only a record that is itself too large: the broker's size error
        // refuses whole produce requests, other dead letters with it.
        match self.produce(r, why, false).await {
            Err(e) if permanent(&e) && record_bytes(r) >= self.max_message_bytes => {
                tracing::warn!(record = %r.id(), error = %e,
                    "dead letter refused as too large; writing it without value and headers");
                self.produce(r, why, true).await
            }
            result => result,
        }
    }

    async fn produce(
        &self,
        r: &Record,
        why: &DeadLetter<'_>,
        stub: bool,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 9);
        if !stub {
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
        }
        let omitted = format!(
            "value ({} bytes) and headers ({}) left out: the record is larger than \
             the producer's message.max.bytes",
            r.value.as_ref().map_or(0, Vec::len),
            r.headers.len()
        );
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let ts = r.timestamp_ms.map(|t| t.to_string());
        let attempts = why.attempts.to_string();
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
        if why.attempts > 0 {
            add("cdrs-dlq-attempts", &attempts);
        }
        add("cdrs-original-topic", &r.topic);
        add("cdrs-original-partition", &partition);
        add("cdrs-original-offset", &offset);
        if let Some(ts) = &ts {
            add("cdrs-original-timestamp-ms", ts);
        }
        if stub {
            add("cdrs-dlq-omitted", &omitted);
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &r.key {
            // A stub keeps the key if it is small (keys are rarely large).
            if !stub || k.len() <= STUB_MAX_KEY_BYTES {
                rec = rec.key(k.as_slice());
            }
        }
        if let Some(v) = r.value.as_ref().filter(|_| !stub) {
            rec = rec.payload(v.as_slice());
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Largest key a too-large record's dead-letter stub keeps.
const STUB_MAX_KEY_BYTES: usize = 1024;
