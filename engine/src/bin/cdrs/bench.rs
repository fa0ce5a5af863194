//! `cdrs bench`: the benchmarks of the plugin runtime, measured in one run on
//! this machine, printed as a table and written as JSON.
//!
//! 1. **Plugin overhead**: ns per record for the demo filter (JSON field
//!    rule) plus the P2C router, as Wasm components, at batch sizes 1, 16,
//!    256, 1024 and 16 / 128 targets, against a native Rust implementation of
//!    the same policy (serde_json field check + weighted power of two
//!    choices) in the same process.
//! 2. **End to end**: records/s through CDRS (broker → filter → router →
//!    `kafka://` target topic) with a trivial filter and with the JSON
//!    filter, against a bare rdkafka consume → produce passthrough on the
//!    same broker (three interleaved rounds, medians); p50/p99 produce →
//!    arrival latency at a steady rate after a warm-up, through CDRS, the
//!    like-for-like passthrough and the broker alone. The broker is Tansu
//!    in its own process when installed (its CPU is reported apart), else
//!    librdkafka's in-process mock ([`BenchBroker`]).
//! 3. **Load**: cold compile and cached load per plugin; instantiation (+ `init`).
//! 4. **Memory**: resident set of the process idle and under load; per plugin
//!    instance (RSS growth over 64 extra instances).
//!
//! Figures depend on the build: run the release binary (`scripts/dev.sh bench`).

use anyhow::Context;
use cdrs::capacity::{Registry, Snapshot};
use cdrs::config::{CapacityConfig, PluginConfig, PluginRuntimeConfig, TargetConfig};
use cdrs::daemon::Daemon;
use cdrs::metrics::Metrics;
use cdrs::plugin::bindings::types::Verdict;
use cdrs::plugin::filter::FilterPlugin;
use cdrs::plugin::router::{Route, RouterPlugin};
use cdrs::plugin::Runtime;
use cdrs::record::Record;
use cdrs::testkit::kafka;
use cdrs::testkit::tansu::TansuProcess;
use cdrs::testkit::{demo_config, demo_filter, demo_router, produce_events, trade_event, Fate};
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::Distribution;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `cdrs bench`.
pub struct BenchOptions {
    /// Folder with `field_filter.wasm` and `p2c_router.wasm`.
    pub plugin_dir: PathBuf,
    /// Records per end-to-end run.
    pub records: u64,
    /// Fewer iterations (a smoke run: the figures are rough).
    pub quick: bool,
    /// Run one part only: `overhead`, `load`, `e2e`, or `latency` (the
    /// end-to-end part's latency phase alone); the others report 0.
    pub only: Option<String>,
    /// The broker of the end-to-end part.
    pub broker: BenchBroker,
    /// librdkafka settings for CDRS's clients in the end-to-end part, put
    /// into `[kafka.options]` after the bench's own (so they win).
    pub kafka_options: Vec<(String, String)>,
}

/// The broker the end-to-end part runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchBroker {
    /// librdkafka's in-process mock cluster. Its CPU counts in this
    /// process, and its fetch path scans a partition's message sets
    /// linearly (`rd_kafka_mock_msgset_find` was 12% of all samples at
    /// 100,000 records; at 1,000,000 the passthrough stalled), so keep runs
    /// small with it.
    Embedded,
    /// Tansu started from this binary on a free loopback port, in its own
    /// process, stopped afterwards.
    Tansu(PathBuf),
    /// A broker already running at these bootstrap servers; topics and
    /// groups get a per-run suffix.
    External(String),
}

impl std::fmt::Display for BenchBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchBroker::Embedded => f.write_str("embedded mock broker"),
            BenchBroker::Tansu(_) => f.write_str("Tansu 0.6 (own process)"),
            BenchBroker::External(b) => write!(f, "broker at {b}"),
        }
    }
}

/// A running bench broker: bootstrap servers and topic creation.
enum Running {
    Mock(rdkafka::mocking::MockCluster<'static, DefaultProducerContext>),
    Process(TansuProcess),
    External(String),
}

impl Running {
    async fn start(broker: &BenchBroker) -> anyhow::Result<Running> {
        let running = match broker {
            BenchBroker::Embedded => Running::Mock(rdkafka::mocking::MockCluster::new(1)?),
            BenchBroker::External(b) => Running::External(b.clone()),
            BenchBroker::Tansu(bin) => {
                let bin = bin.clone();
                Running::Process(
                    tokio::task::spawn_blocking(move || TansuProcess::start(&bin)).await??,
                )
            }
        };
        let brokers = running.brokers();
        tokio::task::spawn_blocking(move || {
            kafka::wait_for_metadata(&brokers, Duration::from_secs(20))
        })
        .await??;
        Ok(running)
    }

