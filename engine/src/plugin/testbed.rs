//! Running a plugin on fixtures, off the data path: what `cdrs plugin test`
//! and the conformance suite use. The plugin goes through the same runtime,
//! conversions and checks as in the daemon (sandbox, deadline, memory cap,
//! one answer per record, out-of-range targets → `default`); only the
//! records come from a file instead of Kafka.
//!
//! Fixture formats (also in `sdk/example-policy.md`):
//!
//! * records, JSON lines: `offset` (default: the line's index),
//!   `timestamp_ms`, `key` (UTF-8 string; `key_base64` for other bytes),
//!   `value` (a string is its UTF-8 bytes, other JSON its compact text;
//!   `value_base64` for other bytes), `headers` (`[[key, value-or-null], …]`);
//! * targets, a JSON array: `id` and the `target` fields of the contract in
//!   snake_case, each with a default (weight 100, capacity 100, health
//!   healthy, the rest 0 / none);
//! * output, one JSON line per record: `{"offset":0,"decision":"route",
//!   "targets":["b"]}`, `{"decision":"default"}`, `"drop"`, `"dead-letter"`
//!   with `reason`; filters: `{"verdict":"keep"}`, `"drop"`, `"dead-letter"`,
//!   `"transform"` with `key`, `value`, `headers`. A plugin whose `init`
//!   fails gives the single line `{"init":"error","message":"…"}`.

use super::bindings::types::Verdict;
use super::contract::Inspection;
use super::filter::FilterPlugin;
use super::router::{Route, RouterPlugin};
use super::{PluginError, Runtime};
use crate::capacity::{Health, Snapshot, TargetView};
use crate::metrics::Metrics;
use crate::record::Record;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Topic name the fixture records carry.
pub const FIXTURE_TOPIC: &str = "fixtures";

/// A fixture problem: the file, the line (1-based, 0 for the whole file) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {msg}", if *line > 0 { format!(" line {line}") } else { String::new() })]
pub struct FixtureError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

fn bytes_field(
    o: &serde_json::Map<String, Value>,
    name: &str,
    any_json: bool,
) -> Result<Option<Vec<u8>>, String> {
    let b64 = format!("{name}_base64");
    match (o.get(name), o.get(&b64)) {
        (Some(_), Some(_)) => Err(format!("give `{name}` or `{b64}`, not both")),
        (None | Some(Value::Null), None) => Ok(None),
        (Some(Value::String(s)), None) => Ok(Some(s.as_bytes().to_vec())),
        (Some(v), None) if any_json => Ok(Some(v.to_string().into_bytes())),
        (Some(_), None) => Err(format!("`{name}` must be a string or null")),
        (None, Some(Value::String(s))) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| format!("`{b64}` is not base64: {e}")),
        (None, Some(_)) => Err(format!("`{b64}` must be a base64 string")),
    }
}

fn record_from(i: usize, v: &Value) -> Result<Record, String> {
    let o = v
        .as_object()
        .ok_or("expected a JSON object (one record per line)")?;
    const KNOWN: [&str; 7] = [
        "offset",
        "timestamp_ms",
        "key",
        "key_base64",
        "value",
        "value_base64",
        "headers",
    ];
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown field `{k}`; known: {}", KNOWN.join(", ")));
    }
    let int = |name: &str| -> Result<Option<i64>, String> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or(format!("`{name}` must be an integer")),
        }
    };
    let headers = match o.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(hs)) => hs
            .iter()
            .map(|h| match h.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => {
                    Ok((k.clone(), Some(v.as_bytes().to_vec())))
                }
                Some([Value::String(k), Value::Null]) => Ok((k.clone(), None)),
                _ => Err(format!(
                    "`headers` entries are [key, value-or-null] string pairs, got {h}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`headers` must be a list of [key, value-or-null] pairs".into()),
    };
    Ok(Record {
        topic: FIXTURE_TOPIC.into(),
        partition: 0,
        offset: int("offset")?.unwrap_or(i as i64),
        timestamp_ms: int("timestamp_ms")?,
        key: bytes_field(o, "key", false)?,
        value: bytes_field(o, "value", true)?,
        headers,
    })
}

