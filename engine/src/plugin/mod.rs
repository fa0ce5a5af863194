//! The plugin runtime: a thin layer over wasmtime narrowed to what CDRS uses.
//!
//! * One [`Runtime`] per process: a wasmtime `Engine` with the component model
//!   and epoch interruption, an epoch ticker thread, and one `Linker` per world.
//! * Plugins are compiled once ([`Runtime::compile`]) and pre-linked
//!   (`InstancePre`); instances are long-lived, kept in a small pool per plugin,
//!   and called from one thread at a time.
//! * Compiling is bounded: a component is read first ([`scan`]) and refused
//!   before compiling if its imports, contract version or exports do not fit
//!   or it is over the compile budget; concurrent compiles of one component
//!   share one compile, and one compile runs at a time in the process.
//! * Compiled code is cached on disk ([`cache`]) only for plugins the host
//!   accepted, and loaded back only from a folder this uid owns alone and
//!   under a MAC of this installation's key.
//! * Sandbox: WASI is linked because some guest toolchains import it, but the
//!   context grants nothing (no preopened dirs, no env, no args, no sockets,
//!   stdio discarded). Each call has a wall-clock deadline (epoch interruption,
//!   `plugins.call_timeout_ms`) and each instance a linear-memory cap
//!   (`plugins.max_memory_bytes`).
//! * A trap, deadline or memory failure resets the instance (a fresh one is
//!   instantiated and `init`-ed) and [`isolate`] re-runs the batch in halves so
//!   only the record(s) that make the plugin fail are singled out.

pub mod bindings;
pub mod cache;
pub mod capture;
pub mod contract;
pub mod convert;
pub mod filter;
pub mod router;
pub mod scaffold;
pub mod scan;
pub mod shadow;
pub mod slot;
pub mod testbed;

use crate::config::PluginRuntimeConfig;
use bindings::host;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Component instances the pooling allocator holds at once (all plugins,
/// all versions alive during a swap). Each reserves address space, not memory.
pub const POOL_COMPONENT_INSTANCES: u32 = 256;

/// Largest plugin call duration the per-version histograms tell apart, µs
/// (one hour; longer calls count as one hour).
const MAX_CALL_US: u64 = 3_600_000_000;

/// An empty histogram of call durations, µs, 1 µs .. [`MAX_CALL_US`].
///
/// Fixed bounds: `saturating_record` never grows an auto-resizing
/// histogram, it clamps to its current top (2 µs at first), so every
/// longer call would read as that top.
fn call_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, MAX_CALL_US, 3)
        .expect("1 µs .. 1 h at 3 significant digits is valid")
}

/// Period of the epoch ticker; call deadlines are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// What went wrong with a plugin. Callers branch on the kind: load-time
/// errors reject a plugin version; call-time faults reset the instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("failed to read plugin {name:?} from \"{path}\": {msg}")]
    Read {
        name: String,
        path: String,
        msg: String,
    },
    #[error("failed to compile plugin {name:?} from \"{path}\": {msg}")]
    Compile {
        name: String,
        path: String,
        msg: String,
    },
    #[error("plugin {name:?} does not fit the {world} world of cdrs:plugin@{host}: {msg}")]
    Link {
        name: String,
        world: &'static str,
        /// The contract version this host implements.
        host: contract::Version,
        msg: String,
    },
    /// Built against a contract version this host does not run, or asks
    /// for an import the host does not grant.
    #[error("plugin {name:?} {msg}")]
    Incompatible { name: String, msg: String },
    #[error("plugin {name:?} rejected its config in init: {msg}")]
    Init { name: String, msg: String },
    #[error("plugin {name:?} trapped: {msg}")]
    Trap { name: String, msg: String },
    #[error("plugin {name:?} missed its {ms} ms call deadline")]
    Deadline { name: String, ms: u64 },
    #[error("plugin {name:?} hit its memory cap of {bytes} bytes")]
    OutOfMemory { name: String, bytes: usize },
    #[error("plugin {name:?} broke the contract: {msg}")]
    Contract { name: String, msg: String },
}

impl PluginError {
    /// Short label for metrics (`cdrs_plugin_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Read { .. } | PluginError::Compile { .. } => "compile",
            PluginError::Link { .. } | PluginError::Incompatible { .. } => "link",
            PluginError::Init { .. } => "init",
            PluginError::Trap { .. } => "trap",
            PluginError::Deadline { .. } => "deadline",
            PluginError::OutOfMemory { .. } => "memory",
            PluginError::Contract { .. } => "contract",
        }
    }

    /// Faults caused by some record(s) of a batch, worth isolating by
    /// re-running the batch in halves.
    pub fn is_record_fault(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Deadline { .. }
                | PluginError::OutOfMemory { .. }
        )
    }
}

/// WASI wall clock with millisecond resolution.
struct MillisecondWallClock;

impl wasmtime_wasi::HostWallClock for MillisecondWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_millis(since_epoch.as_millis() as u64)
    }
}

/// WASI monotonic clock with millisecond resolution (ns since the store was
/// created, in whole ms).
struct MillisecondMonotonicClock(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for MillisecondMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 * 1_000_000
    }
}

/// Lines a plugin logged through the contract's `host.log` kept for
/// `GET /v1/plugins` and the dashboard, per plugin name.
pub const LOG_LINES_KEPT: usize = 20;