    /// How the bench's clients reach this broker.
    fn link(&self) -> Link {
        let (pid, fetch_wait_ms) = match self {
            Running::Mock(_) => (None, MOCK_FETCH_WAIT_MS),
            Running::Process(t) => (Some(t.pid()), FETCH_WAIT_MS),
            Running::External(_) => (None, FETCH_WAIT_MS),
        };
        Link {
            brokers: self.brokers(),
            pid,
            fetch_wait_ms,
        }
    }

    fn brokers(&self) -> String {
        match self {
            Running::Mock(c) => c.bootstrap_servers(),
            Running::Process(t) => t.brokers().to_string(),
            Running::External(b) => b.clone(),
        }
    }

    /// Deletes a topic of a broker in its own process (best effort: a
    /// broker that cannot only keeps it).
    async fn delete_topic(&self, name: &str) {
        if !matches!(self, Running::Mock(_)) {
            kafka::delete_topic(&self.brokers(), name).await;
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Running::Mock(c) => Ok(c.create_topic(name, partitions, 1)?),
            _ => kafka::create_topics(&self.brokers(), &[(name, partitions)]).await,
        }
    }
}

/// One row of the overhead benchmark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OverheadRow {
    /// `json`: the demo filter (one JSON field rule) + P2C router;
    /// `trivial`: a filter without rules (keeps all) + P2C router, i.e.
    /// mostly the cost of crossing into the plugins; `json-no-deadline`:
    /// `json` compiled without epoch checks (batch 256, 16 targets only).
    pub policy: &'static str,
    pub batch: usize,
    pub targets: usize,
    /// Wasm filter + router, ns per record.
    pub wasm_ns: f64,
    pub filter_ns: f64,
    pub router_ns: f64,
    /// The same policy in native Rust, ns per record.
    pub native_ns: f64,
}

/// Compile and cache-load time of one plugin.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadRow {
    pub plugin: String,
    pub cold_ms: f64,
    pub cached_ms: f64,
}

/// Everything `cdrs bench` measured; the first keys are the ones the
/// performance goals are stated in.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Wasm filter + router per record, batch 256, 16 targets, ns.
    pub overhead_ns_per_record: f64,
    /// The same policy natively, batch 256, 16 targets, ns.
    pub native_ns_per_record: f64,
    /// Wasm filter + router per record with the trivial filter (no rules:
    /// what crossing into the plugins costs), batch 256, 16 targets, ns.
    pub overhead_trivial_ns_per_record: f64,
    /// The trivial policy natively (the P2C pick alone), ns.
    pub native_trivial_ns_per_record: f64,
    /// The JSON policy (batch 256, 16 targets) on plugins compiled without
    /// epoch checks, i.e. without a call deadline, ns; and natively in the
    /// same round. Not a mode CDRS runs in: it shows what deadlines cost.
    pub overhead_no_deadline_ns_per_record: f64,
    pub native_no_deadline_ns_per_record: f64,
    /// CDRS with the trivial filter, records/s.
    pub e2e_records_per_s: f64,
    /// Bare rdkafka consume → produce, records/s.
    pub passthrough_records_per_s: f64,
    pub e2e_ratio_trivial: f64,
    pub e2e_ratio_json: f64,
    /// rdkafka consume → produce writing what CDRS's Kafka sink writes
    /// (idempotent producer, `cdrs-idempotency-key` header), records/s.
    pub passthrough_like_cdrs_records_per_s: f64,
    /// CDRS against that like-for-like passthrough.
    pub e2e_ratio_trivial_like_cdrs: f64,
    pub e2e_ratio_json_like_cdrs: f64,
    /// Consume → deliver latency at a steady rate, ms.
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// The same through the like-for-like passthrough, ms.
    pub passthrough_p50_latency_ms: f64,
    pub passthrough_p99_latency_ms: f64,
    /// The broker alone at the same rate: produce → an assigned consumer of
    /// the same topic (one leg; a copy loop or CDRS adds a second), ms.
    pub broker_p50_latency_ms: f64,
    pub broker_p99_latency_ms: f64,
    /// P2C router: cold compile and cached load, ms.
    pub cold_load_ms: f64,
    pub cached_load_ms: f64,
    /// One instance created and `init`-ed, ms (P2C router).
    pub instantiate_ms: f64,
    /// Resident memory per plugin instance (field filter), bytes.
    pub instance_rss_bytes: f64,
    pub rss_idle_bytes: u64,
    pub rss_load_bytes: u64,
    pub e2e_json_records_per_s: f64,
    /// Cores busy in this process (CPU s per wall s; the embedded broker
    /// included) during the bare passthrough, trivial, JSON and
    /// like-for-like passthrough runs.
    pub e2e_busy_cores: Vec<f64>,
    /// The same for the broker's process when it runs in its own (Tansu).
    pub e2e_broker_cores: Vec<f64>,
    pub overhead: Vec<OverheadRow>,
    pub loads: Vec<LoadRow>,
    pub records: u64,
    /// The broker of the end-to-end part.
    pub broker: String,
    pub machine: String,
}

