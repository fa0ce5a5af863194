use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/config")
        .join(name)
}

#[test]
fn three_mistakes_give_three_named_errors() {
    let e = Config::load(&fixture("three-mistakes.toml")).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"kafka.topics"), "{e}");
    assert!(keys.contains(&"targets[1].id"), "{e}");
    assert!(keys.contains(&"targets[1].url"), "{e}");
    let text = e.to_string();
    assert!(text.contains("\"blotter-1\" is declared twice"), "{text}");
    assert!(
        text.contains(
            "valid: http(s)://host:port/path (HTTP sink), kafka://topic (Kafka sink) \
             or sse://name (SSE stream)"
        ),
        "{text}"
    );
    // The plugin path may or may not exist in this checkout; nothing else.
    assert!(
        e.problems.len() == 3 || (e.problems.len() == 4 && keys.contains(&"router.path")),
        "{text}"
    );
}

#[test]
fn unknown_keys_are_named_with_what_is_valid() {
    let e = Config::load(&fixture("unknown-key.toml")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("unknown field `batch`"), "{text}");
    assert!(text.contains("group_id"), "valid keys listed: {text}");
}

#[test]
fn missing_plugin_files_are_reported() {
    let e = Config::load(&fixture("missing-plugin.toml")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("router.path"), "{text}");
    assert!(
        text.contains("no-such-plugin.wasm\" does not exist"),
        "{text}"
    );
}

#[test]
fn the_example_config_is_valid_apart_from_plugin_builds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cdrs.toml");
    match Config::load(&path) {
        Ok(c) => assert_eq!(c.targets.len(), 3),
        Err(e) => assert!(
            e.problems.iter().all(|p| p.key.ends_with(".path")),
            "only unbuilt plugins may be missing: {e}"
        ),
    }
}

/// The smallest valid config with one target at `url`, then `extra`.
fn minimal(url: &str, extra: &str) -> String {
    format!(
        r#"
        [kafka]
        brokers = "b:9092"
        group_id = "g"
        topics = ["t"]
        [router]
        name = "r"
        path = "not-wasm.txt"
        [[targets]]
        id = "a"
        url = "{url}"
        capacity = 1
        {extra}
    "#
    )
}

#[test]
fn defaults_are_the_documented_constants() {
    let text = minimal("http://127.0.0.1:1/", "");
    let c = Config::parse(&text, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pipeline.batch_size, DEFAULT_BATCH_SIZE);
    assert_eq!(c.kafka.dead_letter_topic, DEFAULT_DEAD_LETTER_TOPIC);
    assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.targets[0].weight, DEFAULT_WEIGHT);
    assert_eq!(c.capacity.report_expiry_ms, DEFAULT_REPORT_EXPIRY_MS);
    assert_eq!(c.router.config_json(), "{}");
    assert_eq!(c.delivery.lanes, DEFAULT_LANES);
    assert_eq!(c.delivery.kafka_lanes, DEFAULT_KAFKA_LANES);
    assert_eq!(c.pipeline.prefetch_records, DEFAULT_PREFETCH_RECORDS);
}

#[test]
fn lanes_out_of_range_are_named() {
    let text = minimal("kafka://out", "[delivery]\nlanes = 0\nkafka_lanes = 65");
    let e = Config::parse(&text, &fixture(""), "inline").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("delivery.lanes"), "{text}");
    assert!(text.contains("delivery.kafka_lanes"), "{text}");
    assert!(text.contains("65 is out of range 1..=64"), "{text}");
}

#[test]
fn linger_out_of_range_is_named() {
    let text = minimal("kafka://out", "[pipeline]\nbatch_linger_ms = 5000");
    let e = Config::parse(&text, &fixture(""), "inline").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("pipeline.batch_linger_ms"), "{text}");
    assert!(text.contains("5000 is out of range 0..=1000"), "{text}");
    let ok = minimal("kafka://out", "[pipeline]\nbatch_linger_ms = 1000");
    let c = Config::parse(&ok, &fixture(""), "inline").unwrap();
    assert_eq!(c.pipeline.batch_linger_ms, 1000);
}

