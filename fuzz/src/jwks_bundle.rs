//! `jwks_bundle`: SPIFFE bundles as JWK Sets (`tessera_core::bundle`), from
//! any bytes, and JWT-SVID validation against them.
//!
//! Checked: a JWK Set that parses writes back (`to_jwks`) to one that parses
//! to the same authorities, sequence number and refresh hint; every X.509
//! authority it holds is a certificate and every JWT authority a
//! SubjectPublicKeyInfo with a key ID. Real tokens signed by the fixture keys, validated against
//! the parsed bundle, are accepted only when the bundle holds, under the
//! token's `kid`, the very key that signed it: a bundle can never make a
//! token verify with another key.

use tessera_core::Bundle;
use tessera_core::jwt::{sign_jwt_svid, validate_jwt_svid};

use crate::fixtures::{AUDIENCE, NOW, jwt_keys, trust_domain, workload_id};

/// One token per fixture key, each with that key's kid.
fn tokens() -> &'static [(String, Vec<u8>)] {
    static TOKENS: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    TOKENS.get_or_init(|| {
        jwt_keys()
            .keys
            .iter()
            .map(|(kid, key)| {
                let t = sign_jwt_svid(
                    &workload_id(),
                    &[AUDIENCE.to_owned()],
                    NOW,
                    NOW + 3600,
                    kid,
                    key.as_ref(),
                )
                .expect("signing a fixture token");
                (t.token, key.public_key_der().to_vec())
            })
            .collect()
    })
}

pub fn run(data: &[u8]) {
    let Ok(bundle) = Bundle::from_jwks(trust_domain(), data) else {
        return;
    };
    for der in bundle.x509_authorities() {
        assert!(
            x509_parser::parse_x509_certificate(der).is_ok(),
            "an X.509 authority that is not a certificate"
        );
    }
    for a in bundle.jwt_authorities() {
        assert!(!a.key_id.is_empty(), "a JWT authority without a key ID");
        assert!(
            tessera_core::der::spki_public_key_bits(&a.public_key_der).is_ok(),
            "a JWT authority that is not a SubjectPublicKeyInfo: {a:?}"
        );
    }
    let written = bundle.to_jwks();
    let again = Bundle::from_jwks(trust_domain(), written.as_bytes())
        .unwrap_or_else(|e| panic!("to_jwks wrote a bundle from_jwks refuses: {e}\n{written}"));
    assert!(
        again.same_authorities(&bundle),
        "the bundle changed through to_jwks/from_jwks:\n{bundle:?}\n{again:?}"
    );
    assert_eq!(again.sequence(), bundle.sequence());
    assert_eq!(again.refresh_hint(), bundle.refresh_hint());

    let audience = [AUDIENCE.to_owned()];
    for (token, signer) in tokens() {
        let found =
            |td: &tessera_core::TrustDomain| (td == bundle.trust_domain()).then_some(&bundle);
        if validate_jwt_svid(token, found, &audience, NOW).is_ok() {
            let header = token.split('.').next().unwrap_or_default();
            let header: serde_json::Value = serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                    .expect("fixture token header"),
            )
            .expect("fixture token header JSON");
            let kid = header["kid"].as_str().expect("fixture kid");
            let key = bundle
                .jwt_authority(kid)
                .expect("accepted with a kid the bundle lacks");
            assert_eq!(
                tessera_core::der::spki_public_key_bits(&key.public_key_der),
                tessera_core::der::spki_public_key_bits(signer),
                "a token verified with a key that did not sign it"
            );
        }
    }
}
