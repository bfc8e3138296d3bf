//! Upstream authorities: a root CA above the server's CA. With one, the server's
//! signing CA is an intermediate it signs (its key is still made by the server's key
//! manager), the bundle holds the root, and SVID chains carry the intermediate.
//!
//! `pkcs11`: the root key lives in a token too, made by `tessera-server ca init` or
//! named by a `pkcs11:` URI. `disk`: the root key and certificate are files.
//!
//! The root is checked at start for the mistakes that would make every chain the
//! server serves fail to verify, and the server refuses to run with one: a root
//! that is expired or not valid yet, not a CA, without keyCertSign, with
//! pathLenConstraint 0 (it may sign no intermediate, and the server's CA is one), for
//! another trust domain, or whose key is not the certificate's. A root that expires
//! before a full CA lifetime (`ca_ttl`) is accepted with an error in the log: the
//! server's CAs are cut short to end with it (the service goes on until then), and
//! the health check says when it expires. The CA manager then checks the chain of
//! every CA it makes (see `probe.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::TrustDomain;
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SoftwareKey};
use tessera_core::x509::{self, BuildError, Issuer, SvidError};
use tessera_hsm::{HsmError, Pkcs11KeyManager};

use crate::config::{DEFAULT_UPSTREAM_KEY_ID, ServerConfig, UpstreamAuthorityConfig};

