//! Kubernetes projected service account token attestation (`k8s_psat`), server side.
//! The agent sends the token projected into its pod and the name of its cluster
//! (SPIRE's payload). Each cluster is configured on its own (`clusters.<name>`, as
//! SPIRE's) and checks tokens one of two ways:
//!
//! - **offline**: the token is verified against the cluster's service account issuer
//!   keys (a JWK Set from a file, or found through the issuer's OpenID Connect
//!   discovery document; cached and refreshed): signature, issuer, audience, expiry,
//!   not-before and issued-at; pod and node come from its `kubernetes.io` claims,
//!   which need Kubernetes 1.30 or later for the node;
//! - **api**: the cluster's API server reviews the token (TokenReview, with the
//!   configured audiences), and the server reads the Pod it is bound to and that
//!   pod's Node, and requires the pod UID, node name and node UID the token is bound
//!   to (when it names them) to be those of the live objects.
//!
//! Either way the service account must be on the cluster's allow-list and the token
//! must be bound to a pod. The agent ID is `k8s_psat/<cluster>/<node UID>` (or
//! `k8s_psat/<cluster>/pod/<pod UID>`), selectors as SPIRE names them; agents may
//! attest again (a fresh token proves the same node).

pub mod api;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tessera_core::attestation::k8s_psat::{DEFAULT_AUDIENCE, Payload};
use tessera_core::clock::SharedClock;
use tessera_core::duration::serde_human;

use super::jwt::{self, Keys, Source};
use super::one_shot::{Check, OneShot, selector};
use super::{AttestError, Attested};

pub use tessera_core::attestation::k8s_psat::NAME;

/// The longest cluster name an agent may send (configured names are path segments of
/// agent IDs, far shorter).
const MAX_CLUSTER_NAME: usize = 256;

fn default_audience() -> Vec<String> {
    vec![DEFAULT_AUDIENCE.into()]
}

fn default_refresh() -> Duration {
    jwt::DEFAULT_REFRESH
}

fn default_api_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[node_attestors.k8s_psat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatConfig {
    /// Cluster name (what agents send) -> its settings; required, not empty.
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// `[node_attestors.k8s_psat.clusters.<name>]`: exactly one of `api` and `offline`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Service accounts that may attest, as `namespace:name`.
    pub service_account_allow_list: Vec<String>,
    /// Accepted token audiences (default `["spire-server"]`; empty, in api mode
    /// only: the API server's own audience).
    #[serde(default = "default_audience")]
    pub audience: Vec<String>,
    /// Node label keys that become `agent_node_label` selectors (api mode).
    #[serde(default)]
    pub allowed_node_label_keys: Vec<String>,
    /// Pod label keys that become `agent_pod_label` selectors (api mode).
    #[serde(default)]
    pub allowed_pod_label_keys: Vec<String>,
    /// Name agents by their pod's UID (`.../pod/<uid>`) instead of their node's.
    #[serde(default)]
    pub use_pod_uid_for_agent_id: bool,
    /// Check tokens with the cluster's API server.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Check tokens against the cluster's service account issuer keys.
    #[serde(default)]
    pub offline: Option<OfflineConfig>,
}

/// `[node_attestors.k8s_psat.clusters.<name>.api]`: the API server and how to
/// authenticate to it (a bearer token file, or a client certificate and key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `https://host:port` of the API server.
    pub server: String,
    /// The cluster CA certificate(s) (PEM) the API server's certificate chains to.
    pub ca_file: PathBuf,
    /// A file holding a bearer token (read at each call, so it may rotate).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key, instead of a token.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The deadline of each call.
    #[serde(default = "default_api_timeout", with = "serde_human")]
    pub timeout: Duration,
}

/// `[node_attestors.k8s_psat.clusters.<name>.offline]`: the service account issuer
/// and where its keys are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineConfig {
    /// The issuer (`--service-account-issuer`); tokens must carry it as `iss`.
    pub issuer: String,
    /// The key set in a file (`kubectl get --raw /openid/v1/jwks`), read again when
    /// it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The discovery document (default `<issuer>/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// CA certificates (PEM) for the discovery and key set URLs (default: the
    /// system's).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// How often keys from a URL are fetched again.
    #[serde(default = "default_refresh", with = "serde_human")]
    pub refresh: Duration,
}