/// Longest logged line kept, bytes (cut on a character boundary).
pub const LOG_LINE_MAX_BYTES: usize = 512;

/// One line a plugin logged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// trace | debug | info | warn | error.
    pub level: &'static str,
    pub message: String,
}

/// The last [`LOG_LINES_KEPT`] lines of each plugin (by name, across its
/// versions).
#[derive(Default)]
pub struct PluginLogs(Mutex<HashMap<Arc<str>, LogRing>>);

/// One plugin's kept lines, shared by its instances' stores.
type LogRing = Arc<Mutex<VecDeque<LogLine>>>;

impl PluginLogs {
    fn of(&self, plugin: &Arc<str>) -> LogRing {
        let mut all = self.0.lock().expect("plugin logs lock");
        all.entry(plugin.clone()).or_default().clone()
    }

    /// The kept lines of `plugin`, oldest first.
    pub fn recent(&self, plugin: &str) -> Vec<LogLine> {
        let all = self.0.lock().expect("plugin logs lock");
        all.get(plugin).map_or_else(Vec::new, |l| {
            l.lock().expect("plugin log lock").iter().cloned().collect()
        })
    }
}

/// Per-store data: the empty WASI context and the memory limiter.
pub struct State {
    plugin: Arc<str>,
    log: LogRing,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, msg: String) {
        let at_ms = self.now_ms();
        let plugin = &*self.plugin;
        let mut message = msg.as_str();
        if message.len() > LOG_LINE_MAX_BYTES {
            let mut end = LOG_LINE_MAX_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message = &message[..end];
        }
        {
            let mut log = self.log.lock().expect("plugin log lock");
            if log.len() == LOG_LINES_KEPT {
                log.pop_front();
            }
            log.push_back(LogLine {
                at_ms,
                level: match level {
                    host::Level::Trace => "trace",
                    host::Level::Debug => "debug",
                    host::Level::Info => "info",
                    host::Level::Warn => "warn",
                    host::Level::Error => "error",
                },
                message: message.to_string(),
            });
        }
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{msg}"),
            host::Level::Debug => tracing::debug!(plugin, "{msg}"),
            host::Level::Info => tracing::info!(plugin, "{msg}"),
            host::Level::Warn => tracing::warn!(plugin, "{msg}"),
            host::Level::Error => tracing::error!(plugin, "{msg}"),
        }
    }

    fn now_ms(&mut self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

impl bindings::types::Host for State {}

/// A compiled component with its identity.
pub struct Compiled {
    pub component: Component,
    /// Hex sha256 of the component bytes: the plugin's version.
    pub hash: String,
    /// Whether it came from the compiled cache.
    pub cached: bool,
    /// Time to compile or load it, ms.
    pub load_ms: f64,
}

impl Compiled {
    /// Writes the compiled code to the compiled cache (`plugins.cache_dir`),
    /// so the next load of this component skips compiling. Call it only
    /// once the host accepted the plugin (linked against its world, `init`
    /// returned Ok): a refused component is never cached. Nothing happens
    /// when it came from the cache or the cache is not in use; a failed
    /// write is logged at WARN and otherwise ignored.
    pub fn persist(&self, runtime: &Runtime) {
        if self.cached {
            return;
        }
        let Some(cache) = runtime.cache() else {
            return;
        };
        if let Err(e) = cache.store(&self.hash, &self.component) {
            tracing::warn!(version = %&self.hash[..12], dir = %cache.dir().display(), error = %e,
                "compiled cache entry not written");
        }
    }
}

/// Held while a component compiles: one compile at a time in the process.
/// wasmtime already spreads one compile over every core (`parallel-compilation`,
/// rayon), so more would only compete for them and add up their memory.
static COMPILING: Mutex<()> = Mutex::new(());

/// A compile in progress or done, shared by the callers that asked for the
/// same component at once: the component and whether it came from the cache.
type SharedCompile = Arc<OnceLock<Result<(Component, bool), PluginError>>>;

/// Maps a wasmtime linking error to [`PluginError::Link`].
/// What differs between the filter and the router world when a component
/// is linked and instantiated: the generated bindings of the world's plain
/// and packed variants, and what its `init` answers.
pub(crate) trait World {
    /// `"filter"` or `"router"`.
    const NAME: &'static str;
    /// The component linked against the world.
    type Pre;
    /// One instance's exports.
    type Bindings;
    /// What `init` answers on success.
    type Init;
    fn link(pre: InstancePre<State>, packed: bool) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings>;
    fn init(
        bindings: &Self::Bindings,
        store: &mut Store<State>,
        config: &str,
    ) -> wasmtime::Result<Result<Self::Init, String>>;
}

/// An instance made by [`Runtime::instantiate`]: its store, its bindings
/// and what its `init` answered.
pub(crate) struct NewInstance<W: World> {
    pub store: Store<State>,
    pub bindings: W::Bindings,
    pub init: W::Init,
}

pub(crate) fn link_error<'a>(
    name: &'a str,
    world: &'static str,
) -> impl Fn(wasmtime::Error) -> PluginError + 'a {
    move |e| PluginError::Link {
        name: name.to_string(),
        world,
        host: contract::host_version(),
        msg: format!("{e:#}"),
    }
}

