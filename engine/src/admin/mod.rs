//! Admin API (axum): health, readiness, Prometheus metrics, targets, plugins,
//! and the capacity push endpoint for application servers.
//!
//! | method | path | access |
//! |---|---|---|
//! | GET | `/healthz` | open: 200 while the process runs |
//! | GET | `/readyz` | open: 200 once the consumer joined its group and a target is up, else 503 with the reason |
//! | GET | `/metrics` | read: Prometheus text format |
//! | GET | `/v1/targets` | read: the current target snapshot (JSON); an `sse://` target also has `subscribers` and its `stream` ([`crate::sink::sse::StreamStatus`]) |
//! | PUT | `/v1/targets/{id}/capacity` | report: a [`CapacityReport`] |
//! | GET | `/v1/plugins` | read: each plugin's version (sha256), source, calls, faults, previous version, last error |
//! | PUT | `/v1/plugins/{name}` | write: body a `.wasm` component; compiled, `init`-ed, then swapped in |
//! | POST | `/v1/plugins/{name}/rollback` | write: swap the previous version back in |
//! | GET | `/v1/plugins/{name}/capture?records=N` | write: the router's next N records as routed (JSON lines, a batch each), for `plugin test --replay` and `simulate --trace` |
//! | POST | `/v1/plugins/{name}/promote-shadow` | write: the shadow router (`[router.shadow]`) becomes router `name` through the normal swap |
//! | GET | `/v1/partitions` | read: assigned partitions: committed offset, high watermark, lag (records, seconds), in flight, held back |
//! | GET | `/v1/stats` | read: counters since the start per target (deliveries, latency buckets, breaker) and dead letters by stage and reason; readers take differences |
//! | GET | `/ui` | host check only: the dashboard page (its data comes from the read endpoints) |
//! | GET | `/v1/route?key=K` | read: where a record with that key would be delivered now, and why ([`crate::route::Lookup`]); `POST` asks for many keys at once |
//! | GET | `/v1/events` | read: server-sent events of what changed (`Last-Event-ID` resumes; see [`crate::events`]) |
//! | GET | `/v1/streams/{name}` | read: the server-sent events of an `sse://NAME` target (`Last-Event-ID` or `?lastEventId=` resumes; see [`crate::sink::sse`]); `GET /v1/streams` lists the streams, subscribers and their lag |
//! | GET | `/v1/config` | read: the active config (secrets redacted) and the last reload's outcome |
//! | POST | `/v1/reload` | write: re-read the config file and apply the difference |
//!
//! Access, checked in layers before a handler reads a body
//! (`Authorization: Bearer <token>`, scheme case-insensitive per RFC 7235,
//! tokens compared in constant time):
//! - every path but `/healthz` and `/readyz` answers only the `Host` names
//!   of `admin.allowed_hosts` (against DNS rebinding; 403 otherwise);
//! - *read*: when `admin.read_token` is set, it or `admin.token`;
//! - *write*: `admin.token` when set; without one (only allowed on a
//!   loopback listen address) a request from a web page of another origin
//!   (`Origin` or `Sec-Fetch-Site` says so) is refused;
//! - *report*: the target's own `targets[].report_token` or `admin.token`;
//!   a target without a report token takes the admin token (if any).
//!
//! Errors are JSON `{"error": "..."}` naming the field and what is valid.

mod lookup;
mod streams;
mod ui;

use crate::capacity::report::MAX_REPORT_BYTES;
use crate::capacity::{CapacityReport, Feed, Health, Registry, ReportError};
use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::plugin::slot::{PluginManager, ReloadError};
use crate::reload::ConfigReloader;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Who may do what on the admin API (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `admin.token`: mutations; reads too.
    pub token: Option<String>,
    /// `admin.read_token`: reads.
    pub read_token: Option<String>,
    /// `Host` values answered (lower case, host or host:port); `None`: any.
    pub hosts: Option<Vec<String>>,
}

impl Access {
    /// The access rules of `[admin]`.
    pub fn from_config(c: &AdminConfig) -> Access {
        Access {
            token: c.token.clone(),
            read_token: c.read_token.clone(),
            hosts: c.host_allow_list(),
        }
    }
}

/// What the handlers share.
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub access: Access,
    /// Permits for plugin uploads being read and compiled
    /// (`admin.max_concurrent_uploads`).
    pub uploads: Arc<Semaphore>,
    /// None only in tests of the other endpoints.
    pub plugins: Option<Arc<PluginManager>>,
    pub reloader: Option<Arc<ConfigReloader>>,
    /// The fleet's control topic, unless `control.enabled = false`.
    pub control: Option<Arc<crate::control::Control>>,
    /// The partitions assigned to this process.
    pub partitions: crate::source::Partitions,
    /// The router step, for route lookups; None only in tests of the
    /// other endpoints.
    pub routing: Option<Arc<crate::route::Routing>>,
    /// `kafka.topics`: the topics a lookup may name (the first is the
    /// default).
    pub topics: Vec<Arc<str>>,
    /// The dispatcher, for the streams of `sse://` targets; None only in
    /// tests of the other endpoints.
    pub dispatch: Option<Arc<crate::dispatch::Dispatcher>>,
}

/// The admin routes, with their access layers.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    let read = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/targets", get(targets))
        .route("/v1/plugins", get(plugins))
        .route("/v1/config", get(show_config))
        .route("/v1/fleet", get(fleet))
        .route("/v1/events", get(events))
        .route("/v1/partitions", get(partitions))
        .route("/v1/stats", get(stats))
        .route("/v1/route", get(lookup::get_route).post(lookup::post_route))
        .route("/v1/streams", get(streams::list))
        .route("/v1/streams/{name}", get(streams::subscribe))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let write = axum::Router::new()
        .route("/v1/plugins/{name}", put(upload_plugin))
        .route("/v1/plugins/{name}/rollback", post(rollback_plugin))
        .route("/v1/plugins/{name}/promote-shadow", post(promote_shadow))
        .route("/v1/plugins/{name}/capture", get(capture_router))
        .route("/v1/reload", post(reload_config))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_write));
    let report = axum::Router::new()
        .route(
            "/v1/targets/{id}/capacity",
            put(push_capacity).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_report,
        ));
    let ui = axum::Router::new()
        .route("/ui", get(|| ui::asset("index.html")))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| ui::asset_owned(file)),
        );
    let guarded = read
        .merge(write)
        .merge(report)
        .merge(ui)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_host));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(state)
}

