//! The agent-key proof carried beside every TPM attestor's own messages (see
//! [`crate::verifier::key_proof`] for what it proves): the server adds a fresh
//! `key_nonce` to its challenge, and the agent adds its `key_certify` to its answer.
//! Both are extra JSON fields next to the attestor's own, so an older agent (which
//! ignores the nonce and sends no certify) and an older server (which ignores the
//! certify) still attest; the server then records the key as not proven.

use serde_with::base64::Base64;

use crate::device::{DeviceError, KeyBlob, Tpm};
use crate::verifier::key_proof::KeyCertify;

/// The length of the server's key nonce.
pub const KEY_NONCE_LEN: usize = 32;

/// A challenge with the nonce the agent's key certify must be bound to.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WithKeyNonce<C> {
    /// The attestor's own challenge.
    #[serde(flatten)]
    pub challenge: C,
    /// Fresh random bytes (absent from older servers).
    #[serde_as(as = "Option<Base64>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_nonce: Option<Vec<u8>>,
}

/// An answer with the certify of the agent's new SVID key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WithKeyCertify<R> {
    /// The attestor's own answer.
    #[serde(flatten)]
    pub response: R,
    /// TPM2_Certify of the SVID key by the attestation's AK (absent from older
    /// agents, and from agents whose key is not in the TPM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_certify: Option<KeyCertify>,
    /// A TPM2_Quote by the same AK over the PCRs the agent is configured to send
    /// (measured boot), with their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_quote: Option<crate::verifier::quote::PcrQuote>,
}

/// Agent: quotes the SHA-256 bank's `pcrs` with `ak` and reads their values.
pub fn quote_pcrs(
    tpm: &Tpm,
    ak: &KeyBlob,
    pcrs: &[u8],
    qualifying: &[u8],
) -> Result<crate::verifier::quote::PcrQuote, DeviceError> {
    // Read after the quote, in one lock: nothing extends a PCR in between unless
    // another process shares the TPM, and then the server sees a digest mismatch.
    let (out, values) = tpm.with(|dev| {
        let out = dev.quote(ak, pcrs, qualifying)?;
        Ok((out, dev.pcr_read(pcrs)?))
    })?;
    Ok(crate::verifier::quote::PcrQuote {
        pcrs: pcrs.to_vec(),
        values,
        attest: out.attest,
        signature: out.signature,
    })
}

/// Agent: certifies `key` (a key blob under the SRK) with `ak`.
pub fn certify_key(
    tpm: &Tpm,
    key: &KeyBlob,
    ak: &KeyBlob,
    qualifying: &[u8],
) -> Result<KeyCertify, DeviceError> {
    let out = tpm.with(|dev| dev.certify(key, ak, qualifying))?;
    Ok(KeyCertify {
        public: key.public.marshal(),
        attest: out.attest,
        signature: out.signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Inner {
        secret: u32,
    }

    #[test]
    fn extra_fields_sit_beside_the_attestors_own_and_may_be_absent() {
        let c = WithKeyNonce {
            challenge: Inner { secret: 7 },
            key_nonce: Some(vec![0xfb, 0xff]),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"secret":7,"key_nonce":"+/8="}"#);
        assert_eq!(
            serde_json::from_str::<WithKeyNonce<Inner>>(&json).unwrap(),
            c
        );
        // What an older server sends, and what an older agent reads.
        let old: WithKeyNonce<Inner> = serde_json::from_str(r#"{"secret":7}"#).unwrap();
        assert_eq!(old.key_nonce, None);
        assert_eq!(
            serde_json::from_str::<Inner>(&json).unwrap(),
            Inner { secret: 7 }
        );
        let r = WithKeyCertify {
            response: Inner { secret: 1 },
            key_certify: Some(KeyCertify {
                public: vec![1],
                attest: vec![2],
                signature: vec![3],
            }),
            pcr_quote: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<WithKeyCertify<Inner>>(&json).unwrap(),
            r
        );
        assert_eq!(
            serde_json::from_str::<Inner>(&json).unwrap(),
            Inner { secret: 1 }
        );
        let old: WithKeyCertify<Inner> = serde_json::from_str(r#"{"secret":1}"#).unwrap();
        assert_eq!(old.key_certify, None);
    }
}
