//! ACME for the `https_web` bundle endpoint (`[federation.bundle_endpoint.acme]`), as
//! SPIRE's `acme` block does it: the server gets the endpoint's certificate for
//! `domain_name` from an ACME CA (RFC 8555), proving control of the name with the
//! tls-alpn-01 challenge (RFC 8737) on the endpoint's own port, and renews it when
//! two thirds of its life have passed. The account, the certificate and its key are
//! kept under `<data_dir>/acme/`, so a restart serves the stored certificate at
//! once and only renews when it is due. Until a first certificate is there, TLS
//! handshakes for the bundle fail (there is nothing to present); a failed order is
//! retried from a minute, doubling up to an hour, and logged with the CA's reason,
//! while a certificate already held keeps being served.
//!
//! The ACME requests go through the project's own HTTP client
//! (`tessera_process::http`), trusting `ca_bundle` or the system's roots.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tessera_process::http;
use tokio::sync::watch;

/// The ALPN protocol of tls-alpn-01 validations.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The first retry after a failed order; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// Let's Encrypt's production directory, SPIRE's default too.
pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[federation.bundle_endpoint.acme]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The DNS name the certificate is for; the endpoint must be reachable under it
    /// on its port, from the CA.
    pub domain_name: String,
    /// The account's contact address.
    pub email: String,
    /// The CA's directory URL (Let's Encrypt's production one by default).
    #[serde(default)]
    pub directory_url: Option<String>,
    /// That the CA's terms of service are accepted; must be true.
    #[serde(default)]
    pub tos_accepted: bool,
    /// Roots (PEM) to check the CA's own HTTPS with; the system's by default.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

impl AcmeConfig {
    fn directory(&self) -> &str {
        self.directory_url.as_deref().unwrap_or(DEFAULT_DIRECTORY)
    }
}

/// Checks `[federation.bundle_endpoint.acme]`; the error says what is wrong.
pub fn check(cfg: &AcmeConfig) -> Result<(), String> {
    if !cfg.tos_accepted {
        return Err(format!(
            "tos_accepted must be true: the CA at {} issues only to accounts that accept \
             its terms of service (read them first)",
            cfg.directory()
        ));
    }
    let name = &cfg.domain_name;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253
        || name.parse::<std::net::IpAddr>().is_ok()
        || !name.split('.').all(label_ok)
    {
        return Err(format!(
            "domain_name {name:?} is not a DNS name (letters, digits and hyphens in \
             dot-separated labels)"
        ));
    }
    let email = &cfg.email;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !email.contains(char::is_whitespace) => {}
        _ => return Err(format!("email {email:?} is not an e-mail address")),
    }
    crate::https::check_url(cfg.directory(), false).map_err(|e| format!("directory_url {e}"))
}

/// The certificates the endpoint presents: the one the CA issued, and while the CA
/// validates, the tls-alpn-01 challenge certificate to connections that ask for
/// `acme-tls/1`.
#[derive(Debug, Default)]
pub struct AcmeCerts {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for AcmeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// TLS for the endpoint with certificates from `certs`: HTTP/1.1, and `acme-tls/1`
/// for validations.
pub fn acceptor(certs: Arc<AcmeCerts>) -> tokio_rustls::TlsAcceptor {
    crate::https::acceptor_with(certs, &[b"http/1.1", ACME_TLS_ALPN])
}

/// Where the account and the certificate are kept.
struct Store {
    dir: PathBuf,
    domain: String,
    /// The directory URL the account belongs to.
    directory: String,
}

impl Store {
    /// One account per CA: switching `directory_url` (from a staging CA to the
    /// production one, say) makes a new account instead of reusing the other CA's.
    fn account(&self) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.directory.as_bytes());
        let tag: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("account-{tag}.json"))
    }
    fn chain(&self) -> PathBuf {
        self.dir.join(format!("{}.crt.pem", self.domain))
    }
    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}.key.pem", self.domain))
    }
}

/// A certificate and its key, as PEM, with when to renew it.
struct Issued {
    chain_pem: String,
    key_pem: String,
}

