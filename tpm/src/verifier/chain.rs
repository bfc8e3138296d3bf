//! X.509 path validation for EK and DevID certificates, done here rather than with a
//! generic web PKI validator: EK certificates carry a critical subject alternative
//! name holding only a directoryName (the TPM's manufacturer, model and version) and
//! the EKU 2.23.133.8.1, which such validators refuse. The rules are the plain ones:
//! every signature verifies (ring, through x509-parser), every certificate is within
//! its validity period, every issuer is a CA (basicConstraints cA, keyCertSign when
//! key usage is present, path length respected), no certificate has a critical
//! extension we do not understand, and the path ends at a configured trust anchor.
//! TPM-specific extensions are tolerated on the leaf only.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::prelude::*;

/// Why a certificate chain was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate is not DER X.509.
    #[error("certificate {index} is malformed: {reason}")]
    Malformed {
        /// Its position in the chain.
        index: usize,
        /// The parser's account.
        reason: String,
    },
    /// No configured trust anchor issued the chain.
    #[error("certificate \"{subject}\" (issuer \"{issuer}\") does not chain to a trusted CA")]
    Untrusted {
        /// The certificate's subject.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate is outside its validity period.
    #[error("certificate \"{0}\" is expired or not yet valid")]
    Expired(String),
    /// An issuer is not a CA, may not sign certificates, or exceeds its path length.
    #[error("certificate \"{0}\" may not issue certificates")]
    NotACa(String),
    /// The leaf is a CA certificate.
    #[error("certificate \"{0}\" is a CA certificate, not an end-entity one")]
    LeafIsCa(String),
    /// A certificate has a critical extension this validator does not process.
    #[error("certificate \"{subject}\" has an unsupported critical extension {oid}")]
    CriticalExtension {
        /// The certificate's subject.
        subject: String,
        /// The extension.
        oid: String,
    },
    /// The leaf's extended key usage excludes the purpose.
    #[error("certificate \"{0}\" has an extended key usage that excludes {1}")]
    KeyPurpose(String, &'static str),
    /// No certificate was given.
    #[error("empty certificate chain")]
    Empty,
    /// A CA certificate file cannot be read.
    #[error("cannot read CA certificates from {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// A CA certificate file holds no usable certificate.
    #[error("CA certificates in {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with its PEM.
        #[source]
        source: tessera_core::pem::PemError,
    },
    /// The peer presented more intermediate certificates than a path can use.
    #[error("{0} intermediate certificates presented; at most {MAX_PRESENTED}")]
    TooManyPresented(usize),
    /// Finding a path took more signature checks than any real chain needs.
    #[error(
        "no path to a trusted CA within {MAX_SIGNATURE_CHECKS} signature checks: the certificates presented hold too many candidate paths"
    )]
    SearchLimit,
}

/// The extra leaf rules for a kind of certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafProfile {
    /// A TPM EK certificate: tolerates the critical SAN and subject directory
    /// attributes; an EKU, if present, must include tcg-kp-EKCertificate.
    EndorsementKey,
    /// An IEEE 802.1AR DevID (IDevID or LDevID): a key usage, if present, must allow
    /// digitalSignature.
    DevId,
}

const OID_SUBJECT_DIRECTORY_ATTRIBUTES: &str = "2.5.29.9";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SUBJECT_ALT_NAME: &str = "2.5.29.17";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_CERTIFICATE_POLICIES: &str = "2.5.29.32";
const OID_EXTENDED_KEY_USAGE: &str = "2.5.29.37";
const OID_TCG_KP_EK_CERTIFICATE: &str = "2.23.133.8.1";
const OID_ANY_EXTENDED_KEY_USAGE: &str = "2.5.29.37.0";
const MAX_DEPTH: usize = 8;
/// Most intermediates a peer may present: a DevID chain is a leaf and one or two
/// CAs. The chain comes before any proof, from anyone who can reach the agent API.
pub const MAX_PRESENTED: usize = 8;
/// Most signature checks one path search may make. Certificates that share a
/// subject and sign one another make the depth-first search try every ordering of
/// them (about K^8 checks for K copies): a dozen such certificates, a few kilobytes,
/// would keep a CPU busy for hours. Real chains need a handful of checks.
pub const MAX_SIGNATURE_CHECKS: usize = 256;

