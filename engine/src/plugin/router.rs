//! Router plugins: load, push target snapshots on change, call with trap
//! isolation, and map decisions (indexes into the pushed snapshot) back to
//! targets.

use super::bindings::packed_router::{PackedRouter, PackedRouterPre};
use super::bindings::router::{Router, RouterPre};
use super::bindings::types::{Batch, Decision, RouterOptions};
use super::convert::{self, HeaderSelection};
use super::{
    cut_reason, isolate, Compiled, NewInstance, PluginError, PluginMeta, Pool, Runtime, State,
    World,
};
use crate::capacity::Snapshot;
use crate::config::PluginConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::InstancePre;
use wasmtime::Store;

/// Target indexes of one decision.
pub type Targets = smallvec::SmallVec<[usize; 2]>;

/// The host's reading of one router decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Deliver to these targets (indexes into the snapshot given to `route`);
    /// inline up to two, so the usual single target costs no allocation.
    Targets(Targets),
    Drop,
    DeadLetter(String),
    /// The host's fallback policy picks the target.
    Default,
}

/// A linked component of either router world.
pub(crate) enum Pre {
    Plain(RouterPre<State>),
    /// `packed-router` (contract 1.1): decisions come back as codes.
    Packed(PackedRouterPre<State>),
}

pub(crate) enum Bindings {
    Plain(Router),
    Packed(PackedRouter),
}

/// The `router` world (and `packed-router`) for [`Runtime::link`].
pub(crate) enum RouterWorld {}

impl World for RouterWorld {
    const NAME: &'static str = "router";
    type Pre = Pre;
    type Bindings = Bindings;
    type Init = RouterOptions;

    fn link(pre: InstancePre<State>, packed: bool) -> wasmtime::Result<Pre> {
        if packed {
            PackedRouterPre::new(pre).map(Pre::Packed)
        } else {
            RouterPre::new(pre).map(Pre::Plain)
        }
    }

    fn instantiate(pre: &Pre, store: &mut Store<State>) -> wasmtime::Result<Bindings> {
        match pre {
            Pre::Plain(pre) => pre.instantiate(store).map(Bindings::Plain),
            Pre::Packed(pre) => pre.instantiate(store).map(Bindings::Packed),
        }
    }

    fn init(
        bindings: &Bindings,
        store: &mut Store<State>,
        config: &str,
    ) -> wasmtime::Result<Result<RouterOptions, String>> {
        match bindings {
            Bindings::Plain(b) => b.call_init(store, config),
            Bindings::Packed(b) => b.call_init(store, config),
        }
    }
}

struct Instance {
    store: Store<State>,
    bindings: Bindings,
    /// Version of the snapshot this instance last received.
    pushed: Option<u64>,
    /// The last batch's buffers, refilled for the next call.
    batch: Batch,
}

/// A loaded router plugin.
pub struct RouterPlugin {
    pub meta: PluginMeta,
    /// What the router asked to see of each record.
    pub options: RouterOptions,
    runtime: Arc<Runtime>,
    pre: Pre,
    config_json: String,
    pool: Pool<Instance>,
    metrics: Arc<Metrics>,
    /// This plugin's `cdrs_plugin_call_duration_seconds` series, looked up
    /// once (a label lookup per call hashed both labels each time).
    call_seconds: prometheus::Histogram,
}

impl RouterPlugin {
    /// Compiles, links against the `router` world, and creates and `init`s
    /// `plugins.instances` instances.
    ///
    /// # Errors
    /// [`PluginError`]: the file cannot be read or compiled, it does not link
    /// against the router world, or an `init` refuses its config.
    pub fn load(
        runtime: &Arc<Runtime>,
        cfg: &PluginConfig,
        metrics: Arc<Metrics>,
    ) -> Result<RouterPlugin, PluginError> {
        let compiled =
            runtime.compile(&cfg.name, &cfg.path, cfg.sha256.as_deref(), Some("router"))?;
        Self::from_compiled(runtime, &cfg.name, compiled, cfg.config_json(), metrics)
    }

    /// Links an already compiled component and creates its instances; once
    /// every `init` returned Ok the compiled code goes to the compiled cache
    /// ([`Compiled::persist`]), so a refused component is never cached.
    pub fn from_compiled(
        runtime: &Arc<Runtime>,
        name: &str,
        compiled: Compiled,
        config_json: String,
        metrics: Arc<Metrics>,
    ) -> Result<RouterPlugin, PluginError> {
        let pre = runtime.link::<RouterWorld>(name, &compiled.component)?;
        let mut plugin = RouterPlugin {
            meta: PluginMeta::new(name, &compiled),
            options: RouterOptions {
                headers: Vec::new(),
                needs_value: false,
            },
            runtime: runtime.clone(),
            pre,
            config_json,
            pool: Pool::new(Vec::new()),
            call_seconds: metrics.plugin_call_seconds.with_label_values(&[
                name,
                &compiled.hash[..12],
                "router",
            ]),
            metrics,
        };
        let mut instances = Vec::new();
        for _ in 0..runtime.limits.instances {
            let (inst, options) = plugin.instantiate()?;
            plugin.options = options;
            instances.push(inst);
        }
        plugin.pool = Pool::new(instances);
        compiled.persist(runtime);
        tracing::info!(plugin = %plugin.meta.name, version = %plugin.meta.short(),
            headers = ?plugin.options.headers, needs_value = plugin.options.needs_value,
            "router plugin loaded");
        Ok(plugin)
    }

