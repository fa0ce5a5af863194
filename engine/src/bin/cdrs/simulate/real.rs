//! `cdrs simulate --real`: the scenario's first router run on the real
//! pipeline too, to check the model against it. A Tansu broker, one
//! app server per scenario server (in this process, each on its own
//! runtime, serving records `concurrency` at a time with the scenario's
//! service times, set through their control knobs), a CDRS daemon with
//! that router and one record per delivery request, and a producer that
//! sends the simulation's own arrival schedule (times and keys). Sojourn
//! is the record's Kafka timestamp to the end of its service.
//!
//! The real sojourn also holds the broker's produce-to-fetch time, which
//! the model does not have: the scenario's service times are long beside
//! it (`config/scenarios/sim-vs-real.toml`).

use super::scenario::{Distribution, Scenario};
use super::RouterArg;
use anyhow::Context;
use cdrs::config::PluginConfig;
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::{AppServer, Control, ServiceDistribution};
use cdrs::testkit::tansu::TansuProcess;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The real run's figures beside the simulation's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimVsReal {
    pub scenario: String,
    pub policy: String,
    pub records: usize,
    pub sim_p50_ms: f64,
    pub sim_p99_ms: f64,
    pub real_p50_ms: f64,
    pub real_p99_ms: f64,
    /// |real − sim| ÷ sim.
    pub p50_error: f64,
    pub p99_error: f64,
    /// Records each server got in the real run.
    pub per_server_records: Vec<(String, usize)>,
}

/// Runs `s` with `router` on the real pipeline; returns the real
/// sojourn's p50 and p99 (ms) and the records per server.
///
/// # Errors
/// The broker, a server or the daemon does not start, or records are
/// still undelivered a minute after the last was produced.
pub async fn run(
    s: &Scenario,
    router: &RouterArg,
    plugin_dir: &std::path::Path,
) -> anyhow::Result<(f64, f64, usize, Vec<(String, usize)>)> {
    anyhow::ensure!(
        s.events.is_empty() && s.instances == 1,
        "--real runs scenarios without events and with one instance (\"{}\" has {} event(s), {} instance(s))",
        s.name,
        s.events.len(),
        s.instances
    );
    let bin = TansuProcess::binary(std::path::Path::new("."));
    let tansu = tokio::task::spawn_blocking(move || TansuProcess::start(&bin))
        .await?
        .context("failed to start Tansu (scripts/dev.sh broker installs it)")?;
    let brokers = tansu.brokers().to_string();
    let (topic, dlq) = ("sim-vs-real", "sim-vs-real-dlq");
    cdrs::testkit::kafka::create_topics(&brokers, &[(topic, 4), (dlq, 1)]).await?;
    let servers: Vec<AppServer> = s
        .servers
        .iter()
        .map(|c| {
            let srv = AppServer::start(&c.id, c.capacity.unwrap_or(c.concurrency))?;
            let distribution = match c.distribution {
                Distribution::Constant => ServiceDistribution::Constant,
                Distribution::Exponential => ServiceDistribution::Exponential,
                Distribution::Lognormal => anyhow::bail!(
                    "server {:?}: --real serves exponential or constant service times",
                    c.id
                ),
            };
            srv.behaviour().apply(&Control {
                service_ms: Some(c.service_ms),
                concurrency: Some(c.concurrency),
                service_distribution: Some(distribution),
                ..Control::default()
            });
            Ok(srv)
        })
        .collect::<anyhow::Result<_>>()?;
    let targets = servers.iter().map(AppServer::target_config).collect();
    let mut config = cdrs::testkit::demo_config(
        &brokers,
        "cdrs-sim-vs-real",
        topic,
        dlq,
        plugin_dir,
        targets,
    );
    config.filters.clear();
    config.router = PluginConfig {
        name: router.name.clone(),
        path: router.path.clone(),
        config: router.config.clone(),
        sha256: None,
        shadow: None,
    };
    // One record per request, as the model sends them; enough lanes that
    // records wait in the server's queue, as there.
    config.delivery.max_batch = 1;
    config.delivery.lanes = 64;
    config.pipeline.batch_size = s.batch;
    config.capacity.refresh_interval_ms = s.refresh_ms;
    config
        .kafka
        .options
        .insert("fetch.wait.max.ms".into(), "5".into());
    let daemon = Daemon::start(config, None).await?;
    for srv in &servers {
        srv.report_to(
            daemon.admin_addr,
            Duration::from_millis(s.report_every_ms),
            None,
        );
    }
    daemon.wait_ready(Duration::from_secs(60)).await?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()?;
    let schedule = super::model::schedule(s);
    let started = Instant::now();
    let start_ms = now_ms();
    let mut sends = Vec::with_capacity(schedule.len());
    for (at_ns, key) in &schedule {
        tokio::time::sleep_until((started + Duration::from_nanos(*at_ns)).into()).await;
        let key = format!("client-{key}");
        let producer = producer.clone();
        sends.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload("{}"),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
        }));
    }
    for s in sends {
        s.await??;
    }
    let produced = schedule.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = || servers.iter().map(|s| s.received().len()).sum::<usize>();
    while delivered() < produced {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {produced} records delivered a minute after the last was produced",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warmup_end = start_ms + s.warmup_ms() as i64;
    let mut sojourn: Vec<i64> = servers
        .iter()
        .flat_map(|s| s.received())
        .filter_map(|r| Some((r.timestamp_ms?, r.done_at_ms)))
        .filter(|(ts, _)| *ts >= warmup_end)
        .map(|(ts, done)| done - ts)
        .collect();
    sojourn.sort_unstable();
    let per_server = servers
        .iter()
        .map(|s| (s.id.clone(), s.received().len()))
        .collect();
    drop(producer);
    daemon.stop().await?;
    for srv in &servers {
        srv.kill();
    }
    drop(tansu);
    anyhow::ensure!(!sojourn.is_empty(), "no record after the warm-up");
    let q = |p: f64| sojourn[((sojourn.len() - 1) as f64 * p).round() as usize] as f64;
    Ok((q(0.5), q(0.99), produced, per_server))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
