//! End to end through a broker: CDRS against a bare and a like-for-like
//! rdkafka consume → produce loop, and latency at a steady rate.

use super::*;

#[derive(Default)]
pub(super) struct EndToEnd {
    /// CPU seconds per wall second (cores busy) while the 10%..90% of each
    /// run passed: bare passthrough, trivial, JSON, like-for-like
    /// passthrough (the embedded broker included).
    pub(super) busy_cores: Vec<f64>,
    /// The same for the broker's own process (Tansu; 0 when embedded).
    pub(super) broker_cores: Vec<f64>,
    pub(super) passthrough: f64,
    pub(super) passthrough_like_cdrs: f64,
    pub(super) trivial: f64,
    pub(super) json: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) passthrough_p50_ms: f64,
    pub(super) passthrough_p99_ms: f64,
    pub(super) broker_p50_ms: f64,
    pub(super) broker_p99_ms: f64,
    /// CDRS with the JSON filter on records that all carry a sampled
    /// `traceparent`: tracing off, and on at [`TRACED_SAMPLE_RATIO`]
    /// (exported to a receiver that discards).
    pub(super) json_traced_off: f64,
    pub(super) json_traced_on: f64,
}

/// `telemetry.sample_ratio` of the tracing-cost paths.
pub(super) const TRACED_SAMPLE_RATIO: f64 = 0.01;

/// Produces `events` to `topic`, each with a sampled `traceparent` of a
/// trace of its own.
async fn produce_traced(
    brokers: &str,
    topic: &str,
    events: &[(String, String, Fate)],
) -> anyhow::Result<()> {
    let p = cdrs::testkit::producer(brokers)?;
    for chunk in events.chunks(2000) {
        let sends = chunk.iter().map(|(key, value, _)| {
            let tp = format!(
                "00-{:016x}{:016x}-{:016x}-01",
                fastrand::u64(..),
                fastrand::u64(..),
                fastrand::u64(1..)
            );
            let p = &p;
            async move {
                let headers =
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: cdrs::telemetry::TRACEPARENT,
                        value: Some(&tp),
                    });
                let rec = rdkafka::producer::FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .headers(headers);
                p.send(rec, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    Ok(())
}

/// An OTLP/HTTP receiver on 127.0.0.1 that answers 200 and keeps nothing:
/// the export's cost stays in CDRS, not in a collector.
async fn discarding_otlp_receiver() -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|_: axum::body::Bytes| async { "{}" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Partitions of every bench topic.
pub(super) const PARTITIONS: i32 = 6;

/// Group settings of the bench's group consumers: a real broker (Tansu)
/// holds a group's first JoinGroup for the rebalance timeout, which is
/// `max.poll.interval.ms` (default 5 min).
pub(super) const GROUP_OPTIONS: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("max.poll.interval.ms", "6000"),
];

/// Counts records on `topic` until `want`. Returns the time between the
/// 10th and the 90th percentile record seen (steady state: no group join,
/// no tail) and each record's age (now − its timestamp) in ms.
pub(super) fn watch_topic(
    link: &Link,
    topic: &str,
    want: usize,
    limit: Duration,
    progress: Option<Arc<AtomicUsize>>,
) -> anyhow::Result<Watched> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &link.brokers)
        .set("group.id", format!("bench-watch-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", link.fetch_wait_ms)
        .create()?;
    // Assigned, not subscribed: no group join to wait for.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (from, to) = (want / 10, want * 9 / 10);
    let (mut first, mut last, mut seen) = (None, None, 0usize);
    let cpu = || {
        (
            cpu_seconds(None),
            link.pid.map_or(0.0, |p| cpu_seconds(Some(p))),
        )
    };
    let (mut cpu_first, mut cpu_last) = ((0.0, 0.0), (0.0, 0.0));
    let mut ages = Vec::new();
    let deadline = Instant::now() + limit;
    while seen < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {seen} of {want} records reached {topic}"
        );
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let now = Instant::now();
        seen += 1;
        if let Some(p) = &progress {
            p.store(seen, Ordering::Relaxed);
        }
        if seen == from.max(1) {
            first = Some(now);
            cpu_first = cpu();
        }
        if seen == to.max(1) {
            last = Some(now);
            cpu_last = cpu();
        }
        if let Some(ts) = m.timestamp().to_millis() {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            ages.push((wall - ts) as f64);
        }
    }
    let span = last.zip(first).map_or(Duration::ZERO, |(l, f)| l - f);
    Ok(Watched {
        span,
        ages,
        busy_cores: (cpu_last.0 - cpu_first.0) / span.as_secs_f64().max(1e-3),
        broker_cores: (cpu_last.1 - cpu_first.1) / span.as_secs_f64().max(1e-3),
    })
}

