//! The agent's configuration file (`/etc/tessera/agent.toml`) and its defaults.

mod limits;
mod measured_boot;
pub use limits::{
    DEFAULT_MAX_CONNECTIONS_CEILING, DEFAULT_MAX_REQUESTS_PER_UID, DEFAULT_PER_UID_SHARE,
    LimitsConfig,
};
pub use measured_boot::MeasuredBootConfig;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::TrustDomain;
use tessera_core::duration::serde_human;
use tessera_core::key::KeyType;

/// Environment variables starting with this override configuration values.
pub const ENV_PREFIX: &str = "TESSERA_AGENT_";
/// Where the agent looks for its configuration when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/tessera/agent.toml";
/// Where the Workload API listens when the configuration names no socket.
pub const DEFAULT_SOCKET: &str = "/run/tessera/agent/public/api.sock";

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tessera/agent")
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_sync() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".into()
}
fn default_key_type() -> KeyType {
    KeyType::EcP256
}
fn default_server_port() -> u16 {
    8081
}

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub trust_domain: TrustDomain,
    /// The server's host name or address (`host` or `host:port`).
    #[serde(default)]
    pub server_address: String,
    #[serde(default = "default_server_port")]
    pub server_port: u16,
    /// More servers to try in order when the first cannot be reached (the agent goes
    /// back to the first once it answers again: docs/OPERATIONS.md, "Several servers").
    #[serde(default)]
    pub server_addresses: Vec<String>,
    /// State: the agent SVID, its key, the bundle and cached entries.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The SPIFFE Workload API socket.
    #[serde(default = "default_socket")]
    pub socket_path: PathBuf,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` (the default) or `json`: one JSON object per log line.
    #[serde(default)]
    pub log_format: tessera_process::logging::LogFormat,
    /// PEM CA certificates to trust the server with before the agent has a bundle.
    #[serde(default)]
    pub trust_bundle_path: Option<PathBuf>,
    /// Trust whatever server answers the first time (and pin the bundle it sends).
    /// Unsafe outside labs: anyone who can answer first becomes your CA.
    #[serde(default)]
    pub insecure_bootstrap: bool,
    /// How often entries are synced with the server.
    #[serde(default = "default_sync", with = "serde_human")]
    pub sync_interval: Duration,
    /// The kind of key made for each workload SVID.
    #[serde(default = "default_key_type")]
    pub workload_key_type: KeyType,
    /// Let callers without an identity read bundles and validate JWT-SVIDs.
    #[serde(default)]
    pub allow_unauthenticated_verifiers: bool,
    #[serde(default)]
    pub key_manager: KeyManagerConfig,
    /// Which TPM backend talks to the TPM: `esapi` (tpm2-tss, the default when built
    /// in) or `native` (pure Rust; the only one in a static build).
    #[serde(default)]
    pub tpm_backend: tessera_tpm::Backend,
    /// `[tpm]`: the TPM's hierarchy passwords (crate::tpm_settings).
    #[serde(default)]
    pub tpm: crate::tpm_settings::TpmSettings,
    #[serde(default)]
    pub node_attestor: NodeAttestorConfig,
    #[serde(default)]
    pub workload_attestors: WorkloadAttestorsConfig,
    /// What one local user may hold of the Workload API.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The metrics and health listeners (`[telemetry]`); both off by default.
    #[serde(default)]
    pub telemetry: tessera_telemetry::http::TelemetryConfig,
    /// `[measured_boot]`: PCRs quoted with TPM attestation and each renewal.
    #[serde(default)]
    pub measured_boot: MeasuredBootConfig,
}

/// Where the agent's own SVID key lives. (The variants without settings are empty
/// structs, not unit variants: serde lets a unit variant of a tagged enum ignore
/// unknown keys, so a misplaced setting would pass unnoticed.)
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyManagerConfig {
    /// In memory: a restart means attesting again.
    Memory {},
    /// A PKCS#8 file (mode 0600) in `<data_dir>/keys`.
    Disk {},
    /// A key in the TPM; `<data_dir>/keys` holds only its TPM blob, useless on any
    /// other TPM.
    Tpm {
        /// The TPM; defaults to the TPM node attestor's.
        #[serde(default)]
        tcti: Option<tessera_tpm::Tcti>,
    },
}

impl Default for KeyManagerConfig {
    fn default() -> Self {
        Self::Disk {}
    }
}

/// How the agent proves its node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorConfig {
    #[serde(default)]
    pub join_token: Option<JoinTokenConfig>,
    /// TPM DevID attestation (provision the DevID with `tessera-agent tpm provision-devid`).
    #[serde(default)]
    pub tpm_devid: Option<TpmDevIdConfig>,
    /// TPM EK attestation.
    #[serde(default)]
    pub tpm_ek: Option<TpmEkConfig>,
    /// AWS EC2 instance identity document attestation.
    #[serde(default)]
    pub aws_iid: Option<AwsIidConfig>,
    /// Google Compute Engine instance identity token attestation.
    #[serde(default)]
    pub gcp_iit: Option<GcpIitConfig>,
    /// Azure managed identity attestation.
    #[serde(default)]
    pub azure_msi: Option<AzureMsiConfig>,
    /// Kubernetes projected service account token attestation.
    #[serde(default)]
    pub k8s_psat: Option<K8sPsatConfig>,
    /// X.509 certificate and proof of possession of its key.
    #[serde(default)]
    pub x509pop: Option<X509PopConfig>,
}

impl Default for NodeAttestorConfig {
    fn default() -> Self {
        Self {
            join_token: Some(JoinTokenConfig::default()),
            tpm_devid: None,
            tpm_ek: None,
            aws_iid: None,
            gcp_iit: None,
            azure_msi: None,
            k8s_psat: None,
            x509pop: None,
        }
    }
}

impl NodeAttestorConfig {
    /// The sections of the attestors other than join_token that are set.
    pub fn configured(&self) -> Vec<&'static str> {
        [
            ("tpm_devid", self.tpm_devid.is_some()),
            ("tpm_ek", self.tpm_ek.is_some()),
            ("aws_iid", self.aws_iid.is_some()),
            ("gcp_iit", self.gcp_iit.is_some()),
            ("azure_msi", self.azure_msi.is_some()),
            ("k8s_psat", self.k8s_psat.is_some()),
            ("x509pop", self.x509pop.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }

    /// The TPM a node attestor uses, if any.
    pub fn tpm_tcti(&self) -> Option<tessera_tpm::Tcti> {
        self.tpm_devid
            .as_ref()
            .map(|c| c.tcti.clone())
            .or_else(|| self.tpm_ek.as_ref().map(|c| c.tcti.clone()))
            .or_else(|| {
                self.x509pop
                    .as_ref()
                    .filter(|c| c.tpm_key_path.is_some())
                    .map(|c| c.tcti.clone().unwrap_or_else(default_tcti))
            })
    }
}

fn default_metadata_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_aws_endpoint() -> String {
    "http://169.254.169.254".into()
}
fn default_gcp_host() -> String {
    "metadata.google.internal".into()
}
fn default_gcp_service_account() -> String {
    "default".into()
}
fn default_gcp_audience() -> String {
    tessera_core::attestation::gcp_iit::DEFAULT_AUDIENCE.into()
}
fn default_azure_resource() -> String {
    "https://management.azure.com/".into()
}

/// `[node_attestor.aws_iid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIidConfig {
    /// The instance metadata service (`http://[fd00:ec2::254]` on IPv6-only instances).
    #[serde(default = "default_aws_endpoint")]
    pub endpoint: String,
    /// Read without an IMDSv2 session token when the service refuses to give one.
    #[serde(default)]
    pub allow_imdsv1: bool,
    /// The deadline of each request to the metadata service.
    #[serde(default = "default_metadata_timeout", with = "serde_human")]
    pub timeout: Duration,
}

/// `[node_attestor.gcp_iit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpIitConfig {
    /// The metadata server's host name.
    #[serde(default = "default_gcp_host")]
    pub host: String,
    /// The service account whose identity token is asked for.
    #[serde(default = "default_gcp_service_account")]
    pub service_account: String,
    /// The token audience; must match the server's `audience`.
    #[serde(default = "default_gcp_audience")]
    pub audience: String,
    #[serde(default = "default_metadata_timeout", with = "serde_human")]
    pub timeout: Duration,
}