    fn instantiate(&self) -> Result<(Instance, RouterOptions), PluginError> {
        let NewInstance {
            store,
            bindings,
            init,
        } = self.runtime.instantiate::<RouterWorld>(
            &self.meta.name,
            &self.pre,
            &self.config_json,
        )?;
        let instance = Instance {
            store,
            bindings,
            pushed: None,
            batch: convert::empty_batch(),
        };
        Ok((instance, init))
    }

    /// One [`Route`] per record, decided against `snapshot` (pushed to the
    /// instance first if it has not seen this version). Out-of-range target
    /// indexes become [`Route::Default`], and so do records the plugin failed
    /// on (isolated by re-running the batch in halves; the failure is logged
    /// and counted): the host's fallback policy places them.
    pub fn route(
        &self,
        snapshot: &Arc<Snapshot>,
        topic: &str,
        partition: i32,
        records: &[&Record],
    ) -> Vec<Route> {
        let mut slot = self.pool.take();
        let n_targets = snapshot.targets.len();
        let out = isolate(
            records,
            &mut |chunk: &[&Record]| {
                if slot.is_none() {
                    slot = Some(self.instantiate()?.0);
                }
                let inst = slot.as_mut().expect("instance just created");
                let started = Instant::now();
                let result = (|| {
                    if inst.pushed != Some(snapshot.version) {
                        let targets: Vec<_> =
                            snapshot.targets.iter().map(convert::wit_target).collect();
                        self.runtime.arm(&mut inst.store);
                        match &inst.bindings {
                            Bindings::Plain(b) => {
                                b.call_update_targets(&mut inst.store, snapshot.version, &targets)
                            }
                            Bindings::Packed(b) => {
                                b.call_update_targets(&mut inst.store, snapshot.version, &targets)
                            }
                        }?;
                        inst.pushed = Some(snapshot.version);
                    }
                    convert::batch_into(
                        &mut inst.batch,
                        topic,
                        partition,
                        chunk,
                        HeaderSelection::Only(&self.options.headers),
                        self.options.needs_value,
                    );
                    self.runtime.arm(&mut inst.store);
                    let to_route = |d| to_route(d, n_targets);
                    match &inst.bindings {
                        Bindings::Plain(b) => b
                            .call_route(&mut inst.store, &inst.batch)
                            .map(|ds| Ok(ds.into_iter().map(to_route).collect::<Vec<_>>())),
                        Bindings::Packed(b) => b
                            .call_route_packed(&mut inst.store, &inst.batch)
                            .map(|ds| convert::unpack_decisions(ds, chunk.len(), to_route)),
                    }
                })();
                let took = started.elapsed();
                self.call_seconds.observe(took.as_secs_f64());
                self.meta.observe_call(took);
                let err = match result {
                    Ok(Ok(routes)) if routes.len() == chunk.len() => return Ok(routes),
                    Ok(Ok(v)) => PluginError::Contract {
                        name: self.meta.name.to_string(),
                        msg: format!("returned {} decisions for {} records", v.len(), chunk.len()),
                    },
                    Ok(Err(msg)) => PluginError::Contract {
                        name: self.meta.name.to_string(),
                        msg,
                    },
                    Err(e) => {
                        slot = None;
                        self.runtime.classify(&self.meta.name, e)
                    }
                };
                self.meta.observe_fault(&err);
                self.metrics
                    .plugin_errors
                    .with_label_values(&[&*self.meta.name, self.meta.short(), err.kind()])
                    .inc();
                tracing::warn!(plugin = %self.meta.name, records = chunk.len(), error = %err, "router call failed");
                Err(err)
            },
            // A router that fails (trap, deadline, memory, broken contract)
            // costs no record: the host's fallback policy places it.
            &mut |_, _| Route::Default,
        );
        if let Some(i) = slot {
            self.pool.put(i);
        }
        out
    }
}

fn to_route(d: Decision, n_targets: usize) -> Route {
    match d {
        Decision::Route(i) if (i as usize) < n_targets => {
            Route::Targets(smallvec::smallvec![i as usize])
        }
        Decision::Route(_) => Route::Default,
        Decision::RouteMany(is) => {
            let mut v: Targets = is
                .into_iter()
                .map(|i| i as usize)
                .filter(|&i| i < n_targets)
                .collect();
            v.sort_unstable();
            v.dedup();
            if v.is_empty() {
                Route::Default
            } else {
                Route::Targets(v)
            }
        }
        Decision::Drop => Route::Drop,
        Decision::DeadLetter(reason) => Route::DeadLetter(cut_reason(reason)),
        Decision::Default => Route::Default,
    }
}
