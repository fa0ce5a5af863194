//! The dashboard in a real browser: headless Chromium (driven by
//! `tests/ui/dashboard.cjs`) opens `/ui` of a pipeline on Tansu with three
//! app servers, sees them healthy, and sees a killed one go down with its
//! reason within 5 s, live, without a reload. Screenshots go to
//! `target/dashboard/`.

use crate::common::start;
use cdrs::testkit::{produce, produce_events, trade_event, Fate};
use cdrs_e2e::{create_topics, Tansu};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A line from the driver, at most `within` from now.
pub(crate) async fn line(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    within: Duration,
) -> String {
    tokio::time::timeout(within, out.next_line())
        .await
        .expect("the dashboard driver answers in time")
        .unwrap()
        .expect("the dashboard driver is still running")
}

/// Reads SSE `data:` objects from `resp` until one satisfies `until`.
async fn events_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    until: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            for data in block.lines().filter_map(|l| l.strip_prefix("data: ")) {
                let e: serde_json::Value = serde_json::from_str(data).unwrap();
                let done = until(&e);
                out.push(e);
                if done {
                    return out;
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// Where a test's screenshots go: `target/dashboard/NAME/` (NAME may be empty).
pub(crate) fn shots_dir(name: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shots = root.join("target/dashboard").join(name);
    std::fs::create_dir_all(&shots).unwrap();
    shots
}

/// The dashboard driver (`tests/ui/dashboard.cjs`) on `url`, expecting
/// `targets` healthy rows: the process, its output lines and its input.
pub(crate) fn open_dashboard(
    url: &str,
    targets: usize,
    shots: &std::path::Path,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    tokio::process::ChildStdin,
) {
    ui_driver(
        "dashboard.cjs",
        &[url, &targets.to_string(), shots.to_str().unwrap()],
    )
}

/// A headless-Chromium script of `tests/ui/` run with `args`: the process,
/// its output lines and its input.
pub(crate) fn ui_driver(
    script: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    tokio::process::ChildStdin,
) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Installed by scripts/dev.sh test (`need_browser`).
    let chromium = std::env::var("CDRS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = std::env::var("CDRS_UI_NODE_MODULES")
        .unwrap_or_else(|_| root.join(".tools/ui/node_modules").display().to_string());
    assert!(
        std::path::Path::new(&chromium).exists()
            && std::path::Path::new(&modules).join("puppeteer-core").exists(),
        "Chromium ({chromium}) and puppeteer-core ({modules}) are needed: scripts/dev.sh test installs them"
    );

    let mut driver = tokio::process::Command::new("node")
        .arg(root.join("tests/ui").join(script))
        .args(args)
        .env("CDRS_CHROMIUM", chromium)
        .env("NODE_PATH", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/ui/dashboard.cjs");
    let out = BufReader::new(driver.stdout.take().unwrap()).lines();
    let stdin = driver.stdin.take().unwrap();
    (driver, out, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_killed_server_down_live() {
    let shots = shots_dir("");
    let tansu = Tansu::start();
    let (topic, dlq) = ("dashboard", "dashboard-dlq");
    create_topics(&tansu.brokers, &[(topic, 3), (dlq, 1)]).await;
    let s = start(&tansu.brokers, topic, dlq, "cdrs-e2e-dashboard", |c| {
        // Reports every 200 ms; a server silent for 1 s is down.
        c.capacity.report_expiry_ms = 1_000;
        c.capacity.failure_cooldown_ms = 60_000;
    })
    .await;
    let mut ledger = produce(&tansu.brokers, topic, 3_000, 300).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;

    let url = format!("http://{}/ui", s.daemon.admin_addr);
    let (mut driver, mut out, mut stdin) = open_dashboard(&url, 3, &shots);
    let ready = line(&mut out, Duration::from_secs(90)).await;
    assert_eq!(ready, "READY", "the page shows three healthy targets");

    // An event stream client, following from now on.
    let events_url = format!("http://{}/v1/events", s.daemon.admin_addr);
    let http = reqwest::Client::new();
    let mut stream = http.get(&events_url).send().await.unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();

    let victim = &s.servers[2];
    victim.kill();
    stdin
        .write_all(format!("KILLED {}\n", victim.id).as_bytes())
        .await
        .unwrap();
    let down = line(&mut out, Duration::from_secs(30)).await;
    eprintln!("dashboard: {down}");
    let rest = down
        .strip_prefix("DOWN ")
        .unwrap_or_else(|| panic!("{down}"));
    let (ms, reason) = rest.split_once(' ').unwrap();
    assert!(ms.parse::<u64>().unwrap() <= 5_000, "{down}");
    assert!(!reason.trim().is_empty(), "{down}");
    let is_kill =
        |e: &serde_json::Value| e["type"] == "target.health" && e["target"] == victim.id.as_str();
    let seen = events_until(&mut stream, &mut buf, is_kill).await;
    let kill = seen.last().unwrap();
    assert_eq!(
        (&kill["from"], &kill["to"]),
        (&"healthy".into(), &"down".into()),
        "{kill}"
    );
    assert!(!kill["reason"].as_str().unwrap().is_empty(), "{kill}");
    // A reconnect with Last-Event-ID gets exactly the events after it: the
    // same as the whole history (from id 0) holds after that id.
    let kill_id = kill["id"].as_u64().unwrap();
    let after: Vec<serde_json::Value> = {
        let mut all = http
            .get(&events_url)
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap();
        let mut b = String::new();
        let newest = s.daemon.metrics.events.recent(1)[0].id;
        events_until(&mut all, &mut b, |e| e["id"] == newest)
            .await
            .into_iter()
            .filter(|e| e["id"].as_u64().unwrap() > kill_id)
            .collect()
    };
    s.daemon
        .metrics
        .events
        .publish("test.marker", serde_json::json!({}));
    let mut resumed = http
        .get(&events_url)
        .header("last-event-id", kill_id.to_string())
        .send()
        .await
        .unwrap();
    let mut b = String::new();
    let got = events_until(&mut resumed, &mut b, |e| e["type"] == "test.marker").await;
    let ids = |v: &[serde_json::Value]| {
        v.iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&got[..got.len() - 1]), ids(&after), "{got:?}");
    assert_eq!(
        got.last().unwrap()["id"].as_u64().unwrap(),
        s.daemon.metrics.events.recent(1)[0].id
    );
    drop((stream, resumed));

    let done = line(&mut out, Duration::from_secs(60)).await;
    assert_eq!(done, "DONE", "readable on a dark background and a phone");
    assert!(driver.wait().await.unwrap().success());
    for f in [
        "dashboard-healthy.png",
        "dashboard-target-down.png",
        "dashboard-phone.png",
    ] {
        let size = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{f}: {size} bytes");
    }

    // Records after the kill go to the other two; nothing is lost.
    let second: Vec<_> = (3_000..6_000).map(|i| trade_event(i, 300)).collect();
    let more = produce_events(&tansu.brokers, topic, second).await.unwrap();
    ledger.fates.extend(more.fates);
    ledger.keys.extend(more.keys);
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let before = victim.count();
    // `finish` asserts that none is lost.
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_eq!(
        servers[2].count(),
        before,
        "nothing reached the dead server"
    );
    assert_eq!(a.delivered, ledger.count(Fate::Delivered), "{a:?}");
}