/// What [`watch_topic`] saw between the 10% and 90% marks.
pub(super) struct Watched {
    pub(super) span: Duration,
    /// Consume time minus record timestamp per record, ms.
    pub(super) ages: Vec<f64>,
    /// CPU seconds of this process (broker included) per wall second.
    pub(super) busy_cores: f64,
    /// The same for the broker's process (0 when it runs in this one).
    pub(super) broker_cores: f64,
}

/// CDRS from `input` to the `kafka://` target `out` with `filter` and the
/// non-sticky P2C router; `tag` names its consumer group, `dlq` is the
/// dead-letter topic; `opts.kafka_options` go last into `[kafka.options]`.
pub(super) fn config(
    link: &Link,
    (tag, dlq): (&str, &str),
    input: &str,
    out: &str,
    filter: PluginConfig,
    opts: &BenchOptions,
) -> cdrs::config::Config {
    let plugin_dir = &opts.plugin_dir;
    let target = TargetConfig {
        id: "sink".into(),
        url: format!("kafka://{out}"),
        capacity: 10_000,
        weight: cdrs::config::DEFAULT_WEIGHT,
        zone: None,
        labels: Default::default(),
        health_url: None,
        report_token: None,
        tls: None,
    };
    let mut cfg = demo_config(
        &link.brokers,
        &format!("bench-{tag}"),
        input,
        dlq,
        plugin_dir,
        vec![target],
    );
    cfg.filters = vec![filter];
    cfg.router = demo_router(plugin_dir, false);
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

/// rdkafka alone: consume → produce, nothing else (each output topic gets
/// its own consumer group). `like_cdrs`: the records produced as CDRS's
/// Kafka sink produces them (idempotent producer, `acks=all`, the
/// `cdrs-idempotency-key` header); otherwise bare (default producer, no
/// header).
pub(super) async fn passthrough(
    link: &Link,
    (input, out): (&str, &str),
    like_cdrs: bool,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Watched> {
    let copier = copier(link, (input, out), like_cdrs, n);
    let (l, out) = (link.clone(), out.to_string());
    let w = tokio::task::spawn_blocking(move || watch_topic(&l, &out, n as usize, limit, None))
        .await??;
    copier.await??;
    Ok(w)
}

/// The copy loop of [`passthrough`]: `n` records from `input` to `out`, on
/// a blocking thread.
pub(super) fn copier(
    link: &Link,
    (input, out): (&str, &str),
    like_cdrs: bool,
    n: u64,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (l, input, topic) = (link.clone(), input.to_string(), out.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &l.brokers)
            .set("group.id", format!("{topic}-group"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", l.fetch_wait_ms)
            // As CDRS's source sets it: without it, a copy loop that fell
            // 100,000 records behind the fetcher idled ~0.8 s at a time.
            .set(
                "fetch.queue.backoff.ms",
                cdrs::kafka::FETCH_QUEUE_BACKOFF_MS,
            );
        for (k, v) in GROUP_OPTIONS {
            cfg.set(k, v);
        }
        let c: BaseConsumer = cfg.create()?;
        c.subscribe(&[&input])?;
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &l.brokers)
            .set("linger.ms", "5");
        if like_cdrs {
            pc.set("enable.idempotence", "true").set("acks", "all");
        }
        let p: ThreadedProducer<DefaultProducerContext> = pc.create()?;
        let mut copied = 0;
        let mut id = String::new();
        while copied < n {
            let Some(m) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(v) = m.payload() {
                rec = rec.payload(v);
            }
            if like_cdrs {
                // As CDRS's Kafka sink does: the latency phase measures
                // from the input record's timestamp, so a copy stamped
                // anew would hide the input leg, and this loop's latency
                // would cover only its output leg while CDRS's covers both.
                if let Some(ts) = m.timestamp().to_millis() {
                    rec = rec.timestamp(ts);
                }
                use std::fmt::Write;
                id.clear();
                let _ = write!(id, "{}/{}/{}", m.topic(), m.partition(), m.offset());
                rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                    rdkafka::message::Header {
                        key: cdrs::sink::http::IDEMPOTENCY_HEADER,
                        value: Some(id.as_bytes()),
                    },
                ));
            }
            let mut rec = rec;
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            copied += 1;
        }
        p.flush(Duration::from_secs(30))?;
        Ok(())
    })
}

