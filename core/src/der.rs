//! DER for every crate. Reading goes through the RustCrypto `der`, `spki` and
//! `ecdsa` crates: splitting a DER value off what follows it, the key bits of a
//! SubjectPublicKeyInfo, and ECDSA signatures converted between the raw `r||s` form
//! (PKCS#11, TPM, JWS) and the DER form (X.509, TLS), checked against the curve.
//! Writing SubjectPublicKeyInfo for software, PKCS#11 and TPM keys stays here, by
//! hand: a few fixed structures that cannot fail. And the one big-endian zero trim.

use ::der::{Decode, Reader, SliceReader, Tagged, asn1::AnyRef};
use ecdsa::Signature;
use p256::NistP256;
use p384::NistP384;

/// Errors reading DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DerError {
    /// The bytes are not the DER expected.
    #[error("malformed DER ({what}): {source}")]
    Decode {
        /// What was being read.
        what: &'static str,
        /// The decoder's account.
        #[source]
        source: ::der::Error,
    },
    /// Well-formed, but not a value Tessera accepts here.
    #[error("malformed DER: {0}")]
    Unexpected(&'static str),
}

fn decoding(what: &'static str) -> impl FnOnce(::der::Error) -> DerError {
    move |source| DerError::Decode { what, source }
}

/// A big-endian unsigned integer without its leading zero bytes (empty for zero):
/// the form ring and JWK want, and the one to compare magnitudes in.
pub fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
}

/// Splits the DER SEQUENCE at the start of `data` (a certificate) from what follows
/// it: (the whole encoded SEQUENCE, the rest). Data padded after a certificate (a
/// TPM's NV index) or several certificates in a row are cut with this.
pub fn split_sequence(data: &[u8]) -> Result<(&[u8], &[u8]), DerError> {
    let mut reader = SliceReader::new(data).map_err(decoding("value"))?;
    let value = AnyRef::decode(&mut reader).map_err(decoding("value"))?;
    if value.tag() != ::der::Tag::Sequence {
        return Err(DerError::Unexpected("the value is not a SEQUENCE"));
    }
    let used = usize::try_from(reader.position()).map_err(decoding("value length"))?;
    Ok(data.split_at(used))
}

pub(crate) fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let magnitude = trim_leading_zeros(&bytes);
        out.push(0x80 | magnitude.len() as u8);
        out.extend_from_slice(magnitude);
    }
}

pub(crate) fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    write_len(&mut out, contents.len());
    out.extend_from_slice(contents);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed = trim_leading_zeros(magnitude);
    let mut contents = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() {
        contents.push(0);
    } else {
        if trimmed[0] & 0x80 != 0 {
            contents.push(0);
        }
        contents.extend_from_slice(trimmed);
    }
    tlv(0x02, &contents)
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut contents = Vec::with_capacity(bytes.len() + 1);
    contents.push(0);
    contents.extend_from_slice(bytes);
    tlv(0x03, &contents)
}

/// SubjectPublicKeyInfo for an EC point (uncompressed SEC1) on P-256 (`p384 == false`) or P-384.
pub fn ec_spki(point: &[u8], p384: bool) -> Vec<u8> {
    let mut alg = tlv(0x06, OID_EC_PUBLIC_KEY);
    alg.extend(tlv(0x06, if p384 { OID_P384 } else { OID_P256 }));
    let mut body = tlv(0x30, &alg);
    body.extend(bit_string(point));
    tlv(0x30, &body)
}

/// SubjectPublicKeyInfo for an RSA key given as a PKCS#1 RSAPublicKey DER.
pub fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut alg = tlv(0x06, OID_RSA_ENCRYPTION);
    alg.extend([0x05, 0x00]);
    let mut body = tlv(0x30, &alg);
    body.extend(bit_string(rsa_public_key));
    tlv(0x30, &body)
}

/// SubjectPublicKeyInfo for an RSA key from its modulus and exponent (big-endian).
pub fn rsa_spki_from_parts(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut seq = unsigned_integer(modulus);
    seq.extend(unsigned_integer(exponent));
    rsa_spki(&tlv(0x30, &seq))
}

/// The contents of a DER OCTET STRING that is the whole of `data`.
pub fn octet_string(data: &[u8]) -> Result<&[u8], DerError> {
    ::der::asn1::OctetStringRef::from_der(data)
        .map(|o| o.as_bytes())
        .map_err(decoding("OCTET STRING"))
}

/// The contents of the subjectPublicKey BIT STRING of a SubjectPublicKeyInfo (an EC
/// point, or an RSA key's PKCS#1 DER).
pub fn spki_public_key_bits(spki: &[u8]) -> Result<&[u8], DerError> {
    spki::SubjectPublicKeyInfoRef::from_der(spki)
        .map_err(decoding("SubjectPublicKeyInfo"))?
        .subject_public_key
        .as_bytes()
        .ok_or(DerError::Unexpected("subjectPublicKey is not whole bytes"))
}

const OUT_OF_RANGE: DerError =
    DerError::Unexpected("ECDSA r or s is zero or not below the curve order");

/// Converts a raw `r||s` ECDSA signature (as PKCS#11 CKM_ECDSA returns it: 64 bytes
/// on P-256, 96 on P-384) to the DER `Ecdsa-Sig-Value` X.509 and TLS use.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    let der = match raw.len() {
        64 => Signature::<NistP256>::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec()),
        96 => Signature::<NistP384>::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec()),
        _ => {
            return Err(DerError::Unexpected(
                "a raw ECDSA signature is 64 (P-256) or 96 (P-384) bytes",
            ));
        }
    };
    der.map_err(|_| OUT_OF_RANGE)
}

