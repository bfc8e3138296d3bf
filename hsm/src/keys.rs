//! Key objects on the token: generating them (inside the token, non-extractable),
//! finding them again by label and id, reading their public half, and destroying
//! them.
//!
//! A key id `x` is stored as CKA_LABEL `<prefix>x` and CKA_ID = the first 16 bytes of
//! SHA-256 over that label. The label is what operators read in `pkcs11-tool
//! --list-objects`; the derived id gives the private and public objects the link
//! other PKCS#11 tools expect, is found again after a restart from the label alone,
//! and has a fixed size whatever the label's length.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle,
};
use tessera_core::der;
use tessera_core::key::{HashAlgorithm, KeyType};

use crate::error::HsmError;
use crate::session::Op;

/// Bytes of SHA-256 kept for CKA_ID.
pub const OBJECT_ID_LEN: usize = 16;

/// DER of the namedCurve OIDs, as CKA_EC_PARAMS holds them.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const RSA_EXPONENT: &[u8] = &[0x01, 0x00, 0x01];

/// The CKA_ID Tessera gives the objects of the key labelled `label`.
pub fn object_id_for_label(label: &str) -> Vec<u8> {
    let mut digest = HashAlgorithm::Sha256.digest(label.as_bytes());
    digest.truncate(OBJECT_ID_LEN);
    digest
}

/// How a key's objects are found: by CKA_LABEL, CKA_ID or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRef {
    pub(crate) label: Option<String>,
    pub(crate) id: Option<Vec<u8>>,
}

impl KeyRef {
    pub(crate) fn managed(label: String) -> Self {
        let id = object_id_for_label(&label);
        Self {
            label: Some(label),
            id: Some(id),
        }
    }

    /// The key's name for messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.label, &self.id) {
            (Some(l), _) => l.clone(),
            (None, Some(id)) => format!("id {}", hex(id)),
            (None, None) => "(any)".to_owned(),
        }
    }

    fn template(&self, class: Option<ObjectClass>) -> Vec<Attribute> {
        let mut t = vec![Attribute::Token(true)];
        if let Some(c) = class {
            t.push(Attribute::Class(c));
        }
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key found on (or just generated in) the token.
pub(crate) struct Found {
    pub(crate) key_type: KeyType,
    pub(crate) spki: Vec<u8>,
    pub(crate) private: ObjectHandle,
}

pub(crate) fn find(
    op: &Op<'_>,
    class: Option<ObjectClass>,
    r: &KeyRef,
) -> Result<Vec<ObjectHandle>, HsmError> {
    Ok(op.session.find_objects(&r.template(class))?)
}

fn invalid(r: &KeyRef, reason: impl Into<String>) -> HsmError {
    HsmError::KeyInvalid {
        label: r.describe(),
        reason: reason.into(),
    }
}

/// Finds the private key `r` names and reads its public half; `None` if absent.
pub(crate) fn load(op: &Op<'_>, r: &KeyRef) -> Result<Option<Found>, HsmError> {
    let private = match find(op, Some(ObjectClass::PRIVATE_KEY), r)?.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        many => {
            return Err(invalid(
                r,
                format!(
                    "{} private keys carry this label and id; delete the extra ones",
                    many.len()
                ),
            ));
        }
    };
    let (key_type, spki) = public_half(op, r, private, None)?;
    Ok(Some(Found {
        key_type,
        spki,
        private,
    }))
}

/// Finds the private key's handle only (after a restart or a stale handle).
pub(crate) fn find_private(op: &Op<'_>, r: &KeyRef) -> Result<Option<ObjectHandle>, HsmError> {
    match find(op, Some(ObjectClass::PRIVATE_KEY), r)?.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(invalid(
            r,
            format!(
                "{} private keys carry this label and id; delete the extra ones",
                many.len()
            ),
        )),
    }
}

fn attr_bytes(attrs: &[Attribute], want: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::Label(v), AttributeType::Label) => Some(v.as_slice()),
        _ => None,
    })
}

fn curve(params: &[u8]) -> Option<KeyType> {
    match params {
        P256_PARAMS => Some(KeyType::EcP256),
        P384_PARAMS => Some(KeyType::EcP384),
        _ => None,
    }
}

