//! The TPM 2.0 wire structures the verifier half reads and the agent half writes
//! (TPM 2.0 Part 2), pure Rust, no TPM: [`public`] (TPMT_PUBLIC / TPM2B_PUBLIC:
//! public areas and key templates, object names, public area to
//! SubjectPublicKeyInfo), [`attest`] (TPMS_ATTEST), [`signature`]
//! (TPMT_SIGNATURE), [`algorithm`] (hash algorithms and curves), and here the
//! constants, the bounds-checked reader and the writers they share.
//!
//! Parsers take bytes from the network, so every read is bounds-checked and a
//! malformed input is an error, never a panic. A public area is re-marshalled after
//! parsing and must come out byte for byte the same: the object's name is a hash of
//! that encoding, so accepting a non-canonical one would let a name and a key disagree.

pub mod algorithm;
pub mod attest;
pub mod public;
pub mod signature;

pub use algorithm::{EccCurve, HashAlg};
pub use attest::{Attest, Attested, ClockInfo};
pub use public::{ObjectAttributes, PublicArea, PublicParams, Scheme, SymDef};
pub use signature::Signature;

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
        /// The structure or field.
        what: &'static str,
        /// The size found.
        got: usize,
        /// The size it must be.
        expected: usize,
    },
    /// A field holds a value this crate does not handle.
    #[error("unsupported {what} 0x{value:04x}")]
    Unsupported {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// A field holds a value the specification forbids here.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

type Result<T> = std::result::Result<T, StructureError>;

/// TPM_ALG_ID values (TPM 2.0 Part 2, 6.3).
pub mod alg {
    /// `TPM_ALG_RSA`.
    pub const RSA: u16 = 0x0001;
    /// `TPM_ALG_SHA1`.
    pub const SHA1: u16 = 0x0004;
    /// `TPM_ALG_HMAC`.
    pub const HMAC: u16 = 0x0005;
    /// `TPM_ALG_AES`.
    pub const AES: u16 = 0x0006;
    /// `TPM_ALG_MGF1`.
    pub const MGF1: u16 = 0x0007;
    /// `TPM_ALG_KEYEDHASH`.
    pub const KEYEDHASH: u16 = 0x0008;
    /// `TPM_ALG_SHA256`.
    pub const SHA256: u16 = 0x000B;
    /// `TPM_ALG_SHA384`.
    pub const SHA384: u16 = 0x000C;
    /// `TPM_ALG_SHA512`.
    pub const SHA512: u16 = 0x000D;
    /// `TPM_ALG_NULL`.
    pub const NULL: u16 = 0x0010;
    /// `TPM_ALG_RSASSA`.
    pub const RSASSA: u16 = 0x0014;
    /// `TPM_ALG_RSAES`.
    pub const RSAES: u16 = 0x0015;
    /// `TPM_ALG_RSAPSS`.
    pub const RSAPSS: u16 = 0x0016;
    /// `TPM_ALG_OAEP`.
    pub const OAEP: u16 = 0x0017;
    /// `TPM_ALG_ECDSA`.
    pub const ECDSA: u16 = 0x0018;
    /// `TPM_ALG_ECDH`.
    pub const ECDH: u16 = 0x0019;
    /// `TPM_ALG_ECDAA`.
    pub const ECDAA: u16 = 0x001A;
    /// `TPM_ALG_KDF1_SP800_56A`.
    pub const KDF1_SP800_56A: u16 = 0x0020;
    /// `TPM_ALG_KDF2`.
    pub const KDF2: u16 = 0x0021;
    /// `TPM_ALG_KDF1_SP800_108`.
    pub const KDF1_SP800_108: u16 = 0x0022;
    /// `TPM_ALG_ECC`.
    pub const ECC: u16 = 0x0023;
    /// `TPM_ALG_SYMCIPHER`.
    pub const SYMCIPHER: u16 = 0x0025;
    /// `TPM_ALG_CFB`.
    pub const CFB: u16 = 0x0043;
}

/// TPM_ECC_CURVE values.
pub mod curve {
    /// `TPM_ECC_NIST_P256`.
    pub const NIST_P256: u16 = 0x0003;
    /// `TPM_ECC_NIST_P384`.
    pub const NIST_P384: u16 = 0x0004;
}

/// TPM_GENERATED_VALUE: the magic that starts every structure the TPM signs itself.
/// A restricted signing key signs nothing that starts with it unless the TPM made it.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// TPM_ST values for attestation structures.
pub mod st {
    /// `TPM_ST_ATTEST_CERTIFY`.
    pub const ATTEST_CERTIFY: u16 = 0x8017;
    /// `TPM_ST_ATTEST_QUOTE`.
    pub const ATTEST_QUOTE: u16 = 0x8018;
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

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
