//! Checking a TPM2_Certify in software: an AK's signature over a TPMS_ATTEST that
//! says "an object with this name is loaded in me". With the AK bound to the EK by
//! credential activation, this proves the certified key (a DevID) lives in the same
//! TPM as the EK.

use crate::verifier::ak::{AkError, check_ak_public};
use crate::verifier::signature::{SignatureError, verify_signature};
use crate::wire::{
    Attest, Attested, PublicArea, Signature, StructureError, TPM_GENERATED_VALUE, st,
};

/// Why a Certify was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertifyError {
    /// The signing key is not an acceptable AK.
    #[error("certifying key rejected: {0}")]
    Ak(#[from] AkError),
    /// The attestation or signature bytes are malformed.
    #[error("malformed certification: {0}")]
    Malformed(#[from] StructureError),
    /// The AK's signature over the attestation does not verify (made by another key,
    /// for instance an AK of another TPM).
    #[error("certification signature does not verify with the AK: {0}")]
    Signature(#[from] SignatureError),
    /// The attestation was not produced by a TPM.
    #[error("attestation does not start with TPM_GENERATED_VALUE")]
    NotTpmGenerated,
    /// The attestation is a quote or another kind, not a Certify.
    #[error("attestation is of type 0x{0:04x}, not TPM_ST_ATTEST_CERTIFY")]
    NotCertify(u16),
    /// The certified object is not the one expected.
    #[error("certified object name does not match the expected key's name")]
    WrongObject,
    /// The qualifying data differs from what the verifier asked for.
    #[error("certification qualifying data does not match")]
    WrongQualifyingData,
}

/// Verifies that `ak` signed (`signature`, a TPMT_SIGNATURE) the TPMS_ATTEST
/// `attest`, that it certifies the object named `expected_name`, and that it
/// carries `qualifying_data` as extra data.
pub fn verify_certify(
    ak: &PublicArea,
    attest: &[u8],
    signature: &[u8],
    expected_name: &[u8],
    qualifying_data: &[u8],
) -> Result<Attest, CertifyError> {
    check_ak_public(ak)?;
    let sig = Signature::parse(signature)?;
    // The signature first: nothing in an unsigned attestation is worth reading.
    verify_signature(ak, attest, &sig)?;
    let parsed = Attest::parse(attest)?;
    if parsed.magic != TPM_GENERATED_VALUE {
        return Err(CertifyError::NotTpmGenerated);
    }
    if parsed.attest_type != st::ATTEST_CERTIFY {
        return Err(CertifyError::NotCertify(parsed.attest_type));
    }
    if parsed.extra_data != qualifying_data {
        return Err(CertifyError::WrongQualifyingData);
    }
    match &parsed.attested {
        Attested::Certify { name, .. } if name.as_slice() == expected_name => Ok(parsed),
        _ => Err(CertifyError::WrongObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::ak::AkKind;
    use crate::wire::{HashAlg, PublicParams, put_tpm2b, put_u16, put_u32};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A software stand-in for an AK: the verifier cannot tell, which is the point
    /// of testing its logic without a TPM.
    fn soft_ak() -> (EcdsaKeyPair, PublicArea) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut area = AkKind::EccP256.template();
        let point = kp.public_key().as_ref().to_vec();
        if let PublicParams::Ecc { x, y, .. } = &mut area.params {
            *x = point[1..33].to_vec();
            *y = point[33..].to_vec();
        }
        (kp, area)
    }

    fn attest(magic: u32, kind: u16, extra: &[u8], name: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        put_u32(&mut a, magic);
        put_u16(&mut a, kind);
        put_tpm2b(&mut a, &[0, 0x0b, 1]);
        put_tpm2b(&mut a, extra);
        a.extend_from_slice(&[0; 17]);
        a.extend_from_slice(&[0; 8]);
        put_tpm2b(&mut a, name);
        put_tpm2b(&mut a, name);
        a
    }

    fn sign(kp: &EcdsaKeyPair, data: &[u8]) -> Vec<u8> {
        let raw = kp.sign(&ring::rand::SystemRandom::new(), data).unwrap();
        Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: raw.as_ref()[..32].to_vec(),
            s: raw.as_ref()[32..].to_vec(),
        }
        .marshal()
    }

    #[test]
    fn checks_magic_type_data_and_name() {
        let (kp, ak) = soft_ak();
        let name = [0x00, 0x0b, 7, 7];
        let good = attest(TPM_GENERATED_VALUE, st::ATTEST_CERTIFY, b"q", &name);
        verify_certify(&ak, &good, &sign(&kp, &good), &name, b"q").unwrap();

        let forged = attest(0x1234_5678, st::ATTEST_CERTIFY, b"q", &name);
        assert_eq!(
            verify_certify(&ak, &forged, &sign(&kp, &forged), &name, b"q"),
            Err(CertifyError::NotTpmGenerated)
        );
        let quote = attest(TPM_GENERATED_VALUE, st::ATTEST_QUOTE, b"q", &name);
        assert_eq!(
            verify_certify(&ak, &quote, &sign(&kp, &quote), &name, b"q"),
            Err(CertifyError::NotCertify(st::ATTEST_QUOTE))
        );
        assert_eq!(
            verify_certify(&ak, &good, &sign(&kp, &good), &[0, 0x0b, 7, 8], b"q"),
            Err(CertifyError::WrongObject)
        );
        assert_eq!(
            verify_certify(&ak, &good, &sign(&kp, &good), &name, b"r"),
            Err(CertifyError::WrongQualifyingData)
        );
        let (other, _) = soft_ak();
        assert!(matches!(
            verify_certify(&ak, &good, &sign(&other, &good), &name, b"q"),
            Err(CertifyError::Signature(_))
        ));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let (kp, ak) = soft_ak();
        let name = [0x00, 0x0b, 7, 7];
        let good = attest(TPM_GENERATED_VALUE, st::ATTEST_CERTIFY, b"q", &name);
        let sig = sign(&kp, &good);
        for cut in 0..sig.len() {
            assert!(verify_certify(&ak, &good, &sig[..cut], &name, b"q").is_err());
        }
        // A validly signed but truncated attestation is still refused.
        for cut in 0..good.len() {
            let part = &good[..cut];
            assert!(verify_certify(&ak, part, &sign(&kp, part), &name, b"q").is_err());
        }
    }
}
