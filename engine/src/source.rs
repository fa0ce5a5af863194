//! Source: one rdkafka consumer in the consumer group, records handed to one
//! worker task per partition, in per-partition batches.
//!
//! Guarantees:
//! * at-least-once: `enable.auto.offset.store=false`; a worker stores a
//!   batch's offsets only after [`Pipeline::process`] placed every record of
//!   it, and batches of a partition run one after the other, so the stored
//!   offset never passes an unplaced record. librdkafka auto-commits stored
//!   offsets; shutdown commits them synchronously.
//! * bounded memory: each partition buffers at most `pipeline.partition_queue`
//!   records; when a worker falls behind the consumer loop waits for it.
//! * shutdown: stop fetching, let workers finish what they hold (they give up
//!   a batch rather than wait for a target that is down), commit, leave.

use crate::config::{KafkaConfig, PipelineConfig};
use crate::convert;
use crate::pipeline::Pipeline;
use crate::record::Record;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Consumer context: logs rebalances and commit failures, tracks readiness.
pub struct SourceContext {
    /// Set once the consumer has joined its group (first assignment, even empty).
    pub joined: Arc<AtomicBool>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.joined.store(true, Ordering::Relaxed);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, partitions = %describe(offsets), "offset commit failed");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The consumer type CDRS uses.
pub type Source = StreamConsumer<SourceContext>;

/// Creates the group consumer and subscribes to `kafka.topics`.
pub fn consumer(cfg: &KafkaConfig, joined: Arc<AtomicBool>) -> anyhow::Result<Source> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    let consumer: Source = c.create_with_context(SourceContext { joined })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Reads records until `shutdown`, feeding per-partition workers; then
/// drains the workers (at most `grace`) and commits stored offsets.
pub async fn run(
    consumer: Arc<Source>,
    pipeline: Arc<Pipeline>,
    cfg: PipelineConfig,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut workers: HashMap<(Arc<str>, i32), mpsc::Sender<Record>> = HashMap::new();
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut tasks = JoinSet::new();
    'read: loop {
        let record = tokio::select! {
            biased;
            _ = shutdown.changed() => break 'read,
            m = consumer.recv() => match m {
                Ok(m) => {
                    let topic = topics
                        .entry(m.topic().to_string())
                        .or_insert_with(|| Arc::from(m.topic()))
                        .clone();
                    convert::record_from_kafka(&m, &topic)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    continue;
                }
            },
        };
        let key = (record.topic.clone(), record.partition);
        let tx = workers.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(cfg.partition_queue);
            tasks.spawn(partition_worker(
                record.topic.clone(),
                record.partition,
                rx,
                pipeline.clone(),
                consumer.clone(),
                cfg.clone(),
                shutdown.clone(),
            ));
            tx
        });
        tokio::select! {
            biased;
            _ = shutdown.changed() => break 'read,
            sent = tx.send(record) => if sent.is_err() {
                // The worker stopped after abandoning a batch at shutdown.
                continue;
            },
        }
    }
    tracing::info!(
        partitions = workers.len(),
        "shutting down: draining partition workers"
    );
    drop(workers);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; abandoning unfinished batches"
        );
        tasks.abort_all();
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("final offsets committed"),
        // "No offset stored" is the normal case when nothing new completed.
        Err(e) => tracing::info!(error = %e, "final commit"),
    }
    consumer.unsubscribe();
    Ok(())
}

/// Batches and processes one partition's records, strictly in order.
async fn partition_worker(
    topic: Arc<str>,
    partition: i32,
    mut rx: mpsc::Receiver<Record>,
    pipeline: Arc<Pipeline>,
    consumer: Arc<Source>,
    cfg: PipelineConfig,
    shutdown: watch::Receiver<bool>,
) {
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(cfg.batch_size.min(1024));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < cfg.batch_size {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => break,
                    }
                }
            }
        }
        let last = batch
            .last()
            .map(|r| r.offset)
            .expect("batch is never empty");
        match pipeline.process(&topic, partition, batch, &shutdown).await {
            Ok(()) => {
                // Stores last+1: the next offset to consume.
                if let Err(e) = consumer.store_offset(&topic, partition, last) {
                    tracing::debug!(%topic, partition, error = %e, "offset store failed (partition revoked?)");
                } else {
                    pipeline
                        .metrics
                        .offsets_stored
                        .with_label_values(&[&*topic])
                        .inc();
                }
            }
            Err(e) => {
                tracing::warn!(%topic, partition, from_offset = last, error = %e, "partition stopped");
                return;
            }
        }
    }
}
