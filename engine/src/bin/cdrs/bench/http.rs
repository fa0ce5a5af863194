//! The HTTP part: CDRS delivering to HTTP app servers against a
//! like-for-like rdkafka → HTTP loop, records/s, CPU per record and latency.
//!
//! Both paths read the same 200-byte JSON records from the same topic and
//! POST `{"records": [...]}` bodies, serialised by the same code
//! ([`WireRecord`]) with the same HTTP client ([`HttpSink`]), to the same
//! counting servers, with the same number of concurrent requests per server
//! (`delivery.lanes`) and records per request (`delivery.max_batch`). The
//! loop stores a batch's offsets after its 2xx and lets librdkafka commit
//! them, as CDRS does; what it lacks is what CDRS is for: plugins, per-key
//! order, a commit watermark across concurrent requests, retries elsewhere,
//! dead letters.
//!
//! The servers run in a child process (`cdrs bench-server`), so their CPU
//! is not counted as the path's: they parse each body, count its records and,
//! for records carrying [`SENT_HEADER`], keep the produce → arrival time.

use super::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use cdrs::config::DeliveryConfig;
use cdrs::sink::http::HttpSink;
use rdkafka::message::Headers;
use std::borrow::Cow;
use std::io::BufRead;
use std::sync::Mutex;
use tokio::sync::Semaphore;

/// Header with the record's produce time, µs since the Unix epoch, set by
/// the latency phase's producer (warm-up records go without it).
pub(super) const SENT_HEADER: &str = "bench-sent-us";

/// App servers of the HTTP part.
pub(super) const SERVERS: usize = 3;

/// Produce → arrival times kept per server at most (µs each).
const MAX_AGES: usize = 4_000_000;

/// What the HTTP part measured.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HttpFigures {
    /// Input records per second between the 10% and 90% marks (medians of
    /// the rounds): CDRS, the like-for-like loop.
    pub cdrs_records_per_s: f64,
    pub loop_records_per_s: f64,
    /// CDRS with a filter that keeps every record without reading it (the
    /// demo's router): the path without the JSON filter's work.
    pub cdrs_trivial_records_per_s: f64,
    /// CPU of the bench's process (CDRS or the loop; not the broker, not
    /// the servers) per record, µs.
    pub cdrs_cpu_us_per_record: f64,
    pub cdrs_trivial_cpu_us_per_record: f64,
    pub loop_cpu_us_per_record: f64,
    /// CPU of the broker's and of the servers' processes per record, µs
    /// (0 for an embedded broker, whose CPU counts in the bench's process).
    pub broker_cpu_us_per_record: f64,
    pub servers_cpu_us_per_record: f64,
    /// Records per POST the servers received (medians of the rounds).
    pub cdrs_records_per_request: f64,
    pub loop_records_per_request: f64,
    /// Records/s of the loop while the records are produced as fast as
    /// possible beside it (producer, broker, servers and loop on one
    /// machine): the highest rate the whole setup sustains.
    pub loop_live_records_per_s: f64,
    /// Latency at half of `loop_live_records_per_s` (at 2,000 records/s
    /// with `--quick`, which measures no live rate and reports the loop's
    /// throughput instead).
    pub half_load: LatencyAt,
    /// The same at [`LOW_RATE`] (not with `--quick`).
    pub low_rate: LatencyAt,
}

// ---- the counting servers (child process) ----

/// State shared by the servers of one `cdrs bench-server` process: one
/// count for all, so the bench reads it with one request whatever the
/// number of servers (reading 64 counts one after the other under load
/// took longer than a whole run).
#[derive(Default)]
struct Counter {
    records: AtomicU64,
    requests: AtomicU64,
    ages_us: Mutex<Vec<u32>>,
}

#[derive(serde::Deserialize)]
struct CountBatch<'a> {
    #[serde(borrow)]
    records: Vec<CountRecord<'a>>,
}

