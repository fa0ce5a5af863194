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
