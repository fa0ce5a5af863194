//! CDRS, the Client Data Routing Service: consumes Kafka records, runs each
//! through a chain of WebAssembly filter plugins and one router plugin, and
//! delivers it to the application server the router chose from live capacity
//! metrics. The data path, capacity model and plugin contract:
//! `docs/architecture.md`.
//!
//! Stages, one module each, imports running one way (top to bottom):
//! [`daemon`] (wiring, orderly stop), [`admin`] (HTTP admin API),
//! [`reload`] (config reload, file watching), [`control`] (fleet-wide
//! plugin deployments through a Kafka topic), [`source`] (Kafka consumer,
//! per-partition batches), [`pipeline`] (one batch: filter chain, then the
//! router step), [`route`] (router plugin, decision table, fallback, route
//! again), [`dispatch`] (target queues, lanes, retries, circuit breakers),
//! [`sink`] (HTTP POST, `kafka://` targets, dead-letter topic),
//! [`plugin`] (wasmtime runtime, WIT conversions, hot-swap slots),
//! [`capacity`] (target registry and snapshots), [`kafka`] (librdkafka
//! settings), [`offsets`], [`tls`] (TLS files, HTTP clients, the admin
//! acceptor), [`telemetry`] (OpenTelemetry traces of records), and the leaves [`config`], [`record`],
//! [`metrics`], [`events`], [`redact`], [`logging`], [`panic`]. [`testkit`] serves
//! `cdrs demo`, `cdrs bench` and the end-to-end tests.

pub mod admin;
pub mod capacity;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dispatch;
pub mod events;
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
pub mod route;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod testkit;
pub mod tls;