/// How long a stop waits for admin requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` changes: at most
/// `admin.max_connections` connections at once (one over it is closed at
/// once and counted), each closed when it takes longer than
/// `admin.header_read_timeout_ms` to send a request's headers or sits idle
/// that long between requests (hyper's header read timeout, which runs
/// while a connection waits for its next request). HTTP/1.1.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cfg: &AdminConfig,
    tls: Option<Arc<crate::tls::ServerTls>>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    // HTTP/1.1 only: a version-sniffing server would wait for a silent
    // client's first bytes before any timeout runs.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    tracing::warn!(error = %e, "admin API could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics
                .admin_refused
                .with_label_values(&["connections"])
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let Some(tls) = &tls else {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                // A client gone or too slow is the client's problem, not an error.
                let _ = conn.await;
                drop(permit);
            });
            continue;
        };
        // The handshake runs in the connection's task, under the same
        // deadline as reading a request's headers; the graceful stop
        // watches the connection once it speaks HTTP.
        let (acceptor, builder, watcher, metrics) = (
            tls.acceptor(),
            builder.clone(),
            graceful.watcher(),
            metrics.clone(),
        );
        let handshake_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    let _ = watcher.watch(conn).await;
                }
                Ok(Err(e)) => {
                    metrics.admin_refused.with_label_values(&["tls"]).inc();
                    tracing::debug!(error = %e, "admin API TLS handshake failed");
                }
                Err(_) => {
                    metrics.admin_refused.with_label_values(&["tls"]).inc();
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    // Event streams never end by themselves.
    metrics.events.close();
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the stop grace; closing them");
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// matched case-insensitively (RFC 7235 §2.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `given` equals `want`, in time that depends on neither: both
/// are hashed first, so even their lengths do not show.
pub fn token_matches(given: &str, want: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(want));
    a.ct_eq(&b).into()
}

/// Whether the request carries one of `accepted` (unset ones skipped);
/// true when none is set.
fn carries(headers: &HeaderMap, accepted: &[Option<&str>]) -> bool {
    let set: Vec<&str> = accepted.iter().flatten().copied().collect();
    if set.is_empty() {
        return true;
    }
    let Some(given) = bearer(headers) else {
        return false;
    };
    // Every candidate is compared, so the time does not tell which matched.
    set.iter()
        .fold(false, |ok, want| token_matches(given, want) | ok)
}

fn refuse(s: &AdminState, reason: &str, status: StatusCode, msg: String) -> Response {
    s.metrics.admin_refused.with_label_values(&[reason]).inc();
    error(status, msg)
}

fn unauthorized(s: &AdminState, what: &str) -> Response {
    refuse(
        s,
        "token",
        StatusCode::UNAUTHORIZED,
        format!("missing or wrong bearer token (Authorization: Bearer <{what}>)"),
    )
}

async fn require_host(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &s.access.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
            .or_else(|| {
                req.uri()
                    .authority()
                    .map(|a| a.as_str().to_ascii_lowercase())
            })
            .unwrap_or_default();
        let name = strip_port(&host);
        if !hosts.iter().any(|h| *h == host || h == name) {
            let msg = format!(
                "host {host:?} is not served here; allowed: {} (admin.allowed_hosts)",
                hosts.join(", ")
            );
            return refuse(&s, "host", StatusCode::FORBIDDEN, msg);
        }
    }
    next.run(req).await
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

async fn require_read(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let a = &s.access;
    // Reads are guarded only once a read token is configured; the admin
    // token is accepted there too.
    let accepted = match &a.read_token {
        None => vec![],
        Some(r) => vec![Some(r.as_str()), a.token.as_deref()],
    };
    if !carries(req.headers(), &accepted) {
        return unauthorized(&s, "admin.read_token or admin.token");
    }
    next.run(req).await
}

async fn require_write(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    match &s.access.token {
        Some(t) if !carries(req.headers(), &[Some(t)]) => unauthorized(&s, "admin.token"),
        Some(_) => next.run(req).await,
        None => match cross_origin(req.headers()) {
            Some(origin) => refuse(
                &s,
                "origin",
                StatusCode::FORBIDDEN,
                format!(
                    "a request from {origin} may not change CDRS while admin.token is unset; \
                     set admin.token to allow remote changes"
                ),
            ),
            None => next.run(req).await,
        },
    }
}

/// The other origin a browser says a request comes from, if it does:
/// `Origin` other than `http://` + the request's own `Host`, or
/// `Sec-Fetch-Site: cross-site|same-site`.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(origin) = get(header::ORIGIN) {
        let host = get(header::HOST).unwrap_or_default();
        let same = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
        if !same {
            return Some(format!("origin {origin:?}"));
        }
    }
    match get(header::HeaderName::from_static("sec-fetch-site")) {
        Some(site @ ("cross-site" | "same-site")) => Some(format!("a {site} page")),
        _ => None,
    }
}

async fn require_report(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
    req: Request,
    next: Next,
) -> Response {
    let own = s.registry.report_token(&id);
    let accepted = [own.as_deref(), s.access.token.as_deref()];
    if !carries(req.headers(), &accepted) {
        let what = if own.is_some() {
            "the target's report_token or admin.token"
        } else {
            "admin.token"
        };
        return unauthorized(&s, what);
    }
    next.run(req).await
}

