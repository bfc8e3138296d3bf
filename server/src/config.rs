//! The server's configuration file (`/etc/tessera/server.toml`) and its defaults,
//! which follow SPIRE's where SPIRE's users would expect them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::TrustDomain;
use tessera_core::duration::serde_human;
use tessera_core::key::KeyType;
use tessera_process::secret::SecretSource;

/// Environment variables starting with this override configuration values.
pub const ENV_PREFIX: &str = "TESSERA_SERVER_";
/// Where the server looks for its configuration when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/tessera/server.toml";
/// The admin socket when the configuration names none.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/tessera/server/admin.sock";

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8081))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tessera/server")
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}
fn default_ca_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_x509_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_jwt_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh_hint() -> Duration {
    Duration::from_secs(300)
}
fn default_agent_sync_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_join_token_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_key_type() -> KeyType {
    KeyType::EcP256
}
fn default_log_level() -> String {
    "info".into()
}
fn default_true() -> bool {
    true
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_attestation_rate() -> f64 {
    1.0
}
fn default_attestation_burst() -> u32 {
    10
}

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The trust domain this server is the authority of.
    pub trust_domain: TrustDomain,
    /// Where agents connect (gRPC over TLS).
    #[serde(default = "default_bind")]
    pub bind_address: SocketAddr,
    /// State: the SQLite database and disk keys by default.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The admin API's Unix socket (mode 0770).
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` (the default) or `json`: one JSON object per log line.
    #[serde(default)]
    pub log_format: tessera_process::logging::LogFormat,
    /// Lifetime of each signing CA.
    #[serde(default = "default_ca_ttl", with = "serde_human")]
    pub ca_ttl: Duration,
    /// Default X509-SVID lifetime (an entry may set its own).
    #[serde(default = "default_x509_ttl", with = "serde_human")]
    pub x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime (an entry may set its own).
    #[serde(default = "default_jwt_ttl", with = "serde_human")]
    pub jwt_svid_ttl: Duration,
    /// Agent SVID lifetime; the X509-SVID default when unset.
    #[serde(default, with = "opt_duration")]
    pub agent_svid_ttl: Option<Duration>,
    #[serde(default = "default_key_type")]
    pub ca_key_type: KeyType,
    #[serde(default = "default_key_type")]
    pub jwt_key_type: KeyType,
    /// The `spiffe_refresh_hint` published in the bundle.
    #[serde(default = "default_refresh_hint", with = "serde_human")]
    pub bundle_refresh_hint: Duration,
    /// The longest sync interval of the trust domain's agents (theirs is 5 s by
    /// default): a new CA or JWT key is published for this plus
    /// `bundle_refresh_hint` before it signs anything.
    #[serde(default = "default_agent_sync_interval", with = "serde_human")]
    pub agent_sync_interval: Duration,
    /// This server's ID among servers sharing one datastore, on every CA record it
    /// makes; by default made once and kept in `<data_dir>/server_id`.
    #[serde(default)]
    pub server_id: Option<String>,
    /// Lifetime of join tokens made by `token generate` without `--ttl`.
    #[serde(default = "default_join_token_ttl", with = "serde_human")]
    pub default_join_token_ttl: Duration,
    #[serde(default)]
    pub datastore: DatastoreConfig,
    #[serde(default)]
    pub key_manager: KeyManagerConfig,
    /// Which TPM backend `[key_manager] type = "tpm"` talks to the TPM with: `esapi`
    /// (tpm2-tss, the default when built in) or `native` (pure Rust; the only one in
    /// a static build).
    #[serde(default)]
    pub tpm_backend: tessera_tpm::Backend,
    #[serde(default)]
    pub node_attestors: NodeAttestorsConfig,
    /// A root CA above the server's CA; without it the server's CA is a self-signed
    /// root.
    #[serde(default)]
    pub upstream_authority: Option<UpstreamAuthorityConfig>,
    /// What one client of the agent API may hold or ask for.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where audit records go (nowhere by default).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// SPIFFE IDs that may call the admin API over the TLS port, besides those of
    /// entries with `admin` set (SPIRE's `admin_ids`).
    #[serde(default)]
    pub admin_ids: Vec<tessera_core::SpiffeId>,
    /// The metrics and health listeners (`[telemetry]`); both off by default.
    #[serde(default)]
    pub telemetry: tessera_telemetry::http::TelemetryConfig,
    /// The `iss` claim of every JWT-SVID (an https URL, SPIRE's `jwt_issuer`); none
    /// when unset.
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    /// OpenID Connect discovery of the JWT keys (`[oidc_discovery]`); off when absent.
    #[serde(default)]
    pub oidc_discovery: Option<crate::oidc::OidcConfig>,
    /// The bundle endpoint and the trust domains this one federates with
    /// (`[federation]`); neither by default.
    #[serde(default)]
    pub federation: crate::federation::FederationConfig,
}

/// `[limits]`: connection caps, timeouts and the attestation rate of the agent API.
/// See docs/SECURITY.md for why these values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Agent API connections open at once (default: from the open-file limit, at
    /// most 65536).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Of those, how many one source address (IPv4) or /64 network (IPv6) may hold
    /// (default: an eighth of `max_connections`).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// A TLS handshake not finished in this time is dropped.
    #[serde(default = "default_handshake_timeout", with = "serde_human")]
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed (`0s`: never).
    #[serde(default = "default_idle_timeout", with = "serde_human")]
    pub idle_timeout: Duration,
    /// Attestations per second one source address may start (`0`: no limit). A
    /// successful attestation gives its allowance back: failures are what is metered.
    #[serde(default = "default_attestation_rate")]
    pub attestation_rate: f64,
    /// How many attestations a source may start at once before the rate applies.
    #[serde(default = "default_attestation_burst")]
    pub attestation_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_ip: None,
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            attestation_rate: default_attestation_rate(),
            attestation_burst: default_attestation_burst(),
        }
    }
}

/// The agent API's connection caps when the configuration sets none: the
/// descriptors the process can spare, at most this many.
pub const DEFAULT_MAX_CONNECTIONS_CEILING: usize = 65536;
/// One source address may hold this fraction of the connections by default.
pub const DEFAULT_PER_IP_SHARE: usize = 8;

impl LimitsConfig {
    /// The caps in force under the open-file limit `nofile`.
    pub fn connection_caps(&self, nofile: u64) -> tessera_process::limits::ConnCaps {
        tessera_process::limits::ConnCaps::derived(
            nofile,
            1,
            DEFAULT_MAX_CONNECTIONS_CEILING,
            DEFAULT_PER_IP_SHARE,
        )
        .with(self.max_connections, self.max_connections_per_ip)
    }

    /// The idle timeout, `None` when turned off.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

/// Who signs the server's CA certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpstreamAuthorityConfig {
    /// A root key in a PKCS#11 token, made by `tessera-server ca init` or named by a
    /// `pkcs11:` URI with `object=`/`id=`.
    Pkcs11 {
        /// The root certificate (PEM), written by `ca init` (default:
        /// `<data_dir>/upstream-root.pem`).
        #[serde(default)]
        root_cert: Option<PathBuf>,
        /// The root key's ID among Tessera's keys in the token (default
        /// `upstream-root`); ignored when the URI names an object.
        #[serde(default)]
        key_id: Option<String>,
        /// The token, PIN and module; may be the key manager's token.
        pkcs11: tessera_hsm::Pkcs11Config,
    },
    /// A root key and certificate in files (PKCS#8 and PEM).
    Disk {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// The default ID of the upstream root key in the token.
pub const DEFAULT_UPSTREAM_KEY_ID: &str = "upstream-root";

/// Optional human durations.
pub(crate) mod opt_duration {
    use super::*;
    use serde::Deserializer;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        serde_human::deserialize(d).map(Some)
    }
}

/// Which database holds the server's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DatastoreConfig {
    /// A SQLite file (default: `<data_dir>/datastore.sqlite3`).
    Sqlite {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// A PostgreSQL database, shared by several servers. Exactly one of
    /// `connection_string` (libpq `key=value` pairs or a `postgres://` URL) and
    /// `connection_string_file` (a file holding it, so that a password stays out of
    /// this file) is set.
    Postgres {
        #[serde(default)]
        connection_string: Option<ConnectionString>,
        #[serde(default)]
        connection_string_file: Option<PathBuf>,
    },
}

