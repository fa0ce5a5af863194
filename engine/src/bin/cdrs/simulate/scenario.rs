//! A simulation scenario (TOML): the servers, the arrivals, the CDRS
//! instances routing them and what happens to the servers on a schedule.
//! Built-in scenarios live in `config/scenarios/`, compiled into the binary.

use serde::Deserialize;

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of every random draw (arrivals, keys, service times, the
    /// baselines); the same seed gives the same figures. Default 1.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Simulated time, ms.
    pub duration_ms: u64,
    /// Records arriving before this are not measured, ms. Default a tenth
    /// of `duration_ms`.
    #[serde(default)]
    pub warmup_ms: Option<u64>,
    /// CDRS instances routing at once, each with its own router instance
    /// and view; arrivals are spread over them evenly. Default 1.
    #[serde(default = "d_one")]
    pub instances: usize,
    /// Records per router call at most (`pipeline.batch_size`). Default 64.
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// A partial batch is routed this long after its first record, ms
    /// (`pipeline.batch_linger_ms`). Default 1.
    #[serde(default = "d_linger")]
    pub linger_ms: f64,
    /// Each instance rebuilds its target snapshot this often, ms
    /// (`capacity.refresh_interval_ms`). Default 100.
    #[serde(default = "d_refresh")]
    pub refresh_ms: u64,
    /// Servers report their capacity and in-flight count this often, ms.
    /// Default 200.
    #[serde(default = "d_report_every")]
    pub report_every_ms: u64,
    /// A report reaches the instances this long after it was sent, ms.
    /// Default 0.
    #[serde(default)]
    pub report_delay_ms: u64,
    /// A server whose last report is older than this is down in a view, ms
    /// (`capacity.report_expiry_ms`). Default 2000.
    #[serde(default = "d_expiry")]
    pub report_expiry_ms: u64,
    pub arrivals: Arrivals,
    pub servers: Vec<Server>,
    #[serde(default)]
    pub events: Vec<Event>,
}

fn d_seed() -> u64 {
    1
}
fn d_one() -> usize {
    1
}
fn d_batch() -> usize {
    64
}
fn d_linger() -> f64 {
    1.0
}
fn d_refresh() -> u64 {
    100
}
fn d_report_every() -> u64 {
    200
}
fn d_expiry() -> u64 {
    2_000
}

/// How records arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// Mean records per second, all instances together.
    pub rate_per_s: f64,
    /// `poisson` (default), or `bursty`: Poisson at `burst_factor` × the
    /// rate for `burst_ms`, then silent so the mean holds.
    #[serde(default)]
    pub kind: ArrivalKind,
    #[serde(default = "d_burst_ms")]
    pub burst_ms: f64,
    #[serde(default = "d_burst_factor")]
    pub burst_factor: f64,
    /// Distinct keys. Default 10000.
    #[serde(default = "d_keys")]
    pub keys: usize,
    /// Zipf exponent of key popularity; 0 (default) draws keys uniformly.
    #[serde(default)]
    pub zipf: f64,
    /// `--trace`: captured arrivals replace the drawn ones.
    #[serde(skip)]
    pub trace: Option<std::sync::Arc<Trace>>,
}

/// Arrivals read from a router capture (`cdrs simulate --trace`): each
/// record's time (its Kafka timestamp, relative to the first) and key
/// (renamed: distinct keys stay distinct, popularity is kept; a keyless
/// record gets a key of its own). Replayed from the start again when the
/// scenario runs longer than the trace.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Arrival times, ns from the first record, ascending.
    pub times_ns: Vec<u64>,
    pub keys: Vec<u32>,
    /// One replay's length, ns: the last arrival plus the mean gap.
    pub span_ns: u64,
}

