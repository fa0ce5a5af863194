//! `cdrs plugin new|check|test`: the plugin author's verbs;
//! `cdrs plugin deploy|promote|rollback|status`: the fleet operator's.

use anyhow::Context;
use cdrs::config::PluginRuntimeConfig;
use cdrs::plugin::contract::{self, Grant, Inspection};
use cdrs::plugin::testbed;
use cdrs::plugin::Runtime;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Scaffold a buildable plugin project in a new folder NAME.
    New {
        /// Guest language.
        #[arg(long, value_parser = ["rust", "python", "js", "c"])]
        lang: String,
        /// Which world it implements.
        #[arg(long, default_value = "router", value_parser = ["router", "filter"])]
        world: String,
        /// Build against this CDRS `sdk/` folder (e.g. of a checkout) instead
        /// of a copy of the SDK in the project's own `sdk/` folder.
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
        #[arg(long, required_unless_present = "replay")]
        records: Option<PathBuf>,
        /// A router's captured live batches (`GET
        /// /v1/plugins/{router}/capture`): each batch replayed against its
        /// own snapshot, the decisions compared with the captured ones.
        #[arg(long, conflicts_with_all = ["records", "targets", "expect", "key_order"])]
        replay: Option<PathBuf>,
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
        /// Also show where the host places each routed record under
        /// `delivery.key_order = "strict"` (the default) if none is
        /// acknowledged during the run: a key's later records follow its
        /// first one's target, whatever the router says (`"placed"`).
        #[arg(long, value_parser = ["strict", "relaxed"], default_value = "relaxed")]
        key_order: String,
    },
    /// Deploy FILE as plugin NAME to every CDRS of the fleet: written to the
    /// control topic (`control.topic` of the config), run by every instance
    /// as it reads it, and by every instance that starts later.
    Deploy {
        /// The fleet's config file (brokers, Kafka options, control topic).
        #[arg(long)]
        config: PathBuf,
        /// The plugin to replace: a `[[filters]]` or the `[router]` name.
        name: String,
        /// The new version (.wasm component).
        file: PathBuf,
        /// Its `init` config: inline JSON, or @FILE. Default: each
        /// instance's config file's.
        #[arg(long = "plugin-config")]
        plugin_config: Option<String>,
        /// A human version label, shown by `plugin status`.
        #[arg(long)]
        label: Option<String>,
        /// Run it on this share of the instances only (1..=99; stable by
        /// instance id); `plugin promote` takes it to all.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        /// Sign the deployment with this Ed25519 private key (PKCS#8 PEM,
        /// as `openssl genpkey -algorithm ed25519` writes): required by
        /// instances with `plugins.trusted_keys`.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Take NAME's canary deployment to every instance.
    Promote {
        /// The fleet's config file.
        #[arg(long)]
        config: PathBuf,
        /// The plugin.
        name: String,
    },
    /// Deploy, fleet-wide, the version the latest deployment of NAME
    /// replaced (its artifact is still on the control topic).
    Rollback {
        /// The fleet's config file.
        #[arg(long)]
        config: PathBuf,
        /// The plugin.
        name: String,
    },
    /// What every instance of the fleet runs, and the latest deployments.
    Status {
        /// The fleet's config file.
        #[arg(long)]
        config: PathBuf,
        /// Print the JSON of `GET /v1/fleet` instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `cdrs plugin` verb.
///
/// # Errors
/// A file that cannot be read, compiled or created; a wasmtime engine that
/// cannot start. A plugin that is not valid is a failure exit code instead.
pub(crate) fn command(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New {
            lang,
            world,
            sdk,
            name,
        } => new(&lang, &world, sdk, &name),
        PluginCommand::Check { file } => check(&file),
        PluginCommand::Test {
            file,
            replay: Some(capture),
            config,
            ..
        } => replay(&file, &capture, config),
        PluginCommand::Test {
            file,
            records,
            targets,
            config,
            expect,
            batch,
            key_order,
            replay: None,
        } => test(
            &file,
            records.as_deref().expect("clap: --records or --replay"),
            targets.as_deref(),
            config,
            expect.as_deref(),
            (batch, key_order == "strict"),
        ),
        PluginCommand::Deploy {
            config,
            name,
            file,
            plugin_config,
            label,
            canary,
            key,
        } => deploy(
            &config,
            &name,
            &file,
            plugin_config,
            label,
            canary,
            key.as_deref(),
        ),
        PluginCommand::Promote { config, name } => promote(&config, &name),
        PluginCommand::Status { config, json } => status(&config, json),
        PluginCommand::Rollback { config, name } => rollback(&config, &name),
    }
}

/// The config of a fleet command, with its control topic.
fn fleet_config(path: &Path) -> anyhow::Result<(cdrs::config::Config, String)> {
    let config = cdrs::config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topic = config.control.topic().map(str::to_owned).ok_or_else(|| {
        anyhow::anyhow!(
            "{:?} sets control.enabled = false: fleet deployments need the control topic",
            path.display().to_string()
        )
    })?;
    Ok((config, topic))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `cdrs plugin deploy`: the component's chunks, then the deployment record.
fn deploy(
    config: &Path,
    name: &str,
    file: &Path,
    plugin_config: Option<String>,
    label: Option<String>,
    canary: Option<u8>,
    key: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let signing = match key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read --key {}", path.display()))?;
            Some(
                ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "--key {}: not an Ed25519 private key in PKCS#8 PEM \
                     (openssl genpkey -algorithm ed25519 -out KEY): {e}",
                        path.display()
                    )
                })?,
            )
        }
        None => None,
    };
    let (config, topic) = fleet_config(config)?;
    let world = if config.router.name == name {
        "router"
    } else if config.filters.iter().any(|f| f.name == name) {
        "filter"
    } else {
        anyhow::bail!(
            "no plugin named {name:?} in the config's [[filters]] and [router]: a deployment replaces a configured plugin"
        );
    };
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let init = match plugin_config {
        None => None,
        Some(text) => {
            let text = match text.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read --plugin-config file {path}"))?,
                None => text,
            };
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .context("--plugin-config is not JSON (give inline JSON, or @FILE)")?,
            )
        }
    };
    let by = deployer();
    let (d, records) = runtime()?.block_on(async {
        cdrs::control::ensure_topic(&config, &topic).await?;
        let fleet = cdrs::control::read_fleet(&config, &topic).await?;
        let (mut d, mut records) = cdrs::control::deployment_records(
            name,
            world,
            &bytes,
            init,
            label,
            &by,
            fleet.last_ran(name).as_ref(),
        );
        d.canary_percent = canary;
        if let Some(k) = &signing {
            cdrs::control::sign(&mut d, k);
        }
        let last = records.last_mut().expect("the deployment record");
        last.1 = serde_json::to_vec(&d)?;
        let producer: FutureProducer =
            cdrs::kafka::producer_config(&config.kafka.brokers, &config.kafka.options).create()?;
        for (key, value) in &records {
            producer
                .send(
                    FutureRecord::to(&topic).key(key).payload(value),
                    std::time::Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("failed to write {key:?} to {topic:?}: {e}"))?;
        }
        retire(&producer, &topic, &fleet, &d).await?;
        anyhow::Ok((d, records))
    })?;
    drop(records);
    println!(
        "deployed {name:?} {} ({} bytes in {} chunk(s){}) to control topic {topic:?}; \
         every instance applies it as it reads it: cdrs plugin status --config FILE",
        &d.sha256[..12],
        d.size,
        d.chunks,
        d.label
            .as_ref()
            .map(|l| format!(", label {l:?}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `cdrs plugin promote`: the canary deployment of `name`, for every
/// instance.
fn promote(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (config, topic) = fleet_config(config)?;
    let d = runtime()?.block_on(async {
        let fleet = cdrs::control::read_fleet(&config, &topic).await?;
        let latest = fleet.deployments.get(name).ok_or_else(|| {
            anyhow::anyhow!("plugin {name:?} has no deployment on {topic:?}: nothing to promote")
        })?;
        if let Some(f) = &latest.failed {
            anyhow::bail!(
                "the latest deployment of {name:?} ({}) failed on canary instance {:?}: {}; \
                 deploy a fixed version",
                &latest.sha256[..12],
                f.instance,
                f.reason
            );
        }
        anyhow::ensure!(
            latest.canary_percent.is_some(),
            "the latest deployment of {name:?} is not a canary: every instance runs it already"
        );
        let mut all = latest.clone();
        all.canary_percent = None;
        all.by = deployer();
        all.at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        write_deployment(&config, &topic, &all, &fleet).await?;
        anyhow::Ok(all)
    })?;
    println!(
        "promoted {name:?} {} to every instance on {topic:?}",
        &d.sha256[..12]
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes deployment record `d` (its artifact is on the topic already) to
/// a topic that held `before`.
async fn write_deployment(
    config: &cdrs::config::Config,
    topic: &str,
    d: &cdrs::control::Deployment,
    before: &cdrs::control::FleetView,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer =
        cdrs::kafka::producer_config(&config.kafka.brokers, &config.kafka.options).create()?;
    let key = format!("deployment/{}", d.name);
    let value = serde_json::to_vec(d)?;
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&value),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("failed to write {key:?} to {topic:?}: {e}"))?;
    retire(&producer, topic, before, d).await
}

/// Tombstones for the chunks deployment `d` leaves unreferenced
/// ([`cdrs::control::retired_chunks`]), written after `d` itself.
async fn retire(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    before: &cdrs::control::FleetView,
    d: &cdrs::control::Deployment,
) -> anyhow::Result<()> {
    for key in cdrs::control::retired_chunks(before, d) {
        producer
            .send(
                rdkafka::producer::FutureRecord::<String, [u8]>::to(topic).key(&key),
                std::time::Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("failed to write a tombstone for {key:?}: {e}"))?;
    }
    Ok(())
}

/// `cdrs plugin rollback`: a deployment record for the previous version
/// (no artifact to write: it is on the topic already).
fn rollback(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (config, topic) = fleet_config(config)?;
    let d = runtime()?.block_on(async {
        let fleet = cdrs::control::read_fleet(&config, &topic).await?;
        // From what the fleet last ran (not a refused deployment) to what
        // that replaced.
        let ran = fleet.last_ran(name).ok_or_else(|| {
            anyhow::anyhow!("plugin {name:?} has no deployment on {topic:?}: nothing to roll back")
        })?;
        let mut back = ran.previous().ok_or_else(|| {
            anyhow::anyhow!(
                "the deployment of {name:?} the fleet runs replaced none (it was the first): \
                 deploy the version to go back to"
            )
        })?;
        back.at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        back.by = deployer();
        back.previous = Some(ran.as_previous());
        write_deployment(&config, &topic, &back, &fleet).await?;
        anyhow::Ok(back)
    })?;
    println!(
        "rolled {name:?} back to {}{} fleet-wide on {topic:?}",
        &d.sha256[..12],
        d.label
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `$USER@hostname`, who a deployment is by.
fn deployer() -> String {
    format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    )
}

/// `cdrs plugin status`: the control topic read to its end.
fn status(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (config, topic) = fleet_config(config)?;
    let view = runtime()?.block_on(cdrs::control::read_fleet(&config, &topic))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let short = |s: &str| s.chars().take(12).collect::<String>();
    println!("deployments on {topic:?}:");
    if view.deployments.is_empty() {
        println!("  (none)");
    }
    for d in view.deployments.values() {
        let canary = d
            .canary_percent
            .map(|p| format!("  canary {p}%"))
            .unwrap_or_default();
        let failed = d
            .failed
            .as_ref()
            .map(|f| format!("  FAILED on {}: {}", f.instance, f.reason))
            .unwrap_or_default();
        println!(
            "  {:<16} {:<8} {}  {:<20} by {} {}s ago{canary}{failed}",
            d.name,
            d.world,
            short(&d.sha256),
            d.label.clone().unwrap_or_default(),
            d.by,
            (now - d.at_ms) / 1000
        );
    }
    println!("instances:");
    if view.instances.is_empty() {
        println!("  (none has published a status)");
    }
    for i in view.instances.values() {
        println!("  {} (status {}s old)", i.instance, (now - i.at_ms) / 1000);
        for p in &i.plugins {
            let refused = p
                .refused
                .as_ref()
                .map(|r| format!("  refused {}: {}", short(&r.sha256), r.reason))
                .unwrap_or_default();
            println!(
                "    {:<16} {:<6} {}  {:<20} {:<24} {} faults{refused}",
                p.name,
                p.kind,
                short(&p.version),
                p.label.clone().unwrap_or_default(),
                p.source,
                p.faults
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cdrs plugin new`: a buildable project with fixtures in folder `name`.
fn new(lang: &str, world: &str, sdk: Option<PathBuf>, name: &Path) -> anyhow::Result<ExitCode> {
    use cdrs::plugin::scaffold::{create, Sdk};
    let sdk = sdk.map_or(Sdk::Vendored, Sdk::At);
    let files = create(lang, world, name, &sdk)?;
    println!("created {} ({lang} {world}):", name.display());
    for f in files.iter().filter(|f| !f.starts_with(name.join("sdk"))) {
        println!("  {}", f.display());
    }
    if matches!(sdk, Sdk::Vendored) {
        println!(
            "  {}/ (the {lang} SDK and the WIT contract)",
            name.join("sdk").display()
        );
    }
    println!("next: see {}/README.md", name.display());
    Ok(ExitCode::SUCCESS)
}

/// `cdrs plugin check`: the world, contract version and imports of `file`,
/// and whether this host can load it.
fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(&PluginRuntimeConfig::default())
        .context("failed to start the Wasm runtime")?;
    // Any world; nothing is cached for a plugin that was only checked.
    let compiled = runtime.compile("plugin", file, None, None)?;
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
        None => problems.push("it exports neither `filter` nor `route`: not a CDRS plugin".into()),
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

/// `cdrs plugin test --replay`: runs the router `file` on captured live
/// batches and compares its decisions with the captured ones: the lines
/// on stdout, the agreement and the shares per target on stderr.
fn replay(file: &Path, capture: &Path, config: Option<String>) -> anyhow::Result<ExitCode> {
    let batches = testbed::read_capture(capture)?;
    let config = plugin_config_arg(config)?;
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .context("failed to start the Wasm runtime")?;
    runtime.set_guest_stderr(true);
    let r = testbed::replay(&runtime, file, &batches, &config)?;
    for line in &r.lines {
        println!("{line}");
    }
    if let [l] = r.lines.as_slice() {
        if let Some(msg) = l.get("init").and(l.get("message")).and_then(|m| m.as_str()) {
            eprintln!("error: the plugin's init refused the config: {msg}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let pct = |n: usize| 100.0 * n as f64 / r.records.max(1) as f64;
    eprintln!(
        "replayed {} record(s) in {} batch(es) of {}: the same decision as the captured router for {:.1}%",
        r.records,
        batches.len(),
        capture.display(),
        pct(r.agreed)
    );
    eprintln!("| target | captured | {} |", file.display());
    eprintln!("|---|---|---|");
    for (id, (captured, replayed)) in &r.shares {
        eprintln!("| {id} | {:.1}% | {:.1}% |", pct(*captured), pct(*replayed));
    }
    if r.errors > 0 {
        eprintln!(
            "error: {} plugin call(s) failed (see the log above); the daemon would place \
             those records by its default policy",
            r.errors
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--config` of `plugin test`: inline JSON, or a JSON file (default `{}`).
fn plugin_config_arg(config: Option<String>) -> anyhow::Result<String> {
    Ok(match config {
        None => "{}".to_string(),
        Some(c) if c.trim_start().starts_with('{') => c,
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read the config file \"{path}\""))?,
    })
}

/// `cdrs plugin test`: runs `file` on fixture records through the daemon's
/// own runtime; with `expect`, exits 1 on any difference.
fn test(
    file: &Path,
    records: &Path,
    targets: Option<&Path>,
    config: Option<String>,
    expect: Option<&Path>,
    (batch, strict): (usize, bool),
) -> anyhow::Result<ExitCode> {
    let records = testbed::read_records(records)?;
    let targets = match targets {
        Some(t) => testbed::read_targets(t)?,
        None => Vec::new(),
    };
    let config = plugin_config_arg(config)?;
    let expect = expect.map(testbed::read_expect).transpose()?;
    let runtime = Runtime::new(&PluginRuntimeConfig {
        instances: 1,
        ..Default::default()
    })
    .context("failed to start the Wasm runtime")?;
    // A guest's stderr (tracebacks, panic messages) helps here; the
    // daemon never shows it.
    runtime.set_guest_stderr(true);
    let mut run = testbed::run(&runtime, file, &records, &targets, &config, batch)?;
    if strict && run.world == "router" {
        testbed::strict_key_order(&records, &mut run.lines);
    }
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
