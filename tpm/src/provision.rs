//! Provisioning helpers behind `tessera-agent tpm provision-devid` and `tpm info`.
//!
//! [`provision_devid`] creates a DevID key in the TPM, under Tessera's SRK (not as a
//! primary: a child key is created once and stored as a blob, where an RSA primary
//! would be re-derived, slowly, on every use, and a blob of our own needs no
//! persistent handle or owner authorisation), writes a PKCS#10 request signed by the
//! TPM itself, and has a vendor CA (a software CA key and certificate given as PEM,
//! standing in for the vendor's factory CA) certify it. It writes into a folder:
//!
//! - `devid.key`: the key blob (TPM2B_PUBLIC || TPM2B_PRIVATE), mode 0600;
//! - `devid.csr`: the request (PEM), for a vendor CA elsewhere;
//! - `devid.crt`: the certificate chain (PEM), the DevID first, then the CA's.
//!
//! [`load_devid`] reads the folder back. [`info`] tells an operator what to
//! allow-list or expect: each EK's hash and certificate subject and issuer, and the
//! DevID's subject, issuer and agent ID path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::digest;
use tessera_core::key::{Key, KeyType, RcgenKey};
use tessera_core::pem;
use tessera_process::fs;

use crate::attestation::read_ek_certificate;
use crate::attestation::tpm_devid::{DevIdIdentity, DevIdKey};
use crate::attestation::tpm_ek::ek_pub_hash;
use crate::device::keys::TpmKey;
use crate::device::{DeviceError, KeyBlob, Tpm};
use crate::verifier::chain::{common_name, subject_and_issuer};
use crate::verifier::ek::{EkKind, TpmIdentity, tpm_identity};
use crate::wire::hex;