/// `GET /readyz`: 200 when the consumer joined its group (partitions are
/// assigned, or the group gave this process none), the plugins are loaded
/// (they are, once the admin server runs) and at least one target is not
/// down; else 503 naming what is missing. `/healthz` is liveness only.
async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let not_ready = |why: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    };
    if !s.ready.load(Ordering::Relaxed) {
        return not_ready("consumer has not joined its group yet");
    }
    let snapshot = s.registry.snapshot();
    if !snapshot.targets.iter().any(|t| t.health != Health::Down) {
        return not_ready("no target is up (see GET /v1/targets for why)");
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn targets(State(s): State<Arc<AdminState>>) -> Response {
    let mut snapshot = serde_json::to_value(&*s.registry.snapshot()).unwrap_or_default();
    redact_url_passwords(&mut snapshot);
    if let Some(d) = &s.dispatch {
        streams::add_to_targets(&mut snapshot, &d.streams.status());
    }
    Json(snapshot).into_response()
}

async fn stats(State(s): State<Arc<AdminState>>) -> Response {
    let dead_letters: Vec<serde_json::Value> = s
        .metrics
        .dead_letter_reasons
        .totals()
        .into_iter()
        .map(|(stage, reason, count)| serde_json::json!({"stage": stage, "reason": reason, "count": count}))
        .collect();
    Json(serde_json::json!({
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "records_in": s.metrics.get("source", "in"),
        "targets": s.metrics.target_stats(),
        "dead_letters": dead_letters,
    }))
    .into_response()
}

async fn partitions(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.partitions.status()).into_response()
}

async fn plugins(State(s): State<Arc<AdminState>>) -> Response {
    match &s.plugins {
        Some(m) => Json(m.status()).into_response(),
        None => Json(Vec::<()>::new()).into_response(),
    }
}

/// Longest silence on `/v1/events` before a keep-alive comment: proxies and
/// load balancers close idle connections after 30–60 s (nginx's
/// `proxy_read_timeout` default is 60 s).
pub const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/events`: the events after the request's `Last-Event-ID` (if
/// any) from the bounded history, then live ones, each as
/// `id: N` + `data: {json}`. The stream ends when the process stops or this
/// client falls too far behind; a client then reconnects with
/// `Last-Event-ID` and misses nothing the history still holds.
async fn events(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    use futures::StreamExt;
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let sub = s.metrics.events.subscribe(last);
    let live = futures::stream::unfold((sub.live, sub.closed), |(mut rx, closed)| async move {
        if closed {
            return None;
        }
        match rx.recv().await {
            Ok(Some(e)) => Some((e, (rx, false))),
            // Stopping, or fallen behind: the client resumes by id.
            Ok(None) | Err(_) => None,
        }
    });
    let stream = futures::stream::iter(sub.backlog).chain(live).map(|e| {
        let data = serde_json::to_string(&*e).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(sse::Event::default().id(e.id.to_string()).data(data))
    });
    sse_response(stream, EVENTS_KEEP_ALIVE)
}

/// A `text/event-stream` answer of `events`, with a keep-alive comment
/// after `keep_alive` of silence, not cached, not buffered by proxies.
fn sse_response<S>(events: S, keep_alive: Duration) -> Response
where
    S: futures::Stream<Item = Result<sse::Event, std::convert::Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        "no-cache".parse().expect("valid header"),
    );
    // nginx buffers responses unless told not to.
    h.insert("x-accel-buffering", "no".parse().expect("valid header"));
    response
}

/// Largest accepted plugin upload, bytes (64 MiB: Python and JavaScript
/// components run to tens of MB).
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// How long a plugin upload's body may take to arrive.
pub const UPLOAD_BODY_TIMEOUT: Duration = Duration::from_secs(120);

fn reload_response(
    r: Result<Result<String, ReloadError>, tokio::task::JoinError>,
    name: &str,
) -> Response {
    match r {
        Ok(Ok(version)) => Json(serde_json::json!({
            "name": name,
            "version": version,
            "scope": "this process only, until it restarts; `cdrs plugin deploy` deploys to \
                      the whole fleet and survives restarts",
        }))
        .into_response(),
        Ok(Err(e @ ReloadError::UnknownPlugin(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ ReloadError::Rollback(_))) => error(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{e}; the running version keeps serving"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("plugin load task failed: {e}"),
        ),
    }
}

/// Runs a plugin operation (which may compile) off the async workers.
async fn plugin_op(
    s: &AdminState,
    name: String,
    op: impl FnOnce(&PluginManager, &str) -> Result<String, ReloadError> + Send + 'static,
) -> Response {
    let Some(m) = s.plugins.clone() else {
        return error(StatusCode::NOT_FOUND, "no plugins loaded");
    };
    let n = name.clone();
    let task = move || crate::panic::contained(|| op(&m, &n));
    reload_response(tokio::task::spawn_blocking(task).await, &name)
}

/// `PUT /v1/plugins/{name}`: the token was checked by [`require_write`]
/// before any of the body was read; the body is then read (at most
/// [`MAX_PLUGIN_BYTES`], within [`UPLOAD_BODY_TIMEOUT`]) only while one of
/// `admin.max_concurrent_uploads` permits is held.
async fn upload_plugin(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let Ok(_permit) = s.uploads.clone().try_acquire_owned() else {
        return refuse(
            &s,
            "uploads",
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} plugin uploads are in progress (admin.max_concurrent_uploads); try again later",
                s.uploads.available_permits().max(1)
            ),
        );
    };
    let read = axum::body::to_bytes(body, MAX_PLUGIN_BYTES);
    let body: Bytes = match tokio::time::timeout(UPLOAD_BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            return if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a plugin upload is at most {MAX_PLUGIN_BYTES} bytes"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("failed to read the upload: {e}"),
                )
            };
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the upload did not arrive within {} s",
                    UPLOAD_BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    plugin_op(&s, name, move |m, n| m.upload(n, &body)).await
}

async fn rollback_plugin(State(s): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    plugin_op(&s, name, |m, n| m.rollback(n)).await
}

/// Default records of a capture.
pub const DEFAULT_CAPTURE_RECORDS: usize = 1_000;

/// Default and largest wait of a capture, ms.
pub const DEFAULT_CAPTURE_TIMEOUT_MS: u64 = 30_000;
pub const MAX_CAPTURE_TIMEOUT_MS: u64 = 300_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureQuery {
    records: Option<usize>,
    timeout_ms: Option<u64>,
}

/// `GET /v1/plugins/{name}/capture?records=N&timeout_ms=T`: waits for the
/// router's next `N` records (default 1,000, at most 100,000) or `T` ms
/// (default 30,000, at most 300,000), then answers them as JSON lines, one
/// routed batch each ([`crate::plugin::testbed::capture_line`]).
async fn capture_router(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    use crate::plugin::capture::MAX_CAPTURE_RECORDS;
    let q: CaptureQuery = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad query string: {e}; valid: records (1..={MAX_CAPTURE_RECORDS}), timeout_ms (1..={MAX_CAPTURE_TIMEOUT_MS})"),
            )
        }
    };
    let records = q.records.unwrap_or(DEFAULT_CAPTURE_RECORDS);
    if !(1..=MAX_CAPTURE_RECORDS).contains(&records) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("records {records} is out of range 1..={MAX_CAPTURE_RECORDS}"),
        );
    }
    let timeout_ms = q.timeout_ms.unwrap_or(DEFAULT_CAPTURE_TIMEOUT_MS);
    if !(1..=MAX_CAPTURE_TIMEOUT_MS).contains(&timeout_ms) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("timeout_ms {timeout_ms} is out of range 1..={MAX_CAPTURE_TIMEOUT_MS}"),
        );
    }
    let (Some(plugins), Some(routing)) = (&s.plugins, &s.routing) else {
        return error(StatusCode::NOT_FOUND, "no pipeline runs here");
    };
    let router = plugins.router.current().meta.name.to_string();
    if name != router {
        let what = if plugins.has(&name) {
            format!("{name:?} is a filter; a capture records what the router {router:?} is given")
        } else {
            format!("no plugin named {name:?}; the router is {router:?}")
        };
        return error(StatusCode::NOT_FOUND, what);
    }
    let done = match routing.capture.start(records) {
        Ok(rx) => rx,
        Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
    };
    let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), done).await;
    let lines = routing.capture.finish();
    let mut body = String::new();
    for l in &lines {
        body.push_str(&l.to_string());
        body.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// `POST /v1/plugins/{name}/promote-shadow`: the shadow router becomes
/// router `name` (see [`PluginManager::promote_shadow`]).
async fn promote_shadow(State(s): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    plugin_op(&s, name, |m, n| m.promote_shadow(n)).await
}

async fn push_capacity(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let e = s
                .registry
                .reject(&id, ReportError::Oversized(MAX_REPORT_BYTES + 1));
            return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        Err(e) => return error(e.status(), e.to_string()),
    };
    let result = CapacityReport::parse(&body)
        .map_err(|e| s.registry.reject(&id, e))
        .and_then(|r| s.registry.report(&id, r, Feed::Http));
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let status = match &e {
                ReportError::Oversized(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ReportError::UnknownTarget(_) => StatusCode::NOT_FOUND,
                ReportError::EndpointNotAllowed { .. } | ReportError::TooManyTargets { .. } => {
                    StatusCode::FORBIDDEN
                }
                ReportError::RateLimited { .. } | ReportError::JoinRateLimited { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                _ => StatusCode::BAD_REQUEST,
            };
            let msg = match &e {
                ReportError::Invalid(_) => format!(
                    "{e}; expected JSON {{\"capacity\": u32, \"inflight\": u32, \"queue_depth\": u32, \
                     \"cpu_permille\": 0..=1000, \"mem_permille\": 0..=1000, \"latency_p99_ms\": u32, \
                     \"draining\": bool, \"zone\": str, \"labels\": {{str: str}}, \"sent_at_ms\": i64, \
                     \"server_id\": str, \"endpoint\": url}} (see sdk/capacity-report.schema.json)"
                ),
                _ => e.to_string(),
            };
            error(status, msg)
        }
    }
}

/// Redacts `kafka.options` values whose key suggests a secret, and the
/// password of target URLs (`http://user:pass@host/…`: reqwest sends it as
/// basic auth), keeping the rest of the URL.
fn redact(mut config: serde_json::Value) -> serde_json::Value {
    redact_url_passwords(&mut config);
    if let Some(opts) = config
        .pointer_mut("/kafka/options")
        .and_then(|o| o.as_object_mut())
    {
        for (k, v) in opts.iter_mut() {
            if crate::redact::is_secret_option(k) {
                *v = serde_json::Value::String("<redacted>".into());
            }
        }
    }
    config
}

