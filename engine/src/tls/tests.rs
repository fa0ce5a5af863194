//! TLS against real HTTPS servers on 127.0.0.1 with certificates made here.

use super::*;
use crate::config::{DeliveryConfig, TlsConfig};
use crate::record::Record;
use crate::sink::http::{DeliveryError, HttpSink};
use crate::testkit::appserver::{AppServer, AppTls};
use crate::testkit::pki::{encrypt_key, Issued, Pki, Validity};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cdrs-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn record() -> Record {
    Record {
        topic: "t".into(),
        partition: 0,
        offset: 1,
        timestamp_ms: None,
        key: Some(b"k".to_vec()),
        value: Some(b"{}".to_vec()),
        headers: vec![],
    }
}

fn https(id: &str, cert: &Issued, client_ca: Option<&Pki>) -> AppServer {
    AppServer::start_tls(
        id,
        100,
        AppTls {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
            client_ca: client_ca.map(|p| p.ca_file.clone()),
        },
    )
    .unwrap()
}

fn mtls(ca: &Pki, client: &Issued) -> TlsConfig {
    TlsConfig {
        ca_file: Some(ca.ca_file.clone()),
        cert_file: Some(client.cert.clone()),
        key_file: Some(client.key.clone()),
        ..TlsConfig::default()
    }
}

fn sink(tls: TlsConfig) -> HttpSink {
    let cfg = DeliveryConfig {
        tls,
        timeout_ms: 3_000,
        ..DeliveryConfig::default()
    };
    HttpSink::standalone(&cfg).unwrap()
}

async fn post(sink: &HttpSink, server: &AppServer) -> Result<(), DeliveryError> {
    let r = record();
    sink.post(&server.id, &server.url(), &[&r]).await
}

