//! What the two TPM node attestors ([`crate::devid`] and [`crate::ek_attest`]) share:
//! the result handed to the server, the error type whose messages the server shows,
//! the agent's choice of EK and AK, and the server's EK certificate check.
//!
//! The server's state between challenge and response is a `...Pending` value that
//! holds this attempt's fresh random nonce and credential secret and is consumed by
//! checking the response: an answer can only ever be checked against the one attempt
//! it was made for, and each attempt can be answered once.

use ring::rand::{SecureRandom, SystemRandom};
use tessera_core::Selector;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::ak::{AkError, AkKind};
use crate::certify::CertifyError;
use crate::chain::{CaPool, ChainError, LeafProfile, VerifiedChain, verify_chain};
use crate::credential::CredentialError;
use crate::device::{DeviceError, TpmDevice};
use crate::ek::{EkError, EkKind, check_ek_public};
use crate::structures::{PublicArea, PublicParams, StructureError};

/// What a successful attestation gives the server: the agent ID path (the server
/// puts `spiffe://<trust domain>/spire/agent/` in front) and the node's selectors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeAttestation {
    /// `tpm_devid/<sha1 hex>` or `tpm/<sha256 hex>`.
    pub agent_path: String,
    /// Selectors of type `tpm_devid` or `tpm`.
    pub selectors: Vec<Selector>,
}

/// Why an attestation failed, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// A field of the payload, challenge or response is malformed.
    #[error("malformed {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    /// The DevID certificate chain does not validate against the vendor CAs.
    #[error("DevID certificate rejected: {0}")]
    DevIdCertificate(ChainError),
    /// The DevID public area is not the key in the DevID certificate.
    #[error("DevID public area does not match the key in the DevID certificate")]
    DevIdKeyMismatch,
    /// The DevID key is not a TPM-resident signing key.
    #[error(
        "DevID key attributes are not those of a TPM-resident signing key (need fixedTPM, fixedParent, sensitiveDataOrigin and sign)"
    )]
    DevIdKeyAttributes,
    /// The EK public area is not a standard EK.
    #[error("EK rejected: {0}")]
    Ek(#[from] EkError),
    /// The EK certificate does not validate against the manufacturer CAs.
    #[error("EK certificate rejected: {0}")]
    EkCertificate(ChainError),
    /// The EK certificate certifies another key than the EK presented.
    #[error("EK certificate does not match the EK public key")]
    EkCertificateMismatch,
    /// An EK certificate is required and none was presented.
    #[error(
        "no EK certificate was presented, and this attestor requires one (provision one in the TPM's NV, or use tpm_ek with an allow-list)"
    )]
    EkCertificateMissing,
    /// The EK is trusted neither by certificate nor by allow-list.
    #[error("EK {pub_hash} is not trusted: {reason}")]
    EkNotTrusted { pub_hash: String, reason: String },
    /// The allow-list of EK hashes could not be read.
    #[error("EK allow-list unusable: {0}")]
    AllowList(String),
    /// The AK public area is not an acceptable attestation key.
    #[error("AK rejected: {0}")]
    Ak(#[from] AkError),
    /// The Certify of the DevID key by the AK does not hold.
    #[error("DevID certification by the AK rejected: {0}")]
    Certify(#[from] CertifyError),
    /// MakeCredential failed.
    #[error("cannot make the activation challenge: {0}")]
    Credential(#[from] CredentialError),
    /// The answer to the credential challenge is wrong: the EK and the AK are not in
    /// the same TPM, or the answer belongs to another attempt.
    #[error(
        "credential activation failed: the answer is not the secret sealed to this attempt's EK and AK (another TPM, or a replayed answer)"
    )]
    ActivationFailed,
    /// The nonce signature does not verify with the DevID key.
    #[error("nonce signature does not verify with the DevID key: {0}")]
    NonceSignature(String),
    /// The agent's TPM failed.
    #[error("TPM: {0}")]
    Device(#[from] DeviceError),
    /// A selector could not be built (a certificate name too long or empty).
    #[error("cannot build selector: {0}")]
    Selector(String),
    /// The verifier is configured so that nothing could pass.
    #[error("attestor misconfigured: {0}")]
    Config(&'static str),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

impl AttestError {
    pub(crate) fn malformed(field: &'static str) -> impl Fn(StructureError) -> AttestError {
        move |e| AttestError::Malformed {
            field,
            reason: e.to_string(),
        }
    }
}

/// How the agent picks its EK and AK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentOptions {
    /// The EK to use; `None` picks the first of RSA-2048, P-256, P-384 that has a
    /// certificate in NV, or RSA-2048 if none has.
    pub ek: Option<EkKind>,
    /// The algorithm of the fresh AK.
    pub ak: AkKind,
}

/// The EK an agent attests with.
#[derive(Debug, Clone)]
pub(crate) struct AgentEk {
    pub kind: EkKind,
    pub public: PublicArea,
    pub certificate: Option<Vec<u8>>,
}

/// Reads the EK certificate of `kind` from NV, trimmed to its DER length (some TPMs
/// pad the NV index).
pub(crate) fn read_ek_certificate(
    dev: &mut dyn TpmDevice,
    kind: EkKind,
) -> Result<Option<Vec<u8>>, DeviceError> {
    Ok(dev.nv_read(kind.cert_nv_index())?.map(|mut der| {
        if let Some(len) = der_length(&der) {
            der.truncate(len);
        }
        der
    }))
}

fn der_length(der: &[u8]) -> Option<usize> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    if first < 0x80 {
        return Some(2 + first as usize);
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some(2 + n + len)
}

/// Picks the EK per `choice` and reads its public area and certificate.
pub(crate) fn select_ek(
    dev: &mut dyn TpmDevice,
    choice: Option<EkKind>,
) -> Result<AgentEk, DeviceError> {
    let kind = match choice {
        Some(kind) => kind,
        None => {
            let mut found = None;
            for kind in EkKind::ALL {
                if let Some(cert) = read_ek_certificate(dev, kind)? {
                    found = Some((kind, cert));
                    break;
                }
            }
            if let Some((kind, cert)) = found {
                let public = dev.ek_public(kind)?;
                return Ok(AgentEk {
                    kind,
                    public,
                    certificate: Some(cert),
                });
            }
            EkKind::Rsa2048
        }
    };
    let certificate = read_ek_certificate(dev, kind)?;
    let public = dev.ek_public(kind)?;
    Ok(AgentEk {
        kind,
        public,
        certificate,
    })
}

/// Parses a TPMT_PUBLIC from a payload field.
pub(crate) fn parse_public(bytes: &[u8], field: &'static str) -> Result<PublicArea, AttestError> {
    PublicArea::parse(bytes).map_err(AttestError::malformed(field))
}

/// Whether the certificate key `spki_der` is the key of `public`. Compares the key
/// material (modulus and exponent, or curve and point), not encodings.
pub fn public_matches_spki(public: &PublicArea, spki_der: &[u8]) -> bool {
    use x509_parser::public_key::PublicKey;
    let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    let Ok(parsed) = spki.parsed() else {
        return false;
    };
    match (&public.params, parsed) {
        (PublicParams::Rsa { .. }, PublicKey::RSA(rsa)) => {
            let Ok((n, e)) = public.rsa_parts() else {
                return false;
            };
            let e_bytes = e.to_be_bytes();
            trim(rsa.modulus) == trim(n) && trim(rsa.exponent) == trim(&e_bytes)
        }
        (PublicParams::Ecc { curve, .. }, PublicKey::EC(point)) => {
            let Ok(ours) = public.ec_point() else {
                return false;
            };
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            let expected_oid = match curve {
                crate::structures::EccCurve::P256 => "1.2.840.10045.3.1.7",
                crate::structures::EccCurve::P384 => "1.3.132.0.34",
            };
            curve_oid.as_deref() == Some(expected_oid) && point.data() == ours.as_slice()
        }
        _ => false,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|x| **x == 0).count();
    &b[skip..]
}

/// The server's EK check: a standard EK, and when a certificate is presented and a
/// CA pool configured, a certificate that chains to it and certifies this very key.
/// Returns the verified chain when the certificate was checked.
pub(crate) fn check_ek(
    ek_public: &PublicArea,
    certificate: Option<&[u8]>,
    pool: &CaPool,
) -> Result<Option<VerifiedChain>, AttestError> {
    check_ek_public(ek_public)?;
    let Some(cert) = certificate else {
        return Ok(None);
    };
    // The key comparison first: a mismatched certificate is an error whoever issued it.
    let spki =
        crate::chain::spki_of(cert).ok_or(AttestError::EkCertificate(ChainError::Malformed {
            index: 0,
            reason: "not an X.509 certificate".into(),
        }))?;
    if !public_matches_spki(ek_public, &spki) {
        return Err(AttestError::EkCertificateMismatch);
    }
    if pool.is_empty() {
        return Ok(None);
    }
    verify_chain(cert, &[], pool, LeafProfile::EndorsementKey)
        .map(Some)
        .map_err(AttestError::EkCertificate)
}

/// A fresh random value of `n` bytes (nonces and credential secrets).
pub(crate) fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, AttestError> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| AttestError::Random)?;
    Ok(v)
}

