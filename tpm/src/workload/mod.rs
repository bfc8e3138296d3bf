//! Workload keys born in the TPM (entries with `workload_key = tpm`): a signing key
//! under the SRK with its own random authorization value, handed to the one
//! workload it belongs to as a [`crate::tss2`] key file plus that value. Another
//! process that can open the TPM has the blob at most, and the TPM refuses to sign
//! with it without the value.
//!
//! The value is 32 bytes of text (base64url of 24 bytes from the OS's random number
//! generator, 192 bits): text so that OpenSSL reads it with `-passin file:` (a
//! passphrase is a line), 32 bytes because a key with a SHA-256 name takes at most
//! that, and no zero byte (the TPM strips trailing zeros).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use tessera_core::key::{Key, KeyError, KeyType, SignatureScheme};
use zeroize::Zeroizing;

use crate::device::keys::{device_error, sign_in_tpm, supported};
use crate::device::{KeyBlob, Tpm, signing_key_template};
use crate::tss2::{PARENT_OWNER, Tss2Key};

/// A fresh authorization value: 32 ASCII bytes carrying 192 random bits.
pub fn new_auth_value() -> Zeroizing<Vec<u8>> {
    let mut raw = Zeroizing::new([0u8; 24]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(raw.as_ref())
            .into_bytes(),
    )
}

/// A workload's signing key in the TPM, with its authorization value.
pub struct TpmWorkloadKey {
    tpm: Arc<Tpm>,
    blob: KeyBlob,
    auth: Zeroizing<Vec<u8>>,
    key_type: KeyType,
    spki: Vec<u8>,
}

impl fmt::Debug for TpmWorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmWorkloadKey")
            .field("key_type", &self.key_type)
            .field("tpm", &self.tpm.describe())
            .finish_non_exhaustive()
    }
}

fn unusable(reason: impl fmt::Display) -> KeyError {
    KeyError::Backend(format!("TPM workload key unusable: {reason}").into())
}

impl TpmWorkloadKey {
    /// Creates a key of `key_type` under the SRK with a fresh authorization value.
    pub fn generate(tpm: Arc<Tpm>, key_type: KeyType) -> Result<Self, KeyError> {
        if !supported(key_type) {
            return Err(KeyError::UnsupportedKeyType(key_type));
        }
        let auth = new_auth_value();
        let blob = tpm
            .with(|dev| dev.create_key_with_auth(&signing_key_template(key_type), &auth))
            .map_err(device_error)?;
        Self::from_parts(tpm, blob, auth)
    }

    /// Wraps a blob and its authorization value; does not talk to the TPM.
    pub fn from_parts(
        tpm: Arc<Tpm>,
        blob: KeyBlob,
        auth: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeyError> {
        let key_type = blob
            .public
            .key_type()
            .ok_or_else(|| unusable("unsupported key size"))?;
        if !blob
            .public
            .attributes
            .has(crate::wire::ObjectAttributes::SIGN_ENCRYPT)
        {
            return Err(unusable("not a signing key"));
        }
        let spki = blob.public.spki().map_err(unusable)?;
        Ok(Self {
            tpm,
            blob,
            auth,
            key_type,
            spki,
        })
    }

    /// Reads a TSS2 PRIVATE KEY file (a key under the owner-hierarchy SRK, as the
    /// agent writes them) with its authorization value.
    pub fn from_tss2_pem(
        tpm: Arc<Tpm>,
        pem: &[u8],
        auth: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeyError> {
        let key = Tss2Key::from_pem(pem).map_err(unusable)?;
        if key.parent != PARENT_OWNER {
            return Err(unusable(format!(
                "its parent is {:#010x}; only keys under the owner hierarchy's SRK ({PARENT_OWNER:#010x}) are supported",
                key.parent
            )));
        }
        Self::from_parts(tpm, key.blob, auth)
    }

    /// The key file: `TSS2 PRIVATE KEY` PEM, parent 0x40000001, emptyAuth FALSE.
    pub fn tss2_pem(&self) -> String {
        Tss2Key::under_owner(self.blob.clone(), true).to_pem()
    }

    /// The authorization value (what the workload passes as the key's password).
    pub fn auth(&self) -> &[u8] {
        &self.auth
    }

    /// The blob.
    pub fn blob(&self) -> &KeyBlob {
        &self.blob
    }

    /// The TPM it lives in.
    pub fn tpm(&self) -> &Arc<Tpm> {
        &self.tpm
    }
}

impl Key for TpmWorkloadKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        sign_in_tpm(
            &self.tpm,
            &self.blob,
            self.key_type,
            scheme,
            message,
            |dev, digest, tpm_scheme| {
                dev.sign_with_auth(&self.blob, &self.auth, digest, tpm_scheme)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_values_are_32_text_bytes_and_differ() {
        let a = new_auth_value();
        let b = new_auth_value();
        assert_eq!(a.len(), 32);
        assert_ne!(*a, *b);
        assert!(
            a.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        );
        crate::device::check_auth_value(&a).unwrap();
    }
}
