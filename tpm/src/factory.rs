//! Factory-provisioned DevIDs: a DevID key a vendor made in the TPM and made
//! persistent (TPM2_EvictControl), and its certificate (with any intermediates) in
//! an NV index, instead of a key blob and a PEM file in a folder.
//!
//! The defaults, [`IDEVID_KEY_HANDLE`] and [`IDEVID_CERT_NV_INDEX`], are the
//! values public code attributes to the TCG's device identity guidance (the
//! IDevID key's persistent handle and its certificate's NV index); they could not
//! be checked against the TCG documents themselves, so both are settings.
//!
//! The NV index holds DER certificates one after the other, the DevID first; an
//! index defined larger than what was written reads back with padding after the
//! last certificate (0xFF or 0x00 octets), which is ignored. Anything else after a
//! certificate is refused.

use std::sync::Arc;

use crate::attestation::public_matches_spki;
use crate::attestation::tpm_devid::DevIdIdentity;
use crate::device::{CertifyOutput, DeviceError, KeyBlob, SigningScheme, Tpm, TpmDevice};
use crate::wire::{ObjectAttributes as A, PublicArea, Signature};

/// The IDevID key's persistent handle in the TCG guidance (as cited by public code).
pub const IDEVID_KEY_HANDLE: u32 = 0x8102_0000;
/// The NV index of the IDevID certificate in the TCG guidance (as cited by public code).
pub const IDEVID_CERT_NV_INDEX: u32 = 0x01C9_0000;

/// Where the DevID key is: a blob under Tessera's SRK, or a persistent handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevIdKey {
    /// A key blob (`tessera-agent tpm provision-devid` or `create-key`).
    Blob(KeyBlob),
    /// A key at a persistent handle, with the public area read from it.
    Persistent {
        /// The handle (0x81xxxxxx).
        handle: u32,
        /// Its TPMT_PUBLIC.
        public: PublicArea,
    },
}

impl DevIdKey {
    /// The key's public area.
    pub fn public(&self) -> &PublicArea {
        match self {
            DevIdKey::Blob(b) => &b.public,
            DevIdKey::Persistent { public, .. } => public,
        }
    }

    /// TPM2_Certify of this key by `signer`.
    pub fn certify(
        &self,
        dev: &mut dyn TpmDevice,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        match self {
            DevIdKey::Blob(b) => dev.certify(b, signer, qualifying_data),
            DevIdKey::Persistent { handle, .. } => {
                dev.certify_persistent(*handle, signer, qualifying_data)
            }
        }
    }

    /// TPM2_Sign with this key.
    pub fn sign(
        &self,
        dev: &mut dyn TpmDevice,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        match self {
            DevIdKey::Blob(b) => dev.sign(b, digest, scheme),
            DevIdKey::Persistent { handle, .. } => dev.sign_persistent(*handle, digest, scheme),
        }
    }
}

/// Why a factory DevID cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryError {
    /// The TPM failed.
    #[error("TPM: {0}")]
    Device(#[from] DeviceError),
    /// Nothing at the key's handle.
    #[error(
        "no key at persistent handle {0:#010x}: the DevID key was not provisioned there (tpm2_evictcontrol), or devid_key_handle names the wrong handle"
    )]
    NoKey(u32),
    /// The key at the handle cannot be a DevID.
    #[error("the key at persistent handle {handle:#010x} is not a DevID key: {reason}")]
    NotDevIdKey {
        /// The handle.
        handle: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The certificate's NV index is not defined.
    #[error(
        "NV index {0:#010x} is not defined: the DevID certificate was not provisioned there (tpm2_nvdefine, tpm2_nvwrite), or devid_cert_nv_index names the wrong index"
    )]
    NoCertificate(u32),
    /// The NV index does not hold DER certificates.
    #[error("NV index {index:#010x} does not hold DER certificates: {reason}")]
    BadCertificate {
        /// The index.
        index: u32,
        /// What is wrong.
        reason: String,
    },
    /// The certificate is for another key.
    #[error(
        "the certificate in NV index {index:#010x} is not for the key at persistent handle {handle:#010x}"
    )]
    Mismatch {
        /// The index.
        index: u32,
        /// The handle.
        handle: u32,
    },
}

