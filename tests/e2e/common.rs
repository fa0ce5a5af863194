//! A scenario: three app servers, a running CDRS, and the ledger checks.

use cdrs::config::Config;
use cdrs::daemon::Daemon;
use cdrs::testkit::appserver::AppServer;
use cdrs::testkit::{account, demo_config, read_dead_letters, Accounting, Fate, Ledger};
use cdrs_e2e::{plugin_dir, wait_for};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub const CAPACITIES: [u32; 3] = [100, 200, 400];

pub struct Scenario {
    pub brokers: String,
    pub topic: String,
    pub dlq: String,
    pub servers: Vec<AppServer>,
    pub daemon: Daemon,
}

/// Starts three servers (capacities 1:2:4) reporting every 200 ms and a CDRS
/// with the demo plugins; `tweak` adjusts the config first.
pub async fn start(
    brokers: &str,
    topic: &str,
    dlq: &str,
    group: &str,
    tweak: impl FnOnce(&mut Config),
) -> Scenario {
    start_with(brokers, topic, dlq, group, tweak, None).await
}

/// As [`start`]; with `file`, the config is written there and CDRS watches it.
pub async fn start_with(
    brokers: &str,
    topic: &str,
    dlq: &str,
    group: &str,
    tweak: impl FnOnce(&mut Config),
    file: Option<std::path::PathBuf>,
) -> Scenario {
    let servers: Vec<AppServer> = CAPACITIES
        .iter()
        .enumerate()
        .map(|(i, _)| {
            AppServer::start(&format!("blotter-{}", i + 1), CAPACITIES[i]).expect("app server")
        })
        .collect();
    start_on(brokers, topic, dlq, group, servers, tweak, file).await
}

/// As [`start_with`], with servers of the caller's (each a target).
pub async fn start_on(
    brokers: &str,
    topic: &str,
    dlq: &str,
    group: &str,
    servers: Vec<AppServer>,
    tweak: impl FnOnce(&mut Config),
    file: Option<std::path::PathBuf>,
) -> Scenario {
    let targets = servers.iter().map(AppServer::target_config).collect();
    let mut config = demo_config(brokers, group, topic, dlq, &plugin_dir(), targets);
    tweak(&mut config);
    let problems = config.validate();
    assert!(problems.is_empty(), "test config invalid: {problems:?}");
    if let Some(f) = &file {
        std::fs::write(f, toml::to_string(&config).expect("config as TOML")).expect("write config");
    }
    let daemon = Daemon::start(config, file).await.expect("cdrs starts");
    for s in &servers {
        s.report_to(daemon.admin_addr, Duration::from_millis(200), None);
    }
    daemon
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("consumer joins its group");
    Scenario {
        brokers: brokers.into(),
        topic: topic.into(),
        dlq: dlq.into(),
        servers,
        daemon,
    }
}

impl Scenario {
    pub fn refs(&self) -> Vec<&AppServer> {
        self.servers.iter().collect()
    }

    pub fn accounted(&self, ledger: &Ledger) -> usize {
        let a = account(ledger, &self.refs());
        let m = &self.daemon.metrics;
        a.delivered
            + m.get("filter", "dropped") as usize
            + m.get("filter", "dead_lettered") as usize
            + m.get("router", "dead_lettered") as usize
    }

    /// Waits until every record of the ledger is accounted for.
    pub async fn wait_accounted(&self, ledger: &Ledger, timeout: Duration) {
        let ok = wait_for(timeout, || self.accounted(ledger) >= ledger.fates.len()).await;
        assert!(
            ok,
            "only {} of {} records accounted for after {timeout:?}: {:?}",
            self.accounted(ledger),
            ledger.fates.len(),
            account(ledger, &self.refs())
        );
    }

    /// Stops CDRS and returns the servers' accounting and the dead letters.
    pub async fn finish(
        self,
        ledger: &Ledger,
    ) -> (Accounting, Vec<(String, String)>, Vec<AppServer>, String) {
        let filtered = self.daemon.metrics.get("filter", "dropped") as usize;
        self.daemon.stop().await.expect("clean stop");
        let want = ledger.count(Fate::DeadLettered);
        let (brokers, dlq) = (self.brokers.clone(), self.dlq.clone());
        let dead = tokio::task::spawn_blocking(move || {
            read_dead_letters(&brokers, &dlq, 1, want, Duration::from_secs(20))
        })
        .await
        .unwrap()
        .expect("read dead letters");
        let a = account(ledger, &self.servers.iter().collect::<Vec<_>>());
        assert_eq!(a.lost, 0, "records lost: {a:?}");
        assert_eq!(
            a.unexpected, 0,
            "filtered or dead-lettered records reached a server: {a:?}"
        );
        assert_eq!(filtered, ledger.count(Fate::Filtered), "filtered count");
        let dead_ids: HashSet<&String> = dead.iter().map(|(id, _)| id).collect();
        let want_ids: HashSet<&String> = ledger
            .fates
            .iter()
            .filter(|(_, f)| **f == Fate::DeadLettered)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            dead_ids, want_ids,
            "dead-lettered records are exactly the malformed ones"
        );
        assert_eq!(dead.len(), want, "each dead letter written once");
        eprintln!(
            "ledger: produced {} delivered {} filtered {} dead-lettered {} lost {} duplicates {} per target {:?}",
            ledger.fates.len(),
            a.delivered,
            filtered,
            dead.len(),
            a.lost,
            a.duplicates,
            a.per_target
        );
        (a, dead, self.servers, self.topic)
    }
}

/// `n` plain trade events (all to be delivered) from sequence `from`, keyed
/// by 300 client ids.
pub fn trades(from: u64, n: u64) -> Vec<(String, String, Fate)> {
    (from..from + n)
        .map(|i| {
            (
                format!("client-{}", i % 300),
                format!(r#"{{"type":"trade","seq":{i}}}"#),
                Fate::Delivered,
            )
        })
        .collect()
}

/// Asserts each target's share of delivered records is within ±15%
/// (relative) of its capacity share.
pub fn assert_capacity_split(a: &Accounting) {
    let total: usize = a.per_target.values().sum();
    let cap_total: u32 = CAPACITIES.iter().sum();
    for (i, cap) in CAPACITIES.iter().enumerate() {
        let id = format!("blotter-{}", i + 1);
        let got = a.per_target[&id] as f64 / total as f64;
        let want = f64::from(*cap) / f64::from(cap_total);
        assert!(
            (got / want - 1.0).abs() <= 0.15,
            "{id}: share {got:.3}, capacity share {want:.3} (per target {:?})",
            a.per_target
        );
    }
}

/// Asserts every key went to exactly one server and arrived there in offset order.
pub fn assert_sticky_and_ordered(ledger: &Ledger, servers: &[AppServer]) {
    let mut owner: BTreeMap<&String, &str> = BTreeMap::new();
    for s in servers {
        let mut last: BTreeMap<(i32, Vec<u8>), i64> = BTreeMap::new();
        for r in s.received() {
            let key = &ledger.keys[&r.id];
            let prev = owner.insert(key, &s.id);
            assert!(
                prev.is_none() || prev == Some(&s.id),
                "key {key} reached {prev:?} and {}",
                s.id
            );
            let k = (r.partition, r.key.clone().unwrap_or_default());
            if let Some(&o) = last.get(&k) {
                assert!(
                    r.offset > o,
                    "key {key} out of order at {}: {} after {o}",
                    s.id,
                    r.offset
                );
            }
            last.insert(k, r.offset);
        }
    }
}
