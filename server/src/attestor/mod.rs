//! The node attestor seam, server side: an attestor verifies what an agent sends,
//! issues challenges when it needs proof of possession, and decides the agent's ID and
//! node selectors. Each attestor lives in its own module, named as its agent half is.

use async_trait::async_trait;
use tessera_core::Selector;
use tessera_tpm::verifier::chain::{CaPool, ChainError};

pub mod aws_iid;
pub mod azure_msi;
pub mod challenge;
pub mod gcp_iit;
pub mod join_token;
pub mod jwt;
pub mod k8s_psat;
pub mod one_shot;
pub mod pcr_policy;
pub mod template;
pub mod tpm_devid;
pub mod tpm_ek;
pub mod x509pop;

/// Why an attestation was refused. The message is logged on the server and returned to
/// the agent, so it says what was wrong without revealing secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The agent's evidence is not acceptable.
    #[error("{0}")]
    Refused(String),
    /// The evidence is malformed.
    #[error("malformed attestation data: {0}")]
    Malformed(String),
    /// Something on the server failed; the agent may retry.
    #[error("attestation could not be completed: {0}")]
    Unavailable(String),
}

/// What a successful attestation establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The agent ID's path after `/spire/agent/`, e.g. `join_token/<token>`.
    pub agent_path: String,
    /// Node selectors, for node alias entries.
    pub selectors: Vec<Selector>,
    /// Whether the agent may attest again with the same evidence (TPM: yes; join
    /// token: no).
    pub can_reattest: bool,
    /// TPM attestors: the AK the attestation verified and the agent's proof that
    /// its SVID key is in the TPM, checked against the CSR by the agent API.
    pub tpm: Option<Box<TpmKeyEvidence>>,
}

/// What a TPM attestation hands the agent API about the agent's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKeyEvidence {
    /// The AK's TPMT_PUBLIC, verified by this attestation (kept per agent to check
    /// the certify sent with each renewal).
    pub ak_public: Vec<u8>,
    /// The nonce the server sent for the key certify.
    pub key_nonce: Vec<u8>,
    /// The agent's TPM2_Certify of its SVID key, if it sent one.
    pub key_certify: Option<tessera_tpm::verifier::key_proof::KeyCertify>,
    /// The agent's TPM2_Quote of its PCRs, if it sent one.
    pub pcr_quote: Option<tessera_tpm::verifier::quote::PcrQuote>,
}

/// One step of an attestation.
#[derive(Debug)]
pub enum Step {
    /// Send this challenge to the agent and feed its answer to the next step.
    Challenge(Vec<u8>),
    /// Done.
    Attested(Attested),
}

/// One attestation in progress. The state between challenge and answer lives here
/// and nowhere else, so an answer can only be checked against the challenge it
/// answers.
#[async_trait]
pub trait Session: Send {
    /// First call: the agent's payload. Later calls: its answers to challenges.
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError>;
}

/// A server-side node attestor.
#[async_trait]
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The name agents use (`join_token`, `tpm_devid`, `tpm_ek`, `aws_iid`, ...).
    fn name(&self) -> &'static str;

    /// Starts an attestation.
    fn session(&self) -> Box<dyn Session>;

    /// The measured-boot policy agents of this attestor are held to (TPM
    /// attestors with `pcr_allow_list`).
    fn pcr_policy(&self) -> Option<std::sync::Arc<pcr_policy::PcrPolicy>> {
        None
    }
}

