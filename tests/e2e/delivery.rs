//! Delivery semantics: which failures are retried, `Retry-After`, the Kafka
//! sink and its idempotency key, backpressure with bounded in-flight records.

use crate::common::start;
use cdrs::config::{TargetConfig, DEFAULT_WEIGHT};
use cdrs::testkit::{produce, produce_events, Fate};
use cdrs_e2e::{mock_cluster, wait_for};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A target answering 400 is not retried: its records go to the others at
/// once, and its breaker stays closed (the target is up, it refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_not_retried_and_the_records_go_elsewhere() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 3), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-4xx", |_| {}).await;
    let b = s.servers[2].behaviour();
    b.fail_status.store(400, Ordering::Relaxed);
    b.failing.store(true, Ordering::Relaxed);
    let ledger = produce(&brokers, topic, 5_000, 500).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let m = &s.daemon.metrics;
    let refused_400 = m.rerouted.with_label_values(&["blotter-3", "400"]).get();
    let retries = m.retries.with_label_values(&["blotter-3"]).get();
    let ejections = m.ejections.with_label_values(&["blotter-3"]).get();
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert!(
        refused_400 > 0,
        "records refused with 400 were routed again"
    );
    assert_eq!(retries, 0, "a 400 is never retried");
    assert_eq!(ejections, 0, "a 400 does not open the breaker");
    assert_eq!(a.per_target["blotter-3"], 0);
    assert!(servers[2].behaviour().refused.load(Ordering::Relaxed) > 0);
}

/// Servers with a body limit answer 413 to whole batches: CDRS sends them
/// in halves until they fit, instead of taking the 413 as a refusal of the
/// records (which, with every server limited, left them waiting forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_until_it_fits() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 3), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-413", |_| {}).await;
    for server in &s.servers {
        server
            .behaviour()
            .max_batch_records
            .store(7, Ordering::Relaxed);
    }
    let ledger = produce(&brokers, topic, 3_000, 300).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let m = &s.daemon.metrics;
    let split: u64 = ["blotter-1", "blotter-2", "blotter-3"]
        .iter()
        .map(|t| m.split_batches.with_label_values(&[t]).get())
        .sum();
    let refused: u64 = s
        .servers
        .iter()
        .map(|x| x.behaviour().refused.load(Ordering::Relaxed))
        .sum();
    let (a, _, _, _) = s.finish(&ledger).await;
    assert!(refused > 0, "the servers did refuse large batches");
    assert!(split > 0, "and CDRS split them");
    assert_eq!(a.lost, 0);
    assert_eq!(a.duplicates, 0, "a 413 delivers nothing, so nothing twice");
}

/// A 503 with `Retry-After: 1` is retried after a second, not by the
/// 50 ms exponential schedule: in 2.5 s the one batch is tried ≤ 4 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_503_is_honoured() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 1), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-retry-after", |c| {
        c.targets.truncate(1);
        c.delivery.lanes = 1;
        c.delivery.max_attempts = 10;
        // Never ejected: one target (the panic threshold), and
        // consecutive failures high anyway.
        c.delivery.breaker.consecutive_failures = 100;
    })
    .await;
    let b = s.servers[0].behaviour();
    b.fail_status.store(503, Ordering::Relaxed);
    b.retry_after_s.store(1, Ordering::Relaxed);
    b.failing.store(true, Ordering::Relaxed);
    let events = (0..10)
        .map(|i| {
            (
                format!("client-{i}"),
                format!(r#"{{"type":"trade","seq":{i}}}"#),
                Fate::Delivered,
            )
        })
        .collect();
    let ledger = produce_events(&brokers, topic, events).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || b
            .refused
            .load(Ordering::Relaxed)
            > 0)
        .await,
        "first attempt made"
    );
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let attempts = b.refused.load(Ordering::Relaxed);
    b.failing.store(false, Ordering::Relaxed);
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let retries = s
        .daemon
        .metrics
        .retries
        .with_label_values(&["blotter-1"])
        .get();
    s.finish(&ledger).await;
    eprintln!("{attempts} failed attempts in {:?}", first.elapsed());
    assert!(attempts <= 4, "Retry-After ignored: {attempts} attempts");
    assert!(retries > 0, "the batch was retried at the same target");
}

