//! A real HTTP application server for the demo and the tests: receives CDRS
//! deliveries on `POST /records`, keeps its own log of what it received, and
//! reports its capacity to a CDRS admin API.
//!
//! Each server runs on its own Tokio runtime on its own thread, so
//! [`AppServer::kill`] can stop it the way a crash would: listener,
//! connections and reporting all vanish at once.
//!
//! `cdrs demo-server` runs one as its own process, for chaos tests and for
//! trying CDRS by hand: with a log file, every record is appended to it as a
//! JSON line ([`LogLine`]) *before* the server answers 200, so a `kill -9`
//! loses nothing it acknowledged; `POST /control` with a [`Control`] body
//! changes its behaviour while it runs.

use crate::capacity::CapacityReport;
use crate::sink::http::WireBatch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::io::Write;
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
    /// The record's Kafka timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// When the server finished it (after its service time), ms since the
    /// Unix epoch.
    pub done_at_ms: i64,
}

/// Behaviour knobs, changeable while the server runs.
#[derive(Default)]
pub struct Behaviour {
    /// Added latency per request, ms.
    pub latency_ms: AtomicU64,
    /// Answer `fail_status` (default 500) to every request (and 503 to
    /// health checks) while set.
    pub failing: AtomicBool,
    /// Status of failed answers; 0 means 500.
    pub fail_status: AtomicU32,
    /// `Retry-After` seconds on failed answers; 0 means none.
    pub retry_after_s: AtomicU64,
    /// Send no capacity reports while set (alive but not heartbeating).
    pub silent: AtomicBool,
    /// Answer 413 Payload Too Large to a batch of more records than this
    /// (a body limit, like nginx's `client_max_body_size`); 0: no limit.
    pub max_batch_records: AtomicU64,
    /// Requests answered with a failure so far (a counter, not a knob).
    pub refused: AtomicU64,
    /// Mean service time of one record, µs; 0: none (answer at once).
    /// Records are served `concurrency` at a time, the rest wait first in,
    /// first out, as the simulator's servers do (`cdrs simulate`).
    pub service_us: AtomicU64,
    /// Service times constant instead of exponential.
    pub constant_service: AtomicBool,
    /// Records served at once while `service_us` is set, with the
    /// semaphore that enforces it (0: unlimited).
    pub concurrency: Mutex<(u32, Option<Arc<tokio::sync::Semaphore>>)>,
}

/// `POST /control` body: the knobs to change (absent ones stay).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub latency_ms: Option<u64>,
    pub failing: Option<bool>,
    pub fail_status: Option<u16>,
    pub retry_after_s: Option<u64>,
    pub silent: Option<bool>,
    pub max_batch_records: Option<u64>,
    /// Mean service time per record, ms (0: none).
    pub service_ms: Option<f64>,
    /// Records served at once (0: unlimited).
    pub concurrency: Option<u32>,
    /// `exponential` (default) or `constant` service times.
    pub service_distribution: Option<ServiceDistribution>,
}

/// How service times are drawn around their mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceDistribution {
    #[default]
    Exponential,
    Constant,
}

/// One line of a server's log file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub id: String,
    #[serde(default)]
    pub key: Option<String>,
    pub partition: i32,
    pub offset: i64,
}

struct Shared {
    id: String,
    capacity: u32,
    log: Mutex<Vec<Received>>,
    file: Mutex<Option<std::fs::File>>,
    inflight: AtomicU32,
    behaviour: Behaviour,
    /// TLS only: the client certificate (DER) of each connection, in
    /// accept order (empty when the client sent none).
    client_certs: Mutex<Vec<Vec<u8>>>,
    /// TLS only: handshakes that failed.
    tls_failures: AtomicU64,
    /// `POST /records` requests that came over HTTP/2.
    http2_requests: AtomicU64,
    /// The `traceparent` header of each request that had one.
    traceparents: Mutex<Vec<String>>,
    /// Set by [`AppServer::kill`] under the log lock: a handler still
    /// running on a worker thread after the kill logs nothing more.
    killed: AtomicBool,
}

/// HTTPS for an [`AppServer`]: its certificate and key (PEM files), and
/// with `client_ca`, client certificates signed by that CA required.
#[derive(Debug, Clone)]
pub struct AppTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

