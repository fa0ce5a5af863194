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
async fn line(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    within: Duration,
) -> String {
    tokio::time::timeout(within, out.next_line())
        .await
        .expect("the dashboard driver answers in time")
        .unwrap()
        .expect("the dashboard driver is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_killed_server_down_live() {
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
    let shots = root.join("target/dashboard");
    std::fs::create_dir_all(&shots).unwrap();

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
    let mut driver = tokio::process::Command::new("node")
        .arg(root.join("tests/ui/dashboard.cjs"))
        .args([&url, "3", shots.to_str().unwrap()])
        .env("CDRS_CHROMIUM", chromium)
        .env("NODE_PATH", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs tests/ui/dashboard.cjs");
    let mut out = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut stdin = driver.stdin.take().unwrap();
    let ready = line(&mut out, Duration::from_secs(90)).await;
    assert_eq!(ready, "READY", "the page shows three healthy targets");

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
