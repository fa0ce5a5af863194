//! Hot swap of plugins while records flow.
//!
//! Each configured plugin lives in a [`Slot`]: an `ArcSwap` of the current
//! version plus the previous one. A partition worker loads the current
//! version once per batch, so a batch runs entirely on one version and a swap
//! never waits for, or interrupts, a batch in flight.
//!
//! New versions come from the plugin file changing on disk (watched with
//! `notify`, debounced), an upload to `PUT /v1/plugins/{name}`, or a rollback.
//! Each is compiled (or loaded from the compiled cache), linked and `init`-ed
//! off the hot path by [`PluginManager`]; only a version that got that far is
//! swapped in. A version that fails keeps the old one serving and the error is
//! logged, counted (`cdrs_plugin_errors_total`) and shown by `GET /v1/plugins`.
//! If a freshly swapped version has `plugins.rollback_faults` record faults
//! (trap, deadline, memory) within `plugins.rollback_window_ms`, the slot rolls
//! back to the previous version by itself.

use crate::config::{Config, PluginConfig, PluginRuntimeConfig};
use crate::metrics::Metrics;
use crate::plugin::filter::FilterPlugin;
use crate::plugin::router::RouterPlugin;
use crate::plugin::{Compiled, PluginError, PluginMeta, Runtime};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A plugin version that can sit in a slot.
pub trait Swappable: Send + Sync + 'static {
    fn meta(&self) -> &PluginMeta;
}

impl Swappable for FilterPlugin {
    fn meta(&self) -> &PluginMeta {
        &self.meta
    }
}

impl Swappable for RouterPlugin {
    fn meta(&self) -> &PluginMeta {
        &self.meta
    }
}

/// Auto-rollback policy (`plugins.rollback_faults`, `rollback_window_ms`).
#[derive(Debug, Clone, Copy)]
pub struct RollbackPolicy {
    pub faults: u64,
    pub window: Duration,
}

struct SlotState<P> {
    previous: Option<Arc<P>>,
    swapped_at: Instant,
    source: String,
    last_error: Option<String>,
    last_event: Option<String>,
}

/// One plugin position (a filter of the chain, or the router).
pub struct Slot<P> {
    current: ArcSwap<P>,
    /// Set after a swap until the rollback window passes or a rollback ran.
    watching: AtomicBool,
    policy: RollbackPolicy,
    state: Mutex<SlotState<P>>,
}

impl<P: Swappable> Slot<P> {
    pub fn new(plugin: P, source: &str, policy: RollbackPolicy) -> Slot<P> {
        Slot {
            current: ArcSwap::from_pointee(plugin),
            watching: AtomicBool::new(false),
            policy,
            state: Mutex::new(SlotState {
                previous: None,
                swapped_at: Instant::now(),
                source: source.into(),
                last_error: None,
                last_event: None,
            }),
        }
    }

    /// The version to use for the next batch (one atomic load).
    pub fn current(&self) -> Arc<P> {
        self.current.load_full()
    }

    /// Swaps `plugin` in; the replaced version becomes the rollback target.
    /// Batches already running keep the version they loaded.
    pub fn swap(&self, plugin: P, source: &str) {
        let mut st = self.state.lock().expect("slot lock");
        let new = Arc::new(plugin);
        let old = self.current.swap(new.clone());
        tracing::info!(plugin = %new.meta().name, from = old.meta().short(), to = new.meta().short(),
            source, "plugin swapped");
        st.last_event = Some(format!(
            "swapped {} -> {} ({source})",
            old.meta().short(),
            new.meta().short()
        ));
        st.previous = Some(old);
        st.swapped_at = Instant::now();
        st.source = source.into();
        st.last_error = None;
        self.watching.store(true, Ordering::Release);
    }

    /// Puts the previous version back. Errors if there is none.
    pub fn rollback(&self, why: &str) -> Result<String, String> {
        let mut st = self.state.lock().expect("slot lock");
        let prev = st
            .previous
            .take()
            .ok_or_else(|| "no previous version to roll back to".to_string())?;
        let version = prev.meta().hash.clone();
        let bad = self.current.swap(prev);
        tracing::warn!(plugin = %bad.meta().name, from = bad.meta().short(), to = &version[..12], reason = why,
            "plugin rolled back");
        st.last_event = Some(format!(
            "rolled back {} -> {}: {why}",
            bad.meta().short(),
            &version[..12]
        ));
        st.previous = Some(bad);
        st.swapped_at = Instant::now();
        st.source = "rollback".into();
        self.watching.store(false, Ordering::Release);
        Ok(version)
    }