/// A running application server.
pub struct AppServer {
    pub id: String,
    pub addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

async fn receive(
    State(s): State<Arc<Shared>>,
    version: axum::http::Version,
    request_headers: axum::http::HeaderMap,
    Json(batch): Json<WireBatch>,
) -> Response {
    if let Some(tp) = request_headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        s.traceparents
            .lock()
            .expect("traceparents lock")
            .push(tp.to_string());
    }
    if version == axum::http::Version::HTTP_2 {
        s.http2_requests.fetch_add(1, Ordering::Relaxed);
    }
    s.inflight
        .fetch_add(batch.records.len() as u32, Ordering::Relaxed);
    let latency = s.behaviour.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let done_at_ms: Vec<i64> = futures::future::join_all(batch.records.iter().map(|_| async {
        s.behaviour.serve().await;
        now_ms()
    }))
    .await;
    s.inflight
        .fetch_sub(batch.records.len() as u32, Ordering::Relaxed);
    let limit = s.behaviour.max_batch_records.load(Ordering::Relaxed);
    if limit > 0 && batch.records.len() as u64 > limit {
        s.behaviour.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {limit} records per request"),
        )
            .into_response();
    }
    if s.behaviour.failing.load(Ordering::Relaxed) {
        s.behaviour.refused.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(s.behaviour.fail_status.load(Ordering::Relaxed) as u16)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = axum::http::HeaderMap::new();
        let ra = s.behaviour.retry_after_s.load(Ordering::Relaxed);
        if ra > 0 {
            headers.insert(axum::http::header::RETRY_AFTER, ra.into());
        }
        return (status, headers).into_response();
    }
    if let Some(f) = s.file.lock().expect("file lock").as_mut() {
        let mut buf = Vec::new();
        for r in &batch.records {
            let line = LogLine {
                id: r.id.clone(),
                key: r.key.clone(),
                partition: r.partition,
                offset: r.offset,
            };
            serde_json::to_writer(&mut buf, &line).expect("serializable");
            buf.push(b'\n');
        }
        // One write before the answer: a crash after it loses nothing acked.
        if let Err(e) = f.write_all(&buf) {
            tracing::error!(error = %e, "log write failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let mut log = s.log.lock().expect("log lock");
    if s.killed.load(Ordering::Relaxed) {
        // Killed while this request was handled: it was never received.
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    for (r, done_at_ms) in batch.records.iter().zip(done_at_ms) {
        log.push(Received {
            id: r.id.clone(),
            key: r.key_bytes(),
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            done_at_ms,
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value_bytes()))
                .collect(),
        });
    }
    StatusCode::OK.into_response()
}

/// Wall-clock now, ms since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn control(State(s): State<Arc<Shared>>, Json(c): Json<Control>) -> StatusCode {
    s.behaviour.apply(&c);
    StatusCode::NO_CONTENT
}