/// `[node_attestor.azure_msi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureMsiConfig {
    /// IMDS.
    #[serde(default = "default_aws_endpoint")]
    pub endpoint: String,
    /// The resource the token is asked for; must match the tenant's `resource_id` on
    /// the server.
    #[serde(default = "default_azure_resource")]
    pub resource_id: String,
    /// A user-assigned identity, by client ID, object ID or resource ID (default:
    /// the system-assigned identity).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub msi_res_id: Option<String>,
    #[serde(default = "default_metadata_timeout", with = "serde_human")]
    pub timeout: Duration,
}

fn default_psat_token_path() -> PathBuf {
    tessera_core::attestation::k8s_psat::DEFAULT_TOKEN_PATH.into()
}

/// `[node_attestor.k8s_psat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatConfig {
    /// The cluster's name, as the server's `clusters` table knows it.
    pub cluster: String,
    /// The projected service account token.
    #[serde(default = "default_psat_token_path")]
    pub token_path: PathBuf,
}

/// `[node_attestor.x509pop]`: the certificate, and its key in exactly one place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopConfig {
    /// PEM: the node's certificate, then the intermediates up to the CA.
    pub certificate_path: PathBuf,
    /// The key as a PKCS#8 file (PEM or DER).
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The key in the TPM: its blob file (`tessera-agent tpm create-key`).
    #[serde(default)]
    pub tpm_key_path: Option<PathBuf>,
    /// The TPM of `tpm_key_path` (default `device:/dev/tpmrm0`).
    #[serde(default)]
    pub tcti: Option<tessera_tpm::Tcti>,
    /// The key in a PKCS#11 token, named by `uri` with `object=` and/or `id=`.
    #[serde(default)]
    pub pkcs11: Option<tessera_hsm::Pkcs11Config>,
}

