//! The end-to-end tests' view of the engine's test kit (`cdrs::testkit`):
//! a Tansu broker process, topic and offset helpers that panic with the
//! reason, and where to find the built plugins and the `cdrs` binary.
//!
//! The broker binary comes from `CDRS_TANSU`, else `.tools/bin/tansu`
//! (installed by `scripts/dev.sh test` / `scripts/dev.sh broker`).

use cdrs::testkit::kafka;
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
/// [`cdrs::testkit::tansu::TansuProcess`], which `cdrs bench` uses too).
pub struct Tansu {
    pub brokers: String,
    _process: cdrs::testkit::tansu::TansuProcess,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it answers
    /// a metadata request.
    pub fn start() -> Tansu {
        let bin = cdrs::testkit::tansu::TansuProcess::binary(&root());
        assert!(
            bin.is_file(),
            "Tansu broker not found at {}: run `scripts/dev.sh broker` (or the README's test command)",
            bin.display()
        );
        let process = cdrs::testkit::tansu::TansuProcess::start(&bin)
            .unwrap_or_else(|e| panic!("Tansu did not start: {e:#}"));
        Tansu {
            brokers: process.brokers().to_string(),
            _process: process,
        }
    }
}

/// A librdkafka mock cluster (one broker) with these topics (name,
/// partitions); returns its bootstrap servers. It lives until the process
/// exits ([`kafka::leaked_mock`]).
pub fn mock_cluster(topics: &[(&str, i32)]) -> String {
    mock_cluster_handle(topics).bootstrap_servers()
}

/// As [`mock_cluster`], returning the cluster itself (e.g. to take its
/// broker down and up).
pub fn mock_cluster_handle(topics: &[(&str, i32)]) -> &'static kafka::Mock {
    kafka::leaked_mock(topics).expect("mock cluster")
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

/// Creates topics (name, partitions).
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    kafka::create_topics(brokers, topics)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Committed offset per partition of `topic` for `group` (-1 if none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    kafka::committed(brokers, group, topic, partitions).expect("committed offsets")
}

/// High watermark (next offset to be written) per partition.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    kafka::high_watermarks(brokers, topic, partitions).expect("watermarks")
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
