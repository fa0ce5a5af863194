//! The `cdrs` command: `run`, `check`, `plugin`, `demo`, `bench`.

use anyhow::Context;
use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::metrics::Metrics;
use cdrs::plugin::Runtime;
use cdrs::reload::PluginManager;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Benchmarks: plugin overhead against native, end to end against a bare
    /// rdkafka passthrough, load times, memory. Prints a table; --out writes JSON.
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
        #[arg(long, value_parser = ["overhead", "load", "e2e", "latency"])]
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

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a buildable plugin project in a new folder NAME.
    New {
        /// Guest language.
        #[arg(long, value_parser = ["rust", "python", "js", "c"])]
        lang: String,
        /// Which world it implements.
        #[arg(long, default_value = "router", value_parser = ["router", "filter"])]
        world: String,
        /// The CDRS `sdk/` folder (WIT, helpers, build scripts). Default: the
        /// one of the source tree this binary was built from.
        #[arg(long, env = "CDRS_SDK_DIR")]
        sdk: Option<PathBuf>,
        /// Folder to create (its last part is the plugin's name).
        name: PathBuf,
    },
    /// Does FILE implement the filter or router world of a contract version
    /// this host accepts? Lists its imports and what the host grants each.
    Check {
        /// The plugin component (.wasm).
        file: PathBuf,
    },
    /// Run a plugin on fixture records (and a target snapshot, for routers);
    /// print one decision per record as a JSON line, and timings to stderr.
    Test {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Records, JSON lines (see `sdk/example-policy.md`).
        #[arg(long)]
        records: PathBuf,
        /// Target snapshot, a JSON array (routers; default: no targets).
        #[arg(long)]
        targets: Option<PathBuf>,
        /// The plugin's config: a JSON file, or inline JSON (default `{}`).
        #[arg(long)]
        config: Option<String>,
        /// Expected output (JSON lines): print a diff and exit 1 on mismatch.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Records per plugin call.
        #[arg(long, default_value_t = 256)]
        batch: usize,
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
        Command::Plugin { command } => {
            init_logs("warn");
            // Output piped into `head` should end quietly, not panic on a
            // broken pipe: the default SIGPIPE action, as for other CLI
            // tools. Only here: the daemon keeps Rust's ignored SIGPIPE.
            // SAFETY: no other thread is running yet, and SIG_DFL is a valid action.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            plugin_command(command)
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
            kafka_options,
            broker,
            plugin_dir,
        } => {
            init_logs("warn");
            bench_broker(broker.as_deref()).and_then(|broker| {
                let records = records.unwrap_or(match broker {
                    cdrs::bench::BenchBroker::Embedded => 100_000,
                    _ => 500_000,
                });
                let opts = cdrs::bench::BenchOptions {
                    plugin_dir,
                    records,
                    quick,
                    only,
                    broker,
                    kafka_options,
                };
                bench(out, opts)
            })
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

/// Exit status after a panic: `EX_SOFTWARE` (sysexits.h, "internal software
/// error").
const EXIT_PANIC: i32 = 70;

/// Makes a panic on any thread end the process (after the usual message and
/// an ERROR log line) instead of ending only its task: a partition worker
/// or delivery lane that died would hold its records' offsets forever while
/// `/readyz` still said ready. Offsets are committed only below records
/// finished, so a restart (systemd, Kubernetes) resumes from there:
/// at-least-once, as after a crash.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if cdrs::panic::is_contained() {
            return; // its caller answers with an error (see cdrs::panic)
        }
        tracing::error!(panic = %info, "panic: exiting (status {EXIT_PANIC}) so a restart resumes from committed offsets");
        std::process::exit(EXIT_PANIC);
    }));
}

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    // Named here rather than as librdkafka's bare error from a client.
    let refused = config.check_kafka_options();
    if !refused.is_empty() {
        let lines: Vec<String> = refused.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!(
            "{} problem(s) in {path:?}:\n{}",
            refused.len(),
            lines.join("\n")
        );
    }
    init_logs(&config.log.level);
    exit_on_panic();
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
        // librdkafka judges `[kafka.options]`; `cdrs run` would die on them.
        problems.extend(config.check_kafka_options().iter().map(|p| p.to_string()));
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

/// The `--broker` of `cdrs bench`.
fn bench_broker(arg: Option<&str>) -> anyhow::Result<cdrs::bench::BenchBroker> {
    use cdrs::bench::BenchBroker;
    let tansu = cdrs::tansu::TansuProcess::binary(Path::new("."));
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

/// `KEY=VALUE` of `--kafka-option`.
fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka setting, e.g. fetch.wait.max.ms=100), got {arg:?}"
        )),
    }
}

