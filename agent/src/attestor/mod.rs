//! The node attestor seam, agent side: an attestor produces the evidence the server's
//! attestor of the same name verifies, and answers its challenges. Each attestor lives
//! in its own module, named as its server half is.

use async_trait::async_trait;

pub mod aws_iid;
pub mod azure_msi;
pub mod challenge;
pub mod gcp_iit;
pub mod join_token;
pub mod k8s_psat;
pub mod key_proof;
pub mod metadata;
pub mod tpm_devid;
pub mod tpm_ek;
pub mod x509pop;

/// Why the agent could not produce or answer attestation evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence cannot be made or the challenge cannot be answered; trying again
    /// unchanged does not help (a missing identity, a refused request, a bad file).
    #[error("{0}")]
    Failed(String),
    /// What the evidence comes from (a cloud's metadata service) cannot be reached or
    /// is failing now; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
}

/// One attestation in progress.
#[async_trait]
pub trait Session: Send {
    /// The evidence sent first.
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError>;
    /// The answer to one server challenge.
    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

/// An attestor whose evidence is one message and that answers no challenge (the
/// cloud and Kubernetes token attestors): [`no_challenge_session`] makes its session.
#[async_trait]
pub trait Evidence: Clone + Send + Sync + 'static {
    /// The name the server knows it by.
    const NAME: &'static str;
    /// The evidence, as sent.
    async fn evidence_bytes(&self) -> Result<Vec<u8>, AttestError>;
}

struct NoChallenge<A>(A);

#[async_trait]
impl<A: Evidence> Session for NoChallenge<A> {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        self.0.evidence_bytes().await
    }

    async fn answer(&mut self, _challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        Err(AttestError::Failed(format!(
            "the server sent a challenge, but {} attestation has none",
            A::NAME
        )))
    }
}

/// The session of an attestor that sends its evidence and answers no challenge.
pub fn no_challenge_session<A: Evidence>(attestor: &A) -> Box<dyn Session> {
    Box::new(NoChallenge(attestor.clone()))
}

/// `value` as JSON evidence.
pub fn json_evidence(value: &impl serde::Serialize) -> Result<Vec<u8>, AttestError> {
    serde_json::to_vec(value).map_err(|e| AttestError::Failed(e.to_string()))
}

/// An agent-side node attestor.
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The name the server knows it by.
    fn name(&self) -> &'static str;
    /// Whether attesting again with the same evidence can work (a join token cannot).
    fn can_reattest(&self) -> bool;
    /// Starts an attestation.
    fn session(&self) -> Box<dyn Session>;

    /// The key the next attestation's SVID is for, so that a TPM attestor can
    /// certify it with its AK; other attestors ignore it.
    fn bind_key(&self, _binding: key_proof::KeyBinding) {}

    /// A TPM attestor's proofs for a renewal to the key in `slot`: the certify of
    /// the key and the PCR quote (see [`key_proof::KeyProver::prove_at_renewal`]).
    fn renewal_proof(
        &self,
        _slot: &str,
        _serial_hex: &str,
        _csr: &[u8],
    ) -> (
        Option<tessera_proto::agent::TpmKeyCertify>,
        Option<tessera_proto::agent::PcrQuote>,
    ) {
        (None, None)
    }
}
