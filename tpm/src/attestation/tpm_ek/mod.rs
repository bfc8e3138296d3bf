//! The `tpm_ek` node attestor (EK only), both halves, plus the allow-list of EK
//! hashes the server may trust instead of, or as well as, the manufacturer's
//! certificate ([`EkAllowList`]). Its agent IDs and selectors are those of
//! bloomberg's spire-tpm-plugin (`tpm/<hash>`, `tpm:`), so SPIRE registrations
//! written for that plugin carry over.
//!
//! Agent: [`build_payload`] ([`EkProver`]) sends the EK public area, the EK certificate if the TPM
//! has one, and a fresh AK's public area. Server: [`EkVerifier::start`] accepts the
//! EK when its certificate chains to a configured manufacturer CA (and certifies this
//! key), or when the EK's hash is on the allow-list, and challenges with a credential
//! sealed to the EK and bound to the AK's name; only TPM2_ActivateCredential in the
//! TPM holding that EK, with that AK loaded, opens it (the [`AgentState`] of
//! [`EkAgentState`]).
//! [`EkPending`]'s `finish` returns the agent ID path `tpm/<hash>` and the selectors
//! `tpm:pub_hash:<hash>` and, from a validated certificate's subject alternative
//! name, `tpm:manufacturer:`, `tpm:model:` and `tpm:version:`.
//!
//! The hash: SHA-256 over the DER SubjectPublicKeyInfo of the EK's public key as
//! [`PublicArea::spki`] writes it (RSA: rsaEncryption, NULL parameters, minimal
//! modulus and exponent INTEGERs; ECC: id-ecPublicKey, the named curve, the
//! uncompressed point), in lower-case hex. It equals
//! `openssl x509 -in ek.crt -noout -pubkey | openssl pkey -pubin -outform der | sha256sum`
//! for the EK's certificate, and Go's `sha256(x509.MarshalPKIXPublicKey(ekPub))`.

mod allow_list;

pub use allow_list::EkAllowList;

use serde_with::base64::Base64;
use zeroize::Zeroizing;

use crate::attestation::{
    AgentOptions, AgentState, AttestError, NodeAttestation, Pending, Prover, Verifier, check_ek,
    parse_public, random_bytes, secrets_equal, select_ek, selector,
};
use crate::device::{KeyBlob, Tpm};
use crate::verifier::ak::check_ak_public;
use crate::verifier::chain::CaPool;
use crate::verifier::credential::{CredentialBlob, make_credential};
use crate::verifier::ek::{EkKind, tpm_identity};
use crate::wire::{HashAlg, PublicArea, hex};

/// The attestor's name.
pub const NAME: &str = "tpm_ek";

/// The selector type (and the agent ID path's first segment), as SPIRE's
/// EK-only TPM plugin names them.
pub const SELECTOR_TYPE: &str = "tpm";

const SECRET_LEN: usize = 32;

/// The hash that identifies an EK (see the module documentation for what is hashed).
pub fn ek_pub_hash(ek: &PublicArea) -> Result<String, AttestError> {
    let spki = ek
        .spki()
        .map_err(AttestError::malformed("EK public area"))?;
    Ok(hex(&HashAlg::Sha256.digest(&[&spki])))
}

/// The agent's first message.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkPayload {
    /// The EK's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER), if the TPM has one in NV.
    #[serde_as(as = "Option<Base64>")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The fresh AK's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub ak_public: Vec<u8>,
}

/// The server's challenge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkChallenge {
    /// A secret sealed to the EK and bound to the AK's name.
    pub credential: CredentialBlob,
}

/// The agent's answer.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkResponse {
    /// The secret TPM2_ActivateCredential returned.
    #[serde_as(as = "Base64")]
    pub activated_secret: Vec<u8>,
}

/// What the agent keeps between its payload and the challenge.
#[derive(Debug)]
pub struct EkAgentState {
    ak: KeyBlob,
    ek: EkKind,
}

/// Agent: makes a fresh AK and builds the payload.
pub fn build_payload(
    tpm: &Tpm,
    options: &AgentOptions,
) -> Result<(EkPayload, EkAgentState), AttestError> {
    let mut dev = tpm.lock()?;
    let ek = select_ek(dev.as_mut(), options.ek)?;
    let ak = dev.create_key(&options.ak.template())?;
    Ok((
        EkPayload {
            ek_public: ek.public.marshal(),
            ek_certificate: ek.certificate,
            ak_public: ak.public.marshal(),
        },
        EkAgentState { ak, ek: ek.kind },
    ))
}

impl AgentState for EkAgentState {
    type Challenge = EkChallenge;
    type Response = EkResponse;

    /// Agent: opens the credential in the TPM.
    fn answer(self, tpm: &Tpm, challenge: &EkChallenge) -> Result<EkResponse, AttestError> {
        let secret =
            tpm.with(|dev| dev.activate_credential(&self.ak, self.ek, &challenge.credential))?;
        Ok(EkResponse {
            activated_secret: secret.to_vec(),
        })
    }

    fn ak(&self) -> &KeyBlob {
        &self.ak
    }
}

/// The agent side of `tpm_ek`: [`build_payload`] with these options.
#[derive(Debug, Clone, Copy, Default)]
pub struct EkProver {
    /// How the agent picks its EK and AK.
    pub options: AgentOptions,
}

impl Prover for EkProver {
    const NAME: &'static str = NAME;
    type Payload = EkPayload;
    type State = EkAgentState;

    fn payload(&self, tpm: &Tpm) -> Result<(EkPayload, EkAgentState), AttestError> {
        build_payload(tpm, &self.options)
    }
}

