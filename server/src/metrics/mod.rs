//! What the server measures, for Prometheus (`[metrics] address`).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tessera_rpc_calls_total`, `tessera_rpc_duration_seconds`, `tessera_rpc_in_flight` | service, method (code) | agent and admin API calls ([`tessera_telemetry::rpc`]) |
//! | `tessera_server_attestations_total` | attestor, outcome | node attestations: `ok`, or the refusal's gRPC code |
//! | `tessera_server_svids_issued_total` | kind | `agent` X509-SVIDs (attestation and renewal), `workload` X509-SVIDs, `jwt` SVIDs |
//! | `tessera_server_authority_expiry_seconds` | authority | when the active X.509 CA (`x509_ca`) and JWT key (`jwt_key`) expire, Unix seconds |
//! | `tessera_server_key_sign_duration_seconds` | key_manager | signing latency by key manager (`pkcs11` for the HSM) |
//! | `tessera_server_key_sign_errors_total` | key_manager | signatures that failed |
//! | `tessera_server_datastore_duration_seconds` | op | datastore call latency by operation |
//! | `tessera_server_datastore_errors_total` | op, kind | datastore calls that failed (`unavailable`, `backend`, `conflict`, `invalid`; not-found and already-exists answers are results, not errors) |
//! | `tessera_server_entries`, `tessera_server_agents` | | registration entries and attested agents |

mod datastore;
mod keys;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tessera_telemetry::rpc::{LatencyHistograms, RpcMetrics};

pub use datastore::MeteredDatastore;
pub use keys::MeteredKeyManager;

/// One label: a name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestLabels {
    /// The node attestor.
    pub attestor: String,
    /// `ok`, or the gRPC code of the refusal.
    pub outcome: String,
}

/// An SVID's kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `agent`, `workload` or `jwt`.
    pub kind: &'static str,
}

/// An authority's kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    /// `x509_ca` or `jwt_key`.
    pub authority: &'static str,
}

/// A key manager.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyManagerLabels {
    /// `memory`, `disk` or `pkcs11`.
    pub key_manager: &'static str,
}

/// A datastore operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation (the datastore method's name).
    pub op: &'static str,
}

/// A failed datastore operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpErrorLabels {
    /// The operation.
    pub op: &'static str,
    /// What kind of failure.
    pub kind: &'static str,
}

/// Every metric the server keeps. Always kept (counting costs next to nothing);
/// exposed only when `[metrics] address` is set.
#[derive(Debug)]
pub struct ServerMetrics {
    /// The filled registry.
    pub registry: Arc<Registry>,
    /// Agent and admin API calls.
    pub rpc: RpcMetrics,
    attestations: Family<AttestLabels, Counter>,
    svids: Family<KindLabels, Counter>,
    expiry: Family<AuthorityLabels, Gauge>,
    sign: Family<KeyManagerLabels, Histogram, LatencyHistograms>,
    sign_errors: Family<KeyManagerLabels, Counter>,
    ds: Family<OpLabels, Histogram, LatencyHistograms>,
    ds_errors: Family<OpErrorLabels, Counter>,
    entries: Gauge,
    agents: Gauge,
    measured_boot_refused: Family<KindLabels, Counter>,
}

impl ServerMetrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut r = tessera_telemetry::metrics::registry();
        let rpc = RpcMetrics::register(&mut r);
        let mut m = ServerMetrics {
            registry: Arc::new(Registry::default()),
            rpc,
            attestations: Family::default(),
            svids: Family::default(),
            expiry: Family::default(),
            sign: Family::new_with_constructor(LatencyHistograms),
            sign_errors: Family::default(),
            ds: Family::new_with_constructor(LatencyHistograms),
            ds_errors: Family::default(),
            entries: Gauge::default(),
            agents: Gauge::default(),
            measured_boot_refused: Family::default(),
        };
        let s = r.sub_registry_with_prefix("server");
        s.register(
            "attestations",
            "Node attestations by attestor and outcome",
            m.attestations.clone(),
        );
        s.register("svids_issued", "SVIDs issued by kind", m.svids.clone());
        s.register(
            "authority_expiry_seconds",
            "Expiry of the active X.509 CA and JWT key, Unix seconds",
            m.expiry.clone(),
        );
        s.register(
            "key_sign_duration_seconds",
            "Signing latency by key manager",
            m.sign.clone(),
        );
        s.register(
            "key_sign_errors",
            "Failed signatures by key manager",
            m.sign_errors.clone(),
        );
        s.register(
            "datastore_duration_seconds",
            "Datastore call latency by operation",
            m.ds.clone(),
        );
        s.register(
            "datastore_errors",
            "Failed datastore calls by operation and kind",
            m.ds_errors.clone(),
        );
        s.register("entries", "Registration entries", m.entries.clone());
        s.register("agents", "Attested agents", m.agents.clone());
        s.register(
            "measured_boot_refusals",
            "Agents refused because their PCR quote failed or did not match the allow-list, by phase (attestation or renewal)",
            m.measured_boot_refused.clone(),
        );
        m.registry = Arc::new(r);
        Arc::new(m)
    }

    /// Counts an agent refused by its measured-boot policy at `phase`
    /// (`attestation` or `renewal`).
    pub fn measured_boot_refused(&self, phase: &'static str) {
        self.measured_boot_refused
            .get_or_create(&KindLabels { kind: phase })
            .inc();
    }

    /// Counts an attestation.
    pub fn attestation(&self, attestor: &str, outcome: &str) {
        self.attestations
            .get_or_create(&AttestLabels {
                attestor: attestor.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts `n` SVIDs of `kind` issued.
    pub fn issued(&self, kind: &'static str, n: u64) {
        self.svids.get_or_create(&KindLabels { kind }).inc_by(n);
    }

    /// Records when the active authority of `authority` expires.
    pub fn authority_expiry(&self, authority: &'static str, unix: i64) {
        self.expiry
            .get_or_create(&AuthorityLabels { authority })
            .set(unix);
    }

    /// Records the registry's sizes.
    pub fn sizes(&self, entries: usize, agents: usize) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.agents.set(i64::try_from(agents).unwrap_or(i64::MAX));
    }
}

/// The code name of a refusal, for the `outcome` label.
pub fn outcome(status: &tonic::Status) -> &'static str {
    tessera_telemetry::rpc::code_name(status.code() as i32)
}
