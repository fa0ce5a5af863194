//! TLS for the HTTP sockets CDRS opens (deliveries, health checks) and
//! accepts (the admin API), with rustls and its `ring` provider.
//!
//! Files are PEM. A client's trust is the system's roots (the OS store,
//! read by `rustls-native-certs`) unless `ca_file` names a private CA; a
//! client certificate (`cert_file` + `key_file`, the key PKCS#8, PKCS#1 or
//! SEC1, or encrypted PKCS#8 with `key_pass`) makes it mutual TLS. Every
//! file is read, parsed and checked when a config is built: a key that
//! does not match its certificate, a file with no certificate or a CA file
//! with none valid is refused with the file named ([`TlsError`]), so a
//! rotated file that is broken never replaces a working one
//! ([`Clients::rotate`], [`ServerTls::rotate`]).
//!
//! A failed handshake is named by its cause ([`handshake_failure`]): unknown
//! CA, name mismatch, expired, client certificate refused.

use crate::config::{AdminTlsConfig, DeliveryConfig, TargetConfig, TlsConfig};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// How long before a certificate expires CDRS warns about it (at start, on
/// every rotation and in `cdrs check`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// ALPN protocol ids (RFC 7301), HTTP/2 first when enabled.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS file that cannot be used, with the file and the reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {path:?}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path:?} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path:?}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{cert:?} and {key:?} do not belong together: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

/// The process's crypto provider: rustls's `ring` one, also installed as
/// the process default (reqwest's own TLS setup asks for that one).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let p = Arc::new(rustls::crypto::ring::default_provider());
        // Err: another provider was installed first; ours is still used
        // for every config CDRS builds.
        let _ = CryptoProvider::install_default((*p).clone());
        p
    })
    .clone()
}

/// A client for one TLS setting with the delivery defaults (timeouts, no
/// redirects), for tools and tests that call an HTTPS endpoint (the admin
/// API) as CDRS would.
///
/// # Errors
/// As [`client_tls`].
pub fn client_for(tls: &TlsConfig) -> Result<reqwest::Client, TlsError> {
    let options = ClientOptions {
        timeout_ms: crate::config::DEFAULT_DELIVERY_TIMEOUT_MS,
    };
    Endpoint::build(tls, &options).map(|(built, _)| built.client)
}

/// An HTTP client with reqwest's defaults (system roots, no client
/// certificate), for tools and tests; CDRS's own deliveries use
/// [`Clients`].
pub fn plain_client() -> reqwest::Client {
    provider();
    reqwest::Client::new()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Every certificate of a PEM file, in file order (leaf first for a chain).
///
/// # Errors
/// The file cannot be read, holds a malformed PEM section, or no
/// certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.into(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), or
/// an `ENCRYPTED PRIVATE KEY` (PKCS#8, PBES2: what `openssl pkcs8 -topk8
/// -v2 aes-256-cbc` writes) opened with `pass`.
///
/// # Errors
/// The file cannot be read or holds no key; an encrypted key without
/// `pass`, or one `pass` does not open; `pass` given for a plain key.
pub fn read_key(path: &Path, pass: Option<&str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    let invalid = |reason: String| TlsError::Invalid {
        path: path.into(),
        reason,
    };
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(pass) = pass else {
            return Err(invalid(
                "the key is encrypted; give its passphrase as key_pass".into(),
            ));
        };
        let start = text
            .find("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            .unwrap_or(0);
        let (_, doc) = pkcs8::Document::from_pem(&text[start..])
            .map_err(|e| invalid(format!("malformed encrypted key: {e}")))?;
        let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
            .map_err(|e| invalid(format!("malformed encrypted key: {e}")))?;
        let plain = info.decrypt(pass).map_err(|e| {
            invalid(format!(
                "key_pass does not open the encrypted key (or its cipher is unsupported: \
                 PBES2 with AES-CBC and PBKDF2 or scrypt is): {e}"
            ))
        })?;
        return Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()));
    }
    if pass.is_some() {
        return Err(invalid(
            "key_pass is set but the key is not encrypted (no ENCRYPTED PRIVATE KEY section)"
                .into(),
        ));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        path: path.into(),
        reason: format!(
            "no usable private key (PKCS#8, RSA or EC PEM, or ENCRYPTED PRIVATE KEY): {e}"
        ),
    })
}

