//! Adapters that plug any [`Key`] into rcgen (certificate signing) and rustls (TLS
//! authentication), so that a key in an HSM or a TPM signs certificates and TLS
//! handshakes without its private half ever being seen.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::SignatureScheme as TlsScheme;

use super::{Key, KeyError, KeyType, SignatureScheme};
use crate::der;

/// A [`Key`] seen by rcgen as a signing key.
#[derive(Debug, Clone)]
pub struct RcgenKey {
    key: Arc<dyn Key>,
    bits: Vec<u8>,
}

thread_local! {
    /// rcgen's signing error carries no detail; the cause of the last failure on this
    /// thread waits here for the caller (signing is synchronous, so it is ours).
    static LAST_KEY_ERROR: RefCell<Option<KeyError>> = const { RefCell::new(None) };
}

impl RcgenKey {
    /// Wraps a key; fails if its public key cannot be read.
    pub fn new(key: Arc<dyn Key>) -> Result<Self, der::DerError> {
        let bits = der::spki_public_key_bits(key.public_key_der())?.to_vec();
        Ok(Self { key, bits })
    }

    /// The key error behind the last failed signature on this thread, if any.
    pub fn take_error() -> Option<KeyError> {
        LAST_KEY_ERROR.with(|slot| slot.borrow_mut().take())
    }
}

/// rcgen's name for the signature algorithm a key type signs certificates with.
pub(crate) fn rcgen_algorithm(kt: KeyType) -> &'static rcgen::SignatureAlgorithm {
    match kt {
        KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        _ => &rcgen::PKCS_RSA_SHA256,
    }
}

impl rcgen::PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.key.key_type())
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign_default(msg).map_err(|e| {
            LAST_KEY_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A [`Key`] as a rustls signing key, for client and server authentication.
#[derive(Debug, Clone)]
pub struct TlsSigningKey {
    key: Arc<dyn Key>,
}

impl TlsSigningKey {
    /// Wraps a key.
    pub fn new(key: Arc<dyn Key>) -> Self {
        Self { key }
    }
}

fn tls_scheme(s: SignatureScheme) -> TlsScheme {
    match s {
        SignatureScheme::EcdsaP256Sha256 => TlsScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::EcdsaP384Sha384 => TlsScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::RsaPkcs1Sha256 => TlsScheme::RSA_PKCS1_SHA256,
        SignatureScheme::RsaPkcs1Sha384 => TlsScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RsaPkcs1Sha512 => TlsScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RsaPssSha256 => TlsScheme::RSA_PSS_SHA256,
        SignatureScheme::RsaPssSha384 => TlsScheme::RSA_PSS_SHA384,
        SignatureScheme::RsaPssSha512 => TlsScheme::RSA_PSS_SHA512,
    }
}

impl rustls::sign::SigningKey for TlsSigningKey {
    fn choose_scheme(&self, offered: &[TlsScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let preference: &[SignatureScheme] = match self.key.key_type() {
            KeyType::EcP256 => &[SignatureScheme::EcdsaP256Sha256],
            KeyType::EcP384 => &[SignatureScheme::EcdsaP384Sha384],
            // TLS 1.3 allows only PSS for RSA; PKCS#1 remains for TLS 1.2 peers.
            _ => &[
                SignatureScheme::RsaPssSha256,
                SignatureScheme::RsaPssSha384,
                SignatureScheme::RsaPssSha512,
                SignatureScheme::RsaPkcs1Sha256,
                SignatureScheme::RsaPkcs1Sha384,
                SignatureScheme::RsaPkcs1Sha512,
            ],
        };
        preference
            .iter()
            .find(|s| offered.contains(&tls_scheme(**s)))
            .map(|s| {
                Box::new(TlsSigner {
                    key: self.key.clone(),
                    scheme: *s,
                }) as Box<dyn rustls::sign::Signer>
            })
    }

    fn public_key(&self) -> Option<rustls_pki_types::SubjectPublicKeyInfoDer<'_>> {
        Some(self.key.public_key_der().into())
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        if self.key.key_type().is_rsa() {
            rustls::SignatureAlgorithm::RSA
        } else {
            rustls::SignatureAlgorithm::ECDSA
        }
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: Arc<dyn Key>,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign(self.scheme, message)
            .map_err(|e| rustls::Error::General(format!("signing with the TLS key failed: {e}")))
    }

    fn scheme(&self) -> TlsScheme {
        tls_scheme(self.scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SoftwareKey;
    use rustls::sign::SigningKey as _;

    #[test]
    fn tls_key_picks_an_offered_scheme() {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let tls = TlsSigningKey::new(key.clone());
        assert!(tls.choose_scheme(&[TlsScheme::RSA_PSS_SHA256]).is_none());
        let signer = tls
            .choose_scheme(&[TlsScheme::RSA_PSS_SHA256, TlsScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        assert_eq!(signer.scheme(), TlsScheme::ECDSA_NISTP256_SHA256);
        let sig = signer.sign(b"hs").unwrap();
        assert!(crate::key::verify_signature(
            key.public_key_der(),
            SignatureScheme::EcdsaP256Sha256,
            b"hs",
            &sig
        ));
    }
}
