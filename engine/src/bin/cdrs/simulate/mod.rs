//! `cdrs simulate`: routing quality in virtual time. A scenario
//! ([`scenario::Scenario`]: servers, arrivals, CDRS instances, reports,
//! slowdowns and crashes) is run once per policy — each router plugin given
//! with `--router`, through the real plugin runtime, and the built-in
//! baselines — with the same seed, and the sojourn times, utilisation,
//! re-routes and key moves are printed side by side ([`model`]).

mod model;
mod real;
mod scenario;

use anyhow::Context;
use cdrs::config::{PluginConfig, PluginRuntimeConfig};
use cdrs::metrics::Metrics;
use cdrs::plugin::router::RouterPlugin;
use cdrs::plugin::Runtime;
use model::{Baseline, BaselinePolicy, Outcome, Plugin, Policy};
use scenario::Scenario;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// A router plugin to simulate: `NAME=PATH`, with its `init` config.
#[derive(Debug, Clone)]
pub struct RouterArg {
    pub name: String,
    pub path: PathBuf,
    pub config: toml::Table,
}

/// What `cdrs simulate` was asked for.
pub struct SimulateOptions {
    /// Built-in names or files; several with `--goals`.
    pub scenarios: Vec<String>,
    pub routers: Vec<RouterArg>,
    pub out: Option<PathBuf>,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's duration (ms), e.g. for a quick look.
    pub duration_ms: Option<u64>,
    pub goals: bool,
    /// `--trace`: a router capture whose arrivals replace the scenarios'.
    pub trace: Option<PathBuf>,
    /// `--real`: the first scenario also on the real pipeline, with the
    /// first router (plugins from this folder).
    pub real: Option<PathBuf>,
}

/// One scenario's run: the scenario as run and each policy's outcome.
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub instances: usize,
    pub load: f64,
    pub outcomes: Vec<Outcome>,
}

/// The JSON `--out` writes: the goal figures (with `--goals`; 0
/// otherwise) and every scenario's table.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// heterogeneous: the best router plugin's p99 over least-inflight's and
    /// over weighted round robin's.
    pub p99_best_over_least_inflight: f64,
    pub p99_best_over_static_wrr: f64,
    /// herding: the same over least-inflight with four instances on
    /// reports 1 s old.
    pub herding_p99_best_over_least_inflight: f64,
    /// slowdown: the best plugin's p99 while one server is 10× slower over
    /// its p99 before (the steady state).
    pub slowdown_p99_over_steady: f64,
    /// sticky: the busiest server's rate over the mean, and the share of
    /// keys that moved, of the sticky plugin (under half the keys moved)
    /// with the most even load.
    pub sticky_max_load_over_mean: f64,
    pub sticky_keys_moved_fraction: f64,
    /// `--real`: |real − simulated| ÷ simulated sojourn p50 and p99 of the
    /// first scenario and router (0 without `--real`).
    pub sim_vs_real_p50_error: f64,
    pub sim_vs_real_p99_error: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_vs_real: Option<real::SimVsReal>,
    pub scenarios: Vec<ScenarioReport>,
}

/// The scenarios `--goals` runs, in order.
const GOAL_SCENARIOS: [&str; 4] = ["heterogeneous", "herding", "slowdown", "sticky"];

/// `--router NAME=PATH`.
pub fn router_arg(arg: &str) -> Result<RouterArg, String> {
    match arg.split_once('=') {
        Some((name, path)) if cdrs_valid_name(name) && !path.is_empty() => Ok(RouterArg {
            name: name.to_string(),
            path: path.into(),
            config: toml::Table::new(),
        }),
        _ => Err(format!(
            "expected NAME=PLUGIN.wasm (NAME of [A-Za-z0-9._-]), got {arg:?}"
        )),
    }
}

