//! What a gateway asks CDRS: where a client's records go now
//! (`GET`/`POST /v1/route`), before and after a server dies.

use crate::common::start;
use cdrs::capacity::Health;
use cdrs::testkit::{produce_events, Fate, Ledger};
use cdrs_e2e::{create_topics, wait_for, Tansu};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: usize = 500;

fn key(k: usize) -> String {
    format!("client-{k:04}")
}

/// `records` plain trades per key of `0..KEYS`, from sequence `from`.
fn wave(from: usize, per_key: usize) -> Vec<(String, String, Fate)> {
    (0..KEYS * per_key)
        .map(|i| {
            let seq = from + i;
            (
                key(i % KEYS),
                format!(r#"{{"type":"trade","seq":{seq}}}"#),
                Fate::Delivered,
            )
        })
        .collect()
}

/// Asks `POST /v1/route` for every key: key → (target, decision).
async fn look_up(admin: std::net::SocketAddr) -> BTreeMap<String, (String, String)> {
    let body = serde_json::json!({
        "records": (0..KEYS).map(|k| serde_json::json!({"key": key(k)})).collect::<Vec<_>>()
    });
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("http://{admin}/v1/route"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/route");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "route lookup: {KEYS} keys in one POST in {took:?} ({:.1} µs per key, HTTP included)",
        took.as_secs_f64() * 1e6 / KEYS as f64
    );
    let routes = v["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), KEYS);
    routes
        .iter()
        .map(|r| {
            let targets = r["targets"].as_array().expect("targets");
            assert_eq!(targets.len(), 1, "{r}");
            (
                r["key"].as_str().unwrap().to_string(),
                (
                    targets[0].as_str().unwrap().to_string(),
                    r["decision"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Collects the `route.moved` events of `/v1/events` from now on.
fn follow_moves(
    admin: std::net::SocketAddr,
) -> (
    Arc<Mutex<Vec<serde_json::Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let reader = tokio::spawn(async move {
        let mut resp = reqwest::get(format!("http://{admin}/v1/events"))
            .await
            .expect("GET /v1/events");
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                let v: serde_json::Value =
                    serde_json::from_str(data.trim_start()).expect("event JSON");
                if v["type"] == "route.moved" {
                    sink.lock().unwrap().push(v);
                }
            }
        }
    });
    (got, reader)
}

/// Which server each key's records of `ledger` reached (each reached one).
fn reached(s: &crate::common::Scenario, ledger: &Ledger) -> BTreeMap<String, String> {
    let mut owner = BTreeMap::new();
    for srv in &s.servers {
        for r in srv.received() {
            let Some(k) = ledger.keys.get(&r.id) else {
                continue;
            };
            if ledger.fates.contains_key(&r.id) {
                let prev = owner.insert(k.clone(), srv.id.clone());
                assert!(
                    prev.is_none() || prev.as_deref() == Some(srv.id.as_str()),
                    "{k} reached {prev:?} and {}",
                    srv.id
                );
            }
        }
    }
    owner
}

/// With the demo's sticky router, the lookup names for each of 500 keys the
/// server that then receives that key's records; after the server with the
/// most keys is killed, lookups move exactly its keys, and the next
/// records of every key go where the new lookup says. None lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_lookups_name_where_each_key_goes_before_and_after_a_kill() {
    let tansu = Tansu::start();
    let brokers = tansu.brokers.clone();
    let (topic, dlq) = ("trades", "trades-dlq");
    create_topics(&brokers, &[(topic, 4), (dlq, 1)]).await;
    let s = start(&brokers, topic, dlq, "cdrs-e2e-route", |c| {
        c.capacity.report_expiry_ms = 1_000;
        c.capacity.failure_cooldown_ms = 60_000;
    })
    .await;
    let admin = s.daemon.admin_addr;
    let healthy = wait_for(Duration::from_secs(10), || {
        s.daemon
            .registry
            .snapshot()
            .targets
            .iter()
            .all(|t| t.health == Health::Healthy)
    })
    .await;
    assert!(healthy, "three healthy targets");

    let before = look_up(admin).await;
    assert!(before.values().all(|(_, d)| d == "router"), "{before:?}");
    // One key through GET, with a header the router does not read.
    let one: serde_json::Value = reqwest::get(format!(
        "http://{admin}/v1/route?key={}&header.x-client=a",
        key(7)
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        one["targets"][0].as_str(),
        Some(before[&key(7)].0.as_str()),
        "{one}"
    );
    assert_eq!(one["topic"], topic);

    let mut ledger = produce_events(&brokers, topic, wave(0, 10)).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let got = reached(&s, &ledger);
    assert_eq!(got.len(), KEYS);
    for (k, server) in &got {
        assert_eq!(&before[k].0, server, "{k}: looked up {:?}", before[k]);
    }

    let (moved_events, reader) = follow_moves(admin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = 2;
    let victim_id = s.servers[victim].id.clone();
    let killed = Instant::now();
    s.servers[victim].kill();
    let down = wait_for(Duration::from_secs(10), || {
        s.daemon.registry.snapshot().targets[victim].health == Health::Down
    })
    .await;
    assert!(down, "killed target marked down");
    let after = look_up(admin).await;
    let moved: Vec<&String> = before
        .keys()
        .filter(|k| before[*k].0 != after[*k].0)
        .collect();
    assert!(!moved.is_empty(), "the victim had keys");
    for k in before.keys() {
        let was_victims = before[k].0 == victim_id;
        assert_eq!(
            moved.contains(&k),
            was_victims,
            "{k}: {:?} -> {:?}",
            before[k],
            after[k]
        );
        assert_ne!(
            after[k].0, victim_id,
            "{k} still looked up on the dead server"
        );
    }
    eprintln!(
        "route lookup: {} of {KEYS} keys moved off {victim_id}",
        moved.len()
    );
    // The keys looked up before were remembered: each move is announced.
    let count = |events: &[serde_json::Value]| {
        events
            .iter()
            .map(|e| e["moves"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    let announced = wait_for(Duration::from_secs(10), || {
        count(&moved_events.lock().unwrap()) >= moved.len()
    })
    .await;
    let events = moved_events.lock().unwrap().clone();
    assert!(
        announced,
        "route.moved for {} of {} keys: {events:?}",
        count(&events),
        moved.len()
    );
    eprintln!(
        "route.moved: {} keys in {} events within {:?} of the kill",
        count(&events),
        events.len(),
        killed.elapsed()
    );
    let mut seen = BTreeSet::new();
    for e in &events {
        for m in e["moves"].as_array().unwrap() {
            let k = m["key"].as_str().unwrap().to_string();
            assert_eq!(m["from"][0].as_str(), Some(victim_id.as_str()), "{m}");
            assert_eq!(m["to"][0].as_str(), Some(after[&k].0.as_str()), "{m}");
            assert!(seen.insert(k), "{m} announced twice");
        }
    }
    assert_eq!(seen.len(), moved.len());
    assert!(moved.iter().all(|k| seen.contains(*k)));
    reader.abort();

    let second = produce_events(&brokers, topic, wave(KEYS * 10, 10))
        .await
        .unwrap();
    let mut second_ledger = Ledger::default();
    second_ledger.fates.extend(second.fates.clone());
    second_ledger.keys.extend(second.keys.clone());
    ledger.fates.extend(second.fates);
    ledger.keys.extend(second.keys);
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let got = reached(&s, &second_ledger);
    assert_eq!(got.len(), KEYS);
    for (k, server) in &got {
        assert_eq!(&after[k].0, server, "{k}: looked up {:?}", after[k]);
    }
    s.finish(&ledger).await;
}
