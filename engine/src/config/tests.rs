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
        text.contains("valid: http://host:port/path (HTTP sink) or kafka://topic (Kafka sink)"),
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
    assert_eq!(Config::check_kafka_options(&load("")), vec![]);
    assert_eq!(
        load("\"session.timeout.ms\" = \"6000\"\n\"linger.ms\" = \"5\"").check_kafka_options(),
        vec![]
    );
    // Every bad option at once, each named.
    let p =
        load("\"no.such.option\" = \"1\"\n\"session.timeout.ms\" = \"soon\"").check_kafka_options();
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
    let p = load("\"acks\" = \"1\"").check_kafka_options();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "kafka.options");
    assert!(
        p[0].message
            .starts_with("librdkafka cannot create a producer with them: "),
        "{p:?}"
    );
    assert!(p[0].message.contains("acks"), "{p:?}");
}

/// Durations beyond a day wrapped `now + duration` (a failing target kept
/// "healthy", an open breaker shown healthy); each is refused by name.
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
