//! `fault-router`: a router that misbehaves on purpose, to test the host.
//! Never deploy it. Per record, by key: `panic` → panics (trap); `loop` →
//! spins forever (deadline); `far` → routes to target index 1000 (out of
//! range); `many` → fans out to 100,000 indexes (mostly out of range,
//! repeated); anything else → the first target.

use cdrs_plugin_sdk::router::{Batch, Decision, Router, RouterOptions, Target};

pub struct FaultRouter;

impl Router for FaultRouter {
    fn init(_config: &str) -> Result<(Self, RouterOptions), String> {
        Ok((FaultRouter, RouterOptions::default()))
    }

    fn update_targets(&mut self, _version: u64, _targets: Vec<Target>) {}

    fn route(&mut self, batch: Batch) -> Vec<Decision> {
        batch
            .records()
            .map(|r| match r.key() {
                Some(b"panic") => panic!("fault-router: panic at offset {}", r.offset()),
                Some(b"loop") => loop {
                    std::hint::black_box(r.offset());
                },
                Some(b"far") => Decision::Route(1000),
                Some(b"many") => Decision::RouteMany((0..100_000).map(|i| i % 3).collect()),
                _ => Decision::Route(0),
            })
            .collect()
    }
}

cdrs_plugin_sdk::export_router!(FaultRouter);
