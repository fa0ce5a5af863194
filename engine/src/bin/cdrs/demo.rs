//! `cdrs demo`: the whole data path on one machine with no setup.
//!
//! An embedded Kafka-protocol broker (librdkafka's mock cluster), a producer
//! of JSON trade events keyed by client id (with heartbeats the filter drops
//! and malformed records it dead-letters), three HTTP application servers on
//! 127.0.0.1 with capacities 1:2:4 that report their capacity, and the real
//! pipeline with the real plugins. It ends with one JSON line accounting for
//! every record from what the servers actually received.

use crate::runtime;
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{account, demo_config, produce, read_dead_letters, Fate};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `cdrs demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub records: u64,
    pub duration: Duration,
    /// Folder holding `field_filter.wasm` and `p2c_router.wasm`.
    pub plugin_dir: PathBuf,
}

/// The demo's closing line.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub produced: usize,
    pub delivered: usize,
    pub filtered: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub per_target: BTreeMap<String, usize>,
    pub records_per_s: f64,
}

/// Runs the demo and returns its summary.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    let (topic, dlq, partitions) = ("trades", "trades-dead-letter", 6);
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(topic, partitions, 1)?;
    cluster.create_topic(dlq, 1, 1)?;
    // The mock cluster does not take CreateTopics: the control topic is
    // made here, as an operator would where CDRS may not create topics.
    cluster.create_topic(cdrs::config::DEFAULT_CONTROL_TOPIC, 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    let servers: Vec<AppServer> = [("blotter-1", 100), ("blotter-2", 200), ("blotter-3", 400)]
        .iter()
        .map(|(id, cap)| AppServer::start(id, *cap))
        .collect::<anyhow::Result<_>>()?;
    for s in &servers {
        s.behaviour()
            .latency_ms
            .store(1, std::sync::atomic::Ordering::Relaxed);
    }
    let targets = servers.iter().map(|s| s.target_config()).collect();
    let config = demo_config(&brokers, "cdrs-demo", topic, dlq, &opts.plugin_dir, targets);
    let problems = config.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!(
            "demo config invalid (were the plugins built? run scripts/dev.sh demo):\n{}",
            list.join("\n")
        );
    }
    let mut config = config;
    config.admin.token = Some("demo-token".into());
    let daemon = Daemon::start(config, None).await?;
    for s in &servers {
        s.report_to(
            daemon.admin_addr,
            Duration::from_millis(200),
            Some("demo-token".into()),
        );
    }
    daemon.wait_ready(Duration::from_secs(60)).await?;
    eprintln!(
        "dashboard while the demo runs: http://{}/ui (token demo-token)",
        daemon.admin_addr
    );

    let started = Instant::now();
    let ledger = produce(&brokers, topic, opts.records, 500).await?;
    let deadline = started + opts.duration;
    let refs: Vec<&AppServer> = servers.iter().collect();
    let want_dl = ledger.count(Fate::DeadLettered);
    let mut finished = started.elapsed();
    loop {
        let a = account(&ledger, &refs);
        let filtered = daemon.metrics.get("filter", "dropped") as usize;
        let dead = daemon.metrics.get("filter", "dead_lettered") as usize
            + daemon.metrics.get("router", "dead_lettered") as usize;
        if a.delivered + filtered + dead >= ledger.fates.len() || Instant::now() > deadline {
            finished = finished.max(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        finished = started.elapsed();
    }
    let filtered = daemon.metrics.get("filter", "dropped") as usize;
    daemon.stop().await?;
    let dead = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || {
            read_dead_letters(&brokers, dlq, 1, want_dl, Duration::from_secs(10))
        })
        .await??
    };
    let a = account(&ledger, &refs);
    drop(cluster);
    Ok(DemoSummary {
        produced: ledger.fates.len(),
        delivered: a.delivered,
        filtered,
        dead_lettered: dead.len(),
        lost: a.lost,
        duplicates: a.duplicates,
        per_target: a.per_target,
        records_per_s: (ledger.fates.len() as f64 / finished.as_secs_f64().max(1e-3)).round(),
    })
}

/// `cdrs demo`: runs it and prints the summary; fails if a record was lost.
pub(crate) fn command(
    records: u64,
    duration_s: u64,
    plugin_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let opts = DemoOptions {
        records,
        duration: Duration::from_secs(duration_s),
        plugin_dir,
    };
    let summary = runtime()?.block_on(run(opts))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cdrs demo-server`: one fake app server until SIGTERM or SIGINT.
pub(crate) fn server(
    id: &str,
    capacity: u32,
    port: u16,
    log: Option<PathBuf>,
    report_to: Option<std::net::SocketAddr>,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let server = cdrs::testkit::appserver::AppServer::start_on(id, capacity, port, log.as_deref())?;
    if let Some(admin) = report_to {
        server.report_to(admin, Duration::from_secs(1), token);
    }
    println!("{} listening on {}", server.id, server.url());
    runtime()?.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