impl Trace {
    /// The arrivals of captured batches, in timestamp order.
    ///
    /// # Errors
    /// No records, or a record without a timestamp.
    pub fn from_capture(batches: &[cdrs::plugin::testbed::CapturedBatch]) -> anyhow::Result<Trace> {
        let mut ids: std::collections::HashMap<Vec<u8>, u32> = Default::default();
        let mut next = 0u32;
        let mut arrivals = Vec::new();
        for r in batches.iter().flat_map(|b| &b.records) {
            let ts = r.timestamp_ms.ok_or_else(|| {
                anyhow::anyhow!(
                    "record at offset {} of {}[{}] has no timestamp_ms; a trace needs each record's time",
                    r.offset,
                    r.topic,
                    r.partition
                )
            })?;
            let key = match &r.key {
                Some(k) => *ids.entry(k.clone()).or_insert_with(|| {
                    next += 1;
                    next - 1
                }),
                None => {
                    next += 1;
                    next - 1
                }
            };
            arrivals.push((ts, key));
        }
        anyhow::ensure!(!arrivals.is_empty(), "the trace has no records");
        arrivals.sort_by_key(|(ts, _)| *ts);
        let first = arrivals[0].0;
        let times_ns: Vec<u64> = arrivals
            .iter()
            .map(|(ts, _)| (ts - first).max(0) as u64 * 1_000_000)
            .collect();
        let last = *times_ns.last().expect("not empty");
        let gap = (last / times_ns.len() as u64).max(1_000_000);
        Ok(Trace {
            keys: arrivals.iter().map(|(_, k)| *k).collect(),
            span_ns: last + gap,
            times_ns,
        })
    }

    /// Mean records per second over one replay.
    pub fn rate_per_s(&self) -> f64 {
        self.times_ns.len() as f64 * 1e9 / self.span_ns as f64
    }

    /// Distinct keys (the keyless records each count as one).
    pub fn distinct_keys(&self) -> usize {
        self.keys
            .iter()
            .copied()
            .max()
            .map_or(0, |k| k as usize + 1)
    }
}

fn d_burst_ms() -> f64 {
    50.0
}
fn d_burst_factor() -> f64 {
    4.0
}
fn d_keys() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    #[default]
    Poisson,
    Bursty,
}

/// One application server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub id: String,
    /// Records it serves at once; more wait in its queue (FIFO).
    pub concurrency: u32,
    /// The capacity it reports (and is configured with). Default
    /// `concurrency`.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Mean service time of one record, ms.
    pub service_ms: f64,
    /// `exponential` (default), `constant`, or `lognormal` (with `sigma`).
    #[serde(default)]
    pub distribution: Distribution,
    #[serde(default = "d_sigma")]
    pub sigma: f64,
}

fn d_sigma() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    #[default]
    Exponential,
    Constant,
    Lognormal,
}

/// Something that happens to a server from `at_ms` to `until_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub at_ms: u64,
    /// Default: to the end.
    #[serde(default)]
    pub until_ms: Option<u64>,
    pub server: String,
    /// Service times multiplied by this.
    #[serde(default)]
    pub slowdown: Option<f64>,
    /// The server is gone: its queued and in-service records fail (their
    /// instance routes them again), it sends no reports, requests to it
    /// fail at once.
    #[serde(default)]
    pub crash: bool,
}

/// The built-in scenarios: `(name, TOML)`.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "heterogeneous",
        include_str!("../../../../../config/scenarios/heterogeneous.toml"),
    ),
    (
        "herding",
        include_str!("../../../../../config/scenarios/herding.toml"),
    ),
    (
        "sim-vs-real",
        include_str!("../../../../../config/scenarios/sim-vs-real.toml"),
    ),
    (
        "slowdown",
        include_str!("../../../../../config/scenarios/slowdown.toml"),
    ),
    (
        "sticky",
        include_str!("../../../../../config/scenarios/sticky.toml"),
    ),
];

