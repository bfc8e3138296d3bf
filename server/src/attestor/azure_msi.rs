//! Azure managed identity attestation (`azure_msi`), server side. The agent sends
//! the access token IMDS issued to the VM's managed identity for the configured
//! resource; the server checks it against Microsoft Entra ID's published keys (a JWK
//! Set from a URL, cached and refreshed, or from a file), that its tenant is
//! configured, that it is for that tenant's resource and from that tenant's issuer,
//! and its expiry. The agent ID is `azure_msi/<tenant>/<principal>` (SPIRE's); an
//! identity attests once unless re-attestation is allowed.
//!
//! Selectors come from the token itself, not from Azure Resource Manager: the
//! `xms_mirid` claim names the resource the identity belongs to, so a system-assigned
//! identity gives `subscription-id`, `vm-name:<group>:<vm>` (SPIRE's names) and
//! `resource-group`; a user-assigned one gives only `subscription-id`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_core::attestation::azure_msi::{NAME, Payload};
use tessera_core::clock::SharedClock;
use tessera_core::duration::serde_human;

use super::jwt::{self, Keys};
use super::one_shot::{Check, OneShot, selector};
use super::template::PathTemplate;
use super::{AttestError, Attested};

/// The resource agents ask tokens for when none is configured (Resource Manager).
pub const DEFAULT_RESOURCE: &str = "https://management.azure.com/";

/// Microsoft Entra ID's key set for the tokens it issues.
pub const DEFAULT_JWKS_URL: &str = "https://login.microsoftonline.com/common/discovery/keys";

/// The default agent path, as SPIRE's.
pub const DEFAULT_TEMPLATE: &str = "/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}";

/// The fields `agent_path_template` may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "PluginName",
    "TenantID",
    "PrincipalID",
    "SubscriptionID",
    "ResourceGroup",
    "VMName",
];

fn default_resource() -> String {
    DEFAULT_RESOURCE.into()
}

fn default_refresh() -> Duration {
    jwt::DEFAULT_REFRESH
}

/// One allowed tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The resource (token audience) the agents of this tenant ask for.
    #[serde(default = "default_resource")]
    pub resource_id: String,
    /// The accepted issuers (default: this tenant's v1 and v2 issuers,
    /// `https://sts.windows.net/<tenant>/` and
    /// `https://login.microsoftonline.com/<tenant>/v2.0`).
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
}

/// `[node_attestors.azure_msi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMsiConfig {
    /// Tenant ID -> its settings (required, not empty).
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Let an identity attest again (off: one attestation per identity, as SPIRE).
    #[serde(default)]
    pub allow_reattestation: bool,
    /// The agent ID path (default `/{{ .PluginName }}/{{ .TenantID }}/{{ .PrincipalID }}`).
    #[serde(default)]
    pub agent_path_template: Option<String>,
    /// Entra ID's key set (default: its public URL).
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

#[derive(Debug)]
struct Tenant {
    audience: Vec<String>,
    issuers: Vec<String>,
}

/// The check behind the `azure_msi` attestor.
#[derive(Debug)]
pub struct AzureMsiCheck {
    tenants: BTreeMap<String, Tenant>,
    reattest: bool,
    template: PathTemplate,
    keys: Keys,
    clock: SharedClock,
}

/// See the module documentation.
pub type AzureMsi = OneShot<AzureMsiCheck>;

