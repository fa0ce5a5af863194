//! Chaos tests: separate `cdrs run` processes, app servers as separate
//! `cdrs demo-server` processes (each appends what it received to a log
//! file before answering), a real broker (a Tansu process; librdkafka's mock
//! cluster where the broker itself must go down and up). 50,000 keyed
//! records per case; the servers' logs and the dead-letter topic are checked
//! against the ledger: every record the filter kept is delivered at least
//! once or dead-lettered, in key order per target, none lost.
//!
//! Each case prints one row of the chaos table of docs/reliability.md
//! (`scripts/dev.sh chaos` shows them). The cases run one at a time
//! (a lock), as they load both cores.

use cdrs::config::{Config, TargetConfig, WhenNoTarget};
use cdrs::testkit::appserver::{read_log, LogLine};
use cdrs::testkit::{
    dead_letter_headers, demo_config, produce_with, producer, trade_event, Fate, Ledger,
};
use cdrs_e2e::{cdrs_bin, create_topics, free_port, mock_cluster_handle, plugin_dir, Tansu};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RECORDS: u64 = 50_000;
const CLIENTS: u64 = 500;
const PARTITIONS: i32 = 6;
/// The records are produced `CHUNK` every `PACE` (~3,300/s, ~15 s in all)
/// while CDRS runs, so every case's fault (the longest: a server failing
/// for 10 s from 10% on) lands mid-stream.
const CHUNK: usize = 1_000;
const PACE: Duration = Duration::from_millis(300);
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An app server process.
struct Server {
    id: String,
    capacity: u32,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(dir: &std::path::Path, id: &str, capacity: u32) -> Server {
        let mut s = Server {
            id: id.into(),
            capacity,
            port: free_port(),
            log: dir.join(format!("{id}.jsonl")),
            child: None,
        };
        s.restart();
        s
    }

