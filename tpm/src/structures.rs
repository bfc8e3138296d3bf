//! The TPM 2.0 wire structures the verifier half reads and the agent half writes:
//! TPMT_PUBLIC / TPM2B_PUBLIC (public areas and key templates), TPMS_ATTEST and
//! TPMT_SIGNATURE, with the constants they use (TPM 2.0 Part 2). Pure Rust, no TPM.
//!
//! Parsers take bytes from the network, so every read is bounds-checked and a
//! malformed input is an error, never a panic. A public area is re-marshalled after
//! parsing and must come out byte for byte the same: the object's name is a hash of
//! that encoding, so accepting a non-canonical one would let a name and a key disagree.

use std::fmt;

/// Why bytes are not the TPM structure they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StructureError {
    /// The input ended inside a field.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// Bytes were left over after the structure.
    #[error("{0} has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// A size field disagrees with the data it describes.
    #[error("{what} has a wrong size ({got}, expected {expected})")]
    WrongSize {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A field holds a value this crate does not handle.
    #[error("unsupported {what} 0x{value:04x}")]
    Unsupported { what: &'static str, value: u32 },
    /// A field holds a value the specification forbids here.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

type Result<T> = std::result::Result<T, StructureError>;

/// TPM_ALG_ID values (TPM 2.0 Part 2, 6.3).
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const MGF1: u16 = 0x0007;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAES: u16 = 0x0015;
    pub const RSAPSS: u16 = 0x0016;
    pub const OAEP: u16 = 0x0017;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDH: u16 = 0x0019;
    pub const ECDAA: u16 = 0x001A;
    pub const KDF1_SP800_56A: u16 = 0x0020;
    pub const KDF2: u16 = 0x0021;
    pub const KDF1_SP800_108: u16 = 0x0022;
    pub const ECC: u16 = 0x0023;
    pub const SYMCIPHER: u16 = 0x0025;
    pub const CFB: u16 = 0x0043;
}

/// TPM_ECC_CURVE values.
pub mod curve {
    pub const NIST_P256: u16 = 0x0003;
    pub const NIST_P384: u16 = 0x0004;
}

/// TPM_GENERATED_VALUE: the magic that starts every structure the TPM signs itself.
/// A restricted signing key signs nothing that starts with it unless the TPM made it.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// TPM_ST values for attestation structures.
pub mod st {
    pub const ATTEST_CERTIFY: u16 = 0x8017;
    pub const ATTEST_QUOTE: u16 = 0x8018;
}

/// TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
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

/// The hash algorithms this crate computes (names, KDFs, signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// From a TPM_ALG_ID.
    pub fn from_id(id: u16) -> Result<Self> {
        Ok(match id {
            alg::SHA1 => HashAlg::Sha1,
            alg::SHA256 => HashAlg::Sha256,
            alg::SHA384 => HashAlg::Sha384,
            alg::SHA512 => HashAlg::Sha512,
            other => {
                return Err(StructureError::Unsupported {
                    what: "hash algorithm",
                    value: other.into(),
                });
            }
        })
    }

    /// The TPM_ALG_ID.
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => alg::SHA1,
            HashAlg::Sha256 => alg::SHA256,
            HashAlg::Sha384 => alg::SHA384,
            HashAlg::Sha512 => alg::SHA512,
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub(crate) fn ring_digest(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    pub(crate) fn ring_hmac(self) -> ring::hmac::Algorithm {
        match self {
            HashAlg::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => ring::hmac::HMAC_SHA256,
            HashAlg::Sha384 => ring::hmac::HMAC_SHA384,
            HashAlg::Sha512 => ring::hmac::HMAC_SHA512,
        }
    }

    /// Hashes the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(self.ring_digest());
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().to_vec()
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = ring::hmac::Key::new(self.ring_hmac(), key);
        let mut ctx = ring::hmac::Context::with_key(&key);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign().as_ref().to_vec()
    }
}

