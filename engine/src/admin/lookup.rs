//! `GET /v1/route` and `POST /v1/route`: where a record with a given key
//! would be delivered now, for gateways that put a client's connection
//! where its data goes ([`crate::route::Routing::lookup`]).

use super::{error, AdminState};
use crate::dispatch::key_hash;
use crate::route::Probe;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most records one `POST /v1/route` may ask about.
pub const MAX_LOOKUPS: usize = 10_000;

/// Largest `POST /v1/route` body, bytes.
const MAX_LOOKUP_BODY: usize = 4 << 20;

const GET_USAGE: &str = "GET /v1/route?key=K[&topic=T][&partition=P][&header.NAME=V]";

/// One record of a `POST /v1/route` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Asked {
    key: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A `POST /v1/route` body: `{"topic": T?, "records": [{"key": K, "topic"?,
/// "partition"?, "headers"?: {NAME: V}}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    topic: Option<String>,
    records: Vec<Asked>,
}

/// `GET /v1/route?key=K[&topic=T][&partition=P][&header.NAME=V]`: one
/// [`crate::route::Lookup`].
pub(super) async fn get_route(
    State(s): State<Arc<AdminState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> =
        match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("bad query string: {e}; {GET_USAGE}"),
                )
            }
        };
    let mut asked = Asked {
        key: String::new(),
        topic: None,
        partition: None,
        headers: BTreeMap::new(),
    };
    let mut has_key = false;
    for (name, value) in pairs {
        match name.as_str() {
            "key" => {
                asked.key = value;
                has_key = true;
            }
            "topic" => asked.topic = Some(value),
            "partition" => match value.parse() {
                Ok(p) => asked.partition = Some(p),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("partition: {value:?} is not a partition number"),
                    )
                }
            },
            other => match other.strip_prefix("header.") {
                Some(h) if !h.is_empty() => {
                    asked.headers.insert(h.to_string(), value);
                }
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{other}: unknown parameter; {GET_USAGE}"),
                    )
                }
            },
        }
    }
    if !has_key {
        return error(
            StatusCode::BAD_REQUEST,
            format!("key: is required; {GET_USAGE}"),
        );
    }
    match answer(&s, None, vec![asked]).await {
        Ok(mut found) => Json(found.remove(0)).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/route` with a [`Batch`]: `{"routes": [Lookup, ...]}` in the
/// order asked.
pub(super) async fn post_route(State(s): State<Arc<AdminState>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_LOOKUP_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a route lookup body is at most {MAX_LOOKUP_BODY} bytes"),
            )
        }
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let batch: Batch = match serde_path_to_error::deserialize(de) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: {}; the body is {{\"topic\"?: T, \"records\": [{{\"key\": K, \"topic\"?: T, \"partition\"?: P, \"headers\"?: {{NAME: V}}}}]}}",
                    e.path(),
                    e.inner()
                ),
            )
        }
    };
    if batch.records.len() > MAX_LOOKUPS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "records: {} asked, at most {MAX_LOOKUPS} per request",
                batch.records.len()
            ),
        );
    }
    match answer(&s, batch.topic, batch.records).await {
        Ok(routes) => Json(serde_json::json!({ "routes": routes })).into_response(),
        Err(r) => r,
    }
}

/// Resolves topics, partitions and in-flight bindings, then asks the
/// router off the async threads.
async fn answer(
    s: &Arc<AdminState>,
    topic: Option<String>,
    asked: Vec<Asked>,
) -> Result<Vec<crate::route::Lookup>, Response> {
    let Some(routing) = s.routing.clone() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "route lookups need a running pipeline",
        ));
    };
    let mut probes = Vec::with_capacity(asked.len());
    for (i, a) in asked.into_iter().enumerate() {
        let topic = match a.topic.or_else(|| topic.clone()) {
            Some(t) => match s.topics.iter().find(|c| ***c == *t) {
                Some(t) => t.clone(),
                None => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "records[{i}].topic: {t:?} is not consumed here (kafka.topics: {:?})",
                            s.topics
                        ),
                    ))
                }
            },
            None => match s.topics.first() {
                Some(t) => t.clone(),
                None => return Err(error(StatusCode::BAD_REQUEST, "topic: is required")),
            },
        };
        let key = a.key.into_bytes();
        let binding = key_hash(Some(&key))
            .and_then(|h| s.partitions.key_binding(&topic, h))
            .filter(|(p, _)| a.partition.is_none_or(|want| want == *p));
        let partition = a
            .partition
            .or(binding.as_ref().map(|(p, _)| *p))
            .unwrap_or(-1);
        probes.push(Probe {
            topic,
            partition,
            key,
            headers: a
                .headers
                .into_iter()
                .map(|(k, v)| (k, Some(v.into_bytes())))
                .collect(),
            bound: binding.map(|(_, d)| d),
        });
    }
    tokio::task::spawn_blocking(move || {
        let answers = routing.lookup(&probes);
        routing.remember(&probes, &answers);
        answers
    })
    .await
    .map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("route lookup failed: {e}"),
        )
    })
}
