//! JWT-SVIDs: minted through the [`Key`] seam and validated by the rules of the JWT-SVID
//! standard (<https://github.com/spiffe/spiffe/blob/main/standards/JWT-SVID.md>).
//!
//! Validation checks the `alg` allow-list before anything else, so that `none`, `HS*`
//! and friends are refused without looking further into the token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::bundle::Bundle;
use crate::der;
use crate::failure::Failure;
use crate::key::{Key, KeyError, KeyType, SignatureScheme};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Clock skew tolerated when checking `exp`.
pub const LEEWAY_SECONDS: i64 = 30;

/// The algorithms a JWT-SVID may use.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// At most this many audiences in a JWT-SVID that Tessera mints. The JWT-SVID
/// standard sets no limit; every minted token is cached by the agent until it is half
/// spent, so the audience list is bounded like any other input that is kept.
pub const MAX_AUDIENCES: usize = 16;

/// At most this many bytes in each audience value (UTF-8). Audiences name relying
/// parties (a URI, a host name, a service name); 1 KiB holds any real one.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// Checks an audience list for minting: at least one value, no empty value, at most
/// [`MAX_AUDIENCES`] values of at most [`MAX_AUDIENCE_LEN`] bytes each.
pub fn check_audience(audience: &[String]) -> Result<(), JwtError> {
    if audience.is_empty() {
        return Err(JwtError::NoAudience);
    }
    if audience.iter().any(String::is_empty) {
        return Err(JwtError::EmptyAudience);
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(JwtError::TooManyAudiences(audience.len()));
    }
    if let Some(a) = audience.iter().find(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(JwtError::AudienceTooLong(a.len()));
    }
    Ok(())
}