impl AzureMsi {
    /// Checks the settings; a bad one is a start-up error naming it.
    pub fn from_config(cfg: &AzureMsiConfig, clock: SharedClock) -> Result<Self, String> {
        if cfg.tenants.is_empty() {
            return Err(
                "node_attestors.azure_msi.tenants is empty: name the tenants whose managed \
                 identities may attest"
                    .into(),
            );
        }
        let mut tenants = BTreeMap::new();
        for (id, t) in &cfg.tenants {
            if t.resource_id.is_empty() {
                return Err(format!(
                    "node_attestors.azure_msi.tenants.{id}.resource_id is empty"
                ));
            }
            let issuers = t.issuers.clone().unwrap_or_else(|| {
                vec![
                    format!("https://sts.windows.net/{id}/"),
                    format!("https://login.microsoftonline.com/{id}/v2.0"),
                ]
            });
            tenants.insert(
                id.clone(),
                Tenant {
                    audience: vec![t.resource_id.clone()],
                    issuers,
                },
            );
        }
        let template = PathTemplate::parse(
            "node_attestors.azure_msi.agent_path_template",
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
        Ok(OneShot::new(AzureMsiCheck {
            tenants,
            reattest: cfg.allow_reattestation,
            template,
            keys,
            clock,
        }))
    }
}

impl AzureMsiCheck {
    /// The token signing keys (loaded at start-up).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// What `xms_mirid` says about the identity's resource.
#[derive(Debug, Default, PartialEq, Eq)]
struct Resource {
    subscription: Option<String>,
    group: Option<String>,
    vm: Option<String>,
}

/// Reads `/subscriptions/<s>/resourcegroups/<g>/providers/<ns>/<type>/<name>` (the
/// key segments in any case, as Azure treats them).
fn resource(mirid: &str) -> Resource {
    let segs: Vec<&str> = mirid.trim_matches('/').split('/').collect();
    let after = |key: &str| {
        segs.iter()
            .position(|s| s.eq_ignore_ascii_case(key))
            .and_then(|i| segs.get(i + 1))
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    };
    let mut r = Resource {
        subscription: after("subscriptions"),
        group: after("resourcegroups"),
        vm: None,
    };
    if let Some(p) = segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))
        && let [ns, kind, name] = segs.get(p + 1..).unwrap_or(&[])
        && ns.eq_ignore_ascii_case("Microsoft.Compute")
        && kind.eq_ignore_ascii_case("virtualMachines")
        && !name.is_empty()
    {
        r.vm = Some((*name).to_owned());
    }
    r
}

#[async_trait]
impl Check for AzureMsiCheck {
    const NAME: &'static str = NAME;