/// The JSON values of a JSON-lines file with their 1-based line numbers
/// (blank lines skipped).
fn read_json_lines(path: &Path) -> Result<Vec<(usize, Value)>, FixtureError> {
    let file = path.display().to_string();
    let err = |line: usize, msg: String| FixtureError {
        file: file.clone(),
        line,
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(0, e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map(|v| (n + 1, v))
                .map_err(|e| err(n + 1, format!("not JSON: {e}")))
        })
        .collect()
}

/// Reads fixture records (JSON lines; blank lines skipped).
///
/// # Errors
/// [`FixtureError`]: the file cannot be read, or a line is not a valid record
/// (its line number named).
pub fn read_records(path: &Path) -> Result<Vec<Record>, FixtureError> {
    read_json_lines(path)?
        .iter()
        .enumerate()
        .map(|(i, (line, v))| {
            record_from(i, v).map_err(|msg| FixtureError {
                file: path.display().to_string(),
                line: *line,
                msg,
            })
        })
        .collect()
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TargetFixture {
    id: String,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "hundred")]
    weight: u32,
    #[serde(default = "hundred")]
    capacity: u32,
    #[serde(default)]
    inflight: u32,
    #[serde(default)]
    queue_depth: u32,
    #[serde(default)]
    cpu_permille: u16,
    #[serde(default)]
    latency_ewma_us: u32,
    #[serde(default)]
    error_rate_permille: u16,
    #[serde(default = "healthy")]
    health: HealthFixture,
    #[serde(default)]
    report_age_ms: Option<u64>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum HealthFixture {
    Healthy,
    Degraded,
    Down,
}

fn hundred() -> u32 {
    100
}
fn healthy() -> HealthFixture {
    HealthFixture::Healthy
}