#[derive(Debug)]
enum Mode {
    Api(api::ApiServer),
    Offline { issuer: String, keys: Keys },
}

#[derive(Debug)]
struct Cluster {
    allowed: BTreeSet<String>,
    audience: Vec<String>,
    node_label_keys: BTreeSet<String>,
    pod_label_keys: BTreeSet<String>,
    pod_uid_id: bool,
    mode: Mode,
}

/// The check behind the `k8s_psat` attestor.
#[derive(Debug)]
pub struct K8sPsatCheck {
    clusters: BTreeMap<String, Cluster>,
    clock: SharedClock,
}

/// See the module documentation.
pub type K8sPsat = OneShot<K8sPsatCheck>;

/// Whether `s` can be one segment of an agent ID path.
fn path_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl K8sPsat {
    /// Checks the settings; a bad one is a start-up error naming it.
    pub fn from_config(cfg: &K8sPsatConfig, clock: SharedClock) -> Result<Self, String> {
        if cfg.clusters.is_empty() {
            return Err(
                "node_attestors.k8s_psat.clusters is empty: configure the clusters whose agents \
                 may attest"
                    .into(),
            );
        }
        let mut clusters = BTreeMap::new();
        for (name, c) in &cfg.clusters {
            let setting = format!("node_attestors.k8s_psat.clusters.{name}");
            if !path_segment(name) {
                return Err(format!(
                    "{setting}: the cluster name must be letters, digits, '-', '.' or '_' (it \
                     is part of agent IDs)"
                ));
            }
            clusters.insert(name.clone(), cluster(&setting, name, c)?);
        }
        Ok(OneShot::new(K8sPsatCheck { clusters, clock }))
    }
}

fn cluster(setting: &str, name: &str, c: &ClusterConfig) -> Result<Cluster, String> {
    if c.service_account_allow_list.is_empty() {
        return Err(format!(
            "{setting}.service_account_allow_list is empty: name the agents' service \
             accounts as \"namespace:name\""
        ));
    }
    for sa in &c.service_account_allow_list {
        if !matches!(sa.split_once(':'), Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains(':'))
        {
            return Err(format!(
                "{setting}.service_account_allow_list: {sa:?} is not \"namespace:name\""
            ));
        }
    }
    if c.audience.iter().any(String::is_empty) {
        return Err(format!("{setting}.audience holds an empty audience"));
    }
    let mode = match (&c.api, &c.offline) {
        (Some(a), None) => Mode::Api(api_server(&format!("{setting}.api"), name, a)?),
        (None, Some(o)) => {
            if c.audience.is_empty() {
                return Err(format!(
                    "{setting}.audience is empty: offline checks need the audience agents' \
                     tokens are projected for"
                ));
            }
            let (issuer, keys) = offline_keys(&format!("{setting}.offline"), o)?;
            Mode::Offline { issuer, keys }
        }
        (Some(_), Some(_)) => {
            return Err(format!("{setting}: set api or offline, not both"));
        }
        (None, None) => {
            return Err(format!(
                "{setting}: set how tokens are checked: [{setting}.api] (TokenReview) or \
                 [{setting}.offline] (the issuer's keys)"
            ));
        }
    };
    Ok(Cluster {
        allowed: c.service_account_allow_list.iter().cloned().collect(),
        audience: c.audience.clone(),
        node_label_keys: c.allowed_node_label_keys.iter().cloned().collect(),
        pod_label_keys: c.allowed_pod_label_keys.iter().cloned().collect(),
        pod_uid_id: c.use_pod_uid_for_agent_id,
        mode,
    })
}

fn api_server(setting: &str, cluster: &str, a: &ApiConfig) -> Result<api::ApiServer, String> {
    crate::https::check_url(&a.server, false).map_err(|e| format!("{setting}.server: {e}"))?;
    let tls = match (&a.token_file, &a.client_cert_file, &a.client_key_file) {
        (Some(t), None, None) => {
            std::fs::read_to_string(t)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "{setting}.token_file {}: cannot be read or is empty",
                        t.display()
                    )
                })?;
            crate::https::tls_roots(
                &format!("{setting}.ca_file"),
                "ca_file",
                Some(a.ca_file.as_path()),
            )?
        }
        (None, Some(cert), Some(key)) => {
            crate::https::tls_client_certificate(setting, &a.ca_file, cert, key)?
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(format!(
                "{setting}: client_cert_file and client_key_file go together"
            ));
        }
        (None, None, None) => {
            return Err(format!(
                "{setting}: set token_file, or client_cert_file and client_key_file"
            ));
        }
        (Some(_), _, _) => {
            return Err(format!(
                "{setting}: set token_file or a client certificate, not both"
            ));
        }
    };
    Ok(api::ApiServer {
        base: a.server.trim_end_matches('/').to_owned(),
        token_file: a.token_file.clone(),
        http: tessera_process::http::Options {
            timeout: a.timeout,
            max_body: 1 << 20,
            tls: Some(tls),
        },
        cluster: cluster.to_owned(),
    })
}

