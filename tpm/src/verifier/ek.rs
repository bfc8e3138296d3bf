//! Endorsement keys: the standard EK templates of the TCG EK Credential Profile
//! (RSA-2048 L-1, ECC P-256 L-2, ECC P-384 H-3, and the high-range RSA-2048 H-1 and
//! P-256 H-2 for checking), where their certificates live in NV, the check that a
//! public area really is an EK, and the TPM identity (manufacturer, model, version)
//! an EK certificate carries in its subject alternative name.
//!
//! The EK is a primary key: the same template in the same TPM always gives the same
//! key, which is why a certificate issued once at manufacturing time stays valid.
//! swtpm's ECC EK is P-384 from template H-3 (nameAlg SHA-384, AES-256, PolicyB,
//! userWithAuth set); its P-256 certificate index is empty unless provisioned
//! (scripts/swtpm.sh adds one).

use std::fmt;
use std::str::FromStr;

use crate::wire::{
    EccCurve, HashAlg, ObjectAttributes as A, PublicArea, PublicParams, Scheme, SymDef,
};

/// PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the EK policy of the low-range templates.
pub const POLICY_A_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// PolicyOR(PolicyA, PolicyC) with SHA-256: the EK policy of the SHA-256 high-range templates.
pub const POLICY_B_SHA256: [u8; 32] = [
    0xca, 0x3d, 0x0a, 0x99, 0xa2, 0xb9, 0x39, 0x06, 0xf7, 0xa3, 0x34, 0x24, 0x14, 0xef, 0xcf, 0xb3,
    0xa3, 0x85, 0xd4, 0x4c, 0xd1, 0xfd, 0x45, 0x90, 0x89, 0xd1, 0x9b, 0x50, 0x71, 0xc0, 0xb7, 0xa0,
];

/// PolicyOR(PolicyA, PolicyC) with SHA-384: the EK policy of the SHA-384 high-range templates.
pub const POLICY_B_SHA384: [u8; 48] = [
    0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc, 0xf5, 0xfd, 0x3a, 0x1a,
    0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4, 0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca,
    0xcb, 0x47, 0xba, 0x09, 0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12,
];

/// fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt.
const LOW_RANGE_ATTRIBUTES: u32 = A::FIXED_TPM
    | A::FIXED_PARENT
    | A::SENSITIVE_DATA_ORIGIN
    | A::ADMIN_WITH_POLICY
    | A::RESTRICTED
    | A::DECRYPT;
/// The high-range templates add userWithAuth (their policy B also admits PolicyC).
const HIGH_RANGE_ATTRIBUTES: u32 = LOW_RANGE_ATTRIBUTES | A::USER_WITH_AUTH;

/// The EKs Tessera uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EkKind {
    /// RSA-2048, template L-1, certificate at 0x01c00002.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// ECC NIST P-256, template L-2, certificate at 0x01c0000a.
    #[serde(rename = "ecc-p256")]
    EccP256,
    /// ECC NIST P-384, template H-3, certificate at 0x01c00016.
    #[serde(rename = "ecc-p384")]
    EccP384,
}

impl EkKind {
    /// Every kind, in the order an agent tries them when none is configured.
    pub const ALL: [EkKind; 3] = [EkKind::Rsa2048, EkKind::EccP256, EkKind::EccP384];

    /// The NV index of the EK certificate (TCG EK Credential Profile, 2.2.1.5).
    pub fn cert_nv_index(self) -> u32 {
        match self {
            EkKind::Rsa2048 => 0x01c0_0002,
            EkKind::EccP256 => 0x01c0_000a,
            EkKind::EccP384 => 0x01c0_0016,
        }
    }

    /// Persistent handles where provisioning tools leave this EK: 0x81010001 (TCG
    /// provisioning guidance, RSA), 0x81010002 (the guidance's ECC handle) and
    /// swtpm_setup's 0x8101000a / 0x81010016. A key found there is used only if it
    /// has this kind's template.
    pub fn persistent_handles(self) -> &'static [u32] {
        match self {
            EkKind::Rsa2048 => &[0x8101_0001],
            EkKind::EccP256 => &[0x8101_0002, 0x8101_000a],
            EkKind::EccP384 => &[0x8101_0016],
        }
    }

    /// The template a TPM turns into this EK with TPM2_CreatePrimary in the
    /// endorsement hierarchy.
    pub fn template(self) -> PublicArea {
        match self {
            EkKind::Rsa2048 => EkTemplate::L1.template(),
            EkKind::EccP256 => EkTemplate::L2.template(),
            EkKind::EccP384 => EkTemplate::H3.template(),
        }
    }

    /// The configuration name (`rsa-2048`, `ecc-p256`, `ecc-p384`).
    pub fn name(self) -> &'static str {
        match self {
            EkKind::Rsa2048 => "rsa-2048",
            EkKind::EccP256 => "ecc-p256",
            EkKind::EccP384 => "ecc-p384",
        }
    }
}