/// Identity and counters of one loaded plugin version.
#[derive(Debug)]
pub struct PluginMeta {
    pub name: Arc<str>,
    /// Hex sha256 of the component: the version.
    pub hash: String,
    /// Wall-clock load time, ms since the Unix epoch.
    pub loaded_at_ms: i64,
    /// Compile (or cache load) time, ms.
    pub load_ms: f64,
    pub cached: bool,
    /// Batch calls made.
    pub calls: std::sync::atomic::AtomicU64,
    /// Record faults (trap, deadline, memory) seen.
    pub faults: std::sync::atomic::AtomicU64,
    /// Of those: traps, missed deadlines, memory cap hits.
    pub traps: std::sync::atomic::AtomicU64,
    pub deadline_misses: std::sync::atomic::AtomicU64,
    pub memory_faults: std::sync::atomic::AtomicU64,
    /// Batch call durations, µs (HdrHistogram, 3 significant digits).
    call_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl PluginMeta {
    fn new(name: &str, compiled: &Compiled) -> PluginMeta {
        PluginMeta::with(name, &compiled.hash, compiled.load_ms, compiled.cached)
    }

    /// A version's identity with zeroed counters, loaded now.
    fn with(name: &str, hash: &str, load_ms: f64, cached: bool) -> PluginMeta {
        PluginMeta {
            name: name.into(),
            hash: hash.to_string(),
            loaded_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            load_ms,
            cached,
            calls: Default::default(),
            faults: Default::default(),
            traps: Default::default(),
            deadline_misses: Default::default(),
            memory_faults: Default::default(),
            call_us: std::sync::Mutex::new(call_histogram()),
        }
    }

    /// Counts a record fault by kind.
    pub fn observe_fault(&self, e: &PluginError) {
        let by_kind = match e {
            PluginError::Trap { .. } => &self.traps,
            PluginError::Deadline { .. } => &self.deadline_misses,
            PluginError::OutOfMemory { .. } => &self.memory_faults,
            _ => return,
        };
        by_kind.fetch_add(1, Ordering::Relaxed);
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one batch call of `d`.
    pub fn observe_call(&self, d: std::time::Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let us = (d.as_micros() as u64).max(1);
        self.call_us
            .lock()
            .expect("histogram lock")
            .saturating_record(us);
    }

    /// (p50, p99) of batch call durations, µs; zeros before the first call.
    pub fn call_percentiles_us(&self) -> (u64, u64) {
        let h = self.call_us.lock().expect("histogram lock");
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }

    /// First 12 hex digits of the version, for logs.
    pub fn short(&self) -> &str {
        &self.hash[..12]
    }
}

/// Refuses a component the host cannot run, by the names of its top-level
/// imports and exports: imports the host does not grant; and when the world
/// it is loaded as is known, a contract version the host does not run, the
/// other world, or exports the world needs and it lacks.
///
/// Errors: `Incompatible` (version, imports), `Link` (world, exports).
fn check_contract(
    name: &str,
    world: Option<&'static str>,
    inspection: &contract::Inspection,
) -> Result<(), PluginError> {
    let incompatible = |msg: String| PluginError::Incompatible {
        name: name.into(),
        msg,
    };
    if world.is_some() {
        if let Some(msg) = inspection.version_problem() {
            return Err(incompatible(msg));
        }
    }
    if let Some(i) = inspection.refused().next() {
        return Err(incompatible(format!(
            "imports {:?}, which this host does not provide (it grants {}/host and \
             links WASI 0.2 with nothing granted)",
            i.name,
            contract::PACKAGE
        )));
    }
    let Some(world) = world else {
        return Ok(());
    };
    let link = |msg: String| PluginError::Link {
        name: name.into(),
        world,
        host: contract::host_version(),
        msg,
    };
    if let Some(other) = inspection.world.filter(|w| *w != world) {
        return Err(link(format!(
            "it implements the {other} world; configure it as a {other}"
        )));
    }
    let missing = contract::missing_exports(world, &inspection.exports);
    if !missing.is_empty() {
        return Err(link(format!("it does not export {}", missing.join(", "))));
    }
    Ok(())
}

/// The wasmtime engine, linkers and limits shared by all plugins.
pub struct Runtime {
    engine: Engine,
    filter_linker: Linker<State>,
    router_linker: Linker<State>,
    limits: PluginRuntimeConfig,
    ticking: Arc<AtomicBool>,
    /// Give instances created from now on the process's stderr (off in the
    /// daemon; `cdrs plugin test` turns it on so tracebacks show).
    guest_stderr: AtomicBool,
    /// The compiled cache, opened on first use; `None` when there is none
    /// or its folder was refused (see [`cache`]).
    cache: OnceLock<Option<cache::Cache>>,
    /// Compiles in progress, by component sha256: a caller asking for a
    /// component being compiled waits for that compile and shares it.
    in_flight: Mutex<HashMap<String, SharedCompile>>,
    /// Components this runtime compiled (not loaded from the cache).
    pub(crate) compiles: AtomicU64,
    /// What plugins logged lately.
    pub logs: PluginLogs,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and linkers and starts the epoch ticker thread.
    ///
    /// # Errors
    /// wasmtime refuses the engine settings (e.g. a memory reservation the
    /// pooling allocator cannot make).
    pub fn new(limits: &PluginRuntimeConfig) -> anyhow::Result<Arc<Runtime>> {
        Runtime::build(limits, true)
    }

    /// A runtime whose compiled code has no epoch checks, so calls have no
    /// deadline: only for `cdrs bench`, to show what the checks cost (an
    /// epoch check at each function entry and loop back-edge was ~25% of a
    /// JSON filter's time on wasmtime 48).
    ///
    /// # Errors
    /// As [`Runtime::new`].
    pub fn without_deadlines(limits: &PluginRuntimeConfig) -> anyhow::Result<Arc<Runtime>> {
        Runtime::build(limits, false)
    }

    fn build(limits: &PluginRuntimeConfig, deadlines: bool) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(deadlines);
        // `CDRS_WASM_PERFMAP=1` writes /tmp/perf-PID.map so `perf report`
        // names the plugins' JIT-compiled functions (wasmtime's perf map
        // profiler; costs nothing when unset).
        if std::env::var_os("CDRS_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Pooling allocator: instance slots, memories and tables are
        // reserved once and reused (a reset after a trap costs a madvise,
        // not an mmap); linear memories are capped at the configured size.
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_COMPONENT_INSTANCES * 8)
            .total_memories(POOL_COMPONENT_INSTANCES * 2)
            .total_tables(POOL_COMPONENT_INSTANCES * 4)
            .max_memory_size(limits.max_memory_bytes);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                Engine::new(&config)?
            }
        };