/// Why the upstream authority cannot be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The root certificate cannot serve; the message names the mistake and the fix.
    #[error("{0}")]
    Root(String),
    /// The root certificate file cannot be read.
    #[error("upstream root certificate {}: {source} (run `tessera-server ca init` first)", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The root certificate file holds more than one certificate.
    #[error("upstream root certificate {}: {reason}", path.display())]
    CertFile { path: PathBuf, reason: String },
    /// The root certificate file is not PEM with a certificate.
    #[error("upstream root certificate {}: {source}", path.display())]
    CertPem {
        path: PathBuf,
        #[source]
        source: tessera_core::pem::PemError,
    },
    /// The root certificate cannot be parsed.
    #[error("upstream root {what}: {source}")]
    CertInfo {
        what: String,
        #[source]
        source: SvidError,
    },
    /// The token holding the root key cannot be opened.
    #[error("upstream authority token: {0}")]
    Token(#[source] HsmError),
    /// The token cannot look up the root key.
    #[error("upstream root key {id:?}: {source}")]
    TokenKey {
        id: String,
        #[source]
        source: HsmError,
    },
    /// The token does not hold the root key.
    #[error(
        "the upstream root key is not in the token: run `tessera-server ca init`, or name an existing key with object= in the URI"
    )]
    NoRootKey,
    /// The root key file cannot be read or is not a PKCS#8 key.
    #[error("upstream key {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    /// The root key is not the certificate's.
    #[error(
        "the upstream root key does not match the upstream root certificate {what}: the certificate was made for another key (run `tessera-server ca init --force` to make both again, or fix the key setting)"
    )]
    KeyMismatch { what: String },
    /// The root cannot sign.
    #[error("upstream authority ({what}): {source}")]
    Issuer {
        what: String,
        #[source]
        source: BuildError,
    },
    /// `ca init` without an `[upstream_authority]` section.
    #[error("the configuration has no [upstream_authority] section")]
    NotConfigured,
    /// `ca init` would replace a root without `--force`.
    #[error(
        "{} already exists: the root is initialised (use --force to replace it, which makes every agent need the new bundle)", path.display()
    )]
    AlreadyInitialised { path: PathBuf },
    /// `ca init` would replace a key in the token without `--force`.
    #[error("the token already holds a root key {id:?} (use --force to replace it)")]
    KeyExists { id: String },
    /// The root key cannot be made.
    #[error("creating the root key: {0}")]
    Generate(#[source] KeyError),
    /// The root certificate cannot be signed.
    #[error("signing the root certificate: {0}")]
    Sign(#[source] BuildError),
    /// A file of the root cannot be written.
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The mistakes in an upstream root certificate that make it unusable, checked in the
/// order an operator would fix them. `Ok` carries a warning for a root that expires
/// before a full CA lifetime from `now`.
pub fn check_root(
    cert: &[u8],
    what: &str,
    trust_domain: &TrustDomain,
    ca_ttl: Duration,
    now: SystemTime,
) -> Result<Option<String>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| format!("upstream root {what} is not a valid X.509 certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| t.to_rfc2822().unwrap_or_else(|_| t.to_string());
    let now_s = x509::unix_seconds(now);
    let validity = parsed.validity();
    if validity.not_after.timestamp() <= now_s {
        return Err(format!(
            "upstream root {what} expired on {}: make a new root (tessera-server ca init --force) and give agents the new bundle",
            at(validity.not_after)
        ));
    }
    if validity.not_before.timestamp() > now_s {
        return Err(format!(
            "upstream root {what} is not valid before {} (is this machine's clock right?)",
            at(validity.not_before)
        ));
    }
    let bc = parsed.basic_constraints().ok().flatten().map(|b| b.value);
    if !bc.is_some_and(|b| b.ca) {
        return Err(format!(
            "upstream root {what} is not a CA certificate (basicConstraints cA is not true): it cannot sign the server's CA"
        ));
    }
    if bc.and_then(|b| b.path_len_constraint) == Some(0) {
        return Err(format!(
            "upstream root {what} has pathLenConstraint 0: it cannot sign an intermediate CA, and the server's CA is one; make a root without a path length limit (or pathlen >= 1)"
        ));
    }
    let ku = parsed.key_usage().ok().flatten().map(|k| k.value);
    if !ku.is_some_and(|k| k.key_cert_sign()) {
        return Err(format!(
            "upstream root {what} has no keyCertSign key usage: it cannot sign certificates"
        ));
    }
    let td = x509::validate_signing_cert(cert)
        .map_err(|e| format!("upstream root {what} is not a SPIFFE CA certificate: {e}"))?;
    if &td != trust_domain {
        return Err(format!(
            "upstream root {what} is for trust domain {td}, but this server's trust domain is {trust_domain}"
        ));
    }
    let remaining = validity.not_after.timestamp() - now_s;
    if remaining < ca_ttl.as_secs() as i64 {
        return Ok(Some(format!(
            "upstream root {what} expires on {}, sooner than a full CA lifetime (ca_ttl {}s) from now: the server's CAs are cut short to end with it, and the server cannot sign once it has expired; replace the root before then",
            at(validity.not_after),
            ca_ttl.as_secs()
        )));
    }
    Ok(None)
}

fn read_root_cert(path: &Path) -> Result<Vec<u8>, UpstreamError> {
    let text = std::fs::read(path).map_err(|source| UpstreamError::ReadCert {
        path: path.to_owned(),
        source,
    })?;
    let mut certs = x509::pem_certs(&text).map_err(|source| UpstreamError::CertPem {
        path: path.to_owned(),
        source,
    })?;
    if certs.len() != 1 {
        return Err(UpstreamError::CertFile {
            path: path.to_owned(),
            reason: format!("must hold exactly one certificate, found {}", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

/// The key the token's URI names (`object=`), if it names one.
fn uri_key(manager: &Pkcs11KeyManager) -> Result<Option<Arc<dyn Key>>, UpstreamError> {
    manager
        .uri_key()
        .map(|k| k.map(|k| k as Arc<dyn Key>))
        .map_err(|source| UpstreamError::TokenKey {
            id: "named by the URI".to_owned(),
            source,
        })
}

/// The root key under `id` in the token, if it is there.
fn token_key(manager: &Pkcs11KeyManager, id: &str) -> Result<Option<Arc<dyn Key>>, UpstreamError> {
    manager
        .find_key(id)
        .map(|k| k.map(|k| k as Arc<dyn Key>))
        .map_err(|source| UpstreamError::TokenKey {
            id: id.to_owned(),
            source,
        })
}

fn pkcs11_root_key(
    manager: &Pkcs11KeyManager,
    key_id: Option<&str>,
) -> Result<Option<Arc<dyn Key>>, UpstreamError> {
    if let Some(k) = uri_key(manager)? {
        return Ok(Some(k));
    }
    token_key(manager, key_id.unwrap_or(DEFAULT_UPSTREAM_KEY_ID))
}

/// The upstream issuer the configuration names, if any, checked at `now`.
pub fn load(config: &ServerConfig, now: SystemTime) -> Result<Option<Arc<Issuer>>, UpstreamError> {
    let Some(up) = &config.upstream_authority else {
        return Ok(None);
    };
    let cert_path = config.upstream_root_cert().unwrap_or_default();
    let (cert, key): (Vec<u8>, Arc<dyn Key>) = match up {
        UpstreamAuthorityConfig::Pkcs11 { key_id, pkcs11, .. } => {
            let manager = Pkcs11KeyManager::open(pkcs11).map_err(UpstreamError::Token)?;
            let key =
                pkcs11_root_key(&manager, key_id.as_deref())?.ok_or(UpstreamError::NoRootKey)?;
            (read_root_cert(&cert_path)?, key)
        }
        UpstreamAuthorityConfig::Disk {
            cert_file,
            key_file,
        } => {
            let key = load_key_file(key_file)?;
            (read_root_cert(cert_file)?, Arc::new(key))
        }
    };
    let what = cert_path.display().to_string();
    if let Some(warning) = check_root(&cert, &what, &config.trust_domain, config.ca_ttl, now)
        .map_err(UpstreamError::Root)?
    {
        tracing::error!("{warning}");
    }
    let info = x509::cert_info(&cert).map_err(|source| UpstreamError::CertInfo {
        what: what.clone(),
        source,
    })?;
    if info.public_key_der != key.public_key_der() {
        return Err(UpstreamError::KeyMismatch { what });
    }
    let issuer = Issuer::new(cert, key).map_err(|source| UpstreamError::Issuer { what, source })?;
    Ok(Some(Arc::new(issuer)))
}

fn load_key_file(path: &Path) -> Result<SoftwareKey, UpstreamError> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let key_file = |source| UpstreamError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
        key_file(KeyError::Io {
            context: "reading the key file".to_owned(),
            source: e,
        })
    })?);
    let der = match PrivatePkcs8KeyDer::from_pem_slice(&bytes) {
        Ok(k) => zeroize::Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Err(_) => bytes.clone(),
    };
    SoftwareKey::from_pkcs8(&der).map_err(key_file)
}

/// What `ca init` made.
#[derive(Debug)]
pub struct InitReport {
    pub cert_path: std::path::PathBuf,
    pub subject: String,
    pub not_after: i64,
    pub sha256: String,
}

/// `tessera-server ca init`: makes the root key (in the token, or as a file for
/// `disk`) and its self-signed certificate.
pub fn init_root(
    config: &ServerConfig,
    ttl: Duration,
    key_type: KeyType,
    force: bool,
) -> Result<InitReport, UpstreamError> {
    let up = config
        .upstream_authority
        .as_ref()
        .ok_or(UpstreamError::NotConfigured)?;
    let cert_path = config.upstream_root_cert().unwrap_or_default();
    if cert_path.exists() && !force {
        return Err(UpstreamError::AlreadyInitialised { path: cert_path });
    }
    let write = |path: &Path| {
        let path = path.to_owned();
        move |source| UpstreamError::Write { path, source }
    };
    let key: Arc<dyn Key> = match up {
        UpstreamAuthorityConfig::Pkcs11 { key_id, pkcs11, .. } => {
            let manager = Pkcs11KeyManager::open(pkcs11).map_err(UpstreamError::Token)?;
            if let Some(k) = uri_key(&manager)? {
                // The URI names an existing key: certify it, never replace it.
                k
            } else {
                let id = key_id.as_deref().unwrap_or(DEFAULT_UPSTREAM_KEY_ID);
                if token_key(&manager, id)?.is_some() && !force {
                    return Err(UpstreamError::KeyExists { id: id.to_owned() });
                }
                KeyManager::generate_key(&manager, id, key_type).map_err(UpstreamError::Generate)?
            }
        }
        UpstreamAuthorityConfig::Disk { key_file, .. } => {
            let key = SoftwareKey::generate(key_type).map_err(UpstreamError::Generate)?;
            let pem = x509::to_pem("PRIVATE KEY", key.pkcs8_der());
            tessera_process::fs::write_atomic(key_file, pem.as_bytes(), 0o600)
                .map_err(write(key_file))?;
            Arc::new(key)
        }
    };
    let now = SystemTime::now();
    let cn = format!("Tessera root CA {}", config.trust_domain);
    let cert = x509::self_signed_ca(&config.trust_domain, &cn, &key, now, now + ttl)
        .map_err(UpstreamError::Sign)?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(write(dir))?;
    }
    tessera_process::fs::write_atomic(
        &cert_path,
        x509::to_pem("CERTIFICATE", &cert).as_bytes(),
        0o644,
    )
    .map_err(write(&cert_path))?;
    let info = x509::cert_info(&cert).map_err(|source| UpstreamError::CertInfo {
        what: cert_path.display().to_string(),
        source,
    })?;
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &cert)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(InitReport {
        cert_path,
        subject: info.subject,
        not_after: info.not_after,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    const DAY: u64 = 86_400;

    /// A root made with rcgen; `tweak` changes its parameters before signing.
    fn root(tweak: impl FnOnce(&mut rcgen::CertificateParams)) -> Vec<u8> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org".try_into().unwrap(),
        )];
        p.distinguished_name.push(rcgen::DnType::CommonName, "root");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
        tweak(&mut p);
        p.self_signed(&kp).unwrap().der().to_vec()
    }

    fn check(cert: &[u8]) -> Result<Option<String>, String> {
        check_root(
            cert,
            "root.pem",
            &TrustDomain::new("example.org").unwrap(),
            Duration::from_secs(DAY),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_good_root_passes() {
        assert_eq!(check(&root(|_| {})), Ok(None));
        let pathlen_1 =
            root(|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1)));
        assert_eq!(check(&pathlen_1), Ok(None));
    }

    #[test]
    fn roots_that_cannot_serve_are_refused_saying_why() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                root(|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0))),
                "has pathLenConstraint 0: it cannot sign an intermediate CA",
            ),
            (
                root(|p| {
                    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
                    p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
                }),
                "expired on",
            ),
            (
                root(|p| p.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(1)),
                "is not valid before",
            ),
            (
                root(|p| p.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign]),
                "has no keyCertSign key usage",
            ),
            (
                root(|p| p.is_ca = rcgen::IsCa::ExplicitNoCa),
                "is not a CA certificate",
            ),
            (
                root(|p| {
                    p.subject_alt_names = vec![rcgen::SanType::URI(
                        "spiffe://other.org".try_into().unwrap(),
                    )]
                }),
                "is for trust domain other.org",
            ),
            (
                root(|p| p.subject_alt_names = vec![]),
                "is not a SPIFFE CA certificate",
            ),
        ];
        for (cert, want) in cases {
            let err = check(&cert).unwrap_err();
            assert!(err.contains(want), "expected {want:?} in: {err}");
            assert!(err.contains("root.pem"), "the root is not named: {err}");
        }
    }

    #[test]
    fn a_root_shorter_lived_than_a_ca_is_accepted_with_a_warning() {
        let short =
            root(|p| p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(5));
        let warning = check(&short).unwrap().expect("a warning");
        assert!(
            warning.contains("sooner than a full CA lifetime"),
            "{warning}"
        );
    }
}
