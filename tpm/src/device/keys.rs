//! The agent's keys in the TPM: [`TpmKey`] implements `tessera_core`'s [`Key`] (it
//! signs with TPM2_Sign, so it plugs into rcgen and rustls like any other key) and
//! [`TpmKeyManager`] its [`KeyManager`], keeping nothing on disk but TPM key blobs
//! (TPM2B_PUBLIC + TPM2B_PRIVATE, sealed by the TPM under the SRK, mode 0600). A
//! blob is useless off the device: another TPM refuses to load it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_core::failure::Failure;
use tessera_core::key::{HashAlgorithm, Key, KeyError, KeyManager, KeyType, SignatureScheme};
use tessera_process::fs;

use crate::device::{DeviceError, KeyBlob, SigningScheme, Tpm, signing_key_template};
use crate::wire::{HashAlg, PublicParams, Signature};

/// A signing key whose private half never leaves the TPM.
pub struct TpmKey {
    tpm: Arc<Tpm>,
    blob: KeyBlob,
    key_type: KeyType,
    spki: Vec<u8>,
}

impl fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmKey")
            .field("key_type", &self.key_type)
            .field("tpm", &self.tpm.describe())
            .finish_non_exhaustive()
    }
}

pub(crate) fn device_error(e: DeviceError) -> KeyError {
    match e {
        DeviceError::Unavailable { .. }
        | DeviceError::Interrupted { .. }
        | DeviceError::Poisoned => KeyError::Unavailable(Failure::caused_by(e.to_string(), e)),
        other => KeyError::Backend(Failure::caused_by(other.to_string(), other)),
    }
}

/// Whether the TPM backend creates keys of this type.
pub fn supported(key_type: KeyType) -> bool {
    matches!(
        key_type,
        KeyType::EcP256 | KeyType::EcP384 | KeyType::Rsa2048 | KeyType::Rsa3072
    )
}

impl TpmKey {
    /// Creates a key in the TPM.
    pub fn generate(tpm: Arc<Tpm>, key_type: KeyType) -> Result<Self, KeyError> {
        if !supported(key_type) {
            return Err(KeyError::UnsupportedKeyType(key_type));
        }
        let blob = tpm
            .with(|dev| dev.create_key(&signing_key_template(key_type)))
            .map_err(device_error)?;
        Self::from_blob(tpm, blob)
    }

    /// Wraps a blob made earlier; does not talk to the TPM (see
    /// [`crate::device::TpmDevice::check_key`] for that).
    pub fn from_blob(tpm: Arc<Tpm>, blob: KeyBlob) -> Result<Self, KeyError> {
        let bad =
            |reason: String| KeyError::Backend(format!("TPM key blob unusable: {reason}").into());
        let key_type = blob
            .public
            .key_type()
            .ok_or_else(|| bad("unsupported key size".into()))?;
        if !blob
            .public
            .attributes
            .has(crate::wire::ObjectAttributes::SIGN_ENCRYPT)
        {
            return Err(bad("not a signing key".into()));
        }
        let spki = blob.public.spki().map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            tpm,
            blob,
            key_type,
            spki,
        })
    }

    /// The key blob (what [`TpmKeyManager`] stores).
    pub fn blob(&self) -> &KeyBlob {
        &self.blob
    }
}

pub(crate) fn tpm_scheme(scheme: SignatureScheme) -> Option<SigningScheme> {
    let hash = match scheme.hash() {
        HashAlgorithm::Sha256 => HashAlg::Sha256,
        HashAlgorithm::Sha384 => HashAlg::Sha384,
        HashAlgorithm::Sha512 => HashAlg::Sha512,
    };
    Some(match scheme {
        SignatureScheme::EcdsaP256Sha256 | SignatureScheme::EcdsaP384Sha384 => {
            SigningScheme::Ecdsa(hash)
        }
        s if s.is_pss() => SigningScheme::RsaPss(hash),
        s if s.is_rsa() => SigningScheme::RsaSsa(hash),
        _ => return None,
    })
}

impl Key for TpmKey {
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
            |dev, digest, tpm_scheme| dev.sign(&self.blob, digest, tpm_scheme),
        )
    }
}

/// A TPM signature as the DER (ECDSA) or fixed-length (RSA) bytes X.509 and TLS use.
/// [`Key::sign`] for a key of `key_type` in the TPM: the scheme checked, the message
/// hashed, `op` signing the digest in the device, the signature as DER (ECDSA) or raw
/// (RSA).
pub(crate) fn sign_in_tpm(
    tpm: &Tpm,
    blob: &KeyBlob,
    key_type: KeyType,
    scheme: SignatureScheme,
    message: &[u8],
    op: impl FnOnce(
        &mut dyn crate::device::TpmDevice,
        &[u8],
        SigningScheme,
    ) -> Result<Signature, DeviceError>,
) -> Result<Vec<u8>, KeyError> {
    let unsupported = || KeyError::UnsupportedScheme { key_type, scheme };
    if !key_type.supports(scheme) {
        return Err(unsupported());
    }
    let tpm_scheme = tpm_scheme(scheme).ok_or_else(unsupported)?;
    let digest = scheme.hash().digest(message);
    let signature = tpm
        .with(|dev| op(dev, &digest, tpm_scheme))
        .map_err(device_error)?;
    signature_der(signature, &blob.public)
}

