//! Hot swap of plugins while records flow: slots and the plugin manager.
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

use super::filter::FilterPlugin;
use super::router::RouterPlugin;
use super::shadow::Shadow;
use super::{Compiled, PluginError, PluginMeta, Runtime};
use crate::config::{Config, PluginConfig, PluginRuntimeConfig};
use crate::events::Events;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
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
    events: Events,
}

impl<P: Swappable> Slot<P> {
    pub fn new(plugin: P, source: &str, policy: RollbackPolicy, events: Events) -> Slot<P> {
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
            events,
        }
    }

    /// The version to use for the next batch (one atomic load).
    pub fn current(&self) -> Arc<P> {
        self.current.load_full()
    }

    /// Swaps `plugin` in; the replaced version becomes the rollback target.
    /// Batches already running keep the version they loaded.
    pub fn swap(&self, plugin: P, source: &str) {
        // Dropping a version frees its instances (unmapping memory); do it
        // after the lock is released.
        let _released = self.swap_locked(plugin, source);
    }

    fn swap_locked(&self, plugin: P, source: &str) -> Option<Arc<P>> {
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
        self.events.publish(
            "plugin.swapped",
            json!({"plugin": &*new.meta().name, "from": old.meta().hash, "to": new.meta().hash,
                   "source": source}),
        );
        let released = st.previous.replace(old);
        st.swapped_at = Instant::now();
        st.source = source.into();
        st.last_error = None;
        self.watching.store(true, Ordering::Release);
        released
    }

    /// Puts the previous version back. Errors if there is none.
    ///
    /// # Errors
    /// [`ReloadError`]: no plugin `name`, or it has no previous version.
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
        self.events.publish(
            "plugin.rolled_back",
            json!({"plugin": &*bad.meta().name, "from": bad.meta().hash, "to": version,
                   "reason": why}),
        );
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
            traps: m.traps.load(Ordering::Relaxed),
            deadline_misses: m.deadline_misses.load(Ordering::Relaxed),
            memory_faults: m.memory_faults.load(Ordering::Relaxed),
            call_p50_us: m.call_percentiles_us().0,
            call_p99_us: m.call_percentiles_us().1,
            previous_version: st.previous.as_ref().map(|p| p.meta().hash.clone()),
            last_error: st.last_error.clone(),
            last_event: st.last_event.clone(),
            recent_logs: Vec::new(),
            shadow: None,
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
    pub traps: u64,
    pub deadline_misses: u64,
    pub memory_faults: u64,
    /// Batch call duration percentiles of this version, µs.
    pub call_p50_us: u64,
    pub call_p99_us: u64,
    pub previous_version: Option<String>,
    /// The last rejected new version's error, if any since the last swap.
    pub last_error: Option<String>,
    pub last_event: Option<String>,
    /// The last lines it logged through `host.log`, oldest first (at most
    /// [`super::LOG_LINES_KEPT`]).
    pub recent_logs: Vec<super::LogLine>,
    /// The comparison with the live router (`kind` "shadow" only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::shadow::ShadowStatus>,
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
    /// A deployment this plugin cannot take (another world).
    #[error("{0}")]
    Refused(String),
}

/// A filter of a reloaded chain: its config, the slot it keeps (if it
/// existed), and the newly loaded version (if it changed).
type NextFilter = (
    PluginConfig,
    Option<Arc<Slot<FilterPlugin>>>,
    Option<FilterPlugin>,
);

/// All plugin slots of a running CDRS, and the operations that change them.
pub struct PluginManager {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    policy: RollbackPolicy,
    /// Config of each filter slot, chain order.
    filters: Mutex<Vec<(PluginConfig, Arc<Slot<FilterPlugin>>)>>,
    /// The chain the pipeline reads, one atomic load per batch.
    chain: ArcSwap<Vec<Arc<Slot<FilterPlugin>>>>,
    router_config: Mutex<PluginConfig>,
    pub router: Arc<Slot<RouterPlugin>>,
    /// `[router.shadow]`, compared with the router, never used.
    pub shadow: Arc<Shadow>,
    /// Serialises loads so two reloads of one plugin never race.
    loading: Mutex<()>,
    /// Serialises config reloads.
    pub(crate) loading_config: Mutex<()>,
}

