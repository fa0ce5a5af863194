//! Capacity topic feed: every CDRS process reads all partitions of
//! `capacity.topic` with manual assignment (not as a consumer group member),
//! from the end, so all processes share one view of the servers. Each record
//! is one JSON [`CapacityReport`](super::CapacityReport) with `server_id`.

use super::{CapacityReport, Feed, Registry, ReportError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Creates the feed's consumer, assigned to every partition of `topic` at
/// its end. Errors if the topic's metadata cannot be read.
pub fn consumer(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
) -> anyhow::Result<StreamConsumer> {
    let group = format!("cdrs-capacity-{}", std::process::id());
    let consumer: StreamConsumer =
        crate::kafka::reader_config(brokers, options, &group).create()?;
    let partitions = crate::kafka::partition_count(&consumer, topic, "capacity")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    tracing::info!(topic, partitions, "reading capacity reports");
    Ok(consumer)
}

/// Reads reports until `shutdown`; each goes through the same path as an
/// HTTP push. Bad records are counted and skipped, never fatal.
pub async fn run(
    consumer: StreamConsumer,
    registry: Arc<Registry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => return,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "capacity topic read failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(payload) = m.payload() else {
            registry.reject("", ReportError::Invalid("empty record".into()));
            continue;
        };
        match CapacityReport::parse(payload) {
            Ok(r) => match r.server_id.clone() {
                Some(id) => {
                    let _ = registry.report(&id, r, Feed::Topic);
                }
                None => {
                    registry.reject("", ReportError::MissingServerId);
                }
            },
            Err(e) => {
                registry.reject("", e);
            }
        }
    }
}
