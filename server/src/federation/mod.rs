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

pub mod acme;
pub mod client;
pub mod endpoint;
pub mod relationships;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tessera_core::{Bundle, SpiffeId, TrustDomain};

use crate::datastore::{Datastore, DatastoreError};

/// How a bundle endpoint proves who it is (SPIFFE Federation, section 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    /// The profile named `name` as configuration and the CLI write it.
    pub fn from_name(name: &str) -> Option<Profile> {
        match name {
            "https_spiffe" => Some(Profile::HttpsSpiffe),
            "https_web" => Some(Profile::HttpsWeb),
            _ => None,
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
    /// `https_web`: the certificate from an ACME CA instead of files.
    #[serde(default)]
    pub acme: Option<acme::AcmeConfig>,
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

impl RelationshipConfig {
    /// The relationship as the server runs it, with the `ca_bundle` file read.
    pub fn load(&self) -> Result<Relationship, String> {
        let ca_bundle_pem = match &self.ca_bundle {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "[[federation.federates_with]] {}: ca_bundle {}: {e}",
                        self.trust_domain,
                        path.display()
                    )
                })?;
                Some(pem)
            }
        };
        Ok(Relationship {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: self.bundle_endpoint_profile,
            endpoint_spiffe_id: self.endpoint_spiffe_id.clone(),
            ca_bundle_pem,
        })
    }
}

/// A federation relationship as the server runs it: from `[[federation.federates_with]]`
/// (with its `ca_bundle` file read at start), or created with `tessera-server
/// federation create` and kept in the datastore, where every server sharing it finds
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    pub trust_domain: TrustDomain,
    /// The other trust domain's bundle endpoint (`https://...`).
    pub bundle_endpoint_url: String,
    pub bundle_endpoint_profile: Profile,
    /// `https_spiffe`: the SPIFFE ID the endpoint must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// `https_web`: the roots (PEM) to check the endpoint's certificate with; the
    /// system's bundle when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
}

/// Where a relationship the server runs comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[[federation.federates_with]]` in the configuration file.
    Config,
    /// Created with the CLI (or the admin API) and kept in the datastore.
    Datastore,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Datastore => "datastore",
        }
    }
}

/// Checks one relationship against `own` (this server's trust domain): its URL, and
/// the settings its profile needs and refuses. `has_ca_bundle` says whether roots
/// for `https_web` were given. The error says what is wrong, without naming where
/// the relationship came from.
pub fn check_relationship(
    own: &TrustDomain,
    r: &Relationship,
    has_ca_bundle: bool,
) -> Result<(), String> {
    if &r.trust_domain == own {
        return Err("this is the server's own trust domain".into());
    }
    if let Err(e) = crate::https::check_url(&r.bundle_endpoint_url, false) {
        return Err(format!("bundle_endpoint_url {e}"));
    }
    match (
        r.bundle_endpoint_profile,
        &r.endpoint_spiffe_id,
        has_ca_bundle,
    ) {
        (Profile::HttpsSpiffe, Some(id), false) if id.path().is_empty() => Err(format!(
            "endpoint_spiffe_id {id} names a trust domain, not a server: no SVID \
             carries it (SPIRE's server is spiffe://<td>/spire/server)"
        )),
        (Profile::HttpsSpiffe, Some(_), false) | (Profile::HttpsWeb, None, _) => Ok(()),
        (Profile::HttpsSpiffe, None, _) => {
            Err("profile \"https_spiffe\" needs endpoint_spiffe_id".into())
        }
        (Profile::HttpsSpiffe, Some(_), true) => Err(
            "ca_bundle is for \"https_web\"; an \"https_spiffe\" endpoint is checked \
             against the bundle of its SPIFFE ID's trust domain"
                .into(),
        ),
        (Profile::HttpsWeb, Some(_), _) => Err(
            "endpoint_spiffe_id is for \"https_spiffe\"; an \"https_web\" endpoint \
             is checked by its host name"
                .into(),
        ),
    }
}

