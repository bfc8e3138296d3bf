//! TPM DevID attestation, agent side: the DevID certificate chain and a fresh AK's
//! certification of the DevID key, then the answers only this TPM can give (a nonce
//! signed by the DevID key, the credential the EK unseals). A thin adapter over
//! `tessera_tpm::devid`.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_tpm::devid::{self, DevIdAgentState, DevIdChallenge, DevIdIdentity};
use tessera_tpm::{AgentOptions, Tpm};

use super::{AttestError, NodeAttestor, Session};

/// See the module documentation.
#[derive(Debug)]
pub struct TpmDevId {
    tpm: Arc<Tpm>,
    identity: Arc<DevIdIdentity>,
    options: AgentOptions,
}

impl TpmDevId {
    pub fn new(tpm: Arc<Tpm>, identity: DevIdIdentity, options: AgentOptions) -> Self {
        Self {
            tpm,
            identity: Arc::new(identity),
            options,
        }
    }
}

struct DevIdSession {
    tpm: Arc<Tpm>,
    identity: Arc<DevIdIdentity>,
    options: AgentOptions,
    state: Option<DevIdAgentState>,
}

fn join(e: tokio::task::JoinError) -> AttestError {
    AttestError(format!("TPM task failed: {e}"))
}

#[async_trait]
impl Session for DevIdSession {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        let (tpm, identity, options) = (self.tpm.clone(), self.identity.clone(), self.options);
        // TPM commands block: run them off the async threads.
        let (payload, state) =
            tokio::task::spawn_blocking(move || devid::build_payload(&tpm, &identity, &options))
                .await
                .map_err(join)?
                .map_err(|e| AttestError(format!("tpm_devid: {e}")))?;
        self.state = Some(state);
        serde_json::to_vec(&payload).map_err(|e| AttestError(e.to_string()))
    }

    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let state = self
            .state
            .take()
            .ok_or_else(|| AttestError("tpm_devid: a second challenge was not expected".into()))?;
        let challenge: DevIdChallenge = serde_json::from_slice(&challenge)
            .map_err(|e| AttestError(format!("tpm_devid challenge: {e}")))?;
        let tpm = self.tpm.clone();
        let response = tokio::task::spawn_blocking(move || state.answer(&tpm, &challenge))
            .await
            .map_err(join)?
            .map_err(|e| AttestError(format!("tpm_devid: {e}")))?;
        serde_json::to_vec(&response).map_err(|e| AttestError(e.to_string()))
    }
}

impl NodeAttestor for TpmDevId {
    fn name(&self) -> &'static str {
        "tpm_devid"
    }

    fn can_reattest(&self) -> bool {
        true
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(DevIdSession {
            tpm: self.tpm.clone(),
            identity: self.identity.clone(),
            options: self.options,
            state: None,
        })
    }
}
