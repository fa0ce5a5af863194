//! What CDRS does with librdkafka directly: the settings it sets on its
//! clients, the check of the operator's `[kafka.options]` against them, and
//! the host's [`Record`] of a fetched message. CDRS's own settings come
//! first; `[kafka.options]` entries override them (consumer-only keys are
//! left off producers).

use crate::config::{Config, ConfigProblem, KafkaConfig, PipelineConfig};
use crate::record::Record;
use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::Arc;

/// librdkafka's `fetch.queue.backoff.ms` for the source consumer, unless
/// `[kafka.options]` sets it: how long a partition whose prefetch queue is
/// over `queued.min.messages` (`pipeline.prefetch_records`) or
/// `queued.max.messages.kbytes` waits before its next fetch. At
/// librdkafka's default, 1000 ms, a pipeline that has fallen behind that
/// much idles ~0.8 s at a time: in `cdrs bench` on Tansu, a consume → produce loop with one such
/// stall per 500,000 records ran at ~250,000 instead of ~450,000 records/s.
/// librdkafka's CONFIGURATION.md: "This property may need to be decreased
/// if the queue thresholds are set low and the application is experiencing
/// long (~1s) delays between messages."
pub const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// librdkafka's `auto.commit.interval.ms` for the source consumer, unless
/// `[kafka.options]` sets it: how often the stored commit watermarks are
/// committed, in the background (librdkafka's default is 5000; its commits
/// are asynchronous and never wait on the data path). After a `kill -9`,
/// what was delivered since the last commit is delivered again by the next
/// owner, so this bounds the duplicates to about this much of traffic
/// (plus what was in flight): 1000 let ~2 s of traffic through twice in
/// the chaos suite.
pub const AUTO_COMMIT_INTERVAL_MS: &str = "200";

/// librdkafka's `queued.max.messages.kbytes` for the source consumer,
/// unless `[kafka.options]` sets it: KiB prefetched per partition at most
/// (with split partition queues the limit applies to each partition's
/// queue, not to the consumer as a whole). librdkafka's default, 65536,
/// would let each partition take 64 MiB.
pub const PREFETCH_KBYTES: &str = "16384";

/// `statistics.interval.ms` of the group consumer: how often librdkafka
/// reports per-partition lag (`cdrs_partition_lag_records`), ms.
/// `[kafka.options]` may change it; `0` turns the lag gauge off.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// The group consumer's settings: CDRS's own, then `[kafka.options]`.
pub fn consumer_config(cfg: &KafkaConfig, pipeline: &PipelineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("queued.min.messages", pipeline.prefetch_records.to_string())
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

/// A producer's settings (dead letters, `kafka://` targets): idempotent,
/// `acks=all`, then `[kafka.options]` without consumer-only keys.
pub fn producer_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
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
    cfg
}

/// The settings of a reader outside the consumer group (the capacity
/// topic feed): partitions assigned by CDRS, nothing committed, then
/// `[kafka.options]` without group settings. `group_id` is required by
/// librdkafka but never joined.
pub fn reader_config(
    brokers: &str,
    options: &BTreeMap<String, String>,
    group_id: &str,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    for (k, v) in options {
        if !k.starts_with("group.") && !k.starts_with("partition.assignment") {
            cfg.set(k, v);
        }
    }
    cfg
}

/// The number of partitions of `topic` as the brokers report it (`what`
/// names the topic's role in the error).
///
/// # Errors
/// The metadata cannot be read within 10 s, or the topic has no
/// partitions (it does not exist).
pub fn partition_count<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    what: &str,
) -> anyhow::Result<i32> {
    let md = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        partitions > 0,
        "{what} topic {topic:?} has no partitions (does it exist?)"
    );
    Ok(partitions as i32)
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

