//! Admin API (axum): health, readiness, Prometheus metrics, targets, plugins,
//! and the capacity push endpoint for application servers.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 once the consumer joined its group, else 503 |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/v1/targets` | the current target snapshot (JSON) |
//! | PUT | `/v1/targets/{id}/capacity` | a [`CapacityReport`]; bearer token if configured |
//! | GET | `/v1/plugins` | each plugin: version (sha256), source, calls, faults, previous version, last error |
//! | PUT | `/v1/plugins/{name}` | body: a `.wasm` component; compiled, `init`-ed, then swapped in; token |
//! | POST | `/v1/plugins/{name}/rollback` | swap the previous version back in; token |
//! | GET | `/v1/config` | the active config (secrets redacted) and the last reload's outcome |
//! | POST | `/v1/reload` | re-read the config file and apply the difference; token |
//!
//! Errors are JSON `{"error": "..."}` naming the field and what is valid.

use crate::capacity::report::MAX_REPORT_BYTES;
use crate::capacity::{CapacityReport, Feed, Registry, ReportError};
use crate::metrics::Metrics;
use crate::reload::{ConfigReloader, PluginManager, ReloadError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the handlers share.
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub token: Option<String>,
    /// None only in tests of the other endpoints.
    pub plugins: Option<Arc<PluginManager>>,
    pub reloader: Option<Arc<ConfigReloader>>,
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/targets", get(targets))
        .route(
            "/v1/targets/{id}/capacity",
            put(push_capacity).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route("/v1/plugins", get(plugins))
        .route(
            "/v1/plugins/{name}",
            put(upload_plugin).layer(axum::extract::DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/v1/plugins/{name}/rollback", post(rollback_plugin))
        .route("/v1/config", get(show_config))
        .route("/v1/reload", post(reload_config))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: consumer has not joined its group yet\n",
        )
            .into_response()
    }
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
    Json(snapshot).into_response()
}

async fn plugins(State(s): State<Arc<AdminState>>) -> Response {
    match &s.plugins {
        Some(m) => Json(m.status()).into_response(),
        None => Json(Vec::<()>::new()).into_response(),
    }
}

/// Largest accepted plugin upload, bytes (64 MiB: Python and JavaScript
/// components run to tens of MB).
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

fn reload_response(
    r: Result<Result<String, ReloadError>, tokio::task::JoinError>,
    name: &str,
) -> Response {
    match r {
        Ok(Ok(version)) => {
            Json(serde_json::json!({ "name": name, "version": version })).into_response()
        }
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

/// Runs a plugin operation (which may compile) off the async workers, after
/// checking the token.
async fn plugin_op(
    s: &AdminState,
    headers: &HeaderMap,
    name: String,
    op: impl FnOnce(&PluginManager, &str) -> Result<String, ReloadError> + Send + 'static,
) -> Response {
    if !authorized(s, headers) {
        return unauthorized();
    }
    let Some(m) = s.plugins.clone() else {
        return error(StatusCode::NOT_FOUND, "no plugins loaded");
    };
    let n = name.clone();
    let task = move || crate::panic::contained(|| op(&m, &n));
    reload_response(tokio::task::spawn_blocking(task).await, &name)
}

async fn upload_plugin(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let msg = format!("{e}; a plugin upload is at most {MAX_PLUGIN_BYTES} bytes");
            return error(e.status(), msg);
        }
        Err(e) => return error(e.status(), e.to_string()),
    };
    plugin_op(&s, &headers, name, move |m, n| m.upload(n, &body)).await
}

async fn rollback_plugin(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    plugin_op(&s, &headers, name, |m, n| m.rollback(n)).await
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <admin.token>)",
    )
}

fn authorized(s: &AdminState, headers: &HeaderMap) -> bool {
    let Some(token) = &s.token else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == token)
}

async fn push_capacity(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
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
                ReportError::EndpointNotAllowed { .. } => StatusCode::FORBIDDEN,
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
            if ["password", "secret", "token", "key"]
                .iter()
                .any(|s| k.contains(s))
            {
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
                let Some(mut url) = v.as_str().and_then(|u| reqwest::Url::parse(u).ok()) else {
                    continue;
                };
                if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
                    *v = serde_json::Value::String(url.into());
                }
            }
        }
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

async fn reload_config(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
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
    use tower::ServiceExt;

    fn app(token: Option<&str>) -> (axum::Router, Arc<AdminState>) {
        let metrics = Arc::new(Metrics::new());
        let t = TargetConfig {
            id: "a".into(),
            url: "http://svc:s3cret@127.0.0.1:1/".into(),
            capacity: 5,
            weight: 100,
            zone: None,
            labels: Default::default(),
            health_url: None,
        };
        let registry = Arc::new(Registry::new(
            CapacityConfig::default(),
            &[t],
            metrics.clone(),
        ));
        let state = Arc::new(AdminState {
            registry,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            token: token.map(str::to_string),
            plugins: None,
            reloader: None,
        });
        (router(state.clone()), state)
    }

    async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
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
    }
}