/// Runs every benchmark (a minute or two).
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let rss_idle_bytes = rss_bytes("VmRSS");
    let (dir, quick) = (opts.plugin_dir.clone(), opts.quick);
    let wants = |part: &str| opts.only.as_deref().is_none_or(|o| o == part);
    let (want_overhead, want_load) = (wants("overhead"), wants("load"));
    let (overhead, loads, instantiate_ms, instance_rss_bytes) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let overhead = if want_overhead {
                overhead(&dir, quick)?
            } else {
                Vec::new()
            };
            let (loads, instantiate_ms, per_instance) = if want_load {
                loading(&dir)?
            } else {
                (Vec::new(), 0.0, 0.0)
            };
            Ok((overhead, loads, instantiate_ms, per_instance))
        })
        .await??;
    let e2e = if wants("e2e") || wants("latency") {
        end_to_end(&opts).await?
    } else {
        EndToEnd::default()
    };
    let at = |policy: &str, b: usize, t: usize| {
        overhead
            .iter()
            .find(|r| r.policy == policy && r.batch == b && r.targets == t)
            .cloned()
            .unwrap_or_default()
    };
    let (main, trivial) = (at("json", 256, 16), at("trivial", 256, 16));
    let no_deadline = at(JSON_NO_DEADLINE, 256, 16);
    let router = loads
        .iter()
        .find(|l| l.plugin == "p2c_router")
        .cloned()
        .unwrap_or_default();
    Ok(BenchReport {
        overhead_ns_per_record: main.wasm_ns,
        native_ns_per_record: main.native_ns,
        overhead_trivial_ns_per_record: trivial.wasm_ns,
        native_trivial_ns_per_record: trivial.native_ns,
        overhead_no_deadline_ns_per_record: no_deadline.wasm_ns,
        native_no_deadline_ns_per_record: no_deadline.native_ns,
        e2e_records_per_s: e2e.trivial,
        passthrough_records_per_s: e2e.passthrough,
        e2e_ratio_trivial: ratio(e2e.trivial, e2e.passthrough),
        e2e_ratio_json: ratio(e2e.json, e2e.passthrough),
        passthrough_like_cdrs_records_per_s: e2e.passthrough_like_cdrs,
        e2e_ratio_trivial_like_cdrs: ratio(e2e.trivial, e2e.passthrough_like_cdrs),
        e2e_ratio_json_like_cdrs: ratio(e2e.json, e2e.passthrough_like_cdrs),
        p50_latency_ms: e2e.p50_ms,
        p99_latency_ms: e2e.p99_ms,
        passthrough_p50_latency_ms: e2e.passthrough_p50_ms,
        passthrough_p99_latency_ms: e2e.passthrough_p99_ms,
        broker_p50_latency_ms: e2e.broker_p50_ms,
        broker_p99_latency_ms: e2e.broker_p99_ms,
        cold_load_ms: router.cold_ms,
        cached_load_ms: router.cached_ms,
        instantiate_ms,
        instance_rss_bytes,
        rss_idle_bytes,
        rss_load_bytes: rss_bytes("VmHWM"),
        e2e_json_records_per_s: e2e.json,
        e2e_busy_cores: e2e.busy_cores.clone(),
        e2e_broker_cores: e2e.broker_cores.clone(),
        overhead,
        loads,
        records: opts.records,
        broker: opts.broker.to_string(),
        machine: machine(),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The table `cdrs bench` prints.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!("cdrs bench on {}\n", r.machine);
    if !r.overhead.is_empty() {
        s += "\nplugin overhead (filter + router, ns/record)\n";
        s += "| policy | batch | targets | wasm | filter | router | native | wasm/native |\n|---|---|---|---|---|---|---|---|\n";
        for o in &r.overhead {
            s += &format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}× |\n",
                o.policy,
                o.batch,
                o.targets,
                o.wasm_ns,
                o.filter_ns,
                o.router_ns,
                o.native_ns,
                o.wasm_ns / o.native_ns
            );
        }
        if r.overhead.iter().any(|o| o.policy == JSON_NO_DEADLINE) {
            s += "(json-no-deadline: the json plugins compiled without epoch checks, \
                  i.e. with no call deadline; not a mode CDRS runs in)\n";
        }
    }
    let busy = |i: usize| {
        let own = r.e2e_busy_cores.get(i).copied().unwrap_or(0.0);
        match r.e2e_broker_cores.get(i).copied().unwrap_or(0.0) {
            b if b > 0.0 => format!("{own:.2} + broker {b:.2}"),
            _ => format!("{own:.2}"),
        }
    };
    if r.passthrough_records_per_s > 0.0 {
        s += &format!(
            "\nend to end ({} records of 200 bytes, {})\n\
             | path | records/s | vs bare | vs like-for-like | cores busy |\n|---|---|---|---|---|\n",
            r.records, r.broker
        );
        let like = r.passthrough_like_cdrs_records_per_s;
        for (i, path, rate) in [
            (0, "rdkafka passthrough, bare", r.passthrough_records_per_s),
            (3, "rdkafka passthrough, like-for-like", like),
            (1, "CDRS, trivial filter", r.e2e_records_per_s),
            (2, "CDRS, JSON filter", r.e2e_json_records_per_s),
        ] {
            s += &format!(
                "| {path} | {rate:.0} | {:.2} | {:.2} | {} |\n",
                ratio(rate, r.passthrough_records_per_s),
                ratio(rate, like),
                busy(i)
            );
        }
        s += "like-for-like: what CDRS's Kafka sink writes (idempotent producer, \
              cdrs-idempotency-key header)\n";
    }
    if r.p50_latency_ms > 0.0 {
        if r.passthrough_records_per_s == 0.0 {
            s += &format!("\nend to end ({})\n", r.broker);
        }
        s += &format!(
            "latency at a steady 2,000 records/s (produce → arrival on the target topic): \
             CDRS p50 {:.1} ms, p99 {:.1} ms; like-for-like passthrough p50 {:.1} ms, p99 {:.1} ms; \
             broker alone (produce → consumer, one leg) p50 {:.1} ms, p99 {:.1} ms\n",
            r.p50_latency_ms,
            r.p99_latency_ms,
            r.passthrough_p50_latency_ms,
            r.passthrough_p99_latency_ms,
            r.broker_p50_latency_ms,
            r.broker_p99_latency_ms
        );
    }
    if !r.loads.is_empty() {
        s += "\nload\n| plugin | cold compile ms | cached load ms |\n|---|---|---|\n";
        for l in &r.loads {
            s += &format!("| {} | {:.1} | {:.2} |\n", l.plugin, l.cold_ms, l.cached_ms);
        }
        s += &format!(
        "instantiate + init: {:.3} ms\n\nmemory: {:.0} KiB per plugin instance; process RSS idle {:.1} MiB, peak {:.1} MiB\n",
        r.instantiate_ms,
        r.instance_rss_bytes / 1024.0,
        r.rss_idle_bytes as f64 / 1048576.0,
        r.rss_load_bytes as f64 / 1048576.0
    );
    }
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

