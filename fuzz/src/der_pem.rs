//! `der_pem`: the DER and PEM helpers every crate shares (`tessera_core::der`,
//! `tessera_core::pem` and the concatenated-DER reader in `tessera_core::x509`),
//! from any bytes.
//!
//! Checked: `split_sequence` accepts exactly a SEQUENCE tag, a minimal length and
//! that many bytes (written again here, the pieces give back the input); splitting
//! concatenated certificates gives pieces that concatenate back to the input;
//! the big-endian zero trim keeps the value; ECDSA signatures convert between
//! DER and `r||s` and back to the same bytes; SubjectPublicKeyInfo built from
//! an RSA modulus and exponent or an EC point reads back (with x509-parser and
//! the crate's own reader) to the same key; PEM written by `to_pem` reads back
//! to the same DER, and PEM it reads writes back to the same DER.

use tessera_core::der::{
    ec_spki, ecdsa_der_to_raw, ecdsa_raw_to_der, rsa_spki_from_parts, spki_public_key_bits,
    split_sequence, trim_leading_zeros,
};
use tessera_core::x509::{pem_certs, split_concatenated, to_pem};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// A DER length, minimal, as the standard wants it.
fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let magnitude = trim_leading_zeros(&bytes);
    let mut out = vec![0x80 | magnitude.len() as u8];
    out.extend_from_slice(magnitude);
    out
}

pub fn run(data: &[u8]) {
    tlv(data);
    concatenated(data);
    trim(data);
    ecdsa(data);
    spki(data);
    pem(data);
}

/// The length of the tag and length octets at the start of an encoded value.
fn header_len(value: &[u8]) -> usize {
    match value.get(1) {
        Some(&first) if first >= 0x80 => 2 + usize::from(first & 0x7f),
        _ => 2,
    }
}

fn tlv(data: &[u8]) {
    let Ok((whole, rest)) = split_sequence(data) else {
        return;
    };
    assert_eq!(
        [whole, rest].concat(),
        data,
        "split_sequence lost or added bytes"
    );
    let header = header_len(whole);
    let mut again = vec![0x30];
    again.extend(der_len(whole.len() - header));
    assert_eq!(
        again,
        whole[..header],
        "split_sequence accepted a non-minimal or misread length, or another tag"
    );
}

fn concatenated(data: &[u8]) {
    let Ok(pieces) = split_concatenated(data) else {
        return;
    };
    assert_eq!(
        pieces.concat(),
        data,
        "split_concatenated lost or added bytes"
    );
    for p in &pieces {
        let (whole, rest) = split_sequence(p).expect("each piece is one SEQUENCE");
        assert_eq!(whole, &p[..]);
        assert!(rest.is_empty());
    }
}

fn trim(data: &[u8]) {
    let t = trim_leading_zeros(data);
    assert!(data.ends_with(t));
    assert!(t.first() != Some(&0));
    assert!(data[..data.len() - t.len()].iter().all(|b| *b == 0));
}

fn ecdsa(data: &[u8]) {
    if let Ok(der) = ecdsa_raw_to_der(data) {
        let width = data.len() / 2;
        assert_eq!(
            ecdsa_der_to_raw(&der, width).as_deref(),
            Ok(data),
            "raw -> DER -> raw"
        );
    }
    for width in [32, 48, 66] {
        if let Ok(raw) = ecdsa_der_to_raw(data, width) {
            assert_eq!(raw.len(), 2 * width);
            let der = ecdsa_raw_to_der(&raw).expect("a raw signature of even length");
            assert_eq!(
                ecdsa_der_to_raw(&der, width),
                Ok(raw.clone()),
                "DER -> raw -> DER -> raw"
            );
            // What was written is one whole SEQUENCE.
            let (whole, rest) = split_sequence(&der).expect("the written DER is a SEQUENCE");
            assert_eq!(whole, &der[..]);
            assert!(rest.is_empty());
        }
    }
}

fn spki(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (n, e) = rest.split_at(usize::from(cut).min(rest.len()));
    let rsa = rsa_spki_from_parts(n, e);
    let (left, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&rsa)
        .unwrap_or_else(|err| panic!("rsa_spki_from_parts wrote DER x509-parser refuses: {err}"));
    assert!(left.is_empty());
    match info.parsed() {
        Ok(PublicKey::RSA(key)) => {
            assert_eq!(trim_leading_zeros(key.modulus), trim_leading_zeros(n));
            assert_eq!(trim_leading_zeros(key.exponent), trim_leading_zeros(e));
        }
        other => panic!("rsa_spki_from_parts wrote {other:?}"),
    }
    for p384 in [false, true] {
        let ec = ec_spki(rest, p384);
        assert_eq!(
            spki_public_key_bits(&ec),
            Ok(rest),
            "ec_spki / spki_public_key_bits"
        );
        let (left, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ec)
            .unwrap_or_else(|err| panic!("ec_spki wrote DER x509-parser refuses: {err}"));
        assert!(left.is_empty());
        assert_eq!(&*info.subject_public_key.data, rest);
    }
    if let Ok(bits) = spki_public_key_bits(data) {
        // (An empty key is in every input; `windows(0)` would panic.)
        assert!(bits.is_empty() || data.windows(bits.len()).any(|w| w == bits));
    }
}

fn pem(data: &[u8]) {
    let written = to_pem("CERTIFICATE", data);
    if !data.is_empty() {
        assert_eq!(
            pem_certs(written.as_bytes()).ok().as_deref(),
            Some(&[data.to_vec()][..]),
            "to_pem -> pem_certs"
        );
    }
    if let Ok(ders) = pem_certs(data) {
        let text: String = ders.iter().map(|d| to_pem("CERTIFICATE", d)).collect();
        assert_eq!(
            pem_certs(text.as_bytes()).ok(),
            Some(ders),
            "pem_certs -> to_pem -> pem_certs"
        );
    }
}