/// CA certificates: the anchors a chain must end at, plus intermediates that may be
/// used to build a path (a TPM's NV holds only the EK certificate, so EK
/// intermediates usually come from configuration).
#[derive(Debug, Clone, Default)]
pub struct CaPool {
    anchors: Vec<Vec<u8>>,
    intermediates: Vec<Vec<u8>>,
}

impl CaPool {
    /// A pool trusting every certificate in `anchors` (DER).
    pub fn new(anchors: Vec<Vec<u8>>) -> Result<Self, ChainError> {
        for (index, der) in anchors.iter().enumerate() {
            parse(der, index)?;
        }
        Ok(Self {
            anchors,
            intermediates: Vec::new(),
        })
    }

    /// A pool trusting every certificate in the PEM files given.
    pub fn from_pem_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, ChainError> {
        let mut anchors = Vec::new();
        for p in paths {
            anchors.extend(load_pem_file(p.as_ref())?);
        }
        Self::new(anchors)
    }

    /// Adds untrusted intermediates (DER) for path building.
    pub fn with_intermediates(mut self, intermediates: Vec<Vec<u8>>) -> Result<Self, ChainError> {
        for (index, der) in intermediates.iter().enumerate() {
            parse(der, index)?;
        }
        self.intermediates.extend(intermediates);
        Ok(self)
    }

