//! MakeCredential in software: the server side of credential activation, done with
//! no TPM (tss-esapi has none). Follows TPM 2.0 Part 1, "Credential Protection", and
//! Part 3, TPM2_MakeCredential:
//!
//! 1. a seed, protected to the EK: for an RSA EK a random seed encrypted with
//!    RSA-OAEP (the EK's nameAlg, label "IDENTITY\0"); for an ECC EK an ephemeral
//!    ECDH on the EK's curve, the seed derived with KDFe (label "IDENTITY", the two
//!    x coordinates as party infos), the ephemeral point sent as the secret;
//! 2. symKey = KDFa(nameAlg, seed, "STORAGE", name of the bound object, -, EK's
//!    symmetric key size), and the credential, as a TPM2B, AES-CFB encrypted with it
//!    (zero IV);
//! 3. hmacKey = KDFa(nameAlg, seed, "INTEGRITY", -, -, nameAlg size) and
//!    outerHMAC = HMAC(hmacKey, encIdentity || name);
//! 4. the credential blob (TPM2B_ID_OBJECT contents) is TPM2B(outerHMAC) || encIdentity.
//!
//! Only TPM2_ActivateCredential in the TPM holding the EK's private half can undo
//! step 1, and the TPM checks the HMAC against the name of the object it is given,
//! so a credential opens only for that object in that TPM.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use ring::rand::{SecureRandom, SystemRandom};
use serde_with::base64::Base64;
use zeroize::Zeroizing;

