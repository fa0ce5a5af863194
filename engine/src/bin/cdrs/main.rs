//! The `cdrs` command: `run`, `check`, `plugin`, `demo`, `bench`, `simulate`.

mod bench;
mod demo;
mod plugin;
mod run;
mod simulate;

use clap::{Parser, Subcommand};
use plugin::PluginCommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc, unprefixed, so that it also serves librdkafka's `malloc` and
/// `free` (an operation per fetched record, a message and its headers per
/// produced one, freed on other threads than the allocating one). Measured
/// with `cdrs bench` on Tansu, 4 alternating runs each against glibc's
/// malloc: CDRS with trivial plugins +8% records/s (236–243k → 247–265k),
/// with the JSON filter unchanged, the like-for-like rdkafka loop +15%.
/// Only the binary: the library leaves the allocator to its user.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// CDRS: routes Kafka records through Wasm filter and router plugins to
/// application servers by their live capacity.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and its plugins; print every problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Plugin tooling: scaffold, check and test plugins without a broker.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The whole path on one machine: embedded broker, demo producer, three
    /// app servers with capacities 1:2:4, the real pipeline. Prints one JSON line.
    Demo {
        /// Records to produce.
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        /// Stop waiting for deliveries after this many seconds.
        #[arg(long = "duration-s", default_value_t = 60)]
        duration_s: u64,
        /// Folder with field_filter.wasm and p2c_router.wasm.
        #[arg(
            long,
            env = "CDRS_PLUGIN_DIR",
            default_value = "target/wasm32-wasip2/plugin"
        )]
        plugin_dir: PathBuf,
    },
    /// Benchmarks: plugin overhead against native, end to end (`kafka://`
    /// and HTTP) against like-for-like rdkafka loops, latency, scaling, load
    /// times, memory. Prints a table; --out writes JSON.
    /// Run the release build for real figures (`scripts/dev.sh bench`).
    Bench {
        /// Write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Records per end-to-end run. Default: 500,000 on Tansu or an
        /// external broker; 100,000 on the embedded one, whose fetch path
        /// slows down as a partition grows.
        #[arg(long)]
        records: Option<u64>,
        /// A short smoke run (fewer iterations; rough figures).
        #[arg(long)]
        quick: bool,
        /// Run one part only (the others report 0); `latency` is the
        /// end-to-end part's latency phase alone.
        #[arg(long, value_parser = ["overhead", "load", "e2e", "latency", "http", "http-scaling"])]
        only: Option<String>,
        /// A librdkafka setting for CDRS's clients in the end-to-end part,
        /// as in `[kafka.options]` (repeatable; after the bench's own, so
        /// it overrides them), e.g. `--kafka-option fetch.wait.max.ms=100`.
        #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = key_value)]
        kafka_options: Vec<(String, String)>,
        /// Broker of the end-to-end part: `tansu` (started from $CDRS_TANSU
        /// or .tools/bin/tansu, in its own process), `embedded`
        /// (librdkafka's in-process mock) or HOST:PORT of a running broker.
        /// Default: tansu if installed (`scripts/dev.sh broker`), else embedded.
        #[arg(long)]
        broker: Option<String>,
        /// Folder with field_filter.wasm and p2c_router.wasm.
        #[arg(
            long,
            env = "CDRS_PLUGIN_DIR",
            default_value = "target/wasm32-wasip2/plugin"
        )]
        plugin_dir: PathBuf,
    },
    /// Routing quality in virtual time: runs a scenario (servers, arrivals,
    /// CDRS instances, stale reports, slowdowns, crashes) once per router
    /// plugin, through the real plugin runtime, and per built-in baseline
    /// (random, round robin, weighted round robin, least in-flight); prints
    /// sojourn p50/p99/p99.9, utilisation, re-routes and key moves side by
    /// side; --out writes JSON. Deterministic for a seed.
    Simulate {
        /// A scenario file (TOML) or a built-in name: heterogeneous,
        /// herding, slowdown, sticky, sim-vs-real (repeatable).
        #[arg(long)]
        scenario: Vec<String>,
        /// A router plugin, NAME=PLUGIN.wasm (repeatable). Default: the
        /// demo's P2C router, load-aware (p2c), sticky (p2c-sticky) and sticky
        /// with bounded loads (p2c-bounded), and the latency-aware
        /// ewma-router (ewma) and prequal-router (prequal).
        #[arg(long, value_parser = simulate::router_arg)]
        router: Vec<simulate::RouterArg>,
        /// The `init` config of router NAME, NAME=JSON (repeatable).
        #[arg(long = "router-config", value_name = "NAME=JSON")]
        router_config: Vec<String>,
        /// Run the four goal scenarios and write the goal figures.
        #[arg(long)]
        goals: bool,
        /// Replace the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Replace the scenario's simulated time, ms (the warm-up becomes a tenth).
        #[arg(long = "duration-ms")]
        duration_ms: Option<u64>,
        /// Write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A router capture (`GET /v1/plugins/{router}/capture`): its
        /// records' times and keys replace the scenario's arrivals.
        #[arg(long, conflicts_with = "goals")]
        trace: Option<PathBuf>,
        /// Also run the first scenario with the first router on the real
        /// pipeline (Tansu, one app server per scenario server, a CDRS
        /// daemon) and report how far its p50 and p99 are from the
        /// simulation's.
        #[arg(long, conflicts_with_all = ["goals", "trace"])]
        real: bool,
        /// Folder with the default routers' plugins (p2c_router.wasm, ewma_router.wasm, prequal_router.wasm).
        #[arg(
            long,
            env = "CDRS_PLUGIN_DIR",
            default_value = "target/wasm32-wasip2/plugin"
        )]
        plugin_dir: PathBuf,
    },
    /// Counting app servers for `cdrs bench` (its HTTP part starts them in
    /// their own process): prints their ports, serves until stdin closes.
    #[command(hide = true)]
    BenchServer {
        #[arg(long, default_value_t = 3)]
        servers: usize,
    },
    /// One fake application server as its own process (for trying CDRS by
    /// hand and for chaos tests): takes `POST /records`, appends each record
    /// to --log before answering, `POST /control` changes its behaviour.
    DemoServer {
        /// Target id it reports as.
        #[arg(long)]
        id: String,
        /// Declared capacity (records in flight).
        #[arg(long, default_value_t = 100)]
        capacity: u32,
        /// Port on 127.0.0.1 (0: any free one; the chosen one is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Append every received record to this file (JSON lines).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Push capacity reports to this CDRS admin API (host:port) every second.
        #[arg(long = "report-to")]
        report_to: Option<std::net::SocketAddr>,
        /// Bearer token for --report-to.
        #[arg(long, env = "CDRS_ADMIN_TOKEN")]
        token: Option<String>,
    },
}