/// User + system CPU time so far of this process (`None`) or of process
/// `pid`, seconds (`/proc/PID/stat`, clock ticks of 1/100 s).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let stat = pid.map_or_else(|| "/proc/self/stat".into(), |p| format!("/proc/{p}/stat"));
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// A line of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn rss_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// A 200-byte JSON record (the demo's trade events, padded).
fn record(i: u64) -> (String, String, Fate) {
    let (key, value, fate) = trade_event(i, 1000);
    if fate != Fate::Delivered || value.len() >= 200 {
        return (key, value, fate);
    }
    let pad = 200 - value.len() - r#","pad":"""#.len() - 1;
    let value = format!(
        "{},\"pad\":\"{}\"}}",
        &value[..value.len() - 1],
        "x".repeat(pad)
    );
    (key, value, fate)
}

fn targets(n: usize) -> Vec<TargetConfig> {
    (0..n)
        .map(|i| TargetConfig {
            id: format!("t{i}"),
            url: format!("http://127.0.0.1:{}/records", 10_000 + i),
            capacity: 100 * (1 + i as u32 % 4),
            weight: cdrs::config::DEFAULT_WEIGHT,
            zone: None,
            labels: Default::default(),
            health_url: None,
            report_token: None,
        })
        .collect()
}

fn runtime(cache: &Path, instances: usize) -> anyhow::Result<Arc<Runtime>> {
    Runtime::new(&PluginRuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        instances,
        ..PluginRuntimeConfig::default()
    })
}