/// The uncompressed point from CKA_EC_POINT, which the specification wants DER
/// (an OCTET STRING) but some modules give raw.
fn ec_point(value: &[u8], coordinate: usize) -> Option<&[u8]> {
    let point = der::octet_string(value).unwrap_or(value);
    (point.len() == 1 + 2 * coordinate && point[0] == 0x04).then_some(point)
}

fn rsa_key_type(modulus: &[u8]) -> Option<KeyType> {
    let m = tessera_core::der::trim_leading_zeros(modulus);
    let bits = m
        .first()
        .map_or(0, |b| m.len() * 8 - b.leading_zeros() as usize);
    match bits {
        2048 => Some(KeyType::Rsa2048),
        3072 => Some(KeyType::Rsa3072),
        4096 => Some(KeyType::Rsa4096),
        _ => None,
    }
}

/// Key type and SubjectPublicKeyInfo of the private key `private`, from its public
/// object (same label and id) or, for RSA, from the private object itself.
fn public_half(
    op: &Op<'_>,
    r: &KeyRef,
    private: ObjectHandle,
    known_public: Option<ObjectHandle>,
) -> Result<(KeyType, Vec<u8>), HsmError> {
    let priv_attrs = op
        .session
        .get_attributes(private, &[AttributeType::KeyType])?;
    let ck_type = priv_attrs
        .iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        })
        .ok_or_else(|| invalid(r, "the private key has no CKA_KEY_TYPE"))?;
    let public = match known_public {
        Some(h) => Some(h),
        None => match find(op, Some(ObjectClass::PUBLIC_KEY), r)?.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => {
                return Err(invalid(
                    r,
                    "several public keys carry this label and id; delete the extra ones",
                ));
            }
        },
    };
    if ck_type == CkKeyType::EC {
        let params = op
            .session
            .get_attributes(private, &[AttributeType::EcParams])?;
        let params = attr_bytes(&params, AttributeType::EcParams)
            .ok_or_else(|| invalid(r, "the EC private key has no CKA_EC_PARAMS"))?;
        let key_type = curve(params).ok_or_else(|| {
            invalid(
                r,
                format!(
                    "curve {} is not supported (only P-256 and P-384)",
                    hex(params)
                ),
            )
        })?;
        // PKCS#11 keeps the EC point on the public object only.
        let public = public.ok_or_else(|| {
            invalid(
                r,
                "the public key object is missing, and an EC private key does not carry its point",
            )
        })?;
        let attrs = op
            .session
            .get_attributes(public, &[AttributeType::EcPoint])?;
        let coordinate = if key_type == KeyType::EcP384 { 48 } else { 32 };
        let point = attr_bytes(&attrs, AttributeType::EcPoint)
            .and_then(|v| ec_point(v, coordinate))
            .ok_or_else(|| invalid(r, "CKA_EC_POINT is not an uncompressed point"))?;
        Ok((key_type, der::ec_spki(point, key_type == KeyType::EcP384)))
    } else if ck_type == CkKeyType::RSA {
        let source = public.unwrap_or(private);
        let attrs = op.session.get_attributes(
            source,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (Some(n), Some(e)) = (
            attr_bytes(&attrs, AttributeType::Modulus),
            attr_bytes(&attrs, AttributeType::PublicExponent),
        ) else {
            return Err(invalid(r, "the RSA key has no modulus or public exponent"));
        };
        let key_type = rsa_key_type(n)
            .ok_or_else(|| invalid(r, "only RSA keys of 2048, 3072 or 4096 bits are supported"))?;
        Ok((key_type, der::rsa_spki_from_parts(n, e)))
    } else {
        Err(invalid(r, format!("key type {ck_type} cannot sign here")))
    }
}

/// The mechanisms a key type needs: generation and signing.
pub(crate) fn mechanisms_for(key_type: KeyType) -> &'static [MechanismType] {
    if key_type.is_rsa() {
        &[
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            MechanismType::RSA_PKCS,
        ]
    } else {
        &[MechanismType::ECC_KEY_PAIR_GEN, MechanismType::ECDSA]
    }
}

