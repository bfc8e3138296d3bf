//! TPMT_PUBLIC and TPM2B_PUBLIC: the public area of an RSA or ECC key, or a
//! template for one, with its object attributes, symmetric definition and
//! scheme; the object's name; and the key as a SubjectPublicKeyInfo.

use std::fmt;

use super::{
    EccCurve, HashAlg, Reader, Result, StructureError, alg, put_tpm2b, put_u16, put_u32, tpm2b,
    tpm2b_contents,
};

/// TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    /// fixedTPM: the object cannot leave this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// stClear: the object is flushed at TPM restart.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// fixedParent: the object cannot be moved to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin: the TPM made the private part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth: the auth value can authorise the user role.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy: the admin role needs the policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// noDA: no dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 10;
    /// encryptedDuplication: duplication needs an inner wrapper.
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// restricted: the key signs or decrypts only TPM-made structures.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt: the key can decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign: the key can sign.
    pub const SIGN_ENCRYPT: u32 = 1 << 18;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Debug for ObjectAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: &[(u32, &str)] = &[
            (ObjectAttributes::FIXED_TPM, "fixedTPM"),
            (ObjectAttributes::ST_CLEAR, "stClear"),
            (ObjectAttributes::FIXED_PARENT, "fixedParent"),
            (
                ObjectAttributes::SENSITIVE_DATA_ORIGIN,
                "sensitiveDataOrigin",
            ),
            (ObjectAttributes::USER_WITH_AUTH, "userWithAuth"),
            (ObjectAttributes::ADMIN_WITH_POLICY, "adminWithPolicy"),
            (ObjectAttributes::NO_DA, "noDA"),
            (
                ObjectAttributes::ENCRYPTED_DUPLICATION,
                "encryptedDuplication",
            ),
            (ObjectAttributes::RESTRICTED, "restricted"),
            (ObjectAttributes::DECRYPT, "decrypt"),
            (ObjectAttributes::SIGN_ENCRYPT, "sign"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        write!(f, "0x{:08x} [{}]", self.0, names.join("|"))
    }
}

/// TPMT_SYM_DEF_OBJECT when it is not TPM_ALG_NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// The cipher (`TPM_ALG_AES`).
    pub algorithm: u16,
    /// Its key size.
    pub key_bits: u16,
    /// Its mode (`TPM_ALG_CFB`).
    pub mode: u16,
}

impl SymDef {
    /// AES in CFB mode, what storage keys and EKs use.
    pub const fn aes_cfb(key_bits: u16) -> Self {
        Self {
            algorithm: alg::AES,
            key_bits,
            mode: alg::CFB,
        }
    }
}

fn read_sym(r: &mut Reader<'_>) -> Result<Option<SymDef>> {
    let algorithm = r.u16()?;
    if algorithm == alg::NULL {
        return Ok(None);
    }
    Ok(Some(SymDef {
        algorithm,
        key_bits: r.u16()?,
        mode: r.u16()?,
    }))
}

fn write_sym(out: &mut Vec<u8>, sym: &Option<SymDef>) {
    match sym {
        None => put_u16(out, alg::NULL),
        Some(s) => {
            put_u16(out, s.algorithm);
            put_u16(out, s.key_bits);
            put_u16(out, s.mode);
        }
    }
}

/// The signing or encryption scheme of an asymmetric key (TPMT_RSA_SCHEME /
/// TPMT_ECC_SCHEME), or the scheme of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// No scheme (`TPM_ALG_NULL`): chosen per command.
    Null,
    /// RSASSA-PKCS1-v1_5 signatures.
    RsaSsa(HashAlg),
    /// RSASSA-PSS signatures.
    RsaPss(HashAlg),
    /// RSAES-PKCS1-v1_5 encryption.
    RsaEs,
    /// RSAES-OAEP encryption.
    Oaep(HashAlg),
    /// ECDSA signatures.
    Ecdsa(HashAlg),
    /// ECDH key agreement.
    Ecdh(HashAlg),
    /// ECDAA signatures, with the commit counter.
    Ecdaa(HashAlg, u16),
}

