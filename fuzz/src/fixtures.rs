//! What the targets share and build once per process: a Tokio runtime, fixed
//! test keys (`fuzz/fixtures/*.pem`, made for these targets and used nowhere
//! else), the JWT bundle they verify with, and a fabricated TPM (EK, AK and
//! DevID keys in software, their public areas and certificates from fixed test
//! CAs) whose payloads the seed corpora hold.
//!
//! The keys are fixed so that seed and regression inputs signed with them keep
//! verifying in later runs; the CA certificates are rebuilt from the fixed keys
//! with fixed names and a validity that never ends, so certificates in
//! committed inputs keep chaining to them.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use tessera_core::bundle::{Bundle, JwtAuthority};
use tessera_core::key::{Key, SoftwareKey};
use tessera_core::{SpiffeId, TrustDomain};
use tessera_tpm::attestation::tpm_devid::{DevIdPayload, DevIdVerifier};
use tessera_tpm::attestation::tpm_ek::{EkAllowList, EkPayload, EkVerifier, ek_pub_hash};
use tessera_tpm::verifier::ak::AkKind;
use tessera_tpm::verifier::chain::CaPool;
use tessera_tpm::verifier::ek::EkKind;
use tessera_tpm::wire::{
    HashAlg, PublicArea, PublicParams, Signature, TPM_GENERATED_VALUE, st, tpm2b,
};

/// The trust domain every target works in.
pub const TRUST_DOMAIN: &str = "example.org";

/// The audience the JWT targets validate for.
pub const AUDIENCE: &str = "fuzz-audience";

/// The Unix time the JWT targets validate at (2025-01-01): fixed, so a
/// committed token's verdict never depends on when the test runs.
pub const NOW: i64 = 1_735_689_600;

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("fixed trust domain")
}

/// Runs a future to completion on this thread's Tokio runtime (current-thread,
/// with timers; blocking work goes to its blocking pool).
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a Tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// The PKCS#8 DER inside one of the fixture PEM files.
fn pkcs8(pem: &str) -> Vec<u8> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .expect("fixture key PEM")
        .secret_pkcs8_der()
        .to_vec()
}

const P256_PEM: &str = include_str!("../fixtures/p256.pem");
const P384_PEM: &str = include_str!("../fixtures/p384.pem");
const RSA2048_PEM: &str = include_str!("../fixtures/rsa2048.pem");
const EK_PEM: &str = include_str!("../fixtures/ek-p256.pem");
const AK_PEM: &str = include_str!("../fixtures/ak-p256.pem");
const DEVID_PEM: &str = include_str!("../fixtures/devid-p256.pem");
const EK_CA_PEM: &str = include_str!("../fixtures/ca-p256.pem");
const VENDOR_CA_PEM: &str = include_str!("../fixtures/ca2-p256.pem");

/// The P-256 JWT key as rcgen's key pair, to sign CSRs of other shapes than
/// Tessera's own.
pub fn p256_key_pair() -> KeyPair {
    KeyPair::from_pem(P256_PEM).expect("fixture key")
}

/// The JWT signing keys, with the key IDs the bundle names them by.
#[derive(Debug)]
pub struct JwtKeys {
    pub keys: Vec<(&'static str, Arc<dyn Key>)>,
    pub bundle: Bundle,
}

pub fn jwt_keys() -> &'static JwtKeys {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let load = |pem: &str| -> Arc<dyn Key> {
            Arc::new(SoftwareKey::from_pkcs8(&pkcs8(pem)).expect("fixture key"))
        };
        let keys: Vec<(&'static str, Arc<dyn Key>)> = vec![
            ("p256", load(P256_PEM)),
            ("p384", load(P384_PEM)),
            ("rsa2048", load(RSA2048_PEM)),
        ];
        let mut bundle = Bundle::new(trust_domain());
        bundle.set_jwt_authorities(
            keys.iter()
                .map(|(kid, key)| JwtAuthority {
                    key_id: (*kid).to_owned(),
                    public_key_der: key.public_key_der().to_vec(),
                    expires_at: 0,
                })
                .collect(),
        );
        JwtKeys { keys, bundle }
    })
}

/// The SPIFFE ID the fixture tokens are for.
pub fn workload_id() -> SpiffeId {
    trust_domain().id("/workload").expect("fixed ID")
}

/// A key of the fabricated TPM: a software P-256 key standing in for one the
/// TPM holds (the verifier cannot tell, which is what lets its logic be fuzzed
/// without a TPM).
#[derive(Debug)]
pub struct SoftTpmKey {
    pub pair: EcdsaKeyPair,
    pub public: PublicArea,
}

impl SoftTpmKey {
    fn new(pem: &str, mut template: PublicArea) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8(pem), &rng)
            .expect("fixture key");
        let point = pair.public_key().as_ref();
        if let PublicParams::Ecc { x, y, .. } = &mut template.params {
            *x = point[1..33].to_vec();
            *y = point[33..].to_vec();
        }
        Self {
            pair,
            public: template,
        }
    }

    /// A TPMT_SIGNATURE (ECDSA, SHA-256) over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let raw = self.pair.sign(&rng, message).expect("ECDSA signing");
        let raw = raw.as_ref();
        Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: raw[..32].to_vec(),
            s: raw[32..].to_vec(),
        }
        .marshal()
    }
}

