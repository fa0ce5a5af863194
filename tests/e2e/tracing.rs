//! Traces: records carrying a W3C `traceparent` get a `process` and a
//! `deliver` span in the producer's trace, exported over OTLP/HTTP to a
//! receiver in the test; the app server gets a `traceparent` with the
//! producer's trace id and CDRS's span id, in the record and on the request.

use crate::common::start;
use cdrs::testkit::{producer, send_traced, Fate, Ledger};
use cdrs_e2e::mock_cluster;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/HTTP receiver on 127.0.0.1: every JSON body posted to
/// `/v1/traces`.
pub(crate) async fn otlp_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |axum::extract::State(b): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
                 body: axum::body::Bytes| async move {
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    axum::Json(serde_json::json!({}))
                },
            ),
        )
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, bodies)
}

/// The spans of OTLP JSON bodies, with their resource's attributes.
pub(crate) fn spans(bodies: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for b in bodies {
        for rs in b["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((s.clone(), rs["resource"].clone()));
                }
            }
        }
    }
    out
}

/// An attribute's value as text (`stringValue`, or `intValue`, which OTLP
/// JSON writes as a string).
pub(crate) fn attr(attributes: &Value, key: &str) -> Option<String> {
    let a = attributes.as_array()?.iter().find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["intValue"].as_str().map(str::to_string))
        .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traced_records_continue_the_producers_trace_to_the_app_server() {
    let (topic, dlq) = ("traced", "traced-dlq");
    let brokers = mock_cluster(&[(topic, 3), (dlq, 1)]);
    let (otlp, bodies) = otlp_receiver().await;
    let s = start(&brokers, topic, dlq, "cdrs-e2e-tracing", |c| {
        c.telemetry.otlp_endpoint = Some(format!("http://{otlp}"));
    })
    .await;

    // 400 records: 3 in 4 with a sampled traceparent, the rest unsampled.
    let p = producer(&brokers).unwrap();
    let mut ledger = Ledger::default();
    let mut producer_span: HashMap<String, (String, String, bool)> = HashMap::new();
    for i in 0..400u64 {
        let (trace_id, span_id) = (
            format!("{:032x}", 0xabc0_0000 + i),
            format!("{:016x}", 0x5150 + i),
        );
        let sampled = i % 4 != 3;
        let tp = format!(
            "00-{trace_id}-{span_id}-{}",
            if sampled { "01" } else { "00" }
        );
        let key = format!("client-{}", i % 20);
        let value = format!(r#"{{"type":"trade","seq":{i}}}"#);
        let id = send_traced(&p, topic, &key, &value, &tp).await.unwrap();
        ledger.fates.insert(id.clone(), Fate::Delivered);
        ledger.keys.insert(id.clone(), key);
        producer_span.insert(id, (trace_id, span_id, sampled));
    }
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let received: Vec<_> = s.servers.iter().flat_map(|a| a.received()).collect();
    let requests: Vec<String> = s
        .servers
        .iter()
        .flat_map(|a| a.request_traceparents())
        .collect();
    let s_ports: Vec<String> = s
        .servers
        .iter()
        .map(|a| {
            a.url()
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches("/records")
                .to_string()
        })
        .collect();
    // `finish` stops CDRS (which exports the last spans) and asserts that
    // every record was delivered and none lost.
    let (a, _, _, _) = s.finish(&ledger).await;
    assert_eq!(a.delivered, 400, "{a:?}");

    // What each record's traceparent became at the app server.
    let mut deliver_span_of: HashMap<String, String> = HashMap::new();
    for r in &received {
        let (trace_id, span_id, sampled) = &producer_span[&r.id];
        let tp = r
            .headers
            .iter()
            .find(|(k, _)| k == "traceparent")
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("{}: no traceparent", r.id));
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], trace_id, "{}: the producer's trace", r.id);
        if *sampled {
            assert_ne!(parts[2], span_id, "{}: CDRS's span", r.id);
            assert_eq!(parts[3], "01", "{tp}");
            deliver_span_of.insert(r.id.clone(), parts[2].to_string());
        } else {
            assert_eq!(
                parts[2], span_id,
                "{}: an unsampled record is passed on as is",
                r.id
            );
        }
    }
    assert_eq!(deliver_span_of.len(), 300);

    // The spans reached the receiver, with the conventions' attributes.
    let got = spans(&bodies.lock().unwrap());
    let by_id: HashMap<&str, &Value> = got
        .iter()
        .map(|(s, _)| (s["spanId"].as_str().unwrap(), s))
        .collect();
    for (id, deliver_id) in &deliver_span_of {
        let (trace_id, producer_span_id, _) = &producer_span[id];
        let deliver = by_id.get(deliver_id.as_str()).unwrap_or_else(|| {
            panic!(
                "{id}: deliver span {deliver_id} not exported ({} spans)",
                got.len()
            )
        });
        assert_eq!(deliver["name"], "deliver");
        assert_eq!(&deliver["traceId"], trace_id);
        assert_eq!(deliver["status"]["code"], 1, "ok: {deliver}");
        let process = by_id[deliver["parentSpanId"].as_str().unwrap()];
        assert_eq!(&process["traceId"], trace_id);
        assert_eq!(&process["parentSpanId"], producer_span_id, "{process}");
        assert_eq!(process["kind"], 5, "consumer: {process}");
        assert_eq!(
            &process["links"][0]["spanId"], producer_span_id,
            "{process}"
        );
        let (offset, partition) = {
            let mut it = id.rsplit('/');
            (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            )
        };
        let at = &process["attributes"];
        assert_eq!(attr(at, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(
            attr(at, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attr(at, "messaging.destination.name").as_deref(),
            Some(topic)
        );
        assert_eq!(
            attr(at, "messaging.destination.partition.id"),
            Some(partition)
        );
        assert_eq!(attr(at, "messaging.kafka.offset"), Some(offset));
        assert_eq!(
            attr(at, "messaging.consumer.group.name").as_deref(),
            Some("cdrs-e2e-tracing")
        );
    }
    let (_, resource) = &got[0];
    assert_eq!(
        attr(&resource["attributes"], "service.name").as_deref(),
        Some("cdrs")
    );
    // Each request with a traced record carries its own `POST` span (kind
    // client), a child of one of the batch's `deliver` spans, with the HTTP
    // client conventions' attributes.
    let ours: std::collections::HashSet<&String> = deliver_span_of.values().collect();
    assert!(!requests.is_empty());
    let ports: Vec<String> = s_ports;
    for tp in &requests {
        let parts: Vec<&str> = tp.split('-').collect();
        let request = by_id
            .get(parts[2])
            .unwrap_or_else(|| panic!("request span of {tp} not exported"));
        assert_eq!(request["name"], "POST", "{request}");
        assert_eq!(request["kind"], 3, "client: {request}");
        assert_eq!(request["traceId"], parts[1], "{request}");
        assert_eq!(request["status"]["code"], 1, "ok: {request}");
        let parent = request["parentSpanId"].as_str().unwrap().to_string();
        assert!(
            ours.contains(&parent),
            "{request}: parent is a deliver span"
        );
        let at = &request["attributes"];
        assert_eq!(attr(at, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(attr(at, "server.address").as_deref(), Some("127.0.0.1"));
        let port = attr(at, "server.port").unwrap();
        assert!(ports.contains(&port), "{port} not an app server's");
        assert!(
            attr(at, "url.full").is_some_and(|u| u.starts_with("http://127.0.0.1:")),
            "{request}"
        );
    }
    // Unsampled records made no spans: two per traced record, one per
    // request that carried traced records.
    let posts = got.iter().filter(|(sp, _)| sp["name"] == "POST").count();
    assert!(posts >= requests.len(), "{posts} POST spans");
    assert_eq!(
        got.len(),
        2 * deliver_span_of.len() + posts,
        "spans exported"
    );
}