/// The roots of a CA file (all its certificates).
///
/// # Errors
/// As [`read_certs`]; a certificate that is not a valid trust anchor.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.into(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The operating system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system CA certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: https targets need tls.ca_file");
            }
            Arc::new(roots)
        })
        .clone()
}

/// When a certificate (DER) stops being valid, seconds since the Unix epoch.
///
/// # Errors
/// The certificate does not parse as X.509.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The leaf certificate and key, checked to belong together; the leaf's
/// expiry (Unix seconds).
fn certified_key(
    cert: &Path,
    key: &Path,
    pass: Option<&str>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, i64), TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key, pass)?;
    let expiry = not_after(&chain[0]).map_err(|reason| TlsError::Invalid {
        path: cert.into(),
        reason,
    })?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider()).map_err(
        |e| TlsError::KeyMismatch {
            cert: cert.into(),
            key: key.into(),
            reason: e.to_string(),
        },
    )?;
    Ok((chain, key_der, expiry))
}

/// Sets the expiry gauge of certificate `name` and warns as [`warn_expiry`].
fn note_expiry(metrics: Option<&Metrics>, name: &str, expiry: i64) {
    if let Some(m) = metrics {
        m.tls_cert_expiry.with_label_values(&[name]).set(expiry);
    }
    warn_expiry(name, expiry);
}

/// Longest a [`Clients::diagnose`] probe takes.
pub const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a probe waits after its handshake for the server's alert:
/// one round trip on a healthy network.
const ALERT_WAIT: Duration = Duration::from_millis(200);

/// How often a running CDRS repeats its expiry warnings.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Warns when the certificate `name` expires (Unix seconds `expiry`)
/// within [`EXPIRY_WARNING`], and errs when it has expired.
fn warn_expiry(name: &str, expiry: i64) {
    let left = expiry - now_s();
    if left <= 0 {
        tracing::error!(cert = name, "TLS certificate has expired");
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            cert = name,
            days_left = left / 86_400,
            "TLS certificate expires soon"
        );
    }
}

/// Logs and counts a rotation's outcome.
fn note_rotation(metrics: Option<&Metrics>, name: &str, r: &Result<(), TlsError>) {
    let result = match r {
        Ok(()) => {
            tracing::info!(cert = name, "TLS files rotated; new connections use them");
            "ok"
        }
        Err(err) => {
            tracing::error!(cert = name, error = %err,
                "rotated TLS files refused; the previous ones stay in use");
            "refused"
        }
    };
    if let Some(m) = metrics {
        m.tls_rotations.with_label_values(&[name, result]).inc();
    }
}

/// A client TLS config as rustls takes it, built from `[delivery.tls]` /
/// `[targets.tls]` settings.
pub struct ClientTls {
    pub config: rustls::ClientConfig,
    /// The client certificate's expiry, Unix seconds (none without one).
    pub expiry: Option<i64>,
}

/// Builds the client side of `tls`: roots (system or `ca_file`), the
/// client certificate, the verification name, ALPN.
///
/// # Errors
/// A file cannot be read or parsed, or the key does not match the
/// certificate ([`TlsError`]).
pub fn client_tls(tls: &TlsConfig) -> Result<ClientTls, TlsError> {
    let provider = provider();
    let roots = match &tls.ca_file {
        Some(p) => Arc::new(read_roots(p)?),
        None => system_roots(),
    };
    let verify = tls.verify.unwrap_or(true);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(format!("cannot verify servers with these roots: {e}")));
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, webpki) {
        (false, _) => Arc::new(NoVerification(provider.clone())),
        (true, Ok(v)) => match &tls.server_name {
            Some(name) => Arc::new(NamedVerifier {
                inner: v,
                name: ServerName::try_from(name.clone()).map_err(|e| {
                    TlsError::Config(format!("server_name {name:?} is not a DNS name or IP: {e}"))
                })?,
            }),
            None => v,
        },
        (true, Err(e)) => return Err(e),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let (mut config, expiry) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let (chain, key_der, expiry) = certified_key(cert, key, tls.key_pass.as_deref())?;
            let c = builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsError::KeyMismatch {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                }
            })?;
            (c, Some(expiry))
        }
        (None, None) => (builder.with_no_client_auth(), None),
        _ => {
            return Err(TlsError::Config(
                "cert_file and key_file go together: give both or neither".into(),
            ))
        }
    };
    config.alpn_protocols = if tls.http2.unwrap_or(true) {
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
    } else {
        vec![ALPN_HTTP1.to_vec()]
    };
    Ok(ClientTls { config, expiry })
}

