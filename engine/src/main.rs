//! The `cdrs` command: `run`, `check`, `demo`.

use anyhow::Context;
use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::metrics::Metrics;
use cdrs::plugin::Runtime;
use cdrs::reload::PluginManager;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Benchmarks: plugin overhead against native, end to end against a bare
    /// rdkafka passthrough, load times, memory. Prints a table; --out writes JSON.
    /// Run the release build for real figures (`scripts/dev.sh bench`).
    Bench {
        /// Write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Records per end-to-end run.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// A short smoke run (fewer iterations; rough figures).
        #[arg(long)]
        quick: bool,
        /// Run one part only (the others report 0).
        #[arg(long, value_parser = ["overhead", "load", "e2e"])]
        only: Option<String>,
        /// Folder with field_filter.wasm and p2c_router.wasm.
        #[arg(
            long,
            env = "CDRS_PLUGIN_DIR",
            default_value = "target/wasm32-wasip2/plugin"
        )]
        plugin_dir: PathBuf,
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

fn init_logs(default: &str) {
    cdrs::logging::init(default);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => {
            init_logs("warn");
            check(config)
        }
        Command::Demo {
            records,
            duration_s,
            plugin_dir,
        } => {
            init_logs("warn");
            demo(records, duration_s, plugin_dir)
        }
        Command::Bench {
            out,
            records,
            quick,
            only,
            plugin_dir,
        } => {
            init_logs("warn");
            bench(out, records, quick, only, plugin_dir)
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
            demo_server(&id, capacity, port, log, report_to, token)
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    init_logs(&config.log.level);
    runtime()?.block_on(async {
        let daemon = Daemon::start(config, Some(path)).await?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break }
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config file");
                    daemon.reload().await;
                }
            }
        }
        daemon.stop().await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<String> = Vec::new();
    let config = match Config::load(&path) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.extend(e.problems.iter().map(|p| p.to_string()));
            // Plugins can still be checked if the file parsed.
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| toml::from_str::<Config>(&t).ok())
                .map(|mut c| {
                    let base = path.parent().unwrap_or(std::path::Path::new("."));
                    for p in c.filters.iter_mut().chain(std::iter::once(&mut c.router)) {
                        p.path = base.join(&p.path);
                    }
                    c
                })
        }
    };
    if let Some(config) = &config {
        let runtime = Runtime::new(&config.plugins).context("failed to start the Wasm runtime")?;
        let metrics = Arc::new(Metrics::new());
        if let Err(errs) = PluginManager::load(runtime, config, metrics) {
            problems.extend(
                errs.iter()
                    .filter(|e| !matches!(e, cdrs::plugin::PluginError::Read { .. }))
                    .map(|e| e.to_string()),
            );
        }
    }
    if problems.is_empty() {
        let c = config.expect("no problems means the config loaded");
        println!(
            "ok: \"{}\": {} filter(s), router {:?}, {} target(s), topics {:?}",
            path.display(),
            c.filters.len(),
            c.router.name,
            c.targets.len(),
            c.kafka.topics
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} problem(s) in \"{}\":", problems.len(), path.display());
        for p in &problems {
            eprintln!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn demo(records: u64, duration_s: u64, plugin_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let opts = cdrs::demo::DemoOptions {
        records,
        duration: Duration::from_secs(duration_s),
        plugin_dir,
    };
    let summary = runtime()?.block_on(cdrs::demo::run(opts))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo_server(
    id: &str,
    capacity: u32,
    port: u16,
    log: Option<PathBuf>,
    report_to: Option<std::net::SocketAddr>,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let server = cdrs::demo::appserver::AppServer::start_on(id, capacity, port, log.as_deref())?;
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

fn bench(
    out: Option<PathBuf>,
    records: u64,
    quick: bool,
    only: Option<String>,
    plugin_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let opts = cdrs::bench::BenchOptions {
        plugin_dir,
        records,
        quick,
        only,
    };
    let report = runtime()?.block_on(cdrs::bench::run(opts))?;
    print!("{}", cdrs::bench::table(&report));
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