/// Why a JWT-SVID was refused or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is not three base64url parts; says which part is wrong.
    #[error("token is not a JWS compact serialization (three base64url parts): {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not on the allow-list.
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    DisallowedAlg(String),
    /// The header has no `kid`.
    #[error("header has no kid")]
    MissingKid,
    /// The header's `typ` is neither `JWT` nor `JOSE`.
    #[error("header typ {0:?} is not JWT or JOSE")]
    BadTyp(String),
    /// The claims are not a JSON object.
    #[error("claims are not a JSON object")]
    BadClaims,
    /// There is no `sub` claim.
    #[error("sub claim is missing")]
    MissingSub,
    /// The `sub` claim is not a SPIFFE ID.
    #[error("sub claim is not a SPIFFE ID: {0}")]
    BadSub(String),
    /// There is no `aud` claim, or it is empty.
    #[error("aud claim is missing or empty")]
    MissingAud,
    /// None of the expected audiences is in the token.
    #[error("token audience {actual:?} does not include any of {expected:?}")]
    AudienceMismatch {
        /// The token's audiences.
        actual: Vec<String>,
        /// The audiences the caller accepts.
        expected: Vec<String>,
    },
    /// There is no `exp` claim.
    #[error("exp claim is missing")]
    MissingExp,
    /// The token expired at this Unix time.
    #[error("token expired at {0}")]
    Expired(i64),
    /// No bundle is known for the token's trust domain.
    #[error("no bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The trust domain's bundle has no key with the token's `kid`.
    #[error("no JWT authority with kid {0:?} in the bundle of {1}")]
    UnknownKid(String, TrustDomain),
    /// The signature does not verify.
    #[error("the {alg} signature does not verify with key {kid:?}")]
    BadSignature {
        /// The token's algorithm.
        alg: String,
        /// The key it was checked with.
        kid: String,
    },
    /// The key named by `kid` is not of the token's algorithm.
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgMismatch {
        /// The key.
        kid: String,
        /// The token's algorithm.
        alg: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Key(#[from] KeyError),
    /// No audience was given.
    #[error("audience must be specified")]
    NoAudience,
    /// An audience value is empty.
    #[error("audience values must not be empty")]
    EmptyAudience,
    /// More audiences than allowed were given.
    #[error("{0} audiences given; at most {MAX_AUDIENCES} are allowed")]
    TooManyAudiences(usize),
    /// An audience value is longer than allowed.
    #[error("an audience value of {0} bytes given; at most {MAX_AUDIENCE_LEN} bytes are allowed")]
    AudienceTooLong(usize),
}

/// A validated (or freshly minted) JWT-SVID.
#[derive(Debug, Clone)]
pub struct JwtSvid {
    /// The compact JWS.
    pub token: String,
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim.
    pub audience: Vec<String>,
    /// The `exp` claim (Unix seconds).
    pub expiry: i64,
    /// The `iat` claim (Unix seconds; 0 when absent).
    pub issued_at: i64,
    /// Every claim, as JSON.
    pub claims: Map<String, Value>,
}

fn width_for(kt: KeyType) -> usize {
    if kt == KeyType::EcP384 { 48 } else { 32 }
}

/// Mints a JWT-SVID with the key's default scheme (ES256 for P-256 keys).
pub fn sign_jwt_svid(
    spiffe_id: &SpiffeId,
    audience: &[String],
    issued_at: i64,
    expiry: i64,
    key_id: &str,
    key: &dyn Key,
) -> Result<JwtSvid, JwtError> {
    sign_jwt_svid_issued_by(spiffe_id, audience, None, issued_at, expiry, key_id, key)
}

/// [`sign_jwt_svid`] with an `iss` claim when `issuer` is given: the URL of the OIDC
/// discovery document relying parties find the keys through (they compare the two).
pub fn sign_jwt_svid_issued_by(
    spiffe_id: &SpiffeId,
    audience: &[String],
    issuer: Option<&str>,
    issued_at: i64,
    expiry: i64,
    key_id: &str,
    key: &dyn Key,
) -> Result<JwtSvid, JwtError> {
    check_audience(audience)?;
    let scheme = key.key_type().default_scheme();
    let header = json!({"alg": scheme.jws_alg(), "kid": key_id, "typ": "JWT"});
    let aud = if audience.len() == 1 {
        json!(audience[0])
    } else {
        json!(audience)
    };
    let mut claims =
        json!({"sub": spiffe_id.to_string(), "aud": aud, "exp": expiry, "iat": issued_at});
    if let (Some(iss), Some(map)) = (issuer, claims.as_object_mut()) {
        map.insert("iss".into(), json!(iss));
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(scheme, signing_input.as_bytes())?;
    let sig = if scheme.is_rsa() {
        sig
    } else {
        der::ecdsa_der_to_raw(&sig, width_for(key.key_type()))
            .map_err(|e| JwtError::Key(KeyError::Backend(Failure::caused_by(e.to_string(), e))))?
    };
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig));
    Ok(JwtSvid {
        token,
        spiffe_id: spiffe_id.clone(),
        audience: audience.to_vec(),
        expiry,
        issued_at,
        claims: claims.as_object().cloned().unwrap_or_default(),
    })
}

fn decode_json(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("a part is not JSON"))
}

/// Reads a token's claims without verifying anything (for display only).
pub fn peek_claims(token: &str) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (_, Some(claims), _) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    match decode_json(claims)? {
        Value::Object(m) => Ok(m),
        _ => Err(JwtError::BadClaims),
    }
}