fn bench(out: Option<PathBuf>, opts: cdrs::bench::BenchOptions) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(cdrs::bench::run(opts))?;
    print!("{}", cdrs::bench::table(&report));
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<ExitCode> {
    use cdrs::config::PluginRuntimeConfig;
    use cdrs::plugin::contract::{self, Grant, Inspection};
    use cdrs::plugin::testbed;
    match command {
        PluginCommand::New {
            lang,
            world,
            sdk,
            name,
        } => {
            let sdk = sdk.unwrap_or_else(cdrs::plugin::scaffold::default_sdk_dir);
            let files = cdrs::plugin::scaffold::create(&lang, &world, &name, &sdk)?;
            println!("created {} ({lang} {world}):", name.display());
            for f in &files {
                println!("  {}", f.display());
            }
            println!("next: see {}/README.md", name.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check { file } => {
            let runtime = Runtime::new(&PluginRuntimeConfig::default())
                .context("failed to start the Wasm runtime")?;
            // Any world; nothing is cached for a plugin that was only checked.
            let compiled = runtime.compile("plugin", &file, None, None)?;
            let i = Inspection::of(runtime.engine(), &compiled.component);
            let host = contract::host_version();
            println!("file:     {}", file.display());
            println!("sha256:   {}", compiled.hash);
            println!(
                "world:    {}{}",
                i.world.unwrap_or("none (exports neither filter nor route)"),
                match (i.world, i.packed) {
                    (Some("router"), true) => " (packed decisions)",
                    (Some(_), true) => " (packed verdicts)",
                    _ => "",
                }
            );
            match i.version() {
                Some(v) => println!(
                    "contract: {}@{v} (host: {}@{host})",
                    contract::PACKAGE,
                    contract::PACKAGE
                ),
                None => println!("contract: none (host: {}@{host})", contract::PACKAGE),
            }
            println!("imports:");
            for imp in &i.imports {
                let how = match imp.grant {
                    Grant::Contract => "contract",
                    Grant::WasiNothingGranted => "WASI, linked with nothing granted",
                    Grant::Refused => "REFUSED: not provided by the host",
                };
                if imp.functions.is_empty() {
                    println!("  {} ({how})", imp.name);
                } else {
                    println!("  {} ({how}): {}", imp.name, imp.functions.join(", "));
                }
            }
            println!("exports:  {}", i.exports.join(", "));
            let mut problems: Vec<String> = Vec::new();
            if let Some(p) = i.version_problem() {
                problems.push(format!("it {p}"));
            }
            problems.extend(i.refused().map(|imp| {
                format!(
                    "it imports {:?}, which the host does not provide (only {}/host, and WASI with nothing granted)",
                    imp.name,
                    contract::PACKAGE
                )
            }));
            match i.world {
                None => problems
                    .push("it exports neither `filter` nor `route`: not a CDRS plugin".into()),
                Some(world) if problems.is_empty() => {
                    if let Err(e) = runtime.check_links(world, "plugin", &compiled.component) {
                        problems.push(e.to_string());
                    }
                }
                Some(_) => {}
            }
            if problems.is_empty() {
                println!("ok: a {} plugin this host can load", i.world.unwrap_or("?"));
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &problems {
                    eprintln!("error: {p}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        PluginCommand::Test {
            file,
            records,
            targets,
            config,
            expect,
            batch,
        } => {
            let records = testbed::read_records(&records)?;
            let targets = match &targets {
                Some(t) => testbed::read_targets(t)?,
                None => Vec::new(),
            };
            let config = match config {
                None => "{}".to_string(),
                Some(c) if c.trim_start().starts_with('{') => c,
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("failed to read the config file \"{path}\""))?,
            };
            let expect = expect.as_deref().map(testbed::read_expect).transpose()?;
            let runtime = Runtime::new(&PluginRuntimeConfig {
                instances: 1,
                ..Default::default()
            })
            .context("failed to start the Wasm runtime")?;
            // A guest's stderr (tracebacks, panic messages) helps here; the
            // daemon never shows it.
            runtime.set_guest_stderr(true);
            let run = testbed::run(&runtime, &file, &records, &targets, &config, batch)?;
            for line in &run.lines {
                println!("{line}");
            }
            eprintln!(
                "{} {}: {} record(s) in {} call(s), {:.2} µs/record (host conversion included); load {:.1} ms",
                run.world,
                file.display(),
                records.len(),
                run.calls.len(),
                run.us_per_record(),
                run.load_ms
            );
            if run.errors > 0 {
                eprintln!(
                    "error: {} plugin call(s) failed (see the log above); the daemon would \
                     dead-letter (filter) or place by its default policy (router) those records, \
                     as the lines above show",
                    run.errors
                );
            }
            let init_error = run
                .lines
                .first()
                .and_then(|l| l.get("message")?.as_str())
                .filter(|_| run.lines.len() == 1 && run.lines[0].get("init").is_some());
            let failed = if run.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
            let Some(expect) = expect else {
                if let Some(msg) = init_error {
                    eprintln!("error: the plugin's init refused the config: {msg}");
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(failed);
            };
            let diff = testbed::diff(&expect, &run.lines);
            if diff.is_empty() {
                eprintln!("ok: {} line(s) as expected", expect.len());
                Ok(failed)
            } else {
                eprintln!("{} difference(s) from the expected output:", diff.len());
                for d in &diff {
                    eprintln!("  {d}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
