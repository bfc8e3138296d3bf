//! The node attestor seam, agent side: an attestor produces the evidence the server's
//! attestor of the same name verifies, and answers its challenges. Each attestor lives
//! in its own module, named as its server half is.

use async_trait::async_trait;

pub mod challenge;
pub mod join_token;
pub mod tpm_devid;
pub mod tpm_ek;

/// Why the agent could not produce or answer attestation evidence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AttestError(pub String);

/// One attestation in progress.
#[async_trait]
pub trait Session: Send {
    /// The evidence sent first.
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError>;
    /// The answer to one server challenge.
    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

/// An agent-side node attestor.
pub trait NodeAttestor: Send + Sync + std::fmt::Debug {
    /// The name the server knows it by.
    fn name(&self) -> &'static str;
    /// Whether attesting again with the same evidence can work (a join token cannot).
    fn can_reattest(&self) -> bool;
    /// Starts an attestation.
    fn session(&self) -> Box<dyn Session>;
}