/// Reads a target snapshot (a JSON array of targets).
///
/// # Errors
/// [`FixtureError`]: the file cannot be read, or is not a JSON array of valid
/// targets.
pub fn read_targets(path: &Path) -> Result<Vec<TargetView>, FixtureError> {
    let file = path.display().to_string();
    let err = |msg: String| FixtureError {
        file: file.clone(),
        line: 0,
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let raw: Vec<TargetFixture> = serde_json::from_str(&text).map_err(|e| {
        err(format!(
            "{e} (expected a JSON array of targets: id, weight, capacity, inflight, \
             health = healthy|degraded|down, …)"
        ))
    })?;
    Ok(targets_from(raw))
}

fn targets_from(raw: Vec<TargetFixture>) -> Vec<TargetView> {
    raw.into_iter()
        .map(|t| TargetView {
            id: t.id.into(),
            url: "".into(),
            zone: t.zone,
            labels: t.labels.into_iter().collect(),
            weight: t.weight,
            capacity: t.capacity,
            inflight: t.inflight,
            own_inflight: 0,
            queue_depth: t.queue_depth,
            cpu_permille: t.cpu_permille,
            mem_permille: 0,
            latency_p99_ms: 0,
            latency_ewma_us: t.latency_ewma_us,
            error_rate_permille: t.error_rate_permille,
            health: match t.health {
                HealthFixture::Healthy => Health::Healthy,
                HealthFixture::Degraded => Health::Degraded,
                HealthFixture::Down => Health::Down,
            },
            reason: None,
            report_age_ms: t.report_age_ms,
            feed: None,
            phi: None,
            dynamic: false,
            slow_start_percent: None,
            subscribers: None,
        })
        .collect()
}

/// The result of running a plugin on fixtures.
#[derive(Debug)]
pub struct TestRun {
    /// `filter` or `router`.
    pub world: &'static str,
    /// One JSON line per record, or the single `init` error line.
    pub lines: Vec<Value>,
    /// Compile (or cache load) time, ms.
    pub load_ms: f64,
    /// Records and wall time of each batch call (conversion included).
    pub calls: Vec<(usize, Duration)>,
    /// Failed plugin calls (trap, deadline, memory cap, wrong answer count,
    /// oversized output): the daemon would have dead-lettered (filters) or
    /// placed by its default policy (routers) the records involved, and so
    /// do the lines above. Each is logged as it happens.
    pub errors: u64,
}

impl TestRun {
    /// Mean call time per record, µs.
    pub fn us_per_record(&self) -> f64 {
        let n: usize = self.calls.iter().map(|c| c.0).sum();
        let t: Duration = self.calls.iter().map(|c| c.1).sum();
        if n == 0 {
            0.0
        } else {
            t.as_secs_f64() * 1e6 / n as f64
        }
    }
}

/// How the output shows bytes: a UTF-8 string under `name`, else base64
/// under `name_base64` (the records format).
fn show_bytes(o: &mut serde_json::Map<String, Value>, name: &str, b: Option<&[u8]>) {
    match b.map(std::str::from_utf8) {
        None => {
            o.insert(name.into(), Value::Null);
        }
        Some(Ok(s)) => {
            o.insert(name.into(), Value::String(s.into()));
        }
        Some(Err(_)) => {
            let b = b.expect("checked above");
            o.insert(
                format!("{name}_base64"),
                base64::engine::general_purpose::STANDARD.encode(b).into(),
            );
        }
    }
}

fn verdict_line(offset: i64, v: Verdict) -> Value {
    match v {
        Verdict::Keep => json!({"offset": offset, "verdict": "keep"}),
        Verdict::Drop => json!({"offset": offset, "verdict": "drop"}),
        Verdict::DeadLetter(reason) => {
            json!({"offset": offset, "verdict": "dead-letter", "reason": reason})
        }
        Verdict::Transform(rw) => {
            let mut o = serde_json::Map::new();
            o.insert("offset".into(), offset.into());
            o.insert("verdict".into(), "transform".into());
            show_bytes(&mut o, "key", rw.key.as_deref());
            show_bytes(&mut o, "value", rw.value.as_deref());
            let headers: Vec<Value> = rw
                .headers
                .iter()
                .map(|h| {
                    let v = h
                        .value
                        .as_deref()
                        .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()));
                    json!([h.key, v])
                })
                .collect();
            o.insert("headers".into(), headers.into());
            Value::Object(o)
        }
    }
}

fn route_line(offset: i64, r: &Route, snapshot: &Snapshot) -> Value {
    match r {
        Route::Targets(ts) => {
            let ids: Vec<&str> = ts.iter().map(|&i| &*snapshot.targets[i].id).collect();
            json!({"offset": offset, "decision": "route", "targets": ids})
        }
        Route::Drop => json!({"offset": offset, "decision": "drop"}),
        Route::DeadLetter(reason) => {
            json!({"offset": offset, "decision": "dead-letter", "reason": reason})
        }
        Route::Default => json!({"offset": offset, "decision": "default"}),
    }
}

