//! The seam between Tessera and a TPM: the few operations the agent needs, as one
//! small object-safe trait, [`TpmDevice`], spoken in TPM wire structures (public
//! areas, key blobs, TPMT_SIGNATURE) rather than in any TSS library's types. The
//! tss-esapi backend (`esapi`, feature `esapi`) and the pure-Rust one (`native`,
//! feature `native`, what the static agent uses) implement it, and tests/swtpm
//! checks them against each other on swtpm.
//!
//! Keys live under Tessera's storage root key (SRK): a primary key in the owner
//! hierarchy made from [`srk_template`]. A primary key is a deterministic function of
//! the hierarchy's seed and the template, so every backend, every process and every
//! restart gets the same SRK, and a key blob (TPM2B_PUBLIC + TPM2B_PRIVATE, sealed
//! under the SRK) loads again on the same TPM, while on any other TPM (another seed)
//! TPM2_Load refuses it.
//!
//! [`Tpm`] is the shared handle: one device behind one mutex. [`keys`] puts the
//! agent's own keys in the TPM; [`tcti`] parses where the TPM is.

pub mod backend;
#[cfg(feature = "esapi")]
pub mod esapi;
pub mod hierarchy;
pub mod import;
pub mod keys;
#[cfg(feature = "native")]
pub mod native;
pub mod sealing;
pub mod tcti;

pub use backend::Backend;
pub use hierarchy::{Hierarchy, HierarchyAuth};

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use zeroize::Zeroizing;

use crate::verifier::credential::CredentialBlob;
use crate::verifier::ek::EkKind;
use crate::wire::{
    EccCurve, HashAlg, ObjectAttributes as A, PublicArea, PublicParams, Reader, Scheme, Signature,
    StructureError, SymDef, put_tpm2b,
};

/// Why a TPM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The TPM cannot be reached (no device node, simulator not running, ...).
    #[error("TPM unavailable ({tcti}): {reason}")]
    Unavailable {
        /// The TCTI it was reached through.
        tcti: String,
        /// Why it cannot be reached.
        reason: String,
    },
    /// The conversation with the TPM broke during `command`: the connection failed,
    /// the TSS is out of step, or the TPM forgot what this context loaded (it
    /// restarted). The backend reconnects and retries once by itself; this error
    /// means the TPM was still away, and the next operation reconnects again.
    #[error("{command}: the TPM connection was interrupted: {reason}")]
    Interrupted {
        /// The command that was interrupted.
        command: &'static str,
        /// What broke.
        reason: String,
    },
    /// The TPM answered a command with an error.
    #[error("{command} failed: {message}")]
    Command {
        /// The command.
        command: &'static str,
        /// The TPM's response code, decoded.
        message: String,
    },
    /// A key blob does not load: it was made by another TPM, under a different SRK
    /// (the owner hierarchy was cleared since), or it was damaged.
    #[error(
        "key blob does not belong to this TPM (made by another TPM, the TPM was cleared since, or the blob is damaged): {0}"
    )]
    ForeignKey(String),
    /// An EK is needed but the TPM has none of the kind asked for.
    #[error("TPM has no usable {0} endorsement key: {1}")]
    NoEk(EkKind, String),
    /// The TPM returned something malformed, or a stored blob is corrupt.
    #[error("malformed TPM data: {0}")]
    Malformed(String),
    /// The operation is not possible with these arguments.
    #[error("{0}")]
    Unsupported(String),
    /// The TPM refused a hierarchy's password (owner or endorsement): the
    /// configured one is wrong, or one is needed and none is configured. Never
    /// retried (see [`hierarchy`]).
    #[error(
        "{command}: the TPM refused the {hierarchy} hierarchy password ({}); check the {hierarchy}_auth_file or {hierarchy}_auth_credential setting",
        if *configured { "the configured password is wrong" } else { "none is configured, and the TPM's owner set one" }
    )]
    HierarchyAuth {
        /// The hierarchy.
        hierarchy: Hierarchy,
        /// The command that was refused.
        command: &'static str,
        /// Whether a password was configured.
        configured: bool,
    },
    /// Another thread panicked while holding the TPM.
    #[error("TPM lock poisoned by an earlier panic")]
    Poisoned,
}

