//! The test kit shared by `cdrs demo`, `cdrs bench` and the end-to-end
//! tests: a producer of JSON trade events keyed by client id (with
//! heartbeats the demo filter drops and malformed records it dead-letters),
//! the [`Ledger`] of each produced record's expected fate, [`account`] to
//! check it against what the app servers received, the dead-letter topic
//! reader, the demo plugins' configs, a fake app server ([`appserver`]), a
//! Tansu broker process ([`tansu`]) and Kafka helpers ([`kafka`]).
//!
//! Nothing of the daemon depends on it.

pub mod appserver;
pub mod kafka;
pub mod pki;
pub mod tansu;

use crate::config::{
    AdminConfig, CapacityConfig, Config, DeliveryConfig, KafkaConfig, PipelineConfig, PluginConfig,
    PluginRuntimeConfig, TargetConfig,
};
use appserver::AppServer;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// What a produced record should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    Filtered,
    DeadLettered,
}

/// One demo event: key, value and what the demo filter will do with it.
pub fn trade_event(i: u64, clients: u64) -> (String, String, Fate) {
    let client = format!("client-{:04}", (i * 7919) % clients);
    if i % 97 == 13 {
        return (client, format!("not json {{ {i}"), Fate::DeadLettered);
    }
    if i % 10 == 9 {
        let v = format!(r#"{{"type":"heartbeat","client_id":"{client}","seq":{i}}}"#);
        return (client, v, Fate::Filtered);
    }
    let symbols = ["AAPL", "MSFT", "EURUSD", "BUND", "GOLD", "TSLA"];
    let side = if i.is_multiple_of(2) { "buy" } else { "sell" };
    let v = format!(
        r#"{{"type":"trade","client_id":"{client}","seq":{i},"symbol":"{}","side":"{side}","qty":{},"price":{:.2}}}"#,
        symbols[(i % 6) as usize],
        100 + (i % 900),
        50.0 + (i % 1000) as f64 / 7.0
    );
    (client, v, Fate::Delivered)
}

/// Every produced record by id (`topic/partition/offset`) and its expected fate.
#[derive(Debug, Default)]
pub struct Ledger {
    pub fates: HashMap<String, Fate>,
    /// Key of each record, for per-key order checks.
    pub keys: HashMap<String, String>,
}

impl Ledger {
    pub fn count(&self, fate: Fate) -> usize {
        self.fates.values().filter(|f| **f == fate).count()
    }
}

/// Produces `n` demo events to `topic` and returns the ledger.
///
/// # Errors
/// As [`produce_events`].
pub async fn produce(brokers: &str, topic: &str, n: u64, clients: u64) -> anyhow::Result<Ledger> {
    produce_events(
        brokers,
        topic,
        (0..n).map(|i| trade_event(i, clients)).collect(),
    )
    .await
}

/// An idempotent producer for [`produce_with`] (5 ms linger).
///
/// # Errors
/// librdkafka refuses to create it (a bad `brokers` string).
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?)
}

/// Produces one record with a W3C `traceparent` header and returns its id
/// (`topic/partition/offset`).
///
/// # Errors
/// The record is not acknowledged within 30 s.
pub async fn send_traced(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &str,
    traceparent: &str,
) -> anyhow::Result<String> {
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "traceparent",
        value: Some(traceparent),
    });
    let rec = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    let d = producer
        .send(rec, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    Ok(format!("{topic}/{}/{}", d.partition, d.offset))
}

/// Produces `(key, value, fate)` events to `topic` in order and returns the
/// ledger of their ids (from the broker's acks) and fates.
///
/// # Errors
/// The producer cannot be created, or a record is not acknowledged within
/// 30 s.
pub async fn produce_events(
    brokers: &str,
    topic: &str,
    events: Vec<(String, String, Fate)>,
) -> anyhow::Result<Ledger> {
    produce_with(&producer(brokers)?, topic, &events).await
}

/// [`produce_events`] with a producer of the caller's, which can be kept
/// for many calls (creating one costs a connection and a producer id).
///
/// # Errors
/// A record is not acknowledged within 30 s.
pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    events: &[(String, String, Fate)],
) -> anyhow::Result<Ledger> {
    let mut ledger = Ledger::default();
    for chunk in events.chunks(2000) {
        let sends = chunk.iter().map(|(key, value, fate)| async move {
            let rec = FutureRecord::to(topic).key(key).payload(value);
            let sent = producer.send(rec, Duration::from_secs(30)).await;
            sent.map(|d| {
                (
                    format!("{topic}/{}/{}", d.partition, d.offset),
                    key.clone(),
                    *fate,
                )
            })
            .map_err(|(e, _)| e)
        });
        for r in futures::future::join_all(sends).await {
            let (id, key, fate) = r?;
            ledger.fates.insert(id.clone(), fate);
            ledger.keys.insert(id, key);
        }
    }
    Ok(ledger)
}

