//! End-to-end tests: a real Kafka-protocol broker (a Tansu process, or
//! librdkafka's mock cluster for the fast path), real HTTP application
//! servers on 127.0.0.1, the real pipeline and the real Wasm plugins.
//!
//! Every test keeps a ledger of what it produced and checks it against the
//! servers' own logs and the dead-letter topic: each record is delivered,
//! filtered or dead-lettered, and none is lost. One test binary, a module per
//! area, to keep link time down.

mod capacity;
mod chaos;
mod common;
mod conformance;
mod daemon;
mod dashboard;
mod delivery;
mod failures;
mod fleet;
mod flow;
mod gateway;
mod plugins;
mod reload;
mod shadow;
mod streams;
mod swap;
mod tls;
mod tracing;