/// The server's trust configuration for `tpm_ek`: manufacturer CAs, an allow-list,
/// or both.
#[derive(Debug)]
pub struct EkVerifier {
    ek_cas: CaPool,
    allow_list: Option<EkAllowList>,
}

/// What the server keeps between challenge and response (see [`Pending`] for why
/// it is consumed).
pub struct EkPending {
    secret: Zeroizing<Vec<u8>>,
    ak_public: PublicArea,
    result: NodeAttestation,
}

impl std::fmt::Debug for EkPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EkPending")
            .field("agent_path", &self.result.agent_path)
            .finish_non_exhaustive()
    }
}

impl EkVerifier {
    /// `ek_cas` may be empty (trust by allow-list only); `allow_list` may be None
    /// (trust by certificate only). With neither, nothing is trusted.
    pub fn new(ek_cas: CaPool, allow_list: Option<EkAllowList>) -> Self {
        Self { ek_cas, allow_list }
    }
}

impl Verifier for EkVerifier {
    const NAME: &'static str = NAME;
    type Payload = EkPayload;
    type Challenge = EkChallenge;
    type Pending = EkPending;

    /// Server: decides whether the EK is trusted and issues the challenge.
    fn start(&self, payload: &EkPayload) -> Result<(EkChallenge, EkPending), AttestError> {
        let ek_public = parse_public(&payload.ek_public, "EK public area")?;
        let ak_public = parse_public(&payload.ak_public, "AK public area")?;
        let pub_hash = ek_pub_hash(&ek_public)?;

        // A certificate that certifies another key is refused outright; one from an
        // unknown CA only means the EK must be allow-listed instead.
        let cert = payload.ek_certificate.as_deref();
        let by_certificate = match check_ek(&ek_public, cert, &self.ek_cas) {
            Ok(verified) => verified.map(|_| ()).ok_or_else(|| {
                if cert.is_none() {
                    "no EK certificate was presented".to_owned()
                } else {
                    "no manufacturer CA is configured".to_owned()
                }
            }),
            Err(AttestError::EkCertificate(e)) => Err(format!("its certificate was refused ({e})")),
            Err(other) => return Err(other),
        };
        let allowed = match &self.allow_list {
            Some(list) => list.contains(&pub_hash)?,
            None => false,
        };
        if let Err(cert_reason) = &by_certificate
            && !allowed
        {
            let list = if self.allow_list.is_some() {
                "it is not on the allow-list"
            } else {
                "no allow-list is configured"
            };
            return Err(AttestError::EkNotTrusted {
                pub_hash,
                reason: format!("{list}, and {cert_reason}"),
            });
        }
        check_ak_public(&ak_public)?;

        let mut selectors = vec![selector(SELECTOR_TYPE, format!("pub_hash:{pub_hash}"))?];
        if by_certificate.is_ok()
            && let Some(cert) = cert
        {
            let id = tpm_identity(cert)?;
            for (name, value) in [
                ("manufacturer", id.manufacturer),
                ("model", id.model),
                ("version", id.version),
            ] {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    selectors.push(selector(SELECTOR_TYPE, format!("{name}:{v}"))?);
                }
            }
        }

        let secret = random_bytes(SECRET_LEN)?;
        let credential = make_credential(&ek_public, &ak_public.name(), &secret)?;
        Ok((
            EkChallenge { credential },
            EkPending {
                secret,
                ak_public,
                result: NodeAttestation {
                    agent_path: format!("tpm/{pub_hash}"),
                    selectors,
                },
            },
        ))
    }
}

impl Pending for EkPending {
    type Response = EkResponse;

    /// Server: checks the answer against this attempt, and only this one.
    fn finish(self, response: &EkResponse) -> Result<NodeAttestation, AttestError> {
        if !secrets_equal(&response.activated_secret, &self.secret) {
            return Err(AttestError::ActivationFailed);
        }
        Ok(self.result)
    }

    fn ak_public(&self) -> &PublicArea {
        &self.ak_public
    }
}

impl EkPending {
    /// The agent ID path the attempt will give if the answer holds.
    pub fn agent_path(&self) -> &str {
        &self.result.agent_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_bytes_as_standard_base64_and_a_missing_certificate_as_null() {
        let payload = EkPayload {
            ek_public: vec![0xfb, 0xff, 0x00],
            ek_certificate: None,
            ak_public: b"ak".to_vec(),
        };
        let json = serde_json::to_string(&payload).unwrap();
        assert_eq!(
            json,
            r#"{"ek_public":"+/8A","ek_certificate":null,"ak_public":"YWs="}"#
        );
        assert_eq!(serde_json::from_str::<EkPayload>(&json).unwrap(), payload);
        // An agent that leaves the certificate out is read as having none.
        let without: EkPayload =
            serde_json::from_str(r#"{"ek_public":"+/8A","ak_public":"YWs="}"#).unwrap();
        assert_eq!(without, payload);
        let with = EkPayload {
            ek_certificate: Some(vec![0x30, 0x00]),
            ..payload
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""ek_certificate":"MAA=""#), "{json}");
        assert_eq!(serde_json::from_str::<EkPayload>(&json).unwrap(), with);
        // Not base64: refused, not guessed.
        assert!(serde_json::from_str::<EkPayload>(r#"{"ek_public":"*","ak_public":""}"#).is_err());
        let challenge = EkChallenge {
            credential: CredentialBlob {
                id_object: vec![1],
                encrypted_secret: vec![2, 3],
            },
        };
        assert_eq!(
            serde_json::to_string(&challenge).unwrap(),
            r#"{"credential":{"id_object":"AQ==","encrypted_secret":"AgM="}}"#
        );
    }
}