/// Validates a JWT-SVID against the bundles `bundle_for` knows, for any of the
/// `audience` values, at Unix time `now`.
pub fn validate_jwt_svid<B: std::borrow::Borrow<Bundle>>(
    token: &str,
    bundle_for: impl Fn(&TrustDomain) -> Option<B>,
    audience: &[String],
    now: i64,
) -> Result<JwtSvid, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Malformed("expected three parts"));
    }
    let header = decode_json(parts[0])?;
    // The allow-list first: nothing else in an `alg: none` or HMAC token is looked at.
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !ALLOWED_ALGS.contains(&alg.as_str()) {
        return Err(JwtError::DisallowedAlg(alg));
    }
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT") | Some("JOSE") => {}
            _ => return Err(JwtError::BadTyp(typ.to_string())),
        }
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(JwtError::MissingKid)?
        .to_owned();
    let claims = match decode_json(parts[1])? {
        Value::Object(m) => m,
        _ => return Err(JwtError::BadClaims),
    };
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingSub)?;
    let spiffe_id = SpiffeId::new(sub).map_err(|e| JwtError::BadSub(e.to_string()))?;
    let bundle = bundle_for(spiffe_id.trust_domain())
        .ok_or_else(|| JwtError::NoBundle(spiffe_id.trust_domain().clone()))?;
    let authority = bundle
        .borrow()
        .jwt_authority(&kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.clone(), spiffe_id.trust_domain().clone()))?
        .clone();
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    verify_jws(
        &alg,
        &kid,
        &authority.public_key_der,
        parts[0],
        parts[1],
        &sig,
    )?;

    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::MissingExp)?;
    if exp + LEEWAY_SECONDS <= now {
        return Err(JwtError::Expired(exp));
    }
    let token_aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if token_aud.is_empty() {
        return Err(JwtError::MissingAud);
    }
    if audience.is_empty() {
        return Err(JwtError::NoAudience);
    }
    if !audience.iter().any(|a| token_aud.contains(a)) {
        return Err(JwtError::AudienceMismatch {
            actual: token_aud,
            expected: audience.to_vec(),
        });
    }
    let issued_at = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    Ok(JwtSvid {
        token: token.to_owned(),
        spiffe_id,
        audience: token_aud,
        expiry: exp,
        issued_at,
        claims,
    })
}

fn verify_jws(
    alg: &str,
    kid: &str,
    spki: &[u8],
    header_b64: &str,
    claims_b64: &str,
    sig: &[u8],
) -> Result<(), JwtError> {
    use ring::signature as s;
    let key_type = crate::key::key_type_of_spki(spki);
    let ok_key = match alg {
        "ES256" => key_type == Some(KeyType::EcP256),
        "ES384" => key_type == Some(KeyType::EcP384),
        "ES512" => false,
        _ => key_type.is_some_and(KeyType::is_rsa),
    };
    if !ok_key {
        return Err(JwtError::KeyAlgMismatch {
            kid: kid.to_owned(),
            alg: alg.to_owned(),
        });
    }
    let verifier: &'static dyn s::VerificationAlgorithm = match alg {
        "ES256" => &s::ECDSA_P256_SHA256_FIXED,
        "ES384" => &s::ECDSA_P384_SHA384_FIXED,
        "RS256" => &s::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => &s::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &s::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => &s::RSA_PSS_2048_8192_SHA256,
        "PS384" => &s::RSA_PSS_2048_8192_SHA384,
        _ => &s::RSA_PSS_2048_8192_SHA512,
    };
    let bits = der::spki_public_key_bits(spki).map_err(|_| JwtError::KeyAlgMismatch {
        kid: kid.to_owned(),
        alg: alg.to_owned(),
    })?;
    let signing_input = format!("{header_b64}.{claims_b64}");
    s::UnparsedPublicKey::new(verifier, bits)
        .verify(signing_input.as_bytes(), sig)
        .map_err(|_| JwtError::BadSignature {
            alg: alg.to_owned(),
            kid: kid.to_owned(),
        })
}

