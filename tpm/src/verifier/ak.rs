//! Attestation keys: the templates the agent creates fresh AKs from, and the check
//! the server makes before trusting anything an AK signed.
//!
//! What makes an AK trustworthy is `restricted` + `sign`: a restricted signing key
//! refuses to sign data that starts with TPM_GENERATED_VALUE unless the TPM produced
//! it, so a TPMS_ATTEST it signed was really made by the TPM. `fixedTPM` (the key
//! never leaves this TPM) is what ties it to the EK through credential activation.

use std::fmt;
use std::str::FromStr;

use crate::wire::{EccCurve, HashAlg, ObjectAttributes as A, PublicArea, PublicParams, Scheme};

/// The AK algorithms the agent can use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum AkKind {
    /// RSA-2048 signing with RSASSA-PKCS1-v1_5 and SHA-256 (what SPIRE uses).
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// ECC P-256 signing with ECDSA and SHA-256; created in milliseconds, where RSA
    /// key generation in a TPM takes from a fraction of a second to seconds.
    #[default]
    #[serde(rename = "ecc-p256")]
    EccP256,
}

impl AkKind {
    /// The template: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA,
    /// restricted, sign; SHA-256 name.
    pub fn template(self) -> PublicArea {
        let attributes = A(A::FIXED_TPM
            | A::FIXED_PARENT
            | A::SENSITIVE_DATA_ORIGIN
            | A::USER_WITH_AUTH
            | A::NO_DA
            | A::RESTRICTED
            | A::SIGN_ENCRYPT);
        let params = match self {
            AkKind::Rsa2048 => PublicParams::Rsa {
                symmetric: None,
                scheme: Scheme::RsaSsa(HashAlg::Sha256),
                key_bits: 2048,
                exponent: 0,
                modulus: vec![],
            },
            AkKind::EccP256 => PublicParams::Ecc {
                symmetric: None,
                scheme: Scheme::Ecdsa(HashAlg::Sha256),
                curve: EccCurve::P256,
                kdf: None,
                x: vec![],
                y: vec![],
            },
        };
        PublicArea {
            name_alg: HashAlg::Sha256,
            attributes,
            auth_policy: vec![],
            params,
        }
    }

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            AkKind::Rsa2048 => "rsa-2048",
            AkKind::EccP256 => "ecc-p256",
        }
    }
}

impl fmt::Display for AkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AkKind {
    type Err = AkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rsa-2048" | "rsa" => Ok(AkKind::Rsa2048),
            "ecc-p256" | "ecc" => Ok(AkKind::EccP256),
            other => Err(AkError::UnknownKind(other.to_owned())),
        }
    }
}

/// Why a public area is not acceptable as an AK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AkError {
    /// Attributes that make an AK trustworthy are missing, or forbidden ones set.
    #[error(
        "AK attributes {0:?} are not those of an attestation key (need fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign, not decrypt)"
    )]
    Attributes(A),
    /// A restricted signing key must name its scheme.
    #[error("AK has no signing scheme")]
    NoScheme,
    /// SHA-1 names are too weak to bind anything to.
    #[error("AK name algorithm {0:?} is too weak")]
    WeakNameAlg(HashAlg),
    /// The key itself is malformed.
    #[error("AK public key unusable: {0}")]
    BadKey(String),
    /// An AK kind name in configuration is unknown.
    #[error("unknown AK type {0:?} (expected rsa-2048 or ecc-p256)")]
    UnknownKind(String),
}

/// Checks that `public` is a TPM-resident restricted signing key.
pub fn check_ak_public(public: &PublicArea) -> Result<(), AkError> {
    let required =
        A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::RESTRICTED | A::SIGN_ENCRYPT;
    if !public.attributes.has(required) || public.attributes.0 & A::DECRYPT != 0 {
        return Err(AkError::Attributes(public.attributes));
    }
    if public.name_alg == HashAlg::Sha1 {
        return Err(AkError::WeakNameAlg(public.name_alg));
    }
    match public.scheme() {
        Scheme::RsaSsa(_) | Scheme::RsaPss(_) | Scheme::Ecdsa(_) => {}
        _ => return Err(AkError::NoScheme),
    }
    public
        .spki()
        .map(|_| ())
        .map_err(|e| AkError::BadKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_round_trip() {
        for k in [AkKind::Rsa2048, AkKind::EccP256] {
            let t = k.template();
            assert_eq!(PublicArea::parse(&t.marshal()).unwrap(), t);
            assert_eq!(k.name().parse::<AkKind>().unwrap(), k);
        }
    }

    #[test]
    fn unrestricted_or_decrypting_keys_are_not_aks() {
        let mut t = AkKind::EccP256.template();
        if let PublicParams::Ecc { x, y, .. } = &mut t.params {
            // A real P-256 point (the generator).
            *x = hex_bytes("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
            *y = hex_bytes("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
        }
        check_ak_public(&t).unwrap();
        let mut unrestricted = t.clone();
        unrestricted.attributes.0 &= !A::RESTRICTED;
        assert!(matches!(
            check_ak_public(&unrestricted),
            Err(AkError::Attributes(_))
        ));
        let mut decrypting = t.clone();
        decrypting.attributes.0 |= A::DECRYPT;
        assert!(check_ak_public(&decrypting).is_err());
        let mut movable = t.clone();
        movable.attributes.0 &= !A::FIXED_TPM;
        assert!(check_ak_public(&movable).is_err());
        let mut no_scheme = t;
        if let PublicParams::Ecc { scheme, .. } = &mut no_scheme.params {
            *scheme = Scheme::Null;
        }
        assert_eq!(check_ak_public(&no_scheme), Err(AkError::NoScheme));
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
