//! The key seam: one small trait every signing key implements, whether it lives in
//! memory, on disk, in a PKCS#11 token or in a TPM, plus the key manager trait that
//! creates and finds such keys by name.
//!
//! A [`Key`] signs with a named [`SignatureScheme`] and always returns signatures in
//! the form X.509 and TLS use (DER for ECDSA). Hardware backends that produce raw
//! `r||s` convert with [`crate::der::ecdsa_raw_to_der`]; JWS conversion happens in
//! [`crate::jwt`]. Adapters plug any key into rcgen ([`RcgenKey`]) and rustls
//! ([`TlsSigningKey`]).

mod adapters;
mod manager;
mod software;

use std::fmt;
use std::str::FromStr;

use crate::failure::Failure;

pub(crate) use adapters::rcgen_algorithm;
pub use adapters::{RcgenKey, TlsSigningKey};
pub use manager::{KeyManager, MemoryKeyManager};
pub use software::SoftwareKey;

/// The kinds of key Tessera creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA on NIST P-384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA with a 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    /// The scheme used when nothing else is asked for (X.509 and JWT signing).
    pub fn default_scheme(self) -> SignatureScheme {
        match self {
            KeyType::EcP256 => SignatureScheme::EcdsaP256Sha256,
            KeyType::EcP384 => SignatureScheme::EcdsaP384Sha384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                SignatureScheme::RsaPkcs1Sha256
            }
        }
    }

    /// Whether the key is RSA.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// RSA modulus size in bits, or the curve size for EC keys.
    pub fn bits(self) -> usize {
        match self {
            KeyType::EcP256 => 256,
            KeyType::EcP384 => 384,
            KeyType::Rsa2048 => 2048,
            KeyType::Rsa3072 => 3072,
            KeyType::Rsa4096 => 4096,
        }
    }

    /// Whether the key can sign with `scheme`.
    pub fn supports(self, scheme: SignatureScheme) -> bool {
        match self {
            KeyType::EcP256 => scheme == SignatureScheme::EcdsaP256Sha256,
            KeyType::EcP384 => scheme == SignatureScheme::EcdsaP384Sha384,
            _ => scheme.is_rsa(),
        }
    }

    /// The configuration name (`ec-p256`, `rsa-2048`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ec-p256" => KeyType::EcP256,
            "ec-p384" => KeyType::EcP384,
            "rsa-2048" => KeyType::Rsa2048,
            "rsa-3072" => KeyType::Rsa3072,
            "rsa-4096" => KeyType::Rsa4096,
            other => {
                return Err(KeyError::Config(format!(
                    "unknown key type {other:?} (expected ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096)"
                )));
            }
        })
    }
}

/// Hash functions the schemes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Hashes `message`.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlgorithm::Sha256 => &ring::digest::SHA256,
            HashAlgorithm::Sha384 => &ring::digest::SHA384,
            HashAlgorithm::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, message).as_ref().to_vec()
    }

    /// The DER DigestInfo prefix that PKCS#1 v1.5 signatures put before the digest.
    pub fn pkcs1_digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlgorithm::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            HashAlgorithm::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            HashAlgorithm::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
            HashAlgorithm::Sha512 => 64,
        }
    }
}

/// A signature algorithm: key family, padding and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// ECDSA on P-256 with SHA-256 (`ES256`).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (`ES384`).
    EcdsaP384Sha384,
    /// RSA PKCS#1 v1.5 with SHA-256 (`RS256`).
    RsaPkcs1Sha256,
    /// RSA PKCS#1 v1.5 with SHA-384 (`RS384`).
    RsaPkcs1Sha384,
    /// RSA PKCS#1 v1.5 with SHA-512 (`RS512`).
    RsaPkcs1Sha512,
    /// RSA-PSS with SHA-256, salt as long as the hash (`PS256`).
    RsaPssSha256,
    /// RSA-PSS with SHA-384, salt as long as the hash (`PS384`).
    RsaPssSha384,
    /// RSA-PSS with SHA-512, salt as long as the hash (`PS512`).
    RsaPssSha512,
}

impl SignatureScheme {
    /// The hash the scheme signs.
    pub fn hash(self) -> HashAlgorithm {
        use SignatureScheme::*;
        match self {
            EcdsaP256Sha256 | RsaPkcs1Sha256 | RsaPssSha256 => HashAlgorithm::Sha256,
            EcdsaP384Sha384 | RsaPkcs1Sha384 | RsaPssSha384 => HashAlgorithm::Sha384,
            RsaPkcs1Sha512 | RsaPssSha512 => HashAlgorithm::Sha512,
        }
    }

    /// Whether this is an RSA scheme.
    pub fn is_rsa(self) -> bool {
        !matches!(
            self,
            SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384
        )
    }

