//! CDRS, the Client Data Routing Service: consumes Kafka records, runs each
//! through a chain of WebAssembly filter plugins and one router plugin, and
//! delivers it to the application server the router chose from live capacity
//! metrics. The
//! data path, capacity model and plugin contract: `docs/architecture.md`.
//!
//! Stages, one module each: [`source`] (Kafka consumer, per-partition
//! batches), [`pipeline`] (filter chain, router, delivery, re-routing),
//! [`plugin`] (wasmtime runtime, filter and router plugins), [`capacity`]
//! (target registry and snapshots), [`sink`] (HTTP delivery, dead-letter
//! topic), [`admin`] (HTTP admin API), [`config`].

pub mod admin;
pub mod capacity;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod dispatch;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod offsets;
pub mod panic;
pub mod pipeline;
pub mod plugin;
pub mod record;
pub mod redact;
pub mod reload;
pub mod sink;
pub mod source;
pub mod testkit;