#[derive(serde::Deserialize)]
struct CountRecord<'a> {
    #[serde(borrow, default)]
    headers: Vec<CountHeader<'a>>,
}

#[derive(serde::Deserialize)]
struct CountHeader<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn receive(State(c): State<Arc<Counter>>, body: Bytes) -> axum::http::StatusCode {
    let now = now_us();
    let Ok(batch) = serde_json::from_slice::<CountBatch>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let sent: Vec<u32> = batch
        .records
        .iter()
        .filter_map(|r| {
            let h = r.headers.iter().find(|h| h.key == SENT_HEADER)?;
            let at: u64 = h.value.as_deref()?.parse().ok()?;
            Some(now.saturating_sub(at).min(u32::MAX as u64) as u32)
        })
        .collect();
    if !sent.is_empty() {
        let mut ages = c.ages_us.lock().expect("ages lock");
        if ages.len() + sent.len() <= MAX_AGES {
            ages.extend(sent);
        }
    }
    c.records
        .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
    c.requests.fetch_add(1, Ordering::Relaxed);
    axum::http::StatusCode::OK
}

async fn stats(State(c): State<Arc<Counter>>) -> String {
    format!(
        "{} {}",
        c.records.load(Ordering::Relaxed),
        c.requests.load(Ordering::Relaxed)
    )
}

async fn take_ages(State(c): State<Arc<Counter>>) -> axum::Json<Vec<u32>> {
    axum::Json(std::mem::take(&mut *c.ages_us.lock().expect("ages lock")))
}

/// `cdrs bench-server`: `count` counting app servers on free loopback ports
/// (`POST /records`; `GET /count`: records and requests received so far by
/// all of them, as two numbers;
/// `POST /ages`: the produce → arrival times in µs kept since the last
/// call, all servers'). Prints the ports on one line, serves until its
/// stdin closes (the bench is gone).
pub(crate) fn serve(count: usize) -> anyhow::Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        let mut ports = Vec::new();
        let counter = Arc::new(Counter::default());
        for _ in 0..count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ports.push(listener.local_addr()?.port().to_string());
            let app = axum::Router::new()
                .route("/records", post(receive))
                .route("/count", get(stats))
                .route("/ages", post(take_ages))
                .with_state(counter.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        println!("{}", ports.join(" "));
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .lock()
                .read_line(&mut sink)
                .is_ok_and(|n| n > 0)
            {
                sink.clear();
            }
        })
        .await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// The counting servers as seen from the bench: a child process.