pub(crate) fn signature_der(
    signature: Signature,
    public: &crate::wire::PublicArea,
) -> Result<Vec<u8>, KeyError> {
    match (signature, &public.params) {
        (Signature::Ecdsa { r, s, .. }, PublicParams::Ecc { curve, .. }) => {
            tessera_core::der::ecdsa_parts_to_der(&r, &s, curve.field_size()).map_err(|e| {
                KeyError::Backend(Failure::caused_by(format!("TPM's ECDSA signature: {e}"), e))
            })
        }
        (
            Signature::RsaSsa { sig, .. } | Signature::RsaPss { sig, .. },
            PublicParams::Rsa { key_bits, .. },
        ) => {
            // RSA signatures are as long as the modulus; pad a short one.
            let len = *key_bits as usize / 8;
            if sig.len() > len {
                return Err(KeyError::Backend(
                    "TPM returned an oversized RSA signature".into(),
                ));
            }
            let mut out = vec![0u8; len - sig.len()];
            out.extend_from_slice(&sig);
            Ok(out)
        }
        _ => Err(KeyError::Backend(
            "TPM returned a signature of another algorithm".into(),
        )),
    }
}

/// Named TPM keys, stored as blobs (`<id>.tpmkey`, mode 0600) in one folder (0700).
pub struct TpmKeyManager {
    tpm: Arc<Tpm>,
    dir: PathBuf,
    cache: Mutex<BTreeMap<String, Arc<TpmKey>>>,
}

impl fmt::Debug for TpmKeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmKeyManager")
            .field("dir", &self.dir)
            .field("tpm", &self.tpm.describe())
            .finish_non_exhaustive()
    }
}

const SUFFIX: &str = ".tpmkey";

fn poisoned() -> KeyError {
    KeyError::Backend("key cache lock poisoned by an earlier panic".into())
}

impl TpmKeyManager {
    /// Opens (creating if needed) the blob folder.
    pub fn open(tpm: Arc<Tpm>, dir: &Path) -> Result<Self, KeyError> {
        fs::ensure_dir(dir, 0o700).map_err(|source| KeyError::Io {
            context: format!("cannot create TPM key directory {}", dir.display()),
            source,
        })?;
        Ok(Self {
            tpm,
            dir: dir.to_owned(),
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, KeyError> {
        let ok = !id.is_empty()
            && id.len() <= 200
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(KeyError::Config(format!(
                "key id {id:?} must be 1-200 characters of [A-Za-z0-9._-], not starting with '.'"
            )));
        }
        Ok(self.dir.join(format!("{id}{SUFFIX}")))
    }
}

impl KeyManager for TpmKeyManager {
    fn name(&self) -> &'static str {
        "tpm"
    }

    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        let path = self.path(id)?;
        let key = Arc::new(TpmKey::generate(self.tpm.clone(), key_type)?);
        fs::write_atomic(&path, &key.blob.to_bytes(), 0o600).map_err(|source| KeyError::Io {
            context: format!("cannot write TPM key blob {}", path.display()),
            source,
        })?;
        self.cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }

    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        let path = self.path(id)?;
        if let Some(k) = self.cache.lock().map_err(|_| poisoned())?.get(id) {
            return Ok(Some(k.clone()));
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    context: format!("cannot read TPM key blob {}", path.display()),
                    source,
                });
            }
        };
        let corrupt = |reason: String| KeyError::Corrupt {
            id: id.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        };
        let blob = KeyBlob::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let key = TpmKey::from_blob(self.tpm.clone(), blob).map_err(|e| corrupt(e.to_string()))?;
        // Load it once now, so that a blob from another TPM fails here, by name,
        // rather than at the first signature.
        self.tpm
            .with(|dev| dev.check_key(&key.blob))
            .map_err(|e| match e {
                DeviceError::ForeignKey(_) => corrupt(e.to_string()),
                other => device_error(other),
            })?;
        let key = Arc::new(key);
        self.cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.to_owned(), key.clone());
        Ok(Some(key))
    }

    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| KeyError::Io {
            context: format!("cannot list TPM key directory {}", self.dir.display()),
            source,
        })?;
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.starts_with('.') {
                    return None;
                }
                name.strip_suffix(SUFFIX).map(str::to_owned)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        let path = self.path(id)?;
        self.cache.lock().map_err(|_| poisoned())?.remove(id);
        // Removing the blob is enough: the TPM keeps nothing for a key under the SRK.
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyError::Io {
                context: format!("cannot delete TPM key blob {}", path.display()),
                source,
            }),
        }
    }
}