/// File names in a DevID folder.
pub const DEVID_KEY_FILE: &str = "devid.key";
/// The certificate request the DevID was made from (PEM).
pub const DEVID_CSR_FILE: &str = "devid.csr";
/// The DevID certificate, then its issuer (PEM).
pub const DEVID_CERT_FILE: &str = "devid.crt";

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The TPM failed.
    #[error("TPM: {0}")]
    Device(#[from] DeviceError),
    /// The key could not be created or used.
    #[error("DevID key: {0}")]
    Key(#[from] tessera_core::key::KeyError),
    /// The vendor CA's certificate and key do not belong together.
    #[error("vendor CA: {0}")]
    Ca(String),
    /// The vendor CA's certificate file holds no usable certificate.
    #[error("vendor CA certificate: {0}")]
    CaCertificate(#[source] pem::PemError),
    /// The vendor CA's certificate or key cannot be used to sign.
    #[error("vendor CA {what}: {source}")]
    CaUnusable {
        /// "private key" or "certificate".
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// Building the request or certificate failed.
    #[error("certificate {what}: {source}")]
    Certificate {
        /// "request", "signing"...
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The DevID key cannot sign a request (its public key is unreadable).
    #[error("DevID key: {0}")]
    KeyEncoding(#[source] tessera_core::der::DerError),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// A DevID folder is incomplete or corrupt.
    #[error("DevID in {dir}: {reason}")]
    DevId {
        /// The folder.
        dir: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevIdRequest {
    /// EcP256, EcP384 or Rsa2048.
    pub key_type: KeyType,
    /// The certificate's subject common name (a serial number, a model/serial pair...).
    pub common_name: String,
    /// How long the certificate is valid, in days.
    pub validity_days: u32,
}

impl DevIdRequest {
    /// A P-256 DevID valid ten years.
    pub fn new(common_name: impl Into<String>) -> Self {
        Self {
            key_type: KeyType::EcP256,
            common_name: common_name.into(),
            validity_days: 3650,
        }
    }
}

/// A software CA standing in for the vendor's.
pub struct VendorCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for VendorCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorCa")
            .field("subject", &subject_and_issuer(&self.cert_der).map(|s| s.0))
            .finish_non_exhaustive()
    }
}

impl VendorCa {
    /// From the CA certificate and its private key (PKCS#8 PEM; EC or RSA).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ProvisionError> {
        let mut certs =
            pem::certificates(cert_pem.as_bytes()).map_err(ProvisionError::CaCertificate)?;
        // At least one, or certificates() fails.
        let cert_der = certs.swap_remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|source| ProvisionError::CaUnusable {
            what: "private key",
            source,
        })?;
        let spki_matches = crate::verifier::chain::spki_of(&cert_der)
            .map(|spki| {
                tessera_core::der::spki_public_key_bits(&spki).ok() == Some(key.public_key_raw())
            })
            .unwrap_or(false);
        if !spki_matches {
            return Err(ProvisionError::Ca(
                "the private key does not belong to the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key).map_err(|source| {
            ProvisionError::CaUnusable {
                what: "certificate",
                source,
            }
        })?;
        Ok(Self { issuer, cert_der })
    }

    /// From PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ProvisionError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ProvisionError::Io {
                context: format!("cannot read {}", p.display()),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certifies the key in a PKCS#10 request (DER) as a DevID.
    pub fn certify_request(
        &self,
        csr_der: &[u8],
        validity_days: u32,
    ) -> Result<Vec<u8>, ProvisionError> {
        let mut csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(
            |source| ProvisionError::Certificate {
                what: "request",
                source,
            },
        )?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        csr.params.not_after = now + time::Duration::days(validity_days.into());
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| ProvisionError::Random)?;
        serial[0] &= 0x7f;
        csr.params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|source| ProvisionError::Certificate {
                what: "signing",
                source,
            })?;
        Ok(cert.der().to_vec())
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), ProvisionError> {
    fs::write_atomic(path, data, mode).map_err(|source| ProvisionError::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })
}

/// Creates a DevID key in the TPM, has `ca` certify it, and stores key blob, request
/// and certificate chain in `dir` (created with mode 0700).
pub fn provision_devid(
    tpm: &Arc<Tpm>,
    request: &DevIdRequest,
    ca: &VendorCa,
    dir: &Path,
) -> Result<DevIdIdentity, ProvisionError> {
    if !matches!(
        request.key_type,
        KeyType::EcP256 | KeyType::EcP384 | KeyType::Rsa2048
    ) {
        return Err(ProvisionError::Key(
            tessera_core::key::KeyError::UnsupportedKeyType(request.key_type),
        ));
    }
    fs::ensure_dir(dir, 0o700).map_err(|source| ProvisionError::Io {
        context: format!("cannot create {}", dir.display()),
        source,
    })?;
    let key = Arc::new(TpmKey::generate(tpm.clone(), request.key_type)?);
    let blob = key.blob().clone();

    // The request is signed by the TPM key: the CA sees proof of possession.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, request.common_name.as_str());
    let signer = RcgenKey::new(key.clone() as Arc<dyn Key>).map_err(ProvisionError::KeyEncoding)?;
    let csr = params
        .serialize_request(&signer)
        .map_err(|e| match RcgenKey::take_error() {
            Some(key_err) => ProvisionError::Key(key_err),
            None => ProvisionError::Certificate {
                what: "request",
                source: e,
            },
        })?;
    let csr_der = csr.der().to_vec();
    let leaf = ca.certify_request(&csr_der, request.validity_days)?;

    write(&dir.join(DEVID_KEY_FILE), &blob.to_bytes(), 0o600)?;
    write(
        &dir.join(DEVID_CSR_FILE),
        pem::encode("CERTIFICATE REQUEST", &csr_der).as_bytes(),
        0o644,
    )?;
    let mut chain_pem = pem::encode("CERTIFICATE", &leaf);
    chain_pem.push_str(&pem::encode("CERTIFICATE", ca.certificate()));
    write(&dir.join(DEVID_CERT_FILE), chain_pem.as_bytes(), 0o644)?;
    Ok(DevIdIdentity {
        chain: vec![leaf, ca.certificate().to_vec()],
        key: DevIdKey::Blob(blob),
    })
}

/// Reads a DevID folder written by [`provision_devid`] (or by hand: any PEM chain
/// with the DevID first, and the blob of the key it certifies).
pub fn load_devid(dir: &Path) -> Result<DevIdIdentity, ProvisionError> {
    let bad = |reason: String| ProvisionError::DevId {
        dir: dir.to_owned(),
        reason,
    };
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|source| ProvisionError::Io {
            context: format!("cannot read {}", p.display()),
            source,
        })
    };
    let chain = pem::certificates(&read(DEVID_CERT_FILE)?)
        .map_err(|e| bad(format!("{DEVID_CERT_FILE}: {e}")))?;
    let key = KeyBlob::from_bytes(&read(DEVID_KEY_FILE)?)
        .map_err(|e| bad(format!("{DEVID_KEY_FILE}: {e}")))?;
    let spki = crate::verifier::chain::spki_of(&chain[0])
        .ok_or_else(|| bad(format!("{DEVID_CERT_FILE}: first certificate unreadable")))?;
    if !crate::attestation::public_matches_spki(&key.public, &spki) {
        return Err(bad(format!(
            "{DEVID_KEY_FILE} is not the key of the first certificate in {DEVID_CERT_FILE}"
        )));
    }
    Ok(DevIdIdentity {
        chain,
        key: DevIdKey::Blob(key),
    })
}

