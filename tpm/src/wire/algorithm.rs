//! The hash algorithms and elliptic curves this crate handles, with their
//! TPM_ALG_ID and TPM_ECC_CURVE values.

use super::{Result, StructureError, alg, curve};

/// The hash algorithms this crate computes (names, KDFs, signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (only in names and old EK templates).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// From a TPM_ALG_ID.
    pub fn from_id(id: u16) -> Result<Self> {
        Ok(match id {
            alg::SHA1 => HashAlg::Sha1,
            alg::SHA256 => HashAlg::Sha256,
            alg::SHA384 => HashAlg::Sha384,
            alg::SHA512 => HashAlg::Sha512,
            other => {
                return Err(StructureError::Unsupported {
                    what: "hash algorithm",
                    value: other.into(),
                });
            }
        })
    }

    /// The TPM_ALG_ID.
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => alg::SHA1,
            HashAlg::Sha256 => alg::SHA256,
            HashAlg::Sha384 => alg::SHA384,
            HashAlg::Sha512 => alg::SHA512,
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub(crate) fn ring_digest(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    pub(crate) fn ring_hmac(self) -> ring::hmac::Algorithm {
        match self {
            HashAlg::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => ring::hmac::HMAC_SHA256,
            HashAlg::Sha384 => ring::hmac::HMAC_SHA384,
            HashAlg::Sha512 => ring::hmac::HMAC_SHA512,
        }
    }

    /// Hashes the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(self.ring_digest());
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().to_vec()
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = ring::hmac::Key::new(self.ring_hmac(), key);
        let mut ctx = ring::hmac::Context::with_key(&key);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign().as_ref().to_vec()
    }
}

/// The NIST curves this crate handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EccCurve {
    /// NIST P-256 (`TPM_ECC_NIST_P256`).
    P256,
    /// NIST P-384 (`TPM_ECC_NIST_P384`).
    P384,
}

impl EccCurve {
    /// From a TPM_ECC_CURVE.
    pub fn from_id(id: u16) -> Result<Self> {
        match id {
            curve::NIST_P256 => Ok(EccCurve::P256),
            curve::NIST_P384 => Ok(EccCurve::P384),
            other => Err(StructureError::Unsupported {
                what: "ECC curve",
                value: other.into(),
            }),
        }
    }

    /// The TPM_ECC_CURVE.
    pub fn id(self) -> u16 {
        match self {
            EccCurve::P256 => curve::NIST_P256,
            EccCurve::P384 => curve::NIST_P384,
        }
    }

    /// Size of a coordinate in bytes.
    pub fn field_size(self) -> usize {
        match self {
            EccCurve::P256 => 32,
            EccCurve::P384 => 48,
        }
    }
}
