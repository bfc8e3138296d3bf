//! The TPM node attestation protocols, both halves: [`tpm_devid`] (a DevID
//! certified by the device's vendor, in a TPM whose EK its manufacturer certified)
//! and [`tpm_ek`] (the EK alone, trusted by certificate or by an allow-list of its
//! hashes). Each is one challenge and one answer; the agent side implements
//! [`Prover`] and [`AgentState`], the server side [`Verifier`] and [`Pending`], so
//! the server's and the agent's attestor adapters are one generic piece each.
//!
//! Here also what both share: the result handed to the server, the error type
//! whose messages the server shows, the agent's choice of EK and AK, and the
//! server's EK certificate check.
//!
//! The server's state between challenge and response is a [`Pending`] value that
//! holds this attempt's fresh random nonce and credential secret and is consumed by
//! checking the response: an answer can only ever be checked against the one attempt
//! it was made for, and each attempt can be answered once.

pub mod key_proof;
pub mod tpm_devid;
pub mod tpm_ek;

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_core::Selector;
use tessera_core::der::{split_sequence, trim_leading_zeros};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::device::{DeviceError, KeyBlob, Tpm, TpmDevice};
use crate::verifier::ak::{AkError, AkKind};
use crate::verifier::certify::CertifyError;
use crate::verifier::chain::{CaPool, ChainError, LeafProfile, VerifiedChain, verify_chain};
use crate::verifier::credential::CredentialError;
use crate::verifier::ek::{EkError, EkKind, check_ek_public};
use crate::wire::{PublicArea, PublicParams, StructureError};

/// The server half of a TPM attestor: checks the agent's payload and issues the
/// one challenge, keeping what the answer is checked against in a [`Pending`].
/// Its methods block (certificate paths, RSA): call them off async threads.
pub trait Verifier: Send + Sync + fmt::Debug + 'static {
    /// The attestor's name, the same on both sides and in the configuration.
    const NAME: &'static str;
    /// The agent's first message.
    type Payload: DeserializeOwned + Send + 'static;
    /// The server's challenge.
    type Challenge: Serialize + Send + 'static;
    /// What the server keeps between challenge and answer.
    type Pending: Pending;

    /// Checks the payload and issues the challenge.
    fn start(
        &self,
        payload: &Self::Payload,
    ) -> Result<(Self::Challenge, Self::Pending), AttestError>;
}

/// One attempt's server state, consumed by checking the answer: deliberately
/// neither `Clone` nor serialisable, so an attempt cannot be answered twice.
pub trait Pending: Send + 'static {
    /// The agent's answer.
    type Response: DeserializeOwned;

    /// Checks the answer against this attempt, and only this one.
    fn finish(self, response: &Self::Response) -> Result<NodeAttestation, AttestError>;

    /// The AK this attempt checked: what later proofs by the agent (the certify of
    /// its SVID key at attestation and at each renewal) are verified with.
    fn ak_public(&self) -> &PublicArea;
}

/// The agent half of a TPM attestor: what it sends first, and the state that
/// answers the server's challenge. Its methods run TPM commands, which block.
pub trait Prover: Send + Sync + fmt::Debug + 'static {
    /// The attestor's name, the same on both sides and in the configuration.
    const NAME: &'static str;
    /// The agent's first message.
    type Payload: Serialize + Send + 'static;
    /// What the agent keeps between its payload and the challenge.
    type State: AgentState;

    /// Makes a fresh AK and builds the payload.
    fn payload(&self, tpm: &Tpm) -> Result<(Self::Payload, Self::State), AttestError>;
}

