//! TLS for Rust workloads whose SVID key lives in the TPM: a
//! [`rustls::sign::SigningKey`] over the TSS2 key file and authorization value
//! that `tessera-agent api fetch x509 --write` writes (or that
//! `tessera.local.v1.TpmWorkloadKeys` streams). Every signature is a TPM2_Sign
//! under the owner hierarchy's SRK, with the key's authorization value keyed into
//! the command's HMAC; the private key never leaves the TPM.
//!
//! The TPM is reached with tessera-tpm's pure-Rust backend (no libtss2), so a
//! workload built with this crate can be a static binary.
//!
//! ```no_run
//! use std::path::Path;
//! let key = tessera_tpm_rustls::TpmSigningKey::open(
//!     "device:/dev/tpmrm0",
//!     Path::new("svid.0.tss2.key"),
//!     Path::new("svid.0.auth"),
//! )?;
//! let chain = tessera_tpm_rustls::certificates(&std::fs::read("svid.0.pem")?)?;
//! let certified = key.certified_key(chain);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! TPM commands run one at a time (the device is behind one mutex), so handshakes
//! on one key are serialised at the TPM: a few milliseconds each.

#![warn(missing_docs)]

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme as Tls};
use tessera_core::key::{Key, KeyType, SignatureScheme};
use tessera_tpm::{Backend, Tcti, Tpm, TpmWorkloadKey};
use zeroize::Zeroizing;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCTI string is not one Tessera understands.
    #[error("TCTI {0:?}: {1}")]
    Tcti(String, String),
    /// The TPM cannot be opened.
    #[error("{0}")]
    Tpm(#[from] tessera_tpm::DeviceError),
    /// The key file is not a usable TSS2 key, or the key does not load.
    #[error("{0}")]
    Key(#[from] tessera_core::key::KeyError),
    /// A certificate file holds no certificate.
    #[error("certificates: {0}")]
    Certificates(String),
}

/// A TPM-held key as rustls signs with it.
#[derive(Clone)]
pub struct TpmSigningKey {
    key: Arc<TpmWorkloadKey>,
}

impl fmt::Debug for TpmSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSigningKey")
            .field("key", &self.key)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

impl TpmSigningKey {
    /// Opens the TPM at `tcti` (e.g. `device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`) and reads the key file and its
    /// authorization value (one trailing newline is ignored). The key is loaded
    /// once here, so a file from another TPM fails now, by name.
    pub fn open(tcti: &str, key_file: &Path, auth_file: &Path) -> Result<Self, Error> {
        let parsed: Tcti = tcti
            .parse()
            .map_err(|e: tessera_tpm::device::tcti::TctiError| {
                Error::Tcti(tcti.to_owned(), e.to_string())
            })?;
        let tpm = Arc::new(Tpm::open_with(Backend::Native, &parsed)?);
        let pem = read(key_file)?;
        let mut auth = Zeroizing::new(read(auth_file)?);
        if auth.last() == Some(&b'\n') {
            auth.pop();
        }
        Self::from_file_contents(tpm, &pem, auth)
    }

    /// The key in `pem` (a TSS2 PRIVATE KEY file) with authorization value `auth`,
    /// in `tpm`; loaded once to check it belongs there.
    pub fn from_file_contents(
        tpm: Arc<Tpm>,
        pem: &[u8],
        auth: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        let key = TpmWorkloadKey::from_tss2_pem(tpm.clone(), pem, auth)?;
        tpm.with(|dev| dev.check_key(key.blob()))?;
        Ok(Self { key: Arc::new(key) })
    }

    /// The key, for other uses (a CSR, a signature outside TLS).
    pub fn key(&self) -> &Arc<TpmWorkloadKey> {
        &self.key
    }

    /// The key with its certificate chain (leaf first), for a rustls resolver.
    pub fn certified_key(self, chain: Vec<CertificateDer<'static>>) -> CertifiedKey {
        CertifiedKey::new(chain, Arc::new(self))
    }

    fn schemes(&self) -> &'static [(Tls, SignatureScheme)] {
        match self.key.key_type() {
            KeyType::EcP256 => &[(Tls::ECDSA_NISTP256_SHA256, SignatureScheme::EcdsaP256Sha256)],
            KeyType::EcP384 => &[(Tls::ECDSA_NISTP384_SHA384, SignatureScheme::EcdsaP384Sha384)],
            _ => &[
                (Tls::RSA_PSS_SHA256, SignatureScheme::RsaPssSha256),
                (Tls::RSA_PSS_SHA384, SignatureScheme::RsaPssSha384),
                (Tls::RSA_PKCS1_SHA256, SignatureScheme::RsaPkcs1Sha256),
                (Tls::RSA_PKCS1_SHA384, SignatureScheme::RsaPkcs1Sha384),
            ],
        }
    }
}

/// One certificate chain and key, always: a client certificate resolver (and a
/// server one) for a workload with one SVID.
#[derive(Debug)]
pub struct FixedIdentity(Arc<CertifiedKey>);

impl FixedIdentity {
    /// Presents `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self(Arc::new(key))
    }
}

impl rustls::client::ResolvesClientCert for FixedIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[Tls]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for FixedIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The DER certificates of a PEM file (leaf first), for [`TpmSigningKey::certified_key`].
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    tessera_core::pem::certificates(pem)
        .map(|v| v.into_iter().map(CertificateDer::from).collect())
        .map_err(|e| Error::Certificates(e.to_string()))
}

impl SigningKey for TpmSigningKey {
    fn choose_scheme(&self, offered: &[Tls]) -> Option<Box<dyn Signer>> {
        let (tls, scheme) = self
            .schemes()
            .iter()
            .find(|(tls, _)| offered.contains(tls))?;
        Some(Box::new(TpmSigner {
            key: self.key.clone(),
            tls: *tls,
            scheme: *scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.key.key_type() {
            KeyType::EcP256 | KeyType::EcP384 => SignatureAlgorithm::ECDSA,
            _ => SignatureAlgorithm::RSA,
        }
    }
}

struct TpmSigner {
    key: Arc<TpmWorkloadKey>,
    tls: Tls,
    scheme: SignatureScheme,
}

impl fmt::Debug for TpmSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSigner")
            .field("scheme", &self.tls)
            .finish()
    }
}

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign(self.scheme, message)
            .map_err(|e| rustls::Error::General(format!("TPM signature: {e}")))
    }

    fn scheme(&self) -> Tls {
        self.tls
    }
}
