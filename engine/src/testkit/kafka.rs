//! Kafka helpers of the test kit: mock clusters, topic creation, committed
//! offsets and watermarks, and waiting for a broker to answer.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::TopicPartitionList;
use std::time::{Duration, Instant};

/// A librdkafka mock cluster (one broker, in this process).
pub type Mock = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster with these topics (name, partitions), and the default
/// control topic (librdkafka's mock cluster does not take CreateTopics, so
/// CDRS cannot create it there). It lives until the process exits: a
/// consumer left running by a failing test then still closes cleanly
/// instead of waiting for a vanished broker.
///
/// # Errors
/// librdkafka refuses to create the cluster or a topic.
pub fn leaked_mock(topics: &[(&str, i32)]) -> anyhow::Result<&'static Mock> {
    let cluster = MockCluster::new(1)?;
    for (t, p) in topics {
        cluster.create_topic(t, *p, 1)?;
    }
    cluster.create_topic(crate::config::DEFAULT_CONTROL_TOPIC, 1, 1)?;
    Ok(Box::leak(Box::new(cluster)))
}

/// Blocks until the broker at `brokers` answers a metadata request.
///
/// # Errors
/// No answer within `timeout` (the last error is named).
pub fn wait_for_metadata(brokers: &str, timeout: Duration) -> anyhow::Result<()> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let deadline = Instant::now() + timeout;
    while let Err(e) = probe.fetch_metadata(None, Duration::from_secs(1)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the broker at {brokers} did not answer within {timeout:?}: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Creates topics (name, partitions; replication 1) through the admin API.
///
/// # Errors
/// The admin client cannot be made, or the broker refuses a topic (named).
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("failed to create topic {t:?}: {e}"))?;
    }
    Ok(())
}

/// Deletes a topic, best effort: a broker that cannot only keeps it.
pub async fn delete_topic(brokers: &str, name: &str) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create();
    if let Ok(admin) = admin {
        if let Err(e) = admin.delete_topics(&[name], &AdminOptions::new()).await {
            tracing::debug!(topic = name, error = %e, "topic not deleted");
        }
    }
}

/// Committed offset per partition `0..partitions` of `topic` for `group`,
/// -1 where none is.
///
/// # Errors
/// The consumer cannot be made or the broker does not answer within 10 s.
pub fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect())
}

/// High watermark (the next offset to be written) per partition
/// `0..partitions` of `topic`.
///
/// # Errors
/// The consumer cannot be made or the broker does not answer within 10 s.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    (0..partitions)
        .map(|p| Ok(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1))
        .collect()
}
