//! A secret sealed to the TPM: a 256-bit key that only this TPM can recompute, for
//! the agent's encrypted cache. It is an ECDH key agreement with a P-256 decryption
//! key held in the TPM under the SRK (unrestricted, fixedTPM, noDA, empty auth):
//! at sealing, an ephemeral software key agrees with the TPM key's public point and
//! is thrown away; at unsealing, TPM2_ECDH_ZGen with the TPM key and the ephemeral
//! public point gives the same shared x coordinate. The secret is
//! HKDF-SHA256(that coordinate). What is stored, [`SealedSecret`], is the TPM key's
//! blob (which loads in no other TPM) and the ephemeral public point: on another
//! TPM, or after the owner hierarchy was cleared, TPM2_Load refuses the blob and the
//! secret is gone.

use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use super::{DeviceError, KeyBlob, Tpm};
use crate::wire::{
    EccCurve, HashAlg, ObjectAttributes as A, PublicArea, PublicParams, Reader, Scheme,
    StructureError, put_tpm2b,
};

/// The HKDF info string: what the secret is for.
const INFO: &[u8] = b"tessera sealed secret v1";

/// A sealed 256-bit secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The TPM's P-256 decryption key.
    pub key: KeyBlob,
    /// The ephemeral public point (uncompressed, 65 bytes).
    pub point: Vec<u8>,
}

/// The template of the TPM key: ECC P-256, unrestricted decryption (ECDH), fixedTPM,
/// fixedParent, sensitiveDataOrigin, userWithAuth, noDA.
pub fn ecdh_key_template() -> PublicArea {
    PublicArea {
        name_alg: HashAlg::Sha256,
        attributes: A(A::FIXED_TPM
            | A::FIXED_PARENT
            | A::SENSITIVE_DATA_ORIGIN
            | A::USER_WITH_AUTH
            | A::NO_DA
            | A::DECRYPT),
        auth_policy: vec![],
        params: PublicParams::Ecc {
            symmetric: None,
            scheme: Scheme::Null,
            curve: EccCurve::P256,
            kdf: None,
            x: vec![],
            y: vec![],
        },
    }
}

fn derive(z: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(z);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is within HKDF-SHA256's limit, so neither call can fail.
    if let Ok(okm) = prk.expand(&[INFO], hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

impl SealedSecret {
    /// Makes a new TPM key and a fresh secret sealed to it.
    pub fn create(tpm: &Tpm) -> Result<(Self, Zeroizing<[u8; 32]>), DeviceError> {
        let key = tpm.with(|dev| dev.create_key(&ecdh_key_template()))?;
        let tpm_point = key.public.ec_point()?;
        let rng = SystemRandom::new();
        let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &rng)
            .map_err(|_| DeviceError::Malformed("no randomness for an ephemeral key".into()))?;
        let point = ephemeral
            .compute_public_key()
            .map_err(|_| DeviceError::Malformed("cannot compute an ephemeral key".into()))?
            .as_ref()
            .to_vec();
        let secret = agree_ephemeral(
            ephemeral,
            &UnparsedPublicKey::new(&ECDH_P256, &tpm_point),
            derive,
        )
        .map_err(|_| DeviceError::Malformed("the TPM key's point is not on P-256".into()))?;
        Ok((Self { key, point }, secret))
    }

    /// The secret, recomputed by the TPM; [`DeviceError::ForeignKey`] on another TPM.
    pub fn unseal(&self, tpm: &Tpm) -> Result<Zeroizing<[u8; 32]>, DeviceError> {
        if !on_p256(&self.point) {
            return Err(DeviceError::Malformed(
                "the sealed secret's point is not a point on P-256 (damaged)".into(),
            ));
        }
        let z = tpm.with(|dev| dev.ecdh_zgen(&self.key, &self.point))?;
        Ok(derive(&z))
    }

    /// TPM2B_PUBLIC, TPM2B_PRIVATE (the key blob), then the point as a TPM2B.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.key.to_bytes();
        put_tpm2b(&mut out, &self.point);
        out
    }

    /// Parses [`SealedSecret::to_bytes`] output.
    pub fn from_bytes(data: &[u8]) -> Result<Self, StructureError> {
        let mut r = Reader::new(data, "sealed secret");
        let public = PublicArea::parse(r.tpm2b()?)?;
        let private = r.tpm2b()?.to_vec();
        let point = r.tpm2b()?.to_vec();
        r.finish()?;
        if private.is_empty() || point.len() != 65 || point[0] != 4 {
            return Err(StructureError::Invalid(
                "sealed secret (empty key or bad point)",
            ));
        }
        // The key is one `create` made: the template's, but for its point. Any other
        // public area is damage the TPM would refuse with an error that reads as
        // a failing TPM (reserved bits, attributes), not as a foreign key.
        let mut expected = ecdh_key_template();
        if let (
            PublicParams::Ecc { x, y, .. },
            PublicParams::Ecc {
                x: got_x, y: got_y, ..
            },
        ) = (&mut expected.params, &public.params)
        {
            x.clone_from(got_x);
            y.clone_from(got_y);
        }
        if public != expected {
            return Err(StructureError::Invalid(
                "sealed secret (its key is not one made from the sealing template)",
            ));
        }
        if !on_p256(&point) {
            return Err(StructureError::Invalid(
                "sealed secret (its point is not a point on P-256)",
            ));
        }
        Ok(Self {
            key: KeyBlob { public, private },
            point,
        })
    }
}

/// Whether `point` is an uncompressed point on P-256 (ring checks it when agreeing
/// with a throwaway key): a damaged one is told from a TPM that fails.
fn on_p256(point: &[u8]) -> bool {
    EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new())
        .ok()
        .and_then(|k| agree_ephemeral(k, &UnparsedPublicKey::new(&ECDH_P256, point), |_| ()).ok())
        .is_some()
}

/// The uncompressed point's coordinates.
pub fn split_point(point: &[u8]) -> Result<(&[u8], &[u8]), DeviceError> {
    match point.split_first() {
        Some((4, xy)) if xy.len() % 2 == 0 && !xy.is_empty() => Ok(xy.split_at(xy.len() / 2)),
        _ => Err(DeviceError::Unsupported(
            "ECDH: the point is not an uncompressed EC point".into(),
        )),
    }
}
