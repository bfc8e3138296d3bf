//! The `tpm_devid` node attestor, both halves, as plain functions and values the
//! agent and server adapters call (they carry the messages, as JSON, over their
//! attestation stream).
//!
//! Agent: [`build_payload`] ([`DevIdProver`]) sends the DevID certificate chain, the DevID public area,
//! the EK certificate and public area, a fresh AK's public area and a TPM2_Certify of
//! the DevID key by that AK. Server: [`DevIdVerifier::start`] checks the DevID chain
//! against the vendor CAs, the EK certificate against the manufacturer CAs and the EK
//! key, the AK's attributes, the Certify signature and that it certifies the DevID
//! key, then challenges with a nonce for the DevID key to sign and a credential
//! (MakeCredential to the EK, bound to the AK's name). Agent: the
//! [`AgentState`] of [`DevIdAgentState`] signs and activates. Server:
//! [`DevIdPending`]'s `finish` checks both answers and returns the agent ID path
//! `tpm_devid/<sha1 of the DevID leaf DER>` and the selectors `subject:cn:`,
//! `issuer:cn:` and `ca:fingerprint:<sha1>` for every CA certificate of the
//! validated chain.
//!
//! Together: the DevID key is certified by the vendor, the AK vouches that the DevID
//! key is in the AK's TPM, and only the TPM holding the manufacturer-certified EK can
//! open a credential bound to the AK: so the vendor-certified key sits in a genuine
//! TPM. The nonce signature proves the DevID key is used live, not replayed.

use ring::digest;
use serde_with::base64::Base64;
use zeroize::Zeroizing;

use crate::attestation::{
    AgentOptions, AgentState, AttestError, NodeAttestation, Pending, Prover, Verifier, check_ek,
    parse_public, public_matches_spki, random_bytes, secrets_equal, select_ek, selector,
};
use crate::device::{KeyBlob, SigningScheme, Tpm};
pub use crate::factory::DevIdKey;
use crate::verifier::ak::check_ak_public;
use crate::verifier::certify::verify_certify;
use crate::verifier::chain::{CaPool, LeafProfile, common_name, verify_chain};
use crate::verifier::credential::{CredentialBlob, make_credential};
use crate::verifier::ek::EkKind;
use crate::verifier::signature::verify_signature;
use crate::wire::{ObjectAttributes as A, PublicArea, Signature, hex};

/// The attestor's name.
pub const NAME: &str = "tpm_devid";

/// The selector type (and the agent ID path's first segment).
pub const SELECTOR_TYPE: &str = NAME;

/// What the DevID key signs: this context, then the server's nonce. The context
/// keeps a server from using the DevID key as a signing oracle for anything else.
pub const NONCE_CONTEXT: &[u8] = b"tessera tpm_devid nonce v1\0";

const NONCE_LEN: usize = 32;
const SECRET_LEN: usize = 32;

/// The agent's first message.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevIdPayload {
    /// DER certificates, the DevID leaf first, then any intermediates.
    #[serde_as(as = "Vec<Base64>")]
    pub devid_chain: Vec<Vec<u8>>,
    /// The DevID key's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub devid_public: Vec<u8>,
    /// The EK certificate (DER), as read from the TPM's NV.
    #[serde_as(as = "Option<Base64>")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The EK's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub ek_public: Vec<u8>,
    /// The fresh AK's TPMT_PUBLIC.
    #[serde_as(as = "Base64")]
    pub ak_public: Vec<u8>,
    /// TPMS_ATTEST of TPM2_Certify(DevID key, AK), empty qualifying data.
    #[serde_as(as = "Base64")]
    pub certify_info: Vec<u8>,
    /// The AK's TPMT_SIGNATURE over `certify_info`.
    #[serde_as(as = "Base64")]
    pub certify_signature: Vec<u8>,
}

/// The server's challenge.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevIdChallenge {
    /// Random bytes the DevID key signs (after [`NONCE_CONTEXT`]).
    #[serde_as(as = "Base64")]
    pub nonce: Vec<u8>,
    /// A secret sealed to the EK and bound to the AK's name.
    pub credential: CredentialBlob,
}

/// The agent's answer.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevIdResponse {
    /// TPMT_SIGNATURE by the DevID key over [`NONCE_CONTEXT`] || nonce.
    #[serde_as(as = "Base64")]
    pub nonce_signature: Vec<u8>,
    /// The secret TPM2_ActivateCredential returned.
    #[serde_as(as = "Base64")]
    pub activated_secret: Vec<u8>,
}

