//! X509-SVID and signing (CA) certificate profiles: built with rcgen through the
//! [`Key`] seam, and validated rule by rule against the X509-SVID standard
//! (<https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::bundle::Bundle;
use crate::der;
use crate::key::{Key, KeyError, RcgenKey, key_type_of_spki};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// PEM lives in [`crate::pem`]; these names are kept for the callers that used them here.
pub use crate::pem::{certificates as pem_certs, encode as to_pem};

/// How far NotBefore is backdated to absorb clock skew.
pub const BACKDATE: Duration = Duration::from_secs(10);

/// Why a certificate could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The signing key failed.
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    /// The subject's public key is of a type Tessera does not certify.
    #[error("public key is not a supported EC P-256, EC P-384 or RSA key")]
    UnsupportedPublicKey,
    /// The issuer's certificate cannot be used.
    #[error("issuer certificate: {0}")]
    Issuer(String),
    /// The issuer expires before the certificate would start.
    #[error("the issuing CA expires before the certificate would start")]
    IssuerExpired,
    /// The certificate cannot be encoded.
    #[error("certificate encoding: {0}")]
    Encoding(String),
}

/// Why a certificate or chain is not a valid SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The certificate is not DER X.509.
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    /// The certificate has no URI SAN.
    #[error("certificate has no URI SAN")]
    NoUriSan,
    /// The certificate has more than one URI SAN.
    #[error("certificate has more than one URI SAN")]
    MultipleUriSans,
    /// The URI SAN is not a SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
    /// A leaf's SPIFFE ID has no path.
    #[error("leaf SPIFFE ID {0} has no path")]
    LeafIdWithoutPath(SpiffeId),
    /// A signing certificate's SPIFFE ID has a path.
    #[error("signing certificate SPIFFE ID {0} has a path")]
    CaIdWithPath(SpiffeId),
    /// A leaf says it is a CA.
    #[error("leaf certificate has cA=true")]
    LeafIsCa,
    /// A signing certificate does not say it is a CA.
    #[error("signing certificate does not have cA=true")]
    CaNotCa,
    /// There is no key usage extension.
    #[error("key usage extension is missing")]
    NoKeyUsage,
    /// The key usage extension is not critical.
    #[error("key usage extension is not critical")]
    KeyUsageNotCritical,
    /// A leaf's key usage lacks digitalSignature.
    #[error("leaf key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// A leaf's key usage has keyCertSign.
    #[error("leaf key usage has keyCertSign")]
    LeafKeyCertSign,
    /// A leaf's key usage has cRLSign.
    #[error("leaf key usage has cRLSign")]
    LeafCrlSign,
    /// A signing certificate's key usage lacks keyCertSign.
    #[error("signing certificate key usage lacks keyCertSign")]
    CaNoKeyCertSign,
    /// The extended key usage lacks the purpose named.
    #[error("extended key usage lacks {0}")]
    EkuMissing(&'static str),
    /// The subject is empty but the SAN extension is not critical.
    #[error("subject is empty but the SAN extension is not critical")]
    SanNotCritical,
    /// A critical extension is not understood.
    #[error("critical extension {0} is not understood")]
    UnknownCriticalExtension(String),
    /// An extension cannot be parsed.
    #[error("extension {0} cannot be parsed")]
    BadExtension(String),
    /// The chain is empty.
    #[error("no certificate in the chain")]
    EmptyChain,
    /// The SPIFFE ID is not in the trust domain expected.
    #[error("SPIFFE ID {id} is not in trust domain {td}")]
    WrongTrustDomain {
        /// The certificate's ID.
        id: SpiffeId,
        /// The trust domain expected.
        td: TrustDomain,
    },
    /// The chain does not verify against the bundle.
    #[error("chain does not verify against the trust bundle: {0}")]
    Chain(String),
}

/// A random positive serial number of 128 bits (SPIRE's choice).
pub fn random_serial() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // SystemRandom only fails when the OS has no entropy source at all.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 1;
    }
    b.to_vec()
}

