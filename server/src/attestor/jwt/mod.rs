//! Identity tokens from a cloud's token issuer (`gcp_iit`, `azure_msi`): RS256 JWTs
//! checked against the issuer's published keys ([`keys`]). [`verify`] checks the
//! parts every such token must pass (the algorithm before anything else, the key, the
//! signature, expiry and not-before) and hands back the claims; each attestor then
//! checks its audience, issuer and allow-lists with the helpers here, so the messages
//! read alike.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::AttestError;

pub mod keys;

pub use keys::{KeySet, Keys, RsaKey, Source};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: i64 = 30;

/// The largest token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;

/// How often a key set from a URL is fetched again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// Where an attestor's key set comes from, as its settings give it (`jwks_url`,
/// `jwks_file`, `jwks_ca_bundle`, `jwks_refresh`): exactly one of the URL (HTTPS)
/// and the file, or the issuer's `default_url`.
pub fn key_source(
    name: &'static str,
    url: Option<&str>,
    file: Option<&Path>,
    ca_bundle: Option<&Path>,
    refresh: Duration,
    default_url: &str,
) -> Result<Keys, String> {
    let setting = format!("node_attestors.{name}");
    let source = match (url, file) {
        (Some(_), Some(_)) => {
            return Err(format!("{setting}: set jwks_url or jwks_file, not both"));
        }
        (None, Some(f)) => Source::File(f.to_owned()),
        (u, None) => {
            let url = u.unwrap_or(default_url);
            if !url.starts_with("https://") {
                return Err(format!(
                    "{setting}.jwks_url {url:?} must be an https URL (or use jwks_file)"
                ));
            }
            Source::Url {
                url: url.to_owned(),
                http: tessera_process::http::Options {
                    timeout: Duration::from_secs(10),
                    tls: Some(crate::https::tls_roots(
                        &format!("{setting}.jwks_ca_bundle"),
                        "jwks_ca_bundle",
                        ca_bundle,
                    )?),
                    ..Default::default()
                },
            }
        }
    };
    if refresh < keys::MIN_REFETCH {
        return Err(format!(
            "{setting}.jwks_refresh must be at least {:?}",
            keys::MIN_REFETCH
        ));
    }
    Ok(Keys::new(name, source, refresh))
}

/// Loads a key set at start-up: a file that cannot be read stops the server (the
/// operator gave it); a URL that cannot be fetched is logged and tried again at the
/// first attestation (the issuer may be away for a moment).
pub async fn load_at_start(keys: &Keys) -> Result<(), String> {
    load_at_start_as(keys, &format!("node_attestors.{}.jwks_file", keys.name())).await
}

/// [`load_at_start`] for keys whose file is given by the setting `file_setting`.
pub async fn load_at_start_as(keys: &Keys, file_setting: &str) -> Result<(), String> {
    match keys.load().await {
        Ok(n) => {
            tracing::info!(attestor = keys.name(), source = %keys.describe(), keys = n, "token signing keys loaded");
            Ok(())
        }
        Err(e) if keys.is_file() => Err(format!("{file_setting} {}: {e}", keys.describe())),
        Err(e) => {
            tracing::warn!(attestor = keys.name(), source = %keys.describe(), error = %e, "cannot fetch the token signing keys yet (will try again at the first attestation)");
            Ok(())
        }
    }
}

/// A token's claims, once its signature and times checked out.
pub type Claims = Map<String, Value>;

fn malformed(name: &str, what: &str) -> AttestError {
    AttestError::Malformed(format!("{name}: the identity token {what}"))
}

fn decode_json(name: &str, part: &str, what: &str) -> Result<Map<String, Value>, AttestError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.as_bytes())
        .map_err(|_| malformed(name, &format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(malformed(name, &format!("{what} is not a JSON object"))),
    }
}