use crate::wire::{HashAlg, PublicArea, PublicParams, SymDef, alg, put_tpm2b, put_u32, tpm2b};

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not a restricted decryption key with an AES-CFB symmetric definition.
    #[error("the EK is not a restricted decryption (storage) key with AES-CFB: {0}")]
    NotAStorageKey(&'static str),
    /// The credential is empty or longer than the EK's nameAlg digest.
    #[error("credential must be 1 to {max} bytes, got {got}")]
    CredentialSize {
        /// The credential's length.
        got: usize,
        /// The digest length of the EK's nameAlg.
        max: usize,
    },
    /// The object name is not nameAlg || digest.
    #[error("object name is malformed")]
    BadName,
    /// The EK's public key is unusable.
    #[error("EK public key unusable: {0}")]
    BadKey(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

/// What MakeCredential produces and TPM2_ActivateCredential takes.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialBlob {
    /// TPM2B_ID_OBJECT contents: TPM2B(outerHMAC) || encIdentity.
    #[serde_as(as = "Base64")]
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP-encrypted seed, or a TPMS_ECC_POINT.
    #[serde_as(as = "Base64")]
    pub encrypted_secret: Vec<u8>,
}

/// The OAEP label for seed protection; the TPM counts the terminating zero as part of it.
const IDENTITY_LABEL: &str = "IDENTITY\0";

/// Makes a credential holding `secret` for the object named `object_name`, openable
/// only by the TPM holding `ek`.
pub fn make_credential(
    ek: &PublicArea,
    object_name: &[u8],
    secret: &[u8],
) -> Result<CredentialBlob, CredentialError> {
    let name_alg = ek.name_alg;
    if secret.is_empty() || secret.len() > name_alg.size() {
        return Err(CredentialError::CredentialSize {
            got: secret.len(),
            max: name_alg.size(),
        });
    }
    check_name(object_name)?;
    let sym = storage_symmetric(ek)?;
    let (seed, encrypted_secret) = protect_seed(ek)?;

    let sym_key = kdfa(
        name_alg,
        &seed,
        b"STORAGE",
        object_name,
        &[],
        sym.key_bits as usize,
    );
    let mut enc_identity = tpm2b(secret);
    aes_cfb_encrypt(&sym_key, &mut enc_identity)?;

    let hmac_key = kdfa(name_alg, &seed, b"INTEGRITY", &[], &[], name_alg.size() * 8);
    let outer_hmac = name_alg.hmac(&hmac_key, &[&enc_identity, object_name]);

    let mut id_object = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    put_tpm2b(&mut id_object, &outer_hmac);
    id_object.extend_from_slice(&enc_identity);
    Ok(CredentialBlob {
        id_object,
        encrypted_secret,
    })
}

fn check_name(name: &[u8]) -> Result<(), CredentialError> {
    if name.len() < 2 {
        return Err(CredentialError::BadName);
    }
    let h = HashAlg::from_id(u16::from_be_bytes([name[0], name[1]]))
        .map_err(|_| CredentialError::BadName)?;
    if name.len() != 2 + h.size() {
        return Err(CredentialError::BadName);
    }
    Ok(())
}

fn storage_symmetric(ek: &PublicArea) -> Result<SymDef, CredentialError> {
    use crate::wire::ObjectAttributes as A;
    if !ek.attributes.has(A::RESTRICTED | A::DECRYPT) || ek.attributes.has(A::SIGN_ENCRYPT) {
        return Err(CredentialError::NotAStorageKey(
            "attributes lack restricted|decrypt or have sign",
        ));
    }
    match ek.symmetric() {
        Some(s) if s.algorithm == alg::AES && s.mode == alg::CFB => match s.key_bits {
            128 | 192 | 256 => Ok(s),
            _ => Err(CredentialError::NotAStorageKey("AES key size")),
        },
        _ => Err(CredentialError::NotAStorageKey("symmetric algorithm")),
    }
}

/// Returns (seed, TPM2B_ENCRYPTED_SECRET contents).
fn protect_seed(ek: &PublicArea) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CredentialError> {
    let name_alg = ek.name_alg;
    match &ek.params {
        PublicParams::Rsa { .. } => {
            let (modulus, exponent) = ek
                .rsa_parts()
                .map_err(|e| CredentialError::BadKey(e.to_string()))?;
            let mut seed = Zeroizing::new(vec![0u8; name_alg.size()]);
            SystemRandom::new()
                .fill(&mut seed)
                .map_err(|_| CredentialError::Random)?;
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(exponent),
            )
            .map_err(|e| CredentialError::BadKey(e.to_string()))?;
            let encrypted = oaep_encrypt(&key, name_alg, &seed)?;
            Ok((seed, encrypted))
        }
        PublicParams::Ecc { curve, .. } => {
            let rng = SystemRandom::new();
            let ring_alg = match curve {
                crate::wire::EccCurve::P256 => &ring::agreement::ECDH_P256,
                crate::wire::EccCurve::P384 => &ring::agreement::ECDH_P384,
            };
            let point = ek
                .ec_point()
                .map_err(|e| CredentialError::BadKey(e.to_string()))?;
            let n = curve.field_size();
            let ek_x = &point[1..1 + n];
            let ephemeral = ring::agreement::EphemeralPrivateKey::generate(ring_alg, &rng)
                .map_err(|_| CredentialError::Random)?;
            let eph_public = ephemeral
                .compute_public_key()
                .map_err(|_| CredentialError::Random)?;
            let eph_point = eph_public.as_ref();
            if eph_point.len() != 1 + 2 * n {
                return Err(CredentialError::BadKey("ephemeral point size".into()));
            }
            let (eph_x, eph_y) = eph_point[1..].split_at(n);
            let peer = ring::agreement::UnparsedPublicKey::new(ring_alg, &point);
            // ring validates the EK point (on the curve, not the identity) here.
            let seed = ring::agreement::agree_ephemeral(ephemeral, &peer, |z| {
                Zeroizing::new(kdfe(
                    name_alg,
                    z,
                    b"IDENTITY",
                    eph_x,
                    ek_x,
                    name_alg.size() * 8,
                ))
            })
            .map_err(|_| CredentialError::BadKey("EK point is not on its curve".into()))?;
            let mut secret = Vec::with_capacity(4 + 2 * n);
            put_tpm2b(&mut secret, eph_x);
            put_tpm2b(&mut secret, eph_y);
            Ok((seed, secret))
        }
    }
}