/// The one `kafka://` target of the Kafka sink tests, writing to `topic`.
fn stream_target(topic: &str) -> TargetConfig {
    TargetConfig {
        id: "stream-1".into(),
        url: format!("kafka://{topic}"),
        capacity: 100,
        weight: DEFAULT_WEIGHT,
        zone: None,
        labels: Default::default(),
        health_url: None,
        report_token: None,
        tls: None,
    }
}

/// A `kafka://` target: records are produced to that topic, key and value
/// byte for byte, with the `cdrs-idempotency-key` header; records that
/// carry headers (a null one, binary bytes) and a timestamp keep them, in
/// order; a record with a sampled `traceparent` leaves with one naming
/// CDRS's exported `deliver` span in the producer's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_target_gets_each_record_with_its_idempotency_key() {
    let (topic, dlq, out) = ("trades", "trades-dlq", "blotter-stream");
    let brokers = mock_cluster(&[(topic, 2), (dlq, 1), (out, 1)]);
    let (otlp, otlp_bodies) = crate::tracing::otlp_receiver().await;
    let s = start(&brokers, topic, dlq, "cdrs-e2e-kafka-sink", |c| {
        c.targets = vec![stream_target(out)];
        c.telemetry.otlp_endpoint = Some(format!("http://{otlp}"));
    })
    .await;
    let ledger = produce(&brokers, topic, 2_000, 100).await.unwrap();
    // Records with headers and a timestamp, as an upstream service writes them.
    let headed: Vec<(String, Option<Vec<u8>>)> = vec![
        ("trace-id".into(), Some(b"abc-123".to_vec())),
        ("empty".into(), None),
        ("bin".into(), Some(vec![0, 255, 1])),
    ];
    const TS: i64 = 1_700_000_000_123;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut with_headers: HashMap<String, String> = HashMap::new();
    for i in 0..5 {
        let key = format!("client-h{i}");
        let value = format!(r#"{{"type":"trade","seq":{i}}}"#);
        let mut hs = OwnedHeaders::new();
        for (k, v) in &headed {
            hs = hs.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(hs)
            .timestamp(TS);
        let d = producer.send(rec, Duration::from_secs(10)).await.unwrap();
        with_headers.insert(format!("{topic}/{}/{}", d.partition, d.offset), key);
    }
    // Traced records: id -> (the producer's trace id, its span id).
    let mut traced: HashMap<String, (String, String)> = HashMap::new();
    for i in 0..5u64 {
        let (trace_id, span_id) = (
            format!("{:032x}", 0xcafe_0000 + i),
            format!("{:016x}", 0xf00d + i),
        );
        let tp = format!("00-{trace_id}-{span_id}-01");
        let key = format!("client-t{i}");
        let value = format!(r#"{{"type":"trade","seq":{i}}}"#);
        let id = cdrs::testkit::send_traced(&producer, topic, &key, &value, &tp)
            .await
            .unwrap();
        traced.insert(id, (trace_id, span_id));
    }
    let want: HashMap<&String, &String> = ledger
        .fates
        .iter()
        .filter(|(_, f)| **f == Fate::Delivered)
        .map(|(id, _)| (id, &ledger.keys[id]))
        .collect();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "kafka-sink-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[out]).unwrap();
    let mut got: HashMap<String, (String, Option<String>)> = HashMap::new();
    type Seen = (Vec<(String, Option<Vec<u8>>)>, Option<i64>);
    let mut got_headed: HashMap<String, Seen> = HashMap::new();
    let mut got_traceparent: HashMap<String, String> = HashMap::new();
    let expected = want.len() + with_headers.len() + traced.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < expected && Instant::now() < deadline {
        let Some(Ok(m)) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(100)))
        else {
            continue;
        };
        let id = m
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == "cdrs-idempotency-key"))
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("idempotency header");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
        if with_headers.contains_key(&id) {
            let hs = m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter(|x| x.key != "cdrs-idempotency-key")
                        .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            got_headed.insert(id.clone(), (hs, m.timestamp().to_millis()));
        }
        if traced.contains_key(&id) {
            let tp = m
                .headers()
                .and_then(|h| h.iter().find(|x| x.key == "traceparent"))
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            got_traceparent.insert(id.clone(), tp);
        }
        got.insert(id, (key, value));
    }
    let delivered = s.daemon.metrics.get("delivery", "delivered");
    // Stopping exports the last spans.
    s.daemon.stop().await.unwrap();
    assert_eq!(
        got.len(),
        expected,
        "every kept record reached the topic once or more"
    );
    let deliver_spans: HashMap<String, serde_json::Value> =
        crate::tracing::spans(&otlp_bodies.lock().unwrap())
            .into_iter()
            .filter(|(sp, _)| sp["name"] == "deliver")
            .map(|(sp, _)| (sp["spanId"].as_str().unwrap_or_default().to_string(), sp))
            .collect();
    for (id, (trace_id, span_id)) in &traced {
        let tp = &got_traceparent[id];
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{id}: traceparent {tp:?}");
        assert_eq!(parts[1], trace_id, "{id}: the producer's trace");
        assert_ne!(parts[2], span_id, "{id}: CDRS's span, not the producer's");
        let span = deliver_spans
            .get(parts[2])
            .unwrap_or_else(|| panic!("{id}: deliver span {} not exported", parts[2]));
        assert_eq!(span["traceId"], trace_id.as_str(), "{span}");
        assert_eq!(span["status"]["code"], 1, "delivered: {span}");
    }
    for (id, key) in &with_headers {
        assert_eq!(&got[id].0, key, "{id}: key");
        let (hs, ts) = &got_headed[id];
        assert_eq!(hs, &headed, "{id}: headers byte for byte, in order");
        assert_eq!(*ts, Some(TS), "{id}: timestamp");
    }
    for (id, key) in want {
        let (k, v) = &got[id];
        assert_eq!(k, key, "{id}: key byte for byte");
        assert!(
            v.as_deref()
                .is_some_and(|v| v.contains("\"type\":\"trade\"")),
            "{id}"
        );
    }
    assert!(delivered as usize >= got.len());
}

