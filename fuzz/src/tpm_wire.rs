//! `tpm_wire`: TPM 2.0 structures as the server reads them from agents
//! (`tessera_tpm::wire`), and the verifier's checks built on them. The first
//! byte picks the structure, the rest is its bytes.
//!
//! Checked: a TPMT_PUBLIC that parses is canonical (it marshals back to exactly
//! the input, so its name is the name of those bytes) and parses again to the
//! same value, and so does its TPM2B form; when it yields a key, the
//! SubjectPublicKeyInfo it writes is DER that x509-parser reads back to the
//! same key material; the EK and AK checks never panic and an area they accept
//! has the key they require. A TPMS_ATTEST that parses is read losslessly
//! (written back field by field, it is the input). A TPMT_SIGNATURE that parses
//! marshals back to the input. A Certify the verifier accepts really says what
//! it was asked: TPM-generated, a Certify, the expected name and qualifying
//! data, signed by the AK (checked again with ring directly).

use tessera_tpm::attestation::public_matches_spki;
use tessera_tpm::verifier::ak::check_ak_public;
use tessera_tpm::verifier::certify::verify_certify;
use tessera_tpm::verifier::ek::{check_ek_public, kind_of, matches_template};
use tessera_tpm::wire::{
    Attest, Attested, HashAlg, PublicArea, PublicParams, Signature, TPM_GENERATED_VALUE, st, tpm2b,
    tpm2b_contents,
};

use crate::fixtures;

pub fn run(data: &[u8]) {
    let Some((mode, bytes)) = crate::split_mode(data) else {
        return;
    };
    match mode % 5 {
        0 => public(bytes),
        1 => attest(bytes),
        2 => signature(bytes),
        3 => certify(bytes),
        _ => {
            // A TPM2B_PUBLIC, as the EK and AK come in some payloads.
            if let Ok(area) = PublicArea::parse_tpm2b(bytes) {
                assert_eq!(area.marshal_tpm2b(), bytes, "TPM2B_PUBLIC not canonical");
                public(&area.marshal());
            }
            if let Ok(inner) = tpm2b_contents(bytes, "fuzz") {
                assert_eq!(tpm2b(inner), bytes, "TPM2B round trip");
            }
        }
    }
}

fn public(bytes: &[u8]) {
    let Ok(area) = PublicArea::parse(bytes) else {
        return;
    };
    assert_eq!(
        area.marshal(),
        bytes,
        "a parsed TPMT_PUBLIC is not canonical"
    );
    assert_eq!(
        PublicArea::parse(&area.marshal()).as_ref(),
        Ok(&area),
        "TPMT_PUBLIC does not parse back to itself"
    );
    assert_eq!(
        PublicArea::parse_tpm2b(&area.marshal_tpm2b()).as_ref(),
        Ok(&area),
        "TPM2B_PUBLIC does not parse back"
    );
    let name = area.name();
    assert_eq!(&name[..2], &area.name_alg.id().to_be_bytes());
    assert_eq!(name.len(), 2 + area.name_alg.size());
    assert_eq!(name[2..], area.name_alg.digest(&[bytes])[..]);

    let template = area.without_unique();
    assert_eq!(
        PublicArea::parse(&template.marshal()).as_ref(),
        Ok(&template),
        "the template form does not round-trip"
    );

    if let Ok(spki) = area.spki() {
        let (rest, parsed) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
                '_,
                x509_parser::error::X509Error,
            >>::from_der(&spki)
            .unwrap_or_else(|e| panic!("spki() wrote DER x509-parser refuses: {e}"));
        assert!(rest.is_empty(), "spki() wrote trailing bytes");
        assert_eq!(parsed.raw, &spki[..]);
        assert!(
            public_matches_spki(&area, &spki),
            "the public area does not match its own SPKI"
        );
        match &area.params {
            PublicParams::Rsa { .. } => {
                let (n, _) = area.rsa_parts().expect("spki() succeeded on this RSA key");
                assert!(n[0] & 0x80 != 0, "an RSA modulus without its top bit");
            }
            PublicParams::Ecc { curve, .. } => {
                let point = area.ec_point().expect("spki() succeeded on this ECC key");
                assert_eq!(point.len(), 1 + 2 * curve.field_size());
                assert_eq!(
                    tessera_core::der::spki_public_key_bits(&spki),
                    Ok(&point[..])
                );
            }
        }
    }
    if let Ok(template) = check_ek_public(&area) {
        assert!(matches_template(template, &area));
        assert!(area.spki().is_ok(), "an accepted EK has no usable key");
    }
    if let Some(kind) = kind_of(&area) {
        assert_eq!(area.without_unique(), kind.template().without_unique());
    }
    if check_ak_public(&area).is_ok() {
        assert!(area.spki().is_ok(), "an accepted AK has no usable key");
        assert_ne!(area.name_alg, HashAlg::Sha1);
    }
}