/// Checks `token`'s algorithm (RS256 only), key, signature and times at Unix time
/// `now`; returns its claims.
pub async fn verify(name: &str, token: &str, keys: &Keys, now: i64) -> Result<Claims, AttestError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return Err(malformed(
            name,
            &format!("is longer than {MAX_TOKEN} bytes"),
        ));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, body, signature] = parts[..] else {
        return Err(malformed(name, "is not a JWT (three base64url parts)"));
    };
    let header = decode_json(name, header, "header")?;
    // The algorithm first: `none`, HMAC and the rest are refused unread.
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token is signed with {alg:?}; only RS256 is accepted"
        )));
    }
    // RFC 7515: a critical header extension that is not understood makes the token
    // invalid; none is understood here.
    if header.contains_key("crit") {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token has critical header extensions (crit), which are not \
             supported"
        )));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| malformed(name, "header names no key (kid)"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature.as_bytes())
        .map_err(|_| malformed(name, "signature is not base64url"))?;
    let key = keys.key(kid).await?;
    let signed = &token[..token.len() - parts[2].len() - 1];
    if !key.verify_rs256(signed.as_bytes(), &signature) {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token's signature does not verify with key {kid:?}"
        )));
    }
    let claims = decode_json(name, body, "payload")?;
    let time = |claim: &str| -> Result<Option<i64>, AttestError> {
        match claims.get(claim) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| malformed(name, &format!("claim {claim} is not a number"))),
        }
    };
    let exp = time("exp")?.ok_or_else(|| malformed(name, "has no expiry (exp)"))?;
    if exp + LEEWAY_SECONDS <= now {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token expired at {} ({} s ago)",
            iso(exp),
            now - exp
        )));
    }
    if let Some(nbf) = time("nbf")?
        && nbf - LEEWAY_SECONDS > now
    {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token is not valid before {}",
            iso(nbf)
        )));
    }
    if let Some(iat) = time("iat")?
        && iat - LEEWAY_SECONDS > now
    {
        return Err(AttestError::Refused(format!(
            "{name}: the identity token claims to be issued in the future ({})",
            iso(iat)
        )));
    }
    Ok(claims)
}