/// A record larger than the Kafka producer's `message.max.bytes` can never
/// be written to a `kafka://` target: it is dead-lettered (as a stub
/// without its value, since the dead-letter producer has the same limit),
/// not retried forever or blamed on the target, and the rest of its batch
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_kafka_producer_is_dead_lettered() {
    let (topic, dlq, out) = ("trades", "trades-dlq", "blotter-stream");
    let brokers = mock_cluster(&[(topic, 2), (dlq, 1), (out, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-too-large", |c| {
        c.targets = vec![stream_target(out)];
        c.kafka
            .options
            .insert("message.max.bytes".into(), "20000".into());
    })
    .await;
    let events = crate::common::trades(0, 300);
    let ledger = produce_events(&brokers, topic, events).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let big = format!(r#"{{"type":"trade","pad":"{}"}}"#, "x".repeat(30_000));
    let d = producer
        .send(
            FutureRecord::to(topic).key("client-big").payload(&big),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let big_id = format!("{topic}/{}/{}", d.partition, d.offset);

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "too-large-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[out, dlq]).unwrap();
    let mut delivered: HashMap<String, usize> = HashMap::new();
    let mut dead: Vec<(Option<usize>, HashMap<String, String>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (delivered.len() < ledger.fates.len() || dead.is_empty()) && Instant::now() < deadline {
        let Some(Ok(m)) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(100)))
        else {
            continue;
        };
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let v = x.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (x.key.to_string(), v.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if m.topic() == dlq {
            dead.push((m.payload().map(<[u8]>::len), headers));
        } else {
            *delivered
                .entry(headers["cdrs-idempotency-key"].clone())
                .or_default() += 1;
        }
    }
    let dead_metric = s.daemon.metrics.get("delivery", "dead_lettered");
    s.daemon.stop().await.unwrap();

    let want: std::collections::HashSet<&String> = ledger.fates.keys().collect();
    let got: std::collections::HashSet<&String> = delivered.keys().collect();
    assert_eq!(got, want, "every other record reached the topic");
    assert!(
        !delivered.contains_key(&big_id),
        "the large record was not written"
    );
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let (payload, h) = &dead[0];
    let id = format!(
        "{}/{}/{}",
        h["cdrs-original-topic"], h["cdrs-original-partition"], h["cdrs-original-offset"]
    );
    assert_eq!(id, big_id, "the dead letter is the large record");
    assert_eq!(h["cdrs-dlq-stage"], "delivery");
    assert!(
        h["cdrs-dlq-reason"].contains("message.max.bytes"),
        "reason names the setting: {h:?}"
    );
    assert!(h.contains_key("cdrs-dlq-omitted"), "stub says so: {h:?}");
    assert_eq!(*payload, None, "the stub has no value");
    assert_eq!(dead_metric, 1, "counted once");
}

/// Slow targets and small windows: partitions stop being fetched once their
/// prefetch is full, in-flight records per partition, prefetched records
/// per partition and queued records per target stay within their bounds,
/// and once the targets speed up everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_targets_stop_fetching_within_bounded_windows() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 3), (dlq, 1)]);
    let (window, queue) = (256, 200);
    const PREFETCH: usize = 64;
    let s = start(&brokers, topic, dlq, "cdrs-e2e-backpressure", |c| {
        c.pipeline.prefetch_records = PREFETCH;
        c.pipeline.batch_size = 64;
        c.pipeline.max_inflight_records = window;
        c.delivery.queue_capacity = queue;
        c.delivery.lanes = 1;
        c.delivery.max_batch = 20;
    })
    .await;
    for srv in &s.servers {
        srv.behaviour().latency_ms.store(50, Ordering::Relaxed);
    }
    // ~6,700 records per partition: without the bound a partition's whole
    // share would be fetched while the targets are slow.
    let ledger = produce(&brokers, topic, 20_000, 1_000).await.unwrap();
    let m = s.daemon.metrics.clone();
    let gauge_sum = |text: &str, name: &str| -> (i64, i64) {
        let vals: Vec<i64> = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as i64)
            .collect();
        (vals.iter().sum(), vals.iter().copied().max().unwrap_or(0))
    };
    let (mut max_prefetched, mut max_inflight, mut max_queue) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let text = m.render();
        max_prefetched =
            max_prefetched.max(gauge_sum(&text, "cdrs_partition_prefetched_records{").1);
        max_inflight = max_inflight.max(gauge_sum(&text, "cdrs_partition_inflight_records{").1);
        max_queue = max_queue.max(gauge_sum(&text, "cdrs_target_queue_records{").1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for srv in &s.servers {
        srv.behaviour().latency_ms.store(0, Ordering::Relaxed);
    }
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    s.finish(&ledger).await;
    eprintln!(
        "max prefetched per partition: {max_prefetched}, max in flight per partition: {max_inflight}, max queued per target: {max_queue}"
    );
    // The worker stopped reading, so the prefetch filled up to the bound,
    // plus at most one fetch: the mock broker answers a fetch with one
    // whole message set, and `produce` sends 2,000 records at a time.
    assert!(
        max_prefetched >= PREFETCH as i64,
        "prefetch filled while the targets were slow: {max_prefetched}"
    );
    assert!(
        max_prefetched <= (PREFETCH + 2_000) as i64,
        "prefetch bound kept: {max_prefetched}"
    );
    assert!(
        max_inflight <= window as i64,
        "in-flight window kept: {max_inflight}"
    );
    assert!(max_inflight > 0);
    assert!(
        max_queue <= queue as i64,
        "target queue bound kept: {max_queue}"
    );
}

/// Headers named `cdrs-*` are CDRS's own (idempotency key, dead-letter
/// reason, original coordinates). A producer's forged ones are dropped
/// where the record enters CDRS, so an app server sees exactly one
/// `cdrs-idempotency-key` (the true one) and a dead letter exactly one of
/// each `cdrs-dlq-*` / `cdrs-original-*` header, CDRS's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cdrs_headers_never_reach_a_server_or_a_dead_letter() {
    let (topic, dlq) = ("trades", "trades-dlq");
    let brokers = mock_cluster(&[(topic, 2), (dlq, 1)]);
    let s = start(&brokers, topic, dlq, "cdrs-e2e-forged-headers", |_| {}).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let forged = [
        "cdrs-idempotency-key",
        "CDRS-Idempotency-Key",
        "cdrs-dlq-reason",
        "cdrs-original-offset",
        "cdrs-anything",
    ];
    let mut ledger = cdrs::testkit::Ledger::default();
    for i in 0..200 {
        let key = format!("client-{}", i % 20);
        // Every fifth record is malformed: the demo filter dead-letters it.
        let (value, fate) = if i % 5 == 0 {
            (format!("not json {{ {i}"), Fate::DeadLettered)
        } else {
            (format!(r#"{{"type":"trade","seq":{i}}}"#), Fate::Delivered)
        };
        let mut hs = OwnedHeaders::new().insert(Header {
            key: "trace-id",
            value: Some("t-1"),
        });
        for k in forged {
            hs = hs.insert(Header {
                key: k,
                value: Some("forged"),
            });
        }
        let rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(hs);
        let d = producer.send(rec, Duration::from_secs(10)).await.unwrap();
        let id = format!("{topic}/{}/{}", d.partition, d.offset);
        ledger.fates.insert(id.clone(), fate);
        ledger.keys.insert(id, key);
    }
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    for server in &s.servers {
        for r in server.received() {
            let cdrs: Vec<_> = r
                .headers
                .iter()
                .filter(|(k, _)| k.to_ascii_lowercase().starts_with("cdrs-"))
                .collect();
            assert_eq!(
                cdrs,
                vec![&(
                    "cdrs-idempotency-key".to_string(),
                    Some(r.id.clone().into_bytes())
                )],
                "{}: only CDRS's own idempotency key",
                r.id
            );
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| k == "trace-id" && v.as_deref() == Some(&b"t-1"[..])),
                "{}: the producer's other headers are kept",
                r.id
            );
        }
    }
    // Raw dead letters: every `cdrs-*` header once, none of them forged.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "forged-dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[dlq]).unwrap();
    let want = ledger.count(Fate::DeadLettered);
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < want && Instant::now() < deadline {
        let Some(Ok(m)) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(100)))
        else {
            continue;
        };
        seen += 1;
        let hs: Vec<(String, String)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        let v = String::from_utf8_lossy(x.value.unwrap_or_default());
                        (x.key.to_ascii_lowercase(), v.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cdrs: Vec<&(String, String)> =
            hs.iter().filter(|(k, _)| k.starts_with("cdrs-")).collect();
        assert!(
            cdrs.iter().all(|(_, v)| v != "forged"),
            "a forged header in a dead letter: {hs:?}"
        );
        for k in ["cdrs-dlq-reason", "cdrs-original-offset"] {
            assert_eq!(
                cdrs.iter().filter(|(x, _)| x == k).count(),
                1,
                "{k} once: {hs:?}"
            );
        }
    }
    assert_eq!(seen, want, "every malformed record was dead-lettered");
    s.finish(&ledger).await;
}