/// Builds a DER ECDSA signature from big-endian `r` and `s` as a TPM returns them
/// (without their leading zeros), for a curve whose scalars are `width` bytes.
pub fn ecdsa_parts_to_der(r: &[u8], s: &[u8], width: usize) -> Result<Vec<u8>, DerError> {
    let (r, s) = (trim_leading_zeros(r), trim_leading_zeros(s));
    if r.len() > width || s.len() > width {
        return Err(DerError::Unexpected("ECDSA r or s is wider than the curve"));
    }
    let mut raw = vec![0u8; 2 * width];
    raw[width - r.len()..width].copy_from_slice(r);
    raw[2 * width - s.len()..].copy_from_slice(s);
    ecdsa_raw_to_der(&raw)
}

/// Converts a DER ECDSA signature to fixed-width `r||s` (JWS), each half `width`
/// bytes (32 on P-256, 48 on P-384).
pub fn ecdsa_der_to_raw(der: &[u8], width: usize) -> Result<Vec<u8>, DerError> {
    let raw = match width {
        32 => Signature::<NistP256>::from_der(der).map(|s| s.to_bytes().to_vec()),
        48 => Signature::<NistP384>::from_der(der).map(|s| s.to_bytes().to_vec()),
        _ => return Err(DerError::Unexpected("ECDSA scalars are 32 or 48 bytes")),
    };
    raw.map_err(|_| {
        DerError::Unexpected("not a DER ECDSA signature with r and s in range for the curve")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_der_round_trip() {
        // r with high bit set (needs a 0x00 pad), s with leading zeros (must be trimmed).
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80;
        raw[31] = 1;
        raw[34] = 0x7f;
        raw[63] = 9;
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
        assert!(ecdsa_der_to_raw(&der, 16).is_err());
        assert!(ecdsa_der_to_raw(&der[..der.len() - 1], 32).is_err());
    }

    #[test]
    fn integers_are_minimal() {
        assert_eq!(trim_leading_zeros(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(trim_leading_zeros(&[0, 0]), &[] as &[u8]);
        assert_eq!(trim_leading_zeros(&[]), &[] as &[u8]);
        assert_eq!(unsigned_integer(&[0, 0]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0, 0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0, 0x7f]), [0x02, 0x01, 0x7f]);
    }

    #[test]
    fn ecdsa_for_both_curves_and_refusals() {
        // P-384: r short (a TPM drops leading zeros), s full width.
        let der = ecdsa_parts_to_der(&[0, 0, 5], &[0x7f; 48], 48).unwrap();
        let raw = ecdsa_der_to_raw(&der, 48).unwrap();
        assert_eq!(raw.len(), 96);
        assert_eq!(&raw[..48], &[[0u8; 47].as_slice(), &[5]].concat()[..]);
        assert_eq!(&raw[48..], &[0x7f; 48]);
        assert_eq!(ecdsa_raw_to_der(&raw).unwrap(), der);
        // Zero, wider than the curve, or at/above the order: refused.
        assert!(ecdsa_parts_to_der(&[], &[1], 32).is_err());
        assert!(ecdsa_parts_to_der(&[1; 33], &[1], 32).is_err());
        assert!(ecdsa_raw_to_der(&[0xff; 64]).is_err());
        // A signature for one curve is not read as the other's.
        assert!(ecdsa_der_to_raw(&der, 32).is_err());
        // Trailing bytes after the SEQUENCE are refused.
        let mut padded = der.clone();
        padded.push(0);
        assert!(ecdsa_der_to_raw(&padded, 48).is_err());
    }

    #[test]
    fn sequences_split_from_what_follows() {
        // Short form, with padding after the value.
        assert_eq!(
            split_sequence(&[0x30, 0x03, 2, 1, 3, 0, 0]).unwrap(),
            (&[0x30u8, 0x03, 2, 1, 3][..], &[0u8, 0][..])
        );
        // Long form.
        let big = tlv(0x30, &tlv(0x04, &[0xab; 300]));
        assert_eq!(&big[..4], &[0x30, 0x82, 0x01, 0x30]);
        let mut two = big.clone();
        two.extend_from_slice(&big);
        let (first, rest) = split_sequence(&two).unwrap();
        assert_eq!((first, rest), (&big[..], &big[..]));
        // Contents missing, no length, a long form that should be short, not a
        // SEQUENCE: refused rather than guessed.
        assert!(split_sequence(&[0x30, 0x82, 0x01, 0x00]).is_err());
        assert!(split_sequence(&[0x30]).is_err());
        assert!(split_sequence(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_err());
        assert!(split_sequence(&[0x04, 0x01, 0]).is_err());
        assert!(split_sequence(&[]).is_err());
    }

    #[test]
    fn octet_strings_whole_or_refused() {
        assert_eq!(octet_string(&[0x04, 2, 7, 8]).unwrap(), &[7, 8]);
        assert!(octet_string(&[0x04, 2, 7]).is_err());
        assert!(octet_string(&[0x04, 1, 7, 8]).is_err());
        assert!(octet_string(&[0x03, 1, 0]).is_err());
    }

    #[test]
    fn spki_bits_of_the_keys_written_here() {
        let point = [4u8; 65];
        assert_eq!(
            spki_public_key_bits(&ec_spki(&point, false)).unwrap(),
            &point
        );
        let rsa = rsa_spki_from_parts(&[0x80; 256], &[1, 0, 1]);
        let bits = spki_public_key_bits(&rsa).unwrap();
        assert_eq!(bits[0], 0x30);
        assert!(spki_public_key_bits(&rsa[..rsa.len() - 1]).is_err());
        assert!(spki_public_key_bits(b"junk").is_err());
    }
}