impl fmt::Display for EkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EkKind {
    type Err = EkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rsa-2048" | "rsa" => Ok(EkKind::Rsa2048),
            "ecc-p256" | "ecc" => Ok(EkKind::EccP256),
            "ecc-p384" => Ok(EkKind::EccP384),
            other => Err(EkError::UnknownKind(other.to_owned())),
        }
    }
}

/// The standard EK templates this crate recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EkTemplate {
    /// RSA-2048, SHA-256, AES-128, PolicyA, 256 zero bytes of unique.
    L1,
    /// ECC P-256, SHA-256, AES-128, PolicyA, 32+32 zero bytes of unique.
    L2,
    /// RSA-2048, SHA-256, AES-128, PolicyB, empty unique.
    H1,
    /// ECC P-256, SHA-256, AES-128, PolicyB, empty unique.
    H2,
    /// ECC P-384, SHA-384, AES-256, PolicyB, empty unique.
    H3,
}

impl EkTemplate {
    const ALL: [EkTemplate; 5] = [
        EkTemplate::L1,
        EkTemplate::L2,
        EkTemplate::H1,
        EkTemplate::H2,
        EkTemplate::H3,
    ];

    /// The template as a public area (its unique field as the profile fills it).
    pub fn template(self) -> PublicArea {
        let rsa = |attributes: u32, policy: &[u8], unique: usize| PublicArea {
            name_alg: HashAlg::Sha256,
            attributes: A(attributes),
            auth_policy: policy.to_vec(),
            params: PublicParams::Rsa {
                symmetric: Some(SymDef::aes_cfb(128)),
                scheme: Scheme::Null,
                key_bits: 2048,
                exponent: 0,
                modulus: vec![0; unique],
            },
        };
        let ecc =
            |name_alg, attributes: u32, policy: &[u8], bits, curve, unique: usize| PublicArea {
                name_alg,
                attributes: A(attributes),
                auth_policy: policy.to_vec(),
                params: PublicParams::Ecc {
                    symmetric: Some(SymDef::aes_cfb(bits)),
                    scheme: Scheme::Null,
                    curve,
                    kdf: None,
                    x: vec![0; unique],
                    y: vec![0; unique],
                },
            };
        match self {
            EkTemplate::L1 => rsa(LOW_RANGE_ATTRIBUTES, &POLICY_A_SHA256, 256),
            EkTemplate::H1 => rsa(HIGH_RANGE_ATTRIBUTES, &POLICY_B_SHA256, 0),
            EkTemplate::L2 => ecc(
                HashAlg::Sha256,
                LOW_RANGE_ATTRIBUTES,
                &POLICY_A_SHA256,
                128,
                EccCurve::P256,
                32,
            ),
            EkTemplate::H2 => ecc(
                HashAlg::Sha256,
                HIGH_RANGE_ATTRIBUTES,
                &POLICY_B_SHA256,
                128,
                EccCurve::P256,
                0,
            ),
            EkTemplate::H3 => ecc(
                HashAlg::Sha384,
                HIGH_RANGE_ATTRIBUTES,
                &POLICY_B_SHA384,
                256,
                EccCurve::P384,
                0,
            ),
        }
    }

    /// Whether ActivateCredential must authorise the EK with a policy session
    /// (PolicySecret on the endorsement hierarchy): the low-range templates clear
    /// userWithAuth, so their EK cannot be used with its (empty) password.
    pub fn needs_policy_session(self) -> bool {
        matches!(self, EkTemplate::L1 | EkTemplate::L2)
    }
}

/// Why a public area is not an acceptable EK, or other EK trouble.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EkError {
    /// The public area matches none of the standard templates.
    #[error(
        "EK public area matches no standard EK template (nameAlg {name_alg:?}, attributes {attributes:?}); an EK must be a restricted decryption key made from the TCG EK Credential Profile templates"
    )]
    NotStandard {
        /// The public area's nameAlg.
        name_alg: HashAlg,
        /// Its attributes.
        attributes: A,
    },
    /// An EK kind name in configuration is unknown.
    #[error("unknown EK type {0:?} (expected rsa-2048, ecc-p256 or ecc-p384)")]
    UnknownKind(String),
    /// The EK certificate could not be read.
    #[error("EK certificate unreadable: {0}")]
    Certificate(String),
}

/// Identifies which standard template produced `public`, comparing everything but
/// the key itself, and checks the key has the template's size.
pub fn check_ek_public(public: &PublicArea) -> Result<EkTemplate, EkError> {
    EkTemplate::ALL
        .into_iter()
        .find(|t| matches_template(*t, public))
        .ok_or(EkError::NotStandard {
            name_alg: public.name_alg,
            attributes: public.attributes,
        })
}

