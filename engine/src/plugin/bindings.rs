//! Host bindings generated from the WIT contract in `sdk/wit/` (the only
//! `bindgen!` in the crate). The router world reuses the filter world's
//! `types` and `host` modules so both share one set of Rust types.

/// The `filter` world.
pub mod filter {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "../sdk/wit",
    });
}

/// The `router` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../sdk/wit",
        with: {
            "cdrs:plugin/types": super::filter::cdrs::plugin::types,
            "cdrs:plugin/host": super::filter::cdrs::plugin::host,
        },
    });
}

pub use filter::cdrs::plugin::host;
pub use filter::cdrs::plugin::types;
