//! `csr`: PKCS#10 certificate signing requests as the server reads them from
//! agents (`tessera_core::x509::csr_public_key`), from any bytes.
//!
//! Checked: a CSR the server accepts is one DER value with nothing after it,
//! carries a key Tessera signs for (EC P-256 or P-384, RSA 2048 to 4096), and
//! the key returned is the CSR's own SubjectPublicKeyInfo, under which the
//! CSR's signature verifies when checked again here with ring (proof of
//! possession). Asked for a given SPIFFE ID, the server accepts only CSRs
//! whose URI SANs all name that ID, and then returns the same key as when no
//! ID is asked for.

use tessera_core::key::{KeyType, key_type_of_spki};
use tessera_core::x509::csr_public_key;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::fixtures::workload_id;

pub fn run(data: &[u8]) {
    let any = csr_public_key(data, None);
    let expected = workload_id();
    let for_id = csr_public_key(data, Some(&expected));
    if let Ok(spki) = &for_id {
        assert_eq!(
            any.as_ref(),
            Ok(spki),
            "accepted for an ID but not without one"
        );
    }
    let Ok(spki) = any else {
        return;
    };
    let (rest, csr) = X509CertificationRequest::from_der(data).expect("an accepted CSR parses");
    assert!(rest.is_empty(), "an accepted CSR has trailing bytes");
    assert_eq!(
        csr.certification_request_info.subject_pki.raw,
        &spki[..],
        "the key returned is not the CSR's"
    );
    let key_type = key_type_of_spki(&spki).expect("an accepted CSR has a key Tessera signs for");
    verify(&csr, key_type, &spki);
    if for_id.is_ok() {
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        assert_eq!(
                            tessera_core::SpiffeId::new(uri).as_ref(),
                            Ok(&expected),
                            "a CSR naming another ID was accepted"
                        );
                    }
                }
            }
        }
    }
}

/// The CSR's signature, checked with ring.
fn verify(csr: &X509CertificationRequest<'_>, key_type: KeyType, spki: &[u8]) {
    use ring::signature as s;
    let oid = csr.signature_algorithm.algorithm.to_id_string();
    let alg: &dyn s::VerificationAlgorithm = match (oid.as_str(), key_type) {
        ("1.2.840.10045.4.3.2", KeyType::EcP256) => &s::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", KeyType::EcP256) => &s::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.2", KeyType::EcP384) => &s::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", KeyType::EcP384) => &s::ECDSA_P384_SHA384_ASN1,
        ("1.2.840.113549.1.1.11", k) if k.is_rsa() => &s::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", k) if k.is_rsa() => &s::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", k) if k.is_rsa() => &s::RSA_PKCS1_2048_8192_SHA512,
        (other, k) => panic!("a CSR signed with {other} by a {k:?} key was accepted"),
    };
    let bits = tessera_core::der::spki_public_key_bits(spki).expect("accepted SPKI");
    s::UnparsedPublicKey::new(alg, bits)
        .verify(
            csr.certification_request_info.raw,
            &csr.signature_value.data,
        )
        .expect("an accepted CSR's signature does not verify");
}