/// A certificate as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertificateSummary {
    /// The subject DN.
    pub subject: String,
    /// The issuer DN.
    pub issuer: String,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

fn summary(der: &[u8]) -> Option<CertificateSummary> {
    let (subject, issuer) = subject_and_issuer(der)?;
    Some(CertificateSummary {
        subject,
        issuer,
        sha256: hex(digest::digest(&digest::SHA256, der).as_ref()),
    })
}

/// One EK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EkInfo {
    /// Which EK (RSA 2048, ECC P-256, ECC P-384).
    pub kind: EkKind,
    /// What `tpm_ek` allow-lists: SHA-256 of the EK's SubjectPublicKeyInfo, hex.
    pub pub_hash: Option<String>,
    /// The agent ID path `tpm_ek` would give (`tpm/<pub_hash>`).
    pub agent_path: Option<String>,
    /// The certificate in NV, if any.
    pub certificate: Option<CertificateSummary>,
    /// The TPM identity in the certificate.
    pub tpm: Option<TpmIdentity>,
    /// Why this EK could not be read, if it could not.
    pub error: Option<String>,
}

/// The DevID.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevIdInfo {
    /// The DevID certificate.
    pub certificate: CertificateSummary,
    /// Its subject's common name.
    pub subject_cn: Option<String>,
    /// The agent ID path `tpm_devid` gives (`tpm_devid/<sha1 of the DER>`).
    pub agent_path: String,
}

/// What `tessera-agent tpm info` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TpmInfo {
    /// The TPM as the TCTI names it.
    pub tpm: String,
    /// Every EK the TPM has.
    pub endorsement_keys: Vec<EkInfo>,
    /// The DevID provisioned, if any.
    pub devid: Option<DevIdInfo>,
}

/// Reads the EKs (all three kinds; one that cannot be made is reported, not fatal)
/// and, given a DevID folder, the DevID.
pub fn info(tpm: &Tpm, devid_dir: Option<&Path>) -> Result<TpmInfo, ProvisionError> {
    let devid = devid_dir.map(load_devid).transpose()?;
    info_for(tpm, devid.as_ref())
}

/// [`info`] with a DevID already loaded (a folder's, or a factory one).
pub fn info_for(tpm: &Tpm, devid: Option<&DevIdIdentity>) -> Result<TpmInfo, ProvisionError> {
    let mut endorsement_keys = Vec::new();
    for kind in EkKind::ALL {
        let (cert, public) = tpm.with(|dev| {
            let cert = read_ek_certificate(dev, kind)?;
            Ok((cert, dev.ek_public(kind)))
        })?;
        let mut entry = EkInfo {
            kind,
            pub_hash: None,
            agent_path: None,
            certificate: cert.as_deref().and_then(summary),
            tpm: cert.as_deref().and_then(|c| tpm_identity(c).ok()),
            error: None,
        };
        match public
            .map_err(|e| e.to_string())
            .and_then(|p| ek_pub_hash(&p).map_err(|e| e.to_string()))
        {
            Ok(h) => {
                entry.agent_path = Some(format!("tpm/{h}"));
                entry.pub_hash = Some(h);
            }
            Err(e) => entry.error = Some(e),
        }
        endorsement_keys.push(entry);
    }
    let devid = match devid {
        None => None,
        Some(id) => {
            let leaf = &id.chain[0];
            Some(DevIdInfo {
                certificate: summary(leaf).ok_or_else(|| ProvisionError::DevId {
                    dir: PathBuf::new(),
                    reason: "certificate unreadable".into(),
                })?,
                subject_cn: common_name(leaf, false),
                agent_path: format!(
                    "tpm_devid/{}",
                    hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf).as_ref())
                ),
            })
        }
    };
    Ok(TpmInfo {
        tpm: tpm.describe().to_owned(),
        endorsement_keys,
        devid,
    })
}