    /// The trust anchors (DER).
    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    /// Whether the pool trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// Reads every CERTIFICATE block of a PEM file (at least one).
pub fn load_pem_file(path: &Path) -> Result<Vec<Vec<u8>>, ChainError> {
    let data = std::fs::read(path).map_err(|source| ChainError::Read {
        path: path.to_owned(),
        source,
    })?;
    tessera_core::pem::certificates(&data).map_err(|source| ChainError::Pem {
        path: path.to_owned(),
        source,
    })
}

/// A chain that validated: the leaf and the CA certificates above it, up to and
/// including the trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The leaf (DER).
    pub leaf: Vec<u8>,
    /// The CA certificates above it, the trust anchor last (DER).
    pub cas: Vec<Vec<u8>>,
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, ChainError> {
    match X509Certificate::from_der(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok(_) => Err(ChainError::Malformed {
            index,
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(ChainError::Malformed {
            index,
            reason: e.to_string(),
        }),
    }
}

fn now() -> ASN1Time {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    ASN1Time::from_timestamp(secs).unwrap_or_else(|_| ASN1Time::now())
}

/// Validates `leaf` (DER) up to an anchor of `pool`, using `presented` intermediates
/// (from the peer) and the pool's own.
pub fn verify_chain(
    leaf: &[u8],
    presented: &[Vec<u8>],
    pool: &CaPool,
    profile: LeafProfile,
) -> Result<VerifiedChain, ChainError> {
    verify_chain_at(leaf, presented, pool, profile, now())
}

/// [`verify_chain`] at a given time.
pub fn verify_chain_at(
    leaf: &[u8],
    presented: &[Vec<u8>],
    pool: &CaPool,
    profile: LeafProfile,
    at: ASN1Time,
) -> Result<VerifiedChain, ChainError> {
    if presented.len() > MAX_PRESENTED {
        return Err(ChainError::TooManyPresented(presented.len()));
    }
    let leaf_cert = parse(leaf, 0)?;
    check_leaf(&leaf_cert, profile, at)?;
    // Each certificate once: a peer often sends the anchor along, and a copy that
    // is not marked as the anchor would let the path run through it twice.
    let mut candidates: Vec<(X509Certificate<'_>, &[u8], bool)> = Vec::new();
    for (i, der) in pool.anchors.iter().enumerate() {
        candidates.push((parse(der, i)?, der.as_slice(), true));
    }
    for (i, der) in presented.iter().enumerate() {
        let cert = parse(der, i + 1)?;
        if !candidates.iter().any(|c| c.1 == der.as_slice()) {
            candidates.push((cert, der.as_slice(), false));
        }
    }
    for (i, der) in pool.intermediates.iter().enumerate() {
        let cert = parse(der, i)?;
        if !candidates.iter().any(|c| c.1 == der.as_slice()) {
            candidates.push((cert, der.as_slice(), false));
        }
    }
    let mut path = Vec::new();
    let mut budget = MAX_SIGNATURE_CHECKS;
    if build(&leaf_cert, &candidates, at, &mut path, 0, &mut budget)? {
        return Ok(VerifiedChain {
            leaf: leaf.to_vec(),
            cas: path.into_iter().map(|i| candidates[i].1.to_vec()).collect(),
        });
    }
    Err(ChainError::Untrusted {
        subject: leaf_cert.subject().to_string(),
        issuer: leaf_cert.issuer().to_string(),
    })
}

/// Depth-first path building; `path` holds candidate indexes, child to anchor. The
/// first structural error met along a dead end is kept only if no path succeeds.
/// `budget` is the number of signature checks left; running out ends the search.
fn build(
    child: &X509Certificate<'_>,
    candidates: &[(X509Certificate<'_>, &[u8], bool)],
    at: ASN1Time,
    path: &mut Vec<usize>,
    depth: usize,
    budget: &mut usize,
) -> Result<bool, ChainError> {
    if depth >= MAX_DEPTH {
        return Ok(false);
    }
    let mut first_error = None;
    for (i, (issuer, _, is_anchor)) in candidates.iter().enumerate() {
        if path.contains(&i) || issuer.subject().as_raw() != child.issuer().as_raw() {
            continue;
        }
        *budget = budget.checked_sub(1).ok_or(ChainError::SearchLimit)?;
        if child.verify_signature(Some(issuer.public_key())).is_err() {
            continue;
        }
        if let Err(e) = check_issuer(issuer, depth, at) {
            first_error.get_or_insert(e);
            continue;
        }
        path.push(i);
        if *is_anchor {
            return Ok(true);
        }
        match build(issuer, candidates, at, path, depth + 1, budget) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(ChainError::SearchLimit) => return Err(ChainError::SearchLimit),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        path.pop();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(false),
    }
}

fn check_leaf(
    cert: &X509Certificate<'_>,
    profile: LeafProfile,
    at: ASN1Time,
) -> Result<(), ChainError> {
    let subject = cert.subject().to_string();
    if !cert.validity().is_valid_at(at) {
        return Err(ChainError::Expired(subject));
    }
    if cert.is_ca() {
        return Err(ChainError::LeafIsCa(subject));
    }
    let allowed: &[&str] = match profile {
        LeafProfile::EndorsementKey => &[
            OID_BASIC_CONSTRAINTS,
            OID_KEY_USAGE,
            OID_EXTENDED_KEY_USAGE,
            OID_SUBJECT_ALT_NAME,
            OID_SUBJECT_DIRECTORY_ATTRIBUTES,
            OID_CERTIFICATE_POLICIES,
        ],
        LeafProfile::DevId => &[
            OID_BASIC_CONSTRAINTS,
            OID_KEY_USAGE,
            OID_EXTENDED_KEY_USAGE,
            OID_SUBJECT_ALT_NAME,
        ],
    };
    check_critical(cert, allowed)?;
    match profile {
        LeafProfile::EndorsementKey => {
            if let Ok(Some(eku)) = cert.extended_key_usage() {
                let ok = eku.value.any
                    || eku.value.other.iter().any(|oid| {
                        let id = oid.to_id_string();
                        id == OID_TCG_KP_EK_CERTIFICATE || id == OID_ANY_EXTENDED_KEY_USAGE
                    });
                if !ok {
                    return Err(ChainError::KeyPurpose(subject, "EK certification"));
                }
            }
        }
        LeafProfile::DevId => {
            if let Ok(Some(ku)) = cert.key_usage()
                && !ku.value.digital_signature()
            {
                return Err(ChainError::KeyPurpose(subject, "digital signatures"));
            }
        }
    }
    Ok(())
}

fn check_issuer(cert: &X509Certificate<'_>, depth: usize, at: ASN1Time) -> Result<(), ChainError> {
    let subject = cert.subject().to_string();
    if !cert.validity().is_valid_at(at) {
        return Err(ChainError::Expired(subject));
    }
    let bc = cert
        .basic_constraints()
        .map_err(|_| ChainError::NotACa(subject.clone()))?;
    match bc {
        Some(bc) if bc.value.ca => {
            // pathLen counts the intermediates below this CA (not the leaf).
            if let Some(max) = bc.value.path_len_constraint
                && depth > max as usize
            {
                return Err(ChainError::NotACa(subject));
            }
        }
        _ => return Err(ChainError::NotACa(subject)),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => return Err(ChainError::NotACa(subject)),
        Err(_) => return Err(ChainError::NotACa(subject)),
        _ => {}
    }
    check_critical(cert, &[OID_BASIC_CONSTRAINTS, OID_KEY_USAGE])
}

fn check_critical(cert: &X509Certificate<'_>, allowed: &[&str]) -> Result<(), ChainError> {
    for ext in cert.extensions() {
        if !ext.critical {
            continue;
        }
        let oid = ext.oid.to_id_string();
        if !allowed.contains(&oid.as_str()) {
            return Err(ChainError::CriticalExtension {
                subject: cert.subject().to_string(),
                oid,
            });
        }
    }
    Ok(())
}

/// The first common name of a certificate's subject, or of its issuer.
pub fn common_name(der: &[u8], issuer: bool) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let name = if issuer {
        cert.issuer()
    } else {
        cert.subject()
    };
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// A certificate's subject and issuer as RFC 4514-style strings.
pub fn subject_and_issuer(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((cert.subject().to_string(), cert.issuer().to_string()))
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&Ca>, path_len: Option<u8>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = match parent {
            Some(parent) => p.signed_by(&key, &parent.issuer).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        let der = cert.der().to_vec();
        Ca {
            issuer: Issuer::new(p, key),
            der,
        }
    }

    fn leaf(name: &str, parent: &Ca, ca: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.signed_by(&key, &parent.issuer).unwrap().der().to_vec()
    }

    #[test]
    fn builds_through_presented_and_pool_intermediates() {
        let root = ca("root", None, None);
        let mid = ca("mid", Some(&root), Some(0));
        let l = leaf("device-1", &mid, false);
        let pool = CaPool::new(vec![root.der.clone()]).unwrap();
        let chain = verify_chain(
            &l,
            std::slice::from_ref(&mid.der),
            &pool,
            LeafProfile::DevId,
        )
        .unwrap();
        assert_eq!(chain.cas, vec![mid.der.clone(), root.der.clone()]);
        assert!(matches!(
            verify_chain(&l, &[], &pool, LeafProfile::DevId),
            Err(ChainError::Untrusted { .. })
        ));
        let pool2 = CaPool::new(vec![root.der.clone()])
            .unwrap()
            .with_intermediates(vec![mid.der.clone()])
            .unwrap();
        verify_chain(&l, &[], &pool2, LeafProfile::DevId).unwrap();
        // An intermediate may itself be the anchor.
        let pool3 = CaPool::new(vec![mid.der.clone()]).unwrap();
        let chain = verify_chain(&l, &[], &pool3, LeafProfile::DevId).unwrap();
        assert_eq!(chain.cas, vec![mid.der.clone()]);
    }

    #[test]
    fn refuses_other_roots_ca_leaves_and_path_length_violations() {
        let root = ca("root", None, None);
        let other = ca("root", None, None);
        let l = leaf("device-1", &root, false);
        let pool = CaPool::new(vec![other.der.clone()]).unwrap();
        let err = verify_chain(&l, &[], &pool, LeafProfile::DevId).unwrap_err();
        assert!(
            err.to_string().contains("does not chain to a trusted CA"),
            "{err}"
        );

        let pool = CaPool::new(vec![root.der.clone()]).unwrap();
        let ca_leaf = leaf("sub-ca", &root, true);
        assert!(matches!(
            verify_chain(&ca_leaf, &[], &pool, LeafProfile::DevId),
            Err(ChainError::LeafIsCa(_))
        ));

        let mid = ca("mid", Some(&root), Some(0));
        let mid2 = ca("mid2", Some(&mid), None);
        let l2 = leaf("device-2", &mid2, false);
        assert!(matches!(
            verify_chain(
                &l2,
                &[mid.der.clone(), mid2.der.clone()],
                &pool,
                LeafProfile::DevId
            ),
            Err(ChainError::NotACa(_))
        ));

        // A non-CA "issuer" cannot issue.
        let fake_issuer_leaf = {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "not-a-ca");
            let der = p.signed_by(&key, &root.issuer).unwrap().der().to_vec();
            (der, Issuer::new(p, key))
        };
        let victim = {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "victim");
            p.signed_by(&key, &fake_issuer_leaf.1)
                .unwrap()
                .der()
                .to_vec()
        };
        assert!(matches!(
            verify_chain(&victim, &[fake_issuer_leaf.0], &pool, LeafProfile::DevId),
            Err(ChainError::NotACa(_))
        ));
    }

    #[test]
    fn expired_certificates_are_refused() {
        let root = ca("root", None, None);
        let l = leaf("device-1", &root, false);
        let pool = CaPool::new(vec![root.der.clone()]).unwrap();
        // rcgen's default validity starts in 1975.
        let before = ASN1Time::from_timestamp(0).unwrap();
        assert!(matches!(
            verify_chain_at(&l, &[], &pool, LeafProfile::DevId, before),
            Err(ChainError::Expired(_))
        ));
    }

    /// `k` CA certificates with one subject and one key, each signing the others,
    /// and a leaf under that subject; none reaches a trusted CA.
    fn self_signing_copies(k: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let key = KeyPair::generate().unwrap();
        let mut copies = Vec::new();
        let mut first = None;
        for i in 0..k {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, "loop");
            p.serial_number = Some((i as u64 + 1).into());
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            copies.push(p.self_signed(&key).unwrap().der().to_vec());
            first.get_or_insert(p);
        }
        let loop_ca = Ca {
            der: copies[0].clone(),
            issuer: Issuer::new(first.unwrap(), key),
        };
        (leaf("device-1", &loop_ca, false), copies)
    }

    #[test]
    fn presented_certificates_that_sign_one_another_end_the_search() {
        // Before the budget, eight copies took the search through every ordering
        // (seconds; a dozen took hours) and ended in Untrusted.
        let root = ca("root", None, None);
        let pool = CaPool::new(vec![root.der.clone()]).unwrap();
        let (l, copies) = self_signing_copies(MAX_PRESENTED);
        let err = verify_chain(&l, &copies, &pool, LeafProfile::DevId).unwrap_err();
        assert!(matches!(err, ChainError::SearchLimit), "{err}");
        assert!(
            err.to_string().contains("too many candidate paths"),
            "{err}"
        );
        // A real chain presented with a couple of those copies still validates.
        let mid = ca("mid", Some(&root), None);
        let good = leaf("device-2", &mid, false);
        let presented = vec![copies[0].clone(), mid.der.clone(), copies[1].clone()];
        let chain = verify_chain(&good, &presented, &pool, LeafProfile::DevId).unwrap();
        assert_eq!(chain.cas, vec![mid.der.clone(), root.der.clone()]);
    }

    #[test]
    fn too_many_presented_certificates_are_refused_before_any_check() {
        let root = ca("root", None, None);
        let pool = CaPool::new(vec![root.der.clone()]).unwrap();
        let (l, copies) = self_signing_copies(MAX_PRESENTED + 1);
        let err = verify_chain(&l, &copies, &pool, LeafProfile::DevId).unwrap_err();
        assert!(
            matches!(err, ChainError::TooManyPresented(n) if n == MAX_PRESENTED + 1),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let pool = CaPool::default();
        for bad in [&b""[..], b"\x30", b"\x30\x03\x02\x01", b"not der"] {
            assert!(matches!(
                verify_chain(bad, &[], &pool, LeafProfile::EndorsementKey),
                Err(ChainError::Malformed { .. })
            ));
        }
        assert!(CaPool::new(vec![b"junk".to_vec()]).is_err());
    }
}
