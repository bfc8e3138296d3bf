//! `x509pop`: proof that the node holds the key of a certificate. The agent sends its
//! certificate chain; the server answers with a random nonce; the agent adds a nonce
//! of its own and signs both with the node key. The signed bytes start with a label
//! of their own, so that the node key signs nothing a server chose alone and nothing
//! that could pass for another protocol's message; the signature scheme follows from
//! the key type, so the server never lets the agent pick a weaker one.

use serde::{Deserialize, Serialize};
use serde_with::base64::Base64;

use crate::key::{KeyType, SignatureScheme};

/// The name both halves use.
pub const NAME: &str = "x509pop";

/// Bytes in each nonce.
pub const NONCE_LEN: usize = 32;

/// What the signed message starts with.
pub const SIGNING_LABEL: &[u8] = b"tessera x509pop v1\0";

/// The agent's evidence: its certificate first, then intermediates towards the CA.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// DER certificates, the node's first.
    #[serde_as(as = "Vec<Base64>")]
    pub certificates: Vec<Vec<u8>>,
}

/// The server's challenge.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The server's nonce, [`NONCE_LEN`] bytes.
    #[serde_as(as = "Base64")]
    pub nonce: Vec<u8>,
}

/// The agent's answer.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The agent's own nonce.
    #[serde_as(as = "Base64")]
    pub nonce: Vec<u8>,
    /// [`signed_message`] signed with [`scheme_for`] the key (ECDSA in DER).
    #[serde_as(as = "Base64")]
    pub signature: Vec<u8>,
}

/// The bytes the node key signs.
pub fn signed_message(challenge_nonce: &[u8], response_nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_LABEL.len() + 2 * NONCE_LEN);
    m.extend_from_slice(SIGNING_LABEL);
    m.extend_from_slice(challenge_nonce);
    m.extend_from_slice(response_nonce);
    m
}

/// The one scheme each kind of node key signs with.
pub fn scheme_for(key_type: KeyType) -> SignatureScheme {
    match key_type {
        KeyType::EcP256 => SignatureScheme::EcdsaP256Sha256,
        KeyType::EcP384 => SignatureScheme::EcdsaP384Sha384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => SignatureScheme::RsaPssSha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let p = Payload {
            certificates: vec![vec![1, 2], vec![3]],
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"certificates":["AQI=","Aw=="]}"#);
        assert_eq!(serde_json::from_str::<Payload>(&text).unwrap(), p);
        let e = serde_json::from_str::<Payload>(r#"{"certificates":["AQI=","%%"]}"#).unwrap_err();
        assert!(e.to_string().contains("Invalid"), "{e}");
        let r: Response = serde_json::from_str(r#"{"nonce":"AA==","signature":"AQ=="}"#).unwrap();
        assert_eq!((r.nonce, r.signature), (vec![0], vec![1]));
    }

    #[test]
    fn the_message_binds_both_nonces_in_order() {
        let a = signed_message(&[1; NONCE_LEN], &[2; NONCE_LEN]);
        let b = signed_message(&[2; NONCE_LEN], &[1; NONCE_LEN]);
        assert_ne!(a, b);
        assert!(a.starts_with(SIGNING_LABEL));
        assert_eq!(a.len(), SIGNING_LABEL.len() + 2 * NONCE_LEN);
    }
}