#[derive(Clone)]
enum Target {
    Filter(PluginConfig, Arc<Slot<FilterPlugin>>),
    Router(PluginConfig, Arc<Slot<RouterPlugin>>),
}

impl Target {
    fn config(&self) -> &PluginConfig {
        match self {
            Target::Filter(c, _) | Target::Router(c, _) => c,
        }
    }
    fn running(&self) -> String {
        match self {
            Target::Filter(_, s) => s.current().meta.hash.clone(),
            Target::Router(_, s) => s.current().meta.hash.clone(),
        }
    }
    fn failed(&self, e: &PluginError) {
        match self {
            Target::Filter(_, s) => s.failed(e),
            Target::Router(_, s) => s.failed(e),
        }
    }
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
                Ok(p) => filters.push((
                    f.clone(),
                    Arc::new(Slot::new(p, "config", policy, metrics.events.clone())),
                )),
                Err(e) => errors.push(e),
            }
        }
        let router = RouterPlugin::load(&runtime, &config.router, metrics.clone());
        let shadow = Shadow::new(metrics.clone());
        if let Some(cfg) = &config.router.shadow {
            match Shadow::load(&runtime, cfg, metrics.clone()) {
                Ok(r) => shadow.set(Some(r)),
                Err(e) => errors.push(e),
            }
        }
        let events = metrics.events.clone();
        match router {
            Ok(r) if errors.is_empty() => Ok(PluginManager {
                shadow,
                runtime,
                metrics,
                policy,
                chain: ArcSwap::from_pointee(filters.iter().map(|(_, s)| s.clone()).collect()),
                filters: Mutex::new(filters),
                router_config: Mutex::new(config.router.clone()),
                router: Arc::new(Slot::new(r, "config", policy, events)),
                loading: Mutex::new(()),
                loading_config: Mutex::new(()),
            }),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.push(e);
                Err(errors)
            }
        }
    }

    /// The current filter chain (one atomic load).
    pub fn chain(&self) -> Arc<Vec<Arc<Slot<FilterPlugin>>>> {
        self.chain.load_full()
    }

    fn find(&self, name: &str) -> Result<Target, ReloadError> {
        let filters = self.filters.lock().expect("filters lock");
        if let Some((c, s)) = filters.iter().find(|(c, _)| c.name == name) {
            return Ok(Target::Filter(c.clone(), s.clone()));
        }
        let rc = self.router_config.lock().expect("router lock");
        if rc.name == name {
            return Ok(Target::Router(rc.clone(), self.router.clone()));
        }
        Err(ReloadError::UnknownPlugin(name.into()))
    }

    /// Whether a plugin `name` is configured (a filter or the router).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Every plugin's status, chain order then the router.
    pub fn status(&self) -> Vec<PluginStatus> {
        let mut out: Vec<PluginStatus> = self.chain().iter().map(|s| s.status("filter")).collect();
        out.push(self.router.status("router"));
        out.extend(self.shadow.running().map(|r| shadow_status(&r)));
        for p in &mut out {
            p.recent_logs = self.runtime.logs.recent(&p.name);
        }
        out
    }

    /// Plugin files to watch, with the plugin names that use them.
    pub fn files(&self) -> Vec<(PathBuf, String)> {
        let mut out: Vec<(PathBuf, String)> = self
            .filters
            .lock()
            .expect("filters lock")
            .iter()
            .map(|(c, _)| (c.path.clone(), c.name.clone()))
            .collect();
        let rc = self.router_config.lock().expect("router lock");
        out.push((rc.path.clone(), rc.name.clone()));
        out
    }

    /// Loads plugin `name` from its configured file and swaps it in, unless
    /// the file holds the version already running. Blocking (compiles).
    /// Returns the running version.
    ///
    /// # Errors
    /// [`ReloadError`]: no plugin `name`, or the new version cannot be read,
    /// compiled, linked or `init`-ed (the old one keeps serving).
    pub fn reload_file(&self, name: &str) -> Result<String, ReloadError> {
        let target = self.find(name)?;
        let path = target.config().path.clone();
        let bytes = std::fs::read(&path).map_err(|e| PluginError::Read {
            name: name.into(),
            path: path.display().to_string(),
            msg: e.to_string(),
        });
        let bytes = self.note_failure(&target, "unread", bytes)?;
        let origin = path.display().to_string();
        self.install(&target, &bytes, Install::new(&origin, "file"))
    }

    /// Installs uploaded component bytes as plugin `name`. Blocking.
    ///
    /// # Errors
    /// [`ReloadError`]: no plugin `name`, or the bytes cannot be compiled,
    /// linked or `init`-ed (the old version keeps serving).
    pub fn upload(&self, name: &str, bytes: &[u8]) -> Result<String, ReloadError> {
        let target = self.find(name)?;
        self.install(&target, bytes, Install::new("upload", "upload"))
    }

    /// Installs a fleet deployment as plugin `name`: `bytes` must be a
    /// `world` component with sha256 `sha256`; `init`, when given, is its
    /// `init` config instead of the config file's. Blocking (compiles).
    /// Returns the running version.
    ///
    /// # Errors
    /// [`ReloadError`]: no plugin `name`, it is not a `world`, or the bytes
    /// do not match `sha256` or cannot be compiled, linked or `init`-ed (the
    /// old version keeps serving).
    pub fn deploy(
        &self,
        name: &str,
        world: &str,
        bytes: &[u8],
        sha256: &str,
        init: Option<&str>,
        source: &str,
    ) -> Result<String, ReloadError> {
        let target = self.find(name)?;
        let kind = match target {
            Target::Filter(..) => "filter",
            Target::Router(..) => "router",
        };
        if kind != world {
            return Err(ReloadError::Refused(format!(
                "plugin {name:?} is a {kind} here; the deployment is a {world}"
            )));
        }
        let how = Install {
            sha256: Some(sha256),
            init,
            force: init.is_some(),
            ..Install::new("deployment", source)
        };
        self.install(&target, bytes, how)
    }

    /// The pipeline's event stream (swaps, refusals, rollbacks go there).
    pub fn events(&self) -> &Events {
        &self.metrics.events
    }

    /// Makes the running shadow router the live router `name`: its file
    /// (which must still hold the version that ran in the shadow) and its
    /// `init` config go through the normal swap, and the shadow stops.
    /// Blocking (compiles). Returns the new live version.
    ///
    /// # Errors
    /// [`ReloadError`]: `name` is not the router, no shadow runs, or its
    /// file cannot be read, changed since, or does not load (the live
    /// router keeps serving, the shadow keeps running).
    pub fn promote_shadow(&self, name: &str) -> Result<String, ReloadError> {
        let target = self.find(name)?;
        if !matches!(target, Target::Router(..)) {
            return Err(ReloadError::Refused(format!(
                "plugin {name:?} is a filter; only the router has a shadow"
            )));
        }
        let Some(running) = self.shadow.running() else {
            return Err(ReloadError::Refused(
                "no shadow router is running ([router.shadow] is unset)".into(),
            ));
        };
        let path = running.cfg.path.clone();
        let bytes = std::fs::read(&path).map_err(|e| PluginError::Read {
            name: running.cfg.name.clone(),
            path: path.display().to_string(),
            msg: e.to_string(),
        });
        let bytes = self.note_failure(&target, "unread", bytes)?;
        let origin = path.display().to_string();
        let init = running.cfg.plugin().config_json();
        let source = format!("shadow {}", running.cfg.name);
        let how = Install {
            sha256: Some(&running.plugin.meta.hash),
            init: Some(&init),
            force: true,
            ..Install::new(&origin, &source)
        };
        let version = self.install(&target, &bytes, how)?;
        self.shadow.set(None);
        self.metrics.events.publish(
            "plugin.promoted",
            json!({"plugin": name, "shadow": running.cfg.name, "version": version}),
        );
        Ok(version)
    }

    /// Swaps the previous version of `name` back in.
    pub fn rollback(&self, name: &str) -> Result<String, ReloadError> {
        let r = match self.find(name)? {
            Target::Filter(_, s) => s.rollback("requested by an operator"),
            Target::Router(_, s) => s.rollback("requested by an operator"),
        };
        r.map_err(ReloadError::Rollback)
    }

    /// Counts, logs and announces a version `version` (12 hex digits of
    /// its sha256) that could not be loaded.
    fn note_failure<T>(
        &self,
        target: &Target,
        version: &str,
        r: Result<T, PluginError>,
    ) -> Result<T, ReloadError> {
        r.map_err(|e| {
            let name = &target.config().name;
            self.metrics
                .plugin_errors
                .with_label_values(&[name, version, e.kind()])
                .inc();
            tracing::error!(plugin = %name, error = %e, "new plugin version rejected; the running one stays");
            self.metrics.events.publish(
                "plugin.refused",
                json!({"plugin": name, "version": version, "kind": e.kind(), "error": e.to_string()}),
            );
            target.failed(&e);
            ReloadError::Plugin(e)
        })
    }

    /// Compiles and initialises `bytes` for `target`'s slot (with its
    /// config, or `how.init`) and swaps it in. Unless `how.force`, the
    /// running version is kept when the bytes are the same.
    fn install(&self, target: &Target, bytes: &[u8], how: Install) -> Result<String, ReloadError> {
        let Install {
            origin,
            source,
            sha256,
            init,
            force,
        } = how;
        let _one_at_a_time = self.loading.lock().expect("loading lock");
        let config = target.config();
        let name = config.name.as_str();
        let world = match target {
            Target::Filter(..) => "filter",
            Target::Router(..) => "router",
        };
        let pin = sha256.or(config.sha256.as_deref());
        let attempted = hex::encode(Sha256::digest(bytes));
        let attempted = &attempted[..12];
        // Cached only once `from_compiled` below accepted it (linked, init ok).
        let compiled: Result<Compiled, PluginError> =
            self.runtime
                .compile_bytes(name, bytes, origin, pin, Some(world));
        let compiled = self.note_failure(target, attempted, compiled)?;
        let running = target.running();
        if compiled.hash == running && !force {
            tracing::debug!(plugin = name, "plugin file unchanged");
            return Ok(running);
        }
        let version = compiled.hash.clone();
        let json = init.map_or_else(|| config.config_json(), str::to_string);
        let (rt, m) = (&self.runtime, self.metrics.clone());
        match target {
            Target::Filter(_, slot) => {
                let p = self.note_failure(
                    target,
                    attempted,
                    FilterPlugin::from_compiled(rt, name, compiled, json, m),
                )?;
                slot.swap(p, source);
            }
            Target::Router(_, slot) => {
                let p = self.note_failure(
                    target,
                    attempted,
                    RouterPlugin::from_compiled(rt, name, compiled, json, m),
                )?;
                slot.swap(p, source);
            }
        }
        Ok(version)
    }

    /// Applies the plugin sections of a reloaded config: new, removed and
    /// reordered filters, and changed paths, params or pins. Every new
    /// version is loaded before anything changes; if one fails, nothing
    /// does. Returns what changed. Blocking.
    pub fn apply(&self, config: &Config) -> Result<Vec<String>, Vec<PluginError>> {
        let old: Vec<(PluginConfig, Arc<Slot<FilterPlugin>>)> =
            self.filters.lock().expect("filters lock").clone();
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        // Load first, change later.
        let mut next: Vec<NextFilter> = Vec::new();
        for f in &config.filters {
            match old.iter().find(|(c, _)| c.name == f.name) {
                Some((c, slot)) if c == f => next.push((f.clone(), Some(slot.clone()), None)),
                existing => match FilterPlugin::load(&self.runtime, f, self.metrics.clone()) {
                    Ok(p) => next.push((f.clone(), existing.map(|(_, s)| s.clone()), Some(p))),
                    Err(e) => errors.push(e),
                },
            }
        }
        let old_router = self.router_config.lock().expect("router lock").clone();
        let shadow = if old_router.shadow != config.router.shadow {
            match config.router.shadow.as_deref() {
                Some(cfg) => match Shadow::load(&self.runtime, cfg, self.metrics.clone()) {
                    Ok(r) => Some(Some(r)),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                },
                None => Some(None),
            }
        } else {
            None
        };
        let router = if old_router.without_shadow() != config.router.without_shadow() {
            match RouterPlugin::load(&self.runtime, &config.router, self.metrics.clone()) {
                Ok(r) => Some(r),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut filters = Vec::new();
        for (c, slot, loaded) in next {
            let slot = match (slot, loaded) {
                (Some(slot), None) => slot,
                (Some(slot), Some(p)) => {
                    changes.push(format!("filters.{}: new version or params", c.name));
                    slot.swap(p, "config");
                    slot
                }
                (None, Some(p)) => {
                    changes.push(format!("filters.{}: added", c.name));
                    Arc::new(Slot::new(
                        p,
                        "config",
                        self.policy,
                        self.metrics.events.clone(),
                    ))
                }
                (None, None) => unreachable!("a filter is either kept or loaded"),
            };
            filters.push((c, slot));
        }
        for (c, _) in &old {
            if !filters.iter().any(|(n, _)| n.name == c.name) {
                changes.push(format!("filters.{}: removed", c.name));
            }
        }
        let old_order: Vec<&str> = old.iter().map(|(c, _)| c.name.as_str()).collect();
        let new_order: Vec<&str> = filters.iter().map(|(c, _)| c.name.as_str()).collect();
        if old_order != new_order {
            changes.push(format!("filter chain: {old_order:?} -> {new_order:?}"));
        }
        self.chain
            .store(Arc::new(filters.iter().map(|(_, s)| s.clone()).collect()));
        *self.filters.lock().expect("filters lock") = filters;
        if let Some(r) = router {
            changes.push(format!(
                "router.{}: new version or params",
                config.router.name
            ));
            self.router.swap(r, "config");
        }
        if let Some(s) = shadow {
            changes.push(match &s {
                Some(r) => format!("router.shadow: {} loaded", r.cfg.name),
                None => "router.shadow: removed".to_string(),
            });
            self.shadow.set(s);
        }
        *self.router_config.lock().expect("router lock") = config.router.clone();
        Ok(changes)
    }
}

/// The running shadow router as `GET /v1/plugins` lists it (`kind`
/// "shadow", with its comparison).
fn shadow_status(r: &super::shadow::Running) -> PluginStatus {
    let m = &r.plugin.meta;
    let (p50, p99) = m.call_percentiles_us();
    PluginStatus {
        name: m.name.to_string(),
        kind: "shadow",
        version: m.hash.clone(),
        loaded_at_ms: m.loaded_at_ms,
        load_ms: m.load_ms,
        from_cache: m.cached,
        source: "config".into(),
        calls: m.calls.load(Ordering::Relaxed),
        faults: m.faults.load(Ordering::Relaxed),
        traps: m.traps.load(Ordering::Relaxed),
        deadline_misses: m.deadline_misses.load(Ordering::Relaxed),
        memory_faults: m.memory_faults.load(Ordering::Relaxed),
        call_p50_us: p50,
        call_p99_us: p99,
        previous_version: None,
        last_error: None,
        last_event: None,
        recent_logs: Vec::new(),
        shadow: Some(r.status()),
    }
}

/// Where a new version comes from and how to install it.
struct Install<'a> {
    /// Named in errors: a path, `upload` or `deployment`.
    origin: &'a str,
    /// The slot's source label: file | upload | deployment (…).
    source: &'a str,
    /// A sha256 the bytes must have, over the config's pin.
    sha256: Option<&'a str>,
    /// The `init` config instead of the config file's.
    init: Option<&'a str>,
    /// Swap even when the bytes are the running version.
    force: bool,
}

impl<'a> Install<'a> {
    fn new(origin: &'a str, source: &'a str) -> Install<'a> {
        Install {
            origin,
            source,
            sha256: None,
            init: None,
            force: false,
        }
    }
}

fn policy(c: &PluginRuntimeConfig) -> RollbackPolicy {
    RollbackPolicy {
        faults: c.rollback_faults,
        window: Duration::from_millis(c.rollback_window_ms),
    }
}
