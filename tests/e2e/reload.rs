//! Config reload while records flow: edits to the watched file apply as a
//! diff; invalid files and restart-only changes change nothing.

use crate::common::start_with;
use crate::common::trades;
use cdrs::config::{Config, PluginConfig};
use cdrs::reload::ReloadReport;
use cdrs::testkit::produce_events;
use cdrs_e2e::{mock_cluster, plugin_dir, wait_for};
use std::path::Path;
use std::time::Duration;

/// Writes `config` to `path` and waits for the watcher's reload of it.
async fn edit(daemon: &cdrs::daemon::Daemon, path: &Path, config: &Config) -> ReloadReport {
    let before = daemon.reloader.last().map(|r| r.at_ms);
    // Reports are stamped in ms: make sure a new one can be told apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
    let seen = wait_for(Duration::from_secs(20), || {
        daemon.reloader.last().map(|r| r.at_ms) != before
    })
    .await;
    assert!(seen, "config file change not picked up");
    daemon.reloader.last().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_apply_live_and_bad_ones_change_nothing() {
    let brokers = mock_cluster(&[("trades", 3), ("trades-dlq", 1)]);
    let dir = std::env::temp_dir().join(format!("cdrs-e2e-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cdrs.toml");
    let s = start_with(
        &brokers,
        "trades",
        "trades-dlq",
        "cdrs-e2e-reload",
        |_| {},
        Some(path.clone()),
    )
    .await;
    let mut config = s.daemon.reloader.active();

    let mut ledger = produce_events(&brokers, "trades", trades(0, 2000))
        .await
        .unwrap();

    // 1. Add a filter to the chain: later records carry its stamp.
    let mut stamp = toml::Table::new();
    stamp.insert(
        "stamp_header".into(),
        toml::Value::String("x-filtered-by".into()),
    );
    config.filters.push(PluginConfig {
        name: "stamp".into(),
        path: plugin_dir().join("field_filter.wasm"),
        config: stamp,
        sha256: None,
        shadow: None,
    });
    let r = edit(&s.daemon, &path, &config).await;
    assert!(r.ok, "{r:?}");
    assert!(
        r.changed.iter().any(|c| c.contains("filters.stamp: added")),
        "{r:?}"
    );

    // 2. Drop blotter-1 from the targets: it gets nothing more. Raise the
    // log level in the same edit.
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    config.targets.remove(0);
    config.log.level = "cdrs=debug,warn".into();
    let r = edit(&s.daemon, &path, &config).await;
    assert!(r.ok, "{r:?}");
    assert!(r.changed.iter().any(|c| c.starts_with("targets")), "{r:?}");
    assert!(
        r.changed.iter().any(|c| c.starts_with("log.level")),
        "{r:?}"
    );
    let had = s.servers[0].count();
    let more = produce_events(&brokers, "trades", trades(2000, 2000))
        .await
        .unwrap();
    ledger.fates.extend(more.fates.clone());
    ledger.keys.extend(more.keys.clone());
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    assert_eq!(s.servers[0].count(), had, "removed target got records");
    for srv in &s.servers[1..] {
        for rec in srv
            .received()
            .iter()
            .filter(|r| more.fates.contains_key(&r.id))
        {
            assert!(
                rec.headers.iter().any(|(k, _)| k == "x-filtered-by"),
                "{} not stamped",
                rec.id
            );
        }
    }

    // 3. An invalid file and a restart-only change: rejected by name, nothing changes.
    let active = s.daemon.reloader.active();
    let before = s.daemon.reloader.last().map(|r| r.at_ms);
    tokio::time::sleep(Duration::from_millis(5)).await;
    std::fs::write(&path, "[kafka]\nbrokers = 42\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || s
            .daemon
            .reloader
            .last()
            .map(|r| r.at_ms)
            != before)
        .await
    );
    let r = s.daemon.reloader.last().unwrap();
    assert!(
        !r.ok && r.errors.iter().any(|e| e.contains("brokers")),
        "{r:?}"
    );
    let mut restart = config.clone();
    restart.kafka.group_id = "another-group".into();
    let r = edit(&s.daemon, &path, &restart).await;
    assert!(!r.ok, "{r:?}");
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("kafka.group_id") && e.contains("restart")),
        "{r:?}"
    );
    assert_eq!(s.daemon.reloader.active(), active, "nothing changed");

    // POST /v1/reload reports the same.
    let resp = cdrs::tls::plain_client()
        .post(format!("http://{}/v1/reload", s.daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body = resp.text().await.unwrap();
    assert!(body.contains("kafka.group_id"), "{body}");

    let (a, _, _, _) = s.finish(&ledger).await;
    assert_eq!(a.lost, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
