//! Filter plugins: load, instantiate, call with trap isolation.

use super::bindings::filter::{Filter, FilterPre};
use super::bindings::packed_filter::{PackedFilter, PackedFilterPre};
use super::bindings::types::{Batch, Verdict};
use super::convert::{self, HeaderSelection};
use super::{
    cut_reason, isolate, Compiled, NewInstance, PluginError, PluginMeta, Pool, Runtime, State,
    World,
};
use crate::config::PluginConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::InstancePre;
use wasmtime::Store;

/// A linked component of either filter world.
pub(crate) enum Pre {
    Plain(FilterPre<State>),
    /// `packed-filter` (contract 1.1): verdicts come back as codes.
    Packed(PackedFilterPre<State>),
}

pub(crate) enum Bindings {
    Plain(Filter),
    Packed(PackedFilter),
}

/// The `filter` world (and `packed-filter`) for [`Runtime::link`].
pub(crate) enum FilterWorld {}

impl World for FilterWorld {
    const NAME: &'static str = "filter";
    type Pre = Pre;
    type Bindings = Bindings;
    type Init = ();

    fn link(pre: InstancePre<State>, packed: bool) -> wasmtime::Result<Pre> {
        if packed {
            PackedFilterPre::new(pre).map(Pre::Packed)
        } else {
            FilterPre::new(pre).map(Pre::Plain)
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
    ) -> wasmtime::Result<Result<(), String>> {
        match bindings {
            Bindings::Plain(b) => b.call_init(store, config),
            Bindings::Packed(b) => b.call_init(store, config),
        }
    }
}

struct Instance {
    store: Store<State>,
    bindings: Bindings,
    /// The last batch's buffers, refilled for the next call.
    batch: Batch,
}

/// A loaded filter plugin: compiled once, a pool of initialised instances.
pub struct FilterPlugin {
    pub meta: PluginMeta,
    runtime: Arc<Runtime>,
    pre: Pre,
    config_json: String,
    pool: Pool<Instance>,
    metrics: Arc<Metrics>,
    /// This plugin's `cdrs_plugin_call_duration_seconds` series, looked up
    /// once (a label lookup per call hashed both labels each time).
    call_seconds: prometheus::Histogram,
}

impl FilterPlugin {
    /// Compiles the component, links it against the `filter` world and
    /// creates `plugins.instances` instances, calling `init` on each.
    ///
    /// Errors: read/compile/link failures, or `init` returning an error.
    pub fn load(
        runtime: &Arc<Runtime>,
        cfg: &PluginConfig,
        metrics: Arc<Metrics>,
    ) -> Result<FilterPlugin, PluginError> {
        let compiled =
            runtime.compile(&cfg.name, &cfg.path, cfg.sha256.as_deref(), Some("filter"))?;
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
    ) -> Result<FilterPlugin, PluginError> {
        let pre = runtime.link::<FilterWorld>(name, &compiled.component)?;
        let mut plugin = FilterPlugin {
            meta: PluginMeta::new(name, &compiled),
            runtime: runtime.clone(),
            pre,
            config_json,
            pool: Pool::new(Vec::new()),
            call_seconds: metrics.plugin_call_seconds.with_label_values(&[
                name,
                &compiled.hash[..12],
                "filter",
            ]),
            metrics,
        };
        let instances = (0..runtime.limits.instances)
            .map(|_| plugin.instantiate())
            .collect::<Result<Vec<_>, _>>()?;
        plugin.pool = Pool::new(instances);
        compiled.persist(runtime);
        tracing::info!(plugin = %plugin.meta.name, version = %plugin.meta.short(), "filter plugin loaded");
        Ok(plugin)
    }

    fn instantiate(&self) -> Result<Instance, PluginError> {
        let NewInstance {
            store, bindings, ..
        } = self.runtime.instantiate::<FilterWorld>(
            &self.meta.name,
            &self.pre,
            &self.config_json,
        )?;
        Ok(Instance {
            store,
            bindings,
            batch: convert::empty_batch(),
        })
    }

    /// One verdict per record. Records that make the plugin trap, miss its
    /// deadline or exhaust its memory get `dead-letter` with the reason; the
    /// instance is replaced and the other records are still filtered.
    pub fn filter(&self, topic: &str, partition: i32, records: &[&Record]) -> Vec<Verdict> {
        let mut slot = self.pool.take();
        let out = isolate(
            records,
            &mut |chunk: &[&Record]| {
                if slot.is_none() {
                    slot = Some(self.instantiate()?);
                }
                let inst = slot.as_mut().expect("instance just created");
                convert::batch_into(
                    &mut inst.batch,
                    topic,
                    partition,
                    chunk,
                    HeaderSelection::All,
                    true,
                );
                self.runtime.arm(&mut inst.store);
                let started = Instant::now();
                let result = match &inst.bindings {
                    Bindings::Plain(b) => b.call_filter(&mut inst.store, &inst.batch).map(Ok),
                    Bindings::Packed(b) => b
                        .call_filter_packed(&mut inst.store, &inst.batch)
                        .map(|v| convert::unpack_verdicts(v, chunk.len())),
                };
                let took = started.elapsed();
                self.call_seconds.observe(took.as_secs_f64());
                self.meta.observe_call(took);
                let err = match result {
                    Ok(Ok(v)) if v.len() == chunk.len() => {
                        if v.iter().all(|v| matches!(v, Verdict::Keep | Verdict::Drop)) {
                            return Ok(v); // nothing to check
                        }
                        return Ok(v.into_iter().map(|v| self.checked(v)).collect());
                    }
                    Ok(Ok(v)) => PluginError::Contract {
                        name: self.meta.name.to_string(),
                        msg: format!("returned {} verdicts for {} records", v.len(), chunk.len()),
                    },
                    Ok(Err(msg)) => PluginError::Contract {
                        name: self.meta.name.to_string(),
                        msg,
                    },
                    Err(e) => {
                        slot = None; // a trapped instance is never reused
                        self.runtime.classify(&self.meta.name, e)
                    }
                };
                self.meta.observe_fault(&err);
                self.metrics
                    .plugin_errors
                    .with_label_values(&[&*self.meta.name, self.meta.short(), err.kind()])
                    .inc();
                tracing::warn!(plugin = %self.meta.name, records = chunk.len(), error = %err, "filter call failed");
                Err(err)
            },
            &mut |_, e| Verdict::DeadLetter(e.to_string()),
        );
        if let Some(i) = slot {
            self.pool.put(i);
        }
        out
    }

    /// Enforces the output limits on one verdict: a `transform` larger than
    /// `plugins.max_output_bytes` becomes `dead-letter` (counted as an
    /// `output` error), a dead-letter reason is cut to 1 KiB.
    fn checked(&self, v: Verdict) -> Verdict {
        match v {
            Verdict::Transform(rw) => {
                let (bytes, max) = (
                    convert::rewrite_bytes(&rw),
                    self.runtime.limits.max_output_bytes,
                );
                if bytes <= max {
                    return Verdict::Transform(rw);
                }
                self.metrics
                    .plugin_errors
                    .with_label_values(&[&*self.meta.name, self.meta.short(), "output"])
                    .inc();
                tracing::warn!(plugin = %self.meta.name, bytes, max, "filter output too large");
                Verdict::DeadLetter(format!(
                    "plugin {:?} returned a record of {bytes} bytes, over plugins.max_output_bytes = {max}",
                    &*self.meta.name
                ))
            }
            Verdict::DeadLetter(reason) => Verdict::DeadLetter(cut_reason(reason)),
            v => v,
        }
    }
}
