//! Config reload and file watching.
//!
//! The file watcher only debounces and signals; [`ConfigReloader`] parses
//! the file, validates it, and applies the difference: plugins through the
//! [`PluginManager`], targets and capacity settings through the registry,
//! delivery settings through the dispatcher. An invalid file changes nothing;
//! a change to a restart-only key is refused by name. Plugin files that
//! change on disk are swapped by the plugin manager
//! ([`crate::plugin::slot`]).

use crate::config::Config;
use crate::dispatch::{Delivery, Dispatcher};
use crate::plugin::slot::PluginManager;
use crate::tls::{Clients, ServerTls};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Debounce for file events: editors and `cp` write a file in several steps.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the config file, the plugin files and the TLS files: a changed
/// config file is reloaded as a diff, a changed plugin file swaps that
/// plugin, a changed TLS file rotates what reads it. The watcher
/// only debounces and signals; loading happens on a blocking thread, off the
/// data path. Runs until `shutdown`.
///
/// # Errors
/// The file watcher (`notify`) cannot be created or cannot watch a file's
/// folder.
pub async fn watch_files(
    manager: Arc<PluginManager>,
    reloader: Arc<ConfigReloader>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if e.kind.is_create() || e.kind.is_modify() {
                for p in e.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })?;
    let canonical = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let config_file = reloader.path().map(canonical);
    let mut dirs: Vec<PathBuf> = Vec::new();
    loop {
        // The plugin files can change with each config reload.
        let watched: Vec<(PathBuf, String)> = manager
            .files()
            .iter()
            .map(|(p, n)| (canonical(p), n.clone()))
            .collect();
        let tls_files: Vec<PathBuf> = reloader.tls_files().iter().map(canonical).collect();
        for p in watched
            .iter()
            .map(|(p, _)| p)
            .chain(config_file.iter())
            .chain(tls_files.iter())
        {
            if let Some(d) = p.parent().map(PathBuf::from) {
                if !dirs.contains(&d) {
                    watcher.watch(&d, RecursiveMode::NonRecursive)?;
                    dirs.push(d);
                }
            }
        }
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        };
        let mut changed = vec![first];
        let deadline = tokio::time::Instant::now() + WATCH_DEBOUNCE;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            changed.push(p);
        }
        let changed: Vec<PathBuf> = changed.iter().map(canonical).collect();
        if changed.iter().any(|c| tls_files.contains(c)) {
            let (r, changed) = (reloader.clone(), changed.clone());
            let task = move || crate::panic::contained(|| r.rotate_tls(&changed));
            let _ = tokio::task::spawn_blocking(task).await;
        }
        if config_file.as_ref().is_some_and(|c| changed.contains(c)) {
            let r = reloader.clone();
            let _ =
                tokio::task::spawn_blocking(move || crate::panic::contained(|| r.reload())).await;
            continue;
        }
        for (path, name) in &watched {
            if changed.contains(path) {
                let (m, n) = (manager.clone(), name.clone());
                let task = move || crate::panic::contained(|| m.reload_file(&n));
                let r = tokio::task::spawn_blocking(task).await;
                if let Ok(Ok(version)) = r {
                    tracing::info!(plugin = %name, version = &version[..12], "plugin file reloaded");
                }
            }
        }
    }
}

/// The outcome of a config reload, as `GET /v1/config` and `POST /v1/reload`
/// show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: i64,
    /// Whether the new config is now active.
    pub ok: bool,
    /// What changed live.
    pub changed: Vec<String>,
    /// Why nothing changed (every problem found).
    pub errors: Vec<String>,
}