pub(super) struct CountingServers {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT` of each server.
    bases: Vec<String>,
    client: reqwest::Client,
}

impl CountingServers {
    pub(super) fn start(count: usize) -> anyhow::Result<CountingServers> {
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().context("cannot find the cdrs binary")?;
        let mut child = Command::new(exe)
            .args(["bench-server", "--servers", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to start `cdrs bench-server`")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
        let bases: Vec<String> = line
            .split_whitespace()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        anyhow::ensure!(
            bases.len() == count,
            "`cdrs bench-server` printed {line:?}, expected {count} ports"
        );
        Ok(CountingServers {
            child,
            bases,
            client: cdrs::tls::plain_client(),
        })
    }

    /// The delivery URL of each server.
    pub(super) fn urls(&self) -> Vec<String> {
        self.bases.iter().map(|b| format!("{b}/records")).collect()
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Records received by all servers so far.
    pub(super) async fn received(&self) -> anyhow::Result<u64> {
        Ok(self.counts().await?.0)
    }

    /// Records and requests received by all servers so far.
    pub(super) async fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let text = self
            .client
            .get(format!("{}/count", self.bases[0]))
            .send()
            .await?
            .text()
            .await?;
        let mut n = text.split_whitespace().map(str::parse::<u64>);
        match (n.next(), n.next()) {
            (Some(Ok(records)), Some(Ok(requests))) => Ok((records, requests)),
            _ => anyhow::bail!("`cdrs bench-server` answered {text:?} to GET /count"),
        }
    }

    /// Produce → arrival times of all servers since the last call, ms.
    pub(super) async fn take_ages_ms(&self) -> anyhow::Result<Vec<f64>> {
        let ages: Vec<u32> = self
            .client
            .post(format!("{}/ages", self.bases[0]))
            .send()
            .await?
            .json()
            .await?;
        Ok(ages.into_iter().map(|us| us as f64 / 1000.0).collect())
    }
}

impl Drop for CountingServers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the like-for-like loop ----

/// A running rdkafka → HTTP loop, until [`HttpLoop::stop`]ped (a bench that
/// fails half-way leaves it to the process's exit).
pub(super) struct HttpLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: tokio::task::JoinHandle<anyhow::Result<()>>,
    sender: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl HttpLoop {
    /// Consumes `input` in consumer group `group` and POSTs batches of up
    /// to `delivery.max_batch` records round-robin to `urls`, at most
    /// `delivery.lanes` requests at a time per URL; a failed POST is tried
    /// again at the same URL after 50 ms; after a 2xx the batch's highest
    /// offset per partition is stored (auto-committed as CDRS's are).
    pub(super) fn start(
        link: &Link,
        input: &str,
        group: &str,
        urls: Vec<String>,
        delivery: &DeliveryConfig,
    ) -> anyhow::Result<HttpLoop> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &link.brokers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                cdrs::kafka::AUTO_COMMIT_INTERVAL_MS,
            )
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", link.fetch_wait_ms)
            .set(
                "fetch.queue.backoff.ms",
                cdrs::kafka::FETCH_QUEUE_BACKOFF_MS,
            );
        for (k, v) in GROUP_OPTIONS {
            cfg.set(k, v);
        }
        let consumer: Arc<BaseConsumer> = Arc::new(cfg.create()?);
        consumer.subscribe(&[input])?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lanes = delivery.lanes.max(1);
        let max_batch = delivery.max_batch.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Record>>(lanes * urls.len());
        let (c, halt, topic) = (consumer.clone(), stop.clone(), Arc::<str>::from(input));
        let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            while !halt.load(Ordering::Relaxed) {
                let mut batch = Vec::with_capacity(max_batch);
                let mut wait = Duration::from_millis(100);
                while batch.len() < max_batch {
                    let Some(m) = c.poll(wait) else { break };
                    batch.push(to_record(&m?, &topic));
                    wait = Duration::ZERO;
                }
                if !batch.is_empty() && tx.blocking_send(batch).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let sink = HttpSink::standalone(delivery)?;
        let input = input.to_string();
        let sender = tokio::spawn(async move {
            let gates: Vec<Arc<Semaphore>> = urls
                .iter()
                .map(|_| Arc::new(Semaphore::new(lanes)))
                .collect();
            let mut next = 0;
            while let Some(batch) = rx.recv().await {
                let t = next % urls.len();
                next += 1;
                let permit = gates[t].clone().acquire_owned().await?;
                let (sink, url, c, topic) = (
                    sink.clone(),
                    urls[t].clone(),
                    consumer.clone(),
                    input.clone(),
                );
                tokio::spawn(async move {
                    let refs: Vec<&Record> = batch.iter().collect();
                    while sink.post("loop", &url, &refs).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let mut high: Vec<(i32, i64)> = Vec::new();
                    for r in &batch {
                        match high.iter_mut().find(|(p, _)| *p == r.partition) {
                            Some((_, o)) => *o = (*o).max(r.offset),
                            None => high.push((r.partition, r.offset)),
                        }
                    }
                    for (p, o) in high {
                        let _ = c.store_offset(&topic, p, o);
                    }
                    drop(permit);
                });
            }
            // Wait for the requests in flight.
            for g in &gates {
                let _ = g.acquire_many(lanes as u32).await?;
            }
            Ok(())
        });
        Ok(HttpLoop {
            stop,
            reader,
            sender,
        })
    }

    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader.await??;
        self.sender.await??;
        Ok(())
    }
}

/// What CDRS's source makes of a consumed record (without its reserved-
/// header check: the bench's records carry none).
fn to_record(m: &rdkafka::message::BorrowedMessage<'_>, topic: &Arc<str>) -> Record {
    Record {
        topic: topic.clone(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        }),
    }
}

// ---- the runs ----

/// What one throughput run took between the 10% and 90% marks.
struct Run {
    span: Duration,
    /// CPU seconds of this process, the broker's and the servers'.
    cpu: [f64; 3],
}

/// The CPU seconds [`Run::cpu`] counts, now.
fn cpu_now(link: &Link, servers: &CountingServers) -> [f64; 3] {
    [
        cpu_seconds(None),
        link.pid.map_or(0.0, |p| cpu_seconds(Some(p))),
        cpu_seconds(Some(servers.pid())),
    ]
}

/// Waits until the servers got `want` more records than `base`, noting the
/// time and CPU at the 10% and 90% marks (polled every 5 ms).
async fn watch_servers(
    link: &Link,
    servers: &CountingServers,
    (base, want): (u64, u64),
    limit: Duration,
) -> anyhow::Result<Run> {
    let (from, to) = (want / 10, want * 9 / 10);
    let (mut first, mut last) = (None, None);
    let deadline = Instant::now() + limit;
    loop {
        let seen = servers.received().await?.saturating_sub(base);
        let now = Instant::now();
        if first.is_none() && seen >= from.max(1) {
            first = Some((now, cpu_now(link, servers)));
        }
        if last.is_none() && seen >= to.max(1) {
            last = Some((now, cpu_now(link, servers)));
        }
        if seen >= want {
            break;
        }
        anyhow::ensure!(
            now < deadline,
            "only {seen} of {want} records reached the app servers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ((t0, c0), (t1, c1)) = (first.expect("10% mark"), last.expect("90% mark"));
    Ok(Run {
        // Not below the polling interval: a small run can pass both marks
        // between two polls.
        span: (t1 - t0).max(Duration::from_millis(5)),
        cpu: [c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]],
    })
}

/// The bench's three HTTP targets: the counting servers, equal capacities.
fn http_targets(urls: &[String]) -> Vec<TargetConfig> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| TargetConfig {
            id: format!("app-{i}"),
            url: url.clone(),
            capacity: 100,
            weight: cdrs::config::DEFAULT_WEIGHT,
            zone: None,
            labels: Default::default(),
            health_url: None,
            report_token: None,
            tls: None,
        })
        .collect()
}

/// The first `n` bench records the demo filter keeps, so both paths
/// deliver the same records.
fn kept_records(n: u64) -> Vec<(String, String, Fate)> {
    (0..)
        .map(record)
        .filter(|r| r.2 == Fate::Delivered)
        .take(n as usize)
        .collect()
}

/// The HTTP part: throughput rounds (CDRS and the loop interleaved, three
/// rounds, one with `--quick`), then latency at half the loop's rate.
pub(super) async fn http(opts: &BenchOptions) -> anyhow::Result<HttpFigures> {
    let cluster = Running::start(&opts.broker).await?;
    let link = cluster.link();
    let servers = CountingServers::start(SERVERS)?;
    let urls = servers.urls();
    let run = run_id();
    let name = |what: &str| format!("bench-http-{what}-{run}");
    let (input, dlq) = (name("in"), name("dlq"));
    cluster.create_topic(&input, PARTITIONS).await?;
    cluster.create_topic(&dlq, 1).await?;
    let n = opts.records;
    produce_events(&link.brokers, &input, kept_records(n)).await?;
    let limit = Duration::from_secs(300);
    let delivery = DeliveryConfig::default();
    let rounds = if opts.quick { 1 } else { 3 };
    let mut runs: [Vec<Run>; 3] = Default::default();
    let mut batches: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..3 {
            // 0: the loop, 1: CDRS, 2: CDRS with the trivial filter; each
            // round starts with another.
            let path = (round + k) % 3;
            let group = name(&format!("path{path}-{round}"));
            let (base, requests) = servers.counts().await?;
            let w = if path == 0 {
                let l = HttpLoop::start(&link, &input, &group, urls.clone(), &delivery)?;
                let w = watch_servers(&link, &servers, (base, n), limit).await?;
                l.stop().await?;
                w
            } else {
                let mut cfg = http_config(&link, &group, (&input, &dlq), &urls, opts);
                if path == 2 {
                    cfg.filters = vec![super::trivial_filter(&opts.plugin_dir)];
                }
                let daemon = Daemon::start(cfg, None).await?;
                let w = watch_servers(&link, &servers, (base, n), limit).await?;
                daemon.stop().await?;
                w
            };
            let (records, after) = servers.counts().await?;
            batches[path].push((records - base) as f64 / (after - requests).max(1) as f64);
            runs[path].push(w);
        }
    }
    let rate = |rs: &[Run]| {
        median(
            rs.iter()
                .map(|r| 0.8 * n as f64 / r.span.as_secs_f64())
                .collect(),
        )
    };
    let cpu_us = |rs: &[Run], i: usize| {
        median(
            rs.iter()
                .map(|r| r.cpu[i] * 1e6 / (0.8 * n as f64))
                .collect(),
        )
    };
    let mut f = HttpFigures {
        loop_records_per_s: rate(&runs[0]),
        cdrs_records_per_s: rate(&runs[1]),
        cdrs_trivial_records_per_s: rate(&runs[2]),
        loop_cpu_us_per_record: cpu_us(&runs[0], 0),
        cdrs_cpu_us_per_record: cpu_us(&runs[1], 0),
        cdrs_trivial_cpu_us_per_record: cpu_us(&runs[2], 0),
        broker_cpu_us_per_record: cpu_us(&runs[1], 1),
        servers_cpu_us_per_record: cpu_us(&runs[1], 2),
        loop_records_per_request: median(batches[0].clone()),
        cdrs_records_per_request: median(batches[1].clone()),
        ..HttpFigures::default()
    };

    // The loop's highest rate with the records produced while it runs (the
    // producer, the broker and the servers share the machine with it), then
    // latency at half that rate, each path on a topic of its own.
    // `--quick`: 2,000 records/s, no flood.
    if opts.quick {
        f.loop_live_records_per_s = f.loop_records_per_s;
        f.half_load.rate = 2_000.0;
    } else {
        let live = name("live");
        cluster.create_topic(&live, PARTITIONS).await?;
        let l = HttpLoop::start(&link, &live, &name("live"), urls.clone(), &delivery)?;
        // Warm up (group join, first fetch) before the measured flood.
        let base = servers.received().await?;
        flood(&link, &live, kept_records(1_000)).await??;
        watch_servers(&link, &servers, (base, 1_000), limit).await?;
        f.loop_live_records_per_s = live_rate(&link, &servers, &live, n, limit).await?;
        l.stop().await?;
        f.half_load.rate = f.loop_live_records_per_s / 2.0;
    }
    let measured = if opts.quick { 1.0 } else { 5.0 };
    let mut rates = vec![("lat", f.half_load.rate)];
    if !opts.quick {
        rates.push(("low", LOW_RATE));
    }
    for (tag, rate) in rates {
        let (cdrs_in, loop_in) = (name(&format!("{tag}-cdrs")), name(&format!("{tag}-loop")));
        for t in [&cdrs_in, &loop_in] {
            cluster.create_topic(t, PARTITIONS).await?;
        }
        let mut at = LatencyAt {
            rate,
            ..LatencyAt::default()
        };
        let cfg = http_config(&link, &cdrs_in, (&cdrs_in, &dlq), &urls, opts);
        let daemon = Daemon::start(cfg, None).await?;
        daemon.wait_ready(Duration::from_secs(60)).await?;
        let arrivals = Arrivals::Servers(&servers);
        (at.cdrs_p50_ms, at.cdrs_p99_ms) =
            paced_latency(&link, &arrivals, &cdrs_in, rate, measured, limit).await?;
        daemon.stop().await?;
        let l = HttpLoop::start(&link, &loop_in, &loop_in, urls.clone(), &delivery)?;
        (at.loop_p50_ms, at.loop_p99_ms) =
            paced_latency(&link, &arrivals, &loop_in, rate, measured, limit).await?;
        l.stop().await?;
        // The floor both stand on: produce → a consumer of the topic.
        let one_leg = name(&format!("{tag}-broker"));
        cluster.create_topic(&one_leg, PARTITIONS).await?;
        let arrivals = Arrivals::Consumer(ConsumerWatch::start(&link, &one_leg)?);
        (at.broker_p50_ms, at.broker_p99_ms) =
            paced_latency(&link, &arrivals, &one_leg, rate, measured, limit).await?;
        if tag == "lat" {
            f.half_load = at;
        } else {
            f.low_rate = at;
        }
    }
    Ok(f)
}

/// The HTTP part's second, low latency rate, records/s: the `kafka://`
/// latency phase's, where the broker alone takes milliseconds, not tens.
pub(super) const LOW_RATE: f64 = 2_000.0;

/// Produce → arrival latency at one steady rate (records/s), ms: at the
/// servers through CDRS and through the loop, and from producer to a
/// consumer of the topic (the broker alone: one leg; both paths consume one
/// leg and POST).
#[derive(Debug, Default, Clone, Serialize)]
pub struct LatencyAt {
    pub rate: f64,
    pub cdrs_p50_ms: f64,
    pub cdrs_p99_ms: f64,
    pub loop_p50_ms: f64,
    pub loop_p99_ms: f64,
    pub broker_p50_ms: f64,
    pub broker_p99_ms: f64,
}

/// CDRS from `input` to the counting servers with the demo's filter and
/// router; `opts.kafka_options` go last into `[kafka.options]`.
fn http_config(
    link: &Link,
    group: &str,
    (input, dlq): (&str, &str),
    urls: &[String],
    opts: &BenchOptions,
) -> cdrs::config::Config {
    let mut cfg = demo_config(
        &link.brokers,
        group,
        input,
        dlq,
        &opts.plugin_dir,
        http_targets(urls),
    );
    cfg.log.level = "warn".into();
    // The data path only: on an external broker the bench must not join
    // that cluster's fleet through its control topic.
    cfg.control.enabled = false;
    cfg.kafka
        .options
        .insert("fetch.wait.max.ms".into(), link.fetch_wait_ms.into());
    for (k, v) in GROUP_OPTIONS {
        cfg.kafka.options.insert(k.into(), v.into());
    }
    for (k, v) in &opts.kafka_options {
        cfg.kafka.options.insert(k.clone(), v.clone());
    }
    cfg
}

/// Records/s reaching the servers while `n` records are produced to `topic`
/// as fast as the producer takes them: the servers' count is sampled every
/// 5 ms, and the rate taken between a quarter of the flood's time and its
/// end — while the producer, the broker and the path all run — so a path
/// that falls behind is measured at its own rate, one that keeps up at the
/// producer's.
async fn live_rate(
    link: &Link,
    servers: &CountingServers,
    topic: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<f64> {
    let base = servers.received().await?;
    let started = Instant::now();
    let producing = flood(link, topic, kept_records(n));
    let mut samples = vec![(started, base)];
    while !producing.is_finished() {
        anyhow::ensure!(
            started.elapsed() < limit,
            "flood of {n} records did not end"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        samples.push((Instant::now(), servers.received().await?));
    }
    producing.await??;
    let end = *samples.last().expect("a sample");
    let from = started + (end.0 - started) / 4;
    let start = samples
        .iter()
        .find(|(t, _)| *t >= from)
        .copied()
        .unwrap_or(end);
    let span = (end.0 - start.0).as_secs_f64();
    anyhow::ensure!(span > 0.05, "flood of {n} records too short to measure");
    // Let the rest arrive before the next phase.
    watch_servers(link, servers, (base, n), limit).await?;
    Ok((end.1 - start.1) as f64 / span)
}

/// Produces `records` to `topic` as fast as the producer takes them, on a
/// blocking thread.
fn flood(
    link: &Link,
    topic: &str,
    records: Vec<(String, String, Fate)>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (brokers, topic) = (link.brokers.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "5")
            .create()?;
        for (key, value, _) in &records {
            let mut rec = BaseRecord::to(&topic).key(key).payload(value);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60))?;
        Ok(())
    })
}