        let mut filter_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut filter_linker)?;
        bindings::filter::Filter::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut filter_linker,
            |s| s,
        )?;
        let mut router_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut router_linker)?;
        bindings::router::Router::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut router_linker,
            |s| s,
        )?;

        let ticking = Arc::new(AtomicBool::new(true));
        let (e, t) = (engine.clone(), ticking.clone());
        std::thread::Builder::new()
            .name("cdrs-epoch".into())
            .spawn(move || {
                while t.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            filter_linker,
            router_linker,
            limits: limits.clone(),
            ticking,
            guest_stderr: AtomicBool::new(false),
            cache: OnceLock::new(),
            in_flight: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            logs: PluginLogs::default(),
        }))
    }

    /// The compiled cache, opened (and its folder and key checked) on first
    /// use. A folder that must not be used is logged at WARN once, naming it
    /// and why; the runtime then compiles every plugin on each load.
    fn cache(&self) -> Option<&cache::Cache> {
        self.cache
            .get_or_init(|| {
                let dir = self.limits.cache_dir()?;
                match cache::Cache::open(&dir, cache::engine_digest(&self.engine)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e,
                            "compiled plugin cache not used; plugins are compiled on every load");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Reads and compiles the component at `path` (see [`Runtime::compile_bytes`]).
    ///
    /// Errors: `Read` (missing file), and those of `compile_bytes`.
    pub fn compile(
        &self,
        name: &str,
        path: &Path,
        sha256: Option<&str>,
        world: Option<&'static str>,
    ) -> Result<Compiled, PluginError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            name: name.into(),
            path: shown.clone(),
            msg: e.to_string(),
        })?;
        self.compile_bytes(name, &bytes, &shown, sha256, world)
    }

    /// Compiles component `bytes` (from `source`, shown in errors) to be
    /// loaded as `world` (`filter` or `router`; `None` when not known yet),
    /// or loads the compiled artifact from the cache when this exact
    /// component was compiled and accepted before by a compatible engine.
    ///
    /// Before compiling, the binary is read ([`scan`]): a component over the
    /// compile budget ([`scan::MAX_DECLARED_LOCALS`], [`scan::MAX_CODE_BYTES`],
    /// [`scan::MAX_FUNCTIONS`]), importing anything but `cdrs:plugin/…` and
    /// `wasi:…`, or (for a known world) built against another contract major
    /// or not exporting what the world needs, is refused in milliseconds.
    /// Callers asking for the same component at once share one compile, and
    /// one compile runs at a time in the process.
    ///
    /// Cache entries (`plugins.cache_dir`, see [`cache`]) are keyed by the
    /// sha256 of the component and the engine's compatibility hash and
    /// authenticated by a MAC: an entry that does not verify is recompiled,
    /// never loaded. Nothing is written here: [`Compiled::persist`] writes
    /// the entry once the caller accepted the plugin.
    ///
    /// Errors: `Compile` (not Wasm, a core module instead of a component,
    /// unreadable, over the compile budget, invalid, or a sha256 other than
    /// the pinned `sha256`), `Incompatible` and `Link` (see above).
    pub fn compile_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        source: &str,
        sha256: Option<&str>,
        world: Option<&'static str>,
    ) -> Result<Compiled, PluginError> {
        let started = std::time::Instant::now();
        let compile_err = |msg: String| PluginError::Compile {
            name: name.into(),
            path: source.into(),
            msg,
        };
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(compile_err(
                "not a WebAssembly file (no \\0asm header); give the .wasm component \
                 your plugin project's build writes (`./build.sh` in a project made by \
                 `cdrs plugin new`)"
                    .into(),
            ));
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(compile_err(
                "is a core Wasm module, not a component; build it with your language's \
                 CDRS SDK build (see sdk/<lang>/README.md), which makes a component, or \
                 wrap it with `wasm-tools component new`"
                    .into(),
            ));
        }
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(want) = sha256 {
            if !want.eq_ignore_ascii_case(&hash) {
                return Err(compile_err(format!(
                    "sha256 is {hash}, but the config pins {want}; refusing it"
                )));
            }
        }
        let scanned = scan::scan(bytes)
            .map_err(|e| compile_err(format!("is not a readable Wasm component: {e}")))?;
        if let Some(msg) = scanned.over_budget() {
            return Err(compile_err(msg));
        }
        let imports = scanned.imports.into_iter().map(|i| (i, Vec::new()));
        let inspection = contract::Inspection::from_names(imports, scanned.exports);
        check_contract(name, world, &inspection)?;

        let (component, cached) = self.compile_shared(name, bytes, source, &hash)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if cached {
            tracing::info!(plugin = name, version = %&hash[..12], ms, "plugin loaded from the compiled cache");
        } else {
            tracing::info!(plugin = name, version = %&hash[..12], ms, "plugin compiled");
        }
        Ok(Compiled {
            component,
            hash,
            cached,
            load_ms: ms,
        })
    }

    /// The component with sha256 `hash` from the cache, or compiled; shared
    /// with every caller asking for the same `hash` meanwhile (they wait for
    /// the first one's compile). Returns whether it came from the cache.
    fn compile_shared(
        &self,
        name: &str,
        bytes: &[u8],
        source: &str,
        hash: &str,
    ) -> Result<(Component, bool), PluginError> {
        let shared = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(hash.to_string())
            .or_default()
            .clone();
        let result = shared
            .get_or_init(|| {
                if let Some(c) = self.cache().and_then(|c| c.load(&self.engine, hash)) {
                    return Ok((c, true));
                }
                // A panic in another compile leaves nothing to protect.
                let _one_at_a_time = COMPILING.lock().unwrap_or_else(PoisonError::into_inner);
                self.compiles.fetch_add(1, Ordering::Relaxed);
                Component::new(&self.engine, bytes)
                    .map(|c| (c, false))
                    .map_err(|e| PluginError::Compile {
                        name: name.into(),
                        path: source.into(),
                        msg: format!("{e:#}"),
                    })
            })
            .clone();
        // Done: later callers go to the cache (or compile anew if the
        // plugin was refused and so not cached).
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if in_flight.get(hash).is_some_and(|s| Arc::ptr_eq(s, &shared)) {
            in_flight.remove(hash);
        }
        result
    }

    /// Links `component` against `world`'s linker ("filter" or "router");
    /// also says whether it answers packed (`packed-filter` /
    /// `packed-router`, contract 1.1).
    ///
    /// Errors: `Link`, naming the import or export that does not fit.
    pub(crate) fn instance_pre(
        &self,
        world: &'static str,
        name: &str,
        component: &Component,
    ) -> Result<(wasmtime::component::InstancePre<State>, bool), PluginError> {
        let linker = if world == "router" {
            &self.router_linker
        } else {
            &self.filter_linker
        };
        // Name the contract versions, refused imports and missing exports
        // before wasmtime's own (type-level) link error, which names none.
        let inspection = contract::Inspection::of(&self.engine, component);
        check_contract(name, Some(world), &inspection)?;
        let pre = linker.instantiate_pre(component).map_err(|e| {
            let mut err = link_error(name, world)(e);
            if let (PluginError::Link { msg, .. }, Some(v)) = (&mut err, inspection.version()) {
                msg.push_str(&format!(
                    " (the plugin was built against {}@{v})",
                    contract::PACKAGE
                ));
            }
            err
        })?;
        Ok((pre, inspection.packed))
    }

    /// Whether `component` links against `world` (version, imports, exports);
    /// nothing is instantiated.
    ///
    /// # Errors
    /// `Incompatible` or `Link`, naming the version, import or export that
    /// does not fit.
    pub fn check_links(
        &self,
        world: &'static str,
        name: &str,
        component: &Component,
    ) -> Result<(), PluginError> {
        if world == "router" {
            self.link::<router::RouterWorld>(name, component).map(drop)
        } else {
            self.link::<filter::FilterWorld>(name, component).map(drop)
        }
    }

    /// Links `component` against world `W` (its plain or packed variant,
    /// whichever the component exports): the one loader of filter and
    /// router plugins.
    ///
    /// Errors: as [`Runtime::instance_pre`].
    pub(crate) fn link<W: World>(
        &self,
        name: &str,
        component: &Component,
    ) -> Result<W::Pre, PluginError> {
        let (pre, packed) = self.instance_pre(W::NAME, name, component)?;
        W::link(pre, packed).map_err(link_error(name, W::NAME))
    }

    /// A new instance of a plugin linked against `W`, with `init` called
    /// with `config`.
    ///
    /// Errors: `Init` with the plugin's message; a trap, deadline or
    /// memory fault while instantiating or in `init`.
    pub(crate) fn instantiate<W: World>(
        &self,
        name: &Arc<str>,
        pre: &W::Pre,
        config: &str,
    ) -> Result<NewInstance<W>, PluginError> {
        let mut store = self.store(name);
        self.arm(&mut store);
        let bindings = W::instantiate(pre, &mut store).map_err(|e| self.classify(name, e))?;
        self.arm(&mut store);
        match W::init(&bindings, &mut store, config) {
            Ok(Ok(init)) => Ok(NewInstance {
                store,
                bindings,
                init,
            }),
            Ok(Err(msg)) => Err(PluginError::Init {
                name: name.to_string(),
                msg,
            }),
            Err(e) => Err(self.classify(name, e)),
        }
    }

    /// Whether instances created from now on write their stderr to the
    /// process's (a Python traceback, a panic message). Off by default: in
    /// the daemon plugins get no stdio; `cdrs plugin test` turns it on.
    pub fn set_guest_stderr(&self, on: bool) {
        self.guest_stderr.store(on, Ordering::Relaxed);
    }

    /// The wasmtime engine (to inspect components).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh store for one instance of plugin `name`, with the memory cap
    /// and an empty WASI context: no preopened directories, environment,
    /// arguments or sockets (wasmtime-wasi's defaults), and clocks cut to
    /// whole milliseconds, what the contract's `now-ms` gives anyway.
    fn store(&self, name: &Arc<str>) -> Store<State> {
        let state = State {
            plugin: name.clone(),
            log: self.logs.of(name),
            wasi: {
                let mut b = WasiCtx::builder();
                b.wall_clock(MillisecondWallClock)
                    .monotonic_clock(MillisecondMonotonicClock(std::time::Instant::now()));
                if self.guest_stderr.load(Ordering::Relaxed) {
                    b.inherit_stderr();
                }
                b.build()
            },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.max_memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Arms the call deadline before a guest call.
    fn arm(&self, store: &mut Store<State>) {
        let ticks = self
            .limits
            .call_timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64);
        store.set_epoch_deadline(ticks.max(1));
    }

    /// Maps a wasmtime call error to a [`PluginError`].
    fn classify(&self, name: &str, e: wasmtime::Error) -> PluginError {
        let msg = format!("{e:#}");
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return PluginError::Deadline {
                name: name.into(),
                ms: self.limits.call_timeout_ms,
            };
        }
        if msg.contains("forcing trap when growing memory") {
            return PluginError::OutOfMemory {
                name: name.into(),
                bytes: self.limits.max_memory_bytes,
            };
        }
        PluginError::Trap {
            name: name.into(),
            msg,
        }
    }
}