fn read_scheme(r: &mut Reader<'_>) -> Result<Scheme> {
    let id = r.u16()?;
    Ok(match id {
        alg::NULL => Scheme::Null,
        alg::RSAES => Scheme::RsaEs,
        alg::RSASSA => Scheme::RsaSsa(HashAlg::from_id(r.u16()?)?),
        alg::RSAPSS => Scheme::RsaPss(HashAlg::from_id(r.u16()?)?),
        alg::OAEP => Scheme::Oaep(HashAlg::from_id(r.u16()?)?),
        alg::ECDSA => Scheme::Ecdsa(HashAlg::from_id(r.u16()?)?),
        alg::ECDH => Scheme::Ecdh(HashAlg::from_id(r.u16()?)?),
        alg::ECDAA => {
            let h = HashAlg::from_id(r.u16()?)?;
            Scheme::Ecdaa(h, r.u16()?)
        }
        other => {
            return Err(StructureError::Unsupported {
                what: "key scheme",
                value: other.into(),
            });
        }
    })
}

fn write_scheme(out: &mut Vec<u8>, s: &Scheme) {
    match *s {
        Scheme::Null => put_u16(out, alg::NULL),
        Scheme::RsaEs => put_u16(out, alg::RSAES),
        Scheme::RsaSsa(h) => {
            put_u16(out, alg::RSASSA);
            put_u16(out, h.id());
        }
        Scheme::RsaPss(h) => {
            put_u16(out, alg::RSAPSS);
            put_u16(out, h.id());
        }
        Scheme::Oaep(h) => {
            put_u16(out, alg::OAEP);
            put_u16(out, h.id());
        }
        Scheme::Ecdsa(h) => {
            put_u16(out, alg::ECDSA);
            put_u16(out, h.id());
        }
        Scheme::Ecdh(h) => {
            put_u16(out, alg::ECDH);
            put_u16(out, h.id());
        }
        Scheme::Ecdaa(h, count) => {
            put_u16(out, alg::ECDAA);
            put_u16(out, h.id());
            put_u16(out, count);
        }
    }
}