/// Checks `[federation]`; the error names the setting at fault.
pub fn check(own: &TrustDomain, f: &FederationConfig) -> Result<(), (&'static str, String)> {
    if let Some(e) = &f.bundle_endpoint {
        let key = "federation.bundle_endpoint";
        let fault = |m: &str| Err((key, format!("[federation.bundle_endpoint] {m}")));
        match (e.profile, &e.cert_file, &e.key_file, &e.acme) {
            (Profile::HttpsWeb, Some(_), Some(_), None)
            | (Profile::HttpsWeb, None, None, Some(_))
            | (Profile::HttpsSpiffe, None, None, None) => {}
            (Profile::HttpsWeb, _, _, Some(_)) => {
                return fault(
                    "profile \"https_web\" takes its certificate from [acme] or from \
                     cert_file and key_file, not both",
                );
            }
            (Profile::HttpsWeb, _, _, None) => {
                return fault(
                    "profile \"https_web\" needs cert_file and key_file, or an [acme] \
                     section",
                );
            }
            (Profile::HttpsSpiffe, _, _, _) => {
                return fault(
                    "profile \"https_spiffe\" serves the server's own SVID: cert_file, \
                     key_file and [acme] are for \"https_web\"",
                );
            }
        }
        if let Some(a) = &e.acme
            && let Err(m) = acme::check(a)
        {
            return Err((
                "federation.bundle_endpoint.acme",
                format!("[federation.bundle_endpoint.acme] {m}"),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for r in &f.federates_with {
        let td = &r.trust_domain;
        let fault = |message: String| {
            Err((
                "federation.federates_with",
                format!("[[federation.federates_with]] {td}: {message}"),
            ))
        };
        if !seen.insert(td.clone()) {
            return fault("given twice".into());
        }
        let rel = Relationship {
            trust_domain: td.clone(),
            bundle_endpoint_url: r.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: r.bundle_endpoint_profile,
            endpoint_spiffe_id: r.endpoint_spiffe_id.clone(),
            ca_bundle_pem: None,
        };
        if let Err(e) = check_relationship(own, &rel, r.ca_bundle.is_some()) {
            return fault(e);
        }
    }
    Ok(())
}

/// Reads the files `[federation]` names (the `ca_bundle` roots of `https_web`
/// relationships and of the ACME CA), so that a wrong path or a file without a certificate stops the
/// start (and `validate`) instead of failing every fetch; returns the configured
/// relationships as the server runs them. Kept apart from [`check`], which reads
/// nothing.
pub fn check_files(f: &FederationConfig) -> Result<Vec<Relationship>, (&'static str, String)> {
    if let Some(roots) = f
        .bundle_endpoint
        .as_ref()
        .and_then(|e| e.acme.as_ref())
        .and_then(|a| a.ca_bundle.as_ref())
    {
        let section = "[federation.bundle_endpoint.acme]";
        crate::https::tls_roots(section, "ca_bundle", Some(roots))
            .map_err(|e| ("federation.bundle_endpoint.acme", e))?;
    }
    let key = "federation.federates_with";
    f.federates_with
        .iter()
        .map(|r| {
            let rel = r.load().map_err(|e| (key, e))?;
            if let Some(pem) = &rel.ca_bundle_pem {
                let source = r
                    .ca_bundle
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string());
                crate::https::tls_roots_pem("ca_bundle", &source, pem.as_bytes()).map_err(|e| {
                    (
                        key,
                        format!("[[federation.federates_with]] {}: {e}", r.trust_domain),
                    )
                })?;
            }
            Ok(rel)
        })
        .collect()
}

/// Stores a federated bundle: its sequence goes up when its authorities change
/// (never down), and stays when they do not. Returns what was stored.
pub async fn store(ds: &dyn Datastore, mut b: Bundle) -> Result<Bundle, DatastoreError> {
    let previous = ds.get_bundle(b.trust_domain()).await?;
    set_sequence(previous.as_ref(), &mut b);
    ds.set_bundle(&b).await?;
    Ok(b)
}

/// Gives `b`, about to replace `previous`, its sequence: up by one when the
/// authorities change (never down), the same when they do not.
pub fn set_sequence(previous: Option<&Bundle>, b: &mut Bundle) {
    let seq = previous.map_or(1, |p| {
        if p.same_authorities(b) {
            p.sequence()
        } else {
            p.sequence().saturating_add(1)
        }
    });
    b.set_sequence(seq.max(b.sequence()));
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
                "needs cert_file and key_file, or an [acme] section",
            ),
            (
                "[bundle_endpoint]\naddress = \"0.0.0.0:1\"\ncert_file = \"c\"\nkey_file = \"k\"\n"
                    .to_owned(),
                "are for \"https_web\"",
            ),
            (
                "[bundle_endpoint]\naddress = \"0.0.0.0:1\"\nprofile = \"https_web\"\ncert_file = \"c\"\nkey_file = \"k\"\n[bundle_endpoint.acme]\ndomain_name = \"b.example.org\"\nemail = \"a@b\"\ntos_accepted = true\n"
                    .to_owned(),
                "not both",
            ),
            (
                "[bundle_endpoint]\naddress = \"0.0.0.0:1\"\nprofile = \"https_web\"\n[bundle_endpoint.acme]\ndomain_name = \"b.example.org\"\nemail = \"a@b\"\n"
                    .to_owned(),
                "[federation.bundle_endpoint.acme] tos_accepted must be true",
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
