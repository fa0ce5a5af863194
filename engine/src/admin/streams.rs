//! `GET /v1/streams/{name}`: the server-sent events of an `sse://NAME`
//! target ([`crate::sink::sse`]); `GET /v1/streams`: every stream's state.
//!
//! Wire format (WHATWG HTML, "Server-sent events"): first `retry:`
//! (`delivery.sse.retry_ms`), then one event per record with `id:
//! topic/partition/offset` and `data:` the record as JSON. A resume point
//! not in the replay buffer is told by `event: lost` (data: `{last_event_id,
//! oldest_id, message}`) before the buffer follows; a subscriber cut off
//! reads `event: cutoff` (data: `{reason, message}`) and the response ends.
//! Neither carries an `id`, so a client's last event id stays that of the
//! last record it got. Keep-alive comments every `delivery.sse.keep_alive_ms`.

use super::{error, AdminState};
use crate::sink::sse::{Item, StreamStatus};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The query of `GET /v1/streams/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// Resume point for clients that cannot set the `Last-Event-ID`
    /// header (the header wins when both are given).
    #[serde(default, rename = "lastEventId")]
    last_event_id: Option<String>,
}

/// `GET /v1/streams`: [`crate::sink::sse::StreamStatus`] of each stream
/// used since the start.
pub(super) async fn list(State(s): State<Arc<AdminState>>) -> Response {
    match &s.dispatch {
        Some(d) => Json(d.streams.status()).into_response(),
        None => Json(Vec::<()>::new()).into_response(),
    }
}

/// Adds to each `sse://` target of a `GET /v1/targets` answer its stream's
/// state as `stream` (subscribers with their lag, the replay buffer).
pub(super) fn add_to_targets(doc: &mut serde_json::Value, streams: &[StreamStatus]) {
    let Some(targets) = doc.pointer_mut("/targets").and_then(|t| t.as_array_mut()) else {
        return;
    };
    for t in targets {
        let name = t["url"].as_str().and_then(crate::config::target_stream);
        if let Some(status) = name.and_then(|n| streams.iter().find(|s| s.name == n)) {
            t["stream"] = serde_json::to_value(status).unwrap_or_default();
        }
    }
}

/// `GET /v1/streams/{name}[?lastEventId=ID]`: subscribes to the stream.
/// 404 when no `sse://NAME` target is configured (the answer lists those
/// that are), 503 at `delivery.sse.max_subscribers`.
pub(super) async fn subscribe(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{}; the only parameter is lastEventId", e.body_text()),
            )
        }
    };
    let Some(dispatch) = &s.dispatch else {
        return error(StatusCode::NOT_FOUND, "no streams in this process");
    };
    let configured: Vec<String> = s
        .registry
        .snapshot()
        .targets
        .iter()
        .filter_map(|t| crate::config::target_stream(&t.url).map(str::to_string))
        .collect();
    if !configured.contains(&name) {
        let known = if configured.is_empty() {
            "none is configured (a target with url = \"sse://NAME\")".to_string()
        } else {
            format!("configured: {}", configured.join(", "))
        };
        return error(
            StatusCode::NOT_FOUND,
            format!("no sse:// target serves stream {name:?}; {known}"),
        );
    }
    let last = match headers.get("last-event-id") {
        Some(v) => match v.to_str() {
            Ok(v) => Some(v.trim().to_string()),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID is not visible ASCII; event ids are topic/partition/offset",
                )
            }
        },
        None => query.last_event_id,
    };
    let cfg = dispatch.delivery.load().cfg.sse.clone();
    let peer = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(80)
        .collect();
    let stream = dispatch.streams.stream(&name);
    let subscription = match stream.subscribe(last.as_deref(), peer, &cfg) {
        Ok(sub) => sub,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let retry = sse::Event::default().retry(Duration::from_millis(cfg.retry_ms));
    let first = futures::stream::once(async move { Ok(retry) });
    let items = futures::stream::unfold(subscription, |mut sub| async move {
        let item = sub.next().await?;
        let event = match item {
            Item::Event(e) => sse::Event::default().id(&*e.id).data(&e.data),
            Item::Lost(l) => sse::Event::default()
                .event("lost")
                .data(serde_json::to_string(&l).unwrap_or_default()),
            Item::Cutoff(c) => sse::Event::default()
                .event("cutoff")
                .data(serde_json::to_string(&c).unwrap_or_default()),
        };
        Some((Ok::<_, std::convert::Infallible>(event), sub))
    });
    use futures::StreamExt;
    super::sse_response(first.chain(items), Duration::from_millis(cfg.keep_alive_ms))
}