impl Scenario {
    /// A built-in scenario by name, or a file.
    ///
    /// # Errors
    /// Neither a built-in name nor a readable file; TOML that does not
    /// parse (the message names the key); a scenario that cannot run
    /// ([`Scenario::problems`]).
    pub fn load(name_or_path: &str) -> anyhow::Result<Scenario> {
        let text = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => (*t).to_string(),
            None => std::fs::read_to_string(name_or_path).map_err(|e| {
                anyhow::anyhow!(
                    "scenario {name_or_path:?} is neither a built-in one ({}) nor a readable file: {e}",
                    BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )
            })?,
        };
        let s: Scenario = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("scenario {name_or_path:?}: {}", e.to_string().trim()))?;
        let problems = s.problems();
        if !problems.is_empty() {
            anyhow::bail!(
                "scenario {name_or_path:?} cannot run:\n  - {}",
                problems.join("\n  - ")
            );
        }
        Ok(s)
    }

    /// What makes the scenario impossible to run, each naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.duration_ms == 0 || self.duration_ms > 3_600_000 {
            out.push(format!(
                "duration_ms: {} is out of range 1..=3600000",
                self.duration_ms
            ));
        }
        if self.warmup_ms.is_some_and(|w| w >= self.duration_ms) {
            out.push("warmup_ms: must be below duration_ms".into());
        }
        if !(1..=64).contains(&self.instances) {
            out.push(format!(
                "instances: {} is out of range 1..=64",
                self.instances
            ));
        }
        if !(1..=10_000).contains(&self.batch) {
            out.push(format!("batch: {} is out of range 1..=10000", self.batch));
        }
        if !(self.linger_ms >= 0.0 && self.linger_ms <= 10_000.0) {
            out.push(format!(
                "linger_ms: {} is out of range 0..=10000",
                self.linger_ms
            ));
        }
        for (key, v) in [
            ("refresh_ms", self.refresh_ms),
            ("report_every_ms", self.report_every_ms),
        ] {
            if !(1..=60_000).contains(&v) {
                out.push(format!("{key}: {v} is out of range 1..=60000"));
            }
        }
        let a = &self.arrivals;
        if !(a.rate_per_s > 0.0 && a.rate_per_s <= 1e7) {
            out.push(format!(
                "arrivals.rate_per_s: {} is out of range (0, 10000000]",
                a.rate_per_s
            ));
        }
        if !(1..=10_000_000).contains(&a.keys) {
            out.push(format!(
                "arrivals.keys: {} is out of range 1..=10000000",
                a.keys
            ));
        }
        if !(0.0..=5.0).contains(&a.zipf) {
            out.push(format!("arrivals.zipf: {} is out of range 0..=5", a.zipf));
        }
        if a.kind == ArrivalKind::Bursty && !(a.burst_factor > 1.0 && a.burst_ms > 0.0) {
            out.push("arrivals: a bursty kind needs burst_factor > 1 and burst_ms > 0".into());
        }
        if self.servers.is_empty() {
            out.push("servers: at least one".into());
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.capacity == Some(0) {
                out.push(format!("servers[{i}].capacity: must be at least 1"));
            }
            if s.concurrency == 0 {
                out.push(format!("servers[{i}].concurrency: must be at least 1"));
            }
            if !(s.service_ms > 0.0 && s.service_ms.is_finite()) {
                out.push(format!("servers[{i}].service_ms: must be above 0"));
            }
            if self.servers[..i].iter().any(|o| o.id == s.id) {
                out.push(format!("servers[{i}].id: {:?} is declared twice", s.id));
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            if !self.servers.iter().any(|s| s.id == e.server) {
                out.push(format!("events[{i}].server: no server {:?}", e.server));
            }
            if e.slowdown.is_some_and(|f| !(f > 0.0 && f.is_finite())) {
                out.push(format!("events[{i}].slowdown: must be above 0"));
            }
            if e.slowdown.is_none() && !e.crash {
                out.push(format!(
                    "events[{i}]: give slowdown = FACTOR or crash = true"
                ));
            }
            if e.until_ms.is_some_and(|u| u <= e.at_ms) {
                out.push(format!("events[{i}].until_ms: must be after at_ms"));
            }
        }
        out
    }

    /// Offered load: arrivals × mean service time ÷ total concurrency.
    pub fn offered_load(&self) -> f64 {
        let work: f64 = self
            .servers
            .iter()
            .map(|s| f64::from(s.concurrency) / s.service_ms)
            .sum();
        self.arrivals.rate_per_s / 1000.0 / work
    }

    pub fn warmup_ms(&self) -> u64 {
        self.warmup_ms.unwrap_or(self.duration_ms / 10)
    }
}