/// Verifies the server's certificate for a configured name instead of the
/// URL's host (`server_name`). The SNI sent is still the URL's host.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `verify = false`: any server certificate is taken (the handshake's
/// signatures are still checked). Against an active attacker this is no
/// protection at all.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a request failed in its TLS handshake, in words an operator acts
/// on; `None` when `err`'s chain holds no TLS error.
pub fn handshake_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{CertificateError as C, Error as E};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        // io::Error's `source` skips the error it wraps: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        let found = e
            .downcast_ref::<E>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<E>()));
        if let Some(tls) = found {
            return Some(match tls {
                E::InvalidCertificate(C::UnknownIssuer) => {
                    "unknown CA: the server's certificate is not signed by a trusted CA \
                     (tls.ca_file)"
                        .into()
                }
                E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    "name mismatch: the server's certificate is not valid for the target's \
                     host (or tls.server_name)"
                        .into()
                }
                E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    "expired: the server's certificate has expired".into()
                }
                E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                    "not yet valid: the server's certificate is not valid yet".into()
                }
                E::InvalidCertificate(c) => format!("invalid server certificate: {c:?}"),
                E::AlertReceived(a) => alert_words(&format!("{a:?}")),
                other => format!("TLS error: {other}"),
            });
        }
        // An alert read after the handshake (TLS 1.3 servers judge the
        // client certificate then) reaches hyper as text only.
        let text = e.to_string();
        if let Some(at) = text.find(ALERT_TEXT) {
            let name: String = text[at + ALERT_TEXT.len()..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return Some(alert_words(&name));
        }
        cur = inner.or_else(|| e.source());
    }
    None
}

/// How rustls writes a received alert (`rustls::Error::AlertReceived`'s
/// `Display`), followed by the alert's name.
const ALERT_TEXT: &str = "received fatal alert: ";

/// An alert from the server (RFC 8446 §6.2, names as rustls's
/// `AlertDescription`) in an operator's words.
fn alert_words(name: &str) -> String {
    const CLIENT_CERT: &[&str] = &[
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "CertificateExpired",
        "CertificateRevoked",
        "UnsupportedCertificate",
        "AccessDenied",
    ];
    if CLIENT_CERT.contains(&name) {
        format!("client certificate refused by the server (alert {name})")
    } else {
        format!("the server ended the handshake (alert {name})")
    }
}

/// Settings of the reqwest clients CDRS builds, from `[delivery]`.
#[derive(Debug, Clone, PartialEq)]
struct ClientOptions {
    timeout_ms: u64,
}

/// One HTTP client with its TLS settings; the client is replaced whole
/// when a TLS file rotates, so new requests open new connections with the
/// new files while requests in flight finish on the old ones.
pub struct Endpoint {
    /// Metric and log name: `delivery` (the `[delivery.tls]` defaults) or
    /// `target/<id>`.
    pub name: String,
    pub tls: TlsConfig,
    options: ClientOptions,
    client: ArcSwap<Built>,
    /// The client certificate's expiry, Unix seconds; 0 without one.
    expiry: AtomicI64,
}

/// A reqwest client and the TLS config it was built with (kept for
/// [`Clients::diagnose`]).
struct Built {
    client: reqwest::Client,
    config: Arc<rustls::ClientConfig>,
}