/// Compares secrets in constant time.
pub(crate) fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn selector(kind: &str, value: String) -> Result<Selector, AttestError> {
    Selector::new(kind, &value).map_err(|e| AttestError::Selector(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_length_reads_short_and_long_forms() {
        assert_eq!(der_length(&[0x30, 0x03, 1, 2, 3, 0, 0]), Some(5));
        assert_eq!(der_length(&[0x30, 0x82, 0x01, 0x00]), Some(260));
        assert_eq!(der_length(&[0x30]), None);
        assert_eq!(der_length(&[0x04, 0x01, 0]), None);
        assert_eq!(der_length(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }

    #[test]
    fn spki_comparison_is_by_key_material() {
        let key =
            tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256).unwrap();
        use tessera_core::key::Key;
        let spki = key.public_key_der();
        let point = tessera_core::der::spki_public_key_bits(spki).unwrap();
        let mut area = crate::device::signing_key_template(tessera_core::key::KeyType::EcP256);
        if let PublicParams::Ecc { x, y, .. } = &mut area.params {
            *x = point[1..33].to_vec();
            *y = point[33..].to_vec();
        }
        assert!(public_matches_spki(&area, spki));
        if let PublicParams::Ecc { x, .. } = &mut area.params {
            x[0] ^= 1;
        }
        assert!(!public_matches_spki(&area, spki));
        assert!(!public_matches_spki(&area, b"garbage"));
    }
}
