//! The bundle endpoint: `GET /` answers this trust domain's bundle as a SPIFFE JWK
//! Set (`spiffe_sequence`, `spiffe_refresh_hint`), as `application/json`, read from
//! the CA at each request so that a rotation is served at once. No client
//! authentication (the standard forbids requiring it). `https_spiffe` presents the
//! server's own X509-SVID, the one agents see, renewed with it; `https_web` a
//! certificate from files or from an ACME CA ([`super::acme`]). The listener is the small HTTP/1.1 one the health
//! endpoints use.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use tessera_core::Bundle;
use tessera_core::tls::SharedIdentity;
use tessera_telemetry::http::{Reply, reply};
use tokio::sync::watch;

use super::{BundleEndpointConfig, Profile};

/// Answers one request for `bundle`.
pub fn answer(method: &Method, path: &str, bundle: &Bundle) -> Reply {
    if let Some(refused) = crate::https::refuse(method, path == "/") {
        return refused;
    }
    reply(StatusCode::OK, "application/json", bundle.to_jwks())
}

/// Binds the endpoint `cfg` asks for and serves the latest bundle `bundles` holds
/// until `shutdown` turns true. Returns the bound address.
pub async fn start(
    cfg: &BundleEndpointConfig,
    identity: Arc<SharedIdentity>,
    data_dir: &std::path::Path,
    bundles: watch::Receiver<Arc<Bundle>>,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, crate::https::ListenerError> {
    let tls = match (cfg.profile, &cfg.cert_file, &cfg.key_file, &cfg.acme) {
        (Profile::HttpsWeb, Some(cert), Some(key), _) => {
            crate::https::acceptor_from_files(cert, key, "[federation.bundle_endpoint]")
                .map_err(crate::https::ListenerError::Tls)?
        }
        (Profile::HttpsWeb, _, _, Some(acme)) => {
            let certs = Arc::new(super::acme::AcmeCerts::default());
            super::acme::spawn(acme.clone(), data_dir, certs.clone(), shutdown.clone());
            super::acme::acceptor(certs)
        }
        // The server's SVID, HTTP/1.1.
        _ => crate::https::acceptor_with(identity, &[b"http/1.1"]),
    };
    let at = crate::https::serve_bundle(
        cfg.address,
        "[federation.bundle_endpoint] address",
        "bundle endpoint",
        Some(tls),
        bundles,
        shutdown,
        answer,
    )
    .await
    .map_err(crate::https::ListenerError::Listen)?;
    tracing::info!(address = %at, profile = cfg.profile.name(), "bundle endpoint up");
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
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], "application/json");
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