/// A plugin call over a slice of items: one output per item, or an error.
pub type BatchCall<'a, R, T> = dyn FnMut(&[R]) -> Result<Vec<T>, PluginError> + 'a;

/// Runs `call` on `items`; when it fails with a record fault, re-runs each
/// half, down to single items, so only the items that make the plugin fail
/// get `failed`. Other errors fail the whole (sub-)batch.
///
/// Cost: a batch of n with one bad record takes about 2·log2(n) extra calls.
pub fn isolate<R, T>(
    items: &[R],
    call: &mut BatchCall<'_, R, T>,
    failed: &mut dyn FnMut(&R, &PluginError) -> T,
) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    match call(items) {
        Ok(out) => out,
        Err(e) if e.is_record_fault() && items.len() > 1 => {
            let (a, b) = items.split_at(items.len() / 2);
            let mut out = isolate(a, call, failed);
            out.extend(isolate(b, call, failed));
            out
        }
        Err(e) => items.iter().map(|r| failed(r, &e)).collect(),
    }
}

/// A plugin's dead-letter reason, cut to [`MAX_REASON_BYTES`] (at a char
/// boundary) so a runaway string cannot bloat the dead-letter topic's headers.
///
/// [`MAX_REASON_BYTES`]: crate::config::MAX_REASON_BYTES
pub fn cut_reason(mut reason: String) -> String {
    let max = crate::config::MAX_REASON_BYTES;
    if reason.len() > max {
        let mut end = max - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

/// A small pool of instances of one plugin; calls take one out and put it
/// back, so concurrent partitions never share an instance.
pub(crate) struct Pool<I> {
    idle: std::sync::Mutex<Vec<I>>,
}

impl<I> Pool<I> {
    pub(crate) fn new(instances: Vec<I>) -> Self {
        Pool {
            idle: std::sync::Mutex::new(instances),
        }
    }
    pub(crate) fn take(&self) -> Option<I> {
        self.idle.lock().expect("pool lock").pop()
    }
    pub(crate) fn put(&self, i: I) {
        self.idle.lock().expect("pool lock").push(i)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::PluginConfig;
    use crate::metrics::Metrics;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// Folder with the built plugins: `CDRS_PLUGIN_DIR`, else the
    /// workspace's `target/wasm32-wasip2/plugin` (`scripts/dev.sh plugins`).
    pub(crate) fn plugin_dir() -> PathBuf {
        let dir = std::env::var_os("CDRS_PLUGIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/plugin")
            });
        assert!(
            dir.join("p2c_router.wasm").is_file() && dir.join("field_filter.wasm").is_file(),
            "plugins not built in {}: run `scripts/dev.sh plugins`",
            dir.display()
        );
        dir
    }

    /// A fresh folder under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "cdrs-plugin-test-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn runtime(cache: &Path) -> Arc<Runtime> {
        Runtime::new(&PluginRuntimeConfig {
            cache_dir: Some(cache.to_path_buf()),
            instances: 1,
            ..PluginRuntimeConfig::default()
        })
        .expect("runtime")
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = rd
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm" || e == "mac"))
            .collect();
        out.sort();
        out
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    fn load_filter(rt: &Arc<Runtime>, cfg: &PluginConfig) -> Result<(), PluginError> {
        filter::FilterPlugin::load(rt, cfg, Arc::new(Metrics::new())).map(drop)
    }

    #[test]
    fn an_accepted_plugin_is_cached_and_loads_back() {
        let dir = TempDir::new("roundtrip");
        let cfg = crate::testkit::demo_filter(&plugin_dir());
        let rt = runtime(&dir.0);
        load_filter(&rt, &cfg).expect("filter loads");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1);
        let files = entries(&dir.0);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(mode(&dir.0), 0o700);
        assert_eq!(mode(&dir.0.join("key")), 0o600);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }

        let rt = runtime(&dir.0);
        let warm = rt
            .compile(&cfg.name, &cfg.path, None, Some("filter"))
            .expect("cached load");
        assert!(warm.cached, "a second runtime loads the entry");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 0);
        filter::FilterPlugin::from_compiled(
            &rt,
            &cfg.name,
            warm,
            cfg.config_json(),
            Arc::new(Metrics::new()),
        )
        .expect("cached component links and inits");
    }

    #[test]
    fn a_planted_entry_is_refused_and_the_right_plugin_loads() {
        let dir = TempDir::new("planted");
        let plugins = plugin_dir();
        let filter_cfg = crate::testkit::demo_filter(&plugins);
        let router_cfg = crate::testkit::demo_router(&plugins, false);
        let rt = runtime(&dir.0);
        load_filter(&rt, &filter_cfg).expect("filter loads");
        let filter_hash = hex::encode(Sha256::digest(std::fs::read(&filter_cfg.path).unwrap()));
        let router_bytes = std::fs::read(&router_cfg.path).unwrap();
        let router_hash = hex::encode(Sha256::digest(&router_bytes));

        // The filter's entry, copied under the router's name, with a
        // matching checksum file as the old cache format wanted.
        let cache = rt.cache().expect("cache in use");
        let (cwasm, mac) = cache.entry_paths(&filter_hash);
        let (planted_cwasm, planted_mac) = cache.entry_paths(&router_hash);
        let artifact = std::fs::read(&cwasm).unwrap();
        std::fs::write(&planted_cwasm, &artifact).unwrap();
        std::fs::copy(&mac, &planted_mac).unwrap();
        std::fs::write(
            planted_cwasm.with_extension("sha256"),
            hex::encode(Sha256::digest(&artifact)),
        )
        .unwrap();

        let rt = runtime(&dir.0);
        let router = rt
            .compile(
                &router_cfg.name,
                &router_cfg.path,
                Some(&router_hash),
                Some("router"),
            )
            .expect("router compiles");
        assert!(!router.cached, "the planted entry is not loaded");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1);
        let inspection = contract::Inspection::of(rt.engine(), &router.component);
        assert_eq!(
            inspection.world,
            Some("router"),
            "the router, not the filter"
        );
        router::RouterPlugin::from_compiled(
            &rt,
            &router_cfg.name,
            router,
            router_cfg.config_json(),
            Arc::new(Metrics::new()),
        )
        .expect("router loads");
        // Accepted, so its own entry replaced the planted one.
        let rt = runtime(&dir.0);
        let again = rt
            .compile_bytes("p2c", &router_bytes, "p2c", None, Some("router"))
            .expect("router from the cache");
        assert!(again.cached);
        assert_eq!(
            contract::Inspection::of(rt.engine(), &again.component).world,
            Some("router")
        );
    }

    #[test]
    fn refused_components_leave_no_cache_entry() {
        let dir = TempDir::new("refused");
        let plugins = plugin_dir();
        let rt = runtime(&dir.0);
        let mut bad = crate::testkit::demo_filter(&plugins);
        bad.config = toml::from_str("rules = [{ action = \"drop\", equals = 1 }]").unwrap();
        let e = load_filter(&rt, &bad).unwrap_err();
        assert!(matches!(e, PluginError::Init { .. }), "{e}");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1);
        assert_eq!(
            entries(&dir.0),
            Vec::<PathBuf>::new(),
            "init failed: nothing cached"
        );

        // The router configured as a filter: refused before compiling.
        let mut wrong = crate::testkit::demo_router(&plugins, false);
        wrong.name = "wrong".into();
        let e = load_filter(&rt, &wrong).unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::Link {
                    world: "filter",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("implements the router world"), "{e}");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1, "not compiled");
        assert_eq!(entries(&dir.0), Vec::<PathBuf>::new());
    }

    #[test]
    fn unsafe_cache_folders_are_not_used() {
        let cfg = crate::testkit::demo_filter(&plugin_dir());
        let refused = |dir: &Path, why: &str| {
            let rt = runtime(dir);
            assert!(rt.cache().is_none(), "{why}: cache refused");
            load_filter(&rt, &cfg).expect("loads without the cache");
            assert_eq!(
                entries(dir),
                Vec::<PathBuf>::new(),
                "{why}: nothing written"
            );
        };

        let open = TempDir::new("mode");
        std::fs::create_dir(&open.0).unwrap();
        std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        refused(&open.0, "mode 0777");

        let target = TempDir::new("target");
        std::fs::create_dir(&target.0).unwrap();
        std::fs::set_permissions(&target.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = TempDir::new("link");
        std::os::unix::fs::symlink(&target.0, &link.0).unwrap();
        refused(&link.0, "symbolic link");

        let key = TempDir::new("key");
        assert!(runtime(&key.0).cache().is_some(), "a fresh folder is used");
        let key_file = key.0.join("key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        refused(&key.0, "key readable by others");

        let other = TempDir::new("owner");
        std::fs::create_dir(&other.0).unwrap();
        std::fs::set_permissions(&other.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = std::ffi::CString::new(other.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; chown has no other preconditions.
        if unsafe { libc::chown(path.as_ptr(), 65534, 65534) } == 0 {
            refused(&other.0, "owned by uid 65534");
        } else {
            eprintln!("chown to 65534 not permitted: owner check not exercised");
        }
    }

    #[test]
    fn a_hostile_component_is_refused_before_compiling() {
        // 41 functions of 50,000 locals each (wasmparser's per-function
        // maximum): 2,050,000 locals, just over the budget.
        let locals = " i32".repeat(50_000);
        let funcs: String = (0..41).map(|_| format!("(func (local{locals}))")).collect();
        let bytes = wat::parse_str(format!("(component (core module {funcs}))")).unwrap();
        let dir = TempDir::new("hostile");
        let rt = runtime(&dir.0);
        let t = std::time::Instant::now();
        let e = rt
            .compile_bytes("hostile", &bytes, "hostile.wasm", None, None)
            .err()
            .expect("refused");
        let took = t.elapsed();
        let msg = e.to_string();
        assert!(matches!(e, PluginError::Compile { .. }), "{msg}");
        assert!(msg.contains("2050000 declared locals"), "{msg}");
        assert!(
            msg.contains(&scan::MAX_DECLARED_LOCALS.to_string()),
            "{msg}"
        );
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 0);
        assert!(took < Duration::from_secs(1), "refused in {took:?}");
    }

    #[test]
    fn imports_and_exports_are_checked_before_compiling() {
        let dir = TempDir::new("imports");
        let rt = runtime(&dir.0);
        let foreign = wat::parse_str(
            r#"(component
                 (import "cdrs:plugin/types@1.0.0" (instance))
                 (import "acme:db/query" (instance)))"#,
        )
        .unwrap();
        for world in [None, Some("filter")] {
            let e = rt
                .compile_bytes("f", &foreign, "f.wasm", None, world)
                .err()
                .expect("refused");
            assert!(matches!(e, PluginError::Incompatible { .. }), "{e}");
            assert!(e.to_string().contains("\"acme:db/query\""), "{e}");
        }
        let nothing =
            wat::parse_str(r#"(component (import "cdrs:plugin/types@1.0.0" (instance)))"#).unwrap();
        let e = rt
            .compile_bytes("r", &nothing, "r.wasm", None, Some("router"))
            .err()
            .expect("refused");
        assert!(
            matches!(
                e,
                PluginError::Link {
                    world: "router",
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(r#""init", "route" or "route-packed", "update-targets""#),
            "{msg}"
        );
        let old =
            wat::parse_str(r#"(component (import "cdrs:plugin/types@0.2.0" (instance)))"#).unwrap();
        let e = rt
            .compile_bytes("o", &old, "o.wasm", None, Some("filter"))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("cdrs:plugin@0.2.0"), "{e}");
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 0, "none was compiled");
        // A world not known yet: only the imports are checked.
        let c = rt
            .compile_bytes("n", &nothing, "n.wasm", None, None)
            .expect("any world");
        assert!(!c.cached);
    }

    #[test]
    fn concurrent_compiles_of_one_component_compile_once() {
        let dir = TempDir::new("once");
        let rt = runtime(&dir.0);
        let bytes = std::fs::read(plugin_dir().join("p2c_router.wasm")).unwrap();
        let n = 4;
        let barrier = std::sync::Barrier::new(n);
        let hashes: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        rt.compile_bytes("p2c", &bytes, "p2c.wasm", None, Some("router"))
                            .expect("compiles")
                            .hash
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1, "compiled once");
        assert!(
            rt.in_flight.lock().unwrap().is_empty(),
            "nothing left in flight"
        );
    }

    #[test]
    fn call_percentiles_keep_long_calls() {
        let meta = PluginMeta::with("t", &"0".repeat(64), 0.0, false);
        for ms in [1, 5, 5, 5, 50] {
            meta.observe_call(Duration::from_millis(ms));
        }
        let (p50, p99) = meta.call_percentiles_us();
        assert!((4_990..=5_010).contains(&p50), "p50 {p50}");
        assert!((49_900..=50_100).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn isolate_singles_out_the_bad_items() {
        let items: Vec<u32> = (0..100).collect();
        let mut calls = 0;
        let out = isolate(
            &items,
            &mut |xs: &[u32]| {
                calls += 1;
                if xs.contains(&13) || xs.contains(&77) {
                    Err(PluginError::Trap {
                        name: "t".into(),
                        msg: "boom".into(),
                    })
                } else {
                    Ok(xs.iter().map(|x| Ok(*x)).collect())
                }
            },
            &mut |x, _| Err(*x),
        );
        assert_eq!(out.len(), 100);
        let bad: Vec<u32> = out.iter().filter_map(|r| r.err()).collect();
        assert_eq!(bad, vec![13, 77]);
        assert!(calls < 40, "{calls} calls");
    }

    #[test]
    fn contract_errors_fail_the_whole_batch() {
        let items = [1, 2, 3];
        let out = isolate(
            &items,
            &mut |_: &[i32]| {
                Err(PluginError::Contract {
                    name: "t".into(),
                    msg: "count".into(),
                })
            },
            &mut |x, _| -*x,
        );
        assert_eq!(out, vec![-1, -2, -3]);
    }
}
