//! The bundle endpoint: `GET /` answers this trust domain's bundle as a SPIFFE JWK
//! Set (`spiffe_sequence`, `spiffe_refresh_hint`), as `application/json`, read from
//! the CA at each request so that a rotation is served at once. No client
//! authentication (the standard forbids requiring it). `https_spiffe` presents the
//! server's own X509-SVID, the one agents see, renewed with it; `https_web` a
//! certificate from files. The listener is the small HTTP/1.1 one the health
//! endpoints use.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode, header};
use tessera_core::Bundle;
use tessera_core::tls::SharedIdentity;
use tessera_telemetry::http::{Handler, Reply, reply};
use tokio::sync::watch;

use super::{BundleEndpointConfig, Profile};

/// Why the bundle endpoint cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The `https_web` certificate or key cannot be read or used.
    #[error("{0}")]
    Tls(#[source] crate::https::CertFileError),
    /// The address cannot be listened on.
    #[error("{0}")]
    Listen(#[source] std::io::Error),
}

/// Answers one request for `bundle`.
pub fn answer(method: &Method, path: &str, bundle: &Bundle) -> Reply {
    if path != "/" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    reply(StatusCode::OK, "application/json", bundle.to_jwks())
}

/// TLS presenting `identity` (the server's SVID), TLS 1.2 and 1.3, HTTP/1.1.
fn spiffe_acceptor(identity: Arc<SharedIdentity>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("the ring provider supports TLS 1.2 and 1.3"))
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Binds the endpoint `cfg` asks for and serves the latest bundle `bundles` holds
/// until `shutdown` turns true. Returns the bound address.
pub async fn start(
    cfg: &BundleEndpointConfig,
    identity: Arc<SharedIdentity>,
    bundles: watch::Receiver<Arc<Bundle>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, EndpointError> {
    let tls = match (cfg.profile, &cfg.cert_file, &cfg.key_file) {
        (Profile::HttpsWeb, Some(cert), Some(key)) => {
            crate::https::acceptor_from_files(cert, key, "[federation.bundle_endpoint]")
                .map_err(EndpointError::Tls)?
        }
        _ => spiffe_acceptor(identity),
    };
    let listener =
        tessera_telemetry::http::bind(cfg.address, "[federation.bundle_endpoint] address")
            .await
            .map_err(EndpointError::Listen)?;
    let at = listener.local_addr().map_err(EndpointError::Listen)?;
    tracing::info!(address = %at, profile = cfg.profile.name(), "bundle endpoint up");
    let handler: Handler = Arc::new(move |req| {
        let bundle = bundles.borrow().clone();
        Box::pin(async move { answer(req.method(), req.uri().path(), &bundle) })
    });
    tokio::spawn(tessera_telemetry::http::serve_with(
        listener,
        Some(tls),
        handler,
        "bundle endpoint",
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
    use http_body_util::BodyExt;
    use tessera_core::TrustDomain;

    #[tokio::test]
    async fn serves_the_bundle_at_the_root_only() {
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.set_sequence(4);
        b.set_refresh_hint(300);
        let r = answer(&Method::GET, "/", &b);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["spiffe_sequence"], 4);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        assert!(v["keys"].is_array());
        assert_eq!(answer(&Method::HEAD, "/", &b).status(), StatusCode::OK);
        let r = answer(&Method::POST, "/", &b);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            answer(&Method::GET, "/bundle", &b).status(),
            StatusCode::NOT_FOUND
        );
    }
}