#[test]
fn prefetch_out_of_range_and_removed_keys_are_named() {
    let text = minimal("kafka://out", "[pipeline]\nprefetch_records = 0");
    let e = Config::parse(&text, &fixture(""), "inline").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("pipeline.prefetch_records"), "{text}");
    assert!(text.contains("0 is out of range 1..=10000000"), "{text}");
    // The 0.x keys of the paused design: unknown, with the valid ones listed.
    let text = minimal("kafka://out", "[pipeline]\npause_after_records = 100");
    let e = Config::parse(&text, &fixture(""), "inline").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("pause_after_records"), "{text}");
    assert!(text.contains("prefetch_records"), "{text}");
}

fn problems(extra: &str, url: &str) -> String {
    let text = minimal(url, extra);
    match Config::parse(&text, &fixture(""), "inline") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn semaphore_sizes_are_bounded_before_tokio_would_panic() {
    // 2^61 passed the check and then panicked in `Semaphore::new`.
    let text = problems(
        "[pipeline]\nmax_inflight_records = 2305843009213693952\n\
         [delivery]\nqueue_capacity = 2305843009213693952",
        "kafka://out",
    );
    assert!(
        text.contains(
            "pipeline.max_inflight_records: 2305843009213693952 is out of range 1..=10000000"
        ),
        "{text}"
    );
    assert!(
        text.contains("delivery.queue_capacity: 2305843009213693952 is out of range 1..=10000000"),
        "{text}"
    );
    let text = problems("[delivery]\nqueue_capacity = 0", "kafka://out");
    assert!(
        text.contains("delivery.queue_capacity: 0 is out of range 1..=10000000"),
        "{text}"
    );
    let ok = "[pipeline]\nmax_inflight_records = 10000000\n[delivery]\nqueue_capacity = 10000000";
    assert_eq!(problems(ok, "kafka://out"), "");
}

#[test]
fn topic_loops_are_refused() {
    // `minimal` consumes "t".
    let text = problems("[capacity]\ntopic = \"t\"", "kafka://t");
    assert!(
        text.contains(
            "targets[0].url: \"kafka://t\" writes to a topic CDRS consumes (kafka.topics); \
             use another topic"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "capacity.topic: \"t\" is also consumed (kafka.topics[0]); use a separate topic"
        ),
        "{text}"
    );
    let text = problems("[capacity]\ntopic = \"cdrs-dead-letter\"", "kafka://out");
    assert!(
        text.contains(
            "capacity.topic: \"cdrs-dead-letter\" is also kafka.dead_letter_topic; \
             use a separate topic"
        ),
        "{text}"
    );
    let text = problems("[capacity]\ntopic = \"hb\"", "kafka://hb/");
    assert!(
        text.contains("targets[0].url: \"kafka://hb/\" writes to the capacity report topic"),
        "{text}"
    );
    assert_eq!(problems("[capacity]\ntopic = \"hb\"", "kafka://out"), "");
}

#[test]
fn capacity_timings_and_plugin_memory_have_ranges() {
    let text = problems(
        "[plugins]\nmax_memory_bytes = 4294967297\n\
         [capacity]\nhealth_interval_ms = 0\nhealth_timeout_ms = 0\nremove_after_ms = 0",
        "kafka://out",
    );
    for want in [
        "capacity.health_interval_ms: 0 is out of range 100..=600000",
        "capacity.health_timeout_ms: 0 is out of range 10..=60000",
        "capacity.remove_after_ms: 0 is out of range 1000..=86400000",
        "plugins.max_memory_bytes: 4294967297 is out of range 1048576..=4294967296",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert_eq!(text.matches("\n  - ").count(), 4, "nothing else: {text}");
    let text = problems("[capacity]\nremove_after_ms = 5000", "kafka://out");
    assert!(
        text.contains(
            "capacity.remove_after_ms: 5000 must be at least capacity.report_expiry_ms (10000)"
        ),
        "{text}"
    );
    let ok = "[plugins]\nmax_memory_bytes = 4294967296\n[capacity]\nhealth_interval_ms = 100\n\
              health_timeout_ms = 10\nremove_after_ms = 10000";
    assert_eq!(problems(ok, "kafka://out"), "");
}

/// The plugin memory bound is what wasmtime's pooling allocator accepts
/// (the runtime falls back to on-demand allocation, with a warning that
/// names no key, when it refuses).
#[test]
fn wasmtime_pools_accept_the_largest_plugin_memory_and_no_more() {
    let engine = |bytes: u64| {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(1)
            .total_core_instances(1)
            .total_memories(1)
            .total_tables(1)
            .max_memory_size(bytes as usize);
        let mut config = wasmtime::Config::new();
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        wasmtime::Engine::new(&config).map(drop)
    };
    engine(MAX_PLUGIN_MEMORY_BYTES).unwrap();
    let e = engine(MAX_PLUGIN_MEMORY_BYTES + 1).unwrap_err();
    assert!(e.to_string().contains("memory reservation"), "{e}");
}

#[test]
fn kafka_options_are_checked_by_librdkafka() {
    let load = |options: &str| {
        let text = minimal("kafka://out", &format!("[kafka.options]\n{options}"));
        Config::parse(&text, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(crate::kafka::check_options(&load("")), vec![]);
    assert_eq!(
        crate::kafka::check_options(&load(
            "\"session.timeout.ms\" = \"6000\"\n\"linger.ms\" = \"5\""
        )),
        vec![]
    );
    // Every bad option at once, each named.
    let p = crate::kafka::check_options(&load(
        "\"no.such.option\" = \"1\"\n\"session.timeout.ms\" = \"soon\"",
    ));
    let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert_eq!(p.len(), 2, "{text:?}");
    assert!(
        text[0].starts_with(
            "kafka.options.\"no.such.option\": \"1\" is refused by librdkafka: \
             No such configuration property: \"no.such.option\""
        ),
        "{text:?}"
    );
    assert!(
        text[1]
            .starts_with("kafka.options.\"session.timeout.ms\": \"soon\" is refused by librdkafka"),
        "{text:?}"
    );
    // Valid alone, refused with CDRS's idempotent producer.
    let p = crate::kafka::check_options(&load("\"acks\" = \"1\""));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "kafka.options");
    assert!(
        p[0].message
            .starts_with("librdkafka cannot create a producer with them: "),
        "{p:?}"
    );
    assert!(p[0].message.contains("acks"), "{p:?}");
}

/// Durations beyond a day would wrap `now + duration` (keeping a failing
/// target healthy); each is refused by name.
#[test]
fn durations_beyond_a_day_are_refused_by_name() {
    let text = problems(
        "[capacity]\nfailure_cooldown_ms = 86400001\n\
         [delivery]\ntimeout_ms = 86400001\n\
         [delivery.breaker]\nbase_ejection_ms = 86400001\nmax_ejection_ms = 86400001",
        "kafka://out",
    );
    for key in [
        "capacity.failure_cooldown_ms",
        "delivery.timeout_ms",
        "delivery.breaker.base_ejection_ms",
        "delivery.breaker.max_ejection_ms",
    ] {
        let want = format!("{key}: 86400001 is above the maximum of 86400000 (1 day, in ms)");
        assert!(text.contains(&want), "missing {want:?} in {text}");
    }
    let ok = "[capacity]\nfailure_cooldown_ms = 86400000\n[delivery.breaker]\nmax_ejection_ms = 86400000";
    assert_eq!(problems(ok, "kafka://out"), "");
}

/// Mutating admin endpoints are never open to the network, an empty token
/// is not a lock-out, and the admin's own limits have ranges.
#[test]
fn admin_settings_are_checked() {
    let text = problems("[admin]\nlisten = \"0.0.0.0:9090\"", "kafka://out");
    assert!(
        text.contains(
            "admin.token: is required when admin.listen (0.0.0.0:9090) is not a loopback address"
        ),
        "{text}"
    );
    let with_token = "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"0123456789abcdef\"";
    assert_eq!(problems(with_token, "kafka://out"), "");
    let text = problems("[admin]\ntoken = \"\"\nread_token = \" \"", "kafka://out");
    assert!(text.contains("admin.token: is empty"), "{text}");
    assert!(text.contains("admin.read_token: is empty"), "{text}");
    let text = problems(
        "[admin]\nmax_connections = 0\nheader_read_timeout_ms = 1\nmax_concurrent_uploads = 17\n\
         allowed_hosts = [\"http://evil/\"]",
        "kafka://out",
    );
    for want in [
        "admin.max_connections: 0 is out of range 1..=65536",
        "admin.header_read_timeout_ms: 1 is out of range 100..=300000",
        "admin.max_concurrent_uploads: 17 is out of range 1..=16",
        "admin.allowed_hosts[0]: \"http://evil/\" is not a host or host:port",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
}

/// A target that is CDRS's own admin API, or a `kafka://` target writing
/// dead letters' topic, is a mistake `check` names.
#[test]
fn targets_looping_into_cdrs_itself_are_refused() {
    for url in [
        "http://127.0.0.1:9090/v1/reload",
        "http://localhost:9090/records",
    ] {
        let text = problems("", url);
        assert!(
            text.contains("targets[0].url") && text.contains("points at CDRS's own admin API"),
            "{url}: {text}"
        );
    }
    assert_eq!(problems("", "http://127.0.0.1:9091/records"), "");
    let text = problems("", "kafka://cdrs-dead-letter");
    assert!(text.contains("writes to the dead-letter topic"), "{text}");
}

/// Credentials in a target URL never reach `check`'s output.
#[test]
fn check_output_hides_url_credentials() {
    let text = problems("", "ftp://svc:s3cret@10.0.0.5/records");
    assert!(text.contains("targets[0].url"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// The flood limits of `[capacity]` have ranges and defaults, named by key.
#[test]
fn capacity_flood_limits_have_ranges() {
    let text = minimal("http://127.0.0.1:1/", "");
    let c = Config::parse(&text, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.capacity.acceptable_heartbeat_pause_ms,
        DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE_MS
    );
    assert_eq!(
        c.capacity.max_reports_per_second,
        DEFAULT_MAX_REPORTS_PER_SECOND
    );
    assert_eq!(c.capacity.max_dynamic_targets, DEFAULT_MAX_DYNAMIC_TARGETS);
    assert_eq!(
        c.capacity.max_joins_per_second,
        DEFAULT_MAX_JOINS_PER_SECOND
    );
    assert_eq!(c.capacity, CapacityConfig::default());
    let text = problems(
        "[capacity]\nacceptable_heartbeat_pause_ms = 60001\nmax_reports_per_second = 0\n\
         max_dynamic_targets = 0\nmax_joins_per_second = 10001",
        "kafka://out",
    );
    for want in [
        "capacity.acceptable_heartbeat_pause_ms: 60001 is out of range 0..=60000",
        "capacity.max_reports_per_second: 0 is out of range 1..=1000",
        "capacity.max_dynamic_targets: 0 is out of range 1..=100000",
        "capacity.max_joins_per_second: 10001 is out of range 1..=10000",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert_eq!(text.matches("\n  - ").count(), 4, "nothing else: {text}");
    let ok = "[capacity]\nacceptable_heartbeat_pause_ms = 0\nmax_reports_per_second = 1000\n\
              max_dynamic_targets = 100000\nmax_joins_per_second = 1";
    assert_eq!(problems(ok, "kafka://out"), "");
}

/// A report token is checked by length and alphabet, never shown, and
/// never serialized.
#[test]
fn report_tokens_are_checked_without_being_shown() {
    let text = problems("", "kafka://out");
    assert_eq!(text, "", "unset is fine");
    for (token, want) in [
        (
            "",
            "targets[0].report_token: is 0 characters long; it must have at least 16",
        ),
        (
            "sh0rt-s3cret",
            "targets[0].report_token: is 12 characters long; it must have at least 16",
        ),
        (
            "0123456789 abcdef",
            "targets[0].report_token: must be visible ASCII characters only (no spaces)",
        ),
    ] {
        let text = problems(&format!("report_token = {token:?}"), "kafka://out");
        assert!(text.contains(want), "{token:?}: {text}");
        assert_eq!(text.matches("\n  - ").count(), 1, "{text}");
        if !token.is_empty() {
            assert!(!text.contains(token), "the token is not shown: {text}");
        }
    }
    let text = minimal("kafka://out", "report_token = \"0123456789abcdef\"");
    let c = Config::parse(&text, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.targets[0].report_token.as_deref(),
        Some("0123456789abcdef")
    );
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("0123456789abcdef"), "{json}");
    assert!(!json.contains("report_token"), "{json}");
}

/// Keys `Config` never serializes (secrets), so the doc test names them.
const UNSERIALIZED_KEYS: [&str; 6] = [
    "admin.token",
    "admin.read_token",
    "targets[].report_token",
    "admin.tls.key_pass",
    "delivery.tls.key_pass",
    "targets[].tls.key_pass",
];

/// Free-form tables: one key each; what is inside them is not a config key.
const FREE_FORM_KEYS: [&str; 5] = [
    "kafka.options",
    "filters[].config",
    "router.config",
    "router.shadow.config",
    "targets[].labels",
];

/// The dotted key paths of a serialized config: `delivery.breaker.interval_ms`,
/// arrays of tables as `targets[].id`, free-form tables as one key.
fn key_paths(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    use serde_json::Value;
    match v {
        Value::Object(map) if !FREE_FORM_KEYS.contains(&prefix) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(&path, v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            for item in items {
                key_paths(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The value at a key path of [`key_paths`] (first element of arrays).
fn value_at<'a>(v: &'a mut serde_json::Value, key: &str) -> Option<&'a mut serde_json::Value> {
    key.split('.')
        .try_fold(v, |v, part| match part.strip_suffix("[]") {
            Some(array) => v.get_mut(array)?.get_mut(0),
            None => v.get_mut(part),
        })
}

/// Another valid-to-parse value of the same kind.
fn another(v: serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Value};
    match v {
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => match n.as_u64() {
            Some(u) => json!(u + 1),
            None => json!(n.as_f64().unwrap_or_default() + 1.0),
        },
        Value::String(s) => Value::String(match s.as_str() {
            "wait" => "dead-letter".into(),
            "dead-letter" => "wait".into(),
            "strict" => "relaxed".into(),
            "relaxed" => "strict".into(),
            _ => format!("{s}-changed"),
        }),
        Value::Array(mut a) => {
            a.push(json!("changed"));
            Value::Array(a)
        }
        Value::Object(mut m) => {
            m.insert("changed".into(), json!("yes"));
            Value::Object(m)
        }
        Value::Null => json!("changed"),
    }
}

/// One row of a `| key | default | … | reload | … |` table of the doc.
struct DocRow {
    line: usize,
    key: String,
    /// The leading `` `value` `` of the default cell, if it has one.
    default: Option<String>,
    reload: String,
}

fn doc_rows(doc: &str) -> Vec<DocRow> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let mut rows = Vec::new();
    let mut reload_column = None;
    for (i, line) in doc.lines().enumerate() {
        if !line.starts_with('|') {
            reload_column = None;
            continue;
        }
        let row = cells(line);
        if row[0] == "key" && row.get(1).is_some_and(|c| c == "default") {
            reload_column = row.iter().position(|c| c == "reload");
            assert!(reload_column.is_some(), "line {}: no reload column", i + 1);
            continue;
        }
        let Some(reload) = reload_column else {
            continue;
        };
        if line.starts_with("|---") {
            continue;
        }
        let key = row[0]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| panic!("line {}: the key cell is not `a.key`: {line}", i + 1));
        let default = row[1]
            .strip_prefix('`')
            .and_then(|d| d.split('`').next())
            .map(String::from);
        rows.push(DocRow {
            line: i + 1,
            key: key.to_string(),
            default,
            reload: row[reload].clone(),
        });
    }
    rows
}

/// docs/configuration.md has one table row per config key and no other:
/// the key as `` `section.key` `` (arrays of tables as `targets[].id`), a
/// default cell that starts with `` `value` `` equal to the parsed default,
/// and a reload cell that says `restart` exactly for the keys
/// `reload::restart_only_changes` reports.
#[test]
fn configuration_doc_matches_the_config_structs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let rows = doc_rows(&doc);

    // Every optional part present, so that every key serializes.
    let full = r#"
        [kafka]
        brokers = "b:9092"
        group_id = "g"
        topics = ["t"]
        [kafka.options]
        "linger.ms" = "5"
        [admin]
        token = "0123456789abcdef-admin"
        read_token = "0123456789abcdef-read"
        allowed_hosts = ["localhost"]
        [admin.tls]
        cert_file = "not-wasm.txt"
        key_file = "not-wasm.txt"
        key_pass = "pass"
        client_ca_file = "not-wasm.txt"
        [plugins]
        cache_dir = "/nonexistent/cdrs-cache"
        [[filters]]
        name = "f"
        path = "not-wasm.txt"
        sha256 = "00"
        config = { field = "type" }
        [router]
        name = "r"
        path = "not-wasm.txt"
        sha256 = "00"
        config = { sticky = true }
        [router.shadow]
        name = "candidate"
        path = "not-wasm.txt"
        sha256 = "00"
        config = { q_rif = 0.8 }
        [[targets]]
        id = "a"
        url = "http://127.0.0.1:1/records"
        capacity = 1
        zone = "z"
        labels = { pool = "p" }
        health_url = "http://127.0.0.1:1/health"
        report_token = "0123456789abcdef-report"
        [targets.tls]
        ca_file = "not-wasm.txt"
        cert_file = "not-wasm.txt"
        key_file = "not-wasm.txt"
        key_pass = "pass"
        server_name = "blotter.internal"
        verify = true
        http2 = true
        [delivery.tls]
        ca_file = "not-wasm.txt"
        cert_file = "not-wasm.txt"
        key_file = "not-wasm.txt"
        key_pass = "pass"
        server_name = "blotter.internal"
        verify = true
        http2 = true
        [capacity]
        topic = "hb"
        allow_endpoints = ["http://10.1.*.*:8080/records"]
        [control]
        topic = "cdrs-control"
        instance_id = "cdrs-1"
        [telemetry]
        otlp_endpoint = "http://127.0.0.1:4318"
    "#;
    let full = Config::parse(full, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    let full_json = serde_json::to_value(&full).unwrap();
    let mut serialized = std::collections::BTreeSet::new();
    key_paths("", &full_json, &mut serialized);
    for key in UNSERIALIZED_KEYS {
        assert!(
            !serialized.contains(key),
            "{key} is serialized now: take it out of UNSERIALIZED_KEYS"
        );
    }
    let keys: std::collections::BTreeSet<String> = serialized
        .into_iter()
        .chain(UNSERIALIZED_KEYS.map(String::from))
        .collect();

    let mut documented = std::collections::BTreeSet::new();
    for row in &rows {
        assert!(
            documented.insert(row.key.clone()),
            "docs/configuration.md line {}: `{}` has a second row",
            row.line,
            row.key
        );
    }
    for key in &keys {
        assert!(
            documented.contains(key),
            "config key `{key}` has no row in docs/configuration.md \
             (add `{key}` to the table of its section)"
        );
    }
    for row in &rows {
        assert!(
            keys.contains(&row.key),
            "docs/configuration.md line {}: `{}` is not a config key",
            row.line,
            row.key
        );
    }

    // Defaults: a minimal config with one filter and a shadow router, as
    // serialized.
    let minimal = minimal(
        "http://127.0.0.1:1/",
        "[[filters]]\nname = \"f\"\npath = \"not-wasm.txt\"\n\
         [router.shadow]\nname = \"s\"\npath = \"not-wasm.txt\"",
    );
    let defaults =
        Config::parse(&minimal, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    let mut defaults = serde_json::to_value(&defaults).unwrap();
    for row in &rows {
        let Some(want) = &row.default else { continue };
        let got = value_at(&mut defaults, &row.key)
            .map(|v| serde_json::to_string(v).unwrap())
            .unwrap_or_else(|| panic!("`{}` has no default in the code", row.key));
        assert_eq!(
            &got, want,
            "docs/configuration.md line {}: default of `{}`",
            row.line, row.key
        );
    }

    // Reload kind: change one key, ask reload which keys need a restart.
    let base: Config = serde_json::from_value(full_json.clone()).unwrap();
    for row in &rows {
        let mut changed = base.clone();
        let secret = Some("another-secret-0123456789".to_string());
        match row.key.as_str() {
            "admin.token" => changed.admin.token = secret,
            "admin.read_token" => changed.admin.read_token = secret,
            "targets[].report_token" => changed.targets[0].report_token = secret,
            "admin.tls.key_pass" => changed.admin.tls.as_mut().unwrap().key_pass = secret,
            "delivery.tls.key_pass" => changed.delivery.tls.key_pass = secret,
            "log.format" => changed.log.format = crate::config::LogFormat::Json,
            "targets[].tls.key_pass" => changed.targets[0].tls.as_mut().unwrap().key_pass = secret,
            key => {
                let mut v = full_json.clone();
                let slot = value_at(&mut v, key).expect("every documented key is present");
                *slot = another(slot.take());
                changed = serde_json::from_value(v).unwrap_or_else(|e| panic!("{key}: {e}"));
            }
        }
        let restart = crate::reload::restart_only_changes(&base, &changed);
        let want = if restart.is_empty() {
            "live"
        } else {
            "restart"
        };
        assert_eq!(
            row.reload, want,
            "docs/configuration.md line {}: reload kind of `{}` (restart_only_changes: {restart:?})",
            row.line, row.key
        );
    }
}

#[test]
fn secrets_come_from_the_environment_or_files_and_never_show_in_errors() {
    let dir = std::env::temp_dir().join(format!("cdrs-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("not-wasm.txt"), "x").unwrap();
    std::fs::write(dir.join("sasl-password"), "file-secret-7781\n").unwrap();
    std::env::set_var("CDRS_TEST_ADMIN_TOKEN_5521", "env-secret-5521-abcdef");
    let text = minimal(
        "http://127.0.0.1:1/",
        r#"report_token = "${CDRS_TEST_ADMIN_TOKEN_5521}"
        [admin]
        token = "${CDRS_TEST_ADMIN_TOKEN_5521}"
        [kafka.options]
        "sasl.password" = "file:sasl-password"
        "client.id" = "plain-value""#,
    );
    let c = Config::parse(&text, &dir, "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin.token.as_deref(), Some("env-secret-5521-abcdef"));
    assert_eq!(
        c.targets[0].report_token.as_deref(),
        Some("env-secret-5521-abcdef")
    );
    assert_eq!(c.kafka.options["sasl.password"], "file-secret-7781");
    assert_eq!(c.kafka.options["client.id"], "plain-value");
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("env-secret-5521-abcdef"), "{shown}");
    // Unresolvable references: named by key, variable and file.
    let text = minimal(
        "http://127.0.0.1:1/",
        r#"[admin]
        read_token = "${CDRS_TEST_UNSET_8812}"
        [kafka.options]
        "sasl.password" = "file:no-such-secret""#,
    );
    let e = Config::parse(&text, &dir, "inline")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.read_token") && e.contains("\"CDRS_TEST_UNSET_8812\", which is not set"),
        "{e}"
    );
    assert!(
        e.contains("kafka.options.\"sasl.password\"") && e.contains("no-such-secret"),
        "{e}"
    );
}

#[test]
fn https_targets_and_tls_blocks_are_checked() {
    let dir = std::env::temp_dir().join(format!("cdrs-tls-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), "x").unwrap();
    std::fs::write(dir.join("not-wasm.txt"), "x").unwrap();
    let text = minimal(
        "https://blotter-1.internal:8443/records",
        r#"health_url = "https://blotter-1.internal:8443/health"
        [targets.tls]
        server_name = "blotter.internal"
        [delivery.tls]
        ca_file = "ca.pem"
        http2 = false"#,
    );
    let c = Config::parse(&text, &dir, "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.delivery.tls.ca_file.as_deref(),
        Some(dir.join("ca.pem").as_path())
    );
    let merged = c
        .delivery
        .tls
        .overridden_by(c.targets[0].tls.as_ref().unwrap());
    assert_eq!(merged.server_name.as_deref(), Some("blotter.internal"));
    assert_eq!(merged.http2, Some(false));
    let text = minimal(
        "https://127.0.0.1:8443/",
        r#"[targets.tls]
        cert_file = "ca.pem"
        [delivery.tls]
        ca_file = "missing-ca.pem"
        [kafka.options]
        "security.protocol" = "SSL"
        "ssl.key.location" = "/no/such/key.pem""#,
    );
    let e = Config::parse(&text, &dir, "inline")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("targets[0].tls: cert_file and key_file go together"),
        "{e}"
    );
    assert!(
        e.contains("delivery.tls.ca_file") && e.contains("missing-ca.pem"),
        "{e}"
    );
    assert!(
        e.contains("kafka.options.\"ssl.key.location\"") && e.contains("/no/such/key.pem"),
        "{e}"
    );
    let e = Config::parse(
        &minimal("kafka://out", "[targets.tls]\nverify = false"),
        &dir,
        "inline",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("targets[0].tls: applies to http(s):// targets"),
        "{e}"
    );
}

#[test]
fn the_control_topic_is_a_topic_of_its_own() {
    let text = minimal(
        "http://127.0.0.1:1/",
        "[control]\ntopic = \"t\"\ninstance_id = \"not an id\"\nstatus_interval_ms = 5",
    );
    let e = Config::parse(&text, &fixture(""), "inline")
        .unwrap_err()
        .to_string();
    assert!(e.contains("control.topic: \"t\" is also consumed"), "{e}");
    assert!(e.contains("control.instance_id"), "{e}");
    assert!(
        e.contains("control.status_interval_ms: 5 is out of range"),
        "{e}"
    );
}

#[test]
fn telemetry_keys_are_checked_by_name() {
    let text = problems(
        "[telemetry]\notlp_endpoint = \"ftp://collector\"\nsample_ratio = 1.5\nservice_name = \" \"",
        "kafka://out",
    );
    for want in [
        "telemetry.otlp_endpoint: \"ftp://collector\" is not an http:// or https:// URL",
        "telemetry.sample_ratio: 1.5 is out of range; 0.0..=1.0",
        "telemetry.service_name: must not be empty",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    let ok = "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.01";
    assert_eq!(problems(ok, "kafka://out"), "");
}

#[test]
fn sse_targets_and_their_limits_are_checked_by_name() {
    assert_eq!(problems("", "sse://blotter"), "");
    let text = problems("", "sse://no/slash");
    assert!(
        text.contains("targets[0].url: \"sse://no/slash\" does not name a valid stream"),
        "{text}"
    );
    let twice = "[[targets]]\nid = \"b\"\nurl = \"sse://blotter\"\ncapacity = 1";
    let text = problems(twice, "sse://blotter");
    assert!(
        text.contains(
            "targets[1].url: \"sse://blotter\": stream \"blotter\" is served by another target"
        ),
        "{text}"
    );
    let text = problems("health_url = \"http://127.0.0.1:1/h\"", "sse://blotter");
    assert!(
        text.contains("targets[0].health_url: does not apply to an sse:// target"),
        "{text}"
    );
    let text = problems(
        "[delivery.sse]\nreplay_max_records = 100\nmax_subscriber_lag_records = 101\nretry_ms = 5",
        "sse://blotter",
    );
    assert!(
        text.contains("delivery.sse.max_subscriber_lag_records: 101 is out of range 1..=100"),
        "{text}"
    );
    assert!(
        text.contains("delivery.sse.retry_ms: 5 is out of range 100..=600000"),
        "{text}"
    );
}

#[test]
fn a_shadow_router_is_checked_like_a_plugin() {
    let ok = minimal(
        "kafka://out",
        "[router.shadow]\nname = \"candidate\"\npath = \"not-wasm.txt\"",
    );
    let c = Config::parse(&ok, &fixture(""), "inline").unwrap_or_else(|e| panic!("{e}"));
    let shadow = c.router.shadow.as_deref().unwrap();
    assert_eq!(shadow.sample_percent, DEFAULT_SHADOW_SAMPLE_PERCENT);
    assert!(
        shadow.path.is_absolute(),
        "resolved against the config file"
    );
    assert_eq!(c.router.without_shadow().shadow, None);

    let bad = minimal(
        "kafka://out",
        "[router.shadow]\nname = \"r\"\npath = \"nope.wasm\"\nsample_percent = 0\n\
         [[filters]]\nname = \"f\"\npath = \"not-wasm.txt\"\n\
         [filters.shadow]\nname = \"g\"\npath = \"not-wasm.txt\"",
    );
    let text = Config::parse(&bad, &fixture(""), "inline")
        .unwrap_err()
        .to_string();
    for want in [
        "router.shadow.sample_percent: 0 is out of range: more than 0, at most 100",
        "filters[0].shadow: only [router] may have a shadow",
        "router.shadow.name: \"r\" is used by another plugin",
        "router.shadow.path: plugin file",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