    /// Whether this is an RSA-PSS scheme.
    pub fn is_pss(self) -> bool {
        matches!(
            self,
            SignatureScheme::RsaPssSha256
                | SignatureScheme::RsaPssSha384
                | SignatureScheme::RsaPssSha512
        )
    }

    /// The JWS `alg` name.
    pub fn jws_alg(self) -> &'static str {
        use SignatureScheme::*;
        match self {
            EcdsaP256Sha256 => "ES256",
            EcdsaP384Sha384 => "ES384",
            RsaPkcs1Sha256 => "RS256",
            RsaPkcs1Sha384 => "RS384",
            RsaPkcs1Sha512 => "RS512",
            RsaPssSha256 => "PS256",
            RsaPssSha384 => "PS384",
            RsaPssSha512 => "PS512",
        }
    }

    /// The ring verification algorithm for a signature in this scheme, in the form
    /// [`Key::sign`] returns it (DER for ECDSA).
    pub fn ring_verification(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        use SignatureScheme::*;
        match self {
            EcdsaP256Sha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
            EcdsaP384Sha384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
            RsaPkcs1Sha256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            RsaPkcs1Sha384 => &ring::signature::RSA_PKCS1_2048_8192_SHA384,
            RsaPkcs1Sha512 => &ring::signature::RSA_PKCS1_2048_8192_SHA512,
            RsaPssSha256 => &ring::signature::RSA_PSS_2048_8192_SHA256,
            RsaPssSha384 => &ring::signature::RSA_PSS_2048_8192_SHA384,
            RsaPssSha512 => &ring::signature::RSA_PSS_2048_8192_SHA512,
        }
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key cannot sign with the scheme asked for.
    #[error("{key_type} key cannot sign with {scheme:?}")]
    UnsupportedScheme {
        /// The key's type.
        key_type: KeyType,
        /// The scheme asked for.
        scheme: SignatureScheme,
    },
    /// The key type is not supported by this key manager.
    #[error("key type {0} is not supported here")]
    UnsupportedKeyType(KeyType),
    /// No key has that name.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// The backing store (token, TPM, disk) cannot be used right now; retrying later
    /// may work. The token's or TPM's own error is the source, when there is one.
    #[error("key store unavailable: {0}")]
    Unavailable(#[source] Failure),
    /// A configuration value is wrong.
    #[error("{0}")]
    Config(String),
    /// Stored key material could not be read.
    /// The stored key material cannot be read.
    #[error("key material for {id:?} is unreadable: {reason}")]
    Corrupt {
        /// The key's name.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// File system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// Any other backend failure, with the error underneath as its source.
    #[error("{0}")]
    Backend(#[source] Failure),
}

/// A signing key. Implementations must be cheap to share (`Arc<dyn Key>`) and safe to
/// call from several threads; hardware backends serialise internally as they must.
pub trait Key: Send + Sync + fmt::Debug {
    /// What kind of key it is.
    fn key_type(&self) -> KeyType;

    /// The public key as a DER SubjectPublicKeyInfo.
    fn public_key_der(&self) -> &[u8];

    /// Signs `message` (the whole message, not a digest) with `scheme`; ECDSA
    /// signatures are DER-encoded.
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Signs with the key type's default scheme.
    fn sign_default(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.sign(self.key_type().default_scheme(), message)
    }
}

/// Checks a signature made by [`Key::sign`] against a SubjectPublicKeyInfo.
pub fn verify_signature(
    spki: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(bits) = crate::der::spki_public_key_bits(spki) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(scheme.ring_verification(), bits)
        .verify(message, signature)
        .is_ok()
}

/// Learns the key type from a SubjectPublicKeyInfo.
pub fn key_type_of_spki(spki: &[u8]) -> Option<KeyType> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    match info.parsed().ok()? {
        PublicKey::EC(point) => match point.key_size() {
            256 => Some(KeyType::EcP256),
            384 => Some(KeyType::EcP384),
            _ => None,
        },
        PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeyType::Rsa2048),
            3072 => Some(KeyType::Rsa3072),
            4096 => Some(KeyType::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for kt in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
            KeyType::Rsa4096,
        ] {
            assert_eq!(kt.name().parse::<KeyType>().unwrap(), kt);
        }
        assert!("ec-p521".parse::<KeyType>().is_err());
    }

    #[test]
    fn digest_info_prefix_lengths_match() {
        for h in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha384,
            HashAlgorithm::Sha512,
        ] {
            let prefix = h.pkcs1_digest_info_prefix();
            assert_eq!(prefix[1] as usize + 2, prefix.len() + h.output_len());
            assert_eq!(h.digest(b"x").len(), h.output_len());
        }
    }
}
