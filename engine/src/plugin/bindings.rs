//! Host bindings generated from the WIT contract in `sdk/wit/` (the only
//! `bindgen!` in the crate). The other worlds reuse the filter world's
//! `types` and `host` modules so all share one set of Rust types.

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

/// The `packed-filter` world (since 1.1: verdicts packed).
pub mod packed_filter {
    wasmtime::component::bindgen!({
        world: "packed-filter",
        path: "../sdk/wit",
        with: {
            "cdrs:plugin/types": super::filter::cdrs::plugin::types,
            "cdrs:plugin/host": super::filter::cdrs::plugin::host,
        },
    });
}

/// The `packed-router` world (since 1.1: decisions packed).
pub mod packed_router {
    wasmtime::component::bindgen!({
        world: "packed-router",
        path: "../sdk/wit",
        with: {
            "cdrs:plugin/types": super::filter::cdrs::plugin::types,
            "cdrs:plugin/host": super::filter::cdrs::plugin::host,
        },
    });
}

pub use filter::cdrs::plugin::host;
pub use filter::cdrs::plugin::types;
