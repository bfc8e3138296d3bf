//! The few DER building blocks Tessera writes by hand: SubjectPublicKeyInfo for
//! software keys, and ECDSA signatures converted between the raw `r||s` form
//! (PKCS#11, TPM, JWS) and the DER form (X.509, TLS); and the two small readers
//! every crate shares: one TLV (its length) and a big-endian integer's magnitude.

/// Errors reading DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// A big-endian unsigned integer without its leading zero bytes (empty for zero):
/// the form ring and JWK want, and the one to compare magnitudes in.
pub fn trim_leading_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
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

/// Reads one TLV (a single-byte tag, a minimal definite length of at most four
/// bytes), returning (tag, contents, rest). The one DER length reader: data padded
/// after a DER value (a certificate in a TPM's NV index) is cut with `rest`.
pub fn read_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | *b as usize;
        }
        if len < 0x80 {
            return Err(DerError("non-minimal length"));
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(DerError("truncated contents"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
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

/// The contents of the subjectPublicKey BIT STRING of a SubjectPublicKeyInfo.
pub fn spki_public_key_bits(spki: &[u8]) -> Result<&[u8], DerError> {
    let (tag, body, _) = read_tlv(spki)?;
    if tag != 0x30 {
        return Err(DerError("SubjectPublicKeyInfo is not a SEQUENCE"));
    }
    let (_, _, rest) = read_tlv(body)?;
    let (tag, bits, _) = read_tlv(rest)?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return Err(DerError("subjectPublicKey is not a BIT STRING"));
    }
    Ok(&bits[1..])
}

/// Converts a raw `r||s` ECDSA signature (as PKCS#11 CKM_ECDSA and TPM2_Sign return
/// it) to the DER `Ecdsa-Sig-Value` X.509 and TLS use.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(DerError("raw ECDSA signature has odd or zero length"));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(ecdsa_parts_to_der(r, s))
}

/// Builds a DER ECDSA signature from big-endian `r` and `s`.
pub fn ecdsa_parts_to_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut seq = unsigned_integer(r);
    seq.extend(unsigned_integer(s));
    tlv(0x30, &seq)
}

/// Converts a DER ECDSA signature to fixed-width `r||s` (JWS), each half `width` bytes.
pub fn ecdsa_der_to_raw(der: &[u8], width: usize) -> Result<Vec<u8>, DerError> {
    let (tag, body, rest) = read_tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(DerError("ECDSA signature is not a single SEQUENCE"));
    }
    let (tag_r, r, body) = read_tlv(body)?;
    let (tag_s, s, body) = read_tlv(body)?;
    if tag_r != 0x02 || tag_s != 0x02 || !body.is_empty() {
        return Err(DerError("ECDSA signature is not two INTEGERs"));
    }
    let mut out = vec![0u8; width * 2];
    for (i, int) in [r, s].into_iter().enumerate() {
        let mag = trim_leading_zeros(int);
        if mag.len() > width {
            return Err(DerError("ECDSA signature integer wider than the curve"));
        }
        let start = i * width + width - mag.len();
        out[start..start + mag.len()].copy_from_slice(mag);
    }
    Ok(out)
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
    fn tlv_lengths_short_long_and_refused() {
        // Short form, with padding after the value.
        assert_eq!(
            read_tlv(&[0x30, 0x03, 1, 2, 3, 0, 0]).unwrap(),
            (0x30, &[1u8, 2, 3][..], &[0u8, 0][..])
        );
        // Long form, contents missing: refused rather than guessed.
        assert!(read_tlv(&[0x30, 0x82, 0x01, 0x00]).is_err());
        assert!(read_tlv(&[0x30]).is_err());
        // More than four length bytes, and a long form that should be short.
        assert!(read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(read_tlv(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn long_lengths() {
        let big = vec![0xab; 300];
        let t = tlv(0x04, &big);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, body, rest) = read_tlv(&t).unwrap();
        assert_eq!((tag, body.len(), rest.len()), (0x04, 300, 0));
    }
}
