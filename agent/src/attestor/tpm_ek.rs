//! TPM EK attestation, agent side: the EK (and its certificate, when the TPM holds
//! one) and a fresh AK, then the credential only this TPM's EK can unseal. A thin
//! adapter over `tessera_tpm::ek_attest`.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_tpm::ek_attest::{self, EkAgentState, EkChallenge};
use tessera_tpm::{AgentOptions, Tpm};

use super::{AttestError, NodeAttestor, Session};

/// See the module documentation.
#[derive(Debug)]
pub struct TpmEk {
    tpm: Arc<Tpm>,
    options: AgentOptions,
}

impl TpmEk {
    pub fn new(tpm: Arc<Tpm>, options: AgentOptions) -> Self {
        Self { tpm, options }
    }
}

struct EkSession {
    tpm: Arc<Tpm>,
    options: AgentOptions,
    state: Option<EkAgentState>,
}

fn join(e: tokio::task::JoinError) -> AttestError {
    AttestError(format!("TPM task failed: {e}"))
}

#[async_trait]
impl Session for EkSession {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        let (tpm, options) = (self.tpm.clone(), self.options);
        let (payload, state) =
            tokio::task::spawn_blocking(move || ek_attest::build_payload(&tpm, &options))
                .await
                .map_err(join)?
                .map_err(|e| AttestError(format!("tpm_ek: {e}")))?;
        self.state = Some(state);
        serde_json::to_vec(&payload).map_err(|e| AttestError(e.to_string()))
    }

    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let state = self
            .state
            .take()
            .ok_or_else(|| AttestError("tpm_ek: a second challenge was not expected".into()))?;
        let challenge: EkChallenge = serde_json::from_slice(&challenge)
            .map_err(|e| AttestError(format!("tpm_ek challenge: {e}")))?;
        let tpm = self.tpm.clone();
        let response = tokio::task::spawn_blocking(move || state.answer(&tpm, &challenge))
            .await
            .map_err(join)?
            .map_err(|e| AttestError(format!("tpm_ek: {e}")))?;
        serde_json::to_vec(&response).map_err(|e| AttestError(e.to_string()))
    }
}

impl NodeAttestor for TpmEk {
    fn name(&self) -> &'static str {
        "tpm_ek"
    }

    fn can_reattest(&self) -> bool {
        true
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(EkSession {
            tpm: self.tpm.clone(),
            options: self.options,
            state: None,
        })
    }
}