/// Runs the component at `wasm` on `records` in batches of `batch` (the
/// world is read from its exports), routers against one snapshot of
/// `targets`, with `config` (JSON) given to `init`.
///
/// Errors: the plugin cannot be read, compiled or linked (an `init` that
/// fails is a result, not an error: the `{"init":"error"}` line).
pub fn run(
    runtime: &Arc<Runtime>,
    wasm: &Path,
    records: &[Record],
    targets: &[TargetView],
    config: &str,
    batch: usize,
) -> Result<TestRun, PluginError> {
    let name = wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    // The world is read from the exports once compiled; the compiled code
    // is cached by `from_compiled` when `init` accepts it.
    let compiled = runtime.compile(&name, wasm, None, None)?;
    let load_ms = compiled.load_ms;
    let world = Inspection::of(runtime.engine(), &compiled.component)
        .world
        .unwrap_or("filter");
    let metrics = Arc::new(Metrics::new());
    let errors = {
        let (metrics, name) = (metrics.clone(), name.clone());
        move || -> u64 {
            ["trap", "deadline", "memory", "contract", "output"]
                .iter()
                .map(|kind| metrics.plugin_errors_of(name.as_str(), kind))
                .sum()
        }
    };
    let refs: Vec<&Record> = records.iter().collect();
    let mut calls = Vec::new();
    let init_failed = |e: PluginError| match e {
        PluginError::Init { msg, .. } => Ok(vec![json!({"init": "error", "message": msg})]),
        e => Err(e),
    };
    let lines = if world == "router" {
        match RouterPlugin::from_compiled(runtime, &name, compiled, config.into(), metrics) {
            Err(e) => init_failed(e)?,
            Ok(plugin) => {
                let snapshot = Arc::new(Snapshot {
                    version: 1,
                    targets: targets.to_vec(),
                });
                let mut lines = Vec::with_capacity(records.len());
                for chunk in refs.chunks(batch.max(1)) {
                    let started = Instant::now();
                    let routes = plugin.route(&snapshot, FIXTURE_TOPIC, 0, chunk);
                    calls.push((chunk.len(), started.elapsed()));
                    lines.extend(
                        chunk
                            .iter()
                            .zip(&routes)
                            .map(|(r, d)| route_line(r.offset, d, &snapshot)),
                    );
                }
                lines
            }
        }
    } else {
        match FilterPlugin::from_compiled(runtime, &name, compiled, config.into(), metrics) {
            Err(e) => init_failed(e)?,
            Ok(plugin) => {
                let mut lines = Vec::with_capacity(records.len());
                for chunk in refs.chunks(batch.max(1)) {
                    let started = Instant::now();
                    let verdicts = plugin.filter(FIXTURE_TOPIC, 0, chunk);
                    calls.push((chunk.len(), started.elapsed()));
                    lines.extend(
                        chunk
                            .iter()
                            .zip(verdicts)
                            .map(|(r, v)| verdict_line(r.offset, v)),
                    );
                }
                lines
            }
        }
    };
    Ok(TestRun {
        world,
        lines,
        load_ms,
        calls,
        errors: errors(),
    })
}

/// What `delivery.key_order = "strict"` makes of a router's `lines` for
/// `records` (one line per record, as [`run`] gives them) when no record is
/// acknowledged during the run: once a key's record is routed to one
/// target, the key's later records join it there, whatever the router said
/// (the dispatcher's in-flight lane, `docs/reliability.md`). A line the host
/// would place elsewhere gains `"placed"` (the target's id) and `"why"`.
/// Keyless records and multi-target, drop, dead-letter and default
/// decisions are left as they are.
pub fn strict_key_order(records: &[Record], lines: &mut [Value]) {
    if records.len() != lines.len() {
        return; // an init error: one line
    }
    let mut lane: std::collections::HashMap<&[u8], String> = Default::default();
    for (r, line) in records.iter().zip(lines.iter_mut()) {
        let (Some(key), Some([target])) = (
            r.key.as_deref(),
            line.get("targets")
                .and_then(Value::as_array)
                .map(Vec::as_slice),
        ) else {
            continue;
        };
        let Some(target) = target.as_str() else {
            continue;
        };
        match lane.get(key) {
            None => {
                lane.insert(key, target.to_string());
            }
            Some(first) if first != target => {
                let why = format!(
                    "key {:?} has records in flight on {first:?} (delivery.key_order = \"strict\")",
                    String::from_utf8_lossy(key)
                );
                line["placed"] = first.as_str().into();
                line["why"] = why.into();
            }
            Some(_) => {}
        }
    }
}

