//! TPM EK attestation, server side: its configuration, and
//! `tessera_tpm::attestation::tpm_ek`'s verifier in the generic
//! [`ChallengeAttestor`]. The EK is trusted by its certificate chain to a
//! configured manufacturer CA or by the SHA-256 of its public key on an allow-list
//! (a file or folder, re-read when it changes); credential activation proves the
//! EK and the fresh AK are in one TPM.

use std::path::PathBuf;

use serde::Deserialize;
use tessera_tpm::attestation::tpm_ek::{EkAllowList, EkVerifier};

use super::AttestorConfigError;
use super::challenge::ChallengeAttestor;

/// The name agents use.
pub const NAME: &str = tessera_tpm::attestation::tpm_ek::NAME;

/// `[node_attestors.tpm_ek]`: at least one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEkConfig {
    /// PEM file(s) of the TPM manufacturer CAs.
    #[serde(default)]
    pub ek_ca_bundle: Vec<PathBuf>,
    /// PEM file(s) of intermediate CAs between EK certificates and those roots.
    #[serde(default)]
    pub ek_intermediates: Vec<PathBuf>,
    /// A file, or a folder of files, of allowed EK hashes (hex SHA-256 of the EK's
    /// SubjectPublicKeyInfo, one per line, `#` comments). Re-read when it changes.
    #[serde(default)]
    pub ek_hash_allow_list: Option<PathBuf>,
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
pub type TpmEk = ChallengeAttestor<EkVerifier>;

impl TpmEk {
    /// Loads the CA bundle and the allow-list; trusting nothing is a start-up error.
    pub fn new(cfg: &TpmEkConfig) -> Result<Self, AttestorConfigError> {
        if cfg.ek_ca_bundle.is_empty() && cfg.ek_hash_allow_list.is_none() {
            return Err(AttestorConfigError::NoEkTrust);
        }
        let cas = super::ca_pool(
            "node_attestors.tpm_ek.ek_ca_bundle",
            &cfg.ek_ca_bundle,
            &cfg.ek_intermediates,
        )?;
        let allow = match &cfg.ek_hash_allow_list {
            Some(p) => {
                Some(
                    EkAllowList::open(p).map_err(|source| AttestorConfigError::AllowList {
                        path: p.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let a = Self::with_verifier(EkVerifier::new(cas, allow));
        super::challenge::with_policy(a, cfg.pcr_allow_list.as_deref(), NAME)
    }
}
