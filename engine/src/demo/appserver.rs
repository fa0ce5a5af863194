//! A real HTTP application server for the demo and the tests: receives CDRS
//! deliveries on `POST /records`, keeps its own log of what it received, and
//! reports its capacity to a CDRS admin API.
//!
//! Each server runs on its own Tokio runtime on its own thread, so
//! [`AppServer::kill`] can stop it the way a crash would: listener,
//! connections and reporting all vanish at once.

use crate::capacity::CapacityReport;
use crate::sink::http::WireBatch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One record as the server logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `topic/partition/offset`.
    pub id: String,
    pub key: Option<Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
    /// Headers as received (values decoded).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Behaviour knobs, changeable while the server runs.
#[derive(Default)]
pub struct Behaviour {
    /// Added latency per request, ms.
    pub latency_ms: AtomicU64,
    /// Answer 500 to every request (and 503 to health checks) while set.
    pub failing: AtomicBool,
    /// Send no capacity reports while set (alive but not heartbeating).
    pub silent: AtomicBool,
}

struct Shared {
    id: String,
    capacity: u32,
    log: Mutex<Vec<Received>>,
    inflight: AtomicU32,
    behaviour: Behaviour,
}

/// A running application server.
pub struct AppServer {
    pub id: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

async fn receive(State(s): State<Arc<Shared>>, Json(batch): Json<WireBatch>) -> StatusCode {
    s.inflight
        .fetch_add(batch.records.len() as u32, Ordering::Relaxed);
    let latency = s.behaviour.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    s.inflight
        .fetch_sub(batch.records.len() as u32, Ordering::Relaxed);
    if s.behaviour.failing.load(Ordering::Relaxed) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let mut log = s.log.lock().expect("log lock");
    for r in &batch.records {
        log.push(Received {
            id: r.id.clone(),
            key: r.key_bytes(),
            partition: r.partition,
            offset: r.offset,
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value_bytes()))
                .collect(),
        });
    }
    StatusCode::OK
}

async fn health(State(s): State<Arc<Shared>>) -> StatusCode {
    if s.behaviour.failing.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

impl AppServer {
    /// Starts a server on 127.0.0.1 (free port) that declares `capacity`.
    pub fn start(id: &str, capacity: u32) -> anyhow::Result<AppServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("app-{id}"))
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            id: id.to_string(),
            capacity,
            log: Mutex::new(Vec::new()),
            inflight: AtomicU32::new(0),
            behaviour: Behaviour::default(),
        });
        // Bound here (std) so the port is known before start returns, even
        // when called from inside another Tokio runtime.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/records", post(receive))
            .route("/health", axum::routing::get(health))
            .with_state(shared.clone());
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    let _ = axum::serve(l, app).await;
                }
                Err(e) => tracing::error!(error = %e, "app server listener failed"),
            }
        });
        Ok(AppServer {
            id: id.to_string(),
            addr,
            shared,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// This server as a `[[targets]]` entry with its declared capacity.
    pub fn target_config(&self) -> crate::config::TargetConfig {
        crate::config::TargetConfig {
            id: self.id.clone(),
            url: self.url(),
            capacity: self.shared.capacity,
            weight: crate::config::DEFAULT_WEIGHT,
            zone: None,
            labels: Default::default(),
            health_url: None,
        }
    }

    /// The URL CDRS delivers to.
    pub fn url(&self) -> String {
        format!("http://{}/records", self.addr)
    }

    /// Behaviour knobs (latency, failing).
    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    /// The server's current capacity report.
    fn report(shared: &Shared, url: &str) -> CapacityReport {
        CapacityReport {
            server_id: Some(shared.id.clone()),
            endpoint: Some(url.to_string()),
            inflight: shared.inflight.load(Ordering::Relaxed),
            sent_at_ms: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            ),
            ..CapacityReport::new(shared.capacity)
        }
    }

    /// Starts pushing a capacity report to `admin` (`host:port`) every
    /// `every`, with the declared capacity and the current in-flight count.
    pub fn report_to(&self, admin: SocketAddr, every: Duration, token: Option<String>) {
        let shared = self.shared.clone();
        let url = format!("http://{admin}/v1/targets/{}/capacity", shared.id);
        let me = self.url();
        self.spawn(async move {
            let client = reqwest::Client::new();
            loop {
                if shared.behaviour.silent.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    continue;
                }
                let mut req = client.put(&url).json(&Self::report(&shared, &me));
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                if let Err(e) = req.send().await {
                    tracing::debug!(error = %e, "capacity report failed");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Starts publishing a capacity report to the capacity `topic` every
    /// `every` (key: the server id).
    pub fn publish_to(&self, brokers: &str, topic: &str, every: Duration) -> anyhow::Result<()> {
        let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .create()?;
        let (shared, topic, me) = (self.shared.clone(), topic.to_string(), self.url());
        self.spawn(async move {
            loop {
                if shared.behaviour.silent.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    continue;
                }
                let body = serde_json::to_vec(&Self::report(&shared, &me)).unwrap_or_default();
                let rec = rdkafka::producer::FutureRecord::to(&topic)
                    .key(&shared.id)
                    .payload(&body);
                if let Err((e, _)) = producer.send(rec, Duration::from_secs(5)).await {
                    tracing::debug!(error = %e, "capacity publish failed");
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(())
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(rt) = self.runtime.lock().expect("runtime lock").as_ref() {
            rt.spawn(f);
        }
    }

    /// URL of the health endpoint (`GET`: 200, or 503 while failing).
    pub fn health_url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Number of records received so far (with duplicates).
    pub fn count(&self) -> usize {
        self.shared.log.lock().expect("log lock").len()
    }

    /// Stops the server abruptly, like a crash: the port closes, open
    /// connections drop, reports stop. Its log stays readable.
    pub fn kill(&self) {
        if let Some(rt) = self.runtime.lock().expect("runtime lock").take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.kill();
    }
}
