//! The PKCS #7 (CMS, RFC 5652) SignedData that carries an instance identity
//! document's RSA-2048 signature: just enough of it to check one signer. AWS sends it
//! in BER with indefinite lengths and the content as a constructed OCTET STRING, so
//! the reader here takes BER; the signed attributes, which the signature covers as
//! DER, must be DER.
//!
//! The checks: one signer, SHA-256, RSA PKCS #1 v1.5; the signer named by issuer and
//! serial number is the given certificate; the signed attributes say the content is
//! `data` and carry its SHA-256; the signature over them verifies with the
//! certificate's key. Only then is the embedded content handed back.

use x509_parser::prelude::*;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pkcs7Error {
    #[error("the PKCS #7 signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("the PKCS #7 signature uses {0}, which is not accepted (SHA-256 with RSA only)")]
    Algorithm(&'static str),
    #[error("the PKCS #7 signature names a signer other than the region's certificate")]
    OtherSigner,
    #[error("the PKCS #7 content does not match its signed digest")]
    Digest,
    #[error("the PKCS #7 signature does not verify with the region's certificate")]
    Signature,
}

use Pkcs7Error::Malformed;

/// Deepest nesting read; SignedData needs about eight levels.
const MAX_DEPTH: usize = 24;

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const CONSTRUCTED: u8 = 0x20;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;
const IMPLICIT_0: u8 = 0xa0;

/// One BER element.
#[derive(Debug)]
struct Node<'a> {
    tag: u8,
    /// The whole encoding (tag, length, contents; the end-of-contents octets too).
    raw: &'a [u8],
    /// The contents of a primitive element.
    value: &'a [u8],
    /// The elements inside a constructed one.
    children: Vec<Node<'a>>,
}