/// Checks `[kafka.options]` as librdkafka will see them at `cdrs run`:
/// each option alone (unknown property, invalid value), then, if all
/// pass, a throwaway consumer and producer with CDRS's own settings
/// (combinations, e.g. `acks` against idempotence). Creating a client
/// needs no broker. For `cdrs check`: it starts (and stops) librdkafka
/// threads, so it is not part of [`Config::validate`].
///
/// Returns one problem per refused option (`kafka.options."KEY"`), or
/// one for the combination (`kafka.options`); empty when librdkafka takes
/// them all.
pub fn check_options(config: &Config) -> Vec<ConfigProblem> {
    use rdkafka::config::ClientConfig;
    use rdkafka::error::KafkaError;
    let options = &config.kafka.options;
    let mut out = Vec::new();
    for (k, v) in options {
        if let Err(e) = ClientConfig::new().set(k, v).create_native_config() {
            let mut why = match e {
                KafkaError::ClientConfig(_, desc, ..) => desc,
                e => e.to_string(),
            };
            let mut shown = format!("{v:?}");
            if crate::redact::is_secret_option(k) {
                if !v.is_empty() {
                    why = why.replace(v.as_str(), crate::redact::REDACTED);
                }
                shown = format!("{:?}", crate::redact::REDACTED);
            }
            out.push(ConfigProblem {
                key: format!("kafka.options.{k:?}"),
                message: format!(
                    "{shown} is refused by librdkafka: {why}; valid properties and values: \
                     librdkafka's CONFIGURATION.md"
                ),
            });
        }
    }
    if !out.is_empty() || options.is_empty() {
        return out;
    }
    // The very settings `cdrs run` creates its clients with.
    let mut consumer = consumer_config(&config.kafka, &config.pipeline);
    let mut producer = producer_config(&config.kafka.brokers, options);
    // Errors come back as results; `cdrs run` logs the warnings (e.g. a
    // producer property ignored by the consumer).
    consumer.set("log_level", "3");
    producer.set("log_level", "3");
    let created = [
        (
            "consumer",
            consumer
                .create::<rdkafka::consumer::BaseConsumer>()
                .map(drop),
        ),
        (
            "producer",
            producer
                .create::<rdkafka::producer::BaseProducer>()
                .map(drop),
        ),
    ];
    for (client, result) in created {
        if let Err(e) = result {
            let why = match e {
                KafkaError::ClientConfig(_, desc, ..) => desc,
                KafkaError::ClientCreation(msg) => msg,
                e => e.to_string(),
            };
            out.push(ConfigProblem {
                key: "kafka.options".into(),
                message: format!("librdkafka cannot create a {client} with them: {why}"),
            });
        }
    }
    out
}

/// The host's [`Record`] of a message librdkafka fetched (`m` from
/// `rd_kafka_consume_batch_queue`): key, value and headers copied, the
/// timestamp when the record has one. `topic` is the interned name.
///
/// Errors: the message is an error for its partition (`m->err` set), as
/// librdkafka reports fetch failures.
///
/// # Safety
/// `m` must be a valid message, not yet destroyed.
pub unsafe fn record_from_raw(
    m: *const rd::rd_kafka_message_t,
    topic: &Arc<str>,
) -> Result<Record, KafkaError> {
    // SAFETY: the caller's contract.
    let msg = unsafe { &*m };
    if msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(KafkaError::MessageConsumption(msg.err.into()));
    }
    // SAFETY: librdkafka's pointer and length for the message's lifetime.
    let bytes = |p: *mut std::ffi::c_void, len: usize| {
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec())
    };
    let mut ts_type = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: valid message and out-pointer.
    let ts = unsafe { rd::rd_kafka_message_timestamp(m, &mut ts_type) };
    let timestamp_ms = (ts_type != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        && ts != -1)
        .then_some(ts);
    let mut headers = Vec::new();
    let mut hdrs = std::ptr::null_mut();
    // SAFETY: valid message; `hdrs` stays owned by the message.
    if unsafe { rd::rd_kafka_message_headers(m, &mut hdrs) }
        == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    {
        for i in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: valid header list; out-pointers to locals.
            let found =
                unsafe { rd::rd_kafka_header_get_all(hdrs, i, &mut name, &mut value, &mut size) };
            if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: NUL-terminated name and `size` value bytes owned by
            // the header list.
            let key = unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned();
            if crate::record::is_reserved_header(&key) {
                continue;
            }
            let value = (!value.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec());
            headers.push((key, value));
        }
    }
    Ok(Record {
        topic: topic.clone(),
        partition: msg.partition,
        offset: msg.offset,
        timestamp_ms,
        key: bytes(msg.key, msg.key_len),
        value: bytes(msg.payload, msg.len),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SASL_SSL with SCRAM and a private CA: librdkafka is built with
    /// OpenSSL and takes them, and the group consumer, the producers and
    /// the capacity reader all get them.
    #[test]
    fn ssl_and_sasl_settings_reach_every_client() {
        let dir = std::env::temp_dir().join(format!("cdrs-kafka-ssl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = crate::testkit::pki::Pki::new(&dir, "kafka").unwrap();
        let client = ca.client("client", "cdrs").unwrap();
        let options: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "cdrs"),
            ("sasl.password", "scram-secret"),
            ("ssl.ca.location", ca.ca_file.to_str().unwrap()),
            ("ssl.certificate.location", client.cert.to_str().unwrap()),
            ("ssl.key.location", client.key.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kafka = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            group_id: "g".into(),
            topics: vec!["t".into()],
            dead_letter_topic: "dlq".into(),
            options: options.clone(),
        };
        let configs = [
            (
                "consumer",
                consumer_config(&kafka, &PipelineConfig::default()),
            ),
            ("producer", producer_config(&kafka.brokers, &options)),
            ("reader", reader_config(&kafka.brokers, &options, "r")),
        ];
        for (name, mut c) in configs {
            for (k, v) in &options {
                assert_eq!(c.get(k), Some(v.as_str()), "{name} gets {k}");
            }
            c.set("log_level", "3");
            let created = if name == "producer" {
                c.create::<rdkafka::producer::BaseProducer>().map(drop)
            } else {
                c.create::<rdkafka::consumer::BaseConsumer>().map(drop)
            };
            created.unwrap_or_else(|e| panic!("librdkafka refused the {name}: {e}"));
        }
    }
}