/// The agent's DevID: its certificate chain and its key.
#[derive(Debug, Clone)]
pub struct DevIdIdentity {
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The DevID key: a blob loadable only in this TPM, or a persistent handle.
    pub key: DevIdKey,
}

/// What the agent keeps between its payload and the challenge.
#[derive(Debug)]
pub struct DevIdAgentState {
    ak: KeyBlob,
    devid_key: DevIdKey,
    ek: EkKind,
}

/// Agent: makes a fresh AK, certifies the DevID key with it, and builds the payload.
pub fn build_payload(
    tpm: &Tpm,
    identity: &DevIdIdentity,
    options: &AgentOptions,
) -> Result<(DevIdPayload, DevIdAgentState), AttestError> {
    if identity.chain.is_empty() {
        return Err(AttestError::Malformed {
            field: "DevID certificate chain",
            reason: "empty".into(),
        });
    }
    let mut dev = tpm.lock()?;
    let ek = select_ek(dev.as_mut(), options.ek)?;
    let ak = dev.create_key(&options.ak.template())?;
    let certified = identity.key.certify(dev.as_mut(), &ak, &[])?;
    let payload = DevIdPayload {
        devid_chain: identity.chain.clone(),
        devid_public: identity.key.public().marshal(),
        ek_certificate: ek.certificate,
        ek_public: ek.public.marshal(),
        ak_public: ak.public.marshal(),
        certify_info: certified.attest,
        certify_signature: certified.signature,
    };
    Ok((
        payload,
        DevIdAgentState {
            ak,
            devid_key: identity.key.clone(),
            ek: ek.kind,
        },
    ))
}

impl AgentState for DevIdAgentState {
    type Challenge = DevIdChallenge;
    type Response = DevIdResponse;

    /// Agent: signs the nonce with the DevID key and activates the credential.
    fn answer(self, tpm: &Tpm, challenge: &DevIdChallenge) -> Result<DevIdResponse, AttestError> {
        let scheme = SigningScheme::default_for(self.devid_key.public());
        let digest = scheme.hash().digest(&[NONCE_CONTEXT, &challenge.nonce]);
        let mut dev = tpm.lock()?;
        let signature = self.devid_key.sign(dev.as_mut(), &digest, scheme)?;
        let secret = dev.activate_credential(&self.ak, self.ek, &challenge.credential)?;
        Ok(DevIdResponse {
            nonce_signature: signature.marshal(),
            activated_secret: secret.to_vec(),
        })
    }

    fn ak(&self) -> &KeyBlob {
        &self.ak
    }
}

/// The agent side of `tpm_devid`: [`build_payload`] with this DevID and options.
#[derive(Debug, Clone)]
pub struct DevIdProver {
    /// The DevID certificate chain and key.
    pub identity: DevIdIdentity,
    /// How the agent picks its EK and AK.
    pub options: AgentOptions,
}

impl Prover for DevIdProver {
    const NAME: &'static str = NAME;
    type Payload = DevIdPayload;
    type State = DevIdAgentState;

    fn payload(&self, tpm: &Tpm) -> Result<(DevIdPayload, DevIdAgentState), AttestError> {
        build_payload(tpm, &self.identity, &self.options)
    }
}

/// The server's trust configuration for `tpm_devid`.
#[derive(Debug, Clone)]
pub struct DevIdVerifier {
    devid_cas: CaPool,
    ek_cas: CaPool,
}

/// What the server keeps between challenge and response: this attempt's nonce and
/// secret. Consumed by checking the answer (see [`Pending`]).
pub struct DevIdPending {
    nonce: Vec<u8>,
    secret: Zeroizing<Vec<u8>>,
    devid_public: PublicArea,
    ak_public: PublicArea,
    result: NodeAttestation,
}

impl std::fmt::Debug for DevIdPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdPending")
            .field("agent_path", &self.result.agent_path)
            .finish_non_exhaustive()
    }
}

impl DevIdVerifier {
    /// `devid_cas`: the vendor CAs DevID certificates must chain to;
    /// `ek_cas`: the TPM manufacturer CAs EK certificates must chain to.
    pub fn new(devid_cas: CaPool, ek_cas: CaPool) -> Self {
        Self { devid_cas, ek_cas }
    }
}