fn oaep_encrypt(
    key: &rsa::RsaPublicKey,
    hash: HashAlg,
    seed: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let label = IDENTITY_LABEL;
    let padding = match hash {
        HashAlg::Sha1 => {
            return Err(CredentialError::BadKey(
                "SHA-1 EKs are not supported for credential activation".into(),
            ));
        }
        HashAlg::Sha256 => rsa::Oaep::new_with_label::<sha2::Sha256, _>(label),
        HashAlg::Sha384 => rsa::Oaep::new_with_label::<sha2::Sha384, _>(label),
        HashAlg::Sha512 => rsa::Oaep::new_with_label::<sha2::Sha512, _>(label),
    };
    key.encrypt(&mut rand::rngs::OsRng, padding, seed)
        .map_err(|e| CredentialError::BadKey(format!("RSA-OAEP encryption failed: {e}")))
}

fn aes_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), CredentialError> {
    let iv = [0u8; 16];
    let bad = |_| CredentialError::NotAStorageKey("AES key size");
    match key.len() {
        16 => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        24 => cfb_mode::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        32 => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        _ => return Err(CredentialError::NotAStorageKey("AES key size")),
    }
    Ok(())
}

/// AES-CFB decryption with a zero IV (the inverse of what MakeCredential does; used
/// by the tests' software ActivateCredential).
#[cfg(test)]
fn aes_cfb_decrypt(key: &[u8], data: &mut [u8]) {
    use aes::cipher::AsyncStreamCipher as _;
    let iv = [0u8; 16];
    match key.len() {
        16 => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .unwrap()
            .decrypt(data),
        32 => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .unwrap()
            .decrypt(data),
        _ => panic!("key size"),
    }
}

/// KDFa (TPM 2.0 Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC. The label
/// is given without its terminating zero, which is always added.
pub fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: usize,
) -> Zeroizing<Vec<u8>> {
    let bytes = bits.div_ceil(8);
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + hash.size()));
    let mut counter: u32 = 1;
    let mut bits_be = Vec::with_capacity(4);
    put_u32(&mut bits_be, bits as u32);
    while out.len() < bytes {
        let block = hash.hmac(
            key,
            &[
                &counter.to_be_bytes(),
                label,
                &[0],
                context_u,
                context_v,
                &bits_be,
            ],
        );
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(bytes);
    mask_partial_byte(&mut out, bits);
    out
}

