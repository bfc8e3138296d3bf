//! OpenID Connect discovery for JWT-SVIDs, as SPIRE's OIDC discovery provider
//! serves it: a relying party that knows only the issuer URL (a cloud provider's
//! workload identity federation, any OIDC library) finds
//! `<issuer>/.well-known/openid-configuration`, follows its `jwks_uri` to the
//! server's JWT keys, and verifies JWT-SVIDs whose `iss` claim is that issuer.
//!
//! Configured by `jwt_issuer` (the `iss` claim every JWT-SVID carries, and the
//! discovery document's `issuer`: the two must be one URL) and `[oidc_discovery]`
//! (the listener). The keys are the trust domain's current JWT authorities, read
//! from the CA's bundle at each request, so a rotation is served at once. The
//! listener is the small HTTP/1.1 one the health endpoints use, over TLS with the
//! configured certificate, or plain HTTP with `insecure = true` (behind a proxy
//! that terminates TLS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, StatusCode, header};
use serde::Deserialize;
use tessera_core::Bundle;
use tessera_telemetry::http::{Reply, json, reply};
use tokio::sync::watch;

/// `[oidc_discovery]`: where the discovery document and the keys are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The listener's address.
    pub address: SocketAddr,
    /// The `jwks_uri` the document names, when the keys are reached at another URL
    /// than `<jwt_issuer>/keys` (a CDN, a proxy); they are served at
    /// `<issuer path>/keys` either way.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The serving certificate chain (PEM), read at start.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM), read at start.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Serve plain HTTP (for a proxy in front that terminates TLS).
    #[serde(default)]
    pub insecure: bool,
}

/// The algorithms JWT-SVIDs are signed with (`jwt_key_type`: P-256, P-384, RSA).
const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "ES384"];

/// Checks `jwt_issuer` and `[oidc_discovery]` together; the error names the
/// setting at fault.
pub fn check(
    jwt_issuer: Option<&str>,
    discovery: Option<&OidcConfig>,
) -> Result<(), (&'static str, String)> {
    let insecure = discovery.is_some_and(|d| d.insecure);
    if let Some(iss) = jwt_issuer {
        crate::https::check_url(iss, insecure).map_err(|e| {
            (
                "jwt_issuer",
                format!(
                    "jwt_issuer {e} (relying parties fetch keys from it; plain http only \
                     with [oidc_discovery] insecure = true, behind a proxy that serves https)"
                ),
            )
        })?;
    }
    let Some(d) = discovery else {
        return Ok(());
    };
    if jwt_issuer.is_none() {
        return Err((
            "oidc_discovery",
            "[oidc_discovery] needs jwt_issuer: relying parties compare the document's \
             issuer with the iss claim of each JWT-SVID, and only jwt_issuer puts it there"
                .into(),
        ));
    }
    if let Some(uri) = &d.jwks_uri {
        crate::https::check_url(uri, insecure).map_err(|e| {
            (
                "oidc_discovery.jwks_uri",
                format!("[oidc_discovery] jwks_uri {e}"),
            )
        })?;
    }
    match (&d.cert_file, &d.key_file, d.insecure) {
        (Some(_), Some(_), false) | (None, None, true) => Ok(()),
        (Some(_), Some(_), true) => Err((
            "oidc_discovery.insecure",
            "[oidc_discovery] sets cert_file and key_file and insecure = true; serve \
             https (drop insecure) or plain http (drop the certificate)"
                .into(),
        )),
        (Some(_), None, _) | (None, Some(_), _) => Err((
            "oidc_discovery",
            "[oidc_discovery] needs both cert_file and key_file".into(),
        )),
        (None, None, false) => Err((
            "oidc_discovery",
            "[oidc_discovery] needs cert_file and key_file to serve https, or insecure = \
             true to serve plain http behind a proxy that terminates TLS"
                .into(),
        )),
    }
}

/// What the listener answers with, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// `/.well-known/openid-configuration` under the issuer's path.
    pub discovery_path: String,
    /// `/keys` under the issuer's path.
    pub keys_path: String,
    /// The discovery document.
    pub discovery: String,
}

impl Documents {
    /// The paths and the discovery document for `issuer` (checked by [`check`]).
    pub fn new(issuer: &str, jwks_uri: Option<&str>) -> Self {
        let base = issuer.trim_end_matches('/');
        let prefix = base
            .parse::<http::Uri>()
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let jwks_uri = jwks_uri.map_or_else(|| format!("{base}/keys"), str::to_owned);
        let discovery = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ALGORITHMS,
        });
        Self {
            discovery_path: format!("{prefix}/.well-known/openid-configuration"),
            keys_path: format!("{prefix}/keys"),
            discovery: format!("{discovery}\n"),
        }
    }

    /// Answers one request: the document, the keys of `bundle`, or why not.
    pub fn answer(&self, method: &Method, path: &str, bundle: &Bundle) -> Reply {
        let known = path == self.discovery_path || path == self.keys_path;
        if let Some(refused) = crate::https::refuse(method, known) {
            return refused;
        }
        let mut r = if path == self.discovery_path {
            reply(StatusCode::OK, "application/json", self.discovery.clone())
        } else if bundle.jwt_authorities().is_empty() {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "the trust domain has no JWT keys yet" }),
            )
        } else {
            let mut r = reply(
                StatusCode::OK,
                "application/json",
                format!("{}\n", bundle.to_oidc_jwks()),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache, no-store, must-revalidate"),
            );
            r
        };
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
        r
    }
}