/// Replaces the password of every `targets[].url` / `health_url` in
/// `doc` (a config or a target snapshot as JSON) with `redacted`.
fn redact_url_passwords(doc: &mut serde_json::Value) {
    if let Some(targets) = doc.pointer_mut("/targets").and_then(|t| t.as_array_mut()) {
        for t in targets {
            for field in ["url", "health_url"] {
                let Some(v) = t.get_mut(field) else { continue };
                if let Some(u) = v.as_str() {
                    *v = serde_json::Value::String(crate::redact::url(u).into_owned());
                }
            }
        }
    }
}

/// `GET /v1/fleet`: the latest deployment of each plugin and what each
/// instance of the fleet runs (its last published status; this one's now).
async fn fleet(State(s): State<Arc<AdminState>>) -> Response {
    match &s.control {
        Some(c) => Json(c.fleet()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no control topic: control.enabled is false, so this process takes no fleet deployments",
        ),
    }
}

async fn show_config(State(s): State<Arc<AdminState>>) -> Response {
    let Some(r) = &s.reloader else {
        return error(StatusCode::NOT_FOUND, "no config loaded");
    };
    let config = serde_json::to_value(r.active()).unwrap_or_default();
    Json(serde_json::json!({
        "file": r.path().map(|p| p.display().to_string()),
        "config": redact(config),
        "last_reload": r.last(),
    }))
    .into_response()
}