/// Generates a key pair inside the token under `r` (label and id).
///
/// The private key is a token object, private, sensitive and not extractable, and
/// may only sign: SoftHSM2 (and others) turn on decrypt, unwrap, derive and
/// sign-recover unless the template says otherwise, so every usage is spelled out.
pub(crate) fn generate(op: &Op<'_>, r: &KeyRef, key_type: KeyType) -> Result<Found, HsmError> {
    let supported = op.ctx.get_mechanism_list(op.slot)?;
    for m in mechanisms_for(key_type) {
        if !supported.contains(m) {
            return Err(HsmError::MechanismNotSupported {
                token: op.token.to_owned(),
                mechanism: m.to_string(),
            });
        }
    }
    let label = r.label.clone().unwrap_or_default().into_bytes();
    let id = r.id.clone().unwrap_or_default();
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::VerifyRecover(false),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.clone()),
        Attribute::Id(id.clone()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label),
        Attribute::Id(id),
    ];
    let mechanism = match key_type {
        KeyType::EcP256 | KeyType::EcP384 => {
            let params = if key_type == KeyType::EcP384 {
                P384_PARAMS
            } else {
                P256_PARAMS
            };
            public.push(Attribute::EcParams(params.to_vec()));
            Mechanism::EccKeyPairGen
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            public.push(Attribute::ModulusBits((key_type.bits() as u64).into()));
            public.push(Attribute::PublicExponent(RSA_EXPONENT.to_vec()));
            Mechanism::RsaPkcsKeyPairGen
        }
        other => return Err(HsmError::UnsupportedKeyType(other)),
    };
    let (public, private) = op
        .session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::MechanismInvalid | RvError::CurveNotSupported, _) => {
                HsmError::MechanismNotSupported {
                    token: op.token.to_owned(),
                    mechanism: format!("{} for {key_type}", mechanism.mechanism_type()),
                }
            }
            other => other.into(),
        })?;
    // The new pair is known by handle: the label may still name the pair it replaces.
    let (found_type, spki) = public_half(op, r, private, Some(public))?;
    if found_type != key_type {
        return Err(invalid(
            r,
            format!("asked the token for {key_type} and got {found_type}"),
        ));
    }
    Ok(Found {
        key_type,
        spki,
        private,
    })
}

/// Destroys every object (private, public, certificate...) under `r`.
pub(crate) fn destroy_all(op: &Op<'_>, r: &KeyRef) -> Result<usize, HsmError> {
    let handles = find(op, None, r)?;
    destroy(op, &handles)?;
    Ok(handles.len())
}