/// The scheme a JWT key signs with, for callers that need to advertise it.
pub fn scheme_for(kt: KeyType) -> SignatureScheme {
    kt.default_scheme()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use crate::key::SoftwareKey;

    const NOW: i64 = 1_800_000_000;

    fn setup(kt: KeyType) -> (SoftwareKey, Bundle) {
        let key = SoftwareKey::generate(kt).unwrap();
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.set_jwt_authorities(vec![JwtAuthority {
            key_id: "kid1".into(),
            public_key_der: key.public_key_der().to_vec(),
            expires_at: 0,
        }]);
        (key, b)
    }

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://example.org/web").unwrap()
    }

    fn aud(a: &str) -> Vec<String> {
        vec![a.to_string()]
    }

    fn mint(key: &SoftwareKey, exp: i64) -> String {
        sign_jwt_svid(&id(), &aud("db"), NOW, exp, "kid1", key)
            .unwrap()
            .token
    }

    fn check(token: &str, b: &Bundle, audience: &str) -> Result<JwtSvid, JwtError> {
        validate_jwt_svid(token, |_| Some(b.clone()), &aud(audience), NOW)
    }

    /// Re-signs a token with arbitrary header and claims, for the reject cases.
    fn forge(key: &SoftwareKey, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign_default(input.as_bytes()).unwrap();
        let sig = der::ecdsa_der_to_raw(&sig, 32).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn round_trip_each_key_type() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let (key, b) = setup(kt);
            let t = mint(&key, NOW + 300);
            let svid = check(&t, &b, "db").unwrap();
            assert_eq!(svid.spiffe_id, id());
            assert_eq!(svid.expiry, NOW + 300);
            assert_eq!(svid.audience, aud("db"));
        }
    }

    #[test]
    fn iss_is_there_only_when_an_issuer_is_given() {
        let (key, b) = setup(KeyType::EcP256);
        let plain = mint(&key, NOW + 300);
        assert!(!check(&plain, &b, "db").unwrap().claims.contains_key("iss"));
        let issued = sign_jwt_svid_issued_by(
            &id(),
            &aud("db"),
            Some("https://oidc.example.org"),
            NOW,
            NOW + 300,
            "kid1",
            &key,
        )
        .unwrap();
        let svid = check(&issued.token, &b, "db").unwrap();
        assert_eq!(svid.claims["iss"], "https://oidc.example.org");
        assert_eq!(svid.spiffe_id, id());
    }

    #[test]
    fn audience_limits_hold_for_every_minted_token() {
        let (key, b) = setup(KeyType::EcP256);
        let at_limit: Vec<String> = (0..MAX_AUDIENCES)
            .map(|i| format!("{i:0>width$}", width = MAX_AUDIENCE_LEN))
            .collect();
        check_audience(&at_limit).unwrap();
        let t = sign_jwt_svid(&id(), &at_limit, NOW, NOW + 60, "kid1", &key).unwrap();
        let svid = validate_jwt_svid(&t.token, |_| Some(b.clone()), &at_limit[3..4], NOW).unwrap();
        assert_eq!(svid.audience, at_limit);

        let mut too_many = at_limit.clone();
        too_many.push("one more".into());
        let long = vec!["x".repeat(MAX_AUDIENCE_LEN + 1)];
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec![], "audience must be specified"),
            (
                vec!["a".into(), String::new()],
                "audience values must not be empty",
            ),
            (too_many, "17 audiences given; at most 16 are allowed"),
            (
                long,
                "an audience value of 1025 bytes given; at most 1024 bytes are allowed",
            ),
        ];
        for (audience, message) in cases {
            assert_eq!(check_audience(&audience).unwrap_err().to_string(), message);
            // The signer refuses them too, whoever calls it.
            let err = sign_jwt_svid(&id(), &audience, NOW, NOW + 60, "kid1", &key).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn header_rules() {
        let (key, b) = setup(KeyType::EcP256);
        let claims = json!({"sub": id().to_string(), "aud": "db", "exp": NOW + 60});
        for bad in ["none", "HS256", "EdDSA", ""] {
            let t = forge(&key, json!({"alg": bad, "kid": "kid1"}), claims.clone());
            assert!(
                matches!(check(&t, &b, "db"), Err(JwtError::DisallowedAlg(_))),
                "{bad}"
            );
        }
        // alg:none is refused even with an empty signature and no kid.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(matches!(
            check(&none, &b, "db"),
            Err(JwtError::DisallowedAlg(_))
        ));
        let t = forge(&key, json!({"alg": "ES256"}), claims.clone());
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::MissingKid)));
        let t = forge(
            &key,
            json!({"alg": "ES256", "kid": "kid1", "typ": "at+jwt"}),
            claims.clone(),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::BadTyp(_))));
        for typ in ["JWT", "JOSE"] {
            let t = forge(
                &key,
                json!({"alg": "ES256", "kid": "kid1", "typ": typ}),
                claims.clone(),
            );
            assert!(check(&t, &b, "db").is_ok());
        }
        let t = forge(&key, json!({"alg": "ES256", "kid": "kid1"}), claims.clone());
        assert!(check(&t, &b, "db").is_ok());
        let t = forge(&key, json!({"alg": "ES256", "kid": "other"}), claims);
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::UnknownKid(..))));
    }

    #[test]
    fn claim_rules() {
        let (key, b) = setup(KeyType::EcP256);
        let h = json!({"alg": "ES256", "kid": "kid1", "typ": "JWT"});
        let t = forge(&key, h.clone(), json!({"aud": "db", "exp": NOW + 60}));
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::MissingSub)));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": "spiffe://example.org/", "aud": "db", "exp": NOW + 60}),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::BadSub(_))));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": id().to_string(), "exp": NOW + 60}),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::MissingAud)));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": id().to_string(), "aud": [], "exp": NOW + 60}),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::MissingAud)));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": id().to_string(), "aud": ["x", "db"], "exp": NOW + 60}),
        );
        assert!(check(&t, &b, "db").is_ok());
        assert!(matches!(
            check(&t, &b, "other"),
            Err(JwtError::AudienceMismatch { .. })
        ));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": id().to_string(), "aud": "db"}),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::MissingExp)));
        let t = forge(
            &key,
            h.clone(),
            json!({"sub": id().to_string(), "aud": "db", "exp": NOW - 120}),
        );
        assert!(matches!(check(&t, &b, "db"), Err(JwtError::Expired(_))));
        // Within the leeway it still passes.
        let t = forge(
            &key,
            h,
            json!({"sub": id().to_string(), "aud": "db", "exp": NOW - 5}),
        );
        assert!(check(&t, &b, "db").is_ok());
    }

    #[test]
    fn signature_and_bundle_rules() {
        let (key, b) = setup(KeyType::EcP256);
        let (_, other_bundle) = setup(KeyType::EcP256);
        let t = mint(&key, NOW + 60);
        assert!(matches!(
            check(&t, &other_bundle, "db"),
            Err(JwtError::BadSignature { .. })
        ));
        let mut tampered = t.clone();
        tampered.pop();
        tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert!(check(&tampered, &b, "db").is_err());
        assert!(matches!(
            validate_jwt_svid::<Bundle>(&t, |_| None, &aud("db"), NOW),
            Err(JwtError::NoBundle(_))
        ));
        assert!(matches!(
            check("a.b", &b, "db"),
            Err(JwtError::Malformed(_))
        ));
        // JSON serialization is not accepted, only compact.
        assert!(matches!(
            check(r#"{"payload":"x"}"#, &b, "db"),
            Err(JwtError::Malformed(_))
        ));
        // An RS256 header over an EC key is refused.
        let (rsa, _) = setup(KeyType::Rsa2048);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": "kid1"}).to_string()),
            URL_SAFE_NO_PAD
                .encode(json!({"sub": id().to_string(), "aud": "db", "exp": NOW + 60}).to_string())
        );
        let sig = rsa.sign_default(input.as_bytes()).unwrap();
        let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert!(matches!(
            check(&t, &b, "db"),
            Err(JwtError::KeyAlgMismatch { .. })
        ));
    }
}