pub(super) async fn end_to_end(opts: &BenchOptions) -> anyhow::Result<EndToEnd> {
    // `--only latency`: no throughput rounds, nothing produced for them.
    let latency_only = opts.only.as_deref() == Some("latency");
    let n = if latency_only { 0 } else { opts.records };
    let cluster = Running::start(&opts.broker).await?;
    // Topic and group names unique per run: an external broker keeps them.
    let run = run_id();
    let name = |what: &str| format!("bench-{what}-{run}");
    let (input, dlq) = (name("in"), name("dlq"));
    cluster.create_topic(&input, PARTITIONS).await?;
    cluster.create_topic(&dlq, 1).await?;
    let link = cluster.link();
    let events: Vec<_> = (0..n).map(record).collect();
    let kept = events.iter().filter(|e| e.2 == Fate::Delivered).count();
    // The same records, each with a sampled traceparent.
    let traced_input = name("in-traced");
    cluster.create_topic(&traced_input, PARTITIONS).await?;
    produce_traced(&link.brokers, &traced_input, &events).await?;
    produce_events(&link.brokers, &input, events).await?;
    let otlp = discarding_otlp_receiver().await?;
    let limit = Duration::from_secs(300);

    let trivial_filter = super::trivial_filter(&opts.plugin_dir);
    // Three rounds (one with --quick), the paths interleaved so a noisy
    // neighbour hits all of them alike, each round starting at another
    // path (a broker may slow down as it fills); each figure is the median.
    // Paths: 0 bare passthrough, 1 CDRS trivial, 2 CDRS JSON, 3 like-for-like
    // passthrough, 4 CDRS JSON on traced records with tracing off, 5 the
    // same with tracing on at 1%. Tracing off and on run back to back, off
    // first in even rounds and on first in odd ones, so neither is always
    // the later one.
    let rounds = match (latency_only, opts.quick) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 3,
    };
    let mut runs: [Vec<Watched>; 6] = Default::default();
    for round in 0..rounds {
        for k in 0..6 {
            let path = match (round % 2, (round + k) % 6) {
                (1, 4) => 5,
                (1, 5) => 4,
                (_, path) => path,
            };
            let out = name(&format!("path{path}-{round}-out"));
            cluster.create_topic(&out, PARTITIONS).await?;
            let w = match path {
                0 | 3 => {
                    let like_cdrs = path == 3;
                    passthrough(&link, (&input, &out), like_cdrs, n, limit).await?
                }
                _ => {
                    let (filter, want) = match path {
                        1 => (trivial_filter.clone(), n as usize),
                        _ => (demo_filter(&opts.plugin_dir), kept),
                    };
                    let tag = format!("path{path}-{round}-{run}");
                    let from = if path >= 4 { &traced_input } else { &input };
                    let mut cfg = config(&link, (&tag, &dlq), from, &out, filter, opts);
                    if path == 5 {
                        cfg.telemetry.otlp_endpoint = Some(format!("http://{otlp}"));
                        cfg.telemetry.sample_ratio = TRACED_SAMPLE_RATIO;
                    }
                    let daemon = Daemon::start(cfg, None).await?;
                    let (l, o) = (link.clone(), out.clone());
                    let w =
                        tokio::task::spawn_blocking(move || watch_topic(&l, &o, want, limit, None))
                            .await??;
                    daemon.stop().await?;
                    w
                }
            };
            // What a run wrote is not read again: keep the broker small.
            cluster.delete_topic(&out).await;
            runs[path].push(w);
        }
    }
    // Input records per second (the JSON filter drops some of them) between
    // the 10% and 90% marks.
    let rate = |ws: &[Watched]| {
        median(
            ws.iter()
                .map(|w| 0.8 * n as f64 / w.span.as_secs_f64())
                .collect(),
        )
    };
    let cores = |f: fn(&Watched) -> f64| -> Vec<f64> {
        runs[..4]
            .iter()
            .map(|ws| median(ws.iter().map(f).collect()))
            .collect()
    };
    let (busy, broker_busy) = (cores(|w| w.busy_cores), cores(|w| w.broker_cores));
    let (passthrough, like_cdrs) = (rate(&runs[0]), rate(&runs[3]));
    let rates = [rate(&runs[1]), rate(&runs[2])];

    // Latency: a steady 2,000 records/s through the trivial path, through
    // the like-for-like passthrough (what the broker and the Kafka client
    // alone take for the same two legs), and through the broker alone.
    // On a broker of our own, a fresh one: the throughput rounds leave
    // millions of records in Tansu's in-memory storage, which made its
    // latency figures 2-4x those of `--only latency`.
    let cluster = match (&opts.broker, rounds) {
        (BenchBroker::External(_), _) | (_, 0) => cluster,
        (broker, _) => {
            drop(cluster);
            Running::start(broker).await?
        }
    };
    let link = cluster.link();
    let (lat_in, lat_out) = (name("lat-in"), name("lat-out"));
    for t in [&lat_in, &lat_out] {
        cluster.create_topic(t, PARTITIONS).await?;
    }
    cluster.create_topic(&dlq, 1).await?;
    let cfg = config(
        &link,
        (&format!("lat-{run}"), &dlq),
        &lat_in,
        &lat_out,
        trivial_filter,
        opts,
    );
    let daemon = Daemon::start(cfg, None).await?;
    daemon.wait_ready(Duration::from_secs(60)).await?;
    let cdrs_latency = steady_latency(&link, (&lat_in, &lat_out), limit).await?;
    daemon.stop().await?;
    let (pass_in, pass_out) = (name("lat-pass-in"), name("lat-pass-out"));
    for t in [&pass_in, &pass_out] {
        cluster.create_topic(t, PARTITIONS).await?;
    }
    let copy = copier(&link, (&pass_in, &pass_out), true, LATENCY_RECORDS as u64);
    let pass_latency = steady_latency(&link, (&pass_in, &pass_out), limit).await?;
    copy.await??;
    // The floor both of the above stand on: one leg through the broker.
    let one_leg = name("lat-one-leg");
    cluster.create_topic(&one_leg, PARTITIONS).await?;
    let broker_latency = steady_latency(&link, (&one_leg, &one_leg), limit).await?;
    Ok(EndToEnd {
        busy_cores: busy,
        broker_cores: broker_busy,
        passthrough,
        passthrough_like_cdrs: like_cdrs,
        trivial: rates[0],
        json: rates[1],
        p50_ms: cdrs_latency.0,
        p99_ms: cdrs_latency.1,
        passthrough_p50_ms: pass_latency.0,
        passthrough_p99_ms: pass_latency.1,
        broker_p50_ms: broker_latency.0,
        broker_p99_ms: broker_latency.1,
        json_traced_off: rate(&runs[4]),
        json_traced_on: rate(&runs[5]),
    })
}