/// The subject key identifier Tessera uses: SHA-1 of the subjectPublicKey bits (RFC 5280
/// method 1).
pub fn key_identifier(spki: &[u8]) -> Result<Vec<u8>, BuildError> {
    let bits = der::spki_public_key_bits(spki).map_err(|_| BuildError::UnsupportedPublicKey)?;
    Ok(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
            .as_ref()
            .to_vec(),
    )
}

struct SpkiKey {
    bits: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl SpkiKey {
    fn new(spki: &[u8]) -> Result<Self, BuildError> {
        let kt = key_type_of_spki(spki).ok_or(BuildError::UnsupportedPublicKey)?;
        let bits = der::spki_public_key_bits(spki)
            .map_err(|_| BuildError::UnsupportedPublicKey)?
            .to_vec();
        Ok(Self {
            bits,
            alg: crate::key::rcgen_algorithm(kt),
        })
    }
}

impl rcgen::PublicKeyData for SpkiKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A CA that can sign: its certificate and the key that matches it.
#[derive(Debug)]
pub struct Issuer {
    cert_der: Vec<u8>,
    key: Arc<dyn Key>,
    rcgen: rcgen::Issuer<'static, RcgenKey>,
    not_after: SystemTime,
}

/// Runs an rcgen signing operation, recovering the key error rcgen hides.
fn with_key_error<T>(r: Result<T, rcgen::Error>) -> Result<T, BuildError> {
    r.map_err(|e| match RcgenKey::take_error() {
        Some(key_err) => BuildError::Key(key_err),
        None => BuildError::Encoding(e.to_string()),
    })
}

impl Issuer {
    /// Pairs a CA certificate with its key.
    pub fn new(cert_der: Vec<u8>, key: Arc<dyn Key>) -> Result<Self, BuildError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| BuildError::Issuer(e.to_string()))?;
        if cert.public_key().raw != key.public_key_der() {
            return Err(BuildError::Issuer(
                "the key does not match the certificate's public key".into(),
            ));
        }
        let not_after =
            UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        let signer = RcgenKey::new(key.clone()).map_err(|_| BuildError::UnsupportedPublicKey)?;
        let rcgen =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), signer)
                .map_err(|e| BuildError::Issuer(e.to_string()))?;
        Ok(Self {
            cert_der,
            key,
            rcgen,
            not_after,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA key.
    pub fn key(&self) -> &Arc<dyn Key> {
        &self.key
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn sign(
        &self,
        params: &CertificateParams,
        subject_key: &impl rcgen::PublicKeyData,
    ) -> Result<Vec<u8>, BuildError> {
        let _ = RcgenKey::take_error();
        with_key_error(params.signed_by(subject_key, &self.rcgen)).map(|c| c.der().to_vec())
    }
}

fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    spki: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, BuildError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names =
        vec![SanType::URI(td.id_string().try_into().map_err(
            |e: rcgen::Error| BuildError::Encoding(e.to_string()),
        )?)];
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    p.not_before = to_offset(not_before.checked_sub(BACKDATE).unwrap_or(not_before));
    p.not_after = to_offset(not_after);
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(spki)?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Builds a self-signed root CA certificate for `td` over `key`.
pub fn self_signed_ca(
    td: &TrustDomain,
    common_name: &str,
    key: &Arc<dyn Key>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Vec<u8>, BuildError> {
    let mut params = ca_params(td, common_name, key.public_key_der(), not_before, not_after)?;
    // A root's AKI would only repeat its SKI.
    params.use_authority_key_identifier_extension = false;
    let signer = RcgenKey::new(key.clone()).map_err(|_| BuildError::UnsupportedPublicKey)?;
    let _ = RcgenKey::take_error();
    with_key_error(params.self_signed(&signer)).map(|c| c.der().to_vec())
}

/// Builds an intermediate CA certificate for `td` over the public key `spki`, signed by
/// `issuer`. NotAfter is capped at the issuer's.
pub fn intermediate_ca(
    td: &TrustDomain,
    common_name: &str,
    spki: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: &Issuer,
) -> Result<Vec<u8>, BuildError> {
    let not_after = not_after.min(issuer.not_after);
    if not_after <= not_before {
        return Err(BuildError::IssuerExpired);
    }
    let params = ca_params(td, common_name, spki, not_before, not_after)?;
    issuer.sign(&params, &SpkiKey::new(spki)?)
}

/// What an X509-SVID says; the public key comes from the CSR, everything else from the
/// registration entry.
#[derive(Debug, Clone)]
pub struct SvidTemplate<'a> {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: &'a SpiffeId,
    /// The subject's SubjectPublicKeyInfo (DER), from the CSR.
    pub public_key_der: &'a [u8],
    /// DNS SANs beside the SPIFFE ID.
    pub dns_names: &'a [String],
    /// How long the SVID is valid (cut to the issuer's expiry).
    pub ttl: Duration,
    /// The issuing time.
    pub now: SystemTime,
}

/// Builds and signs an X509-SVID leaf. NotBefore is backdated by [`BACKDATE`]; NotAfter
/// is `now + ttl`, never beyond the issuer's NotAfter.
pub fn sign_x509_svid(t: &SvidTemplate<'_>, issuer: &Issuer) -> Result<Vec<u8>, BuildError> {
    let not_after = (t.now + t.ttl).min(issuer.not_after);
    if not_after <= t.now {
        return Err(BuildError::IssuerExpired);
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    if let Some(first) = t.dns_names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans =
        vec![SanType::URI(t.spiffe_id.to_string().try_into().map_err(
            |e: rcgen::Error| BuildError::Encoding(e.to_string()),
        )?)];
    for name in t.dns_names {
        sans.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| BuildError::Encoding(e.to_string()))?,
        ));
    }
    p.subject_alt_names = sans;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    p.not_before = to_offset(t.now.checked_sub(BACKDATE).unwrap_or(t.now));
    p.not_after = to_offset(not_after);
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(t.public_key_der)?);
    p.use_authority_key_identifier_extension = true;
    issuer.sign(&p, &SpkiKey::new(t.public_key_der)?)
}