impl From<StructureError> for DeviceError {
    fn from(e: StructureError) -> Self {
        DeviceError::Malformed(e.to_string())
    }
}

/// A key made under the SRK, as the TPM returned it: useless without that TPM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlob {
    /// TPMT_PUBLIC (parsed; re-marshals to the TPM's bytes).
    pub public: PublicArea,
    /// The contents of the TPM2B_PRIVATE (encrypted and integrity-protected by the TPM).
    pub private: Vec<u8>,
}

impl fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBlob")
            .field("name", &crate::wire::hex(&self.public.name()))
            .finish_non_exhaustive()
    }
}

impl KeyBlob {
    /// The file format: TPM2B_PUBLIC followed by TPM2B_PRIVATE, nothing else.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.public.marshal_tpm2b();
        put_tpm2b(&mut out, &self.private);
        out
    }

    /// Parses [`KeyBlob::to_bytes`] output.
    pub fn from_bytes(data: &[u8]) -> Result<Self, StructureError> {
        let mut r = Reader::new(data, "key blob");
        let public = PublicArea::parse(r.tpm2b()?)?;
        let private = r.tpm2b()?.to_vec();
        r.finish()?;
        if private.is_empty() {
            return Err(StructureError::Invalid("key blob (empty private part)"));
        }
        Ok(Self { public, private })
    }
}

/// The scheme TPM2_Sign uses with a key whose own scheme is NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningScheme {
    /// RSASSA-PKCS1-v1_5 with this hash.
    RsaSsa(HashAlg),
    /// RSASSA-PSS with this hash.
    RsaPss(HashAlg),
    /// ECDSA with this hash.
    Ecdsa(HashAlg),
}

impl SigningScheme {
    /// The hash of the digest the TPM is given.
    pub fn hash(self) -> HashAlg {
        match self {
            SigningScheme::RsaSsa(h) | SigningScheme::RsaPss(h) | SigningScheme::Ecdsa(h) => h,
        }
    }

    /// The scheme a key signs nonces with by default (SHA-256, SHA-384 for P-384).
    pub fn default_for(public: &PublicArea) -> Self {
        match &public.params {
            PublicParams::Rsa { .. } => SigningScheme::RsaSsa(HashAlg::Sha256),
            PublicParams::Ecc {
                curve: EccCurve::P384,
                ..
            } => SigningScheme::Ecdsa(HashAlg::Sha384),
            PublicParams::Ecc { .. } => SigningScheme::Ecdsa(HashAlg::Sha256),
        }
    }
}

/// A TPM2_Certify result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyOutput {
    /// The TPMS_ATTEST the TPM produced (the signed bytes).
    pub attest: Vec<u8>,
    /// The TPMT_SIGNATURE over it.
    pub signature: Vec<u8>,
}

/// The TPM operations Tessera's agent needs. Keys are passed as blobs: the backend
/// loads them under the SRK for the operation and flushes them afterwards, so no
/// handle outlives a call (a TPM without a resource manager has room for only three
/// loaded objects).
pub trait TpmDevice: Send + fmt::Debug {
    /// Where the TPM is, for messages.
    fn describe(&self) -> String;

    /// Reads a whole NV index with owner authorization; `None` if it is not defined.
    fn nv_read(&mut self, index: u32) -> Result<Option<Vec<u8>>, DeviceError>;

    /// The public area of the EK of `kind` (from a persistent handle holding a key
    /// of the standard template, else by TPM2_CreatePrimary from the template).
    fn ek_public(&mut self, kind: EkKind) -> Result<PublicArea, DeviceError>;

    /// Creates a key from `template` under the SRK.
    fn create_key(&mut self, template: &PublicArea) -> Result<KeyBlob, DeviceError>;

    /// Loads and flushes a key: fails with [`DeviceError::ForeignKey`] when the blob
    /// was not made by this TPM.
    fn check_key(&mut self, key: &KeyBlob) -> Result<(), DeviceError>;