/// A bounds-checked reader over TPM big-endian wire data.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(StructureError::Truncated(self.what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: a 16-bit size and that many bytes.
    pub(crate) fn tpm2b(&mut self) -> Result<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(StructureError::Trailing(self.what, self.data.len()))
        }
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a TPM2B. Callers keep contents under 64 KiB (every TPM2B this crate
/// writes is a key, digest or certificate-sized buffer); longer input is cut to
/// the size field so the output stays self-consistent.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, contents: &[u8]) {
    let n = contents.len().min(u16::MAX as usize);
    put_u16(out, n as u16);
    out.extend_from_slice(&contents[..n]);
}

/// Wraps bytes in a TPM2B (size prefix).
pub fn tpm2b(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 2);
    put_tpm2b(&mut out, contents);
    out
}

/// The contents of a TPM2B that must span exactly `data`.
pub fn tpm2b_contents<'a>(data: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    let mut r = Reader::new(data, what);
    let contents = r.tpm2b()?;
    r.finish()?;
    Ok(contents)
}

/// TPMT_SYM_DEF_OBJECT when it is not TPM_ALG_NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
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
    Null,
    RsaSsa(HashAlg),
    RsaPss(HashAlg),
    RsaEs,
    Oaep(HashAlg),
    Ecdsa(HashAlg),
    Ecdh(HashAlg),
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

/// The NIST curves this crate handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EccCurve {
    P256,
    P384,
}

impl EccCurve {
    /// From a TPM_ECC_CURVE.
    pub fn from_id(id: u16) -> Result<Self> {
        match id {
            curve::NIST_P256 => Ok(EccCurve::P256),
            curve::NIST_P384 => Ok(EccCurve::P384),
            other => Err(StructureError::Unsupported {
                what: "ECC curve",
                value: other.into(),
            }),
        }
    }

    /// The TPM_ECC_CURVE.
    pub fn id(self) -> u16 {
        match self {
            EccCurve::P256 => curve::NIST_P256,
            EccCurve::P384 => curve::NIST_P384,
        }
    }

    /// Size of a coordinate in bytes.
    pub fn field_size(self) -> usize {
        match self {
            EccCurve::P256 => 32,
            EccCurve::P384 => 48,
        }
    }
}

/// The algorithm-specific half of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicParams {
    /// TPMS_RSA_PARMS and TPM2B_PUBLIC_KEY_RSA. An exponent of 0 means 65537.
    Rsa {
        symmetric: Option<SymDef>,
        scheme: Scheme,
        key_bits: u16,
        exponent: u32,
        modulus: Vec<u8>,
    },
    /// TPMS_ECC_PARMS and TPMS_ECC_POINT. `kdf` is None for TPM_ALG_NULL.
    Ecc {
        symmetric: Option<SymDef>,
        scheme: Scheme,
        curve: EccCurve,
        kdf: Option<(u16, HashAlg)>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC: the public area of an RSA or ECC key, or a template for one
/// (a template is the same structure with the `unique` field used as a nonce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    pub name_alg: HashAlg,
    pub attributes: ObjectAttributes,
    pub auth_policy: Vec<u8>,
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

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
}

/// What an attestation structure attests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPMS_CERTIFY_INFO: the name and qualified name of the certified object.
    Certify {
        name: Vec<u8>,
        qualified_name: Vec<u8>,
    },
    /// Another kind (quote, time, ...), kept as raw bytes.
    Other(Vec<u8>),
}

/// A parsed TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub attested: Attested,
}

impl Attest {
    /// Parses a TPMS_ATTEST spanning exactly `data` (the bytes the TPM signed).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "TPMS_ATTEST");
        let magic = r.u32()?;
        let attest_type = r.u16()?;
        let qualified_signer = r.tpm2b()?.to_vec();
        let extra_data = r.tpm2b()?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(StructureError::Invalid("TPMS_CLOCK_INFO.safe")),
            },
        };
        let firmware_version = r.u64()?;
        let attested = if attest_type == st::ATTEST_CERTIFY {
            let name = r.tpm2b()?.to_vec();
            let qualified_name = r.tpm2b()?.to_vec();
            r.finish()?;
            Attested::Certify {
                name,
                qualified_name,
            }
        } else {
            Attested::Other(r.rest().to_vec())
        };
        Ok(Self {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        })
    }
}