fn cdrs_valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `--router-config NAME=JSON`: the `init` config of router NAME.
pub fn apply_router_config(routers: &mut [RouterArg], arg: &str) -> anyhow::Result<()> {
    let (name, json) = arg
        .split_once('=')
        .with_context(|| format!("--router-config: expected NAME=JSON, got {arg:?}"))?;
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("--router-config {name}: not JSON"))?;
    let table: toml::Table = serde_json::from_value(value)
        .with_context(|| format!("--router-config {name}: not a JSON object"))?;
    let r = routers
        .iter_mut()
        .find(|r| r.name == name)
        .with_context(|| format!("--router-config {name}: no --router {name}=…"))?;
    r.config = table;
    Ok(())
}

/// The default routers: the demo's P2C, load-aware, sticky and sticky with
/// bounded loads (1.25), and the latency-aware `ewma-router` and
/// `prequal-router`.
pub fn default_routers(plugin_dir: &Path) -> Vec<RouterArg> {
    let p2c = plugin_dir.join("p2c_router.wasm");
    let mut sticky = toml::Table::new();
    sticky.insert("sticky".into(), toml::Value::Boolean(true));
    let mut bounded = sticky.clone();
    bounded.insert("sticky_max_load".into(), toml::Value::Float(1.25));
    vec![
        RouterArg {
            name: "p2c".into(),
            path: p2c.clone(),
            config: toml::Table::new(),
        },
        RouterArg {
            name: "p2c-sticky".into(),
            path: p2c.clone(),
            config: sticky,
        },
        RouterArg {
            name: "p2c-bounded".into(),
            path: p2c,
            config: bounded,
        },
        RouterArg {
            name: "ewma".into(),
            path: plugin_dir.join("ewma_router.wasm"),
            config: toml::Table::new(),
        },
        RouterArg {
            name: "prequal".into(),
            path: plugin_dir.join("prequal_router.wasm"),
            config: toml::Table::new(),
        },
    ]
}

