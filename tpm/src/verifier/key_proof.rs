//! Proof that the agent's SVID key lives in its TPM: a TPM2_Certify of the key by
//! the AK the server verified at attestation, over qualifying data that binds it to
//! one request. The server checks the AK's signature, that the certified name is the
//! name of the TPMT_PUBLIC the agent sent, that this public area is a TPM-born,
//! non-duplicable signing key (fixedTPM, fixedParent, sensitiveDataOrigin, sign),
//! and that its key is the CSR's key.
//!
//! Qualifying data: at attestation SHA-256 over [`ATTEST_CONTEXT`], the server's
//! fresh nonce and SHA-256 of the CSR; at renewal SHA-256 over [`RENEW_CONTEXT`],
//! the serial of the SVID the agent authenticated with and SHA-256 of the CSR (the
//! serial changes with every renewal, so a certify is good for one renewal only).

use serde_with::base64::Base64;

use crate::verifier::certify::{CertifyError, verify_certify};
use crate::wire::{HashAlg, ObjectAttributes as A, PublicArea};

/// The context of the qualifying data at attestation.
pub const ATTEST_CONTEXT: &[u8] = b"tessera agent key proof: attestation v1\0";
/// The context of the qualifying data at renewal.
pub const RENEW_CONTEXT: &[u8] = b"tessera agent key proof: renewal v1\0";

/// What the agent sends: its SVID key's public area and the AK's certify of it.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyCertify {
    /// The SVID key's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub public: Vec<u8>,
    /// TPMS_ATTEST of TPM2_Certify(SVID key, AK).
    #[serde_as(as = "Base64")]
    pub attest: Vec<u8>,
    /// The AK's TPMT_SIGNATURE over `attest`.
    #[serde_as(as = "Base64")]
    pub signature: Vec<u8>,
}

/// Why the proof does not hold; the message is what the server reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProofError {
    /// The agent sent no certify (an older agent, or a key outside the TPM).
    #[error("the agent sent no TPM2_Certify of its SVID key")]
    Missing,
    /// The server holds no AK for the agent.
    #[error("the server holds no attested AK for this agent (attest again)")]
    NoAk,
    /// The public area is malformed.
    #[error("the SVID key's public area is malformed: {0}")]
    Malformed(String),
    /// The certify is not by the agent's AK (another TPM's AK, or a forged one).
    #[error("the certify is not signed by this agent's attested AK: {0}")]
    Signature(String),
    /// The certify was made for another request.
    #[error(
        "the certify's qualifying data is not this request's (replayed, or made for another request)"
    )]
    Replayed,
    /// The certified name is not the sent public area's name.
    #[error("the certified object's name is not the name of the SVID key's public area")]
    NameMismatch,
    /// The key is not a TPM-born, non-duplicable signing key.
    #[error("the SVID key is not TPM-resident: its attributes lack {0}")]
    NotResident(String),
    /// The certified key is not the CSR's key.
    #[error("the certified key is not the key in the CSR")]
    KeyMismatch,
    /// Anything else in the certify is wrong (not TPM-generated, not a certify).
    #[error("certify rejected: {0}")]
    Certify(String),
}

/// Qualifying data for the certify sent with an attestation.
pub fn attestation_qualifying_data(nonce: &[u8], csr: &[u8]) -> Vec<u8> {
    let csr_hash = HashAlg::Sha256.digest(&[csr]);
    HashAlg::Sha256.digest(&[ATTEST_CONTEXT, nonce, &csr_hash])
}

/// Qualifying data for the certify sent with a renewal by the agent that
/// authenticated with the SVID of serial `serial_hex`.
pub fn renewal_qualifying_data(serial_hex: &str, csr: &[u8]) -> Vec<u8> {
    let csr_hash = HashAlg::Sha256.digest(&[csr]);
    HashAlg::Sha256.digest(&[RENEW_CONTEXT, serial_hex.as_bytes(), &csr_hash])
}

/// The attributes a TPM-resident signing key must have, with their names.
const NEEDED: [(u32, &str); 4] = [
    (A::FIXED_TPM, "fixedTPM"),
    (A::FIXED_PARENT, "fixedParent"),
    (A::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    (A::SIGN_ENCRYPT, "sign"),
];

/// Checks `proof` against the agent's AK, this request's `qualifying` data and the
/// CSR's SubjectPublicKeyInfo `csr_spki`.
pub fn verify_key_proof(
    ak: &PublicArea,
    proof: &KeyCertify,
    qualifying: &[u8],
    csr_spki: &[u8],
) -> Result<(), KeyProofError> {
    let public =
        PublicArea::parse(&proof.public).map_err(|e| KeyProofError::Malformed(e.to_string()))?;
    verify_certify(
        ak,
        &proof.attest,
        &proof.signature,
        &public.name(),
        qualifying,
    )
    .map_err(|e| match e {
        CertifyError::Signature(_) | CertifyError::Ak(_) => KeyProofError::Signature(e.to_string()),
        CertifyError::WrongQualifyingData => KeyProofError::Replayed,
        CertifyError::WrongObject => KeyProofError::NameMismatch,
        other => KeyProofError::Certify(other.to_string()),
    })?;
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| !public.attributes.has(*bit))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(KeyProofError::NotResident(missing.join(", ")));
    }
    if !crate::attestation::public_matches_spki(&public, csr_spki) {
        return Err(KeyProofError::KeyMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifying_data_depends_on_every_input() {
        let a = attestation_qualifying_data(b"n1", b"csr");
        assert_eq!(a.len(), 32);
        assert_ne!(a, attestation_qualifying_data(b"n2", b"csr"));
        assert_ne!(a, attestation_qualifying_data(b"n1", b"csr2"));
        let r = renewal_qualifying_data("0a", b"csr");
        assert_ne!(r, renewal_qualifying_data("0b", b"csr"));
        assert_ne!(r, renewal_qualifying_data("0a", b"csR"));
        // The two contexts never give the same bytes for the same inputs.
        assert_ne!(
            attestation_qualifying_data(b"0a", b"c"),
            renewal_qualifying_data("0a", b"c")
        );
    }

    #[test]
    fn malformed_public_is_refused_before_anything_else() {
        let ak = crate::verifier::ak::AkKind::EccP256.template();
        let proof = KeyCertify {
            public: vec![1, 2],
            attest: vec![],
            signature: vec![],
        };
        assert!(matches!(
            verify_key_proof(&ak, &proof, b"q", b""),
            Err(KeyProofError::Malformed(_))
        ));
    }
}
