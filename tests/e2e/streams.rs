//! `sse://` targets with a real `cdrs run` process and Tansu: subscribers of
//! `GET /v1/streams/NAME` get every record routed to the stream, in order,
//! resume with `Last-Event-ID` without a gap or a duplicate, and one that
//! stops reading is cut off (told why) while CDRS's memory stays bounded.

use cdrs::config::{Config, TargetConfig};
use cdrs::testkit::{demo_config, produce_with, producer, Fate, Ledger};
use cdrs_e2e::{cdrs_bin, create_topics, free_port, plugin_dir, Tansu};
use eventsource_stream::{Event, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STREAM: &str = "quotes";

/// A `cdrs run` process with one target, `sse://quotes`.
struct Cdrs {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    peak_rss_kib: u64,
}

impl Cdrs {
    fn start(brokers: &str, topic: &str, name: &str, tweak: impl FnOnce(&mut Config)) -> Cdrs {
        let dlq = format!("{topic}-dlq");
        let targets = vec![TargetConfig::new(
            "quotes",
            format!("sse://{STREAM}"),
            1_000,
        )];
        let mut config = demo_config(brokers, name, topic, &dlq, &plugin_dir(), targets);
        // A low fetch wait, so the latency measured is CDRS's, not the
        // broker's long poll (librdkafka's default is 500 ms).
        config
            .kafka
            .options
            .insert("fetch.wait.max.ms".into(), "10".into());
        let port = free_port();
        config.admin.listen = format!("127.0.0.1:{port}");
        tweak(&mut config);
        let dir = std::env::temp_dir().join(format!("cdrs-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cdrs.toml");
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
        let log = dir.join("cdrs.log");
        let child = Command::new(cdrs_bin())
            .args(["run", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start cdrs run");
        Cdrs {
            child,
            admin: ([127, 0, 0, 1], port).into(),
            log,
            peak_rss_kib: 0,
        }
    }

    /// Waits until `path` answers 200.
    async fn wait_for(&self, path: &str) {
        let url = format!("http://{}{path}", self.admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cdrs::tls::plain_client()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "{path} never answered 200; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads the peak resident set (VmHWM) so far, KiB.
    fn sample_rss(&mut self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
        self.peak_rss_kib
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        cdrs::tls::plain_client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        cdrs::tls::plain_client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGTERM; waits for a clean exit.
    fn stop(mut self) {
        self.sample_rss();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "cdrs exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "cdrs did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cdrs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of `GET /v1/streams/quotes` (resuming after `last`).
async fn subscribe(admin: SocketAddr, last: Option<&str>) -> BoxStream<'static, Event> {
    let mut req = cdrs::tls::plain_client().get(format!("http://{admin}/v1/streams/{STREAM}"));
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.expect("GET /v1/streams/quotes");
    assert_eq!(resp.status(), 200, "subscribe");
    let bytes = futures::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(c)) => Some((Ok::<_, reqwest::Error>(c), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    bytes
        .eventsource()
        .filter_map(|e| async move { e.ok() })
        .boxed()
}

/// Reads record events until `n` were read (other events go to `others`);
/// returns their ids and data.
async fn read_records(
    events: &mut BoxStream<'static, Event>,
    n: usize,
    others: &mut Vec<Event>,
) -> Vec<(String, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| panic!("no event for 60 s after {} of {n}", got.len()))
            .unwrap_or_else(|| panic!("stream ended after {} of {n}", got.len()));
        if e.event == "message" && !e.id.is_empty() {
            got.push((e.id, e.data));
        } else {
            others.push(e);
        }
    }
    got
}

/// `n` trades keyed by 200 clients, from sequence `from`; the value holds
/// the time it was made (µs since the epoch) for the latency figure.
fn trades(from: u64, n: u64) -> Vec<(String, String, Fate)> {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    (from..from + n)
        .map(|i| {
            let v = format!(
                r#"{{"type":"trade","seq":{i},"sent_us":{now_us},"pad":"{}"}}"#,
                "x".repeat(100)
            );
            (format!("client-{:03}", i % 200), v, Fate::Delivered)
        })
        .collect()
}

fn merge(into: &mut Ledger, part: Ledger) {
    into.fates.extend(part.fates);
    into.keys.extend(part.keys);
}

/// Per key, offsets in the order received are increasing.
fn assert_key_order(ids: &[(String, String)], ledger: &Ledger) {
    let mut last: BTreeMap<&str, (String, i64)> = BTreeMap::new();
    for (id, _) in ids {
        let (tp, offset) = id.rsplit_once('/').unwrap();
        let offset: i64 = offset.parse().unwrap();
        let key = ledger.keys[id].as_str();
        if let Some((prev_tp, prev)) = last.get(key) {
            assert_eq!(prev_tp, tp, "{key} in two partitions");
            assert!(offset > *prev, "{key}: {id} after offset {prev}");
        }
        last.insert(key, (tp.to_string(), offset));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Two subscribers while 50,000 records flow; one disconnects and comes
/// back 2 s later with `Last-Event-ID`: it gets every record after its last
/// id exactly once, in the same order as the other; nothing is lost. Then
/// the latency from produce to event at 1,000 records/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_subscribers_get_every_record_and_resume_after_their_last_event_id() {
    const RECORDS: u64 = 50_000;
    const CHUNK: u64 = 1_000;
    const LEAVE_AFTER: usize = 10_000;
    let tansu = Tansu::start();
    let topic = "sse-quotes";
    create_topics(&tansu.brokers, &[(topic, 4), ("sse-quotes-dlq", 1)]).await;
    let cdrs = Cdrs::start(&tansu.brokers, topic, "sse-resume", |c| {
        c.delivery.sse.replay_max_records = 100_000;
        c.delivery.sse.max_subscriber_lag_records = 100_000;
    });
    cdrs.wait_for("/healthz").await;
    let admin = cdrs.admin;
    let mut a = subscribe(admin, None).await;
    let b = subscribe(admin, None).await;
    cdrs.wait_for("/readyz").await;

    let reader_b = tokio::spawn(async move {
        let mut b = b;
        let mut others = Vec::new();
        let mut got = read_records(&mut b, LEAVE_AFTER, &mut others).await;
        drop(b);
        let last = got.last().unwrap().0.clone();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut b = subscribe(admin, Some(&last)).await;
        got.extend(read_records(&mut b, RECORDS as usize - LEAVE_AFTER, &mut others).await);
        (got, others, last)
    });
    let producing = tokio::spawn({
        let brokers = tansu.brokers.clone();
        async move {
            let p = producer(&brokers).unwrap();
            let mut ledger = Ledger::default();
            for from in (0..RECORDS).step_by(CHUNK as usize) {
                merge(
                    &mut ledger,
                    produce_with(&p, topic, &trades(from, CHUNK)).await.unwrap(),
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            ledger
        }
    });
    let started = Instant::now();
    let mut others_a = Vec::new();
    let got_a = read_records(&mut a, RECORDS as usize, &mut others_a).await;
    let took = started.elapsed();
    let mut ledger = producing.await.unwrap();
    let (got_b, others_b, left_at) = reader_b.await.unwrap();

    // Every record reached A once; none lost, none unexpected.
    let ids_a: HashSet<&str> = got_a.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids_a.len(),
        got_a.len(),
        "duplicates at the steady subscriber"
    );
    let produced: HashSet<&str> = ledger.fates.keys().map(String::as_str).collect();
    let lost = produced.difference(&ids_a).count();
    assert_eq!(lost, 0, "records lost");
    assert_eq!(ids_a, produced, "only produced records arrive");
    assert_key_order(&got_a, &ledger);
    // B: exactly A's sequence, across its disconnection.
    let order_a: Vec<&str> = got_a.iter().map(|(id, _)| id.as_str()).collect();
    let order_b: Vec<&str> = got_b.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        order_a == order_b,
        "the resumed subscriber's events differ from the steady one's (left after {left_at})"
    );
    assert!(
        others_a
            .iter()
            .chain(&others_b)
            .all(|e| e.event != "lost" && e.event != "cutoff"),
        "no lost or cutoff events: {others_b:?}"
    );
    let metrics = cdrs.metrics().await;
    assert!(
        metrics.contains(r#"cdrs_sse_resumes_total{result="replayed",stream="quotes"} 1"#),
        "{metrics}"
    );
    eprintln!(
        "sse: {RECORDS} records to 2 subscribers in {took:?}; one left after {LEAVE_AFTER} \
         ({left_at}), came back 2 s later and got the other {} once each, in order",
        RECORDS as usize - LEAVE_AFTER
    );

    // Latency, produce call to event read, at 1,000 records/s.
    const PACED: u64 = 5_000;
    let p = producer(&tansu.brokers).unwrap();
    let paced = tokio::spawn(async move {
        let mut part = Ledger::default();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for from in (RECORDS..RECORDS + PACED).step_by(20) {
            tick.tick().await;
            merge(
                &mut part,
                produce_with(&p, topic, &trades(from, 20)).await.unwrap(),
            );
        }
        part
    });
    let mut latencies = Vec::new();
    let mut others = Vec::new();
    for _ in 0..PACED {
        let (_, data) = read_records(&mut a, 1, &mut others).await.remove(0);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as f64;
        let record: serde_json::Value = serde_json::from_str(&data).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(record["value"].as_str().expect("a text value")).unwrap();
        latencies.push((now_us - value["sent_us"].as_f64().unwrap()) / 1000.0);
    }
    merge(&mut ledger, paced.await.unwrap());
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "sse latency at 1,000 records/s, produce to event: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({PACED} records)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    eprintln!(
        "ledger: produced {} delivered {} lost 0 duplicates 0",
        ledger.fates.len(),
        got_a.len() + latencies.len()
    );
    // /v1/targets shows the stream's subscribers and their lag.
    let targets = cdrs.get_json("/v1/targets").await;
    let t = &targets["targets"][0];
    assert_eq!(t["subscribers"], 1, "{t}");
    assert_eq!(
        t["stream"]["subscribers"].as_array().unwrap().len(),
        1,
        "{t}"
    );

    // The dashboard shows the stream with its subscriber, then — live —
    // the target down once the last subscriber leaves, with the reason.
    let shots = crate::dashboard::shots_dir("streams");
    let url = format!("http://{admin}/ui");
    let (mut driver, mut out, mut stdin) = crate::dashboard::open_dashboard(&url, 1, &shots);
    let ready = crate::dashboard::line(&mut out, Duration::from_secs(90)).await;
    assert_eq!(ready, "READY", "the page shows the stream's target healthy");
    drop(a);
    use tokio::io::AsyncWriteExt;
    stdin.write_all(b"KILLED quotes\n").await.unwrap();
    let down = crate::dashboard::line(&mut out, Duration::from_secs(30)).await;
    eprintln!("dashboard: {down}");
    assert!(
        down.starts_with("DOWN ") && down.contains("no subscriber connected to stream"),
        "{down}"
    );
    let done = crate::dashboard::line(&mut out, Duration::from_secs(60)).await;
    assert_eq!(done, "DONE");
    assert!(driver.wait().await.unwrap().success());
    assert!(
        std::fs::metadata(shots.join("dashboard-healthy.png")).is_ok_and(|m| m.len() > 10_000),
        "screenshot of the stream's row"
    );

    // A subscriber's stream ends with the process.
    let mut c = subscribe(admin, None).await;
    cdrs.stop();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while c.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends when cdrs stops");
}

/// A subscriber that stops reading is cut off once it is
/// `max_subscriber_lag_records` behind, and told why when it reads again;
/// the other subscriber gets every record; the replay buffer stays within
/// its bound, and the peak RSS is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    const RECORDS: u64 = 30_000;
    const BUFFER: usize = 6_000;
    const MAX_LAG: u64 = 3_000;
    let tansu = Tansu::start();
    let topic = "sse-slow";
    create_topics(&tansu.brokers, &[(topic, 4), ("sse-slow-dlq", 1)]).await;
    let mut cdrs = Cdrs::start(&tansu.brokers, topic, "sse-slow", |c| {
        c.delivery.sse.replay_max_records = BUFFER;
        c.delivery.sse.max_subscriber_lag_records = MAX_LAG;
    });
    cdrs.wait_for("/healthz").await;
    let mut reader = subscribe(cdrs.admin, None).await;
    let mut stuck = subscribe(cdrs.admin, None).await;
    cdrs.wait_for("/readyz").await;
    let baseline = cdrs.sample_rss();

    let producing = tokio::spawn({
        let brokers = tansu.brokers.clone();
        async move {
            let p = producer(&brokers).unwrap();
            let mut ledger = Ledger::default();
            for from in (0..RECORDS).step_by(1_000) {
                // ~1 KB values: the stuck connection's socket buffers fill.
                let mut chunk = trades(from, 1_000);
                for (_, v, _) in &mut chunk {
                    v.insert_str(v.len() - 1, &format!(r#","blob":"{}""#, "y".repeat(900)));
                }
                merge(&mut ledger, produce_with(&p, topic, &chunk).await.unwrap());
                // ~10,000 records/s: the reading subscriber keeps up.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ledger
        }
    });
    let mut others = Vec::new();
    let mut got = Vec::new();
    while got.len() < RECORDS as usize {
        got.extend(read_records(&mut reader, 1_000, &mut others).await);
        cdrs.sample_rss();
    }
    let ledger = producing.await.unwrap();
    let ids: HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let produced: HashSet<&str> = ledger.fates.keys().map(String::as_str).collect();
    assert_eq!(ids.len(), got.len(), "duplicates");
    assert_eq!(ids, produced, "the reading subscriber got every record");
    assert_key_order(&got, &ledger);

    let status = cdrs.get_json("/v1/streams").await;
    let quotes = &status[0];
    assert_eq!(quotes["name"], STREAM);
    assert_eq!(
        quotes["subscribers"].as_array().unwrap().len(),
        1,
        "the stuck subscriber left the stream: {status}"
    );
    assert!(
        quotes["buffered_records"].as_u64().unwrap() <= BUFFER as u64,
        "{status}"
    );
    let targets = cdrs.get_json("/v1/targets").await;
    assert_eq!(targets["targets"][0]["subscribers"], 1, "{targets}");
    let metrics = cdrs.metrics().await;
    assert!(
        metrics.contains(r#"cdrs_sse_cutoffs_total{reason="lag",stream="quotes"} 1"#),
        "{metrics}"
    );

    // Reading again: what was in flight to it, then the reason, then the end.
    let mut before_cut = Vec::new();
    let cutoff = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stuck.next())
            .await
            .expect("the stuck subscriber's stream goes on")
            .expect("a cutoff event before the end");
        if e.event == "cutoff" {
            break e;
        }
        before_cut.push(e.id);
    };
    let why: serde_json::Value = serde_json::from_str(&cutoff.data).unwrap();
    assert_eq!(why["reason"], "lag", "{why}");
    assert!(
        why["message"]
            .as_str()
            .unwrap()
            .contains("delivery.sse.max_subscriber_lag_records (3000)"),
        "{why}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), stuck.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the response ends after the cutoff"
    );
    // What it did get has no gap: the start of the reader's sequence.
    let order: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert!(!before_cut.is_empty() && before_cut.len() < got.len());
    assert!(
        order[..before_cut.len()] == before_cut.iter().map(String::as_str).collect::<Vec<_>>()[..],
        "the stuck subscriber's events are a prefix of the reader's"
    );
    let peak = cdrs.sample_rss();
    eprintln!(
        "sse slow subscriber: cut off after {} of {RECORDS} events (max lag {MAX_LAG}); \
         replay buffer {} events; cdrs peak RSS {} MiB (ready: {} MiB)",
        before_cut.len(),
        quotes["buffered_records"],
        peak / 1024,
        baseline / 1024
    );
    eprintln!(
        "ledger: produced {} delivered {} lost 0 duplicates 0",
        ledger.fates.len(),
        got.len()
    );
    cdrs.stop();
}