impl Issued {
    /// The certificate for rustls, and when two thirds of its life have passed.
    fn load(&self) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate chain: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("certificate: {e}"))?;
        let from = cert.validity().not_before.timestamp();
        let to = cert.validity().not_after.timestamp();
        let renew_at = from.saturating_add(to.saturating_sub(from) * 2 / 3);
        let renew_at =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(renew_at).unwrap_or(0));
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("private key: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("private key: {e}"))?;
        Ok((Arc::new(CertifiedKey::new(chain, signer)), renew_at))
    }
}

/// Keeps the endpoint's certificate from the CA in `certs` until `shutdown` turns
/// true: the stored one at once when it is there and not due, a new one otherwise.
pub fn spawn(
    cfg: AcmeConfig,
    data_dir: &Path,
    certs: Arc<AcmeCerts>,
    mut shutdown: watch::Receiver<bool>,
) {
    let store = Store {
        dir: data_dir.join("acme"),
        domain: cfg.domain_name.to_ascii_lowercase(),
        directory: cfg.directory().to_owned(),
    };
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let wait = match renew_if_due(&cfg, &store, &certs).await {
                Ok(renew_at) => {
                    failures = 0;
                    renew_at
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        .max(Duration::from_secs(1))
                }
                Err(e) => {
                    failures += 1;
                    let wait = FIRST_RETRY
                        .saturating_mul(1 << failures.saturating_sub(1).min(6))
                        .min(MAX_RETRY);
                    tracing::warn!(
                        domain = %cfg.domain_name,
                        directory = cfg.directory(),
                        error = %e,
                        retry_in = ?wait,
                        "cannot get the bundle endpoint's certificate over ACME"
                    );
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}

/// Serves the stored certificate if it is not due, or orders a new one; returns
/// when the one now served is due.
async fn renew_if_due(
    cfg: &AcmeConfig,
    store: &Store,
    certs: &AcmeCerts,
) -> Result<SystemTime, String> {
    let stored = match (
        std::fs::read_to_string(store.chain()),
        std::fs::read_to_string(store.key()),
    ) {
        (Ok(chain_pem), Ok(key_pem)) => Some(Issued { chain_pem, key_pem }),
        _ => None,
    };
    if let Some(issued) = stored {
        match issued.load() {
            Ok((key, renew_at)) => {
                *certs
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(key);
                if renew_at > SystemTime::now() {
                    return Ok(renew_at);
                }
            }
            Err(e) => tracing::warn!(
                path = %store.chain().display(),
                error = %e,
                "the stored ACME certificate is unusable; ordering a new one"
            ),
        }
    }
    let issued = order(cfg, store, certs).await?;
    let (key, renew_at) = issued.load()?;
    // The key first: a chain beside an old key would not load.
    tessera_process::fs::ensure_dir(&store.dir, 0o700)
        .and_then(|()| {
            tessera_process::fs::write_atomic(&store.key(), issued.key_pem.as_bytes(), 0o600)
        })
        .and_then(|()| {
            tessera_process::fs::write_atomic(&store.chain(), issued.chain_pem.as_bytes(), 0o644)
        })
        .map_err(|e| {
            format!(
                "cannot store the certificate in {}: {e}",
                store.dir.display()
            )
        })?;
    *certs
        .current
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Some(key);
    tracing::info!(domain = %cfg.domain_name, "bundle endpoint certificate issued over ACME");
    Ok(renew_at)
}

/// Orders a certificate for `cfg.domain_name`, answering its challenges.
async fn order(cfg: &AcmeConfig, store: &Store, certs: &AcmeCerts) -> Result<Issued, String> {
    let account = account(cfg, store).await?;
    let ids = [Identifier::Dns(store.domain.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut answered = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or("the CA offers no tls-alpn-01 challenge")?;
            let name = match challenge.identifier().identifier {
                Identifier::Dns(name) => name.to_ascii_lowercase(),
                other => return Err(format!("unexpected identifier {other:?}")),
            };
            let cert = challenge_cert(&name, challenge.key_authorization().digest().as_ref())?;
            certs
                .challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.clone(), cert);
            answered.push(name);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map_or(String::new(), |p| format!(": {p}"));
            return Err(format!("the order is {status:?}{why}"));
        }
        let (key_pem, csr) = key_and_csr(&store.domain)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok(Issued { chain_pem, key_pem })
    }
    .await;
    let mut challenges = certs
        .challenges
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for name in answered {
        challenges.remove(&name);
    }
    result
}

/// The stored account, or a new one (stored before it is used).
async fn account(cfg: &AcmeConfig, store: &Store) -> Result<Account, String> {
    let http = Box::new(AcmeHttp::new(cfg)?);
    if let Ok(text) = std::fs::read(store.account()) {
        let credentials: AccountCredentials = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: {e}", store.account().display()))?;
        return Account::builder_with_http(http)
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account: {e}"));
    }
    let contact = format!("mailto:{}", cfg.email);
    let (account, credentials) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory().to_owned(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", cfg.directory()))?;
    let text = serde_json::to_vec(&credentials).map_err(|e| format!("account: {e}"))?;
    tessera_process::fs::ensure_dir(&store.dir, 0o700)
        .and_then(|()| tessera_process::fs::write_atomic(&store.account(), &text, 0o600))
        .map_err(|e| {
            format!(
                "cannot store the ACME account in {}: {e}",
                store.dir.display()
            )
        })?;
    Ok(account)
}

/// The tls-alpn-01 certificate for `name`: self-signed, with the critical
/// acmeIdentifier extension holding `digest` (RFC 8737, section 3).
fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A new P-256 key (PKCS#8 PEM) and a CSR for `name` (DER).
fn key_and_csr(name: &str) -> Result<(String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// instant-acme's requests over the project's HTTP client.
struct AcmeHttp {
    opts: Arc<http::Options>,
}

impl AcmeHttp {
    fn new(cfg: &AcmeConfig) -> Result<Self, String> {
        let tls = crate::https::tls_roots(
            "[federation.bundle_endpoint.acme]",
            "ca_bundle",
            cfg.ca_bundle.as_deref(),
        )?;
        Ok(Self {
            opts: Arc::new(http::Options {
                timeout: Duration::from_secs(30),
                max_body: 1 << 20,
                tls: Some(tls),
            }),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: ::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let opts = self.opts.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let request = http::Request {
                method: parts.method,
                url: parts.uri.to_string(),
                headers: parts
                    .headers
                    .into_iter()
                    .filter_map(|(n, v)| Some((n?, v)))
                    .collect(),
                body: body.to_vec(),
            };
            let got = http::send(request, &opts)
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let mut response = ::http::Response::builder()
                .status(got.status)
                .body(())
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            *response.headers_mut() = got.headers;
            let (parts, ()) = response.into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(Bytes::from(got.body)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn cfg(domain: &str, email: &str, tos: bool, url: Option<&str>) -> AcmeConfig {
        AcmeConfig {
            domain_name: domain.into(),
            email: email.into(),
            directory_url: url.map(str::to_owned),
            tos_accepted: tos,
            ca_bundle: None,
        }
    }

    #[test]
    fn acme_settings_are_checked_with_the_reason() {
        assert_eq!(
            check(&cfg("bundles.example.org", "ops@example.org", true, None)),
            Ok(())
        );
        for (c, says) in [
            (
                cfg("b.example.org", "ops@example.org", false, None),
                "tos_accepted must be true",
            ),
            (
                cfg("127.0.0.1", "ops@example.org", true, None),
                "not a DNS name",
            ),
            (
                cfg("bad_name.org", "ops@example.org", true, None),
                "not a DNS name",
            ),
            (
                cfg("-x.org", "ops@example.org", true, None),
                "not a DNS name",
            ),
            (
                cfg("b.example.org", "ops", true, None),
                "not an e-mail address",
            ),
            (
                cfg("b.example.org", "a b@c", true, None),
                "not an e-mail address",
            ),
            (
                cfg(
                    "b.example.org",
                    "ops@example.org",
                    true,
                    Some("http://ca/dir"),
                ),
                "directory_url",
            ),
        ] {
            let e = check(&c).unwrap_err();
            assert!(e.contains(says), "{c:?}: {e}");
        }
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let cert = challenge_cert("bundles.example.org", &digest).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte SHA-256 digest.
        assert_eq!(ext.value[..2], [0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        let names: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["DNSName(bundles.example.org)"]);
    }
}