/// Builds a PKCS#10 certificate signing request for `key`. Tessera's server takes only
/// the public key (and the proof of possession) from it.
pub fn build_csr(key: &Arc<dyn Key>) -> Result<Vec<u8>, BuildError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    let signer = RcgenKey::new(key.clone()).map_err(|_| BuildError::UnsupportedPublicKey)?;
    let _ = RcgenKey::take_error();
    with_key_error(p.serialize_request(&signer)).map(|c| c.der().to_vec())
}

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The CSR is not DER PKCS#10.
    #[error("CSR is not valid DER PKCS#10: {0}")]
    Parse(String),
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify (no proof of possession of the key)")]
    BadSignature,
    /// The CSR's key is of a type Tessera does not certify.
    #[error("CSR public key is not EC P-256, EC P-384 or RSA 2048-4096")]
    UnsupportedKey,
    /// The CSR names another SPIFFE ID than the entry's.
    #[error("CSR names SPIFFE ID {named} but the entry is for {expected}")]
    WrongSpiffeId {
        /// The ID in the CSR.
        named: String,
        /// The entry's ID.
        expected: String,
    },
}

/// Checks a CSR's self-signature and returns its public key (SubjectPublicKeyInfo DER).
/// When `expected` is given, a URI SAN in the CSR naming any other SPIFFE ID is refused.
pub fn csr_public_key(csr_der: &[u8], expected: Option<&SpiffeId>) -> Result<Vec<u8>, CsrError> {
    use x509_parser::prelude::FromDer;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
            .map_err(|e| CsrError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Parse("trailing bytes after the CSR".into()));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let spki = csr.certification_request_info.subject_pki.raw.to_vec();
    if key_type_of_spki(&spki).is_none() {
        return Err(CsrError::UnsupportedKey);
    }
    if let Some(expected) = expected
        && let Some(exts) = csr.requested_extensions()
    {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        let same = SpiffeId::new(uri)
                            .map(|id| &id == expected)
                            .unwrap_or(false);
                        if !same {
                            return Err(CsrError::WrongSpiffeId {
                                named: (*uri).to_owned(),
                                expected: expected.to_string(),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(spki)
}

/// A certificate's SPIFFE ID and validity, read without validating the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The URI SAN, if it is a SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// NotBefore, Unix seconds.
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    pub not_after: i64,
    /// The serial number, lowercase hex.
    pub serial_hex: String,
    /// The SubjectPublicKeyInfo (DER).
    pub public_key_der: Vec<u8>,
    /// The subject DN, as text.
    pub subject: String,
    /// The issuer DN, as text.
    pub issuer: String,
}

/// Reads the facts Tessera needs from a certificate.
pub fn cert_info(der_bytes: &[u8]) -> Result<CertInfo, SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der_bytes)
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let spiffe_id = uri_sans(&cert)?
        .into_iter()
        .next()
        .and_then(|u| SpiffeId::new(u).ok());
    Ok(CertInfo {
        spiffe_id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial_hex: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        public_key_der: cert.public_key().raw.to_vec(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

fn uri_sans<'a>(cert: &'a X509Certificate<'a>) -> Result<Vec<&'a str>, SvidError> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name {
                    out.push(*u);
                }
            }
        }
    }
    Ok(out)
}

/// Extension OIDs whose criticality Tessera understands.
const KNOWN_EXTENSIONS: &[&str] = &[
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.15", // keyUsage
    "2.5.29.17", // subjectAltName
    "2.5.29.19", // basicConstraints
    "2.5.29.30", // nameConstraints
    "2.5.29.35", // authorityKeyIdentifier
    "2.5.29.37", // extKeyUsage
];

struct Profile {
    spiffe_id: SpiffeId,
    is_ca: bool,
}

/// The checks both profiles share: one URI SAN holding a SPIFFE ID, understood critical
/// extensions, parseable extensions, a critical key usage, SAN critical when the
/// subject is empty.
fn common_checks(cert: &X509Certificate<'_>) -> Result<Profile, SvidError> {
    let mut is_ca = false;
    let mut key_usage_seen = false;
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if let ParsedExtension::ParseError { .. } = ext.parsed_extension() {
            return Err(SvidError::BadExtension(oid));
        }
        if ext.critical && !KNOWN_EXTENSIONS.contains(&oid.as_str()) {
            return Err(SvidError::UnknownCriticalExtension(oid));
        }
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::KeyUsage(_) => {
                key_usage_seen = true;
                if !ext.critical {
                    return Err(SvidError::KeyUsageNotCritical);
                }
            }
            ParsedExtension::SubjectAlternativeName(_)
                if cert.subject().iter().next().is_none() && !ext.critical =>
            {
                return Err(SvidError::SanNotCritical);
            }
            _ => {}
        }
    }
    if !key_usage_seen {
        return Err(SvidError::NoKeyUsage);
    }
    let uris = uri_sans(cert)?;
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        _ => return Err(SvidError::MultipleUriSans),
    };
    let spiffe_id = SpiffeId::new(uri).map_err(SvidError::BadSpiffeId)?;
    Ok(Profile { spiffe_id, is_ca })
}