/// The algorithm-specific half of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicParams {
    /// TPMS_RSA_PARMS and TPM2B_PUBLIC_KEY_RSA. An exponent of 0 means 65537.
    Rsa {
        /// The symmetric algorithm of a storage key.
        symmetric: Option<SymDef>,
        /// The key's scheme.
        scheme: Scheme,
        /// The modulus size in bits.
        key_bits: u16,
        /// The public exponent (0 for 65537).
        exponent: u32,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// TPMS_ECC_PARMS and TPMS_ECC_POINT. `kdf` is None for TPM_ALG_NULL.
    Ecc {
        /// The symmetric algorithm of a storage key.
        symmetric: Option<SymDef>,
        /// The key's scheme.
        scheme: Scheme,
        /// The curve.
        curve: EccCurve,
        /// The KDF and its hash.
        kdf: Option<(u16, HashAlg)>,
        /// The point's x coordinate, big-endian.
        x: Vec<u8>,
        /// The point's y coordinate, big-endian.
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC: the public area of an RSA or ECC key, or a template for one
/// (a template is the same structure with the `unique` field used as a nonce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    /// The hash the object's name is computed with.
    pub name_alg: HashAlg,
    /// What the object may do.
    pub attributes: ObjectAttributes,
    /// The policy digest (empty when none).
    pub auth_policy: Vec<u8>,
    /// The algorithm-specific parameters and the public key.
    pub params: PublicParams,
}

impl PublicArea {
    /// Parses a TPMT_PUBLIC spanning exactly `data`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "TPMT_PUBLIC");
        let area = Self::read(&mut r)?;
        r.finish()?;
        if area.marshal() != data {
            return Err(StructureError::Invalid(
                "TPMT_PUBLIC encoding (not canonical)",
            ));
        }
        Ok(area)
    }

    /// Parses a TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC) spanning exactly `data`.
    pub fn parse_tpm2b(data: &[u8]) -> Result<Self> {
        Self::parse(tpm2b_contents(data, "TPM2B_PUBLIC")?)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let kind = r.u16()?;
        let name_alg = HashAlg::from_id(r.u16()?)?;
        let attributes = ObjectAttributes(r.u32()?);
        let auth_policy = r.tpm2b()?.to_vec();
        let params = match kind {
            alg::RSA => {
                let symmetric = read_sym(r)?;
                let scheme = read_scheme(r)?;
                let key_bits = r.u16()?;
                let exponent = r.u32()?;
                let modulus = r.tpm2b()?.to_vec();
                PublicParams::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            alg::ECC => {
                let symmetric = read_sym(r)?;
                let scheme = read_scheme(r)?;
                let curve = EccCurve::from_id(r.u16()?)?;
                let kdf_alg = r.u16()?;
                let kdf = if kdf_alg == alg::NULL {
                    None
                } else {
                    Some((kdf_alg, HashAlg::from_id(r.u16()?)?))
                };
                let x = r.tpm2b()?.to_vec();
                let y = r.tpm2b()?.to_vec();
                PublicParams::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            other => {
                return Err(StructureError::Unsupported {
                    what: "object type",
                    value: other.into(),
                });
            }
        };
        Ok(Self {
            name_alg,
            attributes,
            auth_policy,
            params,
        })
    }

    /// The TPMT_PUBLIC encoding.
    pub fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        match &self.params {
            PublicParams::Rsa { .. } => put_u16(&mut out, alg::RSA),
            PublicParams::Ecc { .. } => put_u16(&mut out, alg::ECC),
        }
        put_u16(&mut out, self.name_alg.id());
        put_u32(&mut out, self.attributes.0);
        put_tpm2b(&mut out, &self.auth_policy);
        match &self.params {
            PublicParams::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            } => {
                write_sym(&mut out, symmetric);
                write_scheme(&mut out, scheme);
                put_u16(&mut out, *key_bits);
                put_u32(&mut out, *exponent);
                put_tpm2b(&mut out, modulus);
            }
            PublicParams::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
                x,
                y,
            } => {
                write_sym(&mut out, symmetric);
                write_scheme(&mut out, scheme);
                put_u16(&mut out, curve.id());
                match kdf {
                    None => put_u16(&mut out, alg::NULL),
                    Some((id, h)) => {
                        put_u16(&mut out, *id);
                        put_u16(&mut out, h.id());
                    }
                }
                put_tpm2b(&mut out, x);
                put_tpm2b(&mut out, y);
            }
        }
        out
    }

    /// The TPM2B_PUBLIC encoding.
    pub fn marshal_tpm2b(&self) -> Vec<u8> {
        tpm2b(&self.marshal())
    }

    /// The object's name: nameAlg (2 bytes) followed by the nameAlg hash of the TPMT_PUBLIC.
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.id().to_be_bytes().to_vec();
        name.extend(self.name_alg.digest(&[&self.marshal()]));
        name
    }

    /// The key's symmetric definition (storage keys, EKs).
    pub fn symmetric(&self) -> Option<SymDef> {
        match &self.params {
            PublicParams::Rsa { symmetric, .. } | PublicParams::Ecc { symmetric, .. } => *symmetric,
        }
    }

    /// The key's scheme.
    pub fn scheme(&self) -> Scheme {
        match &self.params {
            PublicParams::Rsa { scheme, .. } | PublicParams::Ecc { scheme, .. } => *scheme,
        }
    }

    /// The public key as a DER SubjectPublicKeyInfo: rsaEncryption with NULL
    /// parameters and minimal INTEGERs (an exponent of 0 in the TPM means 65537), or
    /// id-ecPublicKey with the named curve and the uncompressed point, each coordinate
    /// left-padded to the field size. This is the form X.509 certificates and Go's
    /// `x509.MarshalPKIXPublicKey` produce, so hashes of it agree with other tools.
    pub fn spki(&self) -> Result<Vec<u8>> {
        match &self.params {
            PublicParams::Rsa {
                key_bits,
                exponent,
                modulus,
                ..
            } => {
                check_rsa_modulus(*key_bits, modulus)?;
                let e = if *exponent == 0 { 65537 } else { *exponent };
                Ok(tessera_core::der::rsa_spki_from_parts(
                    modulus,
                    &e.to_be_bytes(),
                ))
            }
            PublicParams::Ecc { curve, .. } => {
                let point = self.ec_point()?;
                Ok(tessera_core::der::ec_spki(&point, *curve == EccCurve::P384))
            }
        }
    }

    /// The uncompressed SEC1 point (0x04 || x || y) of an ECC key.
    pub fn ec_point(&self) -> Result<Vec<u8>> {
        let PublicParams::Ecc { curve, x, y, .. } = &self.params else {
            return Err(StructureError::Invalid("key type (not ECC)"));
        };
        let n = curve.field_size();
        let mut point = vec![0x04];
        point.extend(left_pad(x, n, "ECC x coordinate")?);
        point.extend(left_pad(y, n, "ECC y coordinate")?);
        Ok(point)
    }

    /// The RSA public key as a (modulus, exponent) pair of big-endian integers.
    pub fn rsa_parts(&self) -> Result<(&[u8], u32)> {
        let PublicParams::Rsa {
            key_bits,
            exponent,
            modulus,
            ..
        } = &self.params
        else {
            return Err(StructureError::Invalid("key type (not RSA)"));
        };
        check_rsa_modulus(*key_bits, modulus)?;
        Ok((modulus, if *exponent == 0 { 65537 } else { *exponent }))
    }

    /// Whether the key is RSA.
    pub fn is_rsa(&self) -> bool {
        matches!(self.params, PublicParams::Rsa { .. })
    }

    /// The key type in the terms of `tessera_core`, if it is one Tessera uses.
    pub fn key_type(&self) -> Option<tessera_core::key::KeyType> {
        use tessera_core::key::KeyType;
        match &self.params {
            PublicParams::Rsa { key_bits, .. } => match key_bits {
                2048 => Some(KeyType::Rsa2048),
                3072 => Some(KeyType::Rsa3072),
                4096 => Some(KeyType::Rsa4096),
                _ => None,
            },
            PublicParams::Ecc { curve, .. } => Some(match curve {
                EccCurve::P256 => KeyType::EcP256,
                EccCurve::P384 => KeyType::EcP384,
            }),
        }
    }

    /// The same area with an empty `unique` field: what it looks like as a template.
    pub fn without_unique(&self) -> Self {
        let mut t = self.clone();
        match &mut t.params {
            PublicParams::Rsa { modulus, .. } => modulus.clear(),
            PublicParams::Ecc { x, y, .. } => {
                x.clear();
                y.clear();
            }
        }
        t
    }
}

