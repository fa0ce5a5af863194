//! `cdrs run` and `cdrs check`.

use crate::runtime;
use anyhow::Context;
use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::metrics::Metrics;
use cdrs::plugin::slot::PluginManager;
use cdrs::plugin::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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

/// `cdrs run`: the daemon until SIGTERM or SIGINT; SIGHUP reloads the config.
pub(crate) fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    // Named here rather than as librdkafka's bare error from a client.
    let refused = cdrs::kafka::check_options(&config);
    if !refused.is_empty() {
        let lines: Vec<String> = refused.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!(
            "{} problem(s) in {path:?}:\n{}",
            refused.len(),
            lines.join("\n")
        );
    }
    cdrs::logging::init(&config.log.level, config.log.format);
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

/// `cdrs check`: every problem of a config file and its plugins, at once.
pub(crate) fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
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
        problems.extend(
            cdrs::kafka::check_options(config)
                .iter()
                .map(|p| p.to_string()),
        );
        let (tls_problems, notes) = tls_checks(config);
        problems.extend(tls_problems);
        for n in notes {
            println!("note: {n}");
        }
        for n in deployed_versions(config) {
            println!("note: {n}");
        }
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

/// The TLS files of `config`, checked as `cdrs run` would use them
/// (exist, parse, key matches certificate, not expired); returns
/// (problems, notes), each naming its block.
fn tls_checks(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let mut add = |block: &str, (p, n): (Vec<String>, Vec<String>)| {
        problems.extend(p.into_iter().map(|p| format!("{block}: {p}")));
        notes.extend(n.into_iter().map(|n| format!("{block}: {n}")));
    };
    add(
        "delivery.tls",
        cdrs::tls::check_client(&config.delivery.tls),
    );
    for (i, t) in config.targets.iter().enumerate() {
        if let Some(tls) = &t.tls {
            let merged = config.delivery.tls.overridden_by(tls);
            add(
                &format!("targets[{i}].tls"),
                cdrs::tls::check_client(&merged),
            );
        }
    }
    if let Some(tls) = &config.admin.tls {
        add("admin.tls", cdrs::tls::check_server(tls));
    }
    (problems, notes)
}

/// With the control topic on: which deployed version a start would run for
/// each plugin instead of its `path` (the topic read to its end, at most
/// 5 s; nothing when the topic does not exist yet).
fn deployed_versions(config: &Config) -> Vec<String> {
    let Some(topic) = config.control.topic() else {
        return Vec::new();
    };
    // On a thread of its own: librdkafka's metadata calls block, and a
    // broker that cannot be reached must not hold `check` up for long.
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, t) = (config.clone(), topic.to_string());
    std::thread::spawn(move || {
        let read = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cdrs::control::read_fleet(&c, &t)));
        let _ = tx.send(read);
    });
    let read = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from the brokers within 5 s")));
    let fleet = match read {
        Ok(f) => f,
        Err(e) if e.to_string().contains("has no partitions") => return Vec::new(),
        Err(e) => {
            return vec![format!(
                "control topic {topic:?} not read ({e}); a start reads it before consuming \
                 and fails if it cannot (control.enabled = false turns fleet deployments off)"
            )]
        }
    };
    let names = config
        .filters
        .iter()
        .map(|f| f.name.as_str())
        .chain(std::iter::once(config.router.name.as_str()));
    names
        .filter_map(|n| {
            let d = fleet.last_ran(n)?;
            Some(format!(
                "plugin {n:?}: a start would run deployment {}{} from {topic:?}, not its path",
                &d.sha256[..12.min(d.sha256.len())],
                d.label.map(|l| format!(" ({l})")).unwrap_or_default()
            ))
        })
        .collect()
}