/// Why a node attestor's configuration cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestorConfigError {
    /// A CA file cannot be read or holds no usable certificate (the source names it).
    #[error("{setting}: {source}")]
    CaFile {
        /// The configuration key, e.g. `node_attestors.tpm_ek.ek_ca_bundle`.
        setting: &'static str,
        #[source]
        source: ChainError,
    },
    /// A certificate in the CA files is not a usable CA (or intermediate).
    #[error("{setting}: {}{source}", if *intermediates { "intermediates: " } else { "" })]
    CaPool {
        /// The configuration key.
        setting: &'static str,
        /// Whether it is one of the intermediates.
        intermediates: bool,
        #[source]
        source: ChainError,
    },
    /// `tpm_ek` trusts nothing.
    #[error("node_attestors.tpm_ek needs ek_ca_bundle, ek_hash_allow_list or both")]
    NoEkTrust,
    /// The EK hash allow-list cannot be read.
    #[error("node_attestors.tpm_ek.ek_hash_allow_list {}: {source}", path.display())]
    AllowList {
        path: std::path::PathBuf,
        #[source]
        source: tessera_tpm::attestation::AttestError,
    },
    /// A cloud or certificate attestor's setting is unusable (the message names it).
    #[error("{0}")]
    Setting(String),
}

/// The cloud and certificate attestors the configuration enables, ready to serve
/// (key sets from files loaded, from URLs tried once); an unusable setting is an
/// error naming the attestor and the setting.
pub async fn cloud_and_certificate(
    cfg: &crate::config::NodeAttestorsConfig,
    trust_domain: &tessera_core::TrustDomain,
    clock: &tessera_core::clock::SharedClock,
) -> Result<Vec<std::sync::Arc<dyn NodeAttestor>>, (&'static str, AttestorConfigError)> {
    use std::sync::Arc;
    let fault = |name: &'static str| move |reason| (name, AttestorConfigError::Setting(reason));
    let mut out: Vec<Arc<dyn NodeAttestor>> = Vec::new();
    if let Some(c) = &cfg.aws_iid {
        let a = aws_iid::AwsIid::from_config(c, clock.clone())
            .map_err(fault(tessera_core::attestation::aws_iid::NAME))?;
        out.push(Arc::new(a));
    }
    if let Some(c) = &cfg.gcp_iit {
        let a = gcp_iit::GcpIit::from_config(c, clock.clone()).map_err(fault(gcp_iit::NAME))?;
        jwt::load_at_start(a.check().keys())
            .await
            .map_err(fault(gcp_iit::NAME))?;
        out.push(Arc::new(a));
    }
    if let Some(c) = &cfg.azure_msi {
        let a = azure_msi::AzureMsi::from_config(c, clock.clone())
            .map_err(fault(tessera_core::attestation::azure_msi::NAME))?;
        jwt::load_at_start(a.check().keys())
            .await
            .map_err(fault(tessera_core::attestation::azure_msi::NAME))?;
        out.push(Arc::new(a));
    }
    if let Some(c) = &cfg.k8s_psat {
        let a = k8s_psat::K8sPsat::from_config(c, clock.clone()).map_err(fault(k8s_psat::NAME))?;
        a.check().load_keys().await.map_err(fault(k8s_psat::NAME))?;
        out.push(Arc::new(a));
    }
    if let Some(c) = &cfg.x509pop {
        let a = x509pop::X509Pop::from_config(c, trust_domain.clone(), clock.clone())
            .map_err(fault(tessera_core::attestation::x509pop::NAME))?;
        out.push(Arc::new(a));
    }
    Ok(out)
}

/// A pool of trust anchors (and intermediates) from PEM files; an unreadable file is a
/// start-up error naming the setting and the file.
pub(crate) fn ca_pool(
    setting: &'static str,
    anchors: &[std::path::PathBuf],
    intermediates: &[std::path::PathBuf],
) -> Result<CaPool, AttestorConfigError> {
    let load = |paths: &[std::path::PathBuf]| -> Result<Vec<Vec<u8>>, AttestorConfigError> {
        let mut out = Vec::new();
        for p in paths {
            out.extend(
                tessera_tpm::verifier::chain::load_pem_file(p)
                    .map_err(|source| AttestorConfigError::CaFile { setting, source })?,
            );
        }
        Ok(out)
    };
    let pool_error = |intermediates| {
        move |source| AttestorConfigError::CaPool {
            setting,
            intermediates,
            source,
        }
    };
    let pool = CaPool::new(load(anchors)?).map_err(pool_error(false))?;
    if intermediates.is_empty() {
        return Ok(pool);
    }
    pool.with_intermediates(load(intermediates)?)
        .map_err(pool_error(true))
}
