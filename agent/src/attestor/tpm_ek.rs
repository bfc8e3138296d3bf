//! TPM EK attestation, agent side: the EK (and its certificate, when the TPM holds
//! one) and a fresh AK, then the credential only this TPM's EK can unseal.
//! `tessera_tpm::attestation::tpm_ek`'s prover in the generic
//! [`ChallengeAttestor`].

use std::sync::Arc;

use tessera_tpm::attestation::tpm_ek::EkProver;
use tessera_tpm::{AgentOptions, Tpm};

use super::challenge::ChallengeAttestor;

/// See the module documentation.
pub type TpmEk = ChallengeAttestor<EkProver>;

impl TpmEk {
    /// Attests with the EK of `tpm`.
    pub fn new(tpm: Arc<Tpm>, options: AgentOptions) -> Self {
        Self::with_prover(tpm, EkProver { options })
    }
}