/// Runs the scenarios and prints the tables; writes the JSON report.
///
/// # Errors
/// A scenario that does not load, a router that does not load or `init`,
/// an unwritable `--out`.
pub fn command(opts: SimulateOptions) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = if opts.goals {
        GOAL_SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.scenarios.clone()
    };
    anyhow::ensure!(
        !names.is_empty(),
        "give --scenario FILE|NAME (built in: {}) or --goals",
        scenario::BUILT_IN
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cache = std::env::temp_dir().join(format!("cdrs-simulate-{}", std::process::id()));
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        cache_dir: Some(cache.clone()),
        ..PluginRuntimeConfig::default()
    })?;
    let trace = match &opts.trace {
        Some(path) => {
            let batches = cdrs::plugin::testbed::read_capture(path)?;
            let t = scenario::Trace::from_capture(&batches)
                .with_context(|| format!("--trace {}", path.display()))?;
            println!(
                "trace {}: {} records, {} keys, {:.0} records/s over {:.1} s (replayed from the start when the scenario runs longer)",
                path.display(),
                t.times_ns.len(),
                t.distinct_keys(),
                t.rate_per_s(),
                t.span_ns as f64 / 1e9
            );
            Some(Arc::new(t))
        }
        None => None,
    };
    let mut report = Report::default();
    let mut first_scenario = None;
    for name in &names {
        let mut s = Scenario::load(name)?;
        if let Some(t) = &trace {
            s.arrivals.rate_per_s = t.rate_per_s();
            s.arrivals.keys = t.distinct_keys().max(1);
            s.arrivals.trace = Some(t.clone());
        }
        if let Some(seed) = opts.seed {
            s.seed = seed;
        }
        if let Some(d) = opts.duration_ms {
            s.duration_ms = d;
            s.warmup_ms = Some(d / 10);
        }
        let r = run_scenario(&s, &opts.routers, &runtime)?;
        print!("{}", table(&r));
        if first_scenario.is_none() {
            first_scenario = Some(s);
        }
        report.scenarios.push(r);
    }
    let _ = std::fs::remove_dir_all(&cache);
    if let (Some(plugin_dir), Some(first), Some(router), Some(s)) = (
        &opts.real,
        report.scenarios.first(),
        opts.routers.first(),
        &first_scenario,
    ) {
        let sim = first
            .outcomes
            .iter()
            .find(|o| o.policy == router.name)
            .context("the first router's simulated outcome")?
            .clone();
        println!(
            "real pipeline: {} with {} on Tansu, {} app servers, {:.0} s …",
            s.name,
            router.name,
            s.servers.len(),
            s.duration_ms as f64 / 1e3
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (p50, p99, records, per_server) = rt.block_on(real::run(s, router, plugin_dir))?;
        let err = |real: f64, sim: f64| {
            if sim > 0.0 {
                (real - sim).abs() / sim
            } else {
                0.0
            }
        };
        let v = real::SimVsReal {
            scenario: s.name.clone(),
            policy: router.name.clone(),
            records,
            sim_p50_ms: sim.p50_ms,
            sim_p99_ms: sim.p99_ms,
            real_p50_ms: p50,
            real_p99_ms: p99,
            p50_error: err(p50, sim.p50_ms),
            p99_error: err(p99, sim.p99_ms),
            per_server_records: per_server,
        };
        println!(
            "| {} | p50 ms | p99 ms |\n|---|---|---|\n| simulated | {:.1} | {:.1} |\n| real ({} records) | {:.1} | {:.1} |\n| error | {:.1}% | {:.1}% |",
            v.policy,
            v.sim_p50_ms,
            v.sim_p99_ms,
            v.records,
            v.real_p50_ms,
            v.real_p99_ms,
            100.0 * v.p50_error,
            100.0 * v.p99_error
        );
        report.sim_vs_real_p50_error = v.p50_error;
        report.sim_vs_real_p99_error = v.p99_error;
        report.sim_vs_real = Some(v);
    }
    if opts.goals {
        goals(&mut report, &opts.routers);
        println!(
            "goals: p99 best/least-inflight {:.2}, best/weighted-round-robin {:.2}; herding best/least-inflight {:.2}; \
             slowdown p99 during/steady {:.2}; sticky max/mean load {:.2}, keys moved {:.1}%",
            report.p99_best_over_least_inflight,
            report.p99_best_over_static_wrr,
            report.herding_p99_best_over_least_inflight,
            report.slowdown_p99_over_steady,
            report.sticky_max_load_over_mean,
            100.0 * report.sticky_keys_moved_fraction,
        );
    }
    if let Some(out) = &opts.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("failed to write {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs every router and baseline through `s`.
fn run_scenario(
    s: &Scenario,
    routers: &[RouterArg],
    runtime: &Arc<Runtime>,
) -> anyhow::Result<ScenarioReport> {
    let metrics = Arc::new(Metrics::new());
    let mut outcomes = Vec::new();
    for r in routers {
        let cfg = PluginConfig {
            name: r.name.clone(),
            path: r.path.clone(),
            config: r.config.clone(),
            sha256: None,
            shadow: None,
        };
        let o = model::run(s, &r.name, |_| {
            let plugin = RouterPlugin::load(runtime, &cfg, metrics.clone()).with_context(|| {
                format!(
                    "failed to load router {:?} from {}",
                    r.name,
                    r.path.display()
                )
            })?;
            Ok(Box::new(Plugin(plugin)) as Box<dyn Policy>)
        })?;
        outcomes.push(o);
    }
    for b in Baseline::ALL {
        let o = model::run(s, b.name(), |i| {
            Ok(
                Box::new(BaselinePolicy::new(b, s.seed ^ ((i as u64 + 1) * 0x9e37)))
                    as Box<dyn Policy>,
            )
        })?;
        outcomes.push(o);
    }
    Ok(ScenarioReport {
        name: s.name.clone(),
        description: s.description.clone(),
        seed: s.seed,
        duration_ms: s.duration_ms,
        warmup_ms: s.warmup_ms(),
        instances: s.instances,
        load: s.offered_load(),
        outcomes,
    })
}

/// The side-by-side table of one scenario.
fn table(r: &ScenarioReport) -> String {
    let servers: Vec<&str> = r.outcomes[0]
        .utilisation
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    let mut s = format!(
        "\n{} ({}): load {:.0}%, {} instance(s), {} s simulated ({} s warm-up), seed {}\n",
        r.name,
        r.description,
        100.0 * r.load,
        r.instances,
        r.duration_ms / 1000,
        r.warmup_ms / 1000,
        r.seed
    );
    s += "| policy | p50 ms | p99 ms | p99.9 ms |";
    let events = r.outcomes.iter().any(|o| o.p99_during_events_ms > 0.0);
    if events {
        s += " p99 during events | p99 before |";
    }
    for id in &servers {
        s += &format!(" util {id} |");
    }
    s += " max/mean load | rerouted | key moves | keys moved |\n|---|---|---|---|";
    if events {
        s += "---|---|";
    }
    s += &"---|".repeat(servers.len() + 4);
    s += "\n";
    for o in &r.outcomes {
        s += &format!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            o.policy, o.p50_ms, o.p99_ms, o.p999_ms
        );
        if events {
            s += &format!(
                " {:.1} | {:.1} |",
                o.p99_during_events_ms, o.p99_before_events_ms
            );
        }
        for (_, u) in &o.utilisation {
            s += &format!(" {:.0}% |", 100.0 * u);
        }
        s += &format!(
            " {:.2} | {} | {} | {:.1}% |\n",
            o.max_load_over_mean,
            o.rerouted,
            o.moves,
            100.0 * o.keys_moved_fraction
        );
        if o.unfinished > 0 || o.dropped > 0 {
            s += &format!(
                "|  ({}: {} unfinished at the end, {} dropped) |\n",
                o.policy, o.unfinished, o.dropped
            );
        }
    }
    s
}

/// The goal figures from the four goal scenarios: "best" is the router
/// plugin with the lowest p99 (for `sticky`, the sticky one — under half
/// the keys moved — with the lowest max/mean load).
fn goals(report: &mut Report, routers: &[RouterArg]) {
    let find = |name: &str| report.scenarios.iter().find(|s| s.name == name);
    let plugin = |o: &&Outcome| routers.iter().any(|r| r.name == o.policy);
    let best = |s: &ScenarioReport| -> Option<Outcome> {
        s.outcomes
            .iter()
            .filter(plugin)
            .min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms))
            .cloned()
    };
    let of = |s: &ScenarioReport, b: Baseline| {
        s.outcomes
            .iter()
            .find(|o| o.policy == b.name())
            .map_or(f64::NAN, |o| o.p99_ms)
    };
    let mut r = Report::default();
    if let Some(s) = find("heterogeneous") {
        if let Some(b) = best(s) {
            r.p99_best_over_least_inflight = b.p99_ms / of(s, Baseline::LeastInflight);
            r.p99_best_over_static_wrr = b.p99_ms / of(s, Baseline::WeightedRoundRobin);
        }
    }
    if let Some(s) = find("herding") {
        if let Some(b) = best(s) {
            r.herding_p99_best_over_least_inflight = b.p99_ms / of(s, Baseline::LeastInflight);
        }
    }
    if let Some(s) = find("slowdown") {
        if let Some(b) = best(s) {
            r.slowdown_p99_over_steady = b.p99_during_events_ms / b.p99_before_events_ms;
        }
    }
    if let Some(s) = find("sticky") {
        if let Some(b) = s
            .outcomes
            .iter()
            .filter(plugin)
            .filter(|o| o.keys_moved_fraction < 0.5)
            .min_by(|a, b| a.max_load_over_mean.total_cmp(&b.max_load_over_mean))
        {
            r.sticky_max_load_over_mean = b.max_load_over_mean;
            r.sticky_keys_moved_fraction = b.keys_moved_fraction;
        }
    }
    r.scenarios = std::mem::take(&mut report.scenarios);
    *report = r;
}