pub(crate) fn default_tcti() -> tessera_tpm::Tcti {
    tessera_tpm::Tcti::default_device()
}

impl std::fmt::Debug for JoinTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inline token is a secret: never in Debug output (and so never in logs).
        f.debug_struct("JoinTokenConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .field("token_credential", &self.token_credential)
            .finish()
    }
}

pub use crate::tpm_settings::{TpmDevIdConfig, TpmEkConfig};

/// Where the join token comes from: the first that is set. `--join-token-file` and
/// `$TESSERA_AGENT_JOIN_TOKEN` work as well (and `--join-token`, which warns).
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenConfig {
    /// The token inline (prefer a file, a variable or a credential).
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The name of an environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The name of a systemd credential holding the token.
    #[serde(default)]
    pub token_credential: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadAttestorsConfig {
    /// How long the attestors together may take for one caller; past it the call is
    /// Unavailable.
    #[serde(default = "default_workload_attestation_timeout", with = "serde_human")]
    pub timeout: Duration,
    #[serde(default)]
    pub unix: UnixAttestorConfig,
    /// `[workload_attestors.k8s]`: on when present.
    #[serde(default)]
    pub k8s: Option<K8sAttestorConfig>,
    /// `[workload_attestors.docker]`: on when present.
    #[serde(default)]
    pub docker: Option<DockerAttestorConfig>,
    /// `[workload_attestors.systemd]`: on when present.
    #[serde(default)]
    pub systemd: Option<SystemdAttestorConfig>,
}

impl Default for WorkloadAttestorsConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT,
            unix: UnixAttestorConfig::default(),
            k8s: None,
            docker: None,
            systemd: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SystemdAttestorConfig {
    /// The D-Bus address systemd is asked on (default: the system bus, as
    /// `DBUS_SYSTEM_BUS_ADDRESS` or `/run/dbus/system_bus_socket` give it).
    #[serde(default)]
    pub bus_address: Option<String>,
}

/// The workload attestors' deadline when the configuration sets none: longer than
/// the k8s attestor's default wait for a new pod to be listed (30 polls' worth and one
/// request).
pub const DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT: Duration = Duration::from_secs(60);

fn default_workload_attestation_timeout() -> Duration {
    DEFAULT_WORKLOAD_ATTESTATION_TIMEOUT
}

/// `[workload_attestors.k8s]`, named as SPIRE names its settings. See
/// docs/WORKLOAD_ATTESTATION.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sAttestorConfig {
    /// The kubelet's HTTPS port (default 10250 unless `kubelet_read_only_port` is set).
    #[serde(default)]
    pub kubelet_secure_port: Option<u16>,
    /// The kubelet's plain HTTP read-only port; excludes `kubelet_secure_port`.
    #[serde(default)]
    pub kubelet_read_only_port: Option<u16>,
    /// PEM CA certificates for the kubelet's serving certificate.
    #[serde(default = "default_kubelet_ca_path")]
    pub kubelet_ca_path: PathBuf,
    /// Accept any kubelet certificate (the bearer token is still sent).
    #[serde(default)]
    pub skip_kubelet_verification: bool,
    /// The bearer token for the kubelet, read at every request (tokens rotate).
    #[serde(default = "default_k8s_token_path")]
    pub token_path: PathBuf,
    /// The node's name: the kubelet's host. Overrides `node_name_env`.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The environment variable holding the node's name.
    #[serde(default = "default_node_name_env")]
    pub node_name_env: String,
    /// How many pod lists are searched for a caller's container before giving up.
    #[serde(default = "default_max_poll_attempts")]
    pub max_poll_attempts: u32,
    /// The wait between two of those pod lists.
    #[serde(default = "default_poll_retry_interval", with = "serde_human")]
    pub poll_retry_interval: Duration,
    /// Only pod selectors, no `container-name` or `container-image`.
    #[serde(default)]
    pub disable_container_selectors: bool,
}