/// A Unix time as RFC 3339, for messages.
pub fn iso(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// A string claim, or `None`.
pub fn string<'a>(claims: &'a Claims, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Refuses a token whose `aud` (a string or a list) holds none of `expected`.
pub fn check_audience(name: &str, claims: &Claims, expected: &[String]) -> Result<(), AttestError> {
    let actual: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if actual.iter().any(|a| expected.iter().any(|e| e == a)) {
        return Ok(());
    }
    Err(AttestError::Refused(format!(
        "{name}: the identity token is for audience {actual:?}, not {expected:?}"
    )))
}

/// Refuses a token whose `iss` is none of `expected`.
pub fn check_issuer(name: &str, claims: &Claims, expected: &[String]) -> Result<(), AttestError> {
    let actual = string(claims, "iss").unwrap_or("");
    if expected.iter().any(|e| e == actual) {
        return Ok(());
    }
    Err(AttestError::Refused(format!(
        "{name}: the identity token was issued by {actual:?}, not by {expected:?}"
    )))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Tokens signed by a test key, and that key as a key set file.

    use std::sync::Arc;

    use tessera_core::key::{Key, KeyType, SignatureScheme, SoftwareKey};

    use super::*;

    /// A test issuer: an RSA key and its key ID.
    pub(crate) struct Issuer {
        pub key: Arc<dyn Key>,
        pub kid: String,
    }

    impl Issuer {
        pub(crate) fn new(kid: &str) -> Self {
            Self {
                key: Arc::new(SoftwareKey::generate(KeyType::Rsa2048).unwrap()),
                kid: kid.to_owned(),
            }
        }

        /// The public key as a JWK.
        pub(crate) fn jwk(&self) -> Value {
            use x509_parser::prelude::FromDer;
            use x509_parser::public_key::PublicKey;
            let (_, spki) =
                x509_parser::x509::SubjectPublicKeyInfo::from_der(self.key.public_key_der())
                    .unwrap();
            let PublicKey::RSA(rsa) = spki.parsed().unwrap() else {
                panic!("not RSA")
            };
            serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": URL_SAFE_NO_PAD.encode(tessera_core::der::trim_leading_zeros(rsa.modulus)),
                "e": URL_SAFE_NO_PAD.encode(tessera_core::der::trim_leading_zeros(rsa.exponent)),
            })
        }

        /// Writes the key set `{"keys": [...]}` of `issuers` to `path`.
        pub(crate) fn write_jwks(path: &std::path::Path, issuers: &[&Issuer]) {
            let keys: Vec<Value> = issuers.iter().map(|i| i.jwk()).collect();
            std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
        }

        /// A token with `header` fields over the defaults and `claims`.
        pub(crate) fn sign_with(&self, header: Value, claims: &Value) -> String {
            let mut h = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
            if let (Some(h), Some(extra)) = (h.as_object_mut(), header.as_object()) {
                h.extend(extra.clone());
            }
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(h.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self
                .key
                .sign(SignatureScheme::RsaPkcs1Sha256, input.as_bytes())
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        pub(crate) fn sign(&self, claims: &Value) -> String {
            self.sign_with(serde_json::json!({}), claims)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Issuer;
    use super::*;

    const NOW: i64 = 1_800_000_000;

    async fn keys_for(dir: &std::path::Path, issuers: &[&Issuer]) -> Keys {
        let path = dir.join("keys.json");
        Issuer::write_jwks(&path, issuers);
        let k = Keys::new("gcp_iit", Source::File(path), Duration::from_secs(3600));
        k.load().await.unwrap();
        k
    }

    #[tokio::test]
    async fn a_good_token_gives_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let iss = Issuer::new("k1");
        let keys = keys_for(dir.path(), &[&iss]).await;
        let token = iss.sign(&serde_json::json!({
            "aud": "tessera", "iss": "https://accounts.google.com",
            "iat": NOW - 10, "exp": NOW + 3590, "sub": "1"
        }));
        let claims = verify("gcp_iit", &token, &keys, NOW).await.unwrap();
        assert_eq!(string(&claims, "sub"), Some("1"));
        check_audience("gcp_iit", &claims, &["tessera".into()]).unwrap();
        let e = check_audience("gcp_iit", &claims, &["other".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "gcp_iit: the identity token is for audience [\"tessera\"], not [\"other\"]"
        );
        check_issuer("gcp_iit", &claims, &["https://accounts.google.com".into()]).unwrap();
        let e = check_issuer("gcp_iit", &claims, &["x".into()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("issued by \"https://accounts.google.com\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn forged_altered_expired_and_early_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let iss = Issuer::new("k1");
        let keys = keys_for(dir.path(), &[&iss]).await;
        let claims = serde_json::json!({"aud": "a", "iat": NOW, "exp": NOW + 600});
        let refused = |r: Result<Claims, AttestError>| match r {
            Err(AttestError::Refused(m)) => m,
            other => panic!("{other:?}"),
        };

        // Another key under the same key ID.
        let forger = Issuer::new("k1");
        let m = refused(verify("g", &forger.sign(&claims), &keys, NOW).await);
        assert!(
            m.contains("signature does not verify with key \"k1\""),
            "{m}"
        );

        // The payload swapped after signing.
        let good = iss.sign(&claims);
        let other = iss.sign(&serde_json::json!({"aud": "b", "iat": NOW, "exp": NOW + 600}));
        let parts: Vec<&str> = good.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        let m = refused(verify("g", &swapped, &keys, NOW).await);
        assert!(m.contains("does not verify"), "{m}");

        let m = refused(verify("g", &good, &keys, NOW + 600 + LEEWAY_SECONDS).await);
        assert!(m.contains("expired at"), "{m}");
        verify("g", &good, &keys, NOW + 600 + LEEWAY_SECONDS - 1)
            .await
            .unwrap();
        let early = iss.sign(&serde_json::json!({"nbf": NOW + 100, "exp": NOW + 600}));
        let m = refused(verify("g", &early, &keys, NOW).await);
        assert!(m.contains("not valid before"), "{m}");
        let future = iss.sign(&serde_json::json!({"iat": NOW + 100, "exp": NOW + 600}));
        let m = refused(verify("g", &future, &keys, NOW).await);
        assert!(m.contains("in the future"), "{m}");

        // Other algorithms, before any key is looked at.
        for alg in ["none", "HS256", "RS512", "ES256"] {
            let t = iss.sign_with(serde_json::json!({"alg": alg}), &claims);
            let m = refused(verify("g", &t, &keys, NOW).await);
            assert!(m.contains("only RS256"), "{alg}: {m}");
        }
        let t = iss.sign_with(serde_json::json!({"crit": ["exp"]}), &claims);
        let m = refused(verify("g", &t, &keys, NOW).await);
        assert!(m.contains("critical header extensions"), "{m}");
        let m = refused(
            verify(
                "g",
                &iss.sign_with(serde_json::json!({"kid": "k9"}), &claims),
                &keys,
                NOW,
            )
            .await,
        );
        assert!(m.contains("\"k9\""), "{m}");
    }

    #[tokio::test]
    async fn malformed_tokens_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let iss = Issuer::new("k1");
        let keys = keys_for(dir.path(), &[&iss]).await;
        for (token, want) in [
            ("abc".to_owned(), "three base64url parts"),
            ("a.b.c.d".to_owned(), "three base64url parts"),
            ("!!.e30.AA".to_owned(), "header is not base64url"),
            (
                iss.sign_with(serde_json::json!({"kid": ""}), &serde_json::json!({})),
                "names no key",
            ),
            (iss.sign(&serde_json::json!({"aud": "a"})), "no expiry"),
            (
                iss.sign(&serde_json::json!({"exp": "soon"})),
                "exp is not a number",
            ),
            ("x".repeat(MAX_TOKEN + 1), "longer than"),
        ] {
            match verify("g", &token, &keys, NOW).await {
                Err(AttestError::Malformed(m)) => assert!(m.contains(want), "{want}: {m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
