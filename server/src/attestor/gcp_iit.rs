//! Google Compute Engine instance identity attestation (`gcp_iit`), server side.
//! The agent sends the `full`-format identity token the metadata server issued for
//! the configured audience; the server checks it against Google's published keys
//! (a JWK Set from a URL, cached and refreshed, or from a file), its audience, issuer
//! and expiry, and that the project is allowed. The agent ID is
//! `gcp_iit/<project ID>/<instance ID>` and the selectors are SPIRE's (`project-id`,
//! `zone`, `instance-name`, `sa`); an instance attests once unless re-attestation is
//! allowed, so a copied token cannot attest a second node.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tessera_core::clock::SharedClock;
use tessera_core::duration::serde_human;

use super::jwt::{self, Keys};
use super::one_shot::{Check, OneShot, selector};
use super::template::PathTemplate;
use super::{AttestError, Attested};

pub use tessera_core::attestation::gcp_iit::{DEFAULT_AUDIENCE, NAME};

/// Google's key set (the `jwks_uri` of its OpenID configuration).
pub const DEFAULT_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Who signs instance identity tokens.
pub const ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];

/// The default agent path, as SPIRE's.
pub const DEFAULT_TEMPLATE: &str = "/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}";

/// The fields `agent_path_template` may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "PluginName",
    "ProjectID",
    "ProjectNumber",
    "Zone",
    "InstanceID",
    "InstanceName",
    "InstanceCreationTimestamp",
    "ServiceAccount",
];

fn default_audience() -> String {
    DEFAULT_AUDIENCE.into()
}

fn default_refresh() -> Duration {
    jwt::DEFAULT_REFRESH
}

/// `[node_attestors.gcp_iit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpIitConfig {
    /// The projects whose instances may attest (required, not empty).
    pub projectid_allow_list: Vec<String>,
    /// The audience the agents ask their tokens for.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Let an instance attest again (off: one attestation per instance, as SPIRE).
    #[serde(default)]
    pub allow_reattestation: bool,
    /// The agent ID path (default `/{{ .PluginName }}/{{ .ProjectID }}/{{ .InstanceID }}`).
    #[serde(default)]
    pub agent_path_template: Option<String>,
    /// Google's key set (default: its public URL).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The key set in a file instead (read again when it changes).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for `jwks_url` (default: the system's).
    #[serde(default)]
    pub jwks_ca_bundle: Option<PathBuf>,
    /// How often the key set is fetched again.
    #[serde(default = "default_refresh", with = "serde_human")]
    pub jwks_refresh: Duration,
}

/// The check behind the `gcp_iit` attestor.
#[derive(Debug)]
pub struct GcpIitCheck {
    projects: Vec<String>,
    audience: Vec<String>,
    reattest: bool,
    template: PathTemplate,
    keys: Keys,
    clock: SharedClock,
}

/// See the module documentation.
pub type GcpIit = OneShot<GcpIitCheck>;

impl GcpIit {
    /// Checks the settings; a bad one is a start-up error naming it.
    pub fn from_config(cfg: &GcpIitConfig, clock: SharedClock) -> Result<Self, String> {
        if cfg.projectid_allow_list.is_empty() {
            return Err(
                "node_attestors.gcp_iit.projectid_allow_list is empty: name the projects whose \
                 instances may attest"
                    .into(),
            );
        }
        if cfg.audience.is_empty() {
            return Err("node_attestors.gcp_iit.audience is empty".into());
        }
        let template = PathTemplate::parse(
            "node_attestors.gcp_iit.agent_path_template",
            cfg.agent_path_template
                .as_deref()
                .unwrap_or(DEFAULT_TEMPLATE),
            TEMPLATE_FIELDS,
        )?;
        let keys = jwt::key_source(
            NAME,
            cfg.jwks_url.as_deref(),
            cfg.jwks_file.as_deref(),
            cfg.jwks_ca_bundle.as_deref(),
            cfg.jwks_refresh,
            DEFAULT_JWKS_URL,
        )?;
        Ok(OneShot::new(GcpIitCheck {
            projects: cfg.projectid_allow_list.clone(),
            audience: vec![cfg.audience.clone()],
            reattest: cfg.allow_reattestation,
            template,
            keys,
            clock,
        }))
    }
}