fn default_kubelet_ca_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
}
fn default_k8s_token_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_node_name_env() -> String {
    "MY_NODE_NAME".into()
}
fn default_max_poll_attempts() -> u32 {
    60
}
fn default_poll_retry_interval() -> Duration {
    Duration::from_millis(500)
}

impl K8sAttestorConfig {
    fn validate(&self) -> Result<(), String> {
        if self.kubelet_secure_port.is_some() && self.kubelet_read_only_port.is_some() {
            return Err(
                "[workload_attestors.k8s] kubelet_secure_port and kubelet_read_only_port exclude each other".into(),
            );
        }
        if self.max_poll_attempts == 0 {
            return Err("[workload_attestors.k8s] max_poll_attempts must be at least 1".into());
        }
        if self.poll_retry_interval.is_zero() {
            // Zero would list the kubelet's pods back to back for every caller.
            return Err("[workload_attestors.k8s] poll_retry_interval must be more than 0".into());
        }
        Ok(())
    }
}

/// `[workload_attestors.docker]`. See docs/WORKLOAD_ATTESTATION.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerAttestorConfig {
    /// The engine's API socket, `unix:///path` (Docker's, or Podman's compatible one).
    #[serde(default = "default_docker_socket_path")]
    pub docker_socket_path: String,
    /// An API version to ask for (`1.41` asks `/v1.41/...`); none: the engine's own.
    #[serde(default)]
    pub docker_version: Option<String>,
    /// The container environment variables whose `NAME=value` become
    /// `docker:env:` selectors (none by default: environments often hold secrets).
    #[serde(default)]
    pub env_names: Vec<String>,
}

fn default_docker_socket_path() -> String {
    "unix:///var/run/docker.sock".into()
}

