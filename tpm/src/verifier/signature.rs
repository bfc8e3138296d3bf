//! Checks a TPM signature (TPMT_SIGNATURE: RSASSA, RSAPSS or ECDSA) against a TPM
//! public area, in software. Used for Certify signatures by an AK and for nonces
//! signed by a DevID key.

use tessera_core::der::trim_leading_zeros;

use crate::wire::{EccCurve, HashAlg, PublicArea, PublicParams, Signature};

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature's algorithm does not fit the key (RSA signature, ECC key...).
    #[error("signature algorithm does not match the {0} key")]
    WrongKeyType(&'static str),
    /// The combination of key and hash is one this crate does not verify.
    #[error("unsupported signature: {0}")]
    Unsupported(&'static str),
    /// The key's own public area is unusable.
    #[error("key unusable: {0}")]
    BadKey(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
}

/// Checks `signature` over `message` (the signed bytes, not their digest) with `key`.
pub fn verify_signature(
    key: &PublicArea,
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    use ring::signature as rs;
    match (signature, &key.params) {
        (Signature::RsaSsa { hash, sig }, PublicParams::Rsa { .. }) => {
            let alg: &rs::RsaParameters = match hash {
                HashAlg::Sha256 => &rs::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &rs::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 => &rs::RSA_PKCS1_2048_8192_SHA512,
                HashAlg::Sha1 => return Err(SignatureError::Unsupported("RSASSA with SHA-1")),
            };
            rsa_components(key)?
                .verify(alg, message, sig)
                .map_err(|_| SignatureError::Invalid)
        }
        (Signature::RsaPss { hash, sig }, PublicParams::Rsa { .. }) => {
            let alg: &rs::RsaParameters = match hash {
                HashAlg::Sha256 => &rs::RSA_PSS_2048_8192_SHA256,
                HashAlg::Sha384 => &rs::RSA_PSS_2048_8192_SHA384,
                HashAlg::Sha512 => &rs::RSA_PSS_2048_8192_SHA512,
                HashAlg::Sha1 => return Err(SignatureError::Unsupported("RSAPSS with SHA-1")),
            };
            // Current TPMs use a salt as long as the digest (what ring checks); TPMs
            // built on older revisions of the library use the longest salt that fits.
            if rsa_components(key)?.verify(alg, message, sig).is_ok() {
                return Ok(());
            }
            verify_pss_max_salt(key, *hash, message, sig)
        }
        (Signature::Ecdsa { hash, r, s }, PublicParams::Ecc { curve, .. }) => {
            let alg: &dyn rs::VerificationAlgorithm = match (curve, hash) {
                (EccCurve::P256, HashAlg::Sha256) => &rs::ECDSA_P256_SHA256_ASN1,
                (EccCurve::P256, HashAlg::Sha384) => &rs::ECDSA_P256_SHA384_ASN1,
                (EccCurve::P384, HashAlg::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
                (EccCurve::P384, HashAlg::Sha384) => &rs::ECDSA_P384_SHA384_ASN1,
                _ => {
                    return Err(SignatureError::Unsupported(
                        "ECDSA with this curve and hash",
                    ));
                }
            };
            let der = tessera_core::der::ecdsa_parts_to_der(r, s, curve.field_size())
                .map_err(|_| SignatureError::Invalid)?;
            let point = key
                .ec_point()
                .map_err(|e| SignatureError::BadKey(e.to_string()))?;
            rs::UnparsedPublicKey::new(alg, point)
                .verify(message, &der)
                .map_err(|_| SignatureError::Invalid)
        }
        (_, PublicParams::Rsa { .. }) => Err(SignatureError::WrongKeyType("RSA")),
        (_, PublicParams::Ecc { .. }) => Err(SignatureError::WrongKeyType("ECC")),
    }
}

fn rsa_components(
    key: &PublicArea,
) -> Result<ring::signature::RsaPublicKeyComponents<Vec<u8>>, SignatureError> {
    let (n, e) = key
        .rsa_parts()
        .map_err(|err| SignatureError::BadKey(err.to_string()))?;
    // ring wants both integers without leading zero bytes.
    let e = e.to_be_bytes();
    Ok(ring::signature::RsaPublicKeyComponents {
        n: n.to_vec(),
        e: trim_leading_zeros(&e).to_vec(),
    })
}

fn verify_pss_max_salt(
    key: &PublicArea,
    hash: HashAlg,
    message: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let (n, e) = key
        .rsa_parts()
        .map_err(|err| SignatureError::BadKey(err.to_string()))?;
    let public = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(e))
        .map_err(|err| SignatureError::BadKey(err.to_string()))?;
    let em_len = n.len();
    let salt = em_len
        .checked_sub(hash.size() + 2)
        .ok_or(SignatureError::Invalid)?;
    let digest = hash.digest(&[message]);
    let scheme = match hash {
        HashAlg::Sha256 => rsa::Pss::new_with_salt::<sha2::Sha256>(salt),
        HashAlg::Sha384 => rsa::Pss::new_with_salt::<sha2::Sha384>(salt),
        HashAlg::Sha512 => rsa::Pss::new_with_salt::<sha2::Sha512>(salt),
        HashAlg::Sha1 => return Err(SignatureError::Unsupported("RSAPSS with SHA-1")),
    };
    public
        .verify(scheme, &digest, sig)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ObjectAttributes, Scheme};
    use ring::signature::{EcdsaKeyPair, KeyPair};

    fn p256_key() -> (EcdsaKeyPair, PublicArea) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = kp.public_key().as_ref();
        let area = PublicArea {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(0x0004_0072),
            auth_policy: vec![],
            params: PublicParams::Ecc {
                symmetric: None,
                scheme: Scheme::Null,
                curve: EccCurve::P256,
                kdf: None,
                x: point[1..33].to_vec(),
                y: point[33..].to_vec(),
            },
        };
        (kp, area)
    }

    #[test]
    fn rsa_pkcs1_and_both_pss_salt_conventions_verify() {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let area = PublicArea {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(0x0004_0072),
            auth_policy: vec![],
            params: PublicParams::Rsa {
                symmetric: None,
                scheme: Scheme::Null,
                key_bits: 2048,
                exponent: 0,
                modulus: key.n().to_bytes_be(),
            },
        };
        let digest = HashAlg::Sha256.digest(&[b"message"]);
        let mut info = tessera_core::key::HashAlgorithm::Sha256
            .pkcs1_digest_info_prefix()
            .to_vec();
        info.extend_from_slice(&digest);
        let pkcs1 = key
            .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &info)
            .unwrap();
        let sig = Signature::RsaSsa {
            hash: HashAlg::Sha256,
            sig: pkcs1,
        };
        verify_signature(&area, b"message", &sig).unwrap();
        assert_eq!(
            verify_signature(&area, b"other", &sig),
            Err(SignatureError::Invalid)
        );
        for salt in [32, 256 - 32 - 2] {
            let pss = key
                .sign_with_rng(
                    &mut rand::rngs::OsRng,
                    rsa::Pss::new_with_salt::<sha2::Sha256>(salt),
                    &digest,
                )
                .unwrap();
            let sig = Signature::RsaPss {
                hash: HashAlg::Sha256,
                sig: pss,
            };
            verify_signature(&area, b"message", &sig)
                .unwrap_or_else(|e| panic!("salt {salt}: {e}"));
            assert_eq!(
                verify_signature(&area, b"other", &sig),
                Err(SignatureError::Invalid)
            );
        }
        let ecdsa = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: vec![1],
            s: vec![1],
        };
        assert_eq!(
            verify_signature(&area, b"message", &ecdsa),
            Err(SignatureError::WrongKeyType("RSA"))
        );
    }

    #[test]
    fn ecdsa_signatures_verify_and_tampering_fails() {
        let (kp, area) = p256_key();
        let rng = ring::rand::SystemRandom::new();
        let raw = kp.sign(&rng, b"hello").unwrap();
        let sig = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: raw.as_ref()[..32].to_vec(),
            s: raw.as_ref()[32..].to_vec(),
        };
        verify_signature(&area, b"hello", &sig).unwrap();
        assert_eq!(
            verify_signature(&area, b"hellO", &sig),
            Err(SignatureError::Invalid)
        );
        let rsa_sig = Signature::RsaSsa {
            hash: HashAlg::Sha256,
            sig: vec![0; 256],
        };
        assert_eq!(
            verify_signature(&area, b"hello", &rsa_sig),
            Err(SignatureError::WrongKeyType("ECC"))
        );
        let huge = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: vec![1; 33],
            s: vec![1; 32],
        };
        assert_eq!(
            verify_signature(&area, b"hello", &huge),
            Err(SignatureError::Invalid)
        );
    }
}