    /// (Re)starts the process on the same port and log file.
    fn restart(&mut self) {
        let child = Command::new(cdrs_bin())
            .args(["demo-server", "--id", &self.id])
            .args(["--capacity", &self.capacity.to_string()])
            .args(["--port", &self.port.to_string()])
            .arg("--log")
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo-server");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{} did not listen", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn control(&self, body: serde_json::Value) {
        cdrs::tls::plain_client()
            .post(format!("http://127.0.0.1:{}/control", self.port))
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("control request");
    }

    fn target(&self) -> TargetConfig {
        TargetConfig {
            id: self.id.clone(),
            url: format!("http://127.0.0.1:{}/records", self.port),
            capacity: self.capacity,
            weight: cdrs::config::DEFAULT_WEIGHT,
            zone: None,
            labels: Default::default(),
            health_url: None,
            report_token: None,
            tls: None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `cdrs run` process.
struct Instance {
    child: Option<Child>,
    admin: SocketAddr,
    peak_rss_kib: u64,
}

impl Instance {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads the peak resident set (VmHWM) so far.
    fn sample_rss(&mut self) {
        let Some(pid) = self.pid() else { return };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    fn kill9(&mut self) {
        self.sample_rss();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0 and
    /// how long it took.
    fn sigterm(&mut self, limit: Duration) -> (bool, Duration) {
        self.sample_rss();
        let Some(mut c) = self.child.take() else {
            return (false, Duration::ZERO);
        };
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        while started.elapsed() < limit {
            if let Ok(Some(status)) = c.try_wait() {
                return (status.success(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        (false, started.elapsed())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Dead letters read so far: original id → stage.
struct DeadLetters {
    consumer: BaseConsumer,
    seen: HashMap<String, String>,
}

impl DeadLetters {
    fn new(brokers: &str, topic: &str) -> DeadLetters {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "chaos-dlq-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("dlq consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .expect("dlq partition");
        consumer.assign(&tpl).expect("assign dlq");
        DeadLetters {
            consumer,
            seen: HashMap::new(),
        }
    }

    /// Reads what is there now (at most `limit`).
    fn poll(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(50)) else {
                return;
            };
            let (id, h) = dead_letter_headers(&m);
            self.seen
                .insert(id, h.get("cdrs-dlq-stage").cloned().unwrap_or_default());
        }
    }
}

/// One case's outcome: a row of the chaos table (docs/reliability.md).
#[derive(Debug, Default)]
struct Tally {
    produced: usize,
    filtered: usize,
    delivered: usize,
    duplicates: usize,
    dead_lettered: usize,
    lost: usize,
    out_of_order: usize,
    unexpected: usize,
    /// Delivered and also dead-lettered (the target took it but its answer
    /// was lost, and then no target could take it again).
    both: usize,
}

fn tally(ledger: &Ledger, logs: &[Vec<LogLine>], dead: &HashMap<String, String>) -> Tally {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut t = Tally {
        produced: ledger.fates.len(),
        filtered: ledger.count(Fate::Filtered),
        dead_lettered: dead.len(),
        ..Tally::default()
    };
    // Receipts of each record over all targets.
    let mut receipts: HashMap<&str, usize> = HashMap::new();
    for l in logs.iter().flatten() {
        *receipts.entry(l.id.as_str()).or_default() += 1;
    }
    for log in logs {
        // Per target, per partition and key (a key the producer pins to
        // several partitions has an order in each): the records delivered
        // once come in offset order. A record delivered again after its
        // partition changed owner (at-least-once) may go to another target
        // the second time, where it lands after later ones by design.
        let mut last: HashMap<(i32, &str), i64> = HashMap::new();
        for l in log {
            if ledger.fates.get(&l.id) != Some(&Fate::Delivered) {
                t.unexpected += 1;
            }
            if !seen.insert(&l.id) {
                t.duplicates += 1;
            }
            if receipts[l.id.as_str()] == 1 {
                let key = l.key.as_deref().unwrap_or("");
                let prev = last.entry((l.partition, key)).or_insert(-1);
                if l.offset < *prev {
                    t.out_of_order += 1;
                }
                *prev = (*prev).max(l.offset);
            }
        }
    }
    for (id, fate) in &ledger.fates {
        match fate {
            Fate::Delivered if seen.contains(id.as_str()) => {
                t.delivered += 1;
                t.both += usize::from(dead.contains_key(id));
            }
            Fate::Delivered | Fate::DeadLettered if dead.contains_key(id) => {}
            Fate::Filtered => {}
            _ => t.lost += 1,
        }
    }
    t
}

/// Brokers, servers, CDRS processes and the ledger of one case.
struct Rig {
    name: &'static str,
    /// How many records the case produces.
    records: u64,
    dir: PathBuf,
    config: Config,
    servers: Vec<Server>,
    instances: Vec<Instance>,
    ledger: Ledger,
    /// Records the case produced itself, beside the producer task's.
    extra: Ledger,
    producer: Option<tokio::task::JoinHandle<Ledger>>,
    dead: DeadLetters,
    started: Instant,
    _tansu: Option<Tansu>,
}

impl Rig {
    /// Starts a broker (Tansu unless `mock` is given), three servers
    /// (capacities 1:2:4), produces the records; CDRS is not started yet.
    async fn new(name: &'static str, mock: Option<String>, tweak: impl FnOnce(&mut Config)) -> Rig {
        Rig::sized(name, mock, RECORDS, tweak).await
    }

    /// As [`Rig::new`], with `records` records.
    async fn sized(
        name: &'static str,
        mock: Option<String>,
        records: u64,
        tweak: impl FnOnce(&mut Config),
    ) -> Rig {
        let (topic, dlq) = (format!("chaos-{name}"), format!("chaos-{name}-dlq"));
        let (brokers, tansu) = match mock {
            Some(b) => (b, None),
            None => {
                let t = Tansu::start();
                create_topics(&t.brokers, &[(&topic, PARTITIONS), (&dlq, 1)]).await;
                (t.brokers.clone(), Some(t))
            }
        };
        let dir = std::env::temp_dir().join(format!("cdrs-chaos-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let servers: Vec<Server> = [("blotter-1", 100), ("blotter-2", 200), ("blotter-3", 400)]
            .iter()
            .map(|(id, cap)| Server::start(&dir, id, *cap))
            .collect();
        for s in &servers {
            s.control(serde_json::json!({"latency_ms": 2})).await;
        }
        let mut config = demo_config(
            &brokers,
            &format!("chaos-{name}"),
            &topic,
            &dlq,
            &plugin_dir(),
            servers.iter().map(Server::target).collect(),
        );
        config.log.level = "info".into();
        config.delivery.retry_max_ms = 500;
        config.delivery.breaker.base_ejection_ms = 2_000;
        config.delivery.breaker.max_ejection_ms = 10_000;
        config.pipeline.shutdown_grace_ms = 15_000;
        config.pipeline.revoke_drain_ms = 4_000;
        tweak(&mut config);
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        // Produced while CDRS runs (`CHUNK` every `PACE`), so faults land
        // mid-stream.
        let producer = {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            tokio::spawn(async move {
                let mut ledger = Ledger::default();
                let producer = producer(&brokers).expect("producer");
                let events: Vec<_> = (0..records).map(|i| trade_event(i, CLIENTS)).collect();
                let mut pace = tokio::time::interval(PACE);
                for chunk in events.chunks(CHUNK) {
                    pace.tick().await;
                    let part = produce_with(&producer, &topic, chunk)
                        .await
                        .expect("produce");
                    ledger.fates.extend(part.fates);
                    ledger.keys.extend(part.keys);
                }
                ledger
            })
        };
        Rig {
            records,
            producer: Some(producer),
            ledger: Ledger::default(),
            extra: Ledger::default(),
            name,
            dead: DeadLetters::new(&brokers, &dlq),
            dir,
            config,
            servers,
            instances: Vec::new(),
            started: Instant::now(),
            _tansu: tansu,
        }
    }

    /// Starts one more `cdrs run` and waits until it joined the group.
    async fn start_instance(&mut self) -> usize {
        self.start_instance_as(None).await
    }

    /// As [`Rig::start_instance`], named `id` in the fleet
    /// (`control.instance_id`; default `<hostname>-<pid>`).
    async fn start_instance_as(&mut self, id: Option<&str>) -> usize {
        let n = self.spawn_instance(id);
        self.wait_ready(n).await;
        n
    }

    /// Starts `cdrs run` processes named `ids` at once (one rebalance
    /// rather than one per process) and waits until all joined the group.
    async fn start_instances_as(&mut self, ids: &[&str]) -> Vec<usize> {
        let started: Vec<usize> = ids.iter().map(|id| self.spawn_instance(Some(id))).collect();
        for &n in &started {
            self.wait_ready(n).await;
        }
        started
    }

    /// Starts one more `cdrs run` (named `id`); returns its index.
    fn spawn_instance(&mut self, id: Option<&str>) -> usize {
        let n = self.instances.len();
        let port = free_port();
        let mut config = self.config.clone();
        config.admin.listen = format!("127.0.0.1:{port}");
        config.control.instance_id = id.map(str::to_owned);
        let file = self.dir.join(format!("cdrs-{n}.toml"));
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("cdrs-{n}.log"))).unwrap();
        let child = Command::new(cdrs_bin())
            .args(["run", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cdrs run");
        let admin: SocketAddr = ([127, 0, 0, 1], port).into();
        self.instances.push(Instance {
            child: Some(child),
            admin,
            peak_rss_kib: 0,
        });
        n
    }

    /// Waits until instance `n` answers `/readyz` (it joined its group).
    async fn wait_ready(&self, n: usize) {
        let url = format!("http://{}/readyz", self.instances[n].admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cdrs-{n} did not join its group");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.phase(&format!("cdrs-{n} ready"));
    }

    /// Prints when a step of the case was reached (the case's timeline).
    fn phase(&self, what: &str) {
        eprintln!(
            "{}: {what} at {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn logs(&self) -> Vec<Vec<LogLine>> {
        self.servers
            .iter()
            .map(|s| read_log(&s.log).expect("server log"))
            .collect()
    }

    fn tally(&mut self) -> Tally {
        tokio::task::block_in_place(|| self.dead.poll(Duration::from_millis(300)));
        for i in &mut self.instances {
            i.sample_rss();
        }
        tally(&self.ledger, &self.logs(), &self.dead.seen)
    }

    /// Waits until `share` of all records reached some server.
    async fn wait_delivered(&mut self, share: f64) {
        let want = (self.records as f64 * share) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got: HashSet<String> = self.logs().into_iter().flatten().map(|l| l.id).collect();
            if got.len() >= want {
                self.phase(&format!("{:.0}% delivered", share * 100.0));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: stuck at {} delivered",
                self.name,
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The router version (sha256) instance `n` runs and the one before
    /// it, from `GET /v1/plugins`.
    async fn router(&self, n: usize) -> (Option<String>, Option<String>) {
        let url = format!("http://{}/v1/plugins", self.instances[n].admin);
        let plugins: serde_json::Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let Some(router) = plugins
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["kind"] == "router"))
        else {
            return (None, None);
        };
        let field = |k: &str| router[k].as_str().map(str::to_owned);
        (field("version"), field("previous_version"))
    }

    /// Records each server logged so far (duplicates included).
    fn received(&self) -> Vec<usize> {
        self.logs().iter().map(Vec::len).collect()
    }

    /// The `/metrics` text of instance `n`.
    async fn metrics(&self, n: usize) -> String {
        let url = format!("http://{}/metrics", self.instances[n].admin);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sums a counter family (all labels) over the live instances' metrics.
    async fn counter(&self, name: &str) -> u64 {
        let mut sum = 0.0;
        for i in self.instances.iter().filter(|i| i.child.is_some()) {
            let Ok(r) = reqwest::get(format!("http://{}/metrics", i.admin)).await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            sum += text
                .lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum as u64
    }

    /// Waits until nothing is lost any more (at most `limit`), stops the
    /// instances, prints the row and checks it.
    async fn finish(mut self, limit: Duration) -> Tally {
        if let Some(p) = self.producer.take() {
            self.ledger = p.await.expect("producer task");
        }
        let extra = std::mem::take(&mut self.extra);
        self.ledger.fates.extend(extra.fates);
        self.ledger.keys.extend(extra.keys);
        self.phase("all produced");
        let deadline = Instant::now() + limit;
        let mut t = self.tally();
        while t.lost > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            t = self.tally();
        }
        self.phase("all accounted for");
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "{}: rerouted {} retries {} ejections {} prefetched-now {} (live instances)",
            self.name,
            self.counter("cdrs_rerouted_records_total").await,
            self.counter("cdrs_delivery_retries_total").await,
            self.counter("cdrs_target_ejections_total").await,
            self.counter("cdrs_partition_prefetched_records").await,
        );
        for i in &mut self.instances {
            i.sigterm(Duration::from_secs(30));
        }
        self.phase("stopped");
        let rss = self
            .instances
            .iter()
            .map(|i| i.peak_rss_kib)
            .max()
            .unwrap_or(0);
        // Duplicates as seconds of the producer's traffic: what a commit
        // interval of that long would let through twice.
        let rate = CHUNK as f64 / PACE.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.1} | {:.0} |",
            self.name,
            t.produced,
            t.filtered,
            t.delivered,
            t.duplicates,
            t.duplicates as f64 / rate,
            t.dead_lettered,
            t.lost,
            t.out_of_order,
            rss as f64 / 1024.0,
            secs
        );
        assert_eq!(
            t.lost,
            0,
            "{}: records lost: {t:?} (logs in {})",
            self.name,
            self.dir.display()
        );
        assert_eq!(
            t.unexpected, 0,
            "{}: filtered records delivered: {t:?}",
            self.name
        );
        assert_eq!(t.out_of_order, 0, "{}: key order broken: {t:?}", self.name);
        assert_eq!(
            t.produced,
            t.filtered + t.delivered + t.dead_lettered - t.both,
            "{}: every record accounted for once: {t:?}",
            self.name
        );
        if std::env::var_os("CHAOS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        t
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_1_kill_9_a_target_and_restart_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::new("kill-target", None, |_| {}).await;
    rig.start_instance().await;
    rig.wait_delivered(0.25).await;
    let before = rig.received();
    let killed = Instant::now();
    rig.servers[2].kill9();
    // The killed server's share moves to the others as soon as a request
    // to it is refused (unreachable: routed again at once, no retry there):
    // within seconds, not a report expiry or breaker interval later.
    let moved = loop {
        let now = rig.received();
        if now[0] + now[1] >= before[0] + before[1] + 2_000 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "kill-target: the survivors got {} more records in 15 s",
            now[0] + now[1] - before[0] - before[1]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("kill-target: 2,000 more records at the survivors {moved:?} after the kill");
    let metrics = rig.metrics(0).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cdrs_rerouted_records_total{") && l.contains("blotter-3")),
        "records were routed away from the killed target"
    );
    rig.wait_delivered(0.5).await;
    rig.servers[2].restart();
    rig.servers[2]
        .control(serde_json::json!({"latency_ms": 2}))
        .await;
    let t = rig.finish(Duration::from_secs(120)).await;
    assert!(t.delivered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_2_a_target_fails_for_10_s_another_gets_10x_slower() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::new("fail-and-slow", None, |_| {}).await;
    rig.start_instance().await;
    rig.wait_delivered(0.1).await;
    rig.servers[0]
        .control(serde_json::json!({"failing": true}))
        .await;
    rig.servers[2]
        .control(serde_json::json!({"latency_ms": 20}))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.servers[0]
        .control(serde_json::json!({"failing": false}))
        .await;
    let metrics = reqwest::get(format!("http://{}/metrics", rig.instances[0].admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let t = rig.finish(Duration::from_secs(180)).await;
    assert!(
        metrics.contains("cdrs_target_ejections_total{target=\"blotter-1\"}"),
        "the failing target was ejected"
    );
    assert!(t.delivered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_3_three_processes_a_fleet_deployment_one_killed_and_started_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::sized("group-deploy-kill", None, 100_000, |_| {}).await;
    // Fleet names: the first inside a 34% canary share, the others not.
    let named = |inside: bool, skip: usize| {
        (0..)
            .map(|i| format!("cdrs-{i}"))
            .filter(|n| (cdrs::control::canary_bucket(n) < 34) == inside)
            .nth(skip)
            .unwrap()
    };
    let ids = [named(true, 0), named(false, 0), named(false, 1)];
    rig.start_instances_as(&[&ids[0], &ids[1], &ids[2]]).await;
    rig.wait_delivered(0.2).await;
    // `cdrs plugin deploy` of another router while records flow: every
    // instance runs it (read from the control topic, compiled, swapped
    // between batches).
    let router = rig.config.router.name.clone();
    let config_file = rig.dir.join("cdrs-0.toml");
    let deploy = |file: &std::path::Path, extra: &[&str]| {
        let out = Command::new(cdrs_bin())
            .args(["plugin", "deploy", "--config"])
            .arg(&config_file)
            .args([router.as_str(), file.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let file = plugin_dir().join("example_router.wasm");
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
    deploy(&file, &["--plugin-config", "{}", "--label", "v2"]);
    let deployed = Instant::now();
    let mut waiting: Vec<usize> = (0..3).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for n in waiting {
            if rig.router(n).await.0.as_deref() != Some(sha.as_str()) {
                still.push(n);
            }
        }
        waiting = still;
        assert!(
            deployed.elapsed() < Duration::from_secs(60),
            "group-deploy-kill: cdrs-{waiting:?} did not run the deployment in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.phase(&format!(
        "the deployment ran on all three {} ms after `cdrs plugin deploy` returned",
        deployed.elapsed().as_millis()
    ));
    rig.wait_delivered(0.4).await;
    rig.instances[1].kill9();
    rig.wait_delivered(0.6).await;
    // Started again under its name, it runs the deployed version (not its
    // config's file) from before its first record, and takes partitions.
    let again = rig.start_instance_as(Some(&ids[1])).await;
    assert_eq!(
        rig.router(again).await.0.as_deref(),
        Some(sha.as_str()),
        "group-deploy-kill: the restarted instance runs the deployed router"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rig
        .metrics(again)
        .await
        .contains("cdrs_partition_inflight_records{")
    {
        assert!(
            Instant::now() < deadline,
            "group-deploy-kill: the restarted instance was assigned no partition in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A 34% canary of a router that traps on records keyed "panic": only
    // the first instance runs it; its trap storm rolls it back there, the
    // deployment is marked failed fleet-wide, the two others never run it,
    // and the records it touched are placed by the host's policy.
    let fault = plugin_dir().join("fault_router.wasm");
    let fault_sha = hex::encode(sha2::Sha256::digest(std::fs::read(&fault).unwrap()));
    deploy(&fault, &["--label", "canary", "--canary", "34"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.router(0).await.0.as_deref() != Some(fault_sha.as_str()) {
        assert!(
            Instant::now() < deadline,
            "group-deploy-kill: the canary instance did not run the canary in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = producer(&rig.config.kafka.brokers).expect("producer");
    let topic = rig.config.kafka.topics[0].clone();
    for p in 0..PARTITIONS {
        for i in 0..20 {
            let value = format!(r#"{{"type":"trade","seq":"panic-{p}-{i}"}}"#);
            let sent = producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .partition(p)
                        .key("panic")
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .expect("produce");
            let id = format!("{topic}/{}/{}", sent.partition, sent.offset);
            rig.extra.fates.insert(id.clone(), Fate::Delivered);
            rig.extra.keys.insert(id, "panic".into());
        }
    }
    let url = format!("http://{}/v1/fleet", rig.instances[2].admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fleet: serde_json::Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let failed_by = &fleet["deployments"][router.as_str()]["failed"]["instance"];
        if failed_by == ids[0].as_str() && rig.router(0).await.0.as_deref() == Some(sha.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group-deploy-kill: the canary was not rolled back and failed: {fleet}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in [2, again] {
        let (version, previous) = rig.router(n).await;
        assert_eq!(version.as_deref(), Some(sha.as_str()), "cdrs-{n} runs v2");
        assert_ne!(
            previous.as_deref(),
            Some(fault_sha.as_str()),
            "cdrs-{n} never ran the canary"
        );
    }
    rig.phase("the canary failed on its instance, rolled back, run by no other");
    rig.finish(Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_4_broker_down_and_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let topic = "chaos-broker-down";
    let cluster = mock_cluster_handle(&[(topic, PARTITIONS), ("chaos-broker-down-dlq", 1)]);
    let mut rig = Rig::new("broker-down", Some(cluster.bootstrap_servers()), |_| {}).await;
    rig.start_instance().await;
    rig.wait_delivered(0.3).await;
    cluster.broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.broker_up(1).expect("broker up");
    rig.finish(Duration::from_secs(120)).await;
}

/// All three servers `kill -9`ed for 5 s at 30% delivered, then restarted.
async fn all_targets_down(name: &'static str, when: WhenNoTarget) -> Tally {
    let mut rig = Rig::new(name, None, |c| c.delivery.when_no_target = when).await;
    rig.start_instance().await;
    rig.wait_delivered(0.3).await;
    for s in &mut rig.servers {
        s.kill9();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for s in &mut rig.servers {
        s.restart();
    }
    rig.finish(Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_5_all_targets_down_for_5_s_records_wait() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = all_targets_down("all-down-wait", WhenNoTarget::Wait).await;
    assert_eq!(
        t.dead_lettered,
        rig_malformed(),
        "waiting records are not dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_5b_all_targets_down_for_5_s_records_dead_lettered() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = all_targets_down("all-down-dlq", WhenNoTarget::DeadLetter).await;
    assert!(
        t.dead_lettered > rig_malformed(),
        "records no target could take went to the dead-letter topic: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_6_sigterm_under_full_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::new("sigterm", None, |_| {}).await;
    rig.start_instance().await;
    rig.wait_delivered(0.4).await;
    let (clean, took) = rig.instances[0].sigterm(Duration::from_secs(30));
    assert!(clean, "cdrs exits 0 after SIGTERM (took {took:?})");
    assert!(
        took < Duration::from_millis(rig.config.pipeline.shutdown_grace_ms + 5_000),
        "SIGTERM drain within the grace period: {took:?}"
    );
    rig.start_instance().await;
    rig.finish(Duration::from_secs(120)).await;
}

/// Records the demo filter dead-letters (not JSON) among `RECORDS`.
fn rig_malformed() -> usize {
    (0..RECORDS)
        .filter(|i| cdrs::testkit::trade_event(*i, CLIENTS).2 == Fate::DeadLettered)
        .count()
}