    /// Records a failed attempt to load a new version (the old one stays).
    pub fn failed(&self, error: &PluginError) {
        self.state.lock().expect("slot lock").last_error = Some(error.to_string());
    }

    /// Called after each batch: rolls back a freshly swapped version that
    /// faulted too often. Costs one atomic load when nothing was swapped.
    pub fn check_health(&self) {
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        let (elapsed, has_previous) = {
            let st = self.state.lock().expect("slot lock");
            (st.swapped_at.elapsed(), st.previous.is_some())
        };
        if elapsed > self.policy.window || !has_previous {
            self.watching.store(false, Ordering::Release);
            return;
        }
        let faults = self.current().meta().faults.load(Ordering::Relaxed);
        if faults >= self.policy.faults {
            let why = format!(
                "{faults} record faults within {} ms of the swap (limit {})",
                elapsed.as_millis(),
                self.policy.faults
            );
            let _ = self.rollback(&why);
        }
    }

    /// What `GET /v1/plugins` shows.
    pub fn status(&self, kind: &'static str) -> PluginStatus {
        let cur = self.current();
        let st = self.state.lock().expect("slot lock");
        let m = cur.meta();
        PluginStatus {
            name: m.name.to_string(),
            kind,
            version: m.hash.clone(),
            loaded_at_ms: m.loaded_at_ms,
            load_ms: m.load_ms,
            from_cache: m.cached,
            source: st.source.clone(),
            calls: m.calls.load(Ordering::Relaxed),
            faults: m.faults.load(Ordering::Relaxed),
            previous_version: st.previous.as_ref().map(|p| p.meta().hash.clone()),
            last_error: st.last_error.clone(),
            last_event: st.last_event.clone(),
        }
    }
}

/// One plugin as `GET /v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub kind: &'static str,
    /// sha256 of the running component.
    pub version: String,
    pub loaded_at_ms: i64,
    /// Compile or cache-load time of this version, ms.
    pub load_ms: f64,
    pub from_cache: bool,
    /// How this version arrived: config | file | upload | rollback.
    pub source: String,
    pub calls: u64,
    pub faults: u64,
    pub previous_version: Option<String>,
    /// The last rejected new version's error, if any since the last swap.
    pub last_error: Option<String>,
    pub last_event: Option<String>,
}

/// Why a reload request did nothing or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no plugin named {0:?}; configured plugins are named in [[filters]] and [router]")]
    UnknownPlugin(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Rollback(String),
}

/// All plugin slots of a running CDRS, and the operations that change them.
pub struct PluginManager {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    pub filters: Vec<(PluginConfig, Arc<Slot<FilterPlugin>>)>,
    pub router: (PluginConfig, Arc<Slot<RouterPlugin>>),
    /// Serialises loads so two reloads of one plugin never race.
    loading: Mutex<()>,
}

enum Target<'a> {
    Filter(&'a PluginConfig, &'a Slot<FilterPlugin>),
    Router(&'a PluginConfig, &'a Slot<RouterPlugin>),
}

impl PluginManager {
    /// Loads every plugin of `config` (blocking: compiles). Errors: every
    /// plugin that failed.
    pub fn load(
        runtime: Arc<Runtime>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Vec<PluginError>> {
        let policy = policy(&config.plugins);
        let mut errors = Vec::new();
        let mut filters = Vec::new();
        for f in &config.filters {
            match FilterPlugin::load(&runtime, f, metrics.clone()) {
                Ok(p) => filters.push((f.clone(), Arc::new(Slot::new(p, "config", policy)))),
                Err(e) => errors.push(e),
            }
        }
        let router = RouterPlugin::load(&runtime, &config.router, metrics.clone());
        match router {
            Ok(r) if errors.is_empty() => Ok(PluginManager {
                runtime,
                metrics,
                filters,
                router: (
                    config.router.clone(),
                    Arc::new(Slot::new(r, "config", policy)),
                ),
                loading: Mutex::new(()),
            }),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.push(e);
                Err(errors)
            }
        }
    }