pub(crate) fn destroy(op: &Op<'_>, handles: &[ObjectHandle]) -> Result<(), HsmError> {
    for h in handles {
        match op.session.destroy_object(*h) {
            // Gone already (a concurrent delete): that is what we wanted.
            Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// CKA_LABEL of every private key on the token.
pub(crate) fn private_key_labels(op: &Op<'_>) -> Result<Vec<String>, HsmError> {
    let handles = op.session.find_objects(&[
        Attribute::Token(true),
        Attribute::Class(ObjectClass::PRIVATE_KEY),
    ])?;
    let mut labels = Vec::with_capacity(handles.len());
    for h in handles {
        let attrs = op.session.get_attributes(h, &[AttributeType::Label])?;
        if let Some(l) = attr_bytes(&attrs, AttributeType::Label) {
            labels.push(String::from_utf8_lossy(l).into_owned());
        }
    }
    Ok(labels)
}

/// How well a private key is protected, as the token reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyProtection {
    /// CKA_TOKEN: stored on the token (survives sessions).
    pub token: bool,
    /// CKA_PRIVATE: only visible after login.
    pub private: bool,
    /// CKA_SENSITIVE: the secret value is never revealed.
    pub sensitive: bool,
    /// CKA_ALWAYS_SENSITIVE: and never was.
    pub always_sensitive: bool,
    /// CKA_EXTRACTABLE: may be wrapped out of the token.
    pub extractable: bool,
    /// CKA_NEVER_EXTRACTABLE: never could be.
    pub never_extractable: bool,
    /// CKA_LOCAL: generated inside the token.
    pub local: bool,
    /// CKA_SIGN.
    pub sign: bool,
    /// CKA_SIGN_RECOVER.
    pub sign_recover: bool,
    /// CKA_DECRYPT.
    pub decrypt: bool,
    /// CKA_UNWRAP.
    pub unwrap: bool,
    /// CKA_DERIVE.
    pub derive: bool,
    /// Whether reading the secret value (CKA_VALUE, CKA_PRIVATE_EXPONENT) was refused
    /// with CKR_ATTRIBUTE_SENSITIVE (or the attribute is not exposed at all).
    pub value_hidden: bool,
}

impl KeyProtection {
    /// The key was born in the token and can never leave it.
    pub fn is_hardware_bound(&self) -> bool {
        self.token
            && self.sensitive
            && self.always_sensitive
            && !self.extractable
            && self.never_extractable
            && self.value_hidden
    }

    /// The key can do nothing but sign.
    pub fn is_sign_only(&self) -> bool {
        self.sign && !self.sign_recover && !self.decrypt && !self.unwrap && !self.derive
    }
}

pub(crate) fn protection(
    op: &Op<'_>,
    private: ObjectHandle,
    key_type: KeyType,
) -> Result<KeyProtection, HsmError> {
    let attrs = op.session.get_attributes(
        private,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::AlwaysSensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Local,
            AttributeType::Sign,
            AttributeType::SignRecover,
            AttributeType::Decrypt,
            AttributeType::Unwrap,
            AttributeType::Derive,
        ],
    )?;
    let mut p = KeyProtection::default();
    for a in attrs {
        match a {
            Attribute::Token(v) => p.token = v,
            Attribute::Private(v) => p.private = v,
            Attribute::Sensitive(v) => p.sensitive = v,
            Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
            Attribute::Extractable(v) => p.extractable = v,
            Attribute::NeverExtractable(v) => p.never_extractable = v,
            Attribute::Local(v) => p.local = v,
            Attribute::Sign(v) => p.sign = v,
            Attribute::SignRecover(v) => p.sign_recover = v,
            Attribute::Decrypt(v) => p.decrypt = v,
            Attribute::Unwrap(v) => p.unwrap = v,
            Attribute::Derive(v) => p.derive = v,
            _ => {}
        }
    }
    // Asked one attribute at a time so that the answer is the module's own verdict.
    let secret = if key_type.is_rsa() {
        AttributeType::PrivateExponent
    } else {
        AttributeType::Value
    };
    p.value_hidden = match op
        .session
        .get_attribute_info(private, &[secret])?
        .as_slice()
    {
        [AttributeInfo::Sensitive | AttributeInfo::TypeInvalid | AttributeInfo::Unavailable] => {
            true
        }
        [AttributeInfo::Available(_)] => false,
        other => {
            return Err(HsmError::Binding(format!(
                "unexpected answer reading {secret}: {other:?}"
            )));
        }
    };
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_stable_and_short() {
        let a = object_id_for_label("tessera-x509-ca");
        assert_eq!(a.len(), OBJECT_ID_LEN);
        assert_eq!(a, object_id_for_label("tessera-x509-ca"));
        assert_ne!(a, object_id_for_label("tessera-x509-cb"));
        // First bytes of SHA-256("abc").
        assert_eq!(
            hex(&object_id_for_label("abc")),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn ec_points_in_both_encodings() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&raw);
        assert_eq!(ec_point(&raw, 32), Some(raw.as_slice()));
        assert_eq!(ec_point(&wrapped, 32), Some(raw.as_slice()));
        assert_eq!(ec_point(&wrapped, 48), None);
        assert_eq!(ec_point(&raw[..64], 32), None);
    }

    #[test]
    fn rsa_sizes() {
        let mut m = vec![0x80];
        m.extend([0u8; 255]);
        assert_eq!(rsa_key_type(&m), Some(KeyType::Rsa2048));
        let mut padded = vec![0];
        padded.extend(&m);
        assert_eq!(rsa_key_type(&padded), Some(KeyType::Rsa2048));
        assert_eq!(rsa_key_type(&[0x40; 256]), None);
        assert_eq!(curve(P384_PARAMS), Some(KeyType::EcP384));
        assert_eq!(curve(&[0x06, 0x01, 0x00]), None);
    }
}
