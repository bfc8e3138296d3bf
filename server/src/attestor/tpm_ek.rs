//! TPM EK attestation, server side: a thin adapter over `tessera_tpm::ek_attest`.
//! The EK is trusted by its certificate chain to a configured manufacturer CA or by
//! the SHA-256 of its public key on an allow-list (a file or folder, re-read when it
//! changes); credential activation proves the EK and the fresh AK are in one TPM.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use tessera_tpm::ek_attest::{EkAllowList, EkPayload, EkPending, EkResponse, EkVerifier};

use super::{AttestError, Attested, NodeAttestor, Session, Step, from_tpm};

/// The name agents use.
pub const NAME: &str = "tpm_ek";

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
}

/// See the module documentation.
#[derive(Debug)]
pub struct TpmEk {
    verifier: Arc<EkVerifier>,
}

impl TpmEk {
    /// Loads the CA bundle and the allow-list; trusting nothing is a start-up error.
    pub fn new(cfg: &TpmEkConfig) -> Result<Self, String> {
        if cfg.ek_ca_bundle.is_empty() && cfg.ek_hash_allow_list.is_none() {
            return Err(
                "node_attestors.tpm_ek needs ek_ca_bundle, ek_hash_allow_list or both".into(),
            );
        }
        let cas = super::ca_pool(
            "node_attestors.tpm_ek.ek_ca_bundle",
            &cfg.ek_ca_bundle,
            &cfg.ek_intermediates,
        )?;
        let allow = match &cfg.ek_hash_allow_list {
            Some(p) => Some(EkAllowList::open(p).map_err(|e| {
                format!(
                    "node_attestors.tpm_ek.ek_hash_allow_list {}: {e}",
                    p.display()
                )
            })?),
            None => None,
        };
        Ok(Self {
            verifier: Arc::new(EkVerifier::new(cas, allow)),
        })
    }
}

struct EkSession {
    verifier: Arc<EkVerifier>,
    pending: Option<EkPending>,
    started: bool,
}

#[async_trait]
impl Session for EkSession {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        if !self.started {
            self.started = true;
            let payload: EkPayload = serde_json::from_slice(&input)
                .map_err(|e| AttestError::Malformed(format!("tpm_ek payload: {e}")))?;
            let verifier = self.verifier.clone();
            let (challenge, pending) =
                tokio::task::spawn_blocking(move || verifier.start(&payload))
                    .await
                    .map_err(|e| AttestError::Unavailable(e.to_string()))?
                    .map_err(from_tpm)?;
            self.pending = Some(pending);
            return serde_json::to_vec(&challenge)
                .map(Step::Challenge)
                .map_err(|e| AttestError::Unavailable(e.to_string()));
        }
        let pending = self.pending.take().ok_or_else(|| {
            AttestError::Malformed("tpm_ek takes exactly one challenge response".into())
        })?;
        let response: EkResponse = serde_json::from_slice(&input)
            .map_err(|e| AttestError::Malformed(format!("tpm_ek response: {e}")))?;
        let done = pending.finish(&response).map_err(from_tpm)?;
        Ok(Step::Attested(Attested {
            agent_path: done.agent_path,
            selectors: done.selectors,
            can_reattest: true,
        }))
    }
}

impl NodeAttestor for TpmEk {
    fn name(&self) -> &'static str {
        NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(EkSession {
            verifier: self.verifier.clone(),
            pending: None,
            started: false,
        })
    }
}