/// Whether `public` is a key made from `template` (any unique value of the right size).
pub fn matches_template(template: EkTemplate, public: &PublicArea) -> bool {
    let t = template.template();
    if public.without_unique() != t.without_unique() {
        return false;
    }
    // TPMs write EC coordinates at full field size; anything else is not theirs.
    match &public.params {
        PublicParams::Rsa { .. } => public.rsa_parts().is_ok(),
        PublicParams::Ecc { curve, x, y, .. } => {
            x.len() == curve.field_size() && y.len() == curve.field_size()
        }
    }
}

/// Which EK kind a public area is, if it is one of Tessera's three.
pub fn kind_of(public: &PublicArea) -> Option<EkKind> {
    EkKind::ALL
        .into_iter()
        .find(|k| public.without_unique() == k.template().without_unique())
}

/// The TPM identity an EK certificate states in its subject alternative name
/// (a directoryName with TCG attributes 2.23.133.2.1/2/3).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TpmIdentity {
    /// tcg-at-tpmManufacturer, e.g. `id:00001014`.
    pub manufacturer: Option<String>,
    /// tcg-at-tpmModel, e.g. `swtpm`.
    pub model: Option<String>,
    /// tcg-at-tpmVersion, e.g. `id:20191023`.
    pub version: Option<String>,
}

const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";

/// Reads the TPM manufacturer, model and version from an EK certificate's SAN. A
/// certificate without them gives an empty identity; an unparsable one is an error.
pub fn tpm_identity(cert_der: &[u8]) -> Result<TpmIdentity, EkError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| EkError::Certificate(e.to_string()))?;
    let mut id = TpmIdentity::default();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| EkError::Certificate(format!("subject alternative name: {e}")))?;
    let Some(san) = san else {
        return Ok(id);
    };
    for name in &san.value.general_names {
        let GeneralName::DirectoryName(dn) = name else {
            continue;
        };
        for attr in dn.iter_attributes() {
            let Ok(value) = attr.as_str() else { continue };
            let slot = match attr.attr_type().to_id_string().as_str() {
                OID_TPM_MANUFACTURER => &mut id.manufacturer,
                OID_TPM_MODEL => &mut id.model,
                OID_TPM_VERSION => &mut id.version,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.to_owned());
            }
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key made from template `t`: the template with `n`-byte unique fields.
    fn with_unique(t: EkTemplate, n: usize) -> PublicArea {
        let mut area = t.template();
        match &mut area.params {
            PublicParams::Rsa { modulus, .. } => *modulus = vec![0xa5; n],
            PublicParams::Ecc { x, y, .. } => {
                *x = vec![0x11; n];
                *y = vec![0x22; n];
            }
        }
        area
    }

    #[test]
    fn templates_round_trip_and_are_recognised() {
        for t in EkTemplate::ALL {
            let bytes = t.template().marshal();
            assert_eq!(PublicArea::parse(&bytes).unwrap(), t.template());
        }
        assert_eq!(
            check_ek_public(&with_unique(EkTemplate::L1, 256)),
            Ok(EkTemplate::L1)
        );
        assert_eq!(
            check_ek_public(&with_unique(EkTemplate::L2, 32)),
            Ok(EkTemplate::L2)
        );
        let h3 = with_unique(EkTemplate::H3, 48);
        assert_eq!(check_ek_public(&h3), Ok(EkTemplate::H3));
        // What tpm2_readpublic shows for swtpm's P-384 EK.
        assert_eq!(h3.attributes.0, 0x0003_00f2);
        assert_eq!(kind_of(&h3), Some(EkKind::EccP384));
        assert!(!EkTemplate::H3.needs_policy_session());
        assert!(EkTemplate::L1.needs_policy_session());
    }

    #[test]
    fn wrong_sizes_and_attributes_are_refused() {
        assert!(check_ek_public(&with_unique(EkTemplate::L2, 31)).is_err());
        assert!(check_ek_public(&with_unique(EkTemplate::H3, 32)).is_err());
        let mut signing = with_unique(EkTemplate::L1, 256);
        signing.attributes.0 |= A::SIGN_ENCRYPT;
        assert!(matches!(
            check_ek_public(&signing),
            Err(EkError::NotStandard { .. })
        ));
        let mut no_policy = with_unique(EkTemplate::L2, 32);
        no_policy.auth_policy.clear();
        assert!(check_ek_public(&no_policy).is_err());
    }

    #[test]
    fn kinds_parse() {
        for k in EkKind::ALL {
            assert_eq!(k.name().parse::<EkKind>().unwrap(), k);
        }
        assert!("rsa-4096".parse::<EkKind>().is_err());
    }

    #[test]
    fn identity_of_garbage_is_an_error() {
        assert!(tpm_identity(b"not a certificate").is_err());
    }
}