impl Verifier for DevIdVerifier {
    const NAME: &'static str = NAME;
    type Payload = DevIdPayload;
    type Challenge = DevIdChallenge;
    type Pending = DevIdPending;

    /// Server: checks the payload and issues the challenge.
    fn start(&self, payload: &DevIdPayload) -> Result<(DevIdChallenge, DevIdPending), AttestError> {
        let devid_public = parse_public(&payload.devid_public, "DevID public area")?;
        let ek_public = parse_public(&payload.ek_public, "EK public area")?;
        let ak_public = parse_public(&payload.ak_public, "AK public area")?;

        // The DevID certificate, and that it certifies the DevID key.
        let (leaf, presented) =
            payload
                .devid_chain
                .split_first()
                .ok_or(AttestError::Malformed {
                    field: "DevID certificate chain",
                    reason: "empty".into(),
                })?;
        let chain = verify_chain(leaf, presented, &self.devid_cas, LeafProfile::DevId)
            .map_err(AttestError::DevIdCertificate)?;
        let leaf_spki =
            crate::verifier::chain::spki_of(leaf).ok_or(AttestError::DevIdKeyMismatch)?;
        if !public_matches_spki(&devid_public, &leaf_spki) {
            return Err(AttestError::DevIdKeyMismatch);
        }
        let needed = A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::SIGN_ENCRYPT;
        if !devid_public.attributes.has(needed) {
            return Err(AttestError::DevIdKeyAttributes);
        }

        // The EK: genuine by its manufacturer's certificate.
        if self.ek_cas.is_empty() {
            return Err(AttestError::Config(
                "tpm_devid needs the TPM manufacturers' CA certificates to check EK certificates",
            ));
        }
        let ek_cert = payload
            .ek_certificate
            .as_deref()
            .ok_or(AttestError::EkCertificateMissing)?;
        check_ek(&ek_public, Some(ek_cert), &self.ek_cas)?;

        // The AK vouches that the DevID key is in its TPM.
        check_ak_public(&ak_public)?;
        verify_certify(
            &ak_public,
            &payload.certify_info,
            &payload.certify_signature,
            &devid_public.name(),
            &[],
        )?;

        let nonce = random_bytes(NONCE_LEN)?.to_vec();
        let secret = random_bytes(SECRET_LEN)?;
        let credential = make_credential(&ek_public, &ak_public.name(), &secret)?;

        let fingerprint = hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf).as_ref());
        let mut selectors = Vec::new();
        if let Some(cn) = common_name(leaf, false) {
            selectors.push(selector(SELECTOR_TYPE, format!("subject:cn:{cn}"))?);
        }
        if let Some(cn) = common_name(leaf, true) {
            selectors.push(selector(SELECTOR_TYPE, format!("issuer:cn:{cn}"))?);
        }
        for ca in &chain.cas {
            let fp = hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, ca).as_ref());
            selectors.push(selector(SELECTOR_TYPE, format!("ca:fingerprint:{fp}"))?);
        }
        let result = NodeAttestation {
            agent_path: format!("tpm_devid/{fingerprint}"),
            selectors,
        };
        Ok((
            DevIdChallenge {
                nonce: nonce.clone(),
                credential,
            },
            DevIdPending {
                nonce,
                secret,
                devid_public,
                ak_public,
                result,
            },
        ))
    }
}

impl Pending for DevIdPending {
    type Response = DevIdResponse;

    /// Server: checks the answers against this attempt, and only this one.
    fn finish(self, response: &DevIdResponse) -> Result<NodeAttestation, AttestError> {
        if !secrets_equal(&response.activated_secret, &self.secret) {
            return Err(AttestError::ActivationFailed);
        }
        let signature = Signature::parse(&response.nonce_signature)
            .map_err(|e| AttestError::NonceSignature(e.to_string()))?;
        let mut signed = NONCE_CONTEXT.to_vec();
        signed.extend_from_slice(&self.nonce);
        verify_signature(&self.devid_public, &signed, &signature)
            .map_err(|e| AttestError::NonceSignature(e.to_string()))?;
        Ok(self.result)
    }

    fn ak_public(&self) -> &PublicArea {
        &self.ak_public
    }
}

impl DevIdPending {
    /// The agent ID path the attempt will give if the answers hold.
    pub fn agent_path(&self) -> &str {
        &self.result.agent_path
    }
}
