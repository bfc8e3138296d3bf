//! A software key put into the TPM with TPM2_Import ([`TpmDevice::import_key`]):
//! the TPM can sign and certify with it, but did not make it, and its attributes
//! say so (no fixedTPM, fixedParent or sensitiveDataOrigin). What an agent trying
//! to pass a software key as TPM-born would do; the tests check that the server's
//! key proof refuses it.

use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use crate::device::{DeviceError, KeyBlob, Tpm, signing_key_template};
use crate::wire::{ObjectAttributes as A, PublicParams, put_tpm2b, put_u16};

const ALG_ECC: u16 = 0x0023;

/// TPMT_SENSITIVE of an ECC key: no authorization value, no seed, the scalar.
pub fn ecc_sensitive(scalar: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u16(&mut out, ALG_ECC);
    put_tpm2b(&mut out, &[]);
    put_tpm2b(&mut out, &[]);
    put_tpm2b(&mut out, scalar);
    out
}

/// Makes a P-256 signing key in software and imports it under the SRK.
pub fn import_software_p256(tpm: &Tpm) -> Result<KeyBlob, DeviceError> {
    let rng = ring::rand::SystemRandom::new();
    let fault = |what: &str| DeviceError::Unsupported(format!("software key: {what}"));
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| fault("generation failed"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| fault("unreadable PKCS#8"))?;
    // The scalar: ECPrivateKey's version 1, then its 32-byte OCTET STRING.
    let doc = pkcs8.as_ref();
    let at = doc
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .ok_or_else(|| fault("no ECPrivateKey in the PKCS#8"))?
        + 5;
    let scalar = doc.get(at..at + 32).ok_or_else(|| fault("short scalar"))?;
    let point = pair.public_key().as_ref();
    let mut public = signing_key_template(tessera_core::key::KeyType::EcP256);
    public.attributes = A(A::USER_WITH_AUTH | A::NO_DA | A::SIGN_ENCRYPT);
    if let PublicParams::Ecc { x, y, .. } = &mut public.params {
        *x = point[1..33].to_vec();
        *y = point[33..].to_vec();
    }
    tpm.with(|dev| dev.import_key(&public, &ecc_sensitive(scalar)))
}
