//! `jwt_svid`: JWT-SVID validation (`tessera_core::jwt`) with arbitrary tokens
//! against a bundle of the fixture keys (P-256, P-384, RSA-2048), and minting.
//! The first byte picks: even, the rest is a token to validate; odd, the rest
//! says what to mint (a path, audiences, times, which key).
//!
//! Checked for validation: a token the validator accepts really is a JWT-SVID
//! for this bundle, checked again here without it: three base64url parts, an
//! allowed `alg` that fits the key its `kid` names in the bundle, a signature
//! that ring verifies with that key over the first two parts, a `sub` that is
//! a SPIFFE ID of the bundle's trust domain, `exp` not past (with the leeway),
//! and the audience asked for among `aud`; what the validator returns is what
//! the token says. A token whose `alg` is not on the allow-list is refused for
//! that reason before anything else is looked at. For minting: whatever the
//! signer accepts validates, with the same ID, audience and times.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tessera_core::jwt::{ALLOWED_ALGS, JwtError, LEEWAY_SECONDS, sign_jwt_svid, validate_jwt_svid};
use tessera_core::{Bundle, TrustDomain};

use crate::fixtures::{AUDIENCE, NOW, jwt_keys, trust_domain};

fn bundle_for(td: &TrustDomain) -> Option<&'static Bundle> {
    (td == jwt_keys().bundle.trust_domain()).then_some(&jwt_keys().bundle)
}

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = crate::split_mode(data) else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            validate(token);
        }
    } else {
        mint(rest);
    }
}

fn json_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn validate(token: &str) {
    let audience = vec![AUDIENCE.to_owned()];
    let result = validate_jwt_svid(token, bundle_for, &audience, NOW);

    let parts: Vec<&str> = token.split('.').collect();
    let header = (parts.len() == 3).then(|| json_part(parts[0])).flatten();
    if let Some(alg) = header
        .as_ref()
        .map(|h| h.get("alg").and_then(Value::as_str))
        && !ALLOWED_ALGS.contains(&alg.unwrap_or(""))
    {
        assert!(
            matches!(result, Err(JwtError::DisallowedAlg(_))),
            "a token with alg {alg:?} was not refused for it: {result:?}"
        );
    }
    let Ok(svid) = result else {
        return;
    };
    let header = header.expect("an accepted token has a JSON header");
    let claims = json_part(parts[1]).expect("an accepted token has JSON claims");
    let alg = header["alg"].as_str().expect("alg");
    let kid = header["kid"].as_str().expect("kid");
    let authority = jwt_keys()
        .bundle
        .jwt_authority(kid)
        .expect("an accepted token's kid is in the bundle");
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("an accepted token's signature is base64url");
    use ring::signature as s;
    let verifier: &dyn s::VerificationAlgorithm = match alg {
        "ES256" => &s::ECDSA_P256_SHA256_FIXED,
        "ES384" => &s::ECDSA_P384_SHA384_FIXED,
        "RS256" => &s::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => &s::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &s::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => &s::RSA_PSS_2048_8192_SHA256,
        "PS384" => &s::RSA_PSS_2048_8192_SHA384,
        "PS512" => &s::RSA_PSS_2048_8192_SHA512,
        other => panic!("a token with alg {other:?} was accepted"),
    };
    let key = tessera_core::der::spki_public_key_bits(&authority.public_key_der)
        .expect("fixture key SPKI");
    s::UnparsedPublicKey::new(verifier, key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("an accepted token's signature does not verify");

    let sub = claims["sub"].as_str().expect("an accepted token has a sub");
    assert_eq!(
        svid.spiffe_id.to_string(),
        tessera_core::SpiffeId::new(sub)
            .map(|i| i.to_string())
            .expect("sub")
    );
    assert!(svid.spiffe_id.is_member_of(&trust_domain()));
    let exp = claims["exp"]
        .as_i64()
        .expect("an accepted token has an exp");
    assert_eq!(svid.expiry, exp);
    assert!(exp + LEEWAY_SECONDS > NOW, "an expired token was accepted");
    let aud: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert!(
        aud.contains(&AUDIENCE),
        "accepted for an audience it does not name"
    );
    assert_eq!(svid.audience, aud);
    assert_eq!(svid.token, token);
}

fn mint(rest: &[u8]) {
    let Some((&pick, rest)) = rest.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let audience: Vec<String> = lines.map(str::to_owned).collect();
    let Ok(id) = trust_domain().id(path) else {
        return;
    };
    let keys = &jwt_keys().keys;
    let (kid, key) = &keys[usize::from(pick) % keys.len()];
    let issued_at = NOW - i64::from(pick);
    let expiry = NOW + 60 * i64::from(pick);
    let Ok(minted) = sign_jwt_svid(&id, &audience, issued_at, expiry, kid, key.as_ref()) else {
        assert!(
            tessera_core::jwt::check_audience(&audience).is_err(),
            "minting failed for an acceptable audience"
        );
        return;
    };
    for aud in &audience {
        let checked = validate_jwt_svid(&minted.token, bundle_for, std::slice::from_ref(aud), NOW)
            .unwrap_or_else(|e| panic!("a minted token does not validate: {e}"));
        assert_eq!(checked.spiffe_id, id);
        assert_eq!(checked.audience, audience);
        assert_eq!(checked.expiry, expiry);
        assert_eq!(checked.issued_at, issued_at);
    }
    validate(&minted.token);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture tokens pass the validator, so the target's checks of an
    /// accepted token run on the seeds; one byte changed in the signature and
    /// they do not.
    #[test]
    fn fixture_tokens_validate_and_altered_ones_do_not() {
        for (kid, key) in &jwt_keys().keys {
            let t = sign_jwt_svid(
                &crate::fixtures::workload_id(),
                &[AUDIENCE.to_owned()],
                NOW,
                NOW + 60,
                kid,
                key.as_ref(),
            )
            .unwrap();
            let audience = [AUDIENCE.to_owned()];
            assert!(validate_jwt_svid(&t.token, bundle_for, &audience, NOW).is_ok());
            let mut bad = t.token.clone().into_bytes();
            let last = bad.len() - 2;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(validate_jwt_svid(&bad, bundle_for, &audience, NOW).is_err());
            validate(&t.token);
        }
    }
}