/// A PostgreSQL connection string; it may hold a password, so it never shows in
/// `Debug` output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ConnectionString(pub String);

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionString(<redacted>)")
    }
}

/// The datastore to open, resolved from the configuration.
#[derive(Debug, Clone)]
pub enum DatastoreTarget {
    Sqlite(PathBuf),
    Postgres(ConnectionString),
}

impl Default for DatastoreConfig {
    fn default() -> Self {
        DatastoreConfig::Sqlite { path: None }
    }
}

/// Where CA and JWT keys live.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyManagerConfig {
    /// In memory: lost on restart (a new CA every start; for tests). An empty
    /// struct, not a unit variant, so that unknown keys beside it are refused.
    Memory {},
    /// PKCS#8 files, mode 0600 (default: `<data_dir>/keys`).
    Disk {
        #[serde(default)]
        dir: Option<PathBuf>,
    },
    /// A PKCS#11 token (an HSM): keys are made inside it and never leave it.
    Pkcs11(tessera_hsm::Pkcs11Config),
    /// The TPM (a small edge server's CA key): keys are made under its SRK and only
    /// their blobs are kept, mode 0600 (default: `<data_dir>/keys`). A blob loads in
    /// no other TPM. The backend is the top-level `tpm_backend`.
    Tpm {
        /// The TPM (default `device:/dev/tpmrm0`).
        #[serde(default = "default_tcti")]
        tcti: tessera_tpm::Tcti,
        #[serde(default)]
        dir: Option<PathBuf>,
    },
}