/// A TPMS_ATTEST written back from its fields.
fn marshal_attest(a: &Attest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&a.magic.to_be_bytes());
    out.extend_from_slice(&a.attest_type.to_be_bytes());
    out.extend(tpm2b(&a.qualified_signer));
    out.extend(tpm2b(&a.extra_data));
    out.extend_from_slice(&a.clock_info.clock.to_be_bytes());
    out.extend_from_slice(&a.clock_info.reset_count.to_be_bytes());
    out.extend_from_slice(&a.clock_info.restart_count.to_be_bytes());
    out.push(u8::from(a.clock_info.safe));
    out.extend_from_slice(&a.firmware_version.to_be_bytes());
    match &a.attested {
        Attested::Certify {
            name,
            qualified_name,
        } => {
            out.extend(tpm2b(name));
            out.extend(tpm2b(qualified_name));
        }
        Attested::Other(rest) => out.extend_from_slice(rest),
    }
    out
}

fn attest(bytes: &[u8]) {
    let Ok(a) = Attest::parse(bytes) else {
        return;
    };
    assert_eq!(
        marshal_attest(&a),
        bytes,
        "TPMS_ATTEST is not read losslessly"
    );
    if matches!(a.attested, Attested::Certify { .. }) {
        assert_eq!(a.attest_type, st::ATTEST_CERTIFY);
    }
}

fn signature(bytes: &[u8]) {
    let Ok(sig) = Signature::parse(bytes) else {
        return;
    };
    assert_eq!(sig.marshal(), bytes, "TPMT_SIGNATURE is not canonical");
    assert_eq!(Signature::parse(&sig.marshal()).as_ref(), Ok(&sig));
}

/// The fuzzer's bytes as a Certify by the fixture AK: an attestation, and a
/// signature that is either the fuzzer's or a real one over those bytes (so the
/// checks after the signature are reached).
fn certify(bytes: &[u8]) {
    let tpm = fixtures::tpm();
    let Some((&flags, bytes)) = bytes.split_first() else {
        return;
    };
    let (attest, sig) = if flags & 1 == 0 {
        (bytes.to_vec(), tpm.ak.sign(bytes))
    } else {
        let cut = usize::from(flags >> 1).min(bytes.len());
        let (sig, attest) = bytes.split_at(cut);
        (attest.to_vec(), sig.to_vec())
    };
    let expected_name = tpm.devid.public.name();
    let qualifying: &[u8] = if flags & 2 == 0 { b"" } else { b"nonce" };
    let Ok(parsed) = verify_certify(&tpm.ak.public, &attest, &sig, &expected_name, qualifying)
    else {
        return;
    };
    assert_eq!(parsed.magic, TPM_GENERATED_VALUE);
    assert_eq!(parsed.attest_type, st::ATTEST_CERTIFY);
    assert_eq!(parsed.extra_data, qualifying);
    assert!(
        matches!(&parsed.attested, Attested::Certify { name, .. } if *name == expected_name),
        "a Certify of another object was accepted"
    );
    // The signature, checked again without the crate's verifier.
    let Ok(Signature::Ecdsa { hash, r, s }) = Signature::parse(&sig) else {
        panic!("an accepted Certify's signature is not the AK's ECDSA");
    };
    let alg = match hash {
        HashAlg::Sha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        HashAlg::Sha384 => &ring::signature::ECDSA_P256_SHA384_ASN1,
        other => panic!("a Certify signed with {other:?} on P-256 was accepted"),
    };
    let der = tessera_core::der::ecdsa_parts_to_der(&r, &s, 32)
        .expect("an accepted Certify's r and s are in range for P-256");
    let point = tpm.ak.public.ec_point().expect("fixture AK point");
    ring::signature::UnparsedPublicKey::new(alg, point)
        .verify(&attest, &der)
        .expect("an accepted Certify's signature does not verify");
}