/// Reads expected lines (JSON lines, blank lines skipped).
///
/// # Errors
/// [`FixtureError`]: the file cannot be read, or a line is not JSON.
pub fn read_expect(path: &Path) -> Result<Vec<Value>, FixtureError> {
    Ok(read_json_lines(path)?.into_iter().map(|(_, v)| v).collect())
}

/// Differences between expected and actual lines, one message each (empty:
/// they match). An expected `{"init":"error"}` matches any init error
/// (messages differ between languages).
pub fn diff(expect: &[Value], got: &[Value]) -> Vec<String> {
    let init_error = |v: &Value| v.get("init").and_then(Value::as_str) == Some("error");
    if let ([e], [g]) = (expect, got) {
        if init_error(e) && init_error(g) {
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    for (i, (e, g)) in expect.iter().zip(got).enumerate() {
        if e != g {
            out.push(format!("line {}: expected {e}\n          got {g}", i + 1));
        }
    }
    for (i, e) in expect.iter().enumerate().skip(got.len()) {
        out.push(format!("line {}: expected {e}, got nothing", i + 1));
    }
    for (i, g) in got.iter().enumerate().skip(expect.len()) {
        out.push(format!("line {}: not expected: {g}", i + 1));
    }
    out
}

/// A target in the fixture format (the inverse of [`read_targets`]).
pub fn target_json(t: &TargetView) -> Value {
    let fixture = TargetFixture {
        id: t.id.to_string(),
        zone: t.zone.clone(),
        labels: t.labels.iter().cloned().collect(),
        weight: t.weight,
        capacity: t.capacity,
        inflight: t.inflight,
        queue_depth: t.queue_depth,
        cpu_permille: t.cpu_permille,
        latency_ewma_us: t.latency_ewma_us,
        error_rate_permille: t.error_rate_permille,
        health: match t.health {
            Health::Healthy => HealthFixture::Healthy,
            Health::Degraded => HealthFixture::Degraded,
            Health::Down => HealthFixture::Down,
        },
        report_age_ms: t.report_age_ms,
    };
    serde_json::to_value(fixture).unwrap_or(Value::Null)
}

/// A record in the fixture format (the inverse of [`read_records`]), with
/// only the headers named in `headers` and the value only if `value`.
pub fn record_json(r: &Record, headers: &[String], value: bool) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("offset".into(), r.offset.into());
    if let Some(t) = r.timestamp_ms {
        o.insert("timestamp_ms".into(), t.into());
    }
    show_bytes(&mut o, "key", r.key.as_deref());
    if value {
        show_bytes(&mut o, "value", r.value.as_deref());
    }
    let hs: Vec<Value> = r
        .headers
        .iter()
        .filter(|(k, _)| headers.contains(k))
        .map(|(k, v)| {
            let v = v
                .as_deref()
                .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()));
            json!([k, v])
        })
        .collect();
    if !hs.is_empty() {
        o.insert("headers".into(), hs.into());
    }
    Value::Object(o)
}

/// One captured router batch (`GET /v1/plugins/{router}/capture`, one JSON
/// line each): `topic`, `partition`, `router` and `version` (the live
/// router's name and sha256), `targets` (the snapshot it was given, in the
/// targets fixture format), `records` (the records fixture format, with
/// the headers the router asked for and the value only if it asked for
/// it) and `decisions` (the live router's, one output line per record).
pub fn capture_line(
    router: (&str, &str),
    topic: &str,
    partition: i32,
    snapshot: &Snapshot,
    records: &[&Record],
    routes: &[Route],
    options: (&[String], bool),
) -> Value {
    json!({
        "topic": topic,
        "partition": partition,
        "router": router.0,
        "version": router.1,
        "targets": snapshot.targets.iter().map(target_json).collect::<Vec<_>>(),
        "records": records.iter().map(|r| record_json(r, options.0, options.1)).collect::<Vec<_>>(),
        "decisions": records.iter().zip(routes).map(|(r, d)| route_line(r.offset, d, snapshot)).collect::<Vec<_>>(),
    })
}

