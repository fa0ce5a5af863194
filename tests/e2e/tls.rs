//! TLS end to end: HTTPS app servers that require client certificates,
//! certificates made by a CA of the test's own, the ledger kept.

use crate::common::{assert_capacity_split, assert_sticky_and_ordered, start_on, CAPACITIES};
use cdrs::config::{AdminTlsConfig, KeyOrder, TlsConfig};
use cdrs::testkit::appserver::{AppServer, AppTls};
use cdrs::testkit::pki::{Issued, Pki, Validity};
use cdrs::testkit::produce;
use cdrs_e2e::{create_topics, mock_cluster, wait_for, Tansu};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cdrs-e2e-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An HTTPS server on 127.0.0.1 with `cert`, requiring client
/// certificates of the CA(s) in `client_ca`.
fn https(id: &str, capacity: u32, cert: &Issued, client_ca: &Path) -> AppServer {
    AppServer::start_tls(
        id,
        capacity,
        AppTls {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
            client_ca: Some(client_ca.into()),
        },
    )
    .unwrap()
}

/// Three HTTPS blotters (capacities 1:2:4) with certificates of `ca`.
fn blotters(ca: &Pki, client_ca: &Path) -> Vec<AppServer> {
    CAPACITIES
        .iter()
        .enumerate()
        .map(|(i, cap)| {
            let id = format!("blotter-{}", i + 1);
            let cert = ca.server(&id, &["127.0.0.1"], Validity::Days(30)).unwrap();
            https(&id, *cap, &cert, client_ca)
        })
        .collect()
}

fn mtls(ca_file: &Path, cert: &Path, key: &Path) -> TlsConfig {
    TlsConfig {
        ca_file: Some(ca_file.into()),
        cert_file: Some(cert.into()),
        key_file: Some(key.into()),
        ..TlsConfig::default()
    }
}

fn der(pem_file: &Path) -> Vec<u8> {
    cdrs::tls::read_certs(pem_file).unwrap()[0].to_vec()
}

/// 20,000 records over mutual TLS to three HTTPS servers on a real broker:
/// nothing lost, split by capacity, every connection with our certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_three_servers_loses_nothing() {
    let d = dir("mtls");
    let ca = Pki::new(&d, "ca").unwrap();
    let client = ca.client("cdrs", "cdrs").unwrap();
    let tansu = Tansu::start();
    let (topic, dlq) = ("tls-trades", "tls-trades-dlq");
    create_topics(&tansu.brokers, &[(topic, 4), (dlq, 1)]).await;
    let servers = blotters(&ca, &ca.ca_file);
    let tls = mtls(&ca.ca_file, &client.cert, &client.key);
    let s = start_on(
        &tansu.brokers,
        topic,
        dlq,
        "cdrs-e2e-tls",
        servers,
        |c| {
            c.delivery.tls = tls;
            c.router
                .config
                .insert("sticky".into(), toml::Value::Boolean(false));
            c.delivery.key_order = KeyOrder::Relaxed;
        },
        None,
    )
    .await;
    let ledger = produce(&tansu.brokers, topic, 20_000, 500).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, servers, _) = s.finish(&ledger).await;
    assert_capacity_split(&a);
    let ours = der(&client.cert);
    for srv in &servers {
        let certs = srv.client_certs();
        assert!(!certs.is_empty(), "{} had no TLS connection", srv.id);
        assert!(
            certs.iter().all(|c| *c == ours),
            "{} saw another client certificate",
            srv.id
        );
        assert_eq!(srv.tls_failures(), 0, "{}", srv.id);
        assert!(srv.http2_requests() > 0, "{}: HTTP/2 by ALPN", srv.id);
    }
}