fn cache_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cdrs-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The demo filter's policy natively, with the same JSON code the plugin
/// runs (`cdrs_plugin_sdk::json::lookup`): keep unless `type` is
/// "heartbeat"; not JSON → dead-letter.
fn native_filter(records: &[&Record]) -> Vec<bool> {
    records
        .iter()
        .map(|r| {
            let ty = r
                .value
                .as_deref()
                .map(|b| cdrs_plugin_sdk::json::lookup(b, &["type"]));
            matches!(ty, Some(Ok(t)) if t.as_ref().and_then(|t| t.as_str()) != Some("heartbeat"))
        })
        .collect()
}

/// The P2C router's policy natively: two targets drawn in proportion to
/// capacity × weight, the lower assigned / (capacity × weight) wins. Same
/// sampler and generator as the plugin: `alias` is built once per target
/// table (as the plugin does in `update-targets`), draws use Xoshiro256++.
fn native_route(
    snapshot: &Snapshot,
    alias: &WeightedAliasIndex<f64>,
    rng: &mut Xoshiro256PlusPlus,
    assigned: &mut [u32],
    records: &[&Record],
) -> Vec<usize> {
    let weight = |i: usize| {
        let t = &snapshot.targets[i];
        (f64::from(t.capacity) * f64::from(t.weight)).max(1.0)
    };
    let mut draw = || alias.sample(rng);
    records
        .iter()
        .map(|_| {
            let a = draw();
            let mut b = draw();
            for _ in 0..16 {
                if b != a {
                    break;
                }
                b = draw();
            }
            let load = |i: usize| f64::from(assigned[i]) / weight(i);
            let pick = if load(a) <= load(b) { a } else { b };
            assigned[pick] += 1;
            pick
        })
        .collect()
}

/// Rounds per overhead row; the row reports the median round.
const OVERHEAD_ROUNDS: usize = 5;

