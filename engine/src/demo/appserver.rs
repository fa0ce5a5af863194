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
    /// Answer 500 to every request while set.
    pub failing: AtomicBool,
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

    /// The URL CDRS delivers to.
    pub fn url(&self) -> String {
        format!("http://{}/records", self.addr)
    }

    /// Behaviour knobs (latency, failing).
    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    /// Starts pushing a capacity report to `admin` (`host:port`) every
    /// `every`, with the declared capacity and the current in-flight count.
    pub fn report_to(&self, admin: SocketAddr, every: Duration, token: Option<String>) {
        let shared = self.shared.clone();
        let url = format!("http://{admin}/v1/targets/{}/capacity", shared.id);
        if let Some(rt) = self.runtime.lock().expect("runtime lock").as_ref() {
            rt.spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let report = CapacityReport {
                        capacity: shared.capacity,
                        inflight: shared.inflight.load(Ordering::Relaxed),
                        queue_depth: 0,
                        cpu_permille: 0,
                        draining: false,
                    };
                    let mut req = client.put(&url).json(&report);
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