/// Keys that only a restart can change, with a changed value between two
/// configs.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check("kafka.brokers", old.kafka.brokers != new.kafka.brokers);
    check("kafka.group_id", old.kafka.group_id != new.kafka.group_id);
    check("kafka.topics", old.kafka.topics != new.kafka.topics);
    check(
        "kafka.dead_letter_topic",
        old.kafka.dead_letter_topic != new.kafka.dead_letter_topic,
    );
    check("kafka.options", old.kafka.options != new.kafka.options);
    // The admin server, its tokens and limits are set up once at start.
    check("admin", old.admin != new.admin);
    check("pipeline", old.pipeline != new.pipeline);
    check("plugins", old.plugins != new.plugins);
    check("capacity.topic", old.capacity.topic != new.capacity.topic);
    check("control", old.control != new.control);
    check("log.format", old.log.format != new.log.format);
    check("telemetry", old.telemetry != new.telemetry);
    // A target's queue and lane tasks are built on its first record and
    // kept: these three would reach only targets not used yet.
    let (d, e) = (&old.delivery, &new.delivery);
    check("delivery.lanes", d.lanes != e.lanes);
    check("delivery.kafka_lanes", d.kafka_lanes != e.kafka_lanes);
    check(
        "delivery.queue_capacity",
        d.queue_capacity != e.queue_capacity,
    );
    out
}

/// Applies config file changes to a running CDRS as a diff: plugins and
/// their params, the filter chain, targets, `[capacity]` and `[delivery]`
/// (but its lanes and queue capacity) change live; a change to a restart-only key (see
/// [`restart_only_changes`]) or an invalid file changes nothing and is
/// reported by name.
pub struct ConfigReloader {
    path: Option<PathBuf>,
    active: Mutex<Config>,
    last: Mutex<Option<ReloadReport>>,
    plugins: Arc<PluginManager>,
    registry: Arc<crate::capacity::Registry>,
    dispatch: Arc<Dispatcher>,
    /// The HTTP clients of deliveries and health checks (TLS per target).
    clients: Arc<ArcSwap<Clients>>,
    /// The admin API's TLS, when `[admin.tls]` is set.
    admin_tls: Option<Arc<ServerTls>>,
}

impl ConfigReloader {
    pub fn new(
        path: Option<PathBuf>,
        active: Config,
        plugins: Arc<PluginManager>,
        registry: Arc<crate::capacity::Registry>,
        dispatch: Arc<Dispatcher>,
        clients: Arc<ArcSwap<Clients>>,
        admin_tls: Option<Arc<ServerTls>>,
    ) -> Self {
        ConfigReloader {
            path,
            active: Mutex::new(active),
            last: Mutex::new(None),
            plugins,
            registry,
            dispatch,
            clients,
            admin_tls,
        }
    }