impl Endpoint {
    fn build(tls: &TlsConfig, options: &ClientOptions) -> Result<(Built, Option<i64>), TlsError> {
        let ClientTls { config, expiry } = client_tls(tls)?;
        let kept = Arc::new(config.clone());
        let mut b = reqwest::Client::builder()
            // A followed 301/302/303 turns the POST into a GET without the
            // batch, and its 2xx would count as delivered: a redirect is an
            // answer of its own (not retried; the records go elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(options.timeout_ms))
            .connect_timeout(Duration::from_millis(options.timeout_ms.min(2_000)))
            .pool_max_idle_per_host(16)
            .tls_backend_preconfigured(config);
        if !tls.http2.unwrap_or(true) {
            b = b.http1_only();
        }
        let client = b
            .build()
            .map_err(|e| TlsError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok((
            Built {
                client,
                config: kept,
            },
            expiry,
        ))
    }

    /// The current client (cheap: an `Arc` clone inside).
    pub fn client(&self) -> reqwest::Client {
        self.client.load().client.clone()
    }

    /// The files this endpoint reads.
    pub fn files(&self) -> Vec<PathBuf> {
        [&self.tls.ca_file, &self.tls.cert_file, &self.tls.key_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// The HTTP clients of deliveries and health checks: one for targets
/// without their own `[targets.tls]` (and for dynamic targets), one per
/// target with it. Built whole from a config; a reload builds a new set.
pub struct Clients {
    default: Arc<Endpoint>,
    targets: HashMap<String, Arc<Endpoint>>,
    metrics: Option<Arc<Metrics>>,
}

impl Clients {
    /// Clients for `delivery` and `targets`; with `metrics`, each client
    /// certificate's expiry is exported as
    /// `cdrs_tls_cert_expiry_timestamp_seconds{cert}`.
    ///
    /// # Errors
    /// A TLS file of `[delivery.tls]` or a `[targets.tls]` cannot be used;
    /// the message names the block.
    pub fn new(
        delivery: &DeliveryConfig,
        targets: &[TargetConfig],
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Clients, TlsError> {
        let options = ClientOptions {
            timeout_ms: delivery.timeout_ms,
        };
        let make = |name: String, tls: TlsConfig| -> Result<Arc<Endpoint>, TlsError> {
            let (client, expiry) = Endpoint::build(&tls, &options)
                .map_err(|e| TlsError::Config(format!("{}: {e}", block_name(&name))))?;
            if tls.verify == Some(false) {
                tracing::warn!(cert = %name,
                    "TLS verification is OFF (verify = false): any server certificate is \
                     accepted; use only for tests");
            }
            if let Some(x) = expiry {
                note_expiry(metrics.as_deref(), &name, x);
            }
            Ok(Arc::new(Endpoint {
                name,
                tls,
                options: options.clone(),
                client: ArcSwap::from_pointee(client),
                expiry: AtomicI64::new(expiry.unwrap_or(0)),
            }))
        };
        let default = make("delivery".into(), delivery.tls.clone())?;
        let mut own = HashMap::new();
        for t in targets {
            if let Some(tls) = &t.tls {
                let merged = delivery.tls.overridden_by(tls);
                own.insert(t.id.clone(), make(format!("target/{}", t.id), merged)?);
            }
        }
        Ok(Clients {
            default,
            targets: own,
            metrics,
        })
    }

    /// A new set for a changed config, exporting to the same metrics.
    ///
    /// # Errors
    /// As [`Clients::new`].
    pub fn rebuild(
        &self,
        delivery: &DeliveryConfig,
        targets: &[TargetConfig],
    ) -> Result<Clients, TlsError> {
        Clients::new(delivery, targets, self.metrics.clone())
    }

    /// Why requests to `url` of target `id` fail, when a TLS handshake is
    /// the reason but the failed request did not say so: a TLS 1.3 server
    /// judges the client certificate after the client's side of the
    /// handshake, and its alert races the request (the request may see
    /// only a reset or closed connection). A probe connection with the
    /// same TLS config does the handshake and reads, sending nothing, so
    /// the alert arrives. `None`: not `https://`, unreachable, or the
    /// handshake is fine. Takes at most [`DIAGNOSE_TIMEOUT`].
    pub async fn diagnose(&self, id: &str, url: &str) -> Option<String> {
        let u = reqwest::Url::parse(url).ok()?;
        if u.scheme() != "https" {
            return None;
        }
        let host = u
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u.port_or_known_default()?;
        let config = self
            .targets
            .get(id)
            .unwrap_or(&self.default)
            .client
            .load()
            .config
            .clone();
        let name = ServerName::try_from(host.clone()).ok()?;
        let probe = async {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .ok()?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let mut stream = match connector.connect(name, tcp).await {
                Ok(s) => s,
                Err(e) => return handshake_failure(&e),
            };
            let mut byte = [0u8; 1];
            match tokio::time::timeout(ALERT_WAIT, stream.read(&mut byte)).await {
                Ok(Err(e)) => handshake_failure(&e),
                _ => None,
            }
        };
        tokio::time::timeout(DIAGNOSE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }

    /// The client for target `id`.
    pub fn client(&self, id: &str) -> reqwest::Client {
        self.targets.get(id).unwrap_or(&self.default).client()
    }

    /// Every endpoint (the default first).
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        std::iter::once(&self.default).chain(self.targets.values())
    }

    /// Warns about client certificates that expire soon (or have).
    pub fn warn_expiring(&self) {
        for e in self.endpoints() {
            let x = e.expiry.load(Ordering::Relaxed);
            if x != 0 {
                warn_expiry(&e.name, x);
            }
        }
    }

    /// Every TLS file read by these clients.
    pub fn files(&self) -> Vec<PathBuf> {
        self.endpoints().flat_map(|e| e.files()).collect()
    }

    /// Rebuilds the clients that read one of `changed` (canonical paths).
    /// A client whose files do not make a valid config keeps its old one.
    /// Returns each rebuilt endpoint's name and outcome.
    pub fn rotate(&self, changed: &[PathBuf]) -> Vec<(String, Result<(), TlsError>)> {
        let mut out = Vec::new();
        for e in self.endpoints() {
            if !e.files().iter().any(|f| changed.contains(&canonical(f))) {
                continue;
            }
            let r = Endpoint::build(&e.tls, &e.options).map(|(built, expiry)| {
                e.client.store(Arc::new(built));
                e.expiry.store(expiry.unwrap_or(0), Ordering::Relaxed);
                if let Some(x) = expiry {
                    note_expiry(self.metrics.as_deref(), &e.name, x);
                }
            });
            note_rotation(self.metrics.as_deref(), &e.name, &r);
            out.push((e.name.clone(), r));
        }
        out
    }
}

/// The config block an endpoint name comes from.
fn block_name(name: &str) -> String {
    match name.strip_prefix("target/") {
        Some(id) => format!("targets[id={id:?}].tls"),
        None => "delivery.tls".into(),
    }
}

/// `p` with symlinks resolved (as file events name it), or `p` itself.
pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The admin API's TLS acceptor; replaced when its files rotate.
pub struct ServerTls {
    pub tls: AdminTlsConfig,
    acceptor: ArcSwap<tokio_rustls::TlsAcceptor>,
    metrics: Option<Arc<Metrics>>,
    /// The certificate's expiry, Unix seconds.
    expiry: AtomicI64,
}

impl ServerTls {
    /// # Errors
    /// A file of `[admin.tls]` cannot be used.
    pub fn new(tls: &AdminTlsConfig, metrics: Option<Arc<Metrics>>) -> Result<ServerTls, TlsError> {
        let (acceptor, expiry) = Self::build(tls, metrics.as_deref())?;
        Ok(ServerTls {
            tls: tls.clone(),
            acceptor: ArcSwap::from_pointee(acceptor),
            metrics,
            expiry: AtomicI64::new(expiry),
        })
    }

    fn build(
        tls: &AdminTlsConfig,
        metrics: Option<&Metrics>,
    ) -> Result<(tokio_rustls::TlsAcceptor, i64), TlsError> {
        let (chain, key, expiry) =
            certified_key(&tls.cert_file, &tls.key_file, tls.key_pass.as_deref())
                .map_err(|e| TlsError::Config(format!("admin.tls: {e}")))?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &tls.client_ca_file {
            Some(ca) => {
                let roots = Arc::new(read_roots(ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| TlsError::Invalid {
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|e| TlsError::KeyMismatch {
                    cert: tls.cert_file.clone(),
                    key: tls.key_file.clone(),
                    reason: e.to_string(),
                })?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        note_expiry(metrics, "admin", expiry);
        Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), expiry))
    }

    /// Warns when the certificate expires soon (or has).
    pub fn warn_expiring(&self) {
        warn_expiry("admin", self.expiry.load(Ordering::Relaxed));
    }

    /// The current acceptor.
    pub fn acceptor(&self) -> Arc<tokio_rustls::TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// The files the admin TLS reads.
    pub fn files(&self) -> Vec<PathBuf> {
        [
            Some(&self.tls.cert_file),
            Some(&self.tls.key_file),
            self.tls.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// Rebuilds the acceptor when one of `changed` is its file; a broken
    /// file keeps the old one. `None` when none of its files changed.
    pub fn rotate(&self, changed: &[PathBuf]) -> Option<Result<(), TlsError>> {
        if !self.files().iter().any(|f| changed.contains(&canonical(f))) {
            return None;
        }
        let r = Self::build(&self.tls, self.metrics.as_deref()).map(|(a, expiry)| {
            self.acceptor.store(Arc::new(a));
            self.expiry.store(expiry, Ordering::Relaxed);
        });
        note_rotation(self.metrics.as_deref(), "admin", &r);
        Some(r)
    }
}

/// Checks the files of a client TLS block as `cdrs check` does: they
/// exist and parse, the key matches the certificate, the certificate has
/// not expired (and is not within [`EXPIRY_WARNING`] of it), and when
/// `ca_file` is given, whether the client certificate chains to it.
/// Returns (problems, notes).
pub fn check_client(tls: &TlsConfig) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = client_tls(tls) {
        problems.push(e.to_string());
        return (problems, notes);
    }
    if let Some(cert) = &tls.cert_file {
        check_expiry(cert, &mut problems, &mut notes);
        if let Some(ca) = &tls.ca_file {
            if let Some(why) = chain_problem(cert, ca) {
                // Servers may trust another CA than the one that signs
                // theirs: a note, not an error.
                notes.push(format!(
                    "{cert:?} does not chain to ca_file {ca:?} ({why}); fine if the servers \
                     trust another CA"
                ));
            }
        }
    }
    if tls.verify == Some(false) {
        notes.push("verify = false: server certificates are not checked".into());
    }
    (problems, notes)
}

/// As [`check_client`] for `[admin.tls]`.
pub fn check_server(tls: &AdminTlsConfig) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if let Err(e) = ServerTls::build(tls, None) {
        problems.push(e.to_string());
        return (problems, notes);
    }
    check_expiry(&tls.cert_file, &mut problems, &mut notes);
    (problems, notes)
}

/// Why the certificate of `cert` does not chain to the CA of `ca` as a
/// client certificate; `None` when it does (or a file cannot be read:
/// reported elsewhere).
fn chain_problem(cert: &Path, ca: &Path) -> Option<String> {
    let (chain, roots) = (read_certs(cert).ok()?, read_roots(ca).ok()?);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .ok()?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .err()
        .map(|e| e.to_string())
}

fn check_expiry(cert: &Path, problems: &mut Vec<String>, notes: &mut Vec<String>) {
    let Ok(chain) = read_certs(cert) else { return };
    match not_after(&chain[0]) {
        Ok(x) if x <= now_s() => problems.push(format!("{cert:?}: the certificate has expired")),
        Ok(x) if x - now_s() < EXPIRY_WARNING.as_secs() as i64 => notes.push(format!(
            "{cert:?}: the certificate expires in {} days",
            (x - now_s()) / 86_400
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("{cert:?}: {e}")),
    }
}

#[cfg(test)]
mod tests;