/// Binds the listener `d` asks for and serves the documents for `issuer`, with the
/// keys of the latest bundle `bundles` holds, until `shutdown` turns true. Returns
/// the bound address.
pub async fn start(
    issuer: &str,
    d: &OidcConfig,
    bundles: watch::Receiver<Arc<Bundle>>,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, crate::https::ListenerError> {
    let tls = match (&d.cert_file, &d.key_file) {
        (Some(cert), Some(key)) => Some(
            crate::https::acceptor_from_files(cert, key, "[oidc_discovery]")
                .map_err(crate::https::ListenerError::Tls)?,
        ),
        _ => None,
    };
    let documents = Documents::new(issuer, d.jwks_uri.as_deref());
    let discovery_path = documents.discovery_path.clone();
    let secure = tls.is_some();
    let at = crate::https::serve_bundle(
        d.address,
        "[oidc_discovery] address",
        "OIDC discovery",
        tls,
        bundles,
        shutdown,
        move |method, path, bundle| documents.answer(method, path, bundle),
    )
    .await
    .map_err(crate::https::ListenerError::Listen)?;
    tracing::info!(
        address = %at,
        issuer,
        tls = secure,
        discovery = %discovery_path,
        "OIDC discovery listener up"
    );
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
    use tessera_core::bundle::JwtAuthority;
    use tessera_core::key::{Key, KeyType, SoftwareKey};

    fn config(cert: bool, insecure: bool) -> OidcConfig {
        OidcConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            jwks_uri: None,
            cert_file: cert.then(|| "c.pem".into()),
            key_file: cert.then(|| "k.pem".into()),
            insecure,
        }
    }

    #[test]
    fn discovery_needs_an_issuer_and_one_way_to_serve() {
        let iss = Some("https://oidc.example.org");
        assert_eq!(check(iss, None), Ok(()));
        assert_eq!(check(None, None), Ok(()));
        assert_eq!(check(iss, Some(&config(true, false))), Ok(()));
        assert_eq!(
            check(Some("http://127.0.0.1:1"), Some(&config(false, true))),
            Ok(())
        );
        let cases = [
            (
                None,
                config(true, false),
                "oidc_discovery",
                "needs jwt_issuer",
            ),
            (
                iss,
                config(false, false),
                "oidc_discovery",
                "or insecure = true",
            ),
            (
                iss,
                config(true, true),
                "oidc_discovery.insecure",
                "drop insecure",
            ),
            (
                Some("http://oidc.example.org"),
                config(true, false),
                "jwt_issuer",
                "must be https",
            ),
        ];
        for (issuer, d, key, says) in cases {
            let (k, e) = check(issuer, Some(&d)).unwrap_err();
            assert_eq!(k, key, "{e}");
            assert!(e.contains(says), "{e}");
        }
        let mut half = config(true, false);
        half.key_file = None;
        assert!(
            check(iss, Some(&half))
                .unwrap_err()
                .1
                .contains("both cert_file and key_file")
        );
        let mut bad_uri = config(true, false);
        bad_uri.jwks_uri = Some("https://keys.example.org/?v=1".into());
        assert_eq!(
            check(iss, Some(&bad_uri)).unwrap_err().0,
            "oidc_discovery.jwks_uri"
        );
    }

    async fn body(r: Reply) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn serves_the_document_and_the_current_keys_under_the_issuer_path() {
        let d = Documents::new("https://oidc.example.org/td/", None);
        assert_eq!(d.discovery_path, "/td/.well-known/openid-configuration");
        assert_eq!(d.keys_path, "/td/keys");
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        let r = d.answer(&Method::GET, "/td/keys", &b);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "no keys yet");

        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        b.set_jwt_authorities(vec![JwtAuthority {
            key_id: "k1".into(),
            public_key_der: key.public_key_der().to_vec(),
            expires_at: 0,
        }]);
        let r = d.answer(&Method::GET, "/td/.well-known/openid-configuration", &b);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let doc = body(r).await;
        assert_eq!(doc["issuer"], "https://oidc.example.org/td/");
        assert_eq!(doc["jwks_uri"], "https://oidc.example.org/td/keys");
        assert_eq!(doc["response_types_supported"][0], "id_token");

        let r = d.answer(&Method::GET, "/td/keys", &b);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        let keys = body(r).await;
        assert_eq!(keys["keys"][0]["kid"], "k1");
        assert_eq!(keys["keys"][0]["alg"], "ES256");

        let r = d.answer(&Method::POST, "/td/keys", &b);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        for other in [
            "/keys",
            "/.well-known/openid-configuration",
            "/td",
            "/td/keys/x",
        ] {
            assert_eq!(
                d.answer(&Method::GET, other, &b).status(),
                StatusCode::NOT_FOUND,
                "{other}"
            );
        }
        let elsewhere = Documents::new(
            "https://oidc.example.org",
            Some("https://cdn.example.org/jwks.json"),
        );
        assert_eq!(elsewhere.keys_path, "/keys");
        assert!(
            elsewhere
                .discovery
                .contains("https://cdn.example.org/jwks.json")
        );
    }
}
