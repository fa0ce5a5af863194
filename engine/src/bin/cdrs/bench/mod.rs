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
//! 3. **HTTP**: records/s and CPU per record through CDRS (demo filter and
//!    router) to three counting HTTP app servers, against a like-for-like
//!    rdkafka → HTTP loop (same bodies, client, concurrency and batch size),
//!    and produce → arrival latency of both at half the loop's rate
//!    ([`http`]).
//! 4. **Load**: cold compile and cached load per plugin; instantiation (+ `init`).
//! 5. **Memory**: resident set of the process idle and under load; per plugin
//!    instance (RSS growth over 64 extra instances).
//!
//! Figures depend on the build: run the release binary (`scripts/dev.sh bench`).

mod broker;
mod end_to_end;
pub(crate) mod http;
mod overhead;

use anyhow::Context;
pub use broker::BenchBroker;
use broker::*;
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
use end_to_end::*;
use overhead::*;
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Run one part only: `overhead`, `load`, `e2e`, `latency` (the
    /// end-to-end part's latency phase alone), `http` (with its scaling
    /// runs) or `http-scaling` (those alone); the others report 0.
    pub only: Option<String>,
    /// The broker of the end-to-end part.
    pub broker: BenchBroker,
    /// librdkafka settings for CDRS's clients in the end-to-end part, put
    /// into `[kafka.options]` after the bench's own (so they win).
    pub kafka_options: Vec<(String, String)>,
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
    /// CDRS, JSON filter, every record with a sampled `traceparent`:
    /// tracing off, and on at 1% (`telemetry.sample_ratio = 0.01`), records/s,
    /// and the share of records/s tracing costs.
    pub e2e_json_traced_off_records_per_s: f64,
    pub e2e_json_traced_1pct_records_per_s: f64,
    pub tracing_cost_1pct: f64,
    /// HTTP delivery (demo filter and router, three counting servers):
    /// CDRS's records/s against the like-for-like rdkafka → HTTP loop's.
    pub http_records_per_s: f64,
    pub http_loop_records_per_s: f64,
    pub http_ratio_like_for_like: f64,
    /// The same with a filter that keeps every record unread: what the
    /// path costs without the JSON filter's work.
    pub http_trivial_records_per_s: f64,
    pub http_ratio_trivial_like_for_like: f64,
    /// CPU of CDRS / of the loop per record, µs (broker and servers apart).
    pub http_cpu_us_per_record: f64,
    pub http_trivial_cpu_us_per_record: f64,
    pub http_loop_cpu_us_per_record: f64,
    /// Produce → arrival at the server at half the loop's rate, ms: CDRS,
    /// the loop, and CDRS minus the loop.
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
    pub http_loop_p50_ms: f64,
    pub http_loop_p99_ms: f64,
    pub http_p50_added_ms: f64,
    pub http_p99_added_ms: f64,
    /// CDRS minus the loop at 2,000 records/s, ms (0 with `--quick`).
    pub http_low_rate_p50_added_ms: f64,
    pub http_low_rate_p99_added_ms: f64,
    /// Everything the HTTP part measured.
    pub http: http::HttpFigures,
    /// The HTTP path with 1–64 targets and 1–24 partitions.
    pub http_scaling: Vec<http::ScalingRow>,
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
    let h = if wants("http") {
        http::http(&opts).await?
    } else {
        http::HttpFigures::default()
    };
    // Not in a `--quick` run unless asked for: six daemons joining a group.
    let scaling = if opts.only.as_deref() == Some("http-scaling") || (wants("http") && !opts.quick)
    {
        http::scaling(&opts).await?
    } else {
        Vec::new()
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
        e2e_json_traced_off_records_per_s: e2e.json_traced_off,
        e2e_json_traced_1pct_records_per_s: e2e.json_traced_on,
        tracing_cost_1pct: if e2e.json_traced_off > 0.0 {
            1.0 - e2e.json_traced_on / e2e.json_traced_off
        } else {
            0.0
        },
        http_records_per_s: h.cdrs_records_per_s,
        http_loop_records_per_s: h.loop_records_per_s,
        http_ratio_like_for_like: ratio(h.cdrs_records_per_s, h.loop_records_per_s),
        http_trivial_records_per_s: h.cdrs_trivial_records_per_s,
        http_ratio_trivial_like_for_like: ratio(h.cdrs_trivial_records_per_s, h.loop_records_per_s),
        http_cpu_us_per_record: h.cdrs_cpu_us_per_record,
        http_trivial_cpu_us_per_record: h.cdrs_trivial_cpu_us_per_record,
        http_loop_cpu_us_per_record: h.loop_cpu_us_per_record,
        http_p50_ms: h.half_load.cdrs_p50_ms,
        http_p99_ms: h.half_load.cdrs_p99_ms,
        http_loop_p50_ms: h.half_load.loop_p50_ms,
        http_loop_p99_ms: h.half_load.loop_p99_ms,
        http_p50_added_ms: h.half_load.cdrs_p50_ms - h.half_load.loop_p50_ms,
        http_p99_added_ms: h.half_load.cdrs_p99_ms - h.half_load.loop_p99_ms,
        http_low_rate_p50_added_ms: h.low_rate.cdrs_p50_ms - h.low_rate.loop_p50_ms,
        http_low_rate_p99_added_ms: h.low_rate.cdrs_p99_ms - h.low_rate.loop_p99_ms,
        http: h,
        http_scaling: scaling,
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
        s += &format!(
            "tracing: CDRS, JSON filter, every record with a sampled traceparent: \
             off {:.0} records/s, on at 1% {:.0} records/s ({:+.1}%)\n",
            r.e2e_json_traced_off_records_per_s,
            r.e2e_json_traced_1pct_records_per_s,
            -100.0 * r.tracing_cost_1pct
        );
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
    if r.http_loop_records_per_s > 0.0 {
        let h = &r.http;
        s += &format!(
            "\nHTTP delivery ({} records of 200 bytes, {}, {} counting servers)\n\
             | path | records/s | vs loop | CPU µs/record | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n\
             | rdkafka → HTTP loop, like-for-like | {:.0} | 1.00 | {:.2} | {:.1} | {:.1} |\n\
             | CDRS, demo filter and router | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} |\n\
             | CDRS, trivial filter, demo router | {:.0} | {:.2} | {:.2} | | |\n\
             | broker alone (produce → consumer; latency only) | | | | {:.1} | {:.1} |\n\
             latency: produce → arrival at the server at {:.0} records/s (half the {:.0} records/s \
             the loop sustains while the records are produced beside it); \
             CDRS adds p50 {:+.1} ms, p99 {:+.1} ms. Broker {:.2}, servers {:.2} CPU µs/record; \
             records per request: loop {:.0}, CDRS {:.0}\n",
            r.records,
            r.broker,
            http::SERVERS,
            h.loop_records_per_s,
            h.loop_cpu_us_per_record,
            h.half_load.loop_p50_ms,
            h.half_load.loop_p99_ms,
            h.cdrs_records_per_s,
            r.http_ratio_like_for_like,
            h.cdrs_cpu_us_per_record,
            h.half_load.cdrs_p50_ms,
            h.half_load.cdrs_p99_ms,
            h.cdrs_trivial_records_per_s,
            r.http_ratio_trivial_like_for_like,
            h.cdrs_trivial_cpu_us_per_record,
            h.half_load.broker_p50_ms,
            h.half_load.broker_p99_ms,
            h.half_load.rate,
            h.loop_live_records_per_s,
            r.http_p50_added_ms,
            r.http_p99_added_ms,
            h.broker_cpu_us_per_record,
            h.servers_cpu_us_per_record,
            h.loop_records_per_request,
            h.cdrs_records_per_request,
        );
        let low = &h.low_rate;
        if low.rate > 0.0 {
            s += &format!(
                "latency at {:.0} records/s: loop p50 {:.1} / p99 {:.1} ms, CDRS p50 {:.1} / p99 {:.1} ms \
                 (adds {:+.1} / {:+.1}), broker alone p50 {:.1} / p99 {:.1} ms\n",
                low.rate,
                low.loop_p50_ms,
                low.loop_p99_ms,
                low.cdrs_p50_ms,
                low.cdrs_p99_ms,
                r.http_low_rate_p50_added_ms,
                r.http_low_rate_p99_added_ms,
                low.broker_p50_ms,
                low.broker_p99_ms,
            );
        }
    }
    if !r.http_scaling.is_empty() {
        s += &format!(
            "\nHTTP delivery scaling (CDRS, {} records each, demo filter and router)\n\
             | targets | partitions | records/s | CPU µs/record | RSS MiB |\n|---|---|---|---|---|\n",
            (r.records / 2).max(1_000)
        );
        for row in &r.http_scaling {
            s += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.1} |\n",
                row.targets,
                row.partitions,
                row.records_per_s,
                row.cpu_us_per_record,
                row.rss_bytes as f64 / 1048576.0
            );
        }
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
            tls: None,
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

/// `PID-SECONDS`: a suffix that makes a run's topic and group names unique
/// (an external broker keeps those of earlier runs).
fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}-{secs}", std::process::id())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
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

/// The field filter with no configuration: keeps every record without
/// reading its value (the trivial policy of the end-to-end parts).
fn trivial_filter(plugin_dir: &Path) -> PluginConfig {
    PluginConfig {
        name: "pass".into(),
        path: plugin_dir.join("field_filter.wasm"),
        config: toml::Table::new(),
        sha256: None,
        shadow: None,
    }
}