    fn find(&self, name: &str) -> Result<Target<'_>, ReloadError> {
        if let Some((c, s)) = self.filters.iter().find(|(c, _)| c.name == name) {
            return Ok(Target::Filter(c, s));
        }
        if self.router.0.name == name {
            return Ok(Target::Router(&self.router.0, &self.router.1));
        }
        Err(ReloadError::UnknownPlugin(name.into()))
    }

    /// Every plugin's status, chain order then the router.
    pub fn status(&self) -> Vec<PluginStatus> {
        let mut out: Vec<PluginStatus> = self
            .filters
            .iter()
            .map(|(_, s)| s.status("filter"))
            .collect();
        out.push(self.router.1.status("router"));
        out
    }

    /// Plugin files to watch, with the plugin names that use them.
    pub fn files(&self) -> Vec<(PathBuf, String)> {
        self.filters
            .iter()
            .map(|(c, _)| c)
            .chain(std::iter::once(&self.router.0))
            .map(|c| (c.path.clone(), c.name.clone()))
            .collect()
    }

    /// Loads plugin `name` from its configured file and swaps it in, unless
    /// the file holds the version already running. Blocking (compiles).
    /// Returns the running version.
    pub fn reload_file(&self, name: &str) -> Result<String, ReloadError> {
        let path = match self.find(name)? {
            Target::Filter(c, _) | Target::Router(c, _) => c.path.clone(),
        };
        let bytes = std::fs::read(&path).map_err(|e| PluginError::Read {
            name: name.into(),
            path: path.display().to_string(),
            msg: e.to_string(),
        });
        let bytes = self.note_failure(name, bytes)?;
        self.install(name, &bytes, &path.display().to_string(), "file")
    }

    /// Installs uploaded component bytes as plugin `name`. Blocking.
    pub fn upload(&self, name: &str, bytes: &[u8]) -> Result<String, ReloadError> {
        self.install(name, bytes, "upload", "upload")
    }

    /// Swaps the previous version of `name` back in.
    pub fn rollback(&self, name: &str) -> Result<String, ReloadError> {
        let r = match self.find(name)? {
            Target::Filter(_, s) => s.rollback("requested by an operator"),
            Target::Router(_, s) => s.rollback("requested by an operator"),
        };
        r.map_err(ReloadError::Rollback)
    }

    fn note_failure<T>(&self, name: &str, r: Result<T, PluginError>) -> Result<T, ReloadError> {
        r.map_err(|e| {
            self.metrics.plugin_errors.with_label_values(&[name, e.kind()]).inc();
            tracing::error!(plugin = name, error = %e, "new plugin version rejected; the running one stays");
            match self.find(name) {
                Ok(Target::Filter(_, s)) => s.failed(&e),
                Ok(Target::Router(_, s)) => s.failed(&e),
                Err(_) => {}
            }
            ReloadError::Plugin(e)
        })
    }

    fn install(
        &self,
        name: &str,
        bytes: &[u8],
        origin: &str,
        source: &str,
    ) -> Result<String, ReloadError> {
        let _one_at_a_time = self.loading.lock().expect("loading lock");
        let target = self.find(name)?;
        let (config, running) = match &target {
            Target::Filter(c, s) => (*c, s.current().meta.hash.clone()),
            Target::Router(c, s) => (*c, s.current().meta.hash.clone()),
        };
        let compiled: Result<Compiled, PluginError> =
            self.runtime
                .compile_bytes(name, bytes, origin, config.sha256.as_deref());
        let compiled = self.note_failure(name, compiled)?;
        if compiled.hash == running {
            tracing::debug!(plugin = name, "plugin file unchanged");
            return Ok(running);
        }
        let version = compiled.hash.clone();
        let (rt, m, json) = (&self.runtime, self.metrics.clone(), config.config_json());
        match target {
            Target::Filter(_, slot) => {
                let p = self.note_failure(
                    name,
                    FilterPlugin::from_compiled(rt, name, compiled, json, m),
                )?;
                slot.swap(p, source);
            }
            Target::Router(_, slot) => {
                let p = self.note_failure(
                    name,
                    RouterPlugin::from_compiled(rt, name, compiled, json, m),
                )?;
                slot.swap(p, source);
            }
        }
        Ok(version)
    }
}

fn policy(c: &PluginRuntimeConfig) -> RollbackPolicy {
    RollbackPolicy {
        faults: c.rollback_faults,
        window: Duration::from_millis(c.rollback_window_ms),
    }
}

/// Debounce for file events: editors and `cp` write a file in several steps.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the plugin files and reloads a plugin when its file changes.
/// The watcher only debounces and signals; loading happens on a blocking
/// thread, off the data path. Runs until `shutdown`.
pub async fn watch_plugins(
    manager: Arc<PluginManager>,
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
    let files = manager.files();
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|(p, _)| p.parent().map(PathBuf::from))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    let canonical = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let watched: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, n)| (canonical(p), n.clone()))
        .collect();
    tracing::info!(files = watched.len(), "watching plugin files");
    loop {
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
        for (path, name) in &watched {
            if changed.contains(path) {
                let (m, n) = (manager.clone(), name.clone());
                let r = tokio::task::spawn_blocking(move || m.reload_file(&n)).await;
                if let Ok(Ok(version)) = r {
                    tracing::info!(plugin = %name, version = &version[..12], "plugin file reloaded");
                }
            }
        }
    }
}
