//! The bench's broker: Tansu in its own process, librdkafka's mock, or a
//! running one, and how the bench's clients reach it.

use super::*;

/// The broker the end-to-end part runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchBroker {
    /// librdkafka's in-process mock cluster. Its CPU counts in this
    /// process, and its fetch path scans a partition's message sets
    /// linearly (`rd_kafka_mock_msgset_find` was 12% of all samples at
    /// 100,000 records; at 1,000,000 the passthrough stalled), so keep runs
    /// small with it.
    Embedded,
    /// Tansu started from this binary on a free loopback port, in its own
    /// process, stopped afterwards.
    Tansu(PathBuf),
    /// A broker already running at these bootstrap servers; topics and
    /// groups get a per-run suffix.
    External(String),
}

impl std::fmt::Display for BenchBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchBroker::Embedded => f.write_str("embedded mock broker"),
            BenchBroker::Tansu(_) => f.write_str("Tansu 0.6 (own process)"),
            BenchBroker::External(b) => write!(f, "broker at {b}"),
        }
    }
}

/// A running bench broker: bootstrap servers and topic creation.
pub(super) enum Running {
    Mock(rdkafka::mocking::MockCluster<'static, DefaultProducerContext>),
    Process(TansuProcess),
    External(String),
}

impl Running {
    pub(super) async fn start(broker: &BenchBroker) -> anyhow::Result<Running> {
        let running = match broker {
            BenchBroker::Embedded => Running::Mock(rdkafka::mocking::MockCluster::new(1)?),
            BenchBroker::External(b) => Running::External(b.clone()),
            BenchBroker::Tansu(bin) => {
                let bin = bin.clone();
                Running::Process(
                    tokio::task::spawn_blocking(move || TansuProcess::start(&bin)).await??,
                )
            }
        };
        let brokers = running.brokers();
        tokio::task::spawn_blocking(move || {
            kafka::wait_for_metadata(&brokers, Duration::from_secs(20))
        })
        .await??;
        Ok(running)
    }

    /// How the bench's clients reach this broker.
    pub(super) fn link(&self) -> Link {
        let (pid, fetch_wait_ms) = match self {
            Running::Mock(_) => (None, MOCK_FETCH_WAIT_MS),
            Running::Process(t) => (Some(t.pid()), FETCH_WAIT_MS),
            Running::External(_) => (None, FETCH_WAIT_MS),
        };
        Link {
            brokers: self.brokers(),
            pid,
            fetch_wait_ms,
        }
    }

    pub(super) fn brokers(&self) -> String {
        match self {
            Running::Mock(c) => c.bootstrap_servers(),
            Running::Process(t) => t.brokers().to_string(),
            Running::External(b) => b.clone(),
        }
    }

    /// Deletes a topic of a broker in its own process (best effort: a
    /// broker that cannot only keeps it).
    pub(super) async fn delete_topic(&self, name: &str) {
        if !matches!(self, Running::Mock(_)) {
            kafka::delete_topic(&self.brokers(), name).await;
        }
    }

    pub(super) async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Running::Mock(c) => Ok(c.create_topic(name, partitions, 1)?),
            _ => kafka::create_topics(&self.brokers(), &[(name, partitions)]).await,
        }
    }
}

/// How the bench's clients reach the broker.
#[derive(Clone)]
pub(super) struct Link {
    /// Bootstrap servers.
    pub(super) brokers: String,
    /// The broker's process id, when it runs in its own process here.
    pub(super) pid: Option<u32>,
    /// `fetch.wait.max.ms` of every consumer of the bench (CDRS's too).
    pub(super) fetch_wait_ms: &'static str,
}

/// `fetch.wait.max.ms` of the bench's consumers on librdkafka's mock
/// broker, which answers a fetch with nothing to return only after the
/// wait: at librdkafka's default (500 ms) that wait would be the latency.
pub(super) const MOCK_FETCH_WAIT_MS: &str = "10";

/// `fetch.wait.max.ms` of the bench's consumers on a real broker. On Tansu
/// 0.6 (`--only latency`, 2–3 runs each, ms): at 10, group
/// consumers polling that often make it answer produce requests late
/// (CDRS p50 51–116 / p99 515–1035, like-for-like loop 64–273 /
/// 924–1432); at 500 it answers a waiting fetch late (broker alone p50 22,
/// loop and CDRS p50 186–261); at 100 CDRS p50 66–76 / p99 131–162.
pub(super) const FETCH_WAIT_MS: &str = "100";