/// The agent's state between payload and challenge.
pub trait AgentState: Send + 'static {
    /// The server's challenge.
    type Challenge: DeserializeOwned + Send + 'static;
    /// The agent's answer.
    type Response: Serialize + Send + 'static;

    /// Answers the challenge with the TPM.
    fn answer(self, tpm: &Tpm, challenge: &Self::Challenge) -> Result<Self::Response, AttestError>;

    /// The AK of this attempt: kept after attestation to certify the agent's later
    /// SVID keys.
    fn ak(&self) -> &KeyBlob;
}

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
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The DevID certificate chain does not validate against the vendor CAs.
    #[error("DevID certificate rejected: {0}")]
    DevIdCertificate(#[source] ChainError),
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
    EkCertificate(#[source] ChainError),
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
    EkNotTrusted {
        /// The EK's hash, as allow-lists hold it.
        pub_hash: String,
        /// Why neither trust path accepted it.
        reason: String,
    },
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

/// Reads the EK certificate of `kind` from NV, cut to its DER length (some TPMs
/// pad the NV index after the certificate).
pub(crate) fn read_ek_certificate(
    dev: &mut dyn TpmDevice,
    kind: EkKind,
) -> Result<Option<Vec<u8>>, DeviceError> {
    Ok(dev.nv_read(kind.cert_nv_index())?.map(|mut der| {
        if let Ok((cert, _)) = split_sequence(&der) {
            let len = cert.len();
            der.truncate(len);
        }
        der
    }))
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
            trim_leading_zeros(rsa.modulus) == trim_leading_zeros(n)
                && trim_leading_zeros(rsa.exponent) == trim_leading_zeros(&e_bytes)
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
                crate::wire::EccCurve::P256 => "1.2.840.10045.3.1.7",
                crate::wire::EccCurve::P384 => "1.3.132.0.34",
            };
            curve_oid.as_deref() == Some(expected_oid) && point.data() == ours.as_slice()
        }
        _ => false,
    }
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
    let spki = crate::verifier::chain::spki_of(cert).ok_or(AttestError::EkCertificate(
        ChainError::Malformed {
            index: 0,
            reason: "not an X.509 certificate".into(),
        },
    ))?;
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

    /// A TPM whose NV holds one certificate index, padded as some TPMs pad it.
    #[derive(Debug)]
    struct PaddedNv(Vec<u8>);

    impl TpmDevice for PaddedNv {
        fn describe(&self) -> String {
            "padded NV".into()
        }
        fn nv_read(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError> {
            Ok((index == EkKind::Rsa2048.cert_nv_index()).then(|| self.0.clone()))
        }
        fn ek_public(&mut self, _: EkKind) -> Result<PublicArea, DeviceError> {
            Err(DeviceError::Unsupported("no EK here".into()))
        }
        fn create_key(&mut self, _: &PublicArea) -> Result<crate::KeyBlob, DeviceError> {
            Err(DeviceError::Unsupported("no keys here".into()))
        }
        fn check_key(&mut self, _: &crate::KeyBlob) -> Result<(), DeviceError> {
            Err(DeviceError::Unsupported("no keys here".into()))
        }
        fn certify(
            &mut self,
            _: &crate::KeyBlob,
            _: &crate::KeyBlob,
            _: &[u8],
        ) -> Result<crate::device::CertifyOutput, DeviceError> {
            Err(DeviceError::Unsupported("no keys here".into()))
        }
        fn activate_credential(
            &mut self,
            _: &crate::KeyBlob,
            _: EkKind,
            _: &crate::verifier::credential::CredentialBlob,
        ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
            Err(DeviceError::Unsupported("no keys here".into()))
        }
        fn sign(
            &mut self,
            _: &crate::KeyBlob,
            _: &[u8],
            _: crate::device::SigningScheme,
        ) -> Result<crate::wire::Signature, DeviceError> {
            Err(DeviceError::Unsupported("no keys here".into()))
        }
    }

    #[test]
    fn ek_certificates_are_cut_to_their_der_length() {
        let read = |nv: Vec<u8>, kind| read_ek_certificate(&mut PaddedNv(nv), kind).unwrap();
        // Short and long form lengths, padding after them dropped.
        assert_eq!(
            read(vec![0x30, 0x03, 1, 2, 3, 0, 0], EkKind::Rsa2048),
            Some(vec![0x30, 0x03, 1, 2, 3])
        );
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend([7; 256]);
        let mut padded = long.clone();
        padded.extend([0xff; 300]);
        assert_eq!(read(padded, EkKind::Rsa2048), Some(long));
        // What is not one whole DER SEQUENCE is handed on as read, for the
        // certificate parser to refuse with its own message.
        for odd in [
            vec![0x04, 0x01, 0, 0],
            vec![0x30, 0x82, 0x01, 0x00, 1],
            vec![],
        ] {
            assert_eq!(read(odd.clone(), EkKind::Rsa2048), Some(odd));
        }
        assert_eq!(read(vec![0x30, 0], EkKind::EccP256), None);
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