fn parse(der_bytes: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der_bytes)
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Parse(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// Validates a certificate against the X509-SVID leaf profile and returns its SPIFFE ID.
pub fn validate_leaf(der_bytes: &[u8]) -> Result<SpiffeId, SvidError> {
    let cert = parse(der_bytes)?;
    let profile = common_checks(&cert)?;
    if profile.is_ca {
        return Err(SvidError::LeafIsCa);
    }
    if profile.spiffe_id.is_trust_domain_id() {
        return Err(SvidError::LeafIdWithoutPath(profile.spiffe_id));
    }
    let ku = cert
        .key_usage()
        .ok()
        .flatten()
        .ok_or(SvidError::NoKeyUsage)?
        .value;
    if !ku.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.key_cert_sign() {
        return Err(SvidError::LeafKeyCertSign);
    }
    if ku.crl_sign() {
        return Err(SvidError::LeafCrlSign);
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.server_auth {
            return Err(SvidError::EkuMissing("serverAuth"));
        }
        if !eku.value.client_auth {
            return Err(SvidError::EkuMissing("clientAuth"));
        }
    }
    Ok(profile.spiffe_id)
}

/// Validates a certificate against the X509-SVID signing certificate profile and returns
/// the trust domain it names.
pub fn validate_signing_cert(der_bytes: &[u8]) -> Result<TrustDomain, SvidError> {
    let cert = parse(der_bytes)?;
    let profile = common_checks(&cert)?;
    if !profile.is_ca {
        return Err(SvidError::CaNotCa);
    }
    if !profile.spiffe_id.is_trust_domain_id() {
        return Err(SvidError::CaIdWithPath(profile.spiffe_id));
    }
    let ku = cert
        .key_usage()
        .ok()
        .flatten()
        .ok_or(SvidError::NoKeyUsage)?
        .value;
    if !ku.key_cert_sign() {
        return Err(SvidError::CaNoKeyCertSign);
    }
    Ok(profile.spiffe_id.trust_domain().clone())
}

static SIG_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Verifies an X509-SVID chain (leaf first) against a trust bundle at time `now` and
/// returns the leaf's SPIFFE ID. The leaf must pass [`validate_leaf`] and belong to the
/// bundle's trust domain.
pub fn verify_svid_chain(
    chain: &[Vec<u8>],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<SpiffeId, SvidError> {
    let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
    let id = validate_leaf(leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(SvidError::WrongTrustDomain {
            id,
            td: bundle.trust_domain().clone(),
        });
    }
    verify_path(
        chain,
        bundle.x509_authorities(),
        now,
        webpki::KeyUsage::client_auth(),
    )?;
    Ok(id)
}

/// Verifies that `chain` (leaf first) leads to one of `roots` (DER) at `now` for the
/// given usage. No name checks: SPIFFE names are checked by the caller.
pub fn verify_path(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
    usage: webpki::KeyUsage,
) -> Result<(), SvidError> {
    let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| SvidError::Chain(format!("{e:?}")))?;
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(SvidError::Chain(
            "the trust bundle holds no X.509 authority".into(),
        ));
    }
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    ee.verify_for_usage(SIG_ALGS, &anchors, &intermediates, now, usage, None, None)
        .map(|_| ())
        .map_err(|e| SvidError::Chain(format!("{e:?}")))
}