fn default_tcti() -> tessera_tpm::Tcti {
    tessera_tpm::Tcti::default_device()
}

impl Default for KeyManagerConfig {
    fn default() -> Self {
        KeyManagerConfig::Disk { dir: None }
    }
}

/// The node attestors the server accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAttestorsConfig {
    #[serde(default)]
    pub join_token: JoinTokenConfig,
    /// TPM DevID attestation (off unless configured).
    #[serde(default)]
    pub tpm_devid: Option<crate::attestor::tpm_devid::TpmDevIdConfig>,
    /// TPM EK attestation (off unless configured).
    #[serde(default)]
    pub tpm_ek: Option<crate::attestor::tpm_ek::TpmEkConfig>,
    /// AWS EC2 instance identity documents (off unless configured).
    #[serde(default)]
    pub aws_iid: Option<crate::attestor::aws_iid::AwsIidConfig>,
    /// Google Compute Engine instance identity tokens (off unless configured).
    #[serde(default)]
    pub gcp_iit: Option<crate::attestor::gcp_iit::GcpIitConfig>,
    /// Azure managed identity tokens (off unless configured).
    #[serde(default)]
    pub azure_msi: Option<crate::attestor::azure_msi::AzureMsiConfig>,
    /// Kubernetes projected service account tokens (off unless configured).
    #[serde(default)]
    pub k8s_psat: Option<crate::attestor::k8s_psat::K8sPsatConfig>,
    /// X.509 certificates with proof of possession of their key (off unless
    /// configured).
    #[serde(default)]
    pub x509pop: Option<crate::attestor::x509pop::X509PopConfig>,
}