fn overhead(dir: &Path, quick: bool) -> anyhow::Result<Vec<OverheadRow>> {
    let cache = cache_dir("overhead");
    let rt = runtime(&cache, 1)?;
    let metrics = Arc::new(Metrics::new());
    let json_filter = FilterPlugin::load(&rt, &demo_filter(dir), metrics.clone())?;
    let trivial_filter = FilterPlugin::load(
        &rt,
        &PluginConfig {
            name: "keep-all".into(),
            config: toml::Table::new(),
            ..demo_filter(dir)
        },
        metrics.clone(),
    )?;
    let router = RouterPlugin::load(&rt, &demo_router(dir, false), metrics.clone())?;
    // The same plugins compiled without epoch checks (no call deadline):
    // one row, to show what the deadline costs.
    let cache_nd = cache_dir("overhead-no-deadline");
    let rt_nd = Runtime::without_deadlines(&PluginRuntimeConfig {
        cache_dir: Some(cache_nd.clone()),
        instances: 1,
        ..PluginRuntimeConfig::default()
    })?;
    let json_filter_nd = FilterPlugin::load(&rt_nd, &demo_filter(dir), metrics.clone())?;
    let router_nd = RouterPlugin::load(&rt_nd, &demo_router(dir, false), metrics.clone())?;
    let records: Vec<Record> = (0..8192u64)
        .map(|i| {
            let (key, value, _) = record(i);
            Record {
                topic: "bench".into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(1_764_000_000_000 + i as i64),
                key: Some(key.into_bytes()),
                value: Some(value.into_bytes()),
                headers: Vec::new(),
            }
        })
        .collect();
    let mut rows = Vec::new();
    for (policy, filter, router) in [
        ("json", &json_filter, &router),
        ("trivial", &trivial_filter, &router),
        (JSON_NO_DEADLINE, &json_filter_nd, &router_nd),
    ] {
        for n_targets in [16, 128] {
            if policy == JSON_NO_DEADLINE && n_targets != 16 {
                continue;
            }
            let registry = Registry::new(
                CapacityConfig::default(),
                &targets(n_targets),
                metrics.clone(),
            );
            let snapshot = registry.snapshot();
            for batch in [1usize, 16, 256, 1024] {
                if policy == JSON_NO_DEADLINE && batch != 256 {
                    continue;
                }
                let total = match (quick, batch) {
                    (true, _) => 2048,
                    (false, 1) => 4096,
                    (false, _) => 65_536,
                };
                // Warm-up: targets pushed, caches hot.
                let warm: Vec<&Record> = records.iter().take(batch).collect();
                let _ = router.route(&snapshot, "bench", 0, &warm);
                let alias = WeightedAliasIndex::new(
                    snapshot
                        .targets
                        .iter()
                        .map(|t| (f64::from(t.capacity) * f64::from(t.weight)).max(1.0))
                        .collect(),
                )?;
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
                let mut assigned = vec![0u32; n_targets];
                // Rounds alternate Wasm and native; each figure is the
                // median round, so a noisy neighbour's burst moves one
                // round, not the row.
                let mut wasm_rounds = Vec::with_capacity(OVERHEAD_ROUNDS);
                let mut native_rounds = Vec::with_capacity(OVERHEAD_ROUNDS);
                for _ in 0..if quick { 1 } else { OVERHEAD_ROUNDS } {
                    let (mut f_ns, mut r_ns) = (0u128, 0u128);
                    let mut kept_total = 0usize;
                    let mut done = 0;
                    while done < total {
                        let start = done % (records.len() - batch + 1);
                        let chunk: Vec<&Record> = records[start..start + batch].iter().collect();
                        let t0 = Instant::now();
                        let verdicts = filter.filter("bench", 0, &chunk);
                        let t1 = Instant::now();
                        let kept: Vec<&Record> = chunk
                            .iter()
                            .zip(&verdicts)
                            .filter(|(_, v)| matches!(v, Verdict::Keep))
                            .map(|(r, _)| *r)
                            .collect();
                        let routes = router.route(&snapshot, "bench", 0, &kept);
                        let t2 = Instant::now();
                        assert!(routes
                            .iter()
                            .all(|r| matches!(r, Route::Targets(_) | Route::Default)));
                        f_ns += (t1 - t0).as_nanos();
                        r_ns += (t2 - t1).as_nanos();
                        kept_total += kept.len();
                        done += batch;
                    }
                    // Native, same records, same batches.
                    let mut native_ns = 0u128;
                    let mut native_kept = 0usize;
                    let mut done = 0;
                    while done < total {
                        let start = done % (records.len() - batch + 1);
                        let chunk: Vec<&Record> = records[start..start + batch].iter().collect();
                        let t0 = Instant::now();
                        let keep = match policy {
                            "trivial" => vec![true; chunk.len()],
                            _ => native_filter(&chunk),
                        };
                        let kept: Vec<&Record> = chunk
                            .iter()
                            .zip(&keep)
                            .filter(|(_, k)| **k)
                            .map(|(r, _)| *r)
                            .collect();
                        let picks = native_route(&snapshot, &alias, &mut rng, &mut assigned, &kept);
                        native_ns += t0.elapsed().as_nanos();
                        native_kept += picks.len();
                        done += batch;
                    }
                    anyhow::ensure!(
                        native_kept == kept_total,
                        "native and Wasm policies disagree: {native_kept} vs {kept_total} kept"
                    );
                    let per = |ns: u128| ns as f64 / total as f64;
                    wasm_rounds.push((per(f_ns + r_ns), per(f_ns), per(r_ns)));
                    native_rounds.push(per(native_ns));
                }
                wasm_rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                native_rounds.sort_by(f64::total_cmp);
                let (wasm_ns, filter_ns, router_ns) = wasm_rounds[wasm_rounds.len() / 2];
                rows.push(OverheadRow {
                    policy,
                    batch,
                    targets: n_targets,
                    wasm_ns,
                    filter_ns,
                    router_ns,
                    native_ns: native_rounds[native_rounds.len() / 2],
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&cache_nd);
    Ok(rows)
}

/// The overhead row of the JSON policy on plugins compiled without epoch
/// checks (batch 256, 16 targets only).
const JSON_NO_DEADLINE: &str = "json-no-deadline";

/// Cold and cached load per plugin; instantiation; RSS per instance.
fn loading(dir: &Path) -> anyhow::Result<(Vec<LoadRow>, f64, f64)> {
    let cache = cache_dir("load");
    let mut loads = Vec::new();
    for name in ["field_filter", "p2c_router"] {
        let path = dir.join(format!("{name}.wasm"));
        let rt = runtime(&cache, 1)?;
        let t = Instant::now();
        let compiled = rt.compile(name, &path, None, None)?;
        let cold = t.elapsed().as_secs_f64() * 1e3;
        // The repo's own plugins: cached without loading them first (the
        // daemon caches only after `init` accepted a plugin).
        compiled.persist(&rt);
        let rt = runtime(&cache, 1)?;
        let t = Instant::now();
        rt.compile(name, &path, None, None)?;
        let cached = t.elapsed().as_secs_f64() * 1e3;
        loads.push(LoadRow {
            plugin: name.to_string(),
            cold_ms: cold,
            cached_ms: cached,
        });
    }
    let metrics = Arc::new(Metrics::new());
    let n = 64;
    let rt = runtime(&cache, n)?;
    let cfg: PluginConfig = demo_router(dir, false);
    let compiled = rt.compile(&cfg.name, &cfg.path, None, None)?;
    let t = Instant::now();
    let router =
        RouterPlugin::from_compiled(&rt, &cfg.name, compiled, cfg.config_json(), metrics.clone())?;
    let instantiate_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    drop(router);
    let cfg = demo_filter(dir);
    let compiled = rt.compile(&cfg.name, &cfg.path, None, None)?;
    let before = rss_bytes("VmRSS");
    let filter = FilterPlugin::from_compiled(&rt, &cfg.name, compiled, cfg.config_json(), metrics)?;
    let per_instance = rss_bytes("VmRSS").saturating_sub(before) as f64 / n as f64;
    drop(filter);
    let _ = std::fs::remove_dir_all(&cache);
    Ok((loads, instantiate_ms, per_instance))
}

#[derive(Default)]
struct EndToEnd {
    /// CPU seconds per wall second (cores busy) while the 10%..90% of each
    /// run passed: bare passthrough, trivial, JSON, like-for-like
    /// passthrough (the embedded broker included).
    busy_cores: Vec<f64>,
    /// The same for the broker's own process (Tansu; 0 when embedded).
    broker_cores: Vec<f64>,
    passthrough: f64,
    passthrough_like_cdrs: f64,
    trivial: f64,
    json: f64,
    p50_ms: f64,
    p99_ms: f64,
    passthrough_p50_ms: f64,
    passthrough_p99_ms: f64,
    broker_p50_ms: f64,
    broker_p99_ms: f64,
}

/// How the bench's clients reach the broker.
#[derive(Clone)]
struct Link {
    /// Bootstrap servers.
    brokers: String,
    /// The broker's process id, when it runs in its own process here.
    pid: Option<u32>,
    /// `fetch.wait.max.ms` of every consumer of the bench (CDRS's too).
    fetch_wait_ms: &'static str,
}

/// `fetch.wait.max.ms` of the bench's consumers on librdkafka's mock
/// broker, which answers a fetch with nothing to return only after the
/// wait: at librdkafka's default (500 ms) that wait would be the latency.
const MOCK_FETCH_WAIT_MS: &str = "10";

/// `fetch.wait.max.ms` of the bench's consumers on a real broker. On Tansu
/// 0.6 (`--only latency`, 2–3 runs each, ms): at 10, group
/// consumers polling that often make it answer produce requests late
/// (CDRS p50 51–116 / p99 515–1035, like-for-like loop 64–273 /
/// 924–1432); at 500 it answers a waiting fetch late (broker alone p50 22,
/// loop and CDRS p50 186–261); at 100 CDRS p50 66–76 / p99 131–162.
const FETCH_WAIT_MS: &str = "100";

/// Partitions of every bench topic.
const PARTITIONS: i32 = 6;

/// Group settings of the bench's group consumers: a real broker (Tansu)
/// holds a group's first JoinGroup for the rebalance timeout, which is
/// `max.poll.interval.ms` (default 5 min).
const GROUP_OPTIONS: [(&str, &str); 2] = [
    ("session.timeout.ms", "6000"),
    ("max.poll.interval.ms", "6000"),
];

/// Counts records on `topic` until `want`. Returns the time between the
/// 10th and the 90th percentile record seen (steady state: no group join,
/// no tail) and each record's age (now − its timestamp) in ms.
fn watch_topic(
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
struct Watched {
    span: Duration,
    /// Consume time minus record timestamp per record, ms.
    ages: Vec<f64>,
    /// CPU seconds of this process (broker included) per wall second.
    busy_cores: f64,
    /// The same for the broker's process (0 when it runs in this one).
    broker_cores: f64,
}

/// CDRS from `input` to the `kafka://` target `out` with `filter` and the
/// non-sticky P2C router; `tag` names its consumer group, `dlq` is the
/// dead-letter topic; `opts.kafka_options` go last into `[kafka.options]`.
fn config(
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
async fn passthrough(
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
fn copier(
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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

async fn end_to_end(opts: &BenchOptions) -> anyhow::Result<EndToEnd> {
    // `--only latency`: no throughput rounds, nothing produced for them.
    let latency_only = opts.only.as_deref() == Some("latency");
    let n = if latency_only { 0 } else { opts.records };
    let cluster = Running::start(&opts.broker).await?;
    // Topic and group names unique per run: an external broker keeps them.
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let name = |what: &str| format!("bench-{what}-{run}");
    let (input, dlq) = (name("in"), name("dlq"));
    cluster.create_topic(&input, PARTITIONS).await?;
    cluster.create_topic(&dlq, 1).await?;
    let link = cluster.link();
    let events: Vec<_> = (0..n).map(record).collect();
    let kept = events.iter().filter(|e| e.2 == Fate::Delivered).count();
    produce_events(&link.brokers, &input, events).await?;
    let limit = Duration::from_secs(300);

    let trivial_filter = PluginConfig {
        name: "pass".into(),
        path: opts.plugin_dir.join("field_filter.wasm"),
        config: toml::Table::new(),
        sha256: None,
    };
    // Three rounds (one with --quick), the paths interleaved so a noisy
    // neighbour hits all of them alike, each round starting at another
    // path (a broker may slow down as it fills); each figure is the median.
    // Paths: 0 bare passthrough, 1 CDRS trivial, 2 CDRS JSON, 3 like-for-like
    // passthrough.
    let rounds = match (latency_only, opts.quick) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 3,
    };
    let mut runs: [Vec<Watched>; 4] = Default::default();
    for round in 0..rounds {
        for k in 0..4 {
            let path = (round + k) % 4;
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
                    let cfg = config(&link, (&tag, &dlq), &input, &out, filter, opts);
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
        runs.iter()
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
    })
}

/// Records of a latency run: a warm-up, then the measured ones.
const LATENCY_WARM_UP: usize = 500;
const LATENCY_RECORDS: usize = LATENCY_WARM_UP + 10_000;

/// Produces [`LATENCY_RECORDS`] to `input` at 2,000 records/s while
/// something copies them to `out` (keeping their timestamps), or with
/// `out == input` nothing does; p50 and p99 of (arrival on `out` − record
/// timestamp), ms, over the records after the warm-up.
///
/// The warm-up is waited for, so the figures are the steady state: right
/// after start the first records wait up to ~0.6 s (first fetches, the
/// target producer's start, a group join), which made p99 ~550 ms when they
/// were counted.
async fn steady_latency(
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

/// The `--broker` of `cdrs bench`.
pub(crate) fn broker(arg: Option<&str>) -> anyhow::Result<BenchBroker> {
    let tansu = cdrs::testkit::tansu::TansuProcess::binary(Path::new("."));
    Ok(match arg {
        None if tansu.is_file() => BenchBroker::Tansu(tansu),
        None | Some("embedded") => BenchBroker::Embedded,
        Some("tansu") if tansu.is_file() => BenchBroker::Tansu(tansu),
        Some("tansu") => anyhow::bail!(
            "--broker tansu: no Tansu binary at {} (set CDRS_TANSU, or run `scripts/dev.sh broker`)",
            tansu.display()
        ),
        Some(addr) if addr.contains(':') => BenchBroker::External(addr.to_string()),
        Some(other) => anyhow::bail!(
            "--broker {other:?}: expected `tansu`, `embedded` or HOST:PORT of a running broker"
        ),
    })
}

/// `cdrs bench`: runs it, prints the table, writes the JSON report to `out`.
pub(crate) fn command(out: Option<PathBuf>, opts: BenchOptions) -> anyhow::Result<ExitCode> {
    let report = crate::runtime()?.block_on(run(opts))?;
    print!("{}", table(&report));
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