    /// Every TLS file in use (clients and the admin API), to watch.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let mut files = self.clients.load().files();
        if let Some(a) = &self.admin_tls {
            files.extend(a.files());
        }
        files
    }

    /// Warns about TLS certificates that expire within
    /// [`crate::tls::EXPIRY_WARNING`].
    pub fn warn_expiring_tls(&self) {
        self.clients.load().warn_expiring();
        if let Some(a) = &self.admin_tls {
            a.warn_expiring();
        }
    }

    /// Rotates what reads one of `changed` (canonical paths): clients and
    /// the admin acceptor are rebuilt from their files; a file that does
    /// not make a valid config is refused (logged) and the old one stays.
    pub fn rotate_tls(&self, changed: &[PathBuf]) {
        self.clients.load().rotate(changed);
        if let Some(a) = &self.admin_tls {
            a.rotate(changed);
        }
    }

    /// The config file being watched, if CDRS was started from one.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// The active config.
    pub fn active(&self) -> Config {
        self.active.lock().expect("config lock").clone()
    }

    /// The last reload's outcome, if any.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().expect("report lock").clone()
    }

    /// Re-reads the config file and applies the difference. Blocking
    /// (may compile plugins).
    pub fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self
            .plugins
            .loading_config
            .lock()
            .expect("config reload lock");
        let report = self.try_reload();
        let events = self.plugins.events();
        if report.ok {
            tracing::info!(changed = ?report.changed, "config reloaded");
            events.publish(
                "config.reloaded",
                serde_json::json!({"changed": report.changed}),
            );
        } else {
            tracing::error!(errors = ?report.errors, "config reload rejected; nothing changed");
            events.publish(
                "config.refused",
                serde_json::json!({"errors": report.errors}),
            );
        }
        *self.last.lock().expect("report lock") = Some(report.clone());
        report
    }

    fn try_reload(&self) -> ReloadReport {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let fail = |errors: Vec<String>| ReloadReport {
            at_ms,
            ok: false,
            changed: vec![],
            errors,
        };
        let Some(path) = &self.path else {
            return fail(vec![
                "CDRS was not started from a config file (cdrs run --config FILE)".into(),
            ]);
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => return fail(e.problems.iter().map(|p| p.to_string()).collect()),
        };
        let old = self.active();
        let restart = restart_only_changes(&old, &new);
        if !restart.is_empty() {
            return fail(
                restart
                    .into_iter()
                    .map(|k| format!("{k}: changed, but it can only change with a restart"))
                    .collect(),
            );
        }
        // TLS files are read and checked before anything changes: a bad
        // one rejects the whole reload.
        let clients = if old.delivery != new.delivery || old.targets != new.targets {
            match self.clients.load().rebuild(&new.delivery, &new.targets) {
                Ok(c) => Some(c),
                Err(e) => return fail(vec![e.to_string()]),
            }
        } else {
            None
        };
        let mut changed = match self.plugins.apply(&new) {
            Ok(c) => c,
            Err(errs) => return fail(errs.iter().map(|e| e.to_string()).collect()),
        };
        if let Some(c) = clients {
            self.clients.store(Arc::new(c));
        }
        if old.delivery != new.delivery {
            let d = Delivery::new(&new.delivery, self.clients.clone());
            self.dispatch.delivery.store(Arc::new(d));
            changed.push("delivery".into());
        }
        if old.targets != new.targets {
            self.registry.set_targets(&new.targets);
            let streams: Vec<&str> = new
                .targets
                .iter()
                .filter_map(|t| crate::config::target_stream(&t.url))
                .collect();
            self.dispatch.streams.retain(&streams);
            let ids: Vec<&str> = new.targets.iter().map(|t| t.id.as_str()).collect();
            changed.push(format!("targets: now {ids:?}"));
        }
        if old.log != new.log {
            match crate::logging::set_level(&new.log.level) {
                Ok(()) => changed.push(format!("log.level: {}", new.log.level)),
                Err(e) => changed.push(format!("log.level: not applied: {e}")),
            }
        }
        if old.capacity != new.capacity {
            self.registry.set_config(new.capacity.clone());
            changed.push("capacity".into());
        }
        *self.active.lock().expect("config lock") = new;
        ReloadReport {
            at_ms,
            ok: true,
            changed,
            errors: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::restart_only_changes;
    use crate::config::Config;

    const BASE: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        group_id = "g"
        topics = ["in"]
        [[targets]]
        id = "a"
        url = "http://127.0.0.1:1/records"
        capacity = 10
        [router]
        name = "r"
        path = "r.wasm"
    "#;

    /// Parsed, not validated (the plugin file does not exist).
    fn config(extra: &str) -> Config {
        toml::from_str(&format!("{BASE}\n{extra}")).expect("test config")
    }

    #[test]
    fn lanes_and_queue_capacity_need_a_restart_other_delivery_keys_do_not() {
        let old = config("");
        for (extra, key) in [
            ("[delivery]\nlanes = 2", "delivery.lanes"),
            ("[delivery]\nkafka_lanes = 2", "delivery.kafka_lanes"),
            ("[delivery]\nqueue_capacity = 77", "delivery.queue_capacity"),
        ] {
            assert_eq!(restart_only_changes(&old, &config(extra)), vec![key]);
        }
        for live in [
            "[delivery]\ntimeout_ms = 1234",
            "[delivery]\nmax_attempts = 2",
        ] {
            assert!(
                restart_only_changes(&old, &config(live)).is_empty(),
                "{live}"
            );
        }
    }
}