impl DockerAttestorConfig {
    /// The socket's path.
    pub fn socket(&self) -> Result<PathBuf, String> {
        match self.docker_socket_path.strip_prefix("unix://") {
            Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
            _ => Err(format!(
                "[workload_attestors.docker] docker_socket_path must be unix:///absolute/path, not {:?}",
                self.docker_socket_path
            )),
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.socket()?;
        if let Some(v) = &self.docker_version
            && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        {
            return Err(format!(
                "[workload_attestors.docker] docker_version is a version such as 1.41, not {v:?}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UnixAttestorConfig {
    /// Add `unix:path` and `unix:sha256` selectors for the caller's binary.
    #[serde(default)]
    pub discover_workload_path: bool,
    /// Binaries larger than this many bytes get no `sha256` selector (0: no limit).
    #[serde(default)]
    pub workload_size_limit: u64,
}

/// Why a configuration is unusable.
pub use tessera_process::config::InvalidConfig;

impl AgentConfig {
    /// Loads the file and applies `--set` flags and `TESSERA_AGENT_*` variables.
    pub fn load(path: &Path, flags: &[String]) -> Result<Self, InvalidConfig> {
        // TESSERA_AGENT_JOIN_TOKEN is the token itself, not a config key.
        let overrides = tessera_process::config::overrides(ENV_PREFIX, flags, &["join_token"])?;
        let cfg: AgentConfig = tessera_process::config::load(path, &overrides)?;
        if let Err(e) = cfg.validate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            return Err(e.in_file(&path.display().to_string(), &text));
        }
        Ok(cfg)
    }

    /// Parses configuration text (tests and embedded defaults).
    pub fn parse(text: &str) -> Result<Self, InvalidConfig> {
        let cfg: AgentConfig = tessera_process::config::parse("<config>", text, &[])?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        let rule =
            |key: &'static str, message: String| Err(InvalidConfig::Setting { key, message });
        if self.server_address.is_empty() && self.server_addresses.is_empty() {
            return rule("server_address", "server_address is required".into());
        }
        if self.trust_bundle_path.is_none() && !self.insecure_bootstrap {
            return rule(
                "insecure_bootstrap",
                "trust_bundle_path is required to trust the server the first time (or set insecure_bootstrap = true, which is unsafe)".into(),
            );
        }
        if self.workload_attestors.timeout < Duration::from_millis(100) {
            return rule(
                "workload_attestors.timeout",
                "workload_attestors.timeout must be at least 100ms".into(),
            );
        }
        if self.sync_interval < Duration::from_millis(100) {
            return rule(
                "sync_interval",
                "sync_interval must be at least 100ms".into(),
            );
        }
        if let Err(m) = self
            .measured_boot
            .validate(self.node_attestor.tpm_tcti().is_some())
        {
            return rule("measured_boot.pcrs", m);
        }
        let set = self.node_attestor.configured();
        if set.len() > 1 {
            return rule(
                "node_attestor",
                format!(
                    "configure one node attestor besides join_token: {} are all set",
                    set.iter()
                        .map(|n| format!("[node_attestor.{n}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if let Some(k) = &self.node_attestor.k8s_psat
            && k.cluster.trim().is_empty()
        {
            return rule(
                "node_attestor.k8s_psat.cluster",
                "[node_attestor.k8s_psat] cluster is empty: name the cluster as the server's \
                 node_attestors.k8s_psat.clusters does"
                    .into(),
            );
        }
        if let Some(x) = &self.node_attestor.x509pop {
            let keys = [
                x.private_key_path.is_some(),
                x.tpm_key_path.is_some(),
                x.pkcs11.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return rule(
                    "node_attestor.x509pop",
                    "[node_attestor.x509pop] needs exactly one of private_key_path, tpm_key_path \
                     and [node_attestor.x509pop.pkcs11]"
                        .into(),
                );
            }
            if x.tcti.is_some() && x.tpm_key_path.is_none() {
                return rule(
                    "node_attestor.x509pop.tcti",
                    "[node_attestor.x509pop] tcti is for tpm_key_path, which is not set".into(),
                );
            }
        }
        if let Some(k) = &self.workload_attestors.k8s
            && let Err(e) = k.validate()
        {
            return rule("workload_attestors.k8s", e);
        }
        if let Some(k) = &self.workload_attestors.k8s
            && k.poll_budget() >= self.workload_attestors.timeout
        {
            return rule(
                "workload_attestors.timeout",
                format!(
                    "workload_attestors.timeout ({}) must be longer than the k8s attestor's \
                     max_poll_attempts times poll_retry_interval plus its 10s request deadline \
                     ({}), or callers in new pods time out before the kubelet lists them",
                    tessera_core::duration::format_duration(self.workload_attestors.timeout),
                    tessera_core::duration::format_duration(k.poll_budget())
                ),
            );
        }
        if let Some(d) = &self.workload_attestors.docker
            && let Err(e) = d.validate()
        {
            return rule("workload_attestors.docker", e);
        }
        if matches!(self.key_manager, KeyManagerConfig::Tpm { tcti: None })
            && self.tpm_tcti().is_none()
        {
            return rule(
                "key_manager",
                "[key_manager] type = \"tpm\" needs a tcti (in [key_manager] or in a TPM node attestor section)".into(),
            );
        }
        if self.limits.max_connections == Some(0)
            || self.limits.max_connections_per_uid == Some(0)
            || self.limits.max_requests_per_uid == 0
        {
            return rule(
                if self.limits.max_connections == Some(0) {
                    "limits.max_connections"
                } else if self.limits.max_connections_per_uid == Some(0) {
                    "limits.max_connections_per_uid"
                } else {
                    "limits.max_requests_per_uid"
                },
                "[limits] max_connections, max_connections_per_uid and max_requests_per_uid must be at least 1".into(),
            );
        }
        if !self.socket_path.is_absolute() {
            return rule(
                "socket_path",
                format!(
                    "socket_path {} must be absolute",
                    self.socket_path.display()
                ),
            );
        }
        Ok(())
    }

    /// The TPM this agent uses: the key manager's, else the node attestor's. Both given
    /// and different is refused at start-up.
    pub fn tpm_tcti(&self) -> Option<tessera_tpm::Tcti> {
        if let KeyManagerConfig::Tpm { tcti: Some(t) } = &self.key_manager {
            return Some(t.clone());
        }
        self.node_attestor.tpm_tcti()
    }

    /// Every server address to try, `host:port`, in order.
    pub fn servers(&self) -> Vec<String> {
        let with_port = |a: &str| {
            if a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !a.ends_with(']')
            {
                a.to_owned()
            } else {
                format!("{a}:{}", self.server_port)
            }
        };
        std::iter::once(self.server_address.as_str())
            .filter(|a| !a.is_empty())
            .chain(self.server_addresses.iter().map(String::as_str))
            .map(with_port)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_and_defaults() {
        let c = AgentConfig::parse(
            "trust_domain = \"example.org\"\nserver_address = \"10.0.0.1\"\ntrust_bundle_path = \"/b.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.sync_interval, Duration::from_secs(5));
        assert_eq!(c.servers(), vec!["10.0.0.1:8081".to_string()]);
        assert!(matches!(c.key_manager, KeyManagerConfig::Disk {}));
        assert!(c.node_attestor.join_token.is_some());
    }

    #[test]
    fn container_attestors_take_spire_settings_and_refuse_contradictions() {
        let base = "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n";
        let c = AgentConfig::parse(&format!(
            "{base}[workload_attestors.k8s]\nnode_name_env = \"NODE\"\nskip_kubelet_verification = true\n[workload_attestors.docker]\nenv_names = [\"ROLE\"]\n"
        ))
        .unwrap();
        let k = c.workload_attestors.k8s.unwrap();
        assert_eq!(
            (
                k.kubelet_secure_port,
                k.max_poll_attempts,
                k.poll_retry_interval
            ),
            (None, 60, Duration::from_millis(500))
        );
        assert_eq!(k.token_path, default_k8s_token_path());
        let d = c.workload_attestors.docker.unwrap();
        assert_eq!(d.socket().unwrap(), PathBuf::from("/var/run/docker.sock"));
        assert!(
            AgentConfig::parse(base)
                .unwrap()
                .workload_attestors
                .k8s
                .is_none()
        );
        for (table, want) in [
            (
                "[workload_attestors.k8s]\nkubelet_secure_port = 1\nkubelet_read_only_port = 2\n",
                "exclude each other",
            ),
            (
                "[workload_attestors.k8s]\nmax_poll_attempts = 0\n",
                "at least 1",
            ),
            (
                "[workload_attestors.k8s]\npoll_retry_interval = \"0s\"\n",
                "poll_retry_interval must be more than 0",
            ),
            (
                "[workload_attestors.k8s]\nkubelet_port = 1\n",
                "kubelet_port",
            ),
            (
                "[workload_attestors.docker]\ndocker_socket_path = \"tcp://1.2.3.4:2375\"\n",
                "unix:///",
            ),
            (
                "[workload_attestors.docker]\ndocker_version = \"../x\"\n",
                "docker_version",
            ),
            (
                "[workload_attestors]\ntimeout = \"20s\"\n[workload_attestors.k8s]\n",
                "workload_attestors.timeout (20s) must be longer than the k8s attestor's max_poll_attempts times poll_retry_interval plus its 10s request deadline (40s)",
            ),
            (
                "[workload_attestors]\ntimeout = \"10ms\"\n",
                "at least 100ms",
            ),
            ("[workload_attestors.systemd]\naddress = \"x\"\n", "address"),
        ] {
            let e = AgentConfig::parse(&format!("{base}{table}")).unwrap_err();
            assert!(e.to_string().contains(want), "{table}: {e}");
        }
    }

    #[test]
    fn servers_keep_explicit_ports() {
        let c = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a:9\"\nserver_addresses = [\"b\"]\ninsecure_bootstrap = true\n",
        )
        .unwrap();
        assert_eq!(c.servers(), vec!["a:9".to_string(), "b:8081".to_string()]);
    }

    #[test]
    fn tpm_sections() {
        let c = AgentConfig::parse(
            r#"
trust_domain = "e.org"
server_address = "a"
insecure_bootstrap = true
[key_manager]
type = "tpm"
[node_attestor.tpm_devid]
tcti = "swtpm:host=127.0.0.1,port=2321"
devid_dir = "/var/lib/tessera/devid"
ek = "ecc-p384"
"#,
        )
        .unwrap();
        assert!(c.node_attestor.tpm_devid.is_some());
        assert!(c.tpm_tcti().is_some());
        let e = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n[key_manager]\ntype = \"tpm\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("tcti"), "{e}");
        let e = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n[node_attestor.tpm_ek]\n[node_attestor.tpm_devid]\ndevid_dir = \"/x\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "configure one node attestor besides join_token: [node_attestor.tpm_devid], \
                 [node_attestor.tpm_ek] are all set"
            ),
            "{e}"
        );
        let e = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n[node_attestor.tpm_ek]\nek = \"rsa-1024\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains(":5:"), "{e}");
    }

    #[test]
    fn cloud_and_certificate_sections() {
        let base = "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n";
        let c = AgentConfig::parse(&format!("{base}[node_attestor.aws_iid]\n")).unwrap();
        let aws = c.node_attestor.aws_iid.unwrap();
        assert_eq!(aws.endpoint, "http://169.254.169.254");
        assert!(!aws.allow_imdsv1);
        assert_eq!(aws.timeout, Duration::from_secs(5));
        let c = AgentConfig::parse(&format!(
            "{base}[node_attestor.gcp_iit]\naudience = \"edge\"\n"
        ))
        .unwrap();
        let gcp = c.node_attestor.gcp_iit.unwrap();
        assert_eq!(
            (
                gcp.host.as_str(),
                gcp.service_account.as_str(),
                gcp.audience.as_str()
            ),
            ("metadata.google.internal", "default", "edge")
        );
        let c = AgentConfig::parse(&format!(
            "{base}[node_attestor.azure_msi]\nclient_id = \"c1\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.node_attestor.azure_msi.unwrap().resource_id,
            "https://management.azure.com/"
        );
        let c = AgentConfig::parse(&format!(
            "{base}[node_attestor.k8s_psat]\ncluster = \"prod\"\n"
        ))
        .unwrap();
        let k8s = c.node_attestor.k8s_psat.unwrap();
        assert_eq!(
            (k8s.cluster.as_str(), k8s.token_path.to_str().unwrap()),
            ("prod", "/var/run/secrets/tokens/spire-agent")
        );
        let e = AgentConfig::parse(&format!("{base}[node_attestor.k8s_psat]\n")).unwrap_err();
        assert!(e.to_string().contains("cluster"), "{e}");
        let e = AgentConfig::parse(&format!("{base}[node_attestor.k8s_psat]\ncluster = \"\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("cluster is empty"), "{e}");
        let c = AgentConfig::parse(&format!(
            "{base}[node_attestor.x509pop]\ncertificate_path = \"/c.pem\"\ntpm_key_path = \"/k.tpmkey\"\n"
        ))
        .unwrap();
        assert_eq!(c.tpm_tcti(), Some(tessera_tpm::Tcti::default_device()));
        for (extra, want) in [
            (
                "[node_attestor.x509pop]\ncertificate_path = \"/c\"\n",
                "exactly one of private_key_path",
            ),
            (
                "[node_attestor.x509pop]\ncertificate_path = \"/c\"\nprivate_key_path = \"/k\"\ntpm_key_path = \"/t\"\n",
                "exactly one of",
            ),
            (
                "[node_attestor.x509pop]\ncertificate_path = \"/c\"\nprivate_key_path = \"/k\"\ntcti = \"device:/dev/tpmrm0\"\n",
                "tcti is for tpm_key_path",
            ),
            (
                "[node_attestor.aws_iid]\n[node_attestor.gcp_iit]\n",
                "[node_attestor.aws_iid], [node_attestor.gcp_iit] are all set",
            ),
            ("[node_attestor.aws_iid]\nimdsv1 = true\n", "imdsv1"),
        ] {
            let e = AgentConfig::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn an_inline_join_token_never_shows_in_debug_output() {
        let c = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n\
             [node_attestor.join_token]\ntoken = \"s3cret-t0ken\"\n",
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("s3cret-t0ken") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn limits() {
        let base = "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n";
        let c = AgentConfig::parse(base).unwrap();
        assert_eq!(c.limits.idle(), Some(Duration::from_secs(300)));
        // 768 descriptors for connections, two per connection (socket and pidfd).
        let caps = c.limits.connection_caps(1024);
        assert_eq!((caps.max_total, caps.max_per_peer), (384, 96));
        let caps = c.limits.connection_caps(1 << 20);
        assert_eq!((caps.max_total, caps.max_per_peer), (16384, 4096));
        let c = AgentConfig::parse(&format!(
            "{base}[limits]\nmax_connections = 40\nmax_connections_per_uid = 8\nidle_timeout = \"0s\"\n"
        ))
        .unwrap();
        let caps = c.limits.connection_caps(1024);
        assert_eq!((caps.max_total, caps.max_per_peer), (40, 8));
        assert_eq!(c.limits.idle(), None);
        let e = AgentConfig::parse(&format!("{base}[limits]\nmax_connections_per_uid = 0\n"))
            .unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = AgentConfig::parse(&format!("{base}[limits]\nmax_connections_per_ip = 3\n"))
            .unwrap_err();
        assert!(e.to_string().contains("max_connections_per_ip"), "{e}");
    }

    #[test]
    fn mistakes() {
        let e =
            AgentConfig::parse("trust_domain = \"e.org\"\nserver_address = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("trust_bundle_path"), "{e}");
        let e =
            AgentConfig::parse("trust_domain = \"e.org\"\nserver_adress = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
        let e = AgentConfig::parse(
            "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\nsocket_path = \"rel.sock\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn a_setting_misplaced_under_key_manager_is_refused() {
        let base = "trust_domain = \"e.org\"\nserver_address = \"a\"\ninsecure_bootstrap = true\n";
        for kind in ["memory", "disk"] {
            let c =
                AgentConfig::parse(&format!("{base}[key_manager]\ntype = \"{kind}\"\n")).unwrap();
            assert!(!matches!(c.key_manager, KeyManagerConfig::Tpm { .. }));
            let e = AgentConfig::parse(&format!(
                "{base}[key_manager]\ntype = \"{kind}\"\nsync_interval = \"500ms\"\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("sync_interval"), "{kind}: {e}");
        }
    }
}
