//! TPM DevID attestation, server side: a thin adapter over `tessera_tpm::devid`.
//! The DevID chain must reach a configured vendor CA and the EK certificate a
//! configured manufacturer CA; the TPM proves it holds the DevID key (a nonce
//! signature), that the AK is its own (TPM2_Certify of the DevID key), and that the
//! EK is in the same TPM (credential activation). The challenge state lives in the
//! session only, so an answer can never be checked against another attempt.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_tpm::devid::{
    DevIdChallenge, DevIdPayload, DevIdPending, DevIdResponse, DevIdVerifier,
};

use super::{AttestError, Attested, NodeAttestor, Session, Step, from_tpm};

/// The name agents use.
pub const NAME: &str = "tpm_devid";

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
}

/// See the module documentation.
#[derive(Debug)]
pub struct TpmDevId {
    verifier: Arc<DevIdVerifier>,
}

impl TpmDevId {
    /// Loads the CA bundles; a missing or unreadable file is a start-up error.
    pub fn new(cfg: &TpmDevIdConfig) -> Result<Self, String> {
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
        Ok(Self {
            verifier: Arc::new(DevIdVerifier::new(devid, ek)),
        })
    }
}

struct DevIdSession {
    verifier: Arc<DevIdVerifier>,
    pending: Option<DevIdPending>,
    started: bool,
}

#[async_trait]
impl Session for DevIdSession {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        if !self.started {
            self.started = true;
            let payload: DevIdPayload = serde_json::from_slice(&input)
                .map_err(|e| AttestError::Malformed(format!("tpm_devid payload: {e}")))?;
            let verifier = self.verifier.clone();
            // Certificate paths and RSA encryption: keep them off the async threads.
            let (challenge, pending) =
                tokio::task::spawn_blocking(move || verifier.start(&payload))
                    .await
                    .map_err(|e| AttestError::Unavailable(e.to_string()))?
                    .map_err(from_tpm)?;
            self.pending = Some(pending);
            let bytes: Vec<u8> = serde_json::to_vec::<DevIdChallenge>(&challenge)
                .map_err(|e| AttestError::Unavailable(e.to_string()))?;
            return Ok(Step::Challenge(bytes));
        }
        let pending = self.pending.take().ok_or_else(|| {
            AttestError::Malformed("tpm_devid takes exactly one challenge response".into())
        })?;
        let response: DevIdResponse = serde_json::from_slice(&input)
            .map_err(|e| AttestError::Malformed(format!("tpm_devid response: {e}")))?;
        let done = pending.finish(&response).map_err(from_tpm)?;
        Ok(Step::Attested(Attested {
            agent_path: done.agent_path,
            selectors: done.selectors,
            can_reattest: true,
        }))
    }
}

impl NodeAttestor for TpmDevId {
    fn name(&self) -> &'static str {
        NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(DevIdSession {
            verifier: self.verifier.clone(),
            pending: None,
            started: false,
        })
    }
}
