//! TPM DevID attestation, agent side: the DevID certificate chain and a fresh AK's
//! certification of the DevID key, then the answers only this TPM can give (a nonce
//! signed by the DevID key, the credential the EK unseals).
//! `tessera_tpm::attestation::tpm_devid`'s prover in the generic
//! [`ChallengeAttestor`].

use std::sync::Arc;

use tessera_tpm::attestation::tpm_devid::{DevIdIdentity, DevIdProver};
use tessera_tpm::{AgentOptions, Tpm};

use super::challenge::ChallengeAttestor;

/// See the module documentation.
pub type TpmDevId = ChallengeAttestor<DevIdProver>;

impl TpmDevId {
    /// Attests with the DevID `identity` in `tpm`.
    pub fn new(tpm: Arc<Tpm>, identity: DevIdIdentity, options: AgentOptions) -> Self {
        Self::with_prover(tpm, DevIdProver { identity, options })
    }
}
