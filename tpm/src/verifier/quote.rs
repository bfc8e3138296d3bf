//! Checking a TPM2_Quote in software: the AK's signature over a TPMS_ATTEST of
//! type quote that says "the SHA-256 of these PCRs' values is this digest". With
//! the PCR values the agent sends beside it, the server learns the measured state
//! of the node, signed by the TPM whose AK it attested.

use crate::device::pcr_selection;
use crate::verifier::signature::verify_signature;
use crate::wire::{
    Attest, Attested, HashAlg, PublicArea, Reader, Signature, TPM_GENERATED_VALUE, st,
};

/// The context of the qualifying data of the quote sent with an attestation.
pub const ATTEST_CONTEXT: &[u8] = b"tessera pcr quote: attestation v1\0";
/// The context of the qualifying data of the quote sent with a renewal.
pub const RENEW_CONTEXT: &[u8] = b"tessera pcr quote: renewal v1\0";

/// A quote and the PCR values it covers (SHA-256 bank), as the agent sends it.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PcrQuote {
    /// The PCR indices, ascending.
    pub pcrs: Vec<u8>,
    /// Their values, in the same order.
    #[serde_as(as = "Vec<serde_with::base64::Base64>")]
    pub values: Vec<Vec<u8>>,
    /// The TPMS_ATTEST of TPM2_Quote.
    #[serde_as(as = "serde_with::base64::Base64")]
    pub attest: Vec<u8>,
    /// The AK's TPMT_SIGNATURE over `attest`.
    #[serde_as(as = "serde_with::base64::Base64")]
    pub signature: Vec<u8>,
}

/// Why a quote was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuoteError {
    /// The quote or its signature is malformed.
    #[error("malformed PCR quote: {0}")]
    Malformed(String),
    /// Not signed by the agent's AK (another TPM's, or forged).
    #[error("the PCR quote is not signed by this agent's attested AK: {0}")]
    Signature(String),
    /// Not made by a TPM.
    #[error("the PCR quote does not start with TPM_GENERATED_VALUE")]
    NotTpmGenerated,
    /// Another kind of attestation.
    #[error("the PCR quote is of type 0x{0:04x}, not TPM_ST_ATTEST_QUOTE")]
    NotQuote(u16),
    /// Made for another request (another nonce).
    #[error("the PCR quote's qualifying data is not this request's (wrong nonce, or replayed)")]
    WrongNonce,
    /// Quotes other PCRs than the values sent.
    #[error("the PCR quote covers other PCRs than the values sent")]
    Selection,
    /// The values sent are not the quoted ones.
    #[error("the PCR values sent do not hash to the quoted PCR digest")]
    Digest,
}

/// Qualifying data of the quote sent with an attestation.
pub fn attestation_qualifying_data(nonce: &[u8], csr: &[u8]) -> Vec<u8> {
    let csr_hash = HashAlg::Sha256.digest(&[csr]);
    HashAlg::Sha256.digest(&[ATTEST_CONTEXT, nonce, &csr_hash])
}

/// Qualifying data of the quote sent with a renewal authenticated with the SVID of
/// serial `serial_hex`.
pub fn renewal_qualifying_data(serial_hex: &str, csr: &[u8]) -> Vec<u8> {
    let csr_hash = HashAlg::Sha256.digest(&[csr]);
    HashAlg::Sha256.digest(&[RENEW_CONTEXT, serial_hex.as_bytes(), &csr_hash])
}

/// Verifies `quote` against the agent's `ak` and this request's `qualifying` data:
/// signature, TPM_GENERATED, type quote, nonce, the selection is the PCRs sent, and
/// the digest is SHA-256 over their values.
pub fn verify_quote(
    ak: &PublicArea,
    quote: &PcrQuote,
    qualifying: &[u8],
) -> Result<(), QuoteError> {
    let sig =
        Signature::parse(&quote.signature).map_err(|e| QuoteError::Malformed(e.to_string()))?;
    verify_signature(ak, &quote.attest, &sig).map_err(|e| QuoteError::Signature(e.to_string()))?;
    let parsed = Attest::parse(&quote.attest).map_err(|e| QuoteError::Malformed(e.to_string()))?;
    if parsed.magic != TPM_GENERATED_VALUE {
        return Err(QuoteError::NotTpmGenerated);
    }
    if parsed.attest_type != st::ATTEST_QUOTE {
        return Err(QuoteError::NotQuote(parsed.attest_type));
    }
    if parsed.extra_data != qualifying {
        return Err(QuoteError::WrongNonce);
    }
    let Attested::Other(info) = &parsed.attested else {
        return Err(QuoteError::NotQuote(parsed.attest_type));
    };
    // TPMS_QUOTE_INFO: TPML_PCR_SELECTION, then TPM2B_DIGEST.
    let malformed = |e: crate::wire::StructureError| QuoteError::Malformed(e.to_string());
    let expected = pcr_selection(&quote.pcrs);
    if quote.pcrs.is_empty()
        || quote.pcrs.iter().any(|&i| i > crate::device::MAX_PCR)
        || quote.pcrs.len() != quote.values.len()
        || quote.pcrs.windows(2).any(|w| w[0] >= w[1])
        || info.len() < expected.len()
        || info[..expected.len()] != expected[..]
    {
        return Err(QuoteError::Selection);
    }
    let mut r = Reader::new(&info[expected.len()..], "TPMS_QUOTE_INFO");
    let digest = r.tpm2b().map_err(malformed)?.to_vec();
    r.finish().map_err(malformed)?;
    if quote
        .values
        .iter()
        .any(|v| v.len() != HashAlg::Sha256.size())
    {
        return Err(QuoteError::Digest);
    }
    let parts: Vec<&[u8]> = quote.values.iter().map(Vec::as_slice).collect();
    if HashAlg::Sha256.digest(&parts) != digest {
        return Err(QuoteError::Digest);
    }
    Ok(())
}