/// Where the latency phase sees records arrive: at the app servers, or at
/// a consumer of the input topic (the broker alone: one leg, the floor).
pub(super) enum Arrivals<'a> {
    Servers(&'a CountingServers),
    Consumer(ConsumerWatch),
}

impl Arrivals<'_> {
    async fn received(&self) -> anyhow::Result<u64> {
        match self {
            Arrivals::Servers(s) => s.received().await,
            Arrivals::Consumer(c) => Ok(c.seen.load(Ordering::Relaxed)),
        }
    }

    async fn take_ages_ms(&self) -> anyhow::Result<Vec<f64>> {
        match self {
            Arrivals::Servers(s) => s.take_ages_ms().await,
            Arrivals::Consumer(c) => Ok(std::mem::take(&mut *c.ages.lock().expect("ages lock"))),
        }
    }
}

/// A consumer assigned every partition of a topic from its start, on a
/// thread of its own, counting records and keeping (consume − produce time)
/// of those with [`SENT_HEADER`], ms.
pub(super) struct ConsumerWatch {
    seen: Arc<AtomicU64>,
    ages: Arc<Mutex<Vec<f64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ConsumerWatch {
    pub(super) fn start(link: &Link, topic: &str) -> anyhow::Result<ConsumerWatch> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &link.brokers)
            .set("group.id", format!("bench-watch-{topic}"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", link.fetch_wait_ms)
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let watch = ConsumerWatch {
            seen: Arc::default(),
            ages: Arc::default(),
            stop: Arc::default(),
        };
        let (seen, ages, stop) = (watch.seen.clone(), watch.ages.clone(), watch.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = now_us();
                let sent = m.headers().and_then(|hs| {
                    let h = hs.iter().find(|h| h.key == SENT_HEADER)?;
                    std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok()
                });
                if let Some(at) = sent {
                    let age = now.saturating_sub(at) as f64 / 1000.0;
                    ages.lock().expect("ages lock").push(age);
                }
                seen.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(watch)
    }
}

impl Drop for ConsumerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Produces to `input` at a steady `rate` records/s: one second of warm-up
/// (no [`SENT_HEADER`]; waited for until the servers got it, so a group
/// join or a first fetch is not measured), then `seconds` of records
/// stamped with their produce time. p50 and p99 of produce → arrival at the
/// servers, ms.
async fn paced_latency(
    link: &Link,
    servers: &Arrivals<'_>,
    input: &str,
    rate: f64,
    seconds: f64,
    limit: Duration,
) -> anyhow::Result<(f64, f64)> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &link.brokers)
        .set("linger.ms", "1")
        .create()?;
    let base = servers.received().await?;
    let _ = servers.take_ages_ms().await?;
    let warm = (rate as u64).max(100);
    let measured = ((rate * seconds) as u64).max(100);
    let records = kept_records(warm + measured);
    let mut sent = 0u64;
    let mut stamp = String::new();
    for (phase, count) in [(0, warm), (1, measured)] {
        if phase == 1 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while servers.received().await? < base + warm && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let started = Instant::now();
        let mut done = 0u64;
        while done < count {
            let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(count);
            while done < due {
                let (key, value, _) = &records[sent as usize];
                let mut rec = BaseRecord::to(input).key(key).payload(value);
                if phase == 1 {
                    use std::fmt::Write;
                    stamp.clear();
                    let _ = write!(stamp, "{}", now_us());
                    rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: SENT_HEADER,
                            value: Some(stamp.as_bytes()),
                        },
                    ));
                }
                let mut rec = rec;
                loop {
                    match p.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                done += 1;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    p.flush(Duration::from_secs(30))?;
    let deadline = Instant::now() + limit;
    while servers.received().await? < base + warm + measured {
        anyhow::ensure!(
            Instant::now() < deadline,
            "latency phase: not every record reached the app servers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ages = servers.take_ages_ms().await?;
    anyhow::ensure!(
        ages.len() as u64 >= measured,
        "latency phase: {} of {measured} stamped records were timed",
        ages.len()
    );
    ages.sort_by(f64::total_cmp);
    let q = |p: f64| ages[((ages.len() as f64 - 1.0) * p) as usize];
    Ok((q(0.5), q(0.99)))
}

/// One configuration of the scaling runs.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScalingRow {
    pub targets: usize,
    pub partitions: i32,
    /// Input records/s between the 10% and 90% marks.
    pub records_per_s: f64,
    /// CPU of the bench process (CDRS) per record, µs.
    pub cpu_us_per_record: f64,
    /// Resident set of the bench process once the run's records arrived,
    /// bytes (the daemon still running).
    pub rss_bytes: u64,
}

/// Targets and partitions of the scaling runs: the targets with 6
/// partitions, then the partitions with 3 targets.
pub(super) const SCALING: [(usize, i32); 6] = [(1, 6), (3, 6), (16, 6), (64, 6), (3, 1), (3, 24)];

/// CDRS's HTTP path (demo filter and router) with 1 to 64 targets and 1 to
/// 24 partitions: one run each over `records / 2` records, on a broker and
/// servers of its own.
pub(super) async fn scaling(opts: &BenchOptions) -> anyhow::Result<Vec<ScalingRow>> {
    let cluster = Running::start(&opts.broker).await?;
    let link = cluster.link();
    let most = SCALING.iter().map(|s| s.0).max().unwrap_or(1);
    let servers = CountingServers::start(most)?;
    let urls = servers.urls();
    let run = run_id();
    let name = |what: &str| format!("bench-scaling-{what}-{run}");
    let n = (opts.records / 2).max(1_000);
    let dlq = name("dlq");
    cluster.create_topic(&dlq, 1).await?;
    let mut partition_counts: Vec<i32> = SCALING.iter().map(|s| s.1).collect();
    partition_counts.sort_unstable();
    partition_counts.dedup();
    for p in &partition_counts {
        let topic = name(&format!("in-{p}"));
        cluster.create_topic(&topic, *p).await?;
        produce_events(&link.brokers, &topic, kept_records(n)).await?;
    }
    let limit = Duration::from_secs(300);
    let mut rows = Vec::new();
    for (targets, partitions) in SCALING {
        let topic = name(&format!("in-{partitions}"));
        let group = name(&format!("{targets}-{partitions}"));
        let cfg = http_config(&link, &group, (&topic, &dlq), &urls[..targets], opts);
        let base = servers.received().await?;
        let daemon = Daemon::start(cfg, None).await?;
        let w = watch_servers(&link, &servers, (base, n), limit).await?;
        let rss_bytes = rss_bytes("VmRSS");
        daemon.stop().await?;
        rows.push(ScalingRow {
            targets,
            partitions,
            records_per_s: 0.8 * n as f64 / w.span.as_secs_f64(),
            cpu_us_per_record: w.cpu[0] * 1e6 / (0.8 * n as f64),
            rss_bytes,
        });
    }
    Ok(rows)
}