fn check_rsa_modulus(key_bits: u16, modulus: &[u8]) -> Result<()> {
    let expected = key_bits as usize / 8;
    if modulus.len() != expected || modulus.first().is_none_or(|b| b & 0x80 == 0) {
        return Err(StructureError::WrongSize {
            what: "RSA modulus",
            got: modulus.len(),
            expected,
        });
    }
    Ok(())
}

fn left_pad(v: &[u8], n: usize, what: &'static str) -> Result<Vec<u8>> {
    if v.is_empty() || v.len() > n {
        return Err(StructureError::WrongSize {
            what,
            got: v.len(),
            expected: n,
        });
    }
    let mut out = vec![0u8; n - v.len()];
    out.extend_from_slice(v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecc_area() -> PublicArea {
        PublicArea {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(0x0004_0072),
            auth_policy: vec![],
            params: PublicParams::Ecc {
                symmetric: None,
                scheme: Scheme::Ecdsa(HashAlg::Sha256),
                curve: EccCurve::P256,
                kdf: None,
                x: vec![1; 32],
                y: vec![2; 32],
            },
        }
    }

    fn rsa_area() -> PublicArea {
        let mut modulus = vec![0xc3; 256];
        modulus[255] = 0x01;
        PublicArea {
            name_alg: HashAlg::Sha256,
            attributes: ObjectAttributes(0x0005_0072),
            auth_policy: vec![9; 32],
            params: PublicParams::Rsa {
                symmetric: Some(SymDef::aes_cfb(128)),
                scheme: Scheme::RsaSsa(HashAlg::Sha256),
                key_bits: 2048,
                exponent: 0,
                modulus,
            },
        }
    }

    #[test]
    fn public_area_round_trips() {
        for area in [ecc_area(), rsa_area()] {
            let bytes = area.marshal();
            assert_eq!(PublicArea::parse(&bytes).unwrap(), area);
            assert_eq!(
                PublicArea::parse_tpm2b(&area.marshal_tpm2b()).unwrap(),
                area
            );
            let name = area.name();
            assert_eq!(&name[..2], &[0x00, 0x0b]);
            assert_eq!(name.len(), 34);
        }
    }

    #[test]
    fn truncated_and_padded_inputs_fail_cleanly() {
        for area in [ecc_area(), rsa_area()] {
            let bytes = area.marshal();
            for cut in 0..bytes.len() {
                assert!(PublicArea::parse(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                PublicArea::parse(&long),
                Err(StructureError::Trailing("TPMT_PUBLIC", 1))
            );
            // A TPM2B whose size disagrees with the data.
            let mut b = area.marshal_tpm2b();
            b[1] ^= 1;
            assert!(PublicArea::parse_tpm2b(&b).is_err());
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        // Flipping any byte must either fail or parse to something that re-marshals
        // to exactly the corrupted bytes; it must never panic.
        for area in [ecc_area(), rsa_area()] {
            let bytes = area.marshal();
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] ^= flip;
                    if let Ok(p) = PublicArea::parse(&b) {
                        assert_eq!(p.marshal(), b);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_type_and_hash_are_rejected() {
        let mut b = ecc_area().marshal();
        b[0..2].copy_from_slice(&alg::KEYEDHASH.to_be_bytes());
        assert!(matches!(
            PublicArea::parse(&b),
            Err(StructureError::Unsupported { .. })
        ));
        let mut b = ecc_area().marshal();
        b[2..4].copy_from_slice(&0x0012u16.to_be_bytes());
        assert!(matches!(
            PublicArea::parse(&b),
            Err(StructureError::Unsupported { .. })
        ));
    }

    #[test]
    fn spki_of_short_coordinates_is_padded() {
        let mut area = ecc_area();
        if let PublicParams::Ecc { x, .. } = &mut area.params {
            *x = vec![7; 31];
        }
        let point = area.ec_point().unwrap();
        assert_eq!(point.len(), 65);
        assert_eq!(point[1], 0);
        let spki = area.spki().unwrap();
        assert_eq!(
            tessera_core::key::key_type_of_spki(&spki),
            Some(tessera_core::key::KeyType::EcP256)
        );
        assert_eq!(
            tessera_core::key::key_type_of_spki(&rsa_area().spki().unwrap()),
            Some(tessera_core::key::KeyType::Rsa2048)
        );
        let mut bad = rsa_area();
        if let PublicParams::Rsa { modulus, .. } = &mut bad.params {
            modulus.pop();
        }
        assert!(bad.spki().is_err());
    }
}