/// Records of a latency run: a warm-up, then the measured ones.
pub(super) const LATENCY_WARM_UP: usize = 500;

pub(super) const LATENCY_RECORDS: usize = LATENCY_WARM_UP + 10_000;

/// Produces [`LATENCY_RECORDS`] to `input` at 2,000 records/s while
/// something copies them to `out` (keeping their timestamps), or with
/// `out == input` nothing does; p50 and p99 of (arrival on `out` − record
/// timestamp), ms, over the records after the warm-up.
///
/// The warm-up is waited for, so the figures are the steady state: right
/// after start the first records wait up to ~0.6 s (first fetches, the
/// target producer's start, a group join), which made p99 ~550 ms when they
/// were counted.
pub(super) async fn steady_latency(
    link: &Link,
    (input, out): (&str, &str),
    limit: Duration,
) -> anyhow::Result<(f64, f64)> {
    let warm = LATENCY_WARM_UP;
    let (l, o) = (link.clone(), out.to_string());
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        watch_topic(&l, &o, LATENCY_RECORDS, limit, Some(seen))
    });
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &link.brokers)
        .set("linger.ms", "0")
        .create()?;
    let mut started = Instant::now();
    for i in 0..LATENCY_RECORDS {
        if i == warm {
            let deadline = Instant::now() + Duration::from_secs(60);
            while progress.load(Ordering::Relaxed) < warm && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started = Instant::now();
        }
        let (key, value, _) = record(i as u64 * 10);
        let due = started + Duration::from_micros(500 * (i.saturating_sub(warm)) as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let _ = p.send(BaseRecord::to(input).key(&key).payload(&value));
    }
    p.flush(Duration::from_secs(30))?;
    let ages = watcher.await??.ages;
    let mut ages = ages.get(warm..).unwrap_or_default().to_vec();
    ages.sort_by(f64::total_cmp);
    let q = |p: f64| {
        ages.get(((ages.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok((q(0.5), q(0.99)))
}
