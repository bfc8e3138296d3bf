//! The agent-key proof, server side: at TPM attestation and at every renewal of a
//! TPM-attested agent, the agent's TPM2_Certify of its new SVID key by its attested
//! AK is checked against the CSR (see `tessera_tpm::verifier::key_proof`). The
//! result is recorded on the agent; with `require_agent_key_in_tpm` set on its
//! attestor, an agent whose key is not proven gets no SVID.

use tessera_proto::agent as pb;
use tessera_tpm::verifier::key_proof::{
    KeyCertify, KeyProofError, attestation_qualifying_data, renewal_qualifying_data,
    verify_key_proof,
};
use tessera_tpm::wire::PublicArea;
use tonic::Status;

use crate::attestor::TpmKeyEvidence;
use crate::datastore::AttestedNode;

/// Whether the key is proven, and if not why.
pub(super) type Verdict = Result<(), KeyProofError>;

/// Checks the certify an attestation carried.
pub(super) fn at_attestation(evidence: &TpmKeyEvidence, csr: &[u8], csr_spki: &[u8]) -> Verdict {
    let ak = PublicArea::parse(&evidence.ak_public).map_err(|_| KeyProofError::NoAk)?;
    let proof = evidence
        .key_certify
        .as_ref()
        .ok_or(KeyProofError::Missing)?;
    let qualifying = attestation_qualifying_data(&evidence.key_nonce, csr);
    verify_key_proof(&ak, proof, &qualifying, csr_spki)
}

/// Checks the certify a renewal carried; `None` for an agent not attested by a
/// TPM attestor. A TPM agent with no AK on record (attested before the server kept
/// AKs) is not proven: it proves its key again by attesting again.
pub(super) fn at_renewal(
    node: &AttestedNode,
    presented_serial: &str,
    csr: &[u8],
    csr_spki: &[u8],
    proof: Option<pb::TpmKeyCertify>,
) -> Option<Verdict> {
    if !is_tpm_attestor(&node.attestation_type) {
        return None;
    }
    Some((|| {
        let ak = PublicArea::parse(&node.ak_public).map_err(|_| KeyProofError::NoAk)?;
        let proof = proof.ok_or(KeyProofError::Missing)?;
        let proof = KeyCertify {
            public: proof.public,
            attest: proof.attest,
            signature: proof.signature,
        };
        let qualifying = renewal_qualifying_data(presented_serial, csr);
        verify_key_proof(&ak, &proof, &qualifying, csr_spki)
    })())
}

/// Whether agents of `attestor` have an AK (the TPM attestors).
pub(super) fn is_tpm_attestor(attestor: &str) -> bool {
    attestor == crate::attestor::tpm_ek::NAME || attestor == crate::attestor::tpm_devid::NAME
}

/// The refusal of an agent whose key is not proven while its attestor requires it.
pub(super) fn refusal(agent: &str, attestor: &str, e: &KeyProofError) -> Status {
    Status::permission_denied(format!(
        "agent {agent}: its SVID key is not proven to be in its TPM ({e}), and \
         node_attestors.{attestor}.require_agent_key_in_tpm is set: no SVID issued"
    ))
}