fn tls_cause(r: Result<(), DeliveryError>) -> String {
    match r {
        Err(DeliveryError::Tls { cause, target, .. }) => format!("{target}: {cause}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_delivers_and_each_handshake_failure_is_named() {
    let d = dir("failures");
    let ca = Pki::new(&d, "good").unwrap();
    let other = Pki::new(&d, "other").unwrap();
    let client = ca.client("client", "cdrs").unwrap();
    let good = https(
        "good",
        &ca.server("good", &["127.0.0.1"], Validity::Days(30))
            .unwrap(),
        Some(&ca),
    );
    let unknown = https(
        "unknown-ca",
        &other
            .server("s", &["127.0.0.1"], Validity::Days(30))
            .unwrap(),
        Some(&ca),
    );
    let misnamed = https(
        "misnamed",
        &ca.server("misnamed", &["other.internal"], Validity::Days(30))
            .unwrap(),
        Some(&ca),
    );
    let expired = https(
        "expired",
        &ca.server("expired", &["127.0.0.1"], Validity::Expired)
            .unwrap(),
        Some(&ca),
    );
    let s = sink(mtls(&ca, &client));
    post(&s, &good).await.expect("mutual TLS delivers");
    assert_eq!(good.count(), 1);
    assert_eq!(
        good.client_certs().last().unwrap(),
        &read_certs(&client.cert).unwrap()[0].to_vec()
    );
    assert!(
        good.http2_requests() >= 1,
        "HTTP/2 is used when the server offers it"
    );
    let unknown_cause = tls_cause(post(&s, &unknown).await);
    assert!(
        unknown_cause.starts_with("unknown-ca: unknown CA"),
        "{unknown_cause}"
    );
    let name_cause = tls_cause(post(&s, &misnamed).await);
    assert!(name_cause.contains("name mismatch"), "{name_cause}");
    let expired_cause = tls_cause(post(&s, &expired).await);
    assert!(expired_cause.contains("expired"), "{expired_cause}");
    // No client certificate: the server refuses it (TLS 1.3 tells the
    // client after its side of the handshake).
    let anonymous = sink(TlsConfig {
        ca_file: Some(ca.ca_file.clone()),
        ..TlsConfig::default()
    });
    // The alert races the request, which may see the connection closed
    // first; the sink then probes the handshake, and the cause is named
    // every time.
    for _ in 0..10 {
        let refused = tls_cause(post(&anonymous, &good).await);
        assert!(refused.contains("client certificate refused"), "{refused}");
    }
    // A TLS failure marks the target down at once, as an unreachable one.
    assert!(DeliveryError::Tls {
        target: "t".into(),
        url: "u".into(),
        cause: "c".into()
    }
    .unreachable());
    assert_eq!(good.count(), 1, "nothing else reached the good server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_verify_off_and_http1_only() {
    let d = dir("names");
    let ca = Pki::new(&d, "ca").unwrap();
    let server = https(
        "named",
        &ca.server("named", &["blotter.internal"], Validity::Days(30))
            .unwrap(),
        None,
    );
    let trust = TlsConfig {
        ca_file: Some(ca.ca_file.clone()),
        ..TlsConfig::default()
    };
    assert!(tls_cause(post(&sink(trust.clone()), &server).await).contains("name mismatch"));
    let named = TlsConfig {
        server_name: Some("blotter.internal".into()),
        http2: Some(false),
        ..trust.clone()
    };
    post(&sink(named), &server)
        .await
        .expect("verified for server_name");
    assert_eq!(
        server.http2_requests(),
        0,
        "http2 = false keeps to HTTP/1.1"
    );
    let other = Pki::new(&d, "other").unwrap();
    let untrusted = TlsConfig {
        ca_file: Some(other.ca_file.clone()),
        verify: Some(false),
        ..TlsConfig::default()
    };
    post(&sink(untrusted), &server)
        .await
        .expect("verify = false takes any certificate");
    assert_eq!(server.count(), 2);
}

#[test]
fn bad_files_are_refused_with_the_file_and_the_reason() {
    let d = dir("files");
    let ca = Pki::new(&d, "ca").unwrap();
    let a = ca.client("a", "a").unwrap();
    let b = ca.client("b", "b").unwrap();
    let err = |tls: TlsConfig| client_tls(&tls).err().expect("refused").to_string();
    let mismatched = err(TlsConfig {
        cert_file: Some(a.cert.clone()),
        key_file: Some(b.key.clone()),
        ..TlsConfig::default()
    });
    assert!(
        mismatched.contains("do not belong together"),
        "{mismatched}"
    );
    assert!(mismatched.contains("ca-a.pem"), "{mismatched}");
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let empty = err(TlsConfig {
        ca_file: Some(garbage.clone()),
        ..TlsConfig::default()
    });
    assert!(
        empty.contains("garbage.pem") && empty.contains("no PEM certificate"),
        "{empty}"
    );
    let missing = err(TlsConfig {
        ca_file: Some(d.join("nope.pem")),
        ..TlsConfig::default()
    });
    assert!(
        missing.contains("failed to read") && missing.contains("nope.pem"),
        "{missing}"
    );
    // An encrypted key opens with its passphrase only.
    let locked = d.join("locked-key.pem");
    std::fs::write(&locked, encrypt_key(&a.key_pem, "s3cret-pass").unwrap()).unwrap();
    let with = |pass: Option<&str>| TlsConfig {
        cert_file: Some(a.cert.clone()),
        key_file: Some(locked.clone()),
        key_pass: pass.map(String::from),
        ..TlsConfig::default()
    };
    client_tls(&with(Some("s3cret-pass"))).expect("key_pass opens the key");
    let wrong = err(with(Some("wrong")));
    assert!(wrong.contains("key_pass does not open"), "{wrong}");
    assert!(
        !wrong.contains("s3cret-pass") && !wrong.contains("wrong\""),
        "{wrong}"
    );
    assert!(err(with(None)).contains("give its passphrase as key_pass"));
    let plain_with_pass = err(TlsConfig {
        key_pass: Some("x".into()),
        ..mtls(&ca, &a)
    });
    assert!(
        plain_with_pass.contains("not encrypted"),
        "{plain_with_pass}"
    );
}

#[test]
fn cdrs_check_notes_expiry_and_a_foreign_client_certificate() {
    let d = dir("check");
    let ca = Pki::new(&d, "ca").unwrap();
    let other = Pki::new(&d, "other").unwrap();
    let soon = ca.server("soon", &["cdrs"], Validity::Days(3)).unwrap();
    let (problems, notes) = check_client(&TlsConfig {
        ca_file: Some(other.ca_file.clone()),
        cert_file: Some(soon.cert.clone()),
        key_file: Some(soon.key.clone()),
        ..TlsConfig::default()
    });
    assert!(problems.is_empty(), "{problems:?}");
    assert!(notes.iter().any(|n| n.contains("expires in")), "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("does not chain to ca_file")),
        "{notes:?}"
    );
    let old = ca.server("old", &["cdrs"], Validity::Expired).unwrap();
    let (problems, _) = check_server(&AdminTlsConfig {
        cert_file: old.cert.clone(),
        key_file: old.key.clone(),
        key_pass: None,
        client_ca_file: None,
    });
    assert!(
        problems.iter().any(|p| p.contains("has expired")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_by_new_connections_and_a_broken_one_refused() {
    let d = dir("rotate");
    let ca = Pki::new(&d, "ca").unwrap();
    let server = https(
        "s",
        &ca.server("s", &["127.0.0.1"], Validity::Days(30)).unwrap(),
        Some(&ca),
    );
    let first = ca.client("first", "first").unwrap();
    let (cert, key) = (d.join("client.pem"), d.join("client-key.pem"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let tls = TlsConfig {
        ca_file: Some(ca.ca_file.clone()),
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
        ..TlsConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let cfg = DeliveryConfig {
        tls,
        ..DeliveryConfig::default()
    };
    let clients = Clients::new(&cfg, &[], Some(metrics.clone())).unwrap();
    let expiry = metrics
        .tls_cert_expiry
        .with_label_values(&["delivery"])
        .get();
    assert!(expiry > now_s() + 29 * 86_400, "expiry exported: {expiry}");
    let clients = Arc::new(ArcSwap::from_pointee(clients));
    let s = HttpSink::new(&cfg, clients.clone());
    post(&s, &server).await.unwrap();
    // Rotate: a new certificate and key in place.
    let second = ca.client("second", "second").unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let outcome = clients.load().rotate(&[canonical(&cert), canonical(&key)]);
    assert!(
        matches!(outcome.as_slice(), [(name, Ok(()))] if name == "delivery"),
        "{outcome:?}"
    );
    post(&s, &server).await.unwrap();
    let seen = server.client_certs();
    let der = |i: &Issued| read_certs(&i.cert).unwrap()[0].to_vec();
    assert_eq!(seen.first(), Some(&der(&first)));
    assert_eq!(
        seen.last(),
        Some(&der(&second)),
        "the new connection shows the new certificate"
    );
    // A broken rotation (a key that does not match) is refused: the
    // second certificate stays in use.
    std::fs::write(&key, &first.key_pem).unwrap();
    let outcome = clients.load().rotate(&[canonical(&key)]);
    assert!(
        matches!(outcome.as_slice(), [(_, Err(TlsError::KeyMismatch { .. }))]),
        "{outcome:?}"
    );
    post(&s, &server)
        .await
        .expect("the previous client still works");
    assert_eq!(server.count(), 3);
}

#[test]
fn errors_without_tls_in_them_are_not_named_tls() {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(handshake_failure(&io), None);
    let wrapped = std::io::Error::other(rustls::Error::InvalidCertificate(
        rustls::CertificateError::UnknownIssuer,
    ));
    assert!(handshake_failure(&wrapped)
        .unwrap()
        .starts_with("unknown CA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_certificate_rotates_and_a_broken_one_is_refused() {
    let d = dir("admin-rotate");
    let ca = Pki::new(&d, "ca").unwrap();
    let (cert, key) = (d.join("admin.pem"), d.join("admin-key.pem"));
    let first = ca
        .server("first", &["127.0.0.1"], Validity::Days(30))
        .unwrap();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let metrics = Arc::new(Metrics::new());
    let tls = ServerTls::new(
        &AdminTlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            key_pass: None,
            client_ca_file: None,
        },
        Some(metrics.clone()),
    )
    .unwrap();
    let before = tls.acceptor();
    assert!(tls.rotate(&[d.join("unrelated.pem")]).is_none());
    let second = ca
        .server("second", &["127.0.0.1"], Validity::Days(60))
        .unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    assert!(matches!(tls.rotate(&[canonical(&cert)]), Some(Ok(()))));
    assert!(!Arc::ptr_eq(&before, &tls.acceptor()), "a new acceptor");
    let expiry = metrics.tls_cert_expiry.with_label_values(&["admin"]).get();
    assert!(
        expiry > now_s() + 59 * 86_400,
        "the new certificate's expiry: {expiry}"
    );
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let kept = tls.acceptor();
    assert!(matches!(tls.rotate(&[canonical(&cert)]), Some(Err(_))));
    assert!(
        Arc::ptr_eq(&kept, &tls.acceptor()),
        "the previous acceptor stays"
    );
    let refused = metrics
        .tls_rotations
        .with_label_values(&["admin", "refused"])
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_over_https_name_a_failed_handshake() {
    use crate::capacity::{Health, Registry};
    use crate::config::CapacityConfig;
    let d = dir("health");
    let ca = Pki::new(&d, "ca").unwrap();
    let rogue = Pki::new(&d, "rogue").unwrap();
    let good = https(
        "good",
        &ca.server("good", &["127.0.0.1"], Validity::Days(30))
            .unwrap(),
        None,
    );
    let bad = https(
        "bad",
        &rogue
            .server("bad", &["127.0.0.1"], Validity::Days(30))
            .unwrap(),
        None,
    );
    let targets: Vec<_> = [&good, &bad]
        .iter()
        .map(|s| crate::config::TargetConfig {
            health_url: Some(s.health_url()),
            ..s.target_config()
        })
        .collect();
    let cfg = CapacityConfig {
        health_interval_ms: 100,
        health_unhealthy_after: 1,
        ..CapacityConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new(cfg, &targets, metrics));
    let delivery = DeliveryConfig {
        tls: TlsConfig {
            ca_file: Some(ca.ca_file.clone()),
            ..TlsConfig::default()
        },
        ..DeliveryConfig::default()
    };
    let clients = Arc::new(ArcSwap::from_pointee(
        Clients::new(&delivery, &targets, None).unwrap(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let checks = tokio::spawn(crate::capacity::health::run(
        registry.clone(),
        clients,
        stopped,
    ));
    let view = |id: &str| {
        let snap = registry.snapshot();
        snap.targets[snap.index_of(id).unwrap()].clone()
    };
    let mut reason = String::new();
    for _ in 0..100 {
        let b = view("bad");
        if b.health == Health::Down {
            reason = b.reason.unwrap_or_default();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        reason.contains("TLS handshake failed: unknown CA"),
        "{reason:?}"
    );
    assert_ne!(view("good").health, Health::Down);
    stop.send(true).unwrap();
    checks.await.unwrap();
}