    async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError> {
        let payload: Payload = serde_json::from_slice(&payload)
            .map_err(|e| AttestError::Malformed(format!("{NAME}: payload: {e}")))?;
        let claims = jwt::verify(NAME, &payload.token, &self.keys, self.clock.unix()).await?;
        let tid = jwt::string(&claims, "tid").ok_or_else(|| {
            AttestError::Malformed(format!("{NAME}: the token names no tenant (tid)"))
        })?;
        let tenant = self.tenants.get(tid).ok_or_else(|| {
            AttestError::Refused(format!(
                "{NAME}: tenant {tid:?} is not in node_attestors.azure_msi.tenants"
            ))
        })?;
        jwt::check_audience(NAME, &claims, &tenant.audience)?;
        jwt::check_issuer(NAME, &claims, &tenant.issuers)?;
        let principal = jwt::string(&claims, "sub").ok_or_else(|| {
            AttestError::Malformed(format!("{NAME}: the token names no principal (sub)"))
        })?;
        let res = jwt::string(&claims, "xms_mirid")
            .map(resource)
            .unwrap_or_default();
        let agent_path = self.template.render(NAME, &|f| match f {
            "PluginName" => Some(NAME.to_owned()),
            "TenantID" => Some(tid.to_owned()),
            "PrincipalID" => Some(principal.to_owned()),
            "SubscriptionID" => res.subscription.clone(),
            "ResourceGroup" => res.vm.as_ref().and(res.group.clone()),
            "VMName" => res.vm.clone(),
            _ => None,
        })?;
        let mut selectors = Vec::new();
        if let Some(s) = &res.subscription {
            selectors.push(selector(NAME, format!("subscription-id:{s}"))?);
        }
        if let (Some(g), Some(vm)) = (&res.group, &res.vm) {
            selectors.push(selector(NAME, format!("vm-name:{g}:{vm}"))?);
            selectors.push(selector(NAME, format!("resource-group:{g}"))?);
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
    use serde_json::Value;
    use tessera_core::clock::ManualClock;

    use super::*;
    use crate::attestor::jwt::testing::Issuer;
    use crate::attestor::{NodeAttestor, Step};

    const NOW: u64 = 1_800_000_000;
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const PRINCIPAL: &str = "9ff2d1f9-5bd4-4e3e-a5c1-8d0e5c7a0f11";
    const MIRID: &str = "/subscriptions/0b1f6471-1bf0-4dda-aec3-111122223333/resourcegroups/edge-rg/providers/Microsoft.Compute/virtualMachines/node-7";

    fn claims(tid: &str, aud: &str, exp: u64) -> Value {
        serde_json::json!({
            "aud": aud,
            "iss": format!("https://sts.windows.net/{tid}/"),
            "iat": exp - 86_400, "nbf": exp - 86_400, "exp": exp,
            "aio": "E2ZgYJgr", "appid": "2f3e6c43-0000-4000-8000-000000000001",
            "appidacr": "2", "idp": format!("https://sts.windows.net/{tid}/"),
            "idtyp": "app", "oid": PRINCIPAL, "rh": "0.AAAA", "sub": PRINCIPAL,
            "tid": tid, "uti": "a1b2", "ver": "1.0", "xms_mirid": MIRID,
        })
    }

    struct Setup {
        _dir: tempfile::TempDir,
        entra: Issuer,
        attestor: AzureMsi,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let entra = Issuer::new("e1");
        let path = dir.path().join("entra.json");
        Issuer::write_jwks(&path, &[&entra]);
        let cfg = AzureMsiConfig {
            tenants: [(
                TENANT.to_owned(),
                TenantConfig {
                    resource_id: "api://tessera-node".into(),
                    issuers: None,
                },
            )]
            .into(),
            allow_reattestation: false,
            agent_path_template: None,
            jwks_url: None,
            jwks_file: Some(path),
            jwks_ca_bundle: None,
            jwks_refresh: jwt::DEFAULT_REFRESH,
        };
        let attestor = AzureMsi::from_config(&cfg, ManualClock::at_unix(NOW)).unwrap();
        jwt::load_at_start(attestor.check().keys()).await.unwrap();
        Setup {
            _dir: dir,
            entra,
            attestor,
        }
    }

    async fn attest(s: &Setup, token: String) -> Result<Attested, AttestError> {
        let payload = serde_json::to_vec(&Payload { token }).unwrap();
        match s.attestor.session().step(payload).await? {
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
    async fn a_vm_identity_gives_spires_id_and_selectors() {
        let s = setup().await;
        let done = attest(
            &s,
            s.entra
                .sign(&claims(TENANT, "api://tessera-node", NOW + 3600)),
        )
        .await
        .unwrap();
        assert_eq!(done.agent_path, format!("azure_msi/{TENANT}/{PRINCIPAL}"));
        let sel: Vec<String> = done.selectors.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            sel,
            [
                "azure_msi:subscription-id:0b1f6471-1bf0-4dda-aec3-111122223333",
                "azure_msi:vm-name:edge-rg:node-7",
                "azure_msi:resource-group:edge-rg",
            ]
        );
    }

    #[tokio::test]
    async fn wrong_tenant_audience_issuer_or_time_is_refused() {
        let s = setup().await;
        let other = "11111111-2222-3333-4444-555555555555";
        let m = refusal(
            attest(
                &s,
                s.entra
                    .sign(&claims(other, "api://tessera-node", NOW + 3600)),
            )
            .await,
        );
        assert_eq!(
            m,
            format!("azure_msi: tenant \"{other}\" is not in node_attestors.azure_msi.tenants")
        );
        let m = refusal(
            attest(
                &s,
                s.entra.sign(&claims(TENANT, DEFAULT_RESOURCE, NOW + 3600)),
            )
            .await,
        );
        assert!(
            m.contains("for audience [\"https://management.azure.com/\"]"),
            "{m}"
        );
        // A token of another tenant's issuer, relabelled with this tenant's tid.
        let mut c = claims(TENANT, "api://tessera-node", NOW + 3600);
        c["iss"] = format!("https://sts.windows.net/{other}/").into();
        let m = refusal(attest(&s, s.entra.sign(&c)).await);
        assert!(m.contains("issued by"), "{m}");
        let m = refusal(
            attest(
                &s,
                s.entra
                    .sign(&claims(TENANT, "api://tessera-node", NOW - 60)),
            )
            .await,
        );
        assert!(m.contains("expired"), "{m}");
        let m = refusal(
            attest(
                &s,
                Issuer::new("e1").sign(&claims(TENANT, "api://tessera-node", NOW + 3600)),
            )
            .await,
        );
        assert!(m.contains("signature does not verify"), "{m}");
    }

    #[test]
    fn resource_ids_are_read_in_any_case() {
        assert_eq!(
            resource(MIRID),
            Resource {
                subscription: Some("0b1f6471-1bf0-4dda-aec3-111122223333".into()),
                group: Some("edge-rg".into()),
                vm: Some("node-7".into()),
            }
        );
        let user = resource(
            "/subscriptions/s1/resourceGroups/ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/edge",
        );
        assert_eq!((user.subscription.as_deref(), user.vm), (Some("s1"), None));
        assert_eq!(resource("garbage"), Resource::default());
    }
}