/// What the servers' own logs say about a ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    /// Records expected to be delivered that some server received.
    pub delivered: usize,
    /// Records expected to be delivered that no server received.
    pub lost: usize,
    /// Receipts beyond the first of the same record.
    pub duplicates: usize,
    /// Records a server received that should not have reached one.
    pub unexpected: usize,
    /// Unique records per target id.
    pub per_target: BTreeMap<String, usize>,
}

/// Checks every server's log against the ledger.
pub fn account(ledger: &Ledger, servers: &[&AppServer]) -> Accounting {
    let mut seen: HashSet<String> = HashSet::new();
    let mut duplicates = 0;
    let mut unexpected = 0;
    let mut per_target = BTreeMap::new();
    for s in servers {
        let mut unique = HashSet::new();
        for r in s.received() {
            if ledger.fates.get(&r.id) != Some(&Fate::Delivered) {
                unexpected += 1;
            }
            if !seen.insert(r.id.clone()) {
                duplicates += 1;
            }
            unique.insert(r.id);
        }
        per_target.insert(s.id.clone(), unique.len());
    }
    let expected: Vec<&String> = ledger
        .fates
        .iter()
        .filter(|(_, f)| **f == Fate::Delivered)
        .map(|(id, _)| id)
        .collect();
    let delivered = expected.iter().filter(|id| seen.contains(**id)).count();
    Accounting {
        delivered,
        lost: expected.len() - delivered,
        duplicates,
        unexpected,
        per_target,
    }
}

/// The original id (`topic/partition/offset`) of a dead letter and all its
/// headers as text.
pub fn dead_letter_headers<M: Message>(m: &M) -> (String, HashMap<String, String>) {
    let mut h = HashMap::new();
    if let Some(hs) = m.headers() {
        for x in hs.iter() {
            h.insert(
                x.key.to_string(),
                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
            );
        }
    }
    let get = |k: &str| h.get(k).map_or("", String::as_str);
    let id = format!(
        "{}/{}/{}",
        get("cdrs-original-topic"),
        get("cdrs-original-partition"),
        get("cdrs-original-offset")
    );
    (id, h)
}

/// Reads the whole dead-letter topic (partitions `0..partitions`) and
/// returns the original ids (`cdrs-original-*` headers) with their reasons.
///
/// # Errors
/// The consumer cannot be created or assigned.
pub fn read_dead_letters(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expect: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdrs-dlq-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < expect && Instant::now() < deadline {
        let Some(m) = consumer.poll(Timeout::After(Duration::from_millis(200))) else {
            continue;
        };
        let m = m?;
        let (id, h) = dead_letter_headers(&m);
        out.push((id, h.get("cdrs-dlq-reason").cloned().unwrap_or_default()));
    }
    Ok(out)
}

/// The demo's filter: drop heartbeats, dead-letter records that are not JSON.
pub fn demo_filter(plugin_dir: &Path) -> PluginConfig {
    let config: toml::Table = toml::from_str(
        r#"
        non_json = "dead-letter"
        [[rules]]
        field = "type"
        equals = "heartbeat"
        action = "drop"
        "#,
    )
    .expect("static filter config");
    PluginConfig {
        name: "drop-heartbeats".into(),
        path: plugin_dir.join("field_filter.wasm"),
        config,
        sha256: None,
        shadow: None,
    }
}

/// The demo's router: p2c by capacity, sticky per client id.
pub fn demo_router(plugin_dir: &Path, sticky: bool) -> PluginConfig {
    let mut config = toml::Table::new();
    config.insert("sticky".into(), toml::Value::Boolean(sticky));
    PluginConfig {
        name: "p2c".into(),
        path: plugin_dir.join("p2c_router.wasm"),
        config,
        sha256: None,
        shadow: None,
    }
}

/// A config for `brokers` with the demo's plugins and the given targets.
pub fn demo_config(
    brokers: &str,
    group: &str,
    topic: &str,
    dlq: &str,
    plugin_dir: &Path,
    targets: Vec<TargetConfig>,
) -> Config {
    let mut options = BTreeMap::new();
    options.insert("session.timeout.ms".into(), "6000".into());
    options.insert("heartbeat.interval.ms".into(), "500".into());
    // Tansu holds a group's first JoinGroup for the rebalance timeout
    // (max.poll.interval.ms): keep it short so a fresh group starts quickly.
    options.insert("max.poll.interval.ms".into(), "6000".into());
    Config {
        kafka: KafkaConfig {
            brokers: brokers.into(),
            group_id: group.into(),
            topics: vec![topic.into()],
            dead_letter_topic: dlq.into(),
            options,
        },
        admin: AdminConfig {
            listen: "127.0.0.1:0".into(),
            ..AdminConfig::default()
        },
        pipeline: PipelineConfig::default(),
        plugins: PluginRuntimeConfig::default(),
        filters: vec![demo_filter(plugin_dir)],
        router: demo_router(plugin_dir, true),
        targets,
        capacity: CapacityConfig {
            report_expiry_ms: 2_000,
            ..CapacityConfig::default()
        },
        delivery: DeliveryConfig::default(),
        log: Default::default(),
        control: Default::default(),
        telemetry: Default::default(),
    }
}
