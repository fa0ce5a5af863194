//! The real `cdrs run` binary against a Tansu broker process: config file,
//! admin API with a bearer token, capacity pushes, JSON logs (a traced
//! record's lines carrying its trace and span ids), SIGTERM drain and
//! commit.

use crate::flow::ends;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{account, produce, producer, read_dead_letters, send_traced, Fate};
use cdrs_e2e::{cdrs_bin, committed, create_topics, free_port, plugin_dir, wait_for, Tansu};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Value of `cdrs_records_total{outcome, stage}` in a Prometheus text page.
fn records_total(metrics: &str, stage: &str, outcome: &str) -> u64 {
    let needle = format!("cdrs_records_total{{outcome=\"{outcome}\",stage=\"{stage}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The admin token, given as `${CDRS_E2E_ADMIN_TOKEN}`.
const TOKEN: &str = "e2e-admin-secret-8841";
/// A SASL password, given as `file:sasl-password.txt`.
const SASL_SECRET: &str = "e2e-sasl-secret-3317";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_run_binary_delivers_and_commits_on_sigterm() {
    let tansu = Tansu::start();
    let (topic, dlq, partitions) = ("orders", "orders-dlq", 2);
    create_topics(&tansu.brokers, &[(topic, partitions), (dlq, 1)]).await;
    let servers: Vec<AppServer> = [("blotter-1", 100), ("blotter-2", 200), ("blotter-3", 400)]
        .iter()
        .map(|(id, cap)| AppServer::start(id, *cap).unwrap())
        .collect();
    let admin_port = free_port();
    let (otlp, otlp_bodies) = crate::tracing::otlp_receiver().await;
    let dir = std::env::temp_dir().join(format!("cdrs-e2e-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugins = plugin_dir();
    let mut toml = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "cdrs-e2e-run"
topics = ["{topic}"]
dead_letter_topic = "{dlq}"
[kafka.options]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "6000"
"statistics.interval.ms" = "500"
"sasl.password" = "file:sasl-password.txt"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "${{CDRS_E2E_ADMIN_TOKEN}}"

[log]
format = "json"

[telemetry]
otlp_endpoint = "http://{otlp}"

[[filters]]
name = "drop-heartbeats"
path = "{filter}"
[filters.config]
non_json = "dead-letter"
rules = [{{ field = "type", equals = "heartbeat", action = "drop" }}]

[router]
name = "p2c"
path = "{router}"
config = {{ sticky = true }}
"#,
        brokers = tansu.brokers,
        otlp = otlp,
        filter = plugins.join("field_filter.wasm").display(),
        router = plugins.join("p2c_router.wasm").display(),
    );
    for (s, cap) in servers.iter().zip([100, 200, 400]) {
        toml.push_str(&format!(
            "\n[[targets]]\nid = \"{}\"\nurl = \"{}\"\ncapacity = {cap}\n",
            s.id,
            s.url()
        ));
    }
    // A target behind basic auth that nobody answers: its failures are
    // logged, and the log must never show its password.
    let dead = free_port();
    toml.push_str(&format!(
        "\n[[targets]]\nid = \"secret-target\"\nurl = \"http://svc:s3cret@127.0.0.1:{dead}/records\"\n\
         health_url = \"http://svc:s3cret@127.0.0.1:{dead}/health\"\ncapacity = 1\nweight = 1\n"
    ));
    let config = dir.join("cdrs.toml");
    std::fs::write(&config, toml).unwrap();
    // Secrets by reference: neither may show in a log, an answer or
    // `cdrs check`'s output.
    std::fs::write(dir.join("sasl-password.txt"), format!("{SASL_SECRET}\n")).unwrap();
    let checked = Command::new(cdrs_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("CDRS_E2E_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let check_text = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "cdrs check: {check_text}");
    assert!(
        !check_text.contains(TOKEN) && !check_text.contains(SASL_SECRET),
        "{check_text}"
    );
    let log = std::fs::File::create(dir.join("cdrs.log")).unwrap();
    let mut child = Command::new(cdrs_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("CDRS_E2E_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    for s in &servers {
        s.report_to(admin, Duration::from_millis(200), Some(TOKEN.into()));
    }
    let http = cdrs::tls::plain_client();
    let base = format!("http://{admin}");
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_text = || std::fs::read_to_string(dir.join("cdrs.log")).unwrap_or_default();
    assert!(ready, "cdrs run never became ready; log:\n{}", log_text());
    let unauthorized = http
        .put(format!("{base}/v1/targets/blotter-1/capacity"))
        .body(r#"{"capacity":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    // First, records the filter dead-letters that carry a sampled
    // `traceparent` (their log lines must name their trace); then the demo
    // events, behind them in each partition.
    let mut ledger = cdrs::testkit::Ledger::default();
    let p = producer(&tansu.brokers).unwrap();
    let mut traced: HashMap<String, String> = HashMap::new();
    for i in 0..12u64 {
        let trace_id = format!(
            "{:032x}",
            0x7e57_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i)
        );
        let tp = format!("00-{trace_id}-{:016x}-01", 0xabc0 + i);
        let key = format!("traced-{i}");
        let id = send_traced(&p, topic, &key, "not json {", &tp)
            .await
            .unwrap();
        ledger.fates.insert(id.clone(), Fate::DeadLettered);
        ledger.keys.insert(id.clone(), key);
        traced.insert(trace_id, id);
    }
    let events = produce(&tansu.brokers, topic, 5_000, 300).await.unwrap();
    ledger.fates.extend(events.fates);
    ledger.keys.extend(events.keys);
    let refs: Vec<&AppServer> = servers.iter().collect();
    let want = ledger.count(Fate::Delivered);
    assert!(
        wait_for(Duration::from_secs(60), || account(&ledger, &refs)
            .delivered
            == want)
        .await,
        "not all delivered: {:?}; log:\n{}",
        account(&ledger, &refs),
        log_text()
    );
    let metrics_text = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let metrics = metrics_text().await;
    assert_eq!(
        records_total(&metrics, "filter", "dropped"),
        ledger.count(Fate::Filtered) as u64,
        "{metrics}"
    );
    // Each partition's lag (librdkafka's statistics) reaches 0 once all
    // is delivered and committed.
    let lag_zero = |m: &str| {
        (0..partitions).all(|p| {
            let labels = format!("{{partition=\"{p}\",topic=\"{topic}\"}} 0");
            m.lines()
                .any(|l| l == format!("cdrs_partition_lag_records{labels}"))
                && m.lines()
                    .any(|l| l == format!("cdrs_partition_lag_seconds{labels}"))
        })
    };
    let mut metrics = metrics;
    for _ in 0..100 {
        if lag_zero(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = metrics_text().await;
    }
    assert!(lag_zero(&metrics), "partition lag: {metrics}");
    // The same from /v1/partitions: every partition committed up to its
    // high watermark.
    let get_json = |path: &str| {
        let request = http.get(format!("{base}{path}"));
        async move {
            let answer = request.send().await.unwrap();
            answer.json::<serde_json::Value>().await.unwrap()
        }
    };
    let parts = get_json("/v1/partitions").await;
    let parts = parts.as_array().unwrap();
    assert_eq!(parts.len(), partitions as usize, "{parts:?}");
    for p in parts {
        assert_eq!(p["lag_records"], 0, "{p}");
        assert_eq!(p["committed_offset"], p["high_watermark"], "{p}");
        assert_eq!(
            (&p["inflight_records"], &p["held_back"]),
            (&0.into(), &false.into()),
            "{p}"
        );
    }
    let targets = get_json("/v1/targets").await;
    let healthy = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"].as_str().unwrap().starts_with("blotter") && t["health"] == "healthy")
        .count();
    assert_eq!(healthy, 3, "{targets}");
    assert!(!targets.to_string().contains("s3cret"), "{targets}");
    let shown = http
        .get(format!("{base}/v1/config"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains("sasl.password"), "{shown}");
    assert!(
        !shown.contains(TOKEN) && !shown.contains(SASL_SECRET),
        "GET /v1/config shows a secret: {shown}"
    );

    // A plugin swap, a config reload and a server killed: the JSON log
    // below must hold each, every line an object.
    let other_router = std::fs::read(plugins.join("example_router.wasm")).unwrap();
    let swapped = http
        .put(format!("{base}/v1/plugins/p2c"))
        .bearer_auth(TOKEN)
        .body(other_router)
        .send()
        .await
        .unwrap();
    assert!(swapped.status().is_success(), "{:?}", swapped.text().await);
    let reloaded = http
        .post(format!("{base}/v1/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        reloaded.status().is_success(),
        "{:?}",
        reloaded.text().await
    );
    servers[2].kill();
    assert!(
        wait_for(Duration::from_secs(15), || log_text()
            .contains("target health changed"))
        .await,
        "killed server seen down; log:\n{}",
        log_text()
    );

    // SIGTERM: drain, commit, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "cdrs run did not exit within 30 s of SIGTERM; log:\n{}",
            log_text()
        )
    });
    assert!(
        exited.success(),
        "exit status {exited}; log:\n{}",
        log_text()
    );
    assert!(
        log_text().contains("final offsets committed"),
        "log:\n{}",
        log_text()
    );
    assert!(
        log_text().contains("svc:redacted@") && !log_text().contains("s3cret"),
        "the failing target is logged, its password never: {}",
        log_text()
    );
    assert!(
        !log_text().contains(TOKEN) && !log_text().contains(SASL_SECRET),
        "a secret in the log"
    );
    assert!(
        !log_text().contains('\u{1b}'),
        "no colour codes in a log file"
    );
    // `[log] format = "json"`: every line one object with a level, a target
    // and a message; the swap, the reload and the kill among them.
    let text = log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(
            l["level"].is_string() && l["target"].is_string() && l["message"].is_string(),
            "{l}"
        );
    }
    for message in ["plugin swapped", "config reloaded", "target health changed"] {
        assert!(
            lines.iter().any(|l| l["message"] == message),
            "no {message:?} line in the JSON log"
        );
    }
    let swap = lines
        .iter()
        .find(|l| l["message"] == "plugin swapped")
        .unwrap();
    assert_eq!(swap["plugin"], "p2c", "fields at the top level: {swap}");
    // Each traced record's dead-letter line carries its trace id and CDRS's
    // span id at the top level; its spans reached the OTLP receiver.
    let traced_lines: HashMap<String, &serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "traced record dead-lettered" && l["stage"] == "filter")
        .map(|l| (l["trace_id"].as_str().unwrap_or_default().to_string(), l))
        .collect();
    for (trace_id, id) in &traced {
        let l = traced_lines
            .get(trace_id)
            .unwrap_or_else(|| panic!("no line with trace_id {trace_id} ({id}): {text}"));
        assert_eq!(l["record"], id.as_str(), "{l}");
        let span_id = l["span_id"].as_str().unwrap_or_default();
        assert!(
            span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{l}"
        );
    }
    assert_eq!(traced_lines.len(), traced.len(), "{traced_lines:?}");
    let exported: Vec<String> = crate::tracing::spans(&otlp_bodies.lock().unwrap())
        .iter()
        .filter_map(|(s, _)| s["traceId"].as_str().map(str::to_string))
        .collect();
    for trace_id in traced.keys() {
        assert!(
            exported.contains(trace_id),
            "no span of {trace_id} exported"
        );
    }

    let a = account(&ledger, &refs);
    assert_eq!((a.lost, a.unexpected), (0, 0), "{a:?}");
    let dl = ledger.count(Fate::DeadLettered);
    let dead = tokio::task::spawn_blocking({
        let b = tansu.brokers.clone();
        move || read_dead_letters(&b, dlq, 1, dl, Duration::from_secs(20))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(dead.len(), dl);
    assert_eq!(
        committed(&tansu.brokers, "cdrs-e2e-run", topic, partitions),
        ends(&ledger, partitions)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