pub(crate) fn init_logs(default: &str) {
    cdrs::logging::init(default, cdrs::config::LogFormat::Text);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the process (rustls's ring).
    cdrs::tls::provider();
    let result = match cli.command {
        Command::Run { config } => run::run(config),
        Command::Check { config } => {
            init_logs("warn");
            run::check(config)
        }
        Command::Plugin { command } => {
            init_logs("warn");
            // Output piped into `head` should end quietly, not panic on a
            // broken pipe: the default SIGPIPE action, as for other CLI
            // tools. Only here: the daemon keeps Rust's ignored SIGPIPE.
            // SAFETY: no other thread is running yet, and SIG_DFL is a valid action.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            plugin::command(command)
        }
        Command::Demo {
            records,
            duration_s,
            plugin_dir,
        } => {
            init_logs("warn");
            demo::command(records, duration_s, plugin_dir)
        }
        Command::Bench {
            out,
            records,
            quick,
            only,
            kafka_options,
            broker,
            plugin_dir,
        } => {
            init_logs("warn");
            bench::broker(broker.as_deref()).and_then(|broker| {
                let records = records.unwrap_or(match broker {
                    bench::BenchBroker::Embedded => 100_000,
                    _ => 500_000,
                });
                let opts = bench::BenchOptions {
                    plugin_dir,
                    records,
                    quick,
                    only,
                    broker,
                    kafka_options,
                };
                bench::command(out, opts)
            })
        }
        Command::Simulate {
            scenario,
            router,
            router_config,
            goals,
            seed,
            duration_ms,
            out,
            trace,
            real,
            plugin_dir,
        } => {
            init_logs("warn");
            let mut routers = if router.is_empty() {
                simulate::default_routers(&plugin_dir)
            } else {
                router
            };
            router_config
                .iter()
                .try_for_each(|c| simulate::apply_router_config(&mut routers, c))
                .and_then(|()| {
                    simulate::command(simulate::SimulateOptions {
                        scenarios: scenario,
                        routers,
                        out,
                        seed,
                        duration_ms,
                        goals,
                        trace,
                        real: real.then(|| plugin_dir.clone()),
                    })
                })
        }
        Command::BenchServer { servers } => {
            init_logs("warn");
            bench::http::serve(servers)
        }
        Command::DemoServer {
            id,
            capacity,
            port,
            log,
            report_to,
            token,
        } => {
            init_logs("warn");
            demo::server(&id, capacity, port, log, report_to, token)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded tokio runtime every subcommand runs on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `KEY=VALUE` of `--kafka-option`.
fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka setting, e.g. fetch.wait.max.ms=100), got {arg:?}"
        )),
    }
}
