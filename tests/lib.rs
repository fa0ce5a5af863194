//! Test tooling for the end-to-end tests: a real Tansu broker process, topic
//! and offset helpers, and where to find the built plugins.
//!
//! The broker binary comes from `CDRS_TANSU`, else `.tools/bin/tansu`
//! (installed by `scripts/dev.sh test` / `scripts/dev.sh broker`).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Folder with the built plugins (`scripts/dev.sh plugins`).
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("CDRS_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip2/plugin"));
    assert!(
        dir.join("p2c_router.wasm").is_file() && dir.join("field_filter.wasm").is_file(),
        "plugins not built in {}: run `scripts/dev.sh plugins` (or the README's test command)",
        dir.display()
    );
    dir
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A Tansu broker process (memory storage), killed on drop (the engine's
/// [`cdrs::tansu::TansuProcess`], which `cdrs bench` uses too).
pub struct Tansu {
    pub brokers: String,
    _process: cdrs::tansu::TansuProcess,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it answers
    /// a metadata request.
    pub fn start() -> Tansu {
        let bin = cdrs::tansu::TansuProcess::binary(&root());
        assert!(
            bin.is_file(),
            "Tansu broker not found at {}: run `scripts/dev.sh broker` (or the README's test command)",
            bin.display()
        );
        let process = cdrs::tansu::TansuProcess::start(&bin)
            .unwrap_or_else(|e| panic!("Tansu did not start: {e:#}"));
        Tansu {
            brokers: process.brokers().to_string(),
            _process: process,
        }
    }
}

/// A librdkafka mock cluster (one broker) with these topics (name,
/// partitions); returns its bootstrap servers. The cluster lives until the
/// process exits: a consumer left running by a failing test then still
/// closes cleanly instead of waiting for a vanished broker.
pub fn mock_cluster(topics: &[(&str, i32)]) -> String {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for (t, p) in topics {
        cluster.create_topic(t, *p, 1).expect("mock topic");
    }
    let brokers = cluster.bootstrap_servers();
    Box::leak(Box::new(cluster));
    brokers
}

/// As [`mock_cluster`], returning the cluster itself (e.g. to take its
/// broker down and up); it lives until the process exits.
pub fn mock_cluster_handle(
    topics: &[(&str, i32)],
) -> &'static rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for (t, p) in topics {
        cluster.create_topic(t, *p, 1).expect("mock topic");
    }
    Box::leak(Box::new(cluster))
}

/// The `cdrs` binary: `CDRS_BIN`, else `target/debug/cdrs` (built by
/// `cargo test --workspace`, whose CLI tests need it).
pub fn cdrs_bin() -> PathBuf {
    let bin = std::env::var_os("CDRS_BIN")
        .map(Into::into)
        .unwrap_or_else(|| root().join("target/debug/cdrs"));
    assert!(
        bin.is_file(),
        "cdrs binary not found at {}: run `cargo build -p cdrs`",
        bin.display()
    );
    bin
}

/// Creates topics (name, partitions) and waits until they are visible.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Committed offset per partition of `topic` for `group` (-1 if none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// High watermark (next offset to be written) per partition.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns it.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
