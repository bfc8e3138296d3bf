//! Federation with other trust domains, as the SPIFFE Federation standard describes
//! it and SPIRE runs it. Two halves, each optional:
//!
//! - the **bundle endpoint** ([`endpoint`], `[federation.bundle_endpoint]`): this
//!   trust domain's bundle, served over HTTPS for other trust domains to fetch;
//!   profile `https_spiffe` (the server's own X509-SVID, `spiffe://<td>/spire/server`)
//!   or `https_web` (a certificate from files, checked by name);
//! - **relationships** ([`client`], `[[federation.federates_with]]`): another trust
//!   domain's bundle fetched from its endpoint, at the refresh hint it publishes, and
//!   stored as a federated bundle, which agents hand to the workloads whose entries
//!   federate with that trust domain.
//!
//! Relationships are one way: each side configures its own. For `https_spiffe`, the
//! first fetch needs the other trust domain's bundle already stored (`tessera-server
//! bundle set`, from the other side's `bundle show`); later fetches trust the bundle
//! the last fetch brought.

pub mod client;
pub mod endpoint;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tessera_core::{Bundle, SpiffeId, TrustDomain};

use crate::datastore::{Datastore, DatastoreError};

/// How a bundle endpoint proves who it is (SPIFFE Federation, section 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The endpoint presents an X509-SVID with a configured SPIFFE ID.
    #[default]
    HttpsSpiffe,
    /// The endpoint presents a Web PKI certificate for the URL's host.
    HttpsWeb,
}

impl Profile {
    /// The name in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Profile::HttpsSpiffe => "https_spiffe",
            Profile::HttpsWeb => "https_web",
        }
    }
}

/// `[federation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// This trust domain's bundle endpoint; off when absent.
    #[serde(default)]
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// The trust domains whose bundles this server fetches.
    #[serde(default)]
    pub federates_with: Vec<RelationshipConfig>,
}

/// `[federation.bundle_endpoint]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointConfig {
    /// Where it listens.
    pub address: SocketAddr,
    /// `https_spiffe` (the default) or `https_web`.
    #[serde(default)]
    pub profile: Profile,
    /// `https_web`: the serving certificate chain (PEM), read at start.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// `https_web`: its private key (PEM), read at start.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// One `[[federation.federates_with]]`: a trust domain and where its bundle is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipConfig {
    /// The other trust domain.
    pub trust_domain: TrustDomain,
    /// Its bundle endpoint (`https://...`).
    pub bundle_endpoint_url: String,
    /// How the endpoint proves who it is.
    pub bundle_endpoint_profile: Profile,
    /// `https_spiffe`: the SPIFFE ID the endpoint must present.
    #[serde(default)]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// `https_web`: the roots to check the endpoint's certificate with (PEM); the
    /// system's bundle when absent.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