async fn reload_config(State(s): State<Arc<AdminState>>) -> Response {
    let Some(r) = s.reloader.clone() else {
        return error(StatusCode::NOT_FOUND, "no config loaded");
    };
    match tokio::task::spawn_blocking(move || crate::panic::contained(|| r.reload())).await {
        Ok(report) if report.ok => Json(report).into_response(),
        Ok(report) => (StatusCode::UNPROCESSABLE_ENTITY, Json(report)).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload task failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CapacityConfig, TargetConfig};
    use axum::body::Body;
    use axum::http::Request;
    use futures::StreamExt;
    use tower::ServiceExt;

    fn app(token: Option<&str>) -> (axum::Router, Arc<AdminState>) {
        let metrics = Arc::new(Metrics::new());
        let t = TargetConfig::new("a", "http://svc:s3cret@127.0.0.1:1/", 5);
        let registry = Arc::new(Registry::new(
            CapacityConfig::default(),
            &[t],
            metrics.clone(),
        ));
        let access = Access {
            token: token.map(str::to_string),
            ..Access::default()
        };
        let state = state(registry, metrics, access, 2, None);
        (router(state.clone()), state)
    }

    /// Handler state without plugins, reloader, control topic or router.
    fn state(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        access: Access,
        uploads: usize,
        dispatch: Option<Arc<crate::dispatch::Dispatcher>>,
    ) -> Arc<AdminState> {
        Arc::new(AdminState {
            registry,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            access,
            uploads: Arc::new(Semaphore::new(uploads)),
            plugins: None,
            reloader: None,
            control: None,
            partitions: Default::default(),
            routing: None,
            topics: Vec::new(),
            dispatch,
        })
    }

    async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The `data:` lines of an SSE body until `n` arrived.
    async fn sse_data(body: Body, n: usize) -> Vec<serde_json::Value> {
        let mut frames = body.into_data_stream();
        let mut text = String::new();
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), frames.next())
                .await
                .expect("an event within 5 s")
                .expect("stream open")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        out.push(serde_json::from_str(d).unwrap());
                    }
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn events_stream_live_and_resume_after_the_last_event_id() {
        let (app, state) = app(None);
        // The registry announced its configured target.
        let first = state.metrics.events.recent(1);
        assert_eq!(first[0].kind, "target.joined");
        state
            .registry
            .eject("a", Duration::from_secs(60), "refused: test");
        state.registry.refresh();
        let resp = app
            .clone()
            .oneshot(req("GET", "/v1/events", &[("last-event-id", "1")]))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = resp.into_body();
        let live = tokio::spawn(sse_data(body, 2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        state.metrics.events.publish(
            "config.reloaded",
            serde_json::json!({"changed": ["targets"]}),
        );
        let got = live.await.unwrap();
        assert_eq!(got[0]["type"], "target.health", "{got:?}");
        assert_eq!(
            (&got[0]["target"], &got[0]["to"]),
            (&"a".into(), &"down".into())
        );
        assert!(got[0]["reason"].as_str().unwrap().contains("refused: test"));
        assert_eq!(
            (got[0]["id"].as_u64(), got[1]["id"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(got[1]["type"], "config.reloaded");
        // A resume from id 2 gets exactly id 3.
        let resp = app
            .oneshot(req("GET", "/v1/events", &[("last-event-id", "2")]))
            .await
            .unwrap();
        let again = sse_data(resp.into_body(), 1).await;
        assert_eq!(again[0]["id"], 3);
    }

    #[tokio::test]
    async fn the_dashboard_is_served_with_a_strict_csp_and_only_its_own_files() {
        let (app, _) = app(Some("t0ken-for-writes"));
        for (path, status, kind) in [
            ("/ui", StatusCode::OK, "text/html"),
            ("/ui/app.js", StatusCode::OK, "text/javascript"),
            ("/ui/style.css", StatusCode::OK, "text/css"),
            ("/ui/secret.txt", StatusCode::NOT_FOUND, "text/plain"),
        ] {
            let resp = app.clone().oneshot(req("GET", path, &[])).await.unwrap();
            assert_eq!(resp.status(), status, "{path}");
            let h = resp.headers();
            assert!(
                h["content-type"].to_str().unwrap().starts_with(kind),
                "{path}: {h:?}"
            );
            if status == StatusCode::OK {
                let csp = h["content-security-policy"].to_str().unwrap();
                assert!(
                    csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'")
                );
                assert_eq!(h["x-content-type-options"], "nosniff");
            }
        }
        // The page is open (it holds no data); what it reads is not.
        let (status, _) = send(&app, req("GET", "/v1/stats", &[])).await;
        assert_eq!(status, StatusCode::OK, "no read token set: reads are open");
    }

    #[test]
    fn redact_hides_url_passwords_and_secret_options() {
        let config = serde_json::json!({
            "kafka": {"options": {"sasl.password": "hunter2", "linger.ms": "5"}},
            "targets": [
                {"id": "a", "url": "http://svc:s3cret@10.0.0.5:8080/records",
                 "health_url": "http://svc:s3cret@10.0.0.5:8080/health"},
                {"id": "b", "url": "http://token@10.0.0.6:8080/records"},
                {"id": "c", "url": "kafka://out"},
            ],
        });
        let shown = redact(config).to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("\"url\":\"http://svc:redacted@10.0.0.5:8080/records\""),
            "{shown}"
        );
        assert!(
            shown.contains("\"health_url\":\"http://svc:redacted@10.0.0.5:8080/health\""),
            "{shown}"
        );
        assert!(
            shown.contains("\"http://token@10.0.0.6:8080/records\""),
            "{shown}"
        );
        assert!(shown.contains("\"kafka://out\""), "{shown}");
        assert!(shown.contains("\"linger.ms\":\"5\""), "{shown}");
    }

    #[tokio::test]
    async fn the_target_list_hides_url_passwords() {
        let (app, _) = app(None);
        let (s, body) = send(
            &app,
            Request::get("/v1/targets").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(!body.contains("s3cret"), "{body}");
        assert!(body.contains("http://svc:redacted@127.0.0.1:1/"), "{body}");
    }

    #[tokio::test]
    async fn an_oversized_report_gets_a_json_413_naming_the_limit_and_is_counted() {
        let (app, state) = app(None);
        for size in [MAX_REPORT_BYTES + 10, 3 << 20] {
            let body = format!(r#"{{"capacity":1,"zone":"{}"}}"#, "z".repeat(size));
            let (s, body) = send(&app, put_capacity("a", &body, None)).await;
            assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            let msg = v["error"].as_str().unwrap();
            assert!(msg.contains(&MAX_REPORT_BYTES.to_string()), "{msg}");
        }
        let rejected = state
            .metrics
            .capacity_reports
            .with_label_values(&["rejected", "oversized"])
            .get();
        assert_eq!(rejected, 2);
    }

    fn put_capacity(id: &str, body: &str, token: Option<&str>) -> Request<Body> {
        let mut b = Request::put(format!("/v1/targets/{id}/capacity"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn capacity_push_updates_the_snapshot_and_rejects_bad_reports() {
        let (app, state) = app(None);
        let (s, _) = send(
            &app,
            put_capacity("a", r#"{"capacity":42,"inflight":1}"#, None),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(state.registry.snapshot().targets[0].capacity, 42);

        let (s, body) = send(&app, put_capacity("a", r#"{"capacity":-3}"#, None)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("capacity"), "{body}");
        let (s, body) = send(
            &app,
            put_capacity("a", r#"{"capacity":1,"cpu_permille":5000}"#, None),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("cpu_permille"), "{body}");
        let (s, _) = send(&app, put_capacity("nope", r#"{"capacity":1}"#, None)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            state.registry.snapshot().targets[0].capacity,
            42,
            "last good state kept"
        );

        let (s, body) = send(
            &app,
            Request::get("/v1/targets").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("\"capacity\":42"), "{body}");
        let (s, body) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            body.contains(
                "cdrs_capacity_reports_total{reason=\"out_of_range\",result=\"rejected\"} 1"
            ),
            "{body}"
        );
    }

    #[tokio::test]
    async fn mutations_need_the_token_and_readiness_follows_the_group() {
        let (app, state) = app(Some("s3cret"));
        let (s, _) = send(&app, put_capacity("a", r#"{"capacity":1}"#, None)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = send(&app, put_capacity("a", r#"{"capacity":1}"#, Some("wrong"))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = send(&app, put_capacity("a", r#"{"capacity":1}"#, Some("s3cret"))).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Relaxed);
        let (s, _) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        // Its only target ejected: not ready, and the answer says why.
        state
            .registry
            .eject("a", std::time::Duration::from_secs(60), "test");
        state.registry.refresh();
        let (s, body) = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no target is up"), "{body}");
    }

    fn with_access(access: Access, uploads: usize) -> axum::Router {
        let (_, base) = app(None);
        router(state(
            base.registry.clone(),
            base.metrics.clone(),
            access,
            uploads,
            None,
        ))
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    /// A wrong token on an upload is refused before one byte of the body
    /// is read (the body here would be 60 MiB, made as it is polled).
    #[tokio::test]
    async fn an_upload_with_a_wrong_token_is_refused_before_its_body_is_read() {
        let (app, state) = app(Some("s3cret"));
        let polled = Arc::new(AtomicBool::new(false));
        let p = polled.clone();
        let chunks = futures::stream::iter(0..60).map(move |_| {
            p.store(true, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20]))
        });
        let upload = Request::put("/v1/plugins/router")
            .header("authorization", "Bearer WRONG")
            .body(Body::from_stream(chunks))
            .unwrap();
        let (s, body) = send(&app, upload).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert!(!polled.load(Ordering::Relaxed), "the body was never read");
        let refused = state.metrics.admin_refused.with_label_values(&["token"]);
        assert_eq!(refused.get(), 1);
    }

    /// With the token right, uploads beyond `admin.max_concurrent_uploads`
    /// get 429 instead of each buffering up to 64 MiB.
    #[tokio::test]
    async fn uploads_beyond_the_cap_get_429() {
        let access = Access {
            token: Some("s3cret".into()),
            ..Access::default()
        };
        let app = with_access(access, 0);
        let upload = req(
            "PUT",
            "/v1/plugins/router",
            &[("authorization", "Bearer s3cret")],
        );
        let (s, body) = send(&app, upload).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(body.contains("admin.max_concurrent_uploads"), "{body}");
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let (app, _) = app(Some("s3cret"));
        for (auth, want) in [
            ("Bearer s3cret", StatusCode::NO_CONTENT),
            ("bearer s3cret", StatusCode::NO_CONTENT),
            ("BEARER  s3cret ", StatusCode::NO_CONTENT),
            ("Basic s3cret", StatusCode::UNAUTHORIZED),
            ("Bearer s3cre", StatusCode::UNAUTHORIZED),
            ("Bearer s3cretX", StatusCode::UNAUTHORIZED),
            ("Bearer", StatusCode::UNAUTHORIZED),
        ] {
            let mut r = put_capacity("a", r#"{"capacity":1}"#, None);
            r.headers_mut()
                .insert("authorization", auth.parse().unwrap());
            let (s, body) = send(&app, r).await;
            assert_eq!(s, want, "{auth:?}: {body}");
        }
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd") && !token_matches("ab", "abc"));
    }

    /// `admin.read_token` guards what reveals the deployment; it cannot
    /// change anything; health and readiness stay open.
    #[tokio::test]
    async fn the_read_token_guards_reads_and_cannot_write() {
        let access = Access {
            token: Some("admin-token".into()),
            read_token: Some("read-token".into()),
            hosts: None,
        };
        let app = with_access(access, 2);
        for path in [
            "/metrics",
            "/v1/targets",
            "/v1/plugins",
            "/v1/config",
            "/v1/streams",
            "/v1/streams/quotes",
        ] {
            let (s, _) = send(&app, req("GET", path, &[])).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} without a token");
            for t in ["read-token", "admin-token"] {
                let auth = format!("Bearer {t}");
                let (s, _) = send(&app, req("GET", path, &[("authorization", &auth)])).await;
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{path} with {t}");
            }
        }
        for path in ["/healthz", "/readyz"] {
            let (s, _) = send(&app, req("GET", path, &[])).await;
            assert_ne!(s, StatusCode::UNAUTHORIZED, "{path} is open");
        }
        let read = [("authorization", "Bearer read-token")];
        let (s, _) = send(&app, req("POST", "/v1/reload", &read)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "the read token cannot reload");
        let (s, _) = send(&app, req("PUT", "/v1/plugins/router", &read)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "nor upload");
        let mut r = put_capacity("a", r#"{"capacity":1}"#, None);
        r.headers_mut()
            .insert("authorization", "Bearer read-token".parse().unwrap());
        let (s, _) = send(&app, r).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "nor report capacity");
        // No read token: reads stay open, whatever guards the mutations.
        let (guarded_writes, _) = super::tests::app(Some("admin-token"));
        let (s, _) = send(&guarded_writes, req("GET", "/v1/targets", &[])).await;
        assert_eq!(s, StatusCode::OK);
    }

    /// DNS rebinding: a page on `evil.example` resolving to 127.0.0.1 sends
    /// `Host: evil.example`; only the allowed names are answered.
    #[tokio::test]
    async fn only_allowed_hosts_are_answered() {
        let cfg = AdminConfig {
            listen: "127.0.0.1:9090".into(),
            ..AdminConfig::default()
        };
        let app = with_access(Access::from_config(&cfg), 2);
        for host in [
            "localhost:9090",
            "127.0.0.1:9090",
            "LOCALHOST",
            "[::1]:9090",
        ] {
            let (s, body) = send(&app, req("GET", "/v1/targets", &[("host", host)])).await;
            assert_eq!(s, StatusCode::OK, "{host}: {body}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
        ] {
            let (s, body) = send(&app, req("GET", "/v1/targets", &[("host", host)])).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{host}: {body}");
            assert!(body.contains("admin.allowed_hosts"), "{body}");
        }
        let (s, _) = send(&app, req("GET", "/healthz", &[("host", "evil.example")])).await;
        assert_eq!(s, StatusCode::OK, "liveness answers any host");
        // 0.0.0.0 serves any host; an explicit list replaces the default.
        let any = AdminConfig {
            listen: "0.0.0.0:9090".into(),
            ..AdminConfig::default()
        };
        assert_eq!(any.host_allow_list(), None);
        let listed = AdminConfig {
            allowed_hosts: vec!["cdrs.internal".into()],
            ..any
        };
        assert_eq!(listed.host_allow_list(), Some(vec!["cdrs.internal".into()]));
    }

    /// Without a token, a web page of another origin cannot reload, roll
    /// back or upload (a `text/plain` cross-origin POST needs no CORS
    /// preflight); a local client without `Origin` still can.
    #[tokio::test]
    async fn without_a_token_cross_origin_mutations_are_refused() {
        let (app, state) = app(None);
        for headers in [
            vec![
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:9090"),
            ],
            vec![("origin", "null"), ("host", "127.0.0.1:9090")],
            vec![("sec-fetch-site", "cross-site"), ("host", "127.0.0.1:9090")],
        ] {
            let mut r = req("POST", "/v1/reload", &headers);
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            let (s, body) = send(&app, r).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{headers:?}: {body}");
            assert!(body.contains("admin.token"), "{body}");
        }
        let refused = state.metrics.admin_refused.with_label_values(&["origin"]);
        assert_eq!(refused.get(), 3);
        // Same origin, or no Origin at all (curl): let through to the
        // handler (which has no config loaded in this test).
        for headers in [
            vec![
                ("origin", "http://127.0.0.1:9090"),
                ("host", "127.0.0.1:9090"),
            ],
            vec![("host", "127.0.0.1:9090")],
        ] {
            let (s, body) = send(&app, req("POST", "/v1/reload", &headers)).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{headers:?}: {body}");
        }
    }

    /// `[admin.tls]` with `client_ca_file`: a client without a certificate
    /// from that CA gets no answer (counted); with one, the tokens work as
    /// over plain HTTP: the read token reads and cannot write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_client_certificates_are_required_and_tokens_still_apply() {
        use crate::config::{AdminTlsConfig, TlsConfig};
        use crate::testkit::pki::{Pki, Validity};
        let dir = std::env::temp_dir().join(format!("cdrs-admin-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Pki::new(&dir, "admin").unwrap();
        let server = ca
            .server("server", &["127.0.0.1"], Validity::Days(30))
            .unwrap();
        let operator = ca.client("operator", "operator").unwrap();
        let stranger = Pki::new(&dir, "stranger")
            .unwrap()
            .client("x", "x")
            .unwrap();
        let tls = AdminTlsConfig {
            cert_file: server.cert.clone(),
            key_file: server.key.clone(),
            key_pass: None,
            client_ca_file: Some(ca.ca_file.clone()),
        };
        let metrics = Arc::new(Metrics::new());
        let server_tls = Arc::new(crate::tls::ServerTls::new(&tls, Some(metrics.clone())).unwrap());
        let access = Access {
            token: Some("admin-token".into()),
            read_token: Some("read-token".into()),
            hosts: None,
        };
        let app = with_access(access, 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let cfg = AdminConfig::default();
        let served = tokio::spawn({
            let metrics = metrics.clone();
            async move { serve(listener, app, &cfg, Some(server_tls), metrics, stop).await }
        });
        let client = |cert: Option<&crate::testkit::pki::Issued>| {
            crate::tls::client_for(&TlsConfig {
                ca_file: Some(ca.ca_file.clone()),
                cert_file: cert.map(|c| c.cert.clone()),
                key_file: cert.map(|c| c.key.clone()),
                ..TlsConfig::default()
            })
            .unwrap()
        };
        for (who, c) in [
            ("no certificate", client(None)),
            ("a foreign CA", client(Some(&stranger))),
        ] {
            let r = c.get(format!("{base}/healthz")).send().await;
            assert!(r.is_err(), "{who}: {r:?}");
        }
        assert!(metrics.admin_refused.with_label_values(&["tls"]).get() >= 1);
        let c = client(Some(&operator));
        let get =
            |path: &str, token: &str| c.get(format!("{base}{path}")).bearer_auth(token).send();
        assert_eq!(get("/healthz", "").await.unwrap().status(), 200);
        assert_eq!(
            get("/v1/targets", "read-token").await.unwrap().status(),
            200
        );
        assert_eq!(
            get("/v1/targets", "wrong-token").await.unwrap().status(),
            401
        );
        let put = c
            .put(format!("{base}/v1/plugins/router"))
            .bearer_auth("read-token")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 401, "the read token cannot upload");
        let expiry = metrics.tls_cert_expiry.with_label_values(&["admin"]).get();
        assert!(expiry > 0, "admin certificate expiry exported");
        stop_tx.send(true).unwrap();
        served.await.unwrap();
    }

    /// Idle connections are closed after the header read timeout, those
    /// over the cap at once, and `/healthz` stays reachable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_and_liveness_stays_reachable() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (app, state) = app(None);
        let cfg = AdminConfig {
            max_connections: 8,
            header_read_timeout_ms: 1_000,
            ..AdminConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let server = tokio::spawn({
            let metrics = state.metrics.clone();
            async move { serve(listener, app, &cfg, None, metrics, stop).await }
        });
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every idle connection ends: 12 at once (over the cap), 8 after
        // the timeout. A read returns 0 (EOF) or an error (reset).
        for (i, c) in idle.iter_mut().enumerate() {
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "connection {i} was closed: {r:?}"
            );
        }
        let over = state
            .metrics
            .admin_refused
            .with_label_values(&["connections"]);
        assert_eq!(over.get(), 12);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap();
    }

    #[tokio::test]
    async fn route_lookups_name_what_is_wrong_with_a_request() {
        let (app, _) = app(None);
        let get = |q: &str| {
            Request::get(format!("/v1/route{q}"))
                .body(Body::empty())
                .unwrap()
        };
        for (q, want) in [
            ("", "key: is required"),
            ("?topic=trades", "key: is required"),
            ("?key=a&colour=red", "colour: unknown parameter"),
            ("?key=a&header.=x", "header.: unknown parameter"),
            ("?key=a&partition=first", "is not a partition number"),
        ] {
            let (s, body) = send(&app, get(q)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {body}");
            assert!(body.contains(want), "{q}: {body}");
        }
        let post = |body: String| {
            Request::post("/v1/route")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let (s, body) = send(&app, post(r#"{"records": [{"kee": "a"}]}"#.into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.contains("records[0]") && body.contains("kee"),
            "{body}"
        );
        let (s, body) = send(&app, post(r#"{"records": [{"key": 7}]}"#.into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("records[0].key"), "{body}");
        let many = serde_json::json!({
            "records": (0..=lookup::MAX_LOOKUPS).map(|i| serde_json::json!({"key": i.to_string()})).collect::<Vec<_>>()
        });
        let (s, body) = send(&app, post(many.to_string())).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(body.contains("at most 10000"), "{body}");
        // A well-formed lookup without a pipeline behind it.
        let (s, body) = send(&app, get("?key=a")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    /// `GET /v1/streams/{name}`: the stream of a configured `sse://` target
    /// only (404 names those that are), its first line `retry:`, then the
    /// records delivered to it; the limit of subscribers answers 503; the
    /// target shows its subscribers in `/v1/targets`.
    #[tokio::test]
    async fn streams_are_served_for_sse_targets_only() {
        use crate::config::{DeliveryConfig, SseConfig};
        use crate::dispatch::{Delivery, Dispatcher};
        use crate::record::Record;
        let metrics = Arc::new(Metrics::new());
        let t = TargetConfig::new("q", "sse://quotes", 5);
        let registry = Arc::new(Registry::new(
            CapacityConfig::default(),
            &[t],
            metrics.clone(),
        ));
        let brokers = crate::testkit::kafka::leaked_mock(&[("dlq", 1)])
            .expect("mock cluster")
            .bootstrap_servers();
        let cfg = DeliveryConfig {
            sse: SseConfig {
                max_subscribers: 1,
                ..SseConfig::default()
            },
            ..DeliveryConfig::default()
        };
        let dispatch = Arc::new(Dispatcher::new(
            registry.clone(),
            Delivery::standalone(&cfg).unwrap(),
            crate::sink::kafka::DeadLetterSink::new(&brokers, "dlq", &Default::default()).unwrap(),
            metrics.clone(),
            brokers,
            Default::default(),
        ));
        let app = router(state(
            registry.clone(),
            metrics,
            Access::default(),
            2,
            Some(dispatch.clone()),
        ));
        let (s, body) = send(&app, req("GET", "/v1/streams/other", &[])).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            e["error"],
            "no sse:// target serves stream \"other\"; configured: quotes"
        );
        let (s, body) = send(&app, req("GET", "/v1/streams/quotes?from=1", &[])).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("the only parameter is lastEventId"), "{body}");
        assert_eq!(registry.snapshot().targets[0].health, Health::Down);

        let resp = app
            .clone()
            .oneshot(req("GET", "/v1/streams/quotes", &[]))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(registry.snapshot().targets[0].health, Health::Healthy);
        let (s, body) = send(&app, req("GET", "/v1/streams/quotes", &[])).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("delivery.sse.max_subscribers"), "{body}");
        let (_, targets) = send(&app, req("GET", "/v1/targets", &[])).await;
        let targets: serde_json::Value = serde_json::from_str(&targets).unwrap();
        assert_eq!(targets["targets"][0]["subscribers"], 1, "{targets}");
        assert_eq!(
            targets["targets"][0]["stream"]["name"], "quotes",
            "{targets}"
        );

        let r = Record {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: Some(b"k".to_vec()),
            value: Some(b"{}".to_vec()),
            headers: vec![],
        };
        dispatch
            .streams
            .deliver("sse://quotes", &[&r], &cfg.sse)
            .unwrap();
        let mut frames = resp.into_body().into_data_stream();
        let mut text = String::new();
        while !text.contains("\n\nid: t/0/7\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), frames.next())
                .await
                .expect("an event within 5 s")
                .expect("stream open")
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.starts_with("retry: 2000\n\n"), "{text}");
        assert!(text.contains("data: {\"id\":\"t/0/7\""), "{text}");
        drop(frames);
        assert_eq!(registry.snapshot().targets[0].health, Health::Down);
    }
}