/// Servers whose certificate is from an unknown CA, for another name, or
/// expired: each is marked down with its cause (seen in `GET /v1/targets`
/// through the admin API over mutual TLS), its records go elsewhere,
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_bad_certificates_are_marked_down_with_the_cause() {
    let d = dir("bad");
    let ca = Pki::new(&d, "ca").unwrap();
    let rogue = Pki::new(&d, "rogue").unwrap();
    let client = ca.client("cdrs", "cdrs").unwrap();
    let operator = ca.client("operator", "operator").unwrap();
    let admin_cert = ca
        .server("admin", &["127.0.0.1"], Validity::Days(30))
        .unwrap();
    let (topic, dlq) = ("bad-certs", "bad-certs-dlq");
    let brokers = mock_cluster(&[(topic, 4), (dlq, 1)]);
    let mut servers = blotters(&ca, &ca.ca_file);
    let bad = [
        (
            "bad-ca",
            rogue
                .server("bad-ca", &["127.0.0.1"], Validity::Days(30))
                .unwrap(),
            "unknown CA",
        ),
        (
            "bad-name",
            ca.server("bad-name", &["other.internal"], Validity::Days(30))
                .unwrap(),
            "name mismatch",
        ),
        (
            "expired",
            ca.server("expired", &["127.0.0.1"], Validity::Expired)
                .unwrap(),
            "expired",
        ),
    ];
    for (id, cert, _) in &bad {
        servers.push(https(id, 400, cert, &ca.ca_file));
    }
    let tls = mtls(&ca.ca_file, &client.cert, &client.key);
    let admin_tls = AdminTlsConfig {
        cert_file: admin_cert.cert.clone(),
        key_file: admin_cert.key.clone(),
        key_pass: None,
        client_ca_file: Some(ca.ca_file.clone()),
    };
    let s = start_on(
        &brokers,
        topic,
        dlq,
        "cdrs-e2e-bad-certs",
        servers,
        |c| {
            c.delivery.tls = tls;
            c.admin.tls = Some(admin_tls);
        },
        None,
    )
    .await;
    let ledger = produce(&brokers, topic, 10_000, 300).await.unwrap();
    // The admin API answers only with a client certificate of our CA.
    let admin = |cert: Option<&Issued>| {
        cdrs::tls::client_for(&TlsConfig {
            ca_file: Some(ca.ca_file.clone()),
            cert_file: cert.map(|c| c.cert.clone()),
            key_file: cert.map(|c| c.key.clone()),
            ..TlsConfig::default()
        })
        .unwrap()
    };
    let base = format!("https://{}", s.daemon.admin_addr);
    assert!(admin(None)
        .get(format!("{base}/v1/targets"))
        .send()
        .await
        .is_err());
    let http = admin(Some(&operator));
    let mut seen = std::collections::BTreeMap::<String, String>::new();
    let mut last = std::collections::BTreeMap::<String, String>::new();
    for _ in 0..300 {
        let targets: serde_json::Value = http
            .get(format!("{base}/v1/targets"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for t in targets["targets"].as_array().unwrap() {
            let (id, reason) = (
                t["id"].as_str().unwrap(),
                t["reason"].as_str().unwrap_or(""),
            );
            last.insert(id.into(), format!("{} {reason}", t["health"]));
            if t["health"] == "down" && reason.contains("TLS handshake") {
                seen.insert(id.into(), reason.into());
            }
        }
        if seen.len() >= bad.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, _, cause) in &bad {
        let reason = seen
            .get(*id)
            .unwrap_or_else(|| panic!("{id} never marked down: {seen:?}; last seen: {last:?}"));
        assert!(
            reason.contains(&format!("target {id:?}")) && reason.contains(cause),
            "{id}: {reason}"
        );
    }
    assert!(seen.keys().all(|id| !id.starts_with("blotter")), "{seen:?}");
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (a, _, servers, _) = s.finish(&ledger).await;
    for srv in servers.iter().filter(|s| !s.id.starts_with("blotter")) {
        assert_eq!(
            srv.count(),
            0,
            "{} got records past a failed handshake",
            srv.id
        );
        assert_eq!(a.per_target.get(&srv.id).copied().unwrap_or(0), 0);
    }
}

/// The client certificate and the CA file rotated while 50,000 records
/// flow: nothing lost, each key in order on one server, and the servers
/// see the new certificate on the connections opened afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_while_records_flow_lose_nothing() {
    let d = dir("rotate");
    let old_ca = Pki::new(&d, "old").unwrap();
    let new_ca = Pki::new(&d, "new").unwrap();
    // The servers trust client certificates of both CAs (as during any CA
    // change); CDRS starts trusting the old CA only.
    let both = d.join("both-ca.pem");
    std::fs::write(&both, format!("{}{}", old_ca.ca_pem, new_ca.ca_pem)).unwrap();
    let old_client = old_ca.client("cdrs-old", "cdrs").unwrap();
    let new_client = new_ca.client("cdrs-new", "cdrs").unwrap();
    let (ca_file, cert, key) = (
        d.join("ca.pem"),
        d.join("client.pem"),
        d.join("client-key.pem"),
    );
    std::fs::write(&ca_file, &old_ca.ca_pem).unwrap();
    std::fs::write(&cert, &old_client.cert_pem).unwrap();
    std::fs::write(&key, &old_client.key_pem).unwrap();
    let (topic, dlq) = ("rotating", "rotating-dlq");
    let brokers = mock_cluster(&[(topic, 6), (dlq, 1)]);
    let servers = blotters(&old_ca, &both);
    for srv in &servers {
        // Slow enough that the flow spans the rotation.
        srv.behaviour()
            .latency_ms
            .store(2, std::sync::atomic::Ordering::Relaxed);
    }
    let tls = mtls(&ca_file, &cert, &key);
    let s = start_on(
        &brokers,
        topic,
        dlq,
        "cdrs-e2e-rotate",
        servers,
        |c| {
            c.delivery.tls = tls;
        },
        None,
    )
    .await;
    let first = tokio::spawn({
        let b = brokers.clone();
        async move { produce(&b, topic, 25_000, 400).await.unwrap() }
    });
    let refs = s.refs();
    assert!(
        wait_for(Duration::from_secs(60), || account_total(&refs) >= 5_000).await,
        "records did not start flowing"
    );
    // Rotate: the CA bundle first, then the certificate and its key (the
    // key written last: until then the pair does not match and is refused).
    std::fs::write(&ca_file, format!("{}{}", old_ca.ca_pem, new_ca.ca_pem)).unwrap();
    std::fs::write(&cert, &new_client.cert_pem).unwrap();
    std::fs::write(&key, &new_client.key_pem).unwrap();
    let rotated = s
        .daemon
        .metrics
        .tls_rotations
        .with_label_values(&["delivery", "ok"]);
    let during = account_total(&refs);
    assert!(
        wait_for(Duration::from_secs(30), || rotated.get() >= 1).await,
        "the rotation was never applied"
    );
    let mut ledger = first.await.unwrap();
    let second = produce_from(&brokers, topic, 25_000).await;
    ledger.fates.extend(second.fates);
    ledger.keys.extend(second.keys);
    s.wait_accounted(&ledger, Duration::from_secs(120)).await;
    let (_, _, servers, _) = s.finish(&ledger).await;
    assert!(
        during < 50_000,
        "the rotation happened while records flowed ({during} delivered)"
    );
    assert_sticky_and_ordered(&ledger, &servers);
    let (old, new) = (der(&old_client.cert), der(&new_client.cert));
    for srv in &servers {
        let certs = srv.client_certs();
        assert_eq!(
            certs.first(),
            Some(&old),
            "{} first saw the old certificate",
            srv.id
        );
        assert_eq!(
            certs.last(),
            Some(&new),
            "{} sees the new certificate afterwards",
            srv.id
        );
        assert_eq!(srv.tls_failures(), 0, "{}: no handshake failed", srv.id);
    }
}

fn account_total(servers: &[&AppServer]) -> usize {
    servers.iter().map(|s| s.count()).sum()
}

/// `n` more trade events after a first batch of 25,000, keyed like them.
async fn produce_from(brokers: &str, topic: &str, n: u64) -> cdrs::testkit::Ledger {
    produce_events_from(brokers, topic, 25_000, n).await
}

/// A config reload that points `[delivery.tls]` at a file that is not a
/// certificate changes nothing and names the file; one that turns HTTP/2
/// off applies (new clients), and nothing is lost across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_broken_tls_file_changes_nothing() {
    let d = dir("reload");
    let ca = Pki::new(&d, "ca").unwrap();
    let client = ca.client("cdrs", "cdrs").unwrap();
    let (topic, dlq) = ("tls-reload", "tls-reload-dlq");
    let brokers = mock_cluster(&[(topic, 4), (dlq, 1)]);
    let servers = blotters(&ca, &ca.ca_file);
    let tls = mtls(&ca.ca_file, &client.cert, &client.key);
    let file = d.join("cdrs.toml");
    let s = start_on(
        &brokers,
        topic,
        dlq,
        "cdrs-e2e-tls-reload",
        servers,
        |c| c.delivery.tls = tls,
        Some(file.clone()),
    )
    .await;
    let mut ledger = produce(&brokers, topic, 3_000, 200).await.unwrap();
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let garbage = d.join("not-a-cert.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let mut broken = s.daemon.reloader.active();
    broken.delivery.tls.cert_file = Some(garbage.clone());
    std::fs::write(&file, toml::to_string(&broken).unwrap()).unwrap();
    let report = s.daemon.reload().await;
    assert!(!report.ok, "{report:?}");
    let why = report.errors.join("; ");
    assert!(
        why.contains("delivery.tls") && why.contains("not-a-cert.pem"),
        "{why}"
    );
    // Still the old clients: records keep flowing.
    let more = produce_from(&brokers, topic, 3_000).await;
    ledger.fates.extend(more.fates);
    ledger.keys.extend(more.keys);
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    // HTTP/2 off: applies live.
    let mut http1 = s.daemon.reloader.active();
    http1.delivery.tls.http2 = Some(false);
    std::fs::write(&file, toml::to_string(&http1).unwrap()).unwrap();
    let report = s.daemon.reload().await;
    assert!(report.ok, "{report:?}");
    let h2_before: Vec<u64> = s.servers.iter().map(|s| s.http2_requests()).collect();
    let last = produce_events_from(&brokers, topic, 50_000, 3_000).await;
    ledger.fates.extend(last.fates);
    ledger.keys.extend(last.keys);
    s.wait_accounted(&ledger, Duration::from_secs(60)).await;
    let h2_after: Vec<u64> = s.servers.iter().map(|s| s.http2_requests()).collect();
    assert_eq!(h2_before, h2_after, "no HTTP/2 request after http2 = false");
    s.finish(&ledger).await;
}

/// `n` trade events from sequence `from`.
async fn produce_events_from(
    brokers: &str,
    topic: &str,
    from: u64,
    n: u64,
) -> cdrs::testkit::Ledger {
    let events = (from..from + n)
        .map(|i| cdrs::testkit::trade_event(i, 400))
        .collect();
    cdrs::testkit::produce_events(brokers, topic, events)
        .await
        .unwrap()
}