impl Behaviour {
    /// Applies the knobs `c` sets.
    pub fn apply(&self, c: &Control) {
        if let Some(v) = c.latency_ms {
            self.latency_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = c.fail_status {
            self.fail_status.store(v.into(), Ordering::Relaxed);
        }
        if let Some(v) = c.retry_after_s {
            self.retry_after_s.store(v, Ordering::Relaxed);
        }
        if let Some(v) = c.failing {
            self.failing.store(v, Ordering::Relaxed);
        }
        if let Some(v) = c.silent {
            self.silent.store(v, Ordering::Relaxed);
        }
        if let Some(v) = c.max_batch_records {
            self.max_batch_records.store(v, Ordering::Relaxed);
        }
        if let Some(ms) = c.service_ms {
            self.service_us
                .store((ms.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
        }
        if let Some(d) = c.service_distribution {
            self.constant_service
                .store(d == ServiceDistribution::Constant, Ordering::Relaxed);
        }
        if let Some(n) = c.concurrency {
            let sem = (n > 0).then(|| Arc::new(tokio::sync::Semaphore::new(n as usize)));
            *self.concurrency.lock().expect("concurrency lock") = (n, sem);
        }
    }

    /// Serves one record: waits for a slot (first in, first out), then its
    /// service time. Returns at once while no service time is set.
    async fn serve(&self) {
        let mean_us = self.service_us.load(Ordering::Relaxed);
        if mean_us == 0 {
            return;
        }
        let sem = self.concurrency.lock().expect("concurrency lock").1.clone();
        let _slot = match &sem {
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        let us = if self.constant_service.load(Ordering::Relaxed) {
            mean_us as f64
        } else {
            -(mean_us as f64) * (1.0 - fastrand::f64()).ln()
        };
        tokio::time::sleep(Duration::from_micros(us as u64)).await;
    }
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
    ///
    /// # Errors
    /// The port cannot be bound.
    pub fn start(id: &str, capacity: u32) -> anyhow::Result<AppServer> {
        Self::start_on(id, capacity, 0, None)
    }

    /// Starts a server on 127.0.0.1:`port` (0: any free port); with `log`,
    /// every record received is appended to that file as a [`LogLine`].
    ///
    /// # Errors
    /// The port cannot be bound, or the log file cannot be opened.
    pub fn start_on(
        id: &str,
        capacity: u32,
        port: u16,
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<AppServer> {
        Self::launch(id, capacity, port, log, None)
    }

    /// Starts an HTTPS server on 127.0.0.1 (free port), HTTP/2 offered by
    /// ALPN, client certificates required when `tls.client_ca` is set.
    ///
    /// # Errors
    /// The port cannot be bound, or a TLS file cannot be used.
    pub fn start_tls(id: &str, capacity: u32, tls: AppTls) -> anyhow::Result<AppServer> {
        Self::launch(id, capacity, 0, None, Some(tls))
    }

    fn launch(
        id: &str,
        capacity: u32,
        port: u16,
        log: Option<&std::path::Path>,
        tls: Option<AppTls>,
    ) -> anyhow::Result<AppServer> {
        let acceptor = tls.as_ref().map(server_tls).transpose()?;
        let file = match log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("failed to open log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("app-{id}"))
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            id: id.to_string(),
            capacity,
            log: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            inflight: AtomicU32::new(0),
            behaviour: Behaviour::default(),
            client_certs: Mutex::new(Vec::new()),
            tls_failures: AtomicU64::new(0),
            http2_requests: AtomicU64::new(0),
            traceparents: Mutex::new(Vec::new()),
            killed: AtomicBool::new(false),
        });
        // Bound here (std) so the port is known before start returns, even
        // when called from inside another Tokio runtime.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/records", post(receive))
            .route("/health", axum::routing::get(health))
            .route("/control", post(control))
            .with_state(shared.clone());
        let tls_shared = shared.clone();
        runtime.spawn(async move {
            match (tokio::net::TcpListener::from_std(listener), acceptor) {
                (Ok(l), None) => {
                    let _ = axum::serve(l, app).await;
                }
                (Ok(l), Some(acceptor)) => serve_tls(l, acceptor, app, tls_shared).await,
                (Err(e), _) => tracing::error!(error = %e, "app server listener failed"),
            }
        });
        Ok(AppServer {
            id: id.to_string(),
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
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
            report_token: None,
            tls: None,
        }
    }

    /// The URL CDRS delivers to.
    pub fn url(&self) -> String {
        format!("{}://{}/records", self.scheme, self.addr)
    }

    /// TLS only: the client certificate (DER) each connection presented,
    /// in accept order (empty for none).
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.shared.client_certs.lock().expect("certs lock").clone()
    }

    /// TLS only: handshakes that failed.
    pub fn tls_failures(&self) -> u64 {
        self.shared.tls_failures.load(Ordering::Relaxed)
    }

    /// `POST /records` requests that came over HTTP/2.
    pub fn http2_requests(&self) -> u64 {
        self.shared.http2_requests.load(Ordering::Relaxed)
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
            let client = crate::tls::plain_client();
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
    ///
    /// # Errors
    /// The producer cannot be created.
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
        format!("{}://{}/health", self.scheme, self.addr)
    }

    /// The `traceparent` header of each request that carried one.
    pub fn request_traceparents(&self) -> Vec<String> {
        self.shared
            .traceparents
            .lock()
            .expect("traceparents lock")
            .clone()
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
        // `shutdown_background` does not wait for a handler a worker thread
        // is running: without this, one could still log its batch after
        // `kill` returned.
        {
            let _log = self.shared.log.lock().expect("log lock");
            self.shared.killed.store(true, Ordering::Relaxed);
        }
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

/// The acceptor of an HTTPS app server.
fn server_tls(tls: &AppTls) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = crate::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = Arc::new(crate::tls::read_roots(ca)?);
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(
        crate::tls::read_certs(&tls.cert)?,
        crate::tls::read_key(&tls.key, None)?,
    )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections and serves `app` on them (HTTP/1.1 or HTTP/2,
/// as ALPN chose), noting each connection's client certificate.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    shared: Arc<Shared>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    while let Ok((stream, _)) = listener.accept().await {
        let (acceptor, app, shared) = (acceptor.clone(), app.clone(), shared.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(_) => {
                    shared.tls_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default();
            shared.client_certs.lock().expect("certs lock").push(cert);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Reads a server's log file (lines in arrival order; a torn last line, from
/// a crash mid-write, is skipped — its batch was never acknowledged).
///
/// # Errors
/// The file cannot be read, or a complete line is not a [`LogLine`].
pub fn read_log(path: &std::path::Path) -> anyhow::Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