/// Splits concatenated DER certificates (the Workload API's form) into one per item.
pub fn split_concatenated(mut data: &[u8]) -> Result<Vec<Vec<u8>>, der::DerError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (cert, rest) = der::split_sequence(data)?;
        out.push(cert.to_vec());
        data = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyType, SoftwareKey};

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn ca(kt: KeyType) -> Issuer {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(kt).unwrap());
        let now = SystemTime::now();
        let der =
            self_signed_ca(&td(), "test CA", &key, now, now + Duration::from_secs(3600)).unwrap();
        Issuer::new(der, key).unwrap()
    }

    fn leaf(issuer: &Issuer, ttl: u64) -> (Vec<u8>, SoftwareKey) {
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        let der = sign_x509_svid(
            &SvidTemplate {
                spiffe_id: &id,
                public_key_der: key.public_key_der(),
                dns_names: &["web.example.org".to_string()],
                ttl: Duration::from_secs(ttl),
                now: SystemTime::now(),
            },
            issuer,
        )
        .unwrap();
        (der, key)
    }

    #[test]
    fn built_profiles_validate() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let issuer = ca(kt);
            assert_eq!(validate_signing_cert(issuer.cert_der()).unwrap(), td());
            let (der, _) = leaf(&issuer, 600);
            assert_eq!(
                validate_leaf(&der).unwrap().to_string(),
                "spiffe://example.org/web"
            );
            let bundle = Bundle::with_x509(td(), vec![issuer.cert_der().to_vec()]);
            let id =
                verify_svid_chain(std::slice::from_ref(&der), &bundle, SystemTime::now()).unwrap();
            assert_eq!(id.path(), "/web");
            // A signing certificate is not a leaf, and the reverse.
            assert_eq!(validate_leaf(issuer.cert_der()), Err(SvidError::LeafIsCa));
            assert_eq!(validate_signing_cert(&der), Err(SvidError::CaNotCa));
        }
    }

    #[test]
    fn leaf_facts() {
        let issuer = ca(KeyType::EcP256);
        let before = unix_seconds(SystemTime::now());
        let (der, key) = leaf(&issuer, 600);
        let info = cert_info(&der).unwrap();
        assert_eq!(info.public_key_der, key.public_key_der());
        assert!(info.not_before <= before - 9 && info.not_before >= before - 12);
        assert!((info.not_after - (before + 600)).abs() <= 2);
        // 128-bit positive serial: 16 bytes, top bit clear.
        assert_eq!(info.serial_hex.len(), 32);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.tbs_certificate.serial.bits() > 120);
        assert!(
            cert.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );
        assert!(
            cert.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn not_after_capped_by_issuer() {
        let issuer = ca(KeyType::EcP256);
        let (der, _) = leaf(&issuer, 100_000);
        let leaf_na = cert_info(&der).unwrap().not_after;
        let ca_na = cert_info(issuer.cert_der()).unwrap().not_after;
        assert_eq!(leaf_na, ca_na);
    }

    #[test]
    fn chain_rejects_other_ca_and_expired() {
        let issuer = ca(KeyType::EcP256);
        let other = ca(KeyType::EcP256);
        let (der, _) = leaf(&issuer, 60);
        let bundle = Bundle::with_x509(td(), vec![other.cert_der().to_vec()]);
        assert!(matches!(
            verify_svid_chain(std::slice::from_ref(&der), &bundle, SystemTime::now()),
            Err(SvidError::Chain(_))
        ));
        let bundle = Bundle::with_x509(td(), vec![issuer.cert_der().to_vec()]);
        assert!(matches!(
            verify_svid_chain(
                std::slice::from_ref(&der),
                &bundle,
                SystemTime::now() + Duration::from_secs(120)
            ),
            Err(SvidError::Chain(_))
        ));
        let foreign = Bundle::with_x509(
            TrustDomain::new("other.org").unwrap(),
            vec![issuer.cert_der().to_vec()],
        );
        assert!(matches!(
            verify_svid_chain(&[der], &foreign, SystemTime::now()),
            Err(SvidError::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn intermediate_chain_verifies() {
        let root = ca(KeyType::EcP384);
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let now = SystemTime::now();
        let inter_der = intermediate_ca(
            &td(),
            "inter",
            key.public_key_der(),
            now,
            now + Duration::from_secs(600),
            &root,
        )
        .unwrap();
        validate_signing_cert(&inter_der).unwrap();
        let inter = Issuer::new(inter_der.clone(), key).unwrap();
        let (der, _) = leaf(&inter, 60);
        let bundle = Bundle::with_x509(td(), vec![root.cert_der().to_vec()]);
        verify_svid_chain(&[der.clone(), inter_der], &bundle, SystemTime::now()).unwrap();
        assert!(verify_svid_chain(&[der], &bundle, SystemTime::now()).is_err());
    }

    /// Builds certificates that break one rule each, with rcgen directly.
    fn custom(f: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI("spiffe://example.org/w".try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.is_ca = IsCa::ExplicitNoCa;
        f(&mut p);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn leaf_rules_each_reject() {
        assert!(validate_leaf(&custom(|_| {})).is_ok());
        assert_eq!(
            validate_leaf(&custom(|p| p.subject_alt_names.clear())),
            Err(SvidError::NoUriSan)
        );
        assert_eq!(
            validate_leaf(&custom(|p| p
                .subject_alt_names
                .push(SanType::URI("spiffe://example.org/x".try_into().unwrap())))),
            Err(SvidError::MultipleUriSans)
        );
        assert!(matches!(
            validate_leaf(&custom(|p| p.subject_alt_names =
                vec![SanType::URI("https://example.org/x".try_into().unwrap())])),
            Err(SvidError::BadSpiffeId(_))
        ));
        assert!(matches!(
            validate_leaf(&custom(|p| p.subject_alt_names =
                vec![SanType::URI("spiffe://example.org".try_into().unwrap())])),
            Err(SvidError::LeafIdWithoutPath(_))
        ));
        assert_eq!(
            validate_leaf(&custom(
                |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            )),
            Err(SvidError::LeafIsCa)
        );
        assert_eq!(
            validate_leaf(&custom(|p| p.key_usages.clear())),
            Err(SvidError::NoKeyUsage)
        );
        assert_eq!(
            validate_leaf(&custom(
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
            )),
            Err(SvidError::NoDigitalSignature)
        );
        assert_eq!(
            validate_leaf(&custom(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign))),
            Err(SvidError::LeafKeyCertSign)
        );
        assert_eq!(
            validate_leaf(&custom(|p| p.key_usages.push(KeyUsagePurpose::CrlSign))),
            Err(SvidError::LeafCrlSign)
        );
        assert_eq!(
            validate_leaf(&custom(
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
            )),
            Err(SvidError::EkuMissing("serverAuth"))
        );
        assert_eq!(
            validate_leaf(&custom(
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            )),
            Err(SvidError::EkuMissing("clientAuth"))
        );
        assert!(
            validate_leaf(&custom(|p| p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth
            ]))
            .is_ok()
        );
        let mut unknown = rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        );
        unknown.set_criticality(true);
        assert_eq!(
            validate_leaf(&custom(|p| p.custom_extensions.push(unknown))),
            Err(SvidError::UnknownCriticalExtension(
                "1.3.6.1.4.1.99999.1".into()
            ))
        );
        let benign = rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        );
        assert!(validate_leaf(&custom(|p| p.custom_extensions.push(benign))).is_ok());
        assert!(matches!(validate_leaf(b"junk"), Err(SvidError::Parse(_))));
    }

    #[test]
    fn san_must_be_critical_when_subject_empty() {
        // rcgen marks the SAN critical exactly when the subject is empty; a certificate
        // with an empty subject and a non-critical SAN has to be built by hand.
        let ok = custom(|_| {});
        let (_, cert) = x509_parser::parse_x509_certificate(&ok).unwrap();
        let san = cert
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap()
            .unwrap();
        assert!(san.critical);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // SAN written as a custom, non-critical extension.
        let uri = b"spiffe://example.org/w";
        let mut gn = vec![0x86, uri.len() as u8];
        gn.extend_from_slice(uri);
        let mut seq = vec![0x30, gn.len() as u8];
        seq.extend(gn);
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                seq,
            ));
        let der = p.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(validate_leaf(&der), Err(SvidError::SanNotCritical));
        // The same with a subject is fine.
        p.distinguished_name.push(DnType::CommonName, "w");
        let der = p.self_signed(&key).unwrap().der().to_vec();
        assert!(validate_leaf(&der).is_ok());
    }

    #[test]
    fn signing_cert_rules_each_reject() {
        let ca_ok = |f: fn(&mut CertificateParams)| {
            custom(|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                p.subject_alt_names =
                    vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
                f(p);
            })
        };
        assert!(validate_signing_cert(&ca_ok(|_| {})).is_ok());
        assert_eq!(
            validate_signing_cert(&ca_ok(|p| p.is_ca = IsCa::ExplicitNoCa)),
            Err(SvidError::CaNotCa)
        );
        assert_eq!(
            validate_signing_cert(&ca_ok(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign])),
            Err(SvidError::CaNoKeyCertSign)
        );
        assert!(matches!(
            validate_signing_cert(&ca_ok(|p| p.subject_alt_names =
                vec![SanType::URI("spiffe://example.org/ca".try_into().unwrap())])),
            Err(SvidError::CaIdWithPath(_))
        ));
    }

    #[test]
    fn csr_rules() {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let csr = build_csr(&key).unwrap();
        let id = SpiffeId::new("spiffe://example.org/web").unwrap();
        assert_eq!(
            csr_public_key(&csr, Some(&id)).unwrap(),
            key.public_key_der()
        );
        // A CSR that names another SPIFFE ID is refused when the entry is known.
        let kp = rcgen::KeyPair::generate().unwrap();
        let p = CertificateParams::new(vec![]).unwrap();
        let mut p2 = p.clone();
        p2.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/admin".try_into().unwrap(),
        )];
        let csr2 = p2.serialize_request(&kp).unwrap().der().to_vec();
        assert!(matches!(
            csr_public_key(&csr2, Some(&id)),
            Err(CsrError::WrongSpiffeId { .. })
        ));
        let mut p3 = p;
        p3.subject_alt_names = vec![SanType::URI("spiffe://example.org/web".try_into().unwrap())];
        let csr3 = p3.serialize_request(&kp).unwrap().der().to_vec();
        assert!(csr_public_key(&csr3, Some(&id)).is_ok());
        // Tampering breaks the proof of possession.
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        assert!(csr_public_key(&bad, None).is_err());
        assert!(matches!(
            csr_public_key(b"nope", None),
            Err(CsrError::Parse(_))
        ));
    }

    /// A key whose store has gone away.
    #[derive(Debug)]
    struct GoneKey(SoftwareKey);

    impl Key for GoneKey {
        fn key_type(&self) -> KeyType {
            self.0.key_type()
        }
        fn public_key_der(&self) -> &[u8] {
            self.0.public_key_der()
        }
        fn sign(&self, _: crate::key::SignatureScheme, _: &[u8]) -> Result<Vec<u8>, KeyError> {
            Err(KeyError::Unavailable("token removed".into()))
        }
    }

    #[test]
    fn key_store_faults_surface_as_key_errors() {
        let gone: Arc<dyn Key> = Arc::new(GoneKey(SoftwareKey::generate(KeyType::EcP256).unwrap()));
        // A CA whose key fails: the cause is the key store's, not an encoding error.
        let now = SystemTime::now();
        let err =
            self_signed_ca(&td(), "x", &gone, now, now + Duration::from_secs(60)).unwrap_err();
        assert!(
            matches!(err, BuildError::Key(KeyError::Unavailable(_))),
            "{err}"
        );
        let err = build_csr(&gone).unwrap_err();
        assert!(
            matches!(err, BuildError::Key(KeyError::Unavailable(_))),
            "{err}"
        );
        // An issuer whose key worked when the CA was made and fails now.
        let sk = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let pkcs8 = sk.pkcs8_der().to_vec();
        let good: Arc<dyn Key> = Arc::new(sk);
        let cert = self_signed_ca(&td(), "x", &good, now, now + Duration::from_secs(60)).unwrap();
        let failing: Arc<dyn Key> = Arc::new(GoneKey(SoftwareKey::from_pkcs8(&pkcs8).unwrap()));
        let gone_issuer = Issuer::new(cert, failing).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let err = sign_x509_svid(
            &SvidTemplate {
                spiffe_id: &id,
                public_key_der: good.public_key_der(),
                dns_names: &[],
                ttl: Duration::from_secs(10),
                now,
            },
            &gone_issuer,
        )
        .unwrap_err();
        assert!(
            matches!(err, BuildError::Key(KeyError::Unavailable(_))),
            "{err}"
        );
    }

    #[test]
    fn concatenated_certificates_split_back() {
        let a = ca(KeyType::EcP256);
        let b = ca(KeyType::Rsa2048);
        let joined = [a.cert_der(), b.cert_der()].concat();
        assert_eq!(
            split_concatenated(&joined).unwrap(),
            vec![a.cert_der().to_vec(), b.cert_der().to_vec()]
        );
        assert!(split_concatenated(&joined[..joined.len() - 1]).is_err());
        assert!(split_concatenated(&[]).unwrap().is_empty());
    }

    #[test]
    fn pem_round_trip() {
        let issuer = ca(KeyType::EcP256);
        let pem = to_pem("CERTIFICATE", issuer.cert_der());
        assert_eq!(
            pem_certs(pem.as_bytes()).unwrap(),
            vec![issuer.cert_der().to_vec()]
        );
        assert!(pem_certs(b"nothing").is_err());
    }
}