/// Reads one element from the start of `input`; returns it and the rest.
fn read(input: &[u8], depth: usize) -> Result<(Node<'_>, &[u8]), Pkcs7Error> {
    if depth > MAX_DEPTH {
        return Err(Malformed("nested too deeply"));
    }
    let (&tag, rest) = input.split_first().ok_or(Malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed("multi-byte tags are not used in SignedData"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(Malformed("truncated"))?;
    let constructed = tag & CONSTRUCTED != 0;
    if first == 0x80 {
        // Indefinite length: children up to the end-of-contents octets.
        if !constructed {
            return Err(Malformed("indefinite length on a primitive element"));
        }
        let mut children = Vec::new();
        loop {
            if rest.starts_with(&[0, 0]) {
                rest = &rest[2..];
                break;
            }
            if rest.is_empty() {
                return Err(Malformed("missing end-of-contents"));
            }
            let (child, after) = read(rest, depth + 1)?;
            children.push(child);
            rest = after;
        }
        let used = input.len() - rest.len();
        return Ok((
            Node {
                tag,
                raw: &input[..used],
                value: &[],
                children,
            },
            rest,
        ));
    }
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(Malformed("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    let header = input.len() - rest.len();
    if rest.len() < len {
        return Err(Malformed("truncated"));
    }
    let (value, after) = rest.split_at(len);
    let mut children = Vec::new();
    if constructed {
        let mut inner = value;
        while !inner.is_empty() {
            let (child, r) = read(inner, depth + 1)?;
            children.push(child);
            inner = r;
        }
    }
    Ok((
        Node {
            tag,
            raw: &input[..header + len],
            value: if constructed { &[] } else { value },
            children,
        },
        after,
    ))
}

impl<'a> Node<'a> {
    fn expect(&self, tag: u8, what: &'static str) -> Result<&Self, Pkcs7Error> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(Malformed(what))
        }
    }

    fn child(&self, i: usize, what: &'static str) -> Result<&Node<'a>, Pkcs7Error> {
        self.children.get(i).ok_or(Malformed(what))
    }

    /// The bytes of an OCTET STRING, primitive or constructed from pieces.
    fn octets(&self, out: &mut Vec<u8>) -> Result<(), Pkcs7Error> {
        match self.tag {
            OCTET_STRING => {
                out.extend_from_slice(self.value);
                Ok(())
            }
            t if t == OCTET_STRING | CONSTRUCTED => {
                for c in &self.children {
                    c.octets(out)?;
                }
                Ok(())
            }
            _ => Err(Malformed("the content is not an OCTET STRING")),
        }
    }

    /// The OID of an AlgorithmIdentifier.
    fn algorithm(&self) -> Result<&'a [u8], Pkcs7Error> {
        Ok(self
            .expect(SEQUENCE, "an algorithm is not a SEQUENCE")?
            .child(0, "an algorithm has no OID")?
            .expect(OID, "an algorithm has no OID")?
            .value)
    }
}

/// What verifies a signature: the region's certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    issuer: Vec<u8>,
    serial: Vec<u8>,
    spki_bits: Vec<u8>,
}

impl Signer {
    /// From a DER certificate with an RSA key.
    pub fn from_certificate(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        if cert.public_key().algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return Err("the certificate's key is not RSA".into());
        }
        Ok(Self {
            issuer: cert.issuer().as_raw().to_vec(),
            serial: tessera_core::der::trim_leading_zeros(cert.raw_serial()).to_vec(),
            spki_bits: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// Checks `signed_data` (DER or BER) against `signer`; returns the signed content.
pub fn verify(signed_data: &[u8], signer: &Signer) -> Result<Vec<u8>, Pkcs7Error> {
    let (ci, rest) = read(signed_data, 0)?;
    if !rest.is_empty() {
        return Err(Malformed("trailing bytes"));
    }
    ci.expect(SEQUENCE, "ContentInfo is not a SEQUENCE")?;
    if ci
        .child(0, "no content type")?
        .expect(OID, "no content type")?
        .value
        != OID_SIGNED_DATA
    {
        return Err(Malformed("the content type is not signedData"));
    }
    let sd = ci
        .child(1, "no SignedData")?
        .expect(CONTEXT_0, "no SignedData")?
        .child(0, "no SignedData")?
        .expect(SEQUENCE, "SignedData is not a SEQUENCE")?;
    // version, digestAlgorithms, encapContentInfo, [0] certificates, [1] crls,
    // signerInfos (the last element).
    let encap = sd
        .child(2, "no encapsulated content")?
        .expect(SEQUENCE, "encapContentInfo is not a SEQUENCE")?;
    if encap
        .child(0, "no eContentType")?
        .expect(OID, "no eContentType")?
        .value
        != OID_DATA
    {
        return Err(Malformed("the signed content is not data"));
    }
    let mut content = Vec::new();
    encap
        .child(1, "the content is not embedded")?
        .expect(CONTEXT_0, "the content is not embedded")?
        .child(0, "the content is empty")?
        .octets(&mut content)?;
    let signer_infos = sd
        .children
        .last()
        .ok_or(Malformed("no signerInfos"))?
        .expect(SET, "signerInfos is not a SET")?;
    let [si] = &signer_infos.children[..] else {
        return Err(Malformed("there is not exactly one signer"));
    };
    si.expect(SEQUENCE, "SignerInfo is not a SEQUENCE")?;
    // version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature
    let sid = si.child(1, "no signer identifier")?.expect(
        SEQUENCE,
        "the signer is not named by issuer and serial number",
    )?;
    let issuer = sid.child(0, "no issuer")?.expect(SEQUENCE, "no issuer")?;
    let serial = sid.child(1, "no serial")?.expect(INTEGER, "no serial")?;
    if issuer.raw != signer.issuer.as_slice()
        || tessera_core::der::trim_leading_zeros(serial.value) != signer.serial.as_slice()
    {
        return Err(Pkcs7Error::OtherSigner);
    }
    if si.child(2, "no digest algorithm")?.algorithm()? != OID_SHA256 {
        return Err(Pkcs7Error::Algorithm("a digest other than SHA-256"));
    }
    let (attrs, next) = match si.children.get(3) {
        Some(n) if n.tag == IMPLICIT_0 => (Some(n), 4),
        _ => (None, 3),
    };
    let sig_alg = si.child(next, "no signature algorithm")?.algorithm()?;
    if sig_alg != OID_RSA && sig_alg != OID_SHA256_RSA {
        return Err(Pkcs7Error::Algorithm("a signature other than RSA"));
    }
    let signature = si
        .child(next + 1, "no signature")?
        .expect(OCTET_STRING, "the signature is not an OCTET STRING")?
        .value;
    if si
        .children
        .get(next + 2)
        .is_some_and(|n| n.tag != CONTEXT_1)
    {
        return Err(Malformed("unexpected element after the signature"));
    }
    let signed: Vec<u8> = match attrs {
        None => content.clone(),
        Some(attrs) => {
            check_attributes(attrs, &content)?;
            // The signature covers the attributes as a DER SET OF.
            if attrs.raw.get(1) == Some(&0x80) {
                return Err(Malformed("the signed attributes are not DER"));
            }
            let mut der = attrs.raw.to_vec();
            der[0] = SET;
            der
        }
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &signer.spki_bits,
    )
    .verify(&signed, signature)
    .map_err(|_| Pkcs7Error::Signature)?;
    Ok(content)
}

/// The content type must be `data` and the message digest the content's SHA-256,
/// each exactly once.
fn check_attributes(attrs: &Node<'_>, content: &[u8]) -> Result<(), Pkcs7Error> {
    let mut content_type = None;
    let mut digest = None;
    for a in &attrs.children {
        a.expect(SEQUENCE, "an attribute is not a SEQUENCE")?;
        let oid = a.child(0, "an attribute has no type")?.value;
        let values = a
            .child(1, "an attribute has no values")?
            .expect(SET, "bad attribute")?;
        let slot = if oid == OID_CONTENT_TYPE {
            &mut content_type
        } else if oid == OID_MESSAGE_DIGEST {
            &mut digest
        } else {
            continue;
        };
        let [v] = &values.children[..] else {
            return Err(Malformed("an attribute does not hold exactly one value"));
        };
        if slot.replace(v.value).is_some() {
            return Err(Malformed("an attribute appears twice"));
        }
    }
    if content_type != Some(OID_DATA) {
        return Err(Malformed("the signed content type is not data"));
    }
    let want = ring::digest::digest(&ring::digest::SHA256, content);
    if digest != Some(want.as_ref()) {
        return Err(Pkcs7Error::Digest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ber_lengths_and_constructed_strings() {
        // SEQUENCE (indefinite) { OCTET STRING (constructed, indefinite) { "ab", "c" } }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0, 0, 0, 0,
        ];
        let (n, rest) = read(&ber, 0).unwrap();
        assert!(rest.is_empty());
        assert_eq!(n.raw.len(), ber.len());
        let mut out = Vec::new();
        n.children[0].octets(&mut out).unwrap();
        assert_eq!(out, b"abc");
        // Long-form definite length.
        let mut long = vec![0x04, 0x81, 200];
        long.extend([7u8; 200]);
        let (n, _) = read(&long, 0).unwrap();
        assert_eq!((n.value.len(), n.raw.len()), (200, 203));
        for bad in [
            &[0x30, 0x80, 0x04, 0x00][..],
            &[0x04, 0x80, 0, 0],
            &[0x04, 0x05, 1],
            &[0x1f, 0x01, 0x00],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
        ] {
            assert!(read(bad, 0).is_err(), "{bad:?}");
        }
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend([0x30, 0x80]);
        }
        assert!(matches!(
            read(&deep, 0),
            Err(Malformed("nested too deeply"))
        ));
    }
}