/// KDFe (TPM 2.0 Part 1, 11.4.10.3): SP 800-56A concatenation KDF over the shared
/// x coordinate `z`. The label is given without its terminating zero.
pub fn kdfe(
    hash: HashAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: usize,
) -> Vec<u8> {
    let bytes = bits.div_ceil(8);
    let mut out = Vec::with_capacity(bytes + hash.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = hash.digest(&[&counter.to_be_bytes(), z, label, &[0], party_u, party_v]);
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(bytes);
    mask_partial_byte(&mut out, bits);
    out
}

fn mask_partial_byte(out: &mut [u8], bits: usize) {
    if !bits.is_multiple_of(8)
        && let Some(first) = out.first_mut()
    {
        *first &= 0xff >> (8 - bits % 8);
    }
}

/// Software ActivateCredential for an RSA EK, to test MakeCredential without a TPM.
/// The real check is against swtpm (tests/swtpm).
#[cfg(test)]
pub(crate) fn activate_rsa_for_tests(
    ek: &PublicArea,
    ek_private: &rsa::RsaPrivateKey,
    object_name: &[u8],
    blob: &CredentialBlob,
) -> Option<Vec<u8>> {
    use crate::wire::Reader;
    let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>(IDENTITY_LABEL);
    let seed = ek_private.decrypt(padding, &blob.encrypted_secret).ok()?;
    let mut r = Reader::new(&blob.id_object, "id");
    let hmac = r.tpm2b().ok()?.to_vec();
    let mut enc = r.rest().to_vec();
    let hmac_key = kdfa(ek.name_alg, &seed, b"INTEGRITY", &[], &[], 256);
    if ek.name_alg.hmac(&hmac_key, &[&enc, object_name]) != hmac {
        return None;
    }
    let sym = ek.symmetric()?;
    let key = kdfa(
        ek.name_alg,
        &seed,
        b"STORAGE",
        object_name,
        &[],
        sym.key_bits as usize,
    );
    aes_cfb_decrypt(&key, &mut enc);
    crate::wire::tpm2b_contents(&enc, "cred")
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::ek::EkKind;
    use crate::wire::PublicParams;

    fn software_rsa_ek() -> (PublicArea, rsa::RsaPrivateKey) {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let mut ek = EkKind::Rsa2048.template();
        if let PublicParams::Rsa { modulus, .. } = &mut ek.params {
            *modulus = key.n().to_bytes_be();
        }
        (ek, key)
    }

    #[test]
    fn kdfa_matches_a_hand_computed_block() {
        // One block of SHA-256 KDFa is a single HMAC over the spelled-out fields.
        let expected = HashAlg::Sha256.hmac(
            b"key",
            &[
                &[0, 0, 0, 1],
                b"STORAGE\0",
                b"ctxU",
                b"ctxV",
                &[0, 0, 0, 128],
            ],
        );
        let got = kdfa(HashAlg::Sha256, b"key", b"STORAGE", b"ctxU", b"ctxV", 128);
        assert_eq!(&got[..], &expected[..16]);
        // Longer outputs chain blocks with an increasing counter.
        let long = kdfa(HashAlg::Sha256, b"key", b"X", &[], &[], 512);
        assert_eq!(long.len(), 64);
        let second = HashAlg::Sha256.hmac(b"key", &[&[0, 0, 0, 2], b"X\0", &[0, 0, 2, 0]]);
        assert_eq!(&long[32..], &second[..]);
    }

    #[test]
    fn kdfe_matches_a_hand_computed_block() {
        let expected = HashAlg::Sha384.digest(&[&[0, 0, 0, 1], b"Z", b"IDENTITY\0", b"U", b"V"]);
        assert_eq!(
            kdfe(HashAlg::Sha384, b"Z", b"IDENTITY", b"U", b"V", 384),
            expected
        );
    }

    #[test]
    fn rsa_round_trip_in_software() {
        let (ek, private) = software_rsa_ek();
        let name = {
            let mut n = vec![0x00, 0x0b];
            n.extend([7u8; 32]);
            n
        };
        let blob = make_credential(&ek, &name, b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            activate_rsa_for_tests(&ek, &private, &name, &blob).unwrap(),
            b"0123456789abcdef0123456789abcdef"
        );
        // Bound to the name: another object's name fails the integrity check.
        let mut other = name.clone();
        other[5] ^= 1;
        assert!(activate_rsa_for_tests(&ek, &private, &other, &blob).is_none());
    }

    #[test]
    fn refuses_bad_inputs() {
        let (ek, _) = software_rsa_ek();
        let name = [0x00, 0x0b]
            .iter()
            .chain([0u8; 32].iter())
            .copied()
            .collect::<Vec<_>>();
        assert!(matches!(
            make_credential(&ek, &name, &[0; 33]),
            Err(CredentialError::CredentialSize { .. })
        ));
        assert!(matches!(
            make_credential(&ek, &name, &[]),
            Err(CredentialError::CredentialSize { .. })
        ));
        assert_eq!(
            make_credential(&ek, &name[..10], b"x"),
            Err(CredentialError::BadName)
        );
        let mut signing = ek.clone();
        signing.attributes.0 |= crate::wire::ObjectAttributes::SIGN_ENCRYPT;
        assert!(matches!(
            make_credential(&signing, &name, b"x"),
            Err(CredentialError::NotAStorageKey(_))
        ));
        // An ECC EK whose point is not on the curve.
        let mut ecc = EkKind::EccP256.template();
        if let PublicParams::Ecc { x, y, .. } = &mut ecc.params {
            *x = vec![1; 32];
            *y = vec![2; 32];
        }
        assert!(matches!(
            make_credential(&ecc, &name, b"x"),
            Err(CredentialError::BadKey(_))
        ));
    }
}