/// The DevID key at persistent `handle`, checked to be a signing key bound to this
/// TPM (fixedTPM, fixedParent, sensitiveDataOrigin, sign, not restricted).
pub fn read_devid_key(tpm: &Tpm, handle: u32) -> Result<DevIdKey, FactoryError> {
    let public = tpm
        .with(|dev| dev.persistent_public(handle))?
        .ok_or(FactoryError::NoKey(handle))?;
    let needed = A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::SIGN_ENCRYPT;
    if !public.attributes.has(needed) {
        return Err(FactoryError::NotDevIdKey {
            handle,
            reason: "a DevID key must be fixedTPM, fixedParent, sensitiveDataOrigin and sign",
        });
    }
    if public.attributes.has(A::RESTRICTED) {
        return Err(FactoryError::NotDevIdKey {
            handle,
            reason: "it is a restricted key (an AK or a storage key), and a DevID signs nonces",
        });
    }
    Ok(DevIdKey::Persistent { handle, public })
}

/// The DER length of the certificate at the start of `data`, header included.
fn der_len(data: &[u8]) -> Result<usize, String> {
    if data.first() != Some(&0x30) {
        return Err(format!(
            "expected a DER SEQUENCE (0x30), found {:#04x}",
            data.first().copied().unwrap_or(0)
        ));
    }
    let first = *data.get(1).ok_or("cut short in a length")? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return Err(format!("unsupported DER length form {first:#04x}"));
        }
        let bytes = data.get(2..2 + n).ok_or("cut short in a length")?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize),
            2 + n,
        )
    };
    let total = header + len;
    if total > data.len() {
        return Err(format!(
            "a certificate of {total} bytes, but only {} bytes are left",
            data.len()
        ));
    }
    Ok(total)
}

/// The DER certificates in an NV index's contents, padding after the last ignored.
pub fn parse_der_chain(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && !rest.iter().all(|b| *b == 0xff || *b == 0) {
        let n = der_len(rest).map_err(|e| format!("certificate {}: {e}", certs.len() + 1))?;
        let (cert, tail) = rest.split_at(n);
        if crate::verifier::chain::spki_of(cert).is_none() {
            return Err(format!(
                "certificate {} is not an X.509 certificate",
                certs.len() + 1
            ));
        }
        certs.push(cert.to_vec());
        rest = tail;
    }
    if certs.is_empty() {
        return Err("it is empty (only padding)".into());
    }
    Ok(certs)
}

/// The certificate chain in NV `index`.
pub fn read_devid_chain(tpm: &Tpm, index: u32) -> Result<Vec<Vec<u8>>, FactoryError> {
    let data = tpm
        .with(|dev| dev.nv_read(index))?
        .ok_or(FactoryError::NoCertificate(index))?;
    parse_der_chain(&data).map_err(|reason| FactoryError::BadCertificate { index, reason })
}

/// The factory DevID: the key at `key_handle` and the chain in `cert_index`, checked
/// to belong together.
pub fn load_factory_devid(
    tpm: &Arc<Tpm>,
    key_handle: u32,
    cert_index: u32,
) -> Result<DevIdIdentity, FactoryError> {
    let key = read_devid_key(tpm, key_handle)?;
    let chain = read_devid_chain(tpm, cert_index)?;
    check_pair(&chain, &key, cert_index, key_handle)?;
    Ok(DevIdIdentity { chain, key })
}

fn check_pair(
    chain: &[Vec<u8>],
    key: &DevIdKey,
    index: u32,
    handle: u32,
) -> Result<(), FactoryError> {
    let spki = chain
        .first()
        .and_then(|c| crate::verifier::chain::spki_of(c))
        .ok_or(FactoryError::Mismatch { index, handle })?;
    if !public_matches_spki(key.public(), &spki) {
        return Err(FactoryError::Mismatch { index, handle });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn chains_parse_with_padding_and_garbage_is_refused() {
        let (a, b) = (cert("leaf"), cert("ca"));
        let mut nv = a.clone();
        nv.extend_from_slice(&b);
        assert_eq!(parse_der_chain(&nv).unwrap(), vec![a.clone(), b.clone()]);
        let mut padded = nv.clone();
        padded.extend_from_slice(&[0xff; 300]);
        assert_eq!(parse_der_chain(&padded).unwrap().len(), 2);
        let mut zeros = a.clone();
        zeros.extend_from_slice(&[0; 17]);
        assert_eq!(parse_der_chain(&zeros).unwrap(), vec![a.clone()]);

        let e = parse_der_chain(&[0xff; 64]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse_der_chain(&a[..a.len() - 10]).unwrap_err();
        assert!(e.contains("only"), "{e}");
        let mut trailing = a.clone();
        trailing.extend_from_slice(b"junk");
        let e = parse_der_chain(&trailing).unwrap_err();
        assert!(e.contains("certificate 2"), "{e}");
        let mut not_cert = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        not_cert.extend_from_slice(&[0xff; 8]);
        let e = parse_der_chain(&not_cert).unwrap_err();
        assert!(e.contains("not an X.509"), "{e}");
    }
}
