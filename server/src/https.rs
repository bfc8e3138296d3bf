//! What the server's own HTTPS listeners and clients share (OIDC discovery, the
//! federation bundle endpoint and its client, the attestors' key-set fetches and
//! Kubernetes API calls): the
//! rules for the URLs they are given, a TLS acceptor from certificate and key
//! files, and the system's roots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_core::Bundle;
use tessera_telemetry::http::{Handler, Reply};
use tokio::sync::watch;

/// Checks an issuer or key-set URL: `https` (or `http` when `insecure`), a host, no
/// user name, query or fragment (OpenID Connect Discovery 1.0, §3).
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    if url.contains('#') {
        return Err(format!("{url:?} has a fragment"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err(format!("{url:?} is http: it must be https"));
        }
        _ => return Err(format!("{url:?} is not an https URL")),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?} has a user name"));
    }
    // The URI parser keeps any text after the host's colon as the port; a client
    // would then fall back to the scheme's port without a word.
    let after_host = &authority.as_str()[authority.as_str().rfind(']').unwrap_or(0)..];
    if after_host.contains(':') && authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("{url:?} has no valid port after the host's colon"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} has a query"));
    }
    Ok(())
}

/// Why a serving certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{section} {what} {}: {reason}", path.display())]
pub struct CertFileError {
    /// The configuration section, e.g. `[oidc_discovery]`.
    pub section: &'static str,
    /// `cert_file` or `key_file`.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Why one of the server's HTTPS listeners (OIDC discovery, the bundle endpoint)
/// cannot start; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The serving certificate or key cannot be read or used.
    #[error("{0}")]
    Tls(#[from] CertFileError),
    /// The address cannot be listened on.
    #[error("{0}")]
    Listen(#[from] std::io::Error),
}

/// A TLS acceptor serving the chain in `cert` (PEM) with the key in `key` (PEM),
/// TLS 1.2 and 1.3, HTTP/1.1. `section` names the configuration in errors.
pub fn acceptor_from_files(
    cert: &Path,
    key: &Path,
    section: &'static str,
) -> Result<tokio_rustls::TlsAcceptor, CertFileError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let fault = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |reason: String| CertFileError {
            section,
            what,
            path,
            reason,
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| e.to_string())
        .and_then(|c: Vec<_>| {
            if c.is_empty() {
                Err("no CERTIFICATE in it".to_owned())
            } else {
                Ok(c)
            }
        })
        .map_err(fault("cert_file", cert))?;
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| fault("key_file", key)(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
    .map_err(|e| fault("key_file", key)(format!("does not go with cert_file: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The well-known places of the system's CA bundle, tried in order when a key set
/// URL is given without a CA bundle of its own.
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A TLS server (TLS 1.2 and 1.3, no client authentication) presenting what
/// `certs` picks, offering `alpn`.
pub fn acceptor_with(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// TLS client settings with the roots in `ca_bundle`, or in the system's bundle.
/// `setting` names the configuration in errors, `ca_setting` the setting that gives
/// the bundle.
pub fn tls_roots(
    setting: &str,
    ca_setting: &str,
    ca_bundle: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let path = match ca_bundle {
        Some(p) => p.to_owned(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "{setting}: no system CA bundle found ({}); set {ca_setting}",
                    SYSTEM_CA_BUNDLES.join(", ")
                )
            })?,
    };
    let pem = std::fs::read(&path).map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
    tls_roots_pem(setting, &path.display().to_string(), &pem)
}

/// TLS client settings with the roots in `pem`; `source` names where they came from
/// (a file, a setting) in errors.
pub fn tls_roots_pem(
    setting: &str,
    source: &str,
    pem: &[u8],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = client_builder(setting, source, pem)?;
    Ok(Arc::new(builder.with_no_client_auth()))
}

/// TLS client settings with the roots in the PEM file `ca_file` that present the
/// client certificate chain in `cert_file` with the key in `key_file` (PEM, PKCS#8,
/// SEC1 or PKCS#1). `setting` names the configuration in errors.
pub fn tls_client_certificate(
    setting: &str,
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("{setting}: {}: {e}", ca_file.display()))?;
    let builder = client_builder(setting, &ca_file.display().to_string(), &pem)?;
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{setting}: {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting}: {} holds no certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{setting}: {}: {e}", key_file.display()))?;
    let config = builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("{setting}: the client certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

fn client_builder(
    setting: &str,
    source: &str,
    pem: &[u8],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let ders =
        tessera_core::x509::pem_certs(pem).map_err(|e| format!("{setting}: {source}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(
        ders.into_iter()
            .map(rustls::pki_types::CertificateDer::from),
    );
    if added == 0 {
        return Err(format!(
            "{setting}: {source} holds no usable CA certificate"
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("{setting}: {e}"))?
    .with_root_certificates(roots);
    Ok(config)
}

/// The answer to a request the read-only listeners do not serve: 404 for a path
/// that is not `known`, 405 (with `Allow`) for a method other than GET or HEAD;
/// `None` for a request to serve.
pub fn refuse(method: &http::Method, known: bool) -> Option<Reply> {
    use http::{StatusCode, header};
    use tessera_telemetry::http::reply;
    if !known {
        return Some(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".into(),
        ));
    }
    if method != http::Method::GET && method != http::Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    None
}

/// Binds `address` (`setting` names it in errors) and answers each request with
/// `answer` on the latest bundle `bundles` holds, over `tls` when given, until
/// `shutdown` turns true; `what` names the listener in log lines. Returns the
/// bound address. The OIDC discovery listener and the bundle endpoint are this.
pub async fn serve_bundle<F>(
    address: SocketAddr,
    setting: &str,
    what: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bundles: watch::Receiver<Arc<Bundle>>,
    mut shutdown: watch::Receiver<bool>,
    answer: F,
) -> Result<SocketAddr, std::io::Error>
where
    F: Fn(&http::Method, &str, &Bundle) -> Reply + Send + Sync + 'static,
{
    let listener = tessera_telemetry::http::bind(address, setting).await?;
    let at = listener.local_addr()?;
    let answer = Arc::new(answer);
    let handler: Handler = Arc::new(move |req| {
        let bundle = bundles.borrow().clone();
        let answer = answer.clone();
        Box::pin(async move { answer(req.method(), req.uri().path(), &bundle) })
    });
    tokio::spawn(tessera_telemetry::http::serve_with(
        listener,
        tls,
        handler,
        what,
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        },
    ));
    Ok(at)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn issuers_are_https_urls_without_query_fragment_or_user() {
        for good in [
            "https://oidc.example.org",
            "https://oidc.example.org/tessera",
            "https://oidc.example.org:8443/",
            "https://[::1]:8443/keys",
            "https://[::1]/keys",
        ] {
            assert_eq!(crate::https::check_url(good, false), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("http://oidc.example.org", "must be https"),
            ("https://oidc.example.org:99999", "no valid port"),
            ("https://oidc.example.org:84x3/", "no valid port"),
            ("https://oidc.example.org:0", "no valid port"),
            ("https://oidc.example.org:/", "no valid port"),
            ("ftp://oidc.example.org", "not an https URL"),
            ("https://oidc.example.org/?a=b", "has a query"),
            ("https://oidc.example.org/#x", "has a fragment"),
            ("https://me@oidc.example.org", "has a user name"),
            ("oidc.example.org", "not an https URL"),
            ("https:// bad", "not a URL"),
        ] {
            let e = crate::https::check_url(bad, false).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            crate::https::check_url("http://127.0.0.1:8080", true),
            Ok(())
        );
    }

    #[test]
    fn unusable_certificate_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let Err(e) = acceptor_from_files(&empty, &empty, "[x]") else {
            panic!("an empty certificate file was accepted");
        };
        assert_eq!(e.what, "cert_file", "{e}");
        assert!(e.to_string().starts_with("[x] cert_file "), "{e}");
        let Err(e) = acceptor_from_files(&dir.path().join("missing"), &empty, "[x]") else {
            panic!("a missing certificate file was accepted");
        };
        assert_eq!(e.what, "cert_file", "{e}");
    }
}
