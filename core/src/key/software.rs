//! Software keys: generated and held in process memory (ring for signing; the `rsa`
//! crate only to generate RSA keys, which ring cannot do).

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    RsaKeyPair,
};
use zeroize::Zeroizing;

use super::{Key, KeyError, KeyType, SignatureScheme};
use crate::der;
use crate::failure::Failure;

enum Inner {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A key whose private half is in process memory.
pub struct SoftwareKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    spki: Vec<u8>,
    inner: Inner,
    rng: SystemRandom,
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl SoftwareKey {
    /// Generates a new key.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match key_type {
            KeyType::EcP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| KeyError::Backend("EC P-256 key generation failed".into()))?
                .as_ref()
                .to_vec(),
            KeyType::EcP384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
                .map_err(|_| KeyError::Backend("EC P-384 key generation failed".into()))?
                .as_ref()
                .to_vec(),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, key_type.bits())
                    .map_err(|e| {
                        KeyError::Backend(Failure::caused_by(
                            format!("RSA key generation failed: {e}"),
                            e,
                        ))
                    })?;
                key.to_pkcs8_der()
                    .map_err(|e| {
                        KeyError::Backend(Failure::caused_by(
                            format!("RSA key encoding failed: {e}"),
                            e,
                        ))
                    })?
                    .as_bytes()
                    .to_vec()
            }
        };
        Self::from_pkcs8(&pkcs8)
    }

    /// Loads a key from unencrypted PKCS#8 DER (EC P-256, P-384 or RSA).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = Zeroizing::new(pkcs8.to_vec());
        if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng) {
            let spki = der::ec_spki(kp.public_key().as_ref(), false);
            return Ok(Self {
                key_type: KeyType::EcP256,
                pkcs8,
                spki,
                inner: Inner::Ecdsa(kp),
                rng,
            });
        }
        if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8, &rng) {
            let spki = der::ec_spki(kp.public_key().as_ref(), true);
            return Ok(Self {
                key_type: KeyType::EcP384,
                pkcs8,
                spki,
                inner: Inner::Ecdsa(kp),
                rng,
            });
        }
        match RsaKeyPair::from_pkcs8(&pkcs8) {
            Ok(kp) => {
                let key_type = match kp.public().modulus_len() * 8 {
                    2048 => KeyType::Rsa2048,
                    3072 => KeyType::Rsa3072,
                    4096 => KeyType::Rsa4096,
                    bits => {
                        return Err(KeyError::Backend(
                            format!("RSA keys of {bits} bits are not supported").into(),
                        ));
                    }
                };
                let spki = der::rsa_spki(kp.public().as_ref());
                Ok(Self {
                    key_type,
                    pkcs8,
                    spki,
                    inner: Inner::Rsa(kp),
                    rng,
                })
            }
            // ring's errors carry nothing beyond their text.
            Err(e) => Err(KeyError::Backend(
                format!("not a PKCS#8 EC P-256, EC P-384 or RSA private key: {e}").into(),
            )),
        }
    }

    /// The private key as unencrypted PKCS#8 DER, as the Workload API hands it out.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl Key for SoftwareKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.key_type.supports(scheme) {
            return Err(KeyError::UnsupportedScheme {
                key_type: self.key_type,
                scheme,
            });
        }
        match &self.inner {
            Inner::Ecdsa(kp) => kp
                .sign(&self.rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyError::Backend("ECDSA signing failed".into())),
            Inner::Rsa(kp) => {
                use ring::signature as s;
                let padding: &'static dyn s::RsaEncoding = match scheme {
                    SignatureScheme::RsaPkcs1Sha256 => &s::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha384 => &s::RSA_PKCS1_SHA384,
                    SignatureScheme::RsaPkcs1Sha512 => &s::RSA_PKCS1_SHA512,
                    SignatureScheme::RsaPssSha256 => &s::RSA_PSS_SHA256,
                    SignatureScheme::RsaPssSha384 => &s::RSA_PSS_SHA384,
                    SignatureScheme::RsaPssSha512 => &s::RSA_PSS_SHA512,
                    _ => {
                        return Err(KeyError::UnsupportedScheme {
                            key_type: self.key_type,
                            scheme,
                        });
                    }
                };
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(padding, &self.rng, message, &mut sig)
                    .map_err(|_| KeyError::Backend("RSA signing failed".into()))?;
                Ok(sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::verify_signature;

    #[test]
    fn ec_keys_sign_and_verify() {
        for kt in [KeyType::EcP256, KeyType::EcP384] {
            let key = SoftwareKey::generate(kt).unwrap();
            assert_eq!(key.key_type(), kt);
            let sig = key.sign_default(b"hello").unwrap();
            assert!(verify_signature(
                key.public_key_der(),
                kt.default_scheme(),
                b"hello",
                &sig
            ));
            assert!(!verify_signature(
                key.public_key_der(),
                kt.default_scheme(),
                b"hellO",
                &sig
            ));
            assert_eq!(crate::key::key_type_of_spki(key.public_key_der()), Some(kt));
            let again = SoftwareKey::from_pkcs8(key.pkcs8_der()).unwrap();
            assert_eq!(again.public_key_der(), key.public_key_der());
            assert!(matches!(
                key.sign(SignatureScheme::RsaPkcs1Sha256, b"x"),
                Err(KeyError::UnsupportedScheme { .. })
            ));
        }
    }

    #[test]
    fn rsa_key_signs_pkcs1_and_pss() {
        let key = SoftwareKey::generate(KeyType::Rsa2048).unwrap();
        assert_eq!(key.key_type(), KeyType::Rsa2048);
        for scheme in [
            SignatureScheme::RsaPkcs1Sha256,
            SignatureScheme::RsaPssSha256,
        ] {
            let sig = key.sign(scheme, b"m").unwrap();
            assert!(verify_signature(key.public_key_der(), scheme, b"m", &sig));
        }
        assert_eq!(
            crate::key::key_type_of_spki(key.public_key_der()),
            Some(KeyType::Rsa2048)
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(SoftwareKey::from_pkcs8(b"not a key").is_err());
    }
}