/// A parsed TPMT_SIGNATURE (RSA or ECDSA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    RsaSsa {
        hash: HashAlg,
        sig: Vec<u8>,
    },
    RsaPss {
        hash: HashAlg,
        sig: Vec<u8>,
    },
    Ecdsa {
        hash: HashAlg,
        r: Vec<u8>,
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses a TPMT_SIGNATURE spanning exactly `data`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "TPMT_SIGNATURE");
        let sig_alg = r.u16()?;
        let sig = match sig_alg {
            alg::RSASSA => Signature::RsaSsa {
                hash: HashAlg::from_id(r.u16()?)?,
                sig: r.tpm2b()?.to_vec(),
            },
            alg::RSAPSS => Signature::RsaPss {
                hash: HashAlg::from_id(r.u16()?)?,
                sig: r.tpm2b()?.to_vec(),
            },
            alg::ECDSA => Signature::Ecdsa {
                hash: HashAlg::from_id(r.u16()?)?,
                r: r.tpm2b()?.to_vec(),
                s: r.tpm2b()?.to_vec(),
            },
            other => {
                return Err(StructureError::Unsupported {
                    what: "signature algorithm",
                    value: other.into(),
                });
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// The TPMT_SIGNATURE encoding.
    pub fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Signature::RsaSsa { hash, sig } => {
                put_u16(&mut out, alg::RSASSA);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, sig);
            }
            Signature::RsaPss { hash, sig } => {
                put_u16(&mut out, alg::RSAPSS);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, sig);
            }
            Signature::Ecdsa { hash, r, s } => {
                put_u16(&mut out, alg::ECDSA);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, r);
                put_tpm2b(&mut out, s);
            }
        }
        out
    }

    /// The hash the signature was made over.
    pub fn hash(&self) -> HashAlg {
        match self {
            Signature::RsaSsa { hash, .. }
            | Signature::RsaPss { hash, .. }
            | Signature::Ecdsa { hash, .. } => *hash,
        }
    }
}

/// Lower-case hex, for fingerprints, hashes and selectors.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
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

    #[test]
    fn attest_and_signature_parse_and_reject_garbage() {
        let mut a = Vec::new();
        put_u32(&mut a, TPM_GENERATED_VALUE);
        put_u16(&mut a, st::ATTEST_CERTIFY);
        put_tpm2b(&mut a, &[1, 2]);
        put_tpm2b(&mut a, b"nonce");
        a.extend_from_slice(&7u64.to_be_bytes());
        put_u32(&mut a, 1);
        put_u32(&mut a, 2);
        a.push(1);
        a.extend_from_slice(&9u64.to_be_bytes());
        put_tpm2b(&mut a, &[0, 0x0b, 5]);
        put_tpm2b(&mut a, &[0, 0x0b, 6]);
        let parsed = Attest::parse(&a).unwrap();
        assert_eq!(parsed.extra_data, b"nonce");
        assert_eq!(
            parsed.attested,
            Attested::Certify {
                name: vec![0, 0x0b, 5],
                qualified_name: vec![0, 0x0b, 6]
            }
        );
        for cut in 0..a.len() {
            assert!(Attest::parse(&a[..cut]).is_err());
        }
        let mut extra = a.clone();
        extra.push(0);
        assert!(Attest::parse(&extra).is_err());

        let sig = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: vec![1; 32],
            s: vec![2; 32],
        };
        let b = sig.marshal();
        assert_eq!(Signature::parse(&b).unwrap(), sig);
        for cut in 0..b.len() {
            assert!(Signature::parse(&b[..cut]).is_err());
        }
        assert!(Signature::parse(&[0x00, 0x10]).is_err());
        assert!(Signature::parse(&[]).is_err());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
