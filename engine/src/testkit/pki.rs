//! A private CA for TLS tests: a CA certificate and server and client
//! certificates it signs, written as PEM files into a folder.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A certificate and its key as written: PEM file paths and the PEM text.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From a day ago for `days`.
    Days(u64),
    /// Expired: valid in 2020 only.
    Expired,
}

/// A CA, its certificate written to `<dir>/<name>-ca.pem`.
pub struct Pki {
    dir: PathBuf,
    name: String,
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    pub ca_pem: String,
}

fn unix(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

impl Pki {
    /// A new CA named `name` (its common name), files in `dir`.
    ///
    /// # Errors
    /// Key generation, signing or writing fails.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem())?;
        Ok(Pki {
            dir: dir.into(),
            name: name.into(),
            params,
            key,
            ca_file,
            ca_pem: cert.pem(),
        })
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![usage];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        match validity {
            Validity::Days(days) => {
                let now = unix(SystemTime::now());
                params.not_before = epoch + (now - Duration::from_secs(86_400));
                params.not_after = epoch + (now + Duration::from_secs(days * 86_400));
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 12, 31);
            }
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_file, key_file) = (
            self.dir.join(format!("{}-{stem}.pem", self.name)),
            self.dir.join(format!("{}-{stem}-key.pem", self.name)),
        );
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Issued {
            cert: cert_file,
            key: key_file,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    ///
    /// # Errors
    /// As [`Pki::new`].
    pub fn server(&self, stem: &str, names: &[&str], validity: Validity) -> anyhow::Result<Issued> {
        self.issue(stem, names, ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    /// A client certificate with common name `cn`, valid for 30 days.
    ///
    /// # Errors
    /// As [`Pki::new`].
    pub fn client(&self, stem: &str, cn: &str) -> anyhow::Result<Issued> {
        self.issue(
            stem,
            &[cn],
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::Days(30),
        )
    }
}

/// `key_pem` (PKCS#8) encrypted with `pass` (PBES2: scrypt + AES-256-CBC),
/// as `-----BEGIN ENCRYPTED PRIVATE KEY-----` PEM.
///
/// # Errors
/// The key does not parse as PKCS#8.
pub fn encrypt_key(key_pem: &str, pass: &str) -> anyhow::Result<String> {
    use pkcs8::der::EncodePem;
    let (_, doc) = pkcs8::SecretDocument::from_pem(key_pem)
        .map_err(|e| anyhow::anyhow!("not a PEM key: {e}"))?;
    let info = pkcs8::PrivateKeyInfo::try_from(doc.as_bytes())
        .map_err(|e| anyhow::anyhow!("not PKCS#8: {e}"))?;
    let encrypted = info
        .encrypt(pkcs8::rand_core::OsRng, pass)
        .map_err(|e| anyhow::anyhow!("cannot encrypt: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(encrypted.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    info.to_pem(pkcs8::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("{e}"))
}
