//! Upstream authorities: a root CA above the server's CA. With one, the server's
//! signing CA is an intermediate it signs (its key is still made by the server's key
//! manager), the bundle holds the root, and SVID chains carry the intermediate.
//!
//! `pkcs11`: the root key lives in a token too, made by `tessera-server ca init` or
//! named by a `pkcs11:` URI. `disk`: the root key and certificate are files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::key::{Key, KeyManager, KeyType, SoftwareKey};
use tessera_core::x509::{self, Issuer};
use tessera_hsm::Pkcs11KeyManager;

use crate::config::{DEFAULT_UPSTREAM_KEY_ID, ServerConfig, UpstreamAuthorityConfig};

fn read_root_cert(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "upstream root certificate {}: {e} (run `tessera-server ca init` first)",
            path.display()
        )
    })?;
    let mut certs = x509::pem_certs(&text)
        .map_err(|e| format!("upstream root certificate {}: {e}", path.display()))?;
    if certs.len() != 1 {
        return Err(format!(
            "upstream root certificate {} must hold exactly one certificate, found {}",
            path.display(),
            certs.len()
        ));
    }
    let cert = certs.remove(0);
    x509::validate_signing_cert(&cert).map_err(|e| {
        format!(
            "upstream root certificate {} is not a SPIFFE CA certificate: {e}",
            path.display()
        )
    })?;
    Ok(cert)
}

fn pkcs11_root_key(
    manager: &Pkcs11KeyManager,
    key_id: Option<&str>,
) -> Result<Option<Arc<dyn Key>>, String> {
    if let Some(k) = manager
        .uri_key()
        .map_err(|e| format!("upstream root key: {e}"))?
    {
        return Ok(Some(k));
    }
    let id = key_id.unwrap_or(DEFAULT_UPSTREAM_KEY_ID);
    manager
        .find_key(id)
        .map(|k| k.map(|k| k as Arc<dyn Key>))
        .map_err(|e| format!("upstream root key {id:?}: {e}"))
}

/// The upstream issuer the configuration names, if any.
pub fn load(config: &ServerConfig) -> Result<Option<Arc<Issuer>>, String> {
    let Some(up) = &config.upstream_authority else {
        return Ok(None);
    };
    let cert_path = config.upstream_root_cert().unwrap_or_default();
    let (cert, key): (Vec<u8>, Arc<dyn Key>) = match up {
        UpstreamAuthorityConfig::Pkcs11 { key_id, pkcs11, .. } => {
            let manager = Pkcs11KeyManager::open(pkcs11)
                .map_err(|e| format!("upstream authority token: {e}"))?;
            let key = pkcs11_root_key(&manager, key_id.as_deref())?.ok_or_else(|| {
                "the upstream root key is not in the token: run `tessera-server ca init`, or name an existing key with object= in the URI".to_string()
            })?;
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
    let issuer = Issuer::new(cert, key)
        .map_err(|e| format!("upstream authority ({}): {e}", cert_path.display()))?;
    if issuer.not_after() <= SystemTime::now() {
        return Err(format!(
            "the upstream root certificate {} has expired",
            cert_path.display()
        ));
    }
    Ok(Some(Arc::new(issuer)))
}

fn load_key_file(path: &Path) -> Result<SoftwareKey, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("upstream key {}: {e}", path.display()))?,
    );
    let der = match PrivatePkcs8KeyDer::from_pem_slice(&bytes) {
        Ok(k) => zeroize::Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Err(_) => bytes.clone(),
    };
    SoftwareKey::from_pkcs8(&der).map_err(|e| format!("upstream key {}: {e}", path.display()))
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
) -> Result<InitReport, String> {
    let up = config
        .upstream_authority
        .as_ref()
        .ok_or("the configuration has no [upstream_authority] section")?;
    let cert_path = config.upstream_root_cert().unwrap_or_default();
    if cert_path.exists() && !force {
        return Err(format!(
            "{} already exists: the root is initialised (use --force to replace it, which makes every agent need the new bundle)",
            cert_path.display()
        ));
    }
    let key: Arc<dyn Key> = match up {
        UpstreamAuthorityConfig::Pkcs11 { key_id, pkcs11, .. } => {
            let manager = Pkcs11KeyManager::open(pkcs11)
                .map_err(|e| format!("upstream authority token: {e}"))?;
            if let Some(k) = manager.uri_key().map_err(|e| e.to_string())? {
                // The URI names an existing key: certify it, never replace it.
                k
            } else {
                let id = key_id.as_deref().unwrap_or(DEFAULT_UPSTREAM_KEY_ID);
                if manager.find_key(id).map_err(|e| e.to_string())?.is_some() && !force {
                    return Err(format!(
                        "the token already holds a root key {id:?} (use --force to replace it)"
                    ));
                }
                KeyManager::generate_key(&manager, id, key_type)
                    .map_err(|e| format!("creating the root key: {e}"))?
            }
        }
        UpstreamAuthorityConfig::Disk { key_file, .. } => {
            let key = SoftwareKey::generate(key_type).map_err(|e| e.to_string())?;
            let pem = x509::to_pem("PRIVATE KEY", key.pkcs8_der());
            tessera_core::fsutil::write_atomic(key_file, pem.as_bytes(), 0o600)
                .map_err(|e| format!("{}: {e}", key_file.display()))?;
            Arc::new(key)
        }
    };
    let now = SystemTime::now();
    let cn = format!("Tessera root CA {}", config.trust_domain);
    let cert = x509::self_signed_ca(&config.trust_domain, &cn, &key, now, now + ttl)
        .map_err(|e| format!("signing the root certificate: {e}"))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    tessera_core::fsutil::write_atomic(
        &cert_path,
        x509::to_pem("CERTIFICATE", &cert).as_bytes(),
        0o644,
    )
    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let info = x509::cert_info(&cert).map_err(|e| e.to_string())?;
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