    /// TPM2_Certify of `object` by `signer` (an AK), with `qualifying_data` as extra data.
    fn certify(
        &mut self,
        object: &KeyBlob,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError>;

    /// TPM2_ActivateCredential: opens `credential` bound to `object` (an AK) with the
    /// EK of `ek`, authorising the EK as its template requires.
    fn activate_credential(
        &mut self,
        object: &KeyBlob,
        ek: EkKind,
        credential: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError>;

    /// TPM2_Sign of `digest` with an unrestricted signing key.
    fn sign(
        &mut self,
        key: &KeyBlob,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError>;

    // Factory provisioning: hierarchy passwords and keys at persistent handles
    // (docs/TPM.md, "Factory provisioning"). The defaults refuse, for test doubles.

    /// Sets the owner and endorsement hierarchy passwords every later command
    /// authorising those hierarchies uses.
    fn set_hierarchy_auth(&mut self, auth: &HierarchyAuth) -> Result<(), DeviceError> {
        let _ = auth;
        Err(DeviceError::Unsupported(format!(
            "{}: hierarchy passwords are not supported",
            self.describe()
        )))
    }

    /// TPM2_ReadPublic of a persistent handle (0x81xxxxxx); `None` when nothing is
    /// there.
    fn persistent_public(&mut self, handle: u32) -> Result<Option<PublicArea>, DeviceError> {
        Err(DeviceError::Unsupported(format!(
            "{}: keys at persistent handles ({handle:#010x}) are not supported",
            self.describe()
        )))
    }

    /// TPM2_Certify of the key at persistent `handle` (empty auth value) by `signer`.
    fn certify_persistent(
        &mut self,
        handle: u32,
        signer: &KeyBlob,
        qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        let _ = (signer, qualifying_data);
        Err(DeviceError::Unsupported(format!(
            "{}: keys at persistent handles ({handle:#010x}) are not supported",
            self.describe()
        )))
    }

    /// TPM2_ECDH_ZGen: the x coordinate of the point `key` (an unrestricted ECC
    /// decryption key under the SRK) times `point` (uncompressed); see [`sealing`].
    fn ecdh_zgen(
        &mut self,
        key: &KeyBlob,
        point: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DeviceError> {
        let _ = (key, point);
        Err(DeviceError::Unsupported(format!(
            "{}: TPM2_ECDH_ZGen is not supported",
            self.describe()
        )))
    }

    /// TPM2_Sign of `digest` with the unrestricted signing key at persistent
    /// `handle` (empty auth value).
    fn sign_persistent(
        &mut self,
        handle: u32,
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let _ = (digest, scheme);
        Err(DeviceError::Unsupported(format!(
            "{}: keys at persistent handles ({handle:#010x}) are not supported",
            self.describe()
        )))
    }

    // Workload keys (`workload_key`): keys with their own authorization value.

    /// Creates a key from `template` under the SRK whose authorization value is
    /// `auth` (see [`check_auth_value`]); the TPM asks for it at every use.
    /// Both backends implement it; the default is for test doubles.
    fn create_key_with_auth(
        &mut self,
        template: &PublicArea,
        auth: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        let _ = (template, auth);
        Err(DeviceError::Unsupported(format!(
            "{} cannot create keys with an authorization value",
            self.describe()
        )))
    }

    /// TPM2_Sign of `digest` with an unrestricted signing key whose authorization
    /// value is `auth`; a wrong value is refused by the TPM.
    /// Both backends implement it; the default is for test doubles.
    fn sign_with_auth(
        &mut self,
        key: &KeyBlob,
        auth: &[u8],
        digest: &[u8],
        scheme: SigningScheme,
    ) -> Result<Signature, DeviceError> {
        let _ = (key, auth, digest, scheme);
        Err(DeviceError::Unsupported(format!(
            "{} cannot sign with keys that have an authorization value",
            self.describe()
        )))
    }

    /// TPM2_Import of a key made outside the TPM (`public`, and `sensitive`, its
    /// marshalled TPMT_SENSITIVE), unwrapped, under the SRK: a software key the TPM
    /// can use but did not make, so its public area has neither fixedTPM, fixedParent
    /// nor sensitiveDataOrigin. What an agent trying to pass a software key as
    /// TPM-born would do; the tests use it to check the server refuses that.
    fn import_key(
        &mut self,
        _public: &PublicArea,
        _sensitive: &[u8],
    ) -> Result<KeyBlob, DeviceError> {
        Err(DeviceError::Unsupported(format!(
            "{}: this backend cannot import keys",
            self.describe()
        )))
    }

    /// TPM2_PCR_Read of the SHA-256 bank: the values of `pcrs` (indices 0 to 23,
    /// ascending, no repeats), in that order.
    fn pcr_read(&mut self, _pcrs: &[u8]) -> Result<Vec<Vec<u8>>, DeviceError> {
        Err(DeviceError::Unsupported(format!(
            "{}: this backend cannot read PCRs",
            self.describe()
        )))
    }

    /// TPM2_Quote by `ak` over the SHA-256 bank's `pcrs` (as for
    /// [`TpmDevice::pcr_read`]), with `qualifying_data` as extra data.
    fn quote(
        &mut self,
        _ak: &KeyBlob,
        _pcrs: &[u8],
        _qualifying_data: &[u8],
    ) -> Result<CertifyOutput, DeviceError> {
        Err(DeviceError::Unsupported(format!(
            "{}: this backend cannot quote",
            self.describe()
        )))
    }
}

/// The longest authorization value a key with a SHA-256 name takes (its digest size).
pub const MAX_AUTH_VALUE: usize = 32;

/// Checks an authorization value for [`TpmDevice::create_key_with_auth`]: 1 to
/// [`MAX_AUTH_VALUE`] bytes, not ending in a zero byte (the TPM strips trailing
/// zeros, and every TSS then agrees only by accident).
pub fn check_auth_value(auth: &[u8]) -> Result<(), DeviceError> {
    if auth.is_empty() || auth.len() > MAX_AUTH_VALUE {
        return Err(DeviceError::Unsupported(format!(
            "a key's authorization value must be 1 to {MAX_AUTH_VALUE} bytes, not {}",
            auth.len()
        )));
    }
    if auth.last() == Some(&0) {
        return Err(DeviceError::Unsupported(
            "a key's authorization value must not end in a zero byte".into(),
        ));
    }
    Ok(())
}

/// The highest PCR index of the SHA-256 bank quoted and read (PC Client TPMs have 24).
pub const MAX_PCR: u8 = 23;

/// Checks a PCR list: indices 0 to [`MAX_PCR`], ascending, no repeats, not empty.
pub fn check_pcr_indices(pcrs: &[u8]) -> Result<(), DeviceError> {
    if pcrs.is_empty() {
        return Err(DeviceError::Unsupported("no PCR selected".into()));
    }
    if let Some(i) = pcrs.iter().find(|&&i| i > MAX_PCR) {
        return Err(DeviceError::Unsupported(format!(
            "PCR {i}: indices go from 0 to {MAX_PCR}"
        )));
    }
    if pcrs.windows(2).any(|w| w[0] >= w[1]) {
        return Err(DeviceError::Unsupported(format!(
            "PCRs {pcrs:?}: list them ascending, each once"
        )));
    }
    Ok(())
}

/// TPML_PCR_SELECTION of `pcrs` in the SHA-256 bank (what TPM2_Quote signs over).
pub fn pcr_selection(pcrs: &[u8]) -> Vec<u8> {
    let mut bitmap = [0u8; 3];
    for &i in pcrs {
        if let Some(b) = bitmap.get_mut(usize::from(i / 8)) {
            *b |= 1 << (i % 8);
        }
    }
    let mut out = Vec::new();
    crate::wire::put_u32(&mut out, 1);
    crate::wire::put_u16(&mut out, crate::wire::alg::SHA256);
    out.push(3);
    out.extend_from_slice(&bitmap);
    out
}

/// Tessera's SRK template: ECC P-256 (fast to derive, unlike an RSA primary),
/// SHA-256 name, AES-128-CFB, restricted decryption, userWithAuth with an empty
/// password, noDA. Every backend must use exactly this, or blobs stop loading.
pub fn srk_template() -> PublicArea {
    PublicArea {
        name_alg: HashAlg::Sha256,
        attributes: A(A::FIXED_TPM
            | A::FIXED_PARENT
            | A::SENSITIVE_DATA_ORIGIN
            | A::USER_WITH_AUTH
            | A::NO_DA
            | A::RESTRICTED
            | A::DECRYPT),
        auth_policy: vec![],
        params: PublicParams::Ecc {
            symmetric: Some(SymDef::aes_cfb(128)),
            scheme: Scheme::Null,
            curve: EccCurve::P256,
            kdf: None,
            x: vec![],
            y: vec![],
        },
    }
}

/// The template of an unrestricted signing key (agent SVID keys, DevIDs): fixedTPM,
/// fixedParent, sensitiveDataOrigin, userWithAuth, noDA, sign; scheme NULL so that
/// TPM2_Sign can pick PKCS#1, PSS or ECDSA per call.
pub fn signing_key_template(key_type: tessera_core::key::KeyType) -> PublicArea {
    use tessera_core::key::KeyType;
    let params = match key_type {
        KeyType::EcP256 | KeyType::EcP384 => PublicParams::Ecc {
            symmetric: None,
            scheme: Scheme::Null,
            curve: if key_type == KeyType::EcP384 {
                EccCurve::P384
            } else {
                EccCurve::P256
            },
            kdf: None,
            x: vec![],
            y: vec![],
        },
        _ => PublicParams::Rsa {
            symmetric: None,
            scheme: Scheme::Null,
            key_bits: key_type.bits() as u16,
            exponent: 0,
            modulus: vec![],
        },
    };
    PublicArea {
        name_alg: HashAlg::Sha256,
        attributes: A(A::FIXED_TPM
            | A::FIXED_PARENT
            | A::SENSITIVE_DATA_ORIGIN
            | A::USER_WITH_AUTH
            | A::NO_DA
            | A::SIGN_ENCRYPT),
        auth_policy: vec![],
        params,
    }
}

/// A TPM shared by everything in a process.
///
/// One mutex guards the whole device because a TPM (and a TSS context) is a single
/// sequential conversation: commands must not interleave, a multi-command operation
/// (load, certify, flush) must not be split by another thread's commands that would
/// fill the three object slots a TPM without a resource manager has, and the
/// tss-esapi context is not thread-safe at all. TPM commands take milliseconds, so
/// contention costs little next to the command itself.
pub struct Tpm {
    device: Mutex<Box<dyn TpmDevice>>,
    description: String,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm")
            .field("device", &self.description)
            .finish()
    }
}

impl Tpm {
    /// Wraps a backend.
    pub fn new(device: Box<dyn TpmDevice>) -> Self {
        let description = device.describe();
        Self {
            device: Mutex::new(device),
            description,
        }
    }

    /// Opens the TPM named by `tcti` with the default backend of this build
    /// ([`Backend::default`]).
    pub fn open(tcti: &crate::device::tcti::Tcti) -> Result<Self, DeviceError> {
        Self::open_with(Backend::default(), tcti)
    }

    /// Opens the TPM named by `tcti` with `backend`; a backend this build does not
    /// contain is refused with a message that says so.
    pub fn open_with(
        backend: Backend,
        tcti: &crate::device::tcti::Tcti,
    ) -> Result<Self, DeviceError> {
        backend.open(tcti).map(Self::new)
    }

    /// Where the TPM is.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Locks the device for a sequence of operations.
    pub fn lock(&self) -> Result<MutexGuard<'_, Box<dyn TpmDevice>>, DeviceError> {
        self.device.lock().map_err(|_| DeviceError::Poisoned)
    }

    /// Runs `f` with the device locked.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn TpmDevice) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let mut guard = self.lock()?;
        f(guard.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blob_round_trips_and_rejects_garbage() {
        let mut public = srk_template();
        if let PublicParams::Ecc { x, y, .. } = &mut public.params {
            *x = vec![1; 32];
            *y = vec![2; 32];
        }
        let blob = KeyBlob {
            public,
            private: vec![9; 100],
        };
        let bytes = blob.to_bytes();
        assert_eq!(KeyBlob::from_bytes(&bytes).unwrap(), blob);
        for cut in 0..bytes.len() {
            assert!(KeyBlob::from_bytes(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(KeyBlob::from_bytes(&long).is_err());
        assert!(!format!("{blob:?}").contains("private"));
    }

    #[test]
    fn templates_marshal_canonically() {
        use tessera_core::key::KeyType;
        for t in [
            srk_template(),
            signing_key_template(KeyType::EcP256),
            signing_key_template(KeyType::EcP384),
            signing_key_template(KeyType::Rsa2048),
        ] {
            assert_eq!(PublicArea::parse(&t.marshal()).unwrap(), t);
        }
    }
}
