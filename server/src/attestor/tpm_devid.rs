//! TPM DevID attestation, server side: its configuration, and
//! `tessera_tpm::attestation::tpm_devid`'s verifier in the generic
//! [`ChallengeAttestor`]. The DevID chain must reach a configured vendor CA and the
//! EK certificate a configured manufacturer CA; the TPM proves it holds the DevID
//! key (a nonce signature), that the AK is its own (TPM2_Certify of the DevID key),
//! and that the EK is in the same TPM (credential activation).

use std::path::PathBuf;

use serde::Deserialize;
use tessera_tpm::attestation::tpm_devid::DevIdVerifier;

use super::AttestorConfigError;
use super::challenge::ChallengeAttestor;

/// The name agents use.
pub const NAME: &str = tessera_tpm::attestation::tpm_devid::NAME;

/// `[node_attestors.tpm_devid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmDevIdConfig {
    /// PEM file(s) of the vendor CAs that issue DevID certificates.
    pub devid_ca_bundle: Vec<PathBuf>,
    /// PEM file(s) of the TPM manufacturer root CAs that EK certificates chain to.
    pub ek_ca_bundle: Vec<PathBuf>,
    /// PEM file(s) of intermediate CAs between EK certificates and those roots (TPMs
    /// hold only the EK certificate itself in NV).
    #[serde(default)]
    pub ek_intermediates: Vec<PathBuf>,
    /// PEM file(s) of intermediate CAs between DevID certificates and the vendor CAs,
    /// when the agents' DevID chains do not carry them.
    #[serde(default)]
    pub devid_intermediates: Vec<PathBuf>,
    /// Refuse attestation and renewal unless the agent proves, with a TPM2_Certify
    /// by its attested AK, that its SVID key lives in its TPM (off by default).
    #[serde(default)]
    pub require_agent_key_in_tpm: bool,
    /// A file of allowed PCR values (SHA-256 bank): agents must send a TPM2_Quote
    /// matching it at attestation and at every renewal (see
    /// [`super::pcr_policy`]). Re-read when it changes.
    #[serde(default)]
    pub pcr_allow_list: Option<PathBuf>,
}

/// See the module documentation.
pub type TpmDevId = ChallengeAttestor<DevIdVerifier>;

impl TpmDevId {
    /// Loads the CA bundles; a missing or unreadable file is a start-up error.
    pub fn new(cfg: &TpmDevIdConfig) -> Result<Self, AttestorConfigError> {
        let devid = super::ca_pool(
            "node_attestors.tpm_devid.devid_ca_bundle",
            &cfg.devid_ca_bundle,
            &cfg.devid_intermediates,
        )?;
        let ek = super::ca_pool(
            "node_attestors.tpm_devid.ek_ca_bundle",
            &cfg.ek_ca_bundle,
            &cfg.ek_intermediates,
        )?;
        let a = Self::with_verifier(DevIdVerifier::new(devid, ek));
        super::challenge::with_policy(a, cfg.pcr_allow_list.as_deref(), NAME)
    }
}