impl GcpIitCheck {
    /// The token signing keys (loaded at start-up).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The instance facts of a `full` token.
struct Instance {
    project_id: String,
    project_number: Option<String>,
    zone: String,
    instance_id: String,
    instance_name: String,
    created: Option<String>,
    email: Option<String>,
}

fn instance(claims: &jwt::Claims) -> Result<Instance, AttestError> {
    let ce = claims
        .get("google")
        .and_then(|g| g.get("compute_engine"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            AttestError::Refused(format!(
                "{NAME}: the identity token has no google.compute_engine claims (the agent must \
                 ask for format=full)"
            ))
        })?;
    // Numbers or strings, as the token carries them.
    let text = |k: &str| -> Option<String> {
        match ce.get(k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let need = |k: &str| {
        text(k).ok_or_else(|| {
            AttestError::Malformed(format!(
                "{NAME}: the identity token has no google.compute_engine.{k}"
            ))
        })
    };
    Ok(Instance {
        project_id: need("project_id")?,
        project_number: text("project_number"),
        zone: need("zone")?,
        instance_id: need("instance_id")?,
        instance_name: need("instance_name")?,
        created: text("instance_creation_timestamp"),
        email: jwt::string(claims, "email").map(str::to_owned),
    })
}

#[async_trait]
impl Check for GcpIitCheck {
    const NAME: &'static str = NAME;

    async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError> {
        let token = String::from_utf8(payload).map_err(|_| {
            AttestError::Malformed(format!("{NAME}: the identity token is not UTF-8"))
        })?;
        let claims = jwt::verify(NAME, &token, &self.keys, self.clock.unix()).await?;
        jwt::check_audience(NAME, &claims, &self.audience)?;
        let issuers: Vec<String> = ISSUERS.iter().map(|s| (*s).to_owned()).collect();
        jwt::check_issuer(NAME, &claims, &issuers)?;
        let i = instance(&claims)?;
        if !self.projects.contains(&i.project_id) {
            return Err(AttestError::Refused(format!(
                "{NAME}: project {:?} is not in node_attestors.gcp_iit.projectid_allow_list",
                i.project_id
            )));
        }
        let agent_path = self.template.render(NAME, &|f| match f {
            "PluginName" => Some(NAME.to_owned()),
            "ProjectID" => Some(i.project_id.clone()),
            "ProjectNumber" => i.project_number.clone(),
            "Zone" => Some(i.zone.clone()),
            "InstanceID" => Some(i.instance_id.clone()),
            "InstanceName" => Some(i.instance_name.clone()),
            "InstanceCreationTimestamp" => i.created.clone(),
            "ServiceAccount" => i.email.as_ref().map(|e| e.replace('@', "_")),
            _ => None,
        })?;
        let mut selectors = vec![
            selector(NAME, format!("project-id:{}", i.project_id))?,
            selector(NAME, format!("zone:{}", i.zone))?,
            selector(NAME, format!("instance-name:{}", i.instance_name))?,
        ];
        if let Some(email) = &i.email {
            selectors.push(selector(NAME, format!("sa:{email}"))?);
        }
        Ok(Attested {
            agent_path,
            selectors,
            can_reattest: self.reattest,
            tpm: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::clock::ManualClock;

    use super::*;
    use crate::attestor::jwt::testing::Issuer;
    use crate::attestor::{NodeAttestor, Step};

    const NOW: u64 = 1_800_000_000;

    fn claims(project: &str, aud: &str, exp: u64) -> Value {
        serde_json::json!({
            "aud": aud,
            "azp": "102176386862355536184",
            "email": "1234-compute@developer.gserviceaccount.com",
            "email_verified": true,
            "exp": exp,
            "iat": exp - 3600,
            "iss": "https://accounts.google.com",
            "sub": "102176386862355536184",
            "google": {"compute_engine": {
                "instance_creation_timestamp": 1_700_000_000u64,
                "instance_id": "5379382828327395821",
                "instance_name": "node-1",
                "project_id": project,
                "project_number": 1234u64,
                "zone": "europe-west1-b",
            }}
        })
    }

    struct Setup {
        _dir: tempfile::TempDir,
        google: Issuer,
        attestor: GcpIit,
    }

    async fn setup(edit: impl FnOnce(&mut GcpIitConfig)) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let google = Issuer::new("g1");
        let path = dir.path().join("google.json");
        Issuer::write_jwks(&path, &[&google]);
        let mut cfg = GcpIitConfig {
            projectid_allow_list: vec!["proj-a".into()],
            audience: DEFAULT_AUDIENCE.into(),
            allow_reattestation: false,
            agent_path_template: None,
            jwks_url: None,
            jwks_file: Some(path),
            jwks_ca_bundle: None,
            jwks_refresh: jwt::DEFAULT_REFRESH,
        };
        edit(&mut cfg);
        let attestor = GcpIit::from_config(&cfg, ManualClock::at_unix(NOW)).unwrap();
        jwt::load_at_start(attestor.check().keys()).await.unwrap();
        Setup {
            _dir: dir,
            google,
            attestor,
        }
    }

    async fn attest(s: &Setup, token: String) -> Result<Attested, AttestError> {
        match s.attestor.session().step(token.into_bytes()).await? {
            Step::Attested(a) => Ok(a),
            Step::Challenge(_) => panic!("no challenge expected"),
        }
    }

    fn refusal(r: Result<Attested, AttestError>) -> String {
        match r {
            Err(AttestError::Refused(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_token_gives_spires_id_and_selectors() {
        let s = setup(|_| {}).await;
        let t = s
            .google
            .sign(&claims("proj-a", DEFAULT_AUDIENCE, NOW + 3000));
        let done = attest(&s, t).await.unwrap();
        assert_eq!(done.agent_path, "gcp_iit/proj-a/5379382828327395821");
        let sel: Vec<String> = done.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            sel,
            [
                "gcp_iit:project-id:proj-a",
                "gcp_iit:zone:europe-west1-b",
                "gcp_iit:instance-name:node-1",
                "gcp_iit:sa:1234-compute@developer.gserviceaccount.com",
            ]
        );
        assert!(!done.can_reattest);
    }

    #[tokio::test]
    async fn wrong_project_audience_issuer_signer_or_time_is_refused() {
        let s = setup(|_| {}).await;
        let m = refusal(
            attest(
                &s,
                s.google
                    .sign(&claims("proj-b", DEFAULT_AUDIENCE, NOW + 3000)),
            )
            .await,
        );
        assert_eq!(
            m,
            "gcp_iit: project \"proj-b\" is not in node_attestors.gcp_iit.projectid_allow_list"
        );
        let m = refusal(attest(&s, s.google.sign(&claims("proj-a", "other", NOW + 3000))).await);
        assert!(m.contains("for audience [\"other\"]"), "{m}");
        let mut c = claims("proj-a", DEFAULT_AUDIENCE, NOW + 3000);
        c["iss"] = "https://evil.example".into();
        let m = refusal(attest(&s, s.google.sign(&c)).await);
        assert!(m.contains("issued by \"https://evil.example\""), "{m}");
        let m = refusal(
            attest(
                &s,
                s.google
                    .sign(&claims("proj-a", DEFAULT_AUDIENCE, NOW - 600)),
            )
            .await,
        );
        assert!(m.contains("expired"), "{m}");
        let forger = Issuer::new("g1");
        let m = refusal(
            attest(
                &s,
                forger.sign(&claims("proj-a", DEFAULT_AUDIENCE, NOW + 3000)),
            )
            .await,
        );
        assert!(m.contains("signature does not verify"), "{m}");
        let mut c = claims("proj-a", DEFAULT_AUDIENCE, NOW + 3000);
        c.as_object_mut().unwrap().remove("google");
        let m = refusal(attest(&s, s.google.sign(&c)).await);
        assert!(m.contains("format=full"), "{m}");
    }

    #[tokio::test]
    async fn settings_are_checked_at_start_up() {
        let base = |e: &dyn Fn(&mut GcpIitConfig)| {
            let mut cfg = GcpIitConfig {
                projectid_allow_list: vec!["p".into()],
                audience: "a".into(),
                allow_reattestation: false,
                agent_path_template: None,
                jwks_url: None,
                jwks_file: Some("/k.json".into()),
                jwks_ca_bundle: None,
                jwks_refresh: jwt::DEFAULT_REFRESH,
            };
            e(&mut cfg);
            GcpIit::from_config(&cfg, ManualClock::at_unix(NOW)).map(|_| ())
        };
        base(&|_| {}).unwrap();
        for (edit, want) in [
            (
                Box::new(|c: &mut GcpIitConfig| c.projectid_allow_list.clear())
                    as Box<dyn Fn(&mut GcpIitConfig)>,
                "projectid_allow_list is empty",
            ),
            (
                Box::new(|c: &mut GcpIitConfig| c.jwks_url = Some("https://x/k".into())),
                "not both",
            ),
            (
                Box::new(|c: &mut GcpIitConfig| {
                    c.jwks_file = None;
                    c.jwks_url = Some("http://x/k".into());
                }),
                "must be an https URL",
            ),
            (
                Box::new(|c: &mut GcpIitConfig| c.jwks_refresh = Duration::from_secs(1)),
                "jwks_refresh",
            ),
        ] {
            let e = base(&*edit).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = load_missing_file().await;
        assert!(e.contains("jwks_file /nonexistent.json"), "{e}");
    }

    async fn load_missing_file() -> String {
        let keys = jwt::key_source(
            NAME,
            None,
            Some(std::path::Path::new("/nonexistent.json")),
            None,
            jwt::DEFAULT_REFRESH,
            DEFAULT_JWKS_URL,
        )
        .unwrap();
        jwt::load_at_start(&keys).await.unwrap_err()
    }
}