/// Checks `[federation]`; the error names the setting at fault.
pub fn check(own: &TrustDomain, f: &FederationConfig) -> Result<(), (&'static str, String)> {
    if let Some(e) = &f.bundle_endpoint {
        let key = "federation.bundle_endpoint";
        match (e.profile, &e.cert_file, &e.key_file) {
            (Profile::HttpsWeb, Some(_), Some(_)) | (Profile::HttpsSpiffe, None, None) => {}
            (Profile::HttpsWeb, _, _) => {
                return Err((
                    key,
                    "[federation.bundle_endpoint] profile \"https_web\" needs cert_file and \
                     key_file"
                        .into(),
                ));
            }
            (Profile::HttpsSpiffe, _, _) => {
                return Err((
                    key,
                    "[federation.bundle_endpoint] profile \"https_spiffe\" serves the \
                     server's own SVID: cert_file and key_file are for \"https_web\""
                        .into(),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for r in &f.federates_with {
        let key = "federation.federates_with";
        let td = &r.trust_domain;
        let fault = |message: String| {
            Err((
                key,
                format!("[[federation.federates_with]] {td}: {message}"),
            ))
        };
        if td == own {
            return fault("this is the server's own trust domain".into());
        }
        if !seen.insert(td.clone()) {
            return fault("given twice".into());
        }
        if let Err(e) = crate::https::check_url(&r.bundle_endpoint_url, false) {
            return fault(format!("bundle_endpoint_url {e}"));
        }
        match (
            r.bundle_endpoint_profile,
            &r.endpoint_spiffe_id,
            &r.ca_bundle,
        ) {
            (Profile::HttpsSpiffe, Some(id), None) if id.path().is_empty() => {
                return fault(format!(
                    "endpoint_spiffe_id {id} names a trust domain, not a server: no SVID \
                     carries it (SPIRE's server is spiffe://<td>/spire/server)"
                ));
            }
            (Profile::HttpsSpiffe, Some(_), None) | (Profile::HttpsWeb, None, _) => {}
            (Profile::HttpsSpiffe, None, _) => {
                return fault("profile \"https_spiffe\" needs endpoint_spiffe_id".into());
            }
            (Profile::HttpsSpiffe, Some(_), Some(_)) => {
                return fault(
                    "ca_bundle is for \"https_web\"; an \"https_spiffe\" endpoint is checked \
                     against the bundle of its SPIFFE ID's trust domain"
                        .into(),
                );
            }
            (Profile::HttpsWeb, Some(_), _) => {
                return fault(
                    "endpoint_spiffe_id is for \"https_spiffe\"; an \"https_web\" endpoint \
                     is checked by its host name"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

/// Reads the files `[federation]` names (the `ca_bundle` roots of `https_web`
/// relationships), so that a wrong path stops the start (and `validate`) instead of
/// failing every fetch. Kept apart from [`check`], which reads nothing.
pub fn check_files(f: &FederationConfig) -> Result<(), (&'static str, String)> {
    for r in &f.federates_with {
        if let Some(roots) = &r.ca_bundle {
            crate::https::tls_roots("ca_bundle", "ca_bundle", Some(roots)).map_err(|e| {
                (
                    "federation.federates_with",
                    format!("[[federation.federates_with]] {}: {e}", r.trust_domain),
                )
            })?;
        }
    }
    Ok(())
}

/// Stores a federated bundle: its sequence goes up when its authorities change
/// (never down), and stays when they do not. Returns what was stored.
pub async fn store(ds: &dyn Datastore, mut b: Bundle) -> Result<Bundle, DatastoreError> {
    let previous = ds.get_bundle(b.trust_domain()).await?;
    let seq = previous.map_or(1, |p| {
        if p.same_authorities(&b) {
            p.sequence()
        } else {
            p.sequence().saturating_add(1)
        }
    });
    b.set_sequence(seq.max(b.sequence()));
    ds.set_bundle(&b).await?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn parse(text: &str) -> FederationConfig {
        toml::from_str(text).unwrap()
    }

    fn own() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn good_relationships_and_endpoints_pass() {
        let f = parse(
            r#"
            [bundle_endpoint]
            address = "0.0.0.0:8443"
            [[federates_with]]
            trust_domain = "spire.test"
            bundle_endpoint_url = "https://spire.test:8443"
            bundle_endpoint_profile = "https_spiffe"
            endpoint_spiffe_id = "spiffe://spire.test/spire/server"
            [[federates_with]]
            trust_domain = "web.test"
            bundle_endpoint_url = "https://bundles.web.test/td"
            bundle_endpoint_profile = "https_web"
            "#,
        );
        assert_eq!(check(&own(), &f), Ok(()));
        assert_eq!(f.bundle_endpoint.unwrap().profile, Profile::HttpsSpiffe);
    }

    #[test]
    fn broken_relationships_and_endpoints_are_refused_with_the_reason() {
        let rel = |body: &str| {
            format!(
                "[[federates_with]]\ntrust_domain = \"spire.test\"\n\
                 bundle_endpoint_url = \"https://spire.test\"\n{body}"
            )
        };
        let cases = [
            (
                "[bundle_endpoint]\naddress = \"0.0.0.0:1\"\nprofile = \"https_web\"\n".to_owned(),
                "needs cert_file and key_file",
            ),
            (
                "[bundle_endpoint]\naddress = \"0.0.0.0:1\"\ncert_file = \"c\"\nkey_file = \"k\"\n"
                    .to_owned(),
                "are for \"https_web\"",
            ),
            (
                rel("bundle_endpoint_profile = \"https_spiffe\"\n"),
                "needs endpoint_spiffe_id",
            ),
            (
                rel("bundle_endpoint_profile = \"https_web\"\nendpoint_spiffe_id = \"spiffe://spire.test/x\"\n"),
                "endpoint_spiffe_id is for \"https_spiffe\"",
            ),
            (
                rel("bundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://spire.test/x\"\nca_bundle = \"r.pem\"\n"),
                "ca_bundle is for \"https_web\"",
            ),
            (
                "[[federates_with]]\ntrust_domain = \"example.org\"\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile = \"https_web\"\n".to_owned(),
                "own trust domain",
            ),
            (
                rel("bundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://spire.test\"\n"),
                "names a trust domain, not a server",
            ),
            (
                "[[federates_with]]\ntrust_domain = \"a.test\"\nbundle_endpoint_url = \"https://x:99999\"\nbundle_endpoint_profile = \"https_web\"\n".to_owned(),
                "no valid port",
            ),
            (
                "[[federates_with]]\ntrust_domain = \"a.test\"\nbundle_endpoint_url = \"http://x\"\nbundle_endpoint_profile = \"https_web\"\n".to_owned(),
                "must be https",
            ),
            (
                format!(
                    "{}{}",
                    rel("bundle_endpoint_profile = \"https_web\"\n"),
                    rel("bundle_endpoint_profile = \"https_web\"\n")
                ),
                "given twice",
            ),
        ];
        for (text, says) in cases {
            let (_, e) = check(&own(), &parse(&text)).unwrap_err();
            assert!(e.contains(says), "{text}\n{e}");
        }
        let unreadable = parse(&rel(
            "bundle_endpoint_profile = \"https_web\"\nca_bundle = \"/nonexistent/roots.pem\"\n",
        ));
        assert_eq!(check(&own(), &unreadable), Ok(()), "check reads no file");
        let (_, e) = check_files(&unreadable).unwrap_err();
        assert!(e.contains("/nonexistent/roots.pem"), "{e}");
        assert!(
            toml::from_str::<FederationConfig>(
                "[[federates_with]]\ntrust_domain = \"a.test\"\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile = \"ftp\"\n"
            )
            .is_err()
        );
    }
}