fn offline_keys(setting: &str, o: &OfflineConfig) -> Result<(String, Keys), String> {
    crate::https::check_url(&o.issuer, false).map_err(|e| format!("{setting}.issuer: {e}"))?;
    if o.refresh < jwt::keys::MIN_REFETCH {
        return Err(format!(
            "{setting}.refresh must be at least {:?}",
            jwt::keys::MIN_REFETCH
        ));
    }
    let source = match (&o.jwks_file, &o.discovery_url) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{setting}: set jwks_file or discovery_url, not both"
            ));
        }
        (Some(f), None) => Source::File(f.clone()),
        (None, url) => {
            let url = url.clone().unwrap_or_else(|| {
                format!(
                    "{}/.well-known/openid-configuration",
                    o.issuer.trim_end_matches('/')
                )
            });
            crate::https::check_url(&url, false)
                .map_err(|e| format!("{setting}.discovery_url: {e}"))?;
            Source::Discovery {
                url,
                issuer: o.issuer.clone(),
                http: tessera_process::http::Options {
                    timeout: Duration::from_secs(10),
                    tls: Some(crate::https::tls_roots(
                        &format!("{setting}.ca_bundle"),
                        "ca_bundle",
                        o.ca_bundle.as_deref(),
                    )?),
                    ..Default::default()
                },
            }
        }
    };
    Ok((o.issuer.clone(), Keys::new(NAME, source, o.refresh)))
}