/// The fabricated TPM and its certificates.
#[derive(Debug)]
pub struct Tpm {
    pub ek: SoftTpmKey,
    pub ak: SoftTpmKey,
    pub devid: SoftTpmKey,
    pub ek_ca: Vec<u8>,
    pub ek_certificate: Vec<u8>,
    pub vendor_ca: Vec<u8>,
    pub devid_certificate: Vec<u8>,
    /// An EK with no certificate, trusted by the allow-list.
    pub allow_listed_ek: SoftTpmKey,
}

/// A CA with a fixed key and name, valid from 2020 for ever.
fn fixed_ca(pem: &str, name: &str) -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let key = KeyPair::from_pem(pem).expect("fixture CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.serial_number = Some(SerialNumber::from(vec![1]));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let der = p.self_signed(&key).expect("CA certificate").der().to_vec();
    (der, Issuer::new(p, key))
}

fn fixed_leaf(pem: &str, name: &str, issuer: &Issuer<'static, KeyPair>, ek: bool) -> Vec<u8> {
    let key = KeyPair::from_pem(pem).expect("fixture leaf key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("leaf parameters");
    p.distinguished_name.push(DnType::CommonName, name);
    p.serial_number = Some(SerialNumber::from(vec![2]));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(9999, 12, 31);
    if ek {
        // tcg-kp-EKCertificate
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
        p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p.signed_by(&key, issuer)
        .expect("leaf certificate")
        .der()
        .to_vec()
}

pub fn tpm() -> &'static Tpm {
    static TPM: OnceLock<Tpm> = OnceLock::new();
    TPM.get_or_init(|| {
        let ek = SoftTpmKey::new(EK_PEM, EkKind::EccP256.template());
        let allow_listed_ek = SoftTpmKey::new(P256_PEM, EkKind::EccP256.template());
        let ak = SoftTpmKey::new(AK_PEM, AkKind::EccP256.template());
        let devid = SoftTpmKey::new(
            DEVID_PEM,
            tessera_tpm::device::signing_key_template(tessera_core::key::KeyType::EcP256),
        );
        let (ek_ca, ek_issuer) = fixed_ca(EK_CA_PEM, "Tessera fuzz EK CA");
        let (vendor_ca, vendor_issuer) = fixed_ca(VENDOR_CA_PEM, "Tessera fuzz DevID CA");
        let ek_certificate = fixed_leaf(EK_PEM, "fuzz EK", &ek_issuer, true);
        let devid_certificate = fixed_leaf(DEVID_PEM, "fuzz-device-1", &vendor_issuer, false);
        Tpm {
            ek,
            ak,
            devid,
            ek_ca,
            ek_certificate,
            vendor_ca,
            devid_certificate,
            allow_listed_ek,
        }
    })
}

fn pool(der: &[u8]) -> CaPool {
    CaPool::new(vec![der.to_vec()]).expect("fixture CA pool")
}

impl Tpm {
    /// A `tpm_devid` verifier trusting the vendor CA and the EK CA.
    pub fn devid_verifier(&self) -> DevIdVerifier {
        DevIdVerifier::new(pool(&self.vendor_ca), pool(&self.ek_ca))
    }

    /// A `tpm_ek` verifier trusting the EK CA, and by allow-list
    /// [`Tpm::allow_listed_ek`] alone.
    pub fn ek_verifier(&self) -> EkVerifier {
        let allowed = ek_pub_hash(&self.allow_listed_ek.public).expect("fixture EK hash");
        EkVerifier::new(
            pool(&self.ek_ca),
            Some(EkAllowList::from_hashes([allowed]).expect("fixture allow-list")),
        )
    }

    /// A TPMS_ATTEST of TPM2_Certify(DevID key) by the AK, as a TPM makes it.
    pub fn certify_info(&self) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        a.extend_from_slice(&st::ATTEST_CERTIFY.to_be_bytes());
        a.extend(tpm2b(&self.ak.public.name()));
        a.extend(tpm2b(&[]));
        a.extend_from_slice(&12_345u64.to_be_bytes());
        a.extend_from_slice(&1u32.to_be_bytes());
        a.extend_from_slice(&0u32.to_be_bytes());
        a.push(1);
        a.extend_from_slice(&0x2023_0101u64.to_be_bytes());
        let name = self.devid.public.name();
        a.extend(tpm2b(&name));
        a.extend(tpm2b(&name));
        a
    }

    /// A `tpm_devid` payload the verifier accepts (up to the challenge).
    pub fn devid_payload(&self) -> DevIdPayload {
        let certify_info = self.certify_info();
        DevIdPayload {
            devid_chain: vec![self.devid_certificate.clone()],
            devid_public: self.devid.public.marshal(),
            ek_certificate: Some(self.ek_certificate.clone()),
            ek_public: self.ek.public.marshal(),
            ak_public: self.ak.public.marshal(),
            certify_signature: self.ak.sign(&certify_info),
            certify_info,
        }
    }

    /// A `tpm_ek` payload trusted by certificate.
    pub fn ek_payload(&self) -> EkPayload {
        EkPayload {
            ek_public: self.ek.public.marshal(),
            ek_certificate: Some(self.ek_certificate.clone()),
            ak_public: self.ak.public.marshal(),
        }
    }

    /// A `tpm_ek` payload trusted by the allow-list.
    pub fn allow_listed_payload(&self) -> EkPayload {
        EkPayload {
            ek_public: self.allow_listed_ek.public.marshal(),
            ek_certificate: None,
            ak_public: self.ak.public.marshal(),
        }
    }
}