impl Default for NodeAttestorsConfig {
    fn default() -> Self {
        Self {
            join_token: JoinTokenConfig { enabled: true },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for JoinTokenConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

pub use tessera_process::config::InvalidConfig;

impl ServerConfig {
    /// Loads the file and applies `--set` flags and `TESSERA_SERVER_*` variables.
    pub fn load(path: &Path, flags: &[String]) -> Result<Self, InvalidConfig> {
        let overrides = tessera_process::config::overrides(ENV_PREFIX, flags, &[])?;
        let cfg: ServerConfig = tessera_process::config::load(path, &overrides)?;
        if let Err(e) = cfg.validate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            return Err(e.in_file(&path.display().to_string(), &text));
        }
        Ok(cfg)
    }

    /// Parses configuration text (for tests and embedded defaults).
    pub fn parse(text: &str) -> Result<Self, InvalidConfig> {
        let cfg: ServerConfig = tessera_process::config::parse("<config>", text, &[])?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        let rule =
            |key: &'static str, message: String| Err(InvalidConfig::Setting { key, message });
        if self.ca_ttl < Duration::from_secs(10) {
            return rule(
                "ca_ttl",
                format!("ca_ttl {:?} is too short (at least 10s)", self.ca_ttl),
            );
        }
        if self.agent_sync_interval.is_zero() {
            return rule(
                "agent_sync_interval",
                "agent_sync_interval must be positive".into(),
            );
        }
        // The next authority is published at half of the active one's life and takes
        // over with a sixth left: a third of the life to reach every agent.
        let propagation = self.ca_propagation();
        if self.ca_ttl / 3 < propagation {
            return rule(
                "ca_ttl",
                format!(
                    "ca_ttl {} leaves {} between publishing the next CA and signing with it, \
                     less than agent_sync_interval + bundle_refresh_hint ({}), the time agents \
                     and federated peers need to learn it: raise ca_ttl to at least {} or \
                     lower bundle_refresh_hint",
                    tessera_core::duration::format_duration(self.ca_ttl),
                    tessera_core::duration::format_duration(Duration::from_secs(
                        (self.ca_ttl / 3).as_secs()
                    )),
                    tessera_core::duration::format_duration(propagation),
                    tessera_core::duration::format_duration(propagation * 3),
                ),
            );
        }
        if let Some(id) = &self.server_id
            && let Err(e) = crate::server_id::check(id)
        {
            return rule("server_id", format!("server_id {id:?}: {e}"));
        }
        if let KeyManagerConfig::Tpm { .. } = &self.key_manager {
            for (key, kt) in [
                ("ca_key_type", self.ca_key_type),
                ("jwt_key_type", self.jwt_key_type),
            ] {
                if !tessera_tpm::device::keys::supported(kt) {
                    return rule(
                        key,
                        format!(
                            "{key} {kt} cannot be made in a TPM ([key_manager] type = \"tpm\" makes ec-p256, ec-p384, rsa-2048 and rsa-3072 keys)"
                        ),
                    );
                }
            }
        }
        if self.x509_svid_ttl.is_zero() {
            return rule("x509_svid_ttl", "SVID lifetimes must be positive".into());
        }
        if self.jwt_svid_ttl.is_zero() {
            return rule("jwt_svid_ttl", "SVID lifetimes must be positive".into());
        }
        if let Err((key, message)) =
            crate::oidc::check(self.jwt_issuer.as_deref(), self.oidc_discovery.as_ref())
        {
            return rule(key, message);
        }
        if let Err((key, message)) = crate::federation::check(&self.trust_domain, &self.federation)
        {
            return rule(key, message);
        }
        if let DatastoreConfig::Postgres {
            connection_string,
            connection_string_file,
        } = &self.datastore
        {
            match (connection_string, connection_string_file) {
                (Some(_), Some(_)) => {
                    return rule(
                        "datastore",
                        "[datastore] sets both connection_string and connection_string_file; \
                         set one"
                            .into(),
                    );
                }
                (None, None) => {
                    return rule(
                        "datastore",
                        "[datastore] type \"postgres\" needs connection_string or \
                         connection_string_file"
                            .into(),
                    );
                }
                (Some(s), None) if s.0.trim().is_empty() => {
                    return rule(
                        "datastore.connection_string",
                        "[datastore] connection_string is empty".into(),
                    );
                }
                _ => {}
            }
        }
        let l = &self.limits;
        if l.max_connections == Some(0) || l.max_connections_per_ip == Some(0) {
            return rule(
                if l.max_connections == Some(0) {
                    "limits.max_connections"
                } else {
                    "limits.max_connections_per_ip"
                },
                "[limits] max_connections and max_connections_per_ip must be at least 1".into(),
            );
        }
        if l.handshake_timeout.is_zero() {
            return rule(
                "limits.handshake_timeout",
                "[limits] handshake_timeout must be positive".into(),
            );
        }
        if !l.attestation_rate.is_finite() || l.attestation_rate < 0.0 {
            return rule(
                "limits.attestation_rate",
                format!(
                    "[limits] attestation_rate {} must be a number of attestations per second, \
                 0 or more (0 turns the limit off)",
                    l.attestation_rate
                ),
            );
        }
        if l.attestation_rate > 0.0 && l.attestation_burst == 0 {
            return rule(
                "limits.attestation_burst",
                "[limits] attestation_burst must be at least 1".into(),
            );
        }
        for id in &self.admin_ids {
            if !id.is_member_of(&self.trust_domain) {
                return rule(
                    "admin_ids",
                    format!(
                        "admin_ids: {id} is not in the trust domain {}: the TLS port accepts \
                     only X509-SVIDs of its own trust domain",
                        self.trust_domain
                    ),
                );
            }
            if id.is_reserved() {
                return rule(
                    "admin_ids",
                    format!(
                        "admin_ids: {id} is reserved for the server and its agents (/spire), \
                     which may not administer the server"
                    ),
                );
            }
        }
        if self.x509_svid_ttl > self.ca_ttl {
            tracing::warn!(
                "x509_svid_ttl is longer than ca_ttl: SVIDs will be cut short at the CA's expiry"
            );
        }
        Ok(())
    }

    /// How long a new authority is published before it signs.
    pub fn ca_propagation(&self) -> Duration {
        self.agent_sync_interval
            .saturating_add(self.bundle_refresh_hint)
    }

    pub fn agent_svid_ttl(&self) -> Duration {
        self.agent_svid_ttl.unwrap_or(self.x509_svid_ttl)
    }

    /// Whether agents attested by `attestor` must prove their SVID key is in their
    /// TPM (`require_agent_key_in_tpm` of `tpm_devid` or `tpm_ek`).
    pub fn requires_agent_key_in_tpm(&self, attestor: &str) -> bool {
        let n = &self.node_attestors;
        match attestor {
            crate::attestor::tpm_devid::NAME => n
                .tpm_devid
                .as_ref()
                .is_some_and(|c| c.require_agent_key_in_tpm),
            crate::attestor::tpm_ek::NAME => n
                .tpm_ek
                .as_ref()
                .is_some_and(|c| c.require_agent_key_in_tpm),
            _ => false,
        }
    }

    /// Where the upstream root certificate lives.
    pub fn upstream_root_cert(&self) -> Option<PathBuf> {
        match &self.upstream_authority {
            Some(UpstreamAuthorityConfig::Pkcs11 { root_cert, .. }) => Some(
                root_cert
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("upstream-root.pem")),
            ),
            Some(UpstreamAuthorityConfig::Disk { cert_file, .. }) => Some(cert_file.clone()),
            None => None,
        }
    }

    /// The datastore to open; reads `connection_string_file` (trimmed) when set.
    pub fn datastore_target(&self) -> Result<DatastoreTarget, InvalidConfig> {
        match &self.datastore {
            DatastoreConfig::Sqlite { path } => {
                Ok(DatastoreTarget::Sqlite(path.clone().unwrap_or_else(|| {
                    self.data_dir.join("datastore.sqlite3")
                })))
            }
            DatastoreConfig::Postgres {
                connection_string: Some(s),
                ..
            } => Ok(DatastoreTarget::Postgres(s.clone())),
            DatastoreConfig::Postgres {
                connection_string_file: Some(file),
                ..
            } => {
                let text = SecretSource::File(file.clone())
                    .read_text()
                    .map_err(|source| InvalidConfig::Secret {
                        key: "datastore.connection_string_file",
                        setting: "[datastore] connection_string_file",
                        source,
                    })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(InvalidConfig::Setting {
                        key: "datastore.connection_string_file",
                        message: format!(
                            "[datastore] connection_string_file {} is empty",
                            file.display()
                        ),
                    });
                }
                Ok(DatastoreTarget::Postgres(ConnectionString(text.to_owned())))
            }
            DatastoreConfig::Postgres { .. } => Err(InvalidConfig::Rule(
                "[datastore] type \"postgres\" needs connection_string or \
                 connection_string_file"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_spire_like() {
        let c = ServerConfig::parse("trust_domain = \"example.org\"").unwrap();
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.agent_svid_ttl(), c.x509_svid_ttl);
        assert_eq!(c.ca_key_type, KeyType::EcP256);
        assert_eq!(c.default_join_token_ttl, Duration::from_secs(600));
        assert!(c.node_attestors.join_token.enabled);
        assert!(matches!(c.key_manager, KeyManagerConfig::Disk { .. }));
    }

    #[test]
    fn full_file() {
        let c = ServerConfig::parse(
            r#"
trust_domain = "Example.ORG"
bind_address = "127.0.0.1:9000"
ca_ttl = "2h"
x509_svid_ttl = "10m"
ca_key_type = "ec-p384"

[datastore]
type = "sqlite"
path = "/tmp/x.db"

[key_manager]
type = "memory"
"#,
        )
        .unwrap();
        assert_eq!(c.trust_domain.name(), "example.org");
        assert_eq!(c.ca_ttl, Duration::from_secs(7200));
        match c.datastore_target().unwrap() {
            DatastoreTarget::Sqlite(path) => assert_eq!(path, PathBuf::from("/tmp/x.db")),
            DatastoreTarget::Postgres(_) => panic!("sqlite expected"),
        }
        assert!(matches!(c.key_manager, KeyManagerConfig::Memory {}));
    }

    #[test]
    fn durations_are_bare_seconds_or_human_text_in_files_and_flags() {
        let c = ServerConfig::parse(
            "trust_domain = \"e.org\"\nca_ttl = 86400\nx509_svid_ttl = \"1h 30m\"\n\
             jwt_svid_ttl = \"90s\"\nagent_svid_ttl = 7200\ndefault_join_token_ttl = \"2d\"\n\
             [limits]\nidle_timeout = 0\nhandshake_timeout = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(5400));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(90));
        assert_eq!(c.agent_svid_ttl, Some(Duration::from_secs(7200)));
        assert_eq!(c.default_join_token_ttl, Duration::from_secs(2 * 86400));
        assert_eq!(c.limits.idle_timeout, Duration::ZERO);
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(250));
        // `--set` values are TOML too: a bare number is seconds there as well.
        let flags = [
            "x509_svid_ttl=120".to_owned(),
            "jwt_svid_ttl=\"5m\"".to_owned(),
        ];
        let ov = tessera_process::config::overrides("TESSERA_SERVER_DURATION_TEST_", &flags, &[])
            .unwrap();
        let c: ServerConfig =
            tessera_process::config::parse("<t>", "trust_domain = \"e.org\"\n", &ov).unwrap();
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(120));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
        // A negative number or a fraction is not a duration.
        for bad in ["ca_ttl = -5", "ca_ttl = 1.5"] {
            let text = format!("trust_domain = \"e.org\"\n{bad}\n");
            assert!(ServerConfig::parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn datastore_defaults_to_sqlite_in_data_dir() {
        let c = ServerConfig::parse("trust_domain = \"e.org\"\ndata_dir = \"/d\"\n").unwrap();
        match c.datastore_target().unwrap() {
            DatastoreTarget::Sqlite(path) => {
                assert_eq!(path, PathBuf::from("/d/datastore.sqlite3"));
            }
            DatastoreTarget::Postgres(_) => panic!("sqlite expected"),
        }
    }

    #[test]
    fn postgres_datastore() {
        let c = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[datastore]\ntype = \"postgres\"\n\
             connection_string = \"host=db port=5432 user=tessera password=hunter2\"\n",
        )
        .unwrap();
        match c.datastore_target().unwrap() {
            DatastoreTarget::Postgres(s) => {
                assert_eq!(s.0, "host=db port=5432 user=tessera password=hunter2");
            }
            DatastoreTarget::Sqlite(_) => panic!("postgres expected"),
        }
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the password is redacted"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg");
        std::fs::write(&file, "  postgres://tessera:pw@db/tessera\n").unwrap();
        let c = ServerConfig::parse(&format!(
            "trust_domain = \"e.org\"\n[datastore]\ntype = \"postgres\"\n\
             connection_string_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        match c.datastore_target().unwrap() {
            DatastoreTarget::Postgres(s) => assert_eq!(s.0, "postgres://tessera:pw@db/tessera"),
            DatastoreTarget::Sqlite(_) => panic!("postgres expected"),
        }
        std::fs::write(&file, " \n").unwrap();
        let e = c.datastore_target().err().unwrap();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = c.datastore_target().err().unwrap();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");

        let e = ServerConfig::parse("trust_domain = \"e.org\"\n[datastore]\ntype = \"postgres\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("connection_string"), "{e}");
        let e = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[datastore]\ntype = \"postgres\"\n\
             connection_string = \"host=db\"\nconnection_string_file = \"/x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
        let e = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[datastore]\ntype = \"postgres\"\npath = \"/x\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("path"),
            "unknown fields are refused: {e}"
        );
    }

    #[test]
    fn pkcs11_sections() {
        let c = ServerConfig::parse(
            r#"
trust_domain = "example.org"
[key_manager]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "tessera"
pin_file = "/etc/tessera/hsm.pin"

[upstream_authority]
type = "pkcs11"
[upstream_authority.pkcs11]
uri = "pkcs11:token=root;object=tessera-root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/pin"
"#,
        )
        .unwrap();
        match &c.key_manager {
            KeyManagerConfig::Pkcs11(p) => assert_eq!(p.token_label.as_deref(), Some("tessera")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.upstream_authority,
            Some(UpstreamAuthorityConfig::Pkcs11 { .. })
        ));
        assert_eq!(
            c.upstream_root_cert().unwrap(),
            PathBuf::from("/var/lib/tessera/server/upstream-root.pem")
        );
        let e = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[key_manager]\ntype = \"pkcs11\"\nmodul = \"x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("modul"), "{e}");
    }

    #[test]
    fn cloud_and_certificate_attestor_sections() {
        let c = ServerConfig::parse(
            r#"
trust_domain = "example.org"
[node_attestors.aws_iid]
account_ids = ["123456789012"]
max_document_age = "1h"
region_certificates = { "us-east-1" = "/etc/tessera/aws-us-east-1.pem" }
[node_attestors.gcp_iit]
projectid_allow_list = ["edge-prod"]
jwks_refresh = "30m"
[node_attestors.azure_msi.tenants."72f988bf-86f1-41af-91ab-2d7cd011db47"]
resource_id = "api://tessera-node"
[node_attestors.k8s_psat.clusters.prod]
service_account_allow_list = ["spire:spire-agent"]
allowed_pod_label_keys = ["app"]
[node_attestors.k8s_psat.clusters.prod.api]
server = "https://10.0.0.1:6443"
ca_file = "/etc/tessera/k8s-prod-ca.pem"
token_file = "/etc/tessera/k8s-prod-token"
[node_attestors.k8s_psat.clusters.edge]
service_account_allow_list = ["spire:spire-agent"]
[node_attestors.k8s_psat.clusters.edge.offline]
issuer = "https://kubernetes.default.svc.cluster.local"
jwks_file = "/etc/tessera/k8s-edge-jwks.json"
[node_attestors.x509pop]
ca_bundle = ["/etc/tessera/node-ca.pem"]
agent_path_template = "/{{ .PluginName }}/{{ .Subject.CommonName }}"
"#,
        )
        .unwrap();
        let a = &c.node_attestors;
        let aws = a.aws_iid.as_ref().unwrap();
        assert_eq!(aws.max_document_age, Some(Duration::from_secs(3600)));
        assert!(aws.builtin_certificates && !aws.allow_reattestation);
        let gcp = a.gcp_iit.as_ref().unwrap();
        assert_eq!(gcp.audience, "tessera-gcp-node-attestor");
        assert_eq!(gcp.jwks_refresh, Duration::from_secs(1800));
        let azure = a.azure_msi.as_ref().unwrap();
        assert_eq!(azure.tenants.len(), 1);
        assert_eq!(a.x509pop.as_ref().unwrap().max_intermediates, 4);
        let k8s = &a.k8s_psat.as_ref().unwrap().clusters;
        assert_eq!(k8s["prod"].audience, ["spire-server"]);
        assert_eq!(
            k8s["prod"].api.as_ref().unwrap().timeout,
            Duration::from_secs(10)
        );
        assert!(k8s["prod"].offline.is_none() && k8s["edge"].api.is_none());
        assert_eq!(
            k8s["edge"].offline.as_ref().unwrap().refresh,
            Duration::from_secs(3600)
        );
        let e = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[node_attestors.gcp_iit]\nprojectid_allow_list = []\nproject = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("project"), "{e}");
    }

    #[test]
    fn limits() {
        let c = ServerConfig::parse("trust_domain = \"e.org\"").unwrap();
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle(), Some(Duration::from_secs(120)));
        assert_eq!(c.limits.attestation_rate, 1.0);
        assert_eq!(c.limits.attestation_burst, 10);
        let caps = c.limits.connection_caps(20_000);
        assert_eq!((caps.max_total, caps.max_per_peer), (18_976, 2372));
        let c = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[limits]\nmax_connections = 100\n\
             max_connections_per_ip = 10\nidle_timeout = \"0s\"\nattestation_rate = 0\n",
        )
        .unwrap();
        let caps = c.limits.connection_caps(20_000);
        assert_eq!((caps.max_total, caps.max_per_peer), (100, 10));
        assert_eq!(c.limits.idle(), None);
        for bad in [
            "max_connections = 0",
            "max_connections_per_ip = 0",
            "handshake_timeout = \"0s\"",
            "attestation_rate = -1",
            "attestation_rate = nan",
            "attestation_burst = 0",
            "max_conections = 5",
        ] {
            let e = ServerConfig::parse(&format!("trust_domain = \"e.org\"\n[limits]\n{bad}\n"))
                .unwrap_err();
            assert!(
                e.to_string().contains("limits") || e.to_string().contains(":3:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn mistakes_are_reported_with_a_line() {
        let e = ServerConfig::parse("trust_domain = \"example.org\"\nbind_adress = \"x\"\n")
            .unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
        assert!(e.to_string().contains("bind_adress"), "{e}");
        let e = ServerConfig::parse("trust_domain = \"exa mple\"\n").unwrap_err();
        assert!(e.to_string().contains("trust domain"), "{e}");
        let e = ServerConfig::parse("trust_domain = \"e.org\"\nca_ttl = \"1x\"\n").unwrap_err();
        assert!(e.to_string().contains("is not a duration"), "{e}");
        assert!(e.to_string().contains("unknown time unit"), "{e}");
        let e = ServerConfig::parse("trust_domain = \"e.org\"\n[key_manager]\ntype = \"tape\"\n")
            .unwrap_err();
        assert!(e.to_string().contains(":3:"), "{e}");
        let e = ServerConfig::parse("trust_domain = \"e.org\"\nca_ttl = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        let e = ServerConfig::parse("bind_address = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.to_string().contains("trust_domain"), "{e}");
    }

    #[test]
    fn a_ca_lifetime_must_leave_agents_time_to_learn_the_next_ca() {
        let c = ServerConfig::parse("trust_domain = \"e.org\"\n").unwrap();
        assert_eq!(c.agent_sync_interval, Duration::from_secs(5));
        assert_eq!(c.ca_propagation(), Duration::from_secs(305));
        assert_eq!(c.server_id, None);
        // 10m leaves 3m20s, less than 5s + 5m.
        let e = ServerConfig::parse("trust_domain = \"e.org\"\nca_ttl = \"10m\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ca_ttl 10m leaves 3m 20s"), "{e}");
        assert!(
            text.contains("agent_sync_interval + bundle_refresh_hint (5m 5s)"),
            "{e}"
        );
        assert!(text.contains("at least 15m 15s"), "{e}");
        let c = ServerConfig::parse(
            "trust_domain = \"e.org\"\nca_ttl = \"10m\"\nbundle_refresh_hint = \"1m\"\n\
             agent_sync_interval = \"10s\"\nserver_id = \"eu-1.a_b\"\n",
        )
        .unwrap();
        assert_eq!(c.ca_propagation(), Duration::from_secs(70));
        assert_eq!(c.server_id.as_deref(), Some("eu-1.a_b"));
        for (bad, says) in [
            ("agent_sync_interval = \"0s\"", "must be positive"),
            ("server_id = \"\"", "1 to 64"),
            ("server_id = \"a b\"", "' ' is not allowed"),
        ] {
            let e = ServerConfig::parse(&format!("trust_domain = \"e.org\"\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn tpm_key_manager_defaults_and_refusals() {
        let c = ServerConfig::parse("trust_domain = \"e.org\"\n[key_manager]\ntype = \"tpm\"\n")
            .unwrap();
        match &c.key_manager {
            KeyManagerConfig::Tpm { tcti, dir } => {
                assert_eq!(*tcti, tessera_tpm::Tcti::default_device());
                assert_eq!(*dir, None);
            }
            other => panic!("tpm expected: {other:?}"),
        }
        assert_eq!(c.tpm_backend, tessera_tpm::Backend::default());
        let c = ServerConfig::parse(
            "trust_domain = \"e.org\"\ntpm_backend = \"native\"\n[key_manager]\ntype = \"tpm\"\n\
             tcti = \"swtpm:host=127.0.0.1,port=2321\"\ndir = \"/srv/keys\"\n",
        )
        .unwrap();
        assert_eq!(c.tpm_backend, tessera_tpm::Backend::Native);
        match &c.key_manager {
            KeyManagerConfig::Tpm { tcti, dir } => {
                assert_eq!(tcti.to_string(), "swtpm:host=127.0.0.1,port=2321");
                assert_eq!(dir.as_deref(), Some(Path::new("/srv/keys")));
            }
            other => panic!("tpm expected: {other:?}"),
        }
        for (bad, says) in [
            ("[key_manager]\ntype = \"tpm\"\ntcit = \"x\"", "tcit"),
            (
                "[key_manager]\ntype = \"tpm\"\ntcti = \"serial:/x\"",
                "bad TPM TCTI setting \"serial:/x\"",
            ),
            ("tpm_backend = \"tss\"", "unknown TPM backend \"tss\""),
            (
                "ca_key_type = \"rsa-4096\"\n[key_manager]\ntype = \"tpm\"",
                "ca_key_type rsa-4096 cannot be made in a TPM",
            ),
            (
                "jwt_key_type = \"rsa-4096\"\n[key_manager]\ntype = \"tpm\"",
                "jwt_key_type rsa-4096",
            ),
        ] {
            let e = ServerConfig::parse(&format!("trust_domain = \"e.org\"\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_setting_misplaced_under_key_manager_is_refused() {
        let c = ServerConfig::parse("trust_domain = \"e.org\"\n[key_manager]\ntype = \"memory\"\n")
            .unwrap();
        assert!(matches!(c.key_manager, KeyManagerConfig::Memory {}));
        let e = ServerConfig::parse(
            "trust_domain = \"e.org\"\n[key_manager]\ntype = \"memory\"\nca_ttl = \"2h\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ca_ttl"), "{e}");
    }
}