impl K8sPsatCheck {
    /// Loads the offline clusters' keys at start-up (see [`jwt::load_at_start`]).
    pub async fn load_keys(&self) -> Result<(), String> {
        for (name, c) in &self.clusters {
            if let Mode::Offline { keys, .. } = &c.mode {
                jwt::load_at_start_as(
                    keys,
                    &format!("node_attestors.k8s_psat.clusters.{name}.offline.jwks_file"),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Who presents a token: its service account, and the pod and node it is bound to.
#[derive(Debug, Default)]
struct Bound {
    namespace: String,
    service_account: String,
    pod_name: String,
    pod_uid: String,
    node_name: Option<String>,
    node_uid: Option<String>,
    node_ip: Option<String>,
    node_labels: BTreeMap<String, String>,
    pod_labels: BTreeMap<String, String>,
}

fn refused(cluster: &str, what: impl std::fmt::Display) -> AttestError {
    AttestError::Refused(format!("{NAME}: cluster {cluster:?}: {what}"))
}

/// `system:serviceaccount:<ns>:<name>` -> (ns, name).
fn service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// A `{name, uid}` object of the `kubernetes.io` claim.
fn name_uid(k8s: &Value, key: &str) -> (Option<String>, Option<String>) {
    let field = |f: &str| {
        k8s.get(key)
            .and_then(|o| o.get(f))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    (field("name"), field("uid"))
}

impl K8sPsatCheck {
    async fn offline(
        &self,
        name: &str,
        c: &Cluster,
        issuer: &str,
        keys: &Keys,
        token: &str,
    ) -> Result<Bound, AttestError> {
        let claims = jwt::verify(NAME, token, keys, self.clock.unix()).await?;
        jwt::check_issuer(NAME, &claims, &[issuer.to_owned()])?;
        jwt::check_audience(NAME, &claims, &c.audience)?;
        let sub = jwt::string(&claims, "sub").unwrap_or("");
        let (ns, sa) = service_account(sub).ok_or_else(|| {
            refused(
                name,
                format!("the token's subject {sub:?} is not a service account"),
            )
        })?;
        let k8s = claims.get("kubernetes.io").cloned().unwrap_or(Value::Null);
        let claimed_ns = k8s.get("namespace").and_then(Value::as_str);
        let (claimed_sa, _) = name_uid(&k8s, "serviceaccount");
        if claimed_ns != Some(ns) || claimed_sa.as_deref() != Some(sa) {
            return Err(refused(
                name,
                format!(
                    "the token's kubernetes.io claims (namespace {claimed_ns:?}, service \
                     account {claimed_sa:?}) disagree with its subject {sub:?}"
                ),
            ));
        }
        let (pod_name, pod_uid) = name_uid(&k8s, "pod");
        let (Some(pod_name), Some(pod_uid)) = (pod_name, pod_uid) else {
            return Err(not_pod_bound(name));
        };
        let (node_name, node_uid) = name_uid(&k8s, "node");
        if node_uid.is_none() && !c.pod_uid_id {
            return Err(refused(
                name,
                "the token names no node (kubernetes.io.node, Kubernetes 1.30 and later): \
                 offline checks cannot tell which node presents it; use the api mode for this \
                 cluster",
            ));
        }
        Ok(Bound {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            pod_name,
            pod_uid,
            node_name,
            node_uid,
            ..Bound::default()
        })
    }

    async fn api(
        &self,
        name: &str,
        c: &Cluster,
        server: &api::ApiServer,
        token: &str,
    ) -> Result<Bound, AttestError> {
        use api::keys;
        let (username, audiences, extra) = match server.review(token, &c.audience).await? {
            api::Review::Refused(reason) => {
                return Err(refused(
                    name,
                    format!(
                        "the API server's TokenReview did not authenticate the token: {reason}"
                    ),
                ));
            }
            api::Review::Authenticated {
                username,
                audiences,
                extra,
            } => (username, audiences, extra),
        };
        if !c.audience.is_empty() && !audiences.iter().any(|a| c.audience.contains(a)) {
            return Err(refused(
                name,
                format!(
                    "the TokenReview authenticated the token for audience {audiences:?}, not {:?}",
                    c.audience
                ),
            ));
        }
        let (ns, sa) = service_account(&username).ok_or_else(|| {
            refused(
                name,
                format!("the token is not a service account's (user {username:?})"),
            )
        })?;
        check_allowed(name, c, ns, sa)?;
        let (Some(pod_name), Some(pod_uid)) = (
            api::extra(&extra, keys::POD_NAME),
            api::extra(&extra, keys::POD_UID),
        ) else {
            return Err(not_pod_bound(name));
        };
        let token_node = api::extra(&extra, keys::NODE_NAME);
        let token_node_uid = api::extra(&extra, keys::NODE_UID);
        let pod = server.pod(ns, pod_name).await?.ok_or_else(|| {
            refused(
                name,
                format!("the token is bound to pod {ns}/{pod_name}, which does not exist"),
            )
        })?;
        if pod.metadata.uid != pod_uid {
            return Err(refused(
                name,
                format!(
                    "the token is bound to pod {ns}/{pod_name} with UID {pod_uid:?}, but that \
                     pod's UID is {:?} (the pod was replaced)",
                    pod.metadata.uid
                ),
            ));
        }
        let node_name = pod.spec.node_name.clone();
        if node_name.is_empty() {
            return Err(refused(
                name,
                format!("pod {ns}/{pod_name} is not scheduled on a node"),
            ));
        }
        if let Some(t) = token_node
            && t != node_name
        {
            return Err(refused(
                name,
                format!(
                    "the token is bound to node {t:?}, but pod {ns}/{pod_name} runs on node \
                     {node_name:?}"
                ),
            ));
        }
        let node = server.node(&node_name).await?.ok_or_else(|| {
            refused(
                name,
                format!("pod {ns}/{pod_name} runs on node {node_name:?}, which does not exist"),
            )
        })?;
        if node.metadata.uid.is_empty() {
            return Err(AttestError::Unavailable(format!(
                "{NAME}: cluster {name:?}: node {node_name:?} has no UID in the API server's \
                 answer"
            )));
        }
        if let Some(t) = token_node_uid
            && t != node.metadata.uid
        {
            return Err(refused(
                name,
                format!(
                    "the token is bound to node UID {t:?}, but node {node_name:?} has UID {:?} \
                     (the node was replaced)",
                    node.metadata.uid
                ),
            ));
        }
        Ok(Bound {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
            pod_name: pod_name.to_owned(),
            pod_uid: pod_uid.to_owned(),
            node_name: Some(node_name),
            node_uid: Some(node.metadata.uid),
            node_ip: Some(pod.status.host_ip).filter(|s| !s.is_empty()),
            node_labels: node.metadata.labels,
            pod_labels: pod.metadata.labels,
        })
    }
}

fn not_pod_bound(cluster: &str) -> AttestError {
    refused(
        cluster,
        "the token is not bound to a pod (no pod name and UID): project a service account \
         token into the agent's pod; secret-based tokens are not accepted",
    )
}

fn check_allowed(cluster: &str, c: &Cluster, ns: &str, sa: &str) -> Result<(), AttestError> {
    let full = format!("{ns}:{sa}");
    if c.allowed.contains(&full) {
        return Ok(());
    }
    Err(refused(
        cluster,
        format!(
            "service account {full:?} is not in \
             node_attestors.k8s_psat.clusters.{cluster}.service_account_allow_list"
        ),
    ))
}

#[async_trait]
impl Check for K8sPsatCheck {
    const NAME: &'static str = NAME;

    async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError> {
        let payload: Payload = serde_json::from_slice(&payload)
            .map_err(|e| AttestError::Malformed(format!("{NAME}: payload: {e}")))?;
        if payload.cluster.is_empty() || payload.token.trim().is_empty() {
            return Err(AttestError::Malformed(format!(
                "{NAME}: payload: the cluster and the token must not be empty"
            )));
        }
        // Checked before either is echoed in a message or sent to an API server.
        if payload.cluster.len() > MAX_CLUSTER_NAME {
            return Err(AttestError::Malformed(format!(
                "{NAME}: payload: the cluster name is longer than {MAX_CLUSTER_NAME} bytes"
            )));
        }
        if payload.token.trim().len() > jwt::MAX_TOKEN {
            return Err(AttestError::Malformed(format!(
                "{NAME}: payload: the token is longer than {} bytes",
                jwt::MAX_TOKEN
            )));
        }
        let name = payload.cluster.as_str();
        let c = self.clusters.get(name).ok_or_else(|| {
            AttestError::Refused(format!(
                "{NAME}: cluster {name:?} is not in node_attestors.k8s_psat.clusters"
            ))
        })?;
        let token = payload.token.trim();
        let b = match &c.mode {
            Mode::Offline { issuer, keys } => {
                let b = self.offline(name, c, issuer, keys, token).await?;
                check_allowed(name, c, &b.namespace, &b.service_account)?;
                b
            }
            Mode::Api(server) => self.api(name, c, server, token).await?,
        };
        let id_part = if c.pod_uid_id {
            Some(format!("pod/{}", b.pod_uid)).filter(|_| path_segment(&b.pod_uid))
        } else {
            b.node_uid.clone().filter(|u| path_segment(u))
        };
        let id_part = id_part.ok_or_else(|| {
            refused(
                name,
                "the node or pod UID cannot be part of an agent ID (letters, digits, '-', '.', \
                 '_')",
            )
        })?;
        let mut values = vec![
            format!("cluster:{name}"),
            format!("agent_ns:{}", b.namespace),
            format!("agent_sa:{}", b.service_account),
            format!("agent_pod_name:{}", b.pod_name),
            format!("agent_pod_uid:{}", b.pod_uid),
        ];
        values.extend(b.node_ip.iter().map(|v| format!("agent_node_ip:{v}")));
        values.extend(b.node_name.iter().map(|v| format!("agent_node_name:{v}")));
        values.extend(b.node_uid.iter().map(|v| format!("agent_node_uid:{v}")));
        for (k, v) in &b.node_labels {
            if c.node_label_keys.contains(k) {
                values.push(format!("agent_node_label:{k}:{v}"));
            }
        }
        for (k, v) in &b.pod_labels {
            if c.pod_label_keys.contains(k) {
                values.push(format!("agent_pod_label:{k}:{v}"));
            }
        }
        let selectors = values
            .into_iter()
            .map(|v| selector(NAME, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Attested {
            agent_path: format!("{NAME}/{name}/{id_part}"),
            selectors,
            can_reattest: true,
            tpm: None,
        })
    }
}

#[cfg(test)]
mod tests;