/// A batch read back from a capture file.
#[derive(Debug, Clone)]
pub struct CapturedBatch {
    pub topic: String,
    pub partition: i32,
    pub targets: Vec<TargetView>,
    pub records: Vec<Record>,
    /// The live router's decisions, one output line per record.
    pub decisions: Vec<Value>,
}

/// Reads a capture file (JSON lines, one batch each, see [`capture_line`]).
///
/// # Errors
/// [`FixtureError`]: the file cannot be read, or a line is not a batch:
/// its line number and the field named.
pub fn read_capture(path: &Path) -> Result<Vec<CapturedBatch>, FixtureError> {
    let file = path.display().to_string();
    read_json_lines(path)?
        .into_iter()
        .map(|(line, v)| {
            let err = |msg: String| FixtureError {
                file: file.clone(),
                line,
                msg,
            };
            let field = |name: &str| {
                v.get(name).ok_or_else(|| {
                    err(format!(
                        "missing `{name}` (a captured batch has topic, partition, targets, records, decisions)"
                    ))
                })
            };
            let topic = field("topic")?.as_str().unwrap_or_default().to_string();
            let partition = field("partition")?.as_i64().unwrap_or(0) as i32;
            let raw: Vec<TargetFixture> = serde_json::from_value(field("targets")?.clone())
                .map_err(|e| err(format!("`targets`: {e}")))?;
            let records = field("records")?
                .as_array()
                .ok_or_else(|| err("`records` must be an array".into()))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    record_from(i, r).map(|mut r| {
                        r.topic = topic.as_str().into();
                        r.partition = partition;
                        r
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| err(format!("`records`: {m}")))?;
            let decisions = field("decisions")?
                .as_array()
                .cloned()
                .ok_or_else(|| err("`decisions` must be an array".into()))?;
            if decisions.len() != records.len() {
                return Err(err(format!(
                    "{} decisions for {} records",
                    decisions.len(),
                    records.len()
                )));
            }
            Ok(CapturedBatch {
                topic,
                partition,
                targets: targets_from(raw),
                records,
                decisions,
            })
        })
        .collect()
}

/// Replaying a capture with another router: its lines and how they compare.
#[derive(Debug)]
pub struct Replay {
    /// One output line per record, in capture order (or the single
    /// `{"init":"error"}` line).
    pub lines: Vec<Value>,
    pub records: usize,
    /// Records on which the replayed router decided as the captured one
    /// (the same decision and targets).
    pub agreed: usize,
    /// Per target id (and `(default)`, `(drop)`, `(dead-letter)`):
    /// (captured, replayed) record counts.
    pub shares: std::collections::BTreeMap<String, (usize, usize)>,
    /// Failed plugin calls.
    pub errors: u64,
}

/// Runs the router at `wasm` (with `config` for `init`) on each captured
/// batch, against that batch's own snapshot, and compares its decisions
/// with the captured ones.
///
/// # Errors
/// The plugin cannot be read, compiled or linked, or is not a router (an
/// `init` that fails is a result: the `{"init":"error"}` line).
pub fn replay(
    runtime: &Arc<Runtime>,
    wasm: &Path,
    batches: &[CapturedBatch],
    config: &str,
) -> Result<Replay, PluginError> {
    let name = wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let compiled = runtime.compile(&name, wasm, None, Some("router"))?;
    let metrics = Arc::new(Metrics::new());
    let mut out = Replay {
        lines: Vec::new(),
        records: 0,
        agreed: 0,
        shares: Default::default(),
        errors: 0,
    };
    let plugin =
        match RouterPlugin::from_compiled(runtime, &name, compiled, config.into(), metrics.clone())
        {
            Ok(p) => p,
            Err(PluginError::Init { msg, .. }) => {
                out.lines.push(json!({"init": "error", "message": msg}));
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
    let mut snapshot = Arc::new(Snapshot::default());
    for b in batches {
        if snapshot.targets != b.targets {
            snapshot = Arc::new(Snapshot {
                version: snapshot.version + 1,
                targets: b.targets.clone(),
            });
        }
        let refs: Vec<&Record> = b.records.iter().collect();
        let routes = plugin.route(&snapshot, &b.topic, b.partition, &refs);
        for ((r, route), captured) in b.records.iter().zip(&routes).zip(&b.decisions) {
            let line = route_line(r.offset, route, &snapshot);
            let bucket = |l: &Value| -> Vec<String> {
                match l.get("targets").and_then(Value::as_array) {
                    Some(ts) => ts
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect(),
                    None => vec![format!("({})", l["decision"].as_str().unwrap_or("?"))],
                }
            };
            for t in bucket(captured) {
                out.shares.entry(t).or_default().0 += 1;
            }
            for t in bucket(&line) {
                out.shares.entry(t).or_default().1 += 1;
            }
            if line == *captured {
                out.agreed += 1;
            }
            out.records += 1;
            out.lines.push(line);
        }
    }
    out.errors = ["trap", "deadline", "memory", "contract"]
        .iter()
        .map(|kind| metrics.plugin_errors_of(name.as_str(), kind))
        .sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cdrs-testbed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn records_parse_with_defaults_and_every_encoding() {
        let p = write(
            "r.jsonl",
            r#"{"key": "c-1", "value": "hello", "headers": [["x-client", "c-1"], ["n", null]]}

{"offset": 7, "timestamp_ms": 5, "value": {"type": "trade"}, "key_base64": "AP8="}
"#,
        );
        let r = read_records(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[0].key.as_deref()), (0, Some(&b"c-1"[..])));
        assert_eq!(r[0].headers[1], ("n".to_string(), None));
        assert_eq!(r[1].offset, 7);
        assert_eq!(r[1].timestamp_ms, Some(5));
        assert_eq!(r[1].value.as_deref(), Some(&br#"{"type":"trade"}"#[..]));
        assert_eq!(r[1].key.as_deref(), Some(&[0u8, 255][..]));
    }

    #[test]
    fn bad_records_name_the_line_and_field() {
        for (text, want) in [
            ("{\"key\": 1}\n", "line 1: `key` must be a string or null"),
            ("{}\n{\"offest\": 1}\n", "line 2: unknown field `offest`"),
            ("[1]\n", "line 1: expected a JSON object"),
            ("{\"headers\": [[\"a\"]]}\n", "line 1: `headers` entries"),
            ("{nope\n", "line 1: not JSON"),
        ] {
            let e = read_records(&write("bad.jsonl", text))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn targets_take_defaults_and_reject_unknown_fields() {
        let t = read_targets(&write(
            "t.json",
            r#"[{"id": "a"}, {"id": "b", "capacity": 5, "health": "down"}]"#,
        ))
        .unwrap();
        assert_eq!(
            (t[0].weight, t[0].capacity, t[0].health),
            (100, 100, Health::Healthy)
        );
        assert_eq!((t[1].capacity, t[1].health), (5, Health::Down));
        let e = read_targets(&write("t2.json", r#"[{"id": "a", "cap": 1}]"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cap`"), "{e}");
    }

    #[test]
    fn strict_key_order_keeps_a_key_on_its_first_target() {
        let rec = |key: Option<&str>| Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: None,
            headers: Vec::new(),
        };
        let records = [
            rec(Some("a")),
            rec(Some("b")),
            rec(Some("a")),
            rec(None),
            rec(Some("a")),
        ];
        let mut lines: Vec<Value> = [
            json!({"offset": 0, "decision": "route", "targets": ["t1"]}),
            json!({"offset": 1, "decision": "route", "targets": ["t2"]}),
            json!({"offset": 2, "decision": "route", "targets": ["t2"]}),
            json!({"offset": 3, "decision": "route", "targets": ["t2"]}),
            json!({"offset": 4, "decision": "drop"}),
        ]
        .into();
        strict_key_order(&records, &mut lines);
        assert_eq!(lines[2]["placed"], "t1", "{lines:?}");
        assert!(lines[2]["why"].as_str().unwrap().contains("\"a\""));
        for i in [0, 1, 3, 4] {
            assert!(lines[i].get("placed").is_none(), "{i}: {lines:?}");
        }
    }

    #[test]
    fn diff_names_each_line_and_accepts_any_init_error() {
        let a = vec![
            json!({"offset": 0, "verdict": "keep"}),
            json!({"offset": 1, "verdict": "drop"}),
        ];
        let b = vec![
            json!({"offset": 0, "verdict": "keep"}),
            json!({"offset": 1, "verdict": "keep"}),
        ];
        assert!(diff(&a, &a).is_empty());
        let d = diff(&a, &b);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("line 2:"), "{d:?}");
        assert_eq!(diff(&a, &b[..1]).len(), 1);
        assert!(diff(
            &[json!({"init": "error"})],
            &[json!({"init": "error", "message": "bad seed"})]
        )
        .is_empty());
    }

    /// A captured batch reads back as it was written; a line that is not a
    /// batch is refused with its line number and the field.
    #[test]
    fn captures_read_back_and_bad_lines_are_named() {
        let targets = read_targets(&write(
            "cap-targets.json",
            r#"[{"id": "a", "capacity": 10, "zone": "z"}, {"id": "b", "health": "down"}]"#,
        ))
        .unwrap();
        let snapshot = Snapshot {
            version: 3,
            targets,
        };
        let records = [
            Record {
                topic: "trades".into(),
                partition: 2,
                offset: 40,
                timestamp_ms: Some(1_000),
                key: Some(b"client-1".to_vec()),
                value: Some(b"secret".to_vec()),
                headers: vec![
                    ("x-client".into(), Some(b"c1".to_vec())),
                    ("other".into(), None),
                ],
            },
            Record {
                topic: "trades".into(),
                partition: 2,
                offset: 41,
                timestamp_ms: Some(1_002),
                key: Some(vec![0, 255]),
                value: None,
                headers: Vec::new(),
            },
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let routes = [Route::Targets(smallvec::smallvec![0]), Route::Default];
        let line = capture_line(
            ("p2c", "abc"),
            "trades",
            2,
            &snapshot,
            &refs,
            &routes,
            (&["x-client".to_string()], false),
        );
        assert!(line["records"][0].get("value").is_none(), "{line}");
        assert_eq!(line["records"][1]["key_base64"], "AP8=");
        let path = write("cap.jsonl", &format!("{line}\n"));
        let back = read_capture(&path).unwrap();
        let b = &back[0];
        assert_eq!((b.topic.as_str(), b.partition), ("trades", 2));
        assert_eq!(b.targets, snapshot.targets);
        assert_eq!(
            b.records[0].headers,
            vec![("x-client".to_string(), Some(b"c1".to_vec()))]
        );
        assert_eq!(b.records[1].key.as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(b.decisions[0]["targets"], json!(["a"]));
        assert_eq!(b.decisions[1]["decision"], "default");

        let mut short = line.clone();
        short["decisions"] = json!([]);
        let e = read_capture(&write("cap-bad.jsonl", &format!("{line}\n{short}\n"))).unwrap_err();
        assert!(
            e.to_string().ends_with("line 2: 0 decisions for 2 records"),
            "{e}"
        );
        let e = read_capture(&write("cap-bad2.jsonl", r#"{"topic": "t"}"#)).unwrap_err();
        assert!(e.to_string().contains("line 1: missing `partition`"), "{e}");
    }
}
