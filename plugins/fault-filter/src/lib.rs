//! `fault-filter`: a filter that misbehaves on purpose, to test the host's
//! sandbox. Never deploy it. Per record, by value:
//!
//! * contains `"poison":true` or equals `panic` → panics (a trap);
//! * `loop` → spins forever (the call deadline must stop it);
//! * `oom` → allocates until memory runs out (the memory cap must stop it);
//! * `stack` → recurses without end (stack overflow trap);
//! * `unreachable` → executes the Wasm `unreachable` instruction (a trap);
//! * `huge` → returns a `transform` with a 4 MiB value (over the host's
//!   output limit);
//! * `long-reason` → dead-letters with a 100 KiB reason (the host cuts it);
//! * `env` → dead-letters with what it could see of the environment, files,
//!   network and clock, so a test can check that nothing was granted;
//! * `log` → logs `fault-filter: log at offset N` at WARN through the
//!   host and keeps the record;
//! * anything else → keep.
//!
//! Config (JSON, unknown keys ignored): `{"verdicts": "short"}` makes it
//! return one verdict too few, to test the one-verdict-per-record rule;
//! `{"stamp_header": "x"}` adds header `x: fault-filter` to kept records.

use cdrs_plugin_sdk::filter::{stamp, Batch, Filter, Verdict};
use cdrs_plugin_sdk::log;

pub struct FaultFilter {
    short: bool,
    stamp_header: Option<String>,
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

fn probe_environment() -> String {
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let file = std::fs::read_to_string("/etc/passwd").is_ok();
    let dir = std::fs::read_dir("/").is_ok();
    let net = std::net::TcpStream::connect("127.0.0.1:1").is_ok();
    // Clocks finer than the host's `now-ms` would show sub-millisecond parts.
    let fine = (0..16).any(|_| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        !wall.subsec_nanos().is_multiple_of(1_000_000)
    });
    let clock = if fine { "fine" } else { "ms" };
    format!("env={env} args={args} file={file} dir={dir} net={net} clock={clock}")
}

impl Filter for FaultFilter {
    fn init(config: &str) -> Result<Self, String> {
        let c: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| format!("invalid fault-filter config: {e}"))?;
        Ok(FaultFilter {
            short: c["verdicts"] == "short",
            stamp_header: c["stamp_header"].as_str().map(str::to_owned),
        })
    }

    fn filter(&mut self, batch: Batch) -> Vec<Verdict> {
        let mut out: Vec<Verdict> = batch
            .records()
            .map(|m| {
                let v = m.value().unwrap_or_default();
                let text = String::from_utf8_lossy(v);
                match &*text {
                    "panic" => panic!("fault-filter: panic at offset {}", m.offset()),
                    "loop" => loop {
                        std::hint::black_box(m.offset());
                    },
                    "oom" => {
                        let mut hoard: Vec<Vec<u8>> = Vec::new();
                        loop {
                            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                        }
                    }
                    "stack" => Verdict::DeadLetter(recurse(0).to_string()),
                    "unreachable" => {
                        #[cfg(target_arch = "wasm32")]
                        core::arch::wasm32::unreachable();
                        #[cfg(not(target_arch = "wasm32"))]
                        panic!("unreachable")
                    }
                    "huge" => {
                        let mut rw = m.to_rewrite();
                        rw.value = Some(vec![b'x'; 4 << 20]);
                        Verdict::Transform(rw)
                    }
                    "long-reason" => Verdict::DeadLetter("why ".repeat(25_600)),
                    "env" => Verdict::DeadLetter(probe_environment()),
                    "log" => {
                        log::warn(&format!("fault-filter: log at offset {}", m.offset()));
                        Verdict::Keep
                    }
                    t if t.contains("\"poison\":true") => {
                        panic!("fault-filter: poison at offset {}", m.offset())
                    }
                    _ => match &self.stamp_header {
                        Some(h) => Verdict::Transform(stamp(&m, h, "fault-filter")),
                        None => Verdict::Keep,
                    },
                }
            })
            .collect();
        if self.short {
            out.pop();
        }
        out
    }
}

cdrs_plugin_sdk::export_filter!(FaultFilter);
