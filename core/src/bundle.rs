//! Trust bundles: the X.509 and JWT authorities of one trust domain, serialised as a
//! SPIFFE JWK Set (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE_Trust_Domain_and_Bundle.md>).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use crate::der;
use crate::spiffe_id::TrustDomain;

/// A JWT signing authority: the public key behind a `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The `kid` JWT-SVIDs name this key by.
    pub key_id: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// Unix seconds after which the key is dropped from the bundle; 0 when unknown.
    pub expires_at: i64,
}

/// The authorities of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<Vec<u8>>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: u64,
}

/// Why a JWK Set is not a usable SPIFFE bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The text is not JSON.
    #[error("bundle is not JSON: {0}")]
    Json(String),
    /// The JSON has no `keys` array.
    #[error("bundle has no \"keys\" array")]
    NoKeys,
    /// An `x509-svid` key does not carry exactly one certificate.
    #[error("x509-svid key {0} must carry exactly one certificate in x5c")]
    BadX5c(usize),
    /// A key in the set is unusable.
    #[error("key {index}: {reason}")]
    BadKey {
        /// Its position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl Bundle {
    /// An empty bundle (trusts nothing).
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: 0,
        }
    }

    /// A bundle holding the given X.509 authorities (DER).
    pub fn with_x509(trust_domain: TrustDomain, authorities: Vec<Vec<u8>>) -> Self {
        let mut b = Self::new(trust_domain);
        b.x509_authorities = authorities;
        b
    }

    /// The trust domain the bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// X.509 CA certificates, DER.
    pub fn x509_authorities(&self) -> &[Vec<u8>] {
        &self.x509_authorities
    }

    /// The JWT signing keys.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The `spiffe_sequence`: raised on every change of content.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The `spiffe_refresh_hint` in seconds, 0 when unset.
    pub fn refresh_hint(&self) -> u64 {
        self.refresh_hint
    }

    /// Sets the `spiffe_sequence`.
    pub fn set_sequence(&mut self, seq: u64) {
        self.sequence = seq;
    }

    /// Sets the `spiffe_refresh_hint` in seconds (0 leaves it unset).
    pub fn set_refresh_hint(&mut self, secs: u64) {
        self.refresh_hint = secs;
    }

    /// Replaces the X.509 CA certificates (DER).
    pub fn set_x509_authorities(&mut self, ders: Vec<Vec<u8>>) {
        self.x509_authorities = ders;
    }

    /// Replaces the JWT signing keys.
    pub fn set_jwt_authorities(&mut self, keys: Vec<JwtAuthority>) {
        self.jwt_authorities = keys;
    }

    /// Whether the two bundles hold the same authorities (sequence and hint aside).
    pub fn same_authorities(&self, other: &Bundle) -> bool {
        self.trust_domain == other.trust_domain
            && self.x509_authorities == other.x509_authorities
            && self.jwt_authorities == other.jwt_authorities
    }

    /// The JWT authority with this key ID.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// The X.509 authorities concatenated (the Workload API's bundle form).
    pub fn x509_concatenated(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// The X.509 authorities as PEM.
    pub fn x509_pem(&self) -> String {
        self.x509_authorities
            .iter()
            .map(|d| crate::x509::to_pem("CERTIFICATE", d))
            .collect()
    }

    /// The whole bundle as a SPIFFE JWK Set.
    pub fn to_jwks(&self) -> String {
        self.jwks(true, true)
    }

    /// Only the JWT authorities, as the Workload API's JWT bundles carry them.
    pub fn to_jwt_jwks(&self) -> String {
        self.jwks(false, true)
    }

    /// The JWT authorities as an OpenID Connect provider publishes its keys (the
    /// document an OIDC discovery `jwks_uri` names): each key with its `kid` and the
    /// `alg` JWT-SVIDs signed with it carry, without the SPIFFE `use` (which OIDC
    /// libraries do not know) and without the SPIFFE members.
    pub fn to_oidc_jwks(&self) -> String {
        let keys: Vec<Value> = self
            .jwt_authorities
            .iter()
            .filter_map(|a| {
                let mut k = public_jwk(&a.public_key_der)?;
                let alg = crate::key::key_type_of_spki(&a.public_key_der)?
                    .default_scheme()
                    .jws_alg();
                k.insert("kid".into(), json!(a.key_id));
                k.insert("alg".into(), json!(alg));
                Some(Value::Object(k))
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn jwks(&self, x509: bool, jwt: bool) -> String {
        let mut keys = Vec::new();
        if x509 {
            for cert in &self.x509_authorities {
                let mut k = match x509_parser::parse_x509_certificate(cert) {
                    Ok((_, c)) => public_jwk(c.public_key().raw).unwrap_or_default(),
                    Err(_) => Map::new(),
                };
                k.insert("use".into(), json!("x509-svid"));
                k.insert("x5c".into(), json!([STANDARD.encode(cert)]));
                keys.push(Value::Object(k));
            }
        }
        if jwt {
            for a in &self.jwt_authorities {
                let mut k = public_jwk(&a.public_key_der).unwrap_or_default();
                k.insert("use".into(), json!("jwt-svid"));
                k.insert("kid".into(), json!(a.key_id));
                keys.push(Value::Object(k));
            }
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        doc.insert("spiffe_sequence".into(), json!(self.sequence));
        if self.refresh_hint > 0 {
            doc.insert("spiffe_refresh_hint".into(), json!(self.refresh_hint));
        }
        Value::Object(doc).to_string()
    }

    /// Parses a SPIFFE JWK Set. Keys of unknown `kty` or `use` are skipped.
    pub fn from_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::NoKeys)?;
        let mut b = Bundle::new(trust_domain);
        b.sequence = doc
            .get("spiffe_sequence")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        b.refresh_hint = doc
            .get("spiffe_refresh_hint")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        for (index, key) in keys.iter().enumerate() {
            let kty = key.get("kty").and_then(Value::as_str).unwrap_or("");
            if !matches!(kty, "EC" | "RSA") {
                continue;
            }
            match key.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let x5c = key
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or(BundleError::BadX5c(index))?;
                    if x5c.len() != 1 {
                        return Err(BundleError::BadX5c(index));
                    }
                    let der = x5c[0]
                        .as_str()
                        .and_then(|s| STANDARD.decode(s).ok())
                        .ok_or_else(|| BundleError::BadKey {
                            index,
                            reason: "x5c is not base64".into(),
                        })?;
                    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
                        BundleError::BadKey {
                            index,
                            reason: format!("x5c certificate: {e}"),
                        }
                    })?;
                    // The key members must describe the certificate's key, as
                    // go-spiffe (through go-jose) also requires: a key that says
                    // one thing and a certificate that says another is not one
                    // authority, and `to_jwks`, which writes the certificate's
                    // key, would not give this bundle back.
                    let certified =
                        public_jwk(cert.public_key().raw).ok_or_else(|| BundleError::BadKey {
                            index,
                            reason: format!("x5c: {UNDESCRIBED_KEY}"),
                        })?;
                    let stated = jwk_to_spki(key).ok().and_then(|spki| public_jwk(&spki));
                    if stated.as_ref() != Some(&certified) {
                        return Err(BundleError::BadKey {
                            index,
                            reason: "the key members (kty, crv, x, y or n, e) are not the key of \
                                     the x5c certificate"
                                .into(),
                        });
                    }
                    b.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = key
                        .get("kid")
                        .and_then(Value::as_str)
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| BundleError::BadKey {
                            index,
                            reason: "jwt-svid key without kid".into(),
                        })?;
                    let spki =
                        jwk_to_spki(key).map_err(|reason| BundleError::BadKey { index, reason })?;
                    b.jwt_authorities.push(JwtAuthority {
                        key_id: kid.to_owned(),
                        public_key_der: spki,
                        expires_at: 0,
                    });
                }
                _ => continue,
            }
        }
        Ok(b)
    }
}

/// Why this key kind cannot be an X.509 authority here.
const UNDESCRIBED_KEY: &str = "the certificate's key is not EC P-256, EC P-384 or RSA, \
     the kinds a SPIFFE bundle (JWK Set) carries here";

/// Whether `der` can be an X.509 authority of a bundle: a certificate whose
/// key a JWK can describe (EC P-256, EC P-384 or RSA). A bundle is stored and
/// served as a JWK Set, and a key of another kind would be written without
/// its key members, which makes the JWK invalid and the authority vanish when
/// the set is read back.
pub fn check_x509_authority(der: &[u8]) -> Result<(), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    public_jwk(cert.public_key().raw)
        .map(|_| ())
        .ok_or_else(|| UNDESCRIBED_KEY.to_owned())
}

/// The public members of a JWK for a SubjectPublicKeyInfo.
fn public_jwk(spki: &[u8]) -> Option<Map<String, Value>> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    let mut m = Map::new();
    match info.parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, width) = match point.key_size() {
                256 => ("P-256", 32),
                384 => ("P-384", 48),
                _ => return None,
            };
            if data.len() != 1 + 2 * width || data[0] != 4 {
                return None;
            }
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!(crv));
            m.insert(
                "x".into(),
                json!(URL_SAFE_NO_PAD.encode(&data[1..1 + width])),
            );
            m.insert(
                "y".into(),
                json!(URL_SAFE_NO_PAD.encode(&data[1 + width..])),
            );
        }
        PublicKey::RSA(rsa) => {
            // JWK integers are minimal (RFC 7518 §6.3.1).
            let (n, e) = (
                der::trim_leading_zeros(rsa.modulus),
                der::trim_leading_zeros(rsa.exponent),
            );
            m.insert("kty".into(), json!("RSA"));
            m.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(n)));
            m.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(e)));
        }
        _ => return None,
    }
    Some(m)
}

fn b64_field(key: &Value, name: &str) -> Result<Vec<u8>, String> {
    key.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing {name:?}"))
        .and_then(|s| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| format!("{name:?} is not base64url"))
        })
}

/// A SubjectPublicKeyInfo from a JWK's public members.
fn jwk_to_spki(key: &Value) -> Result<Vec<u8>, String> {
    match key.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            let (width, p384) = match key.get("crv").and_then(Value::as_str) {
                Some("P-256") => (32, false),
                Some("P-384") => (48, true),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            let x = b64_field(key, "x")?;
            let y = b64_field(key, "y")?;
            if x.len() != width || y.len() != width {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            Ok(der::ec_spki(&point, p384))
        }
        Some("RSA") => {
            let n = b64_field(key, "n")?;
            let e = b64_field(key, "e")?;
            Ok(der::rsa_spki_from_parts(&n, &e))
        }
        other => Err(format!("unsupported kty {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, KeyType, SoftwareKey};

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn sample() -> Bundle {
        let key: std::sync::Arc<dyn Key> =
            std::sync::Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let now = std::time::SystemTime::now();
        let ca = crate::x509::self_signed_ca(
            &td(),
            "ca",
            &key,
            now,
            now + std::time::Duration::from_secs(60),
        )
        .unwrap();
        let mut b = Bundle::with_x509(td(), vec![ca]);
        for (kid, kt) in [
            ("k1", KeyType::EcP256),
            ("k2", KeyType::EcP384),
            ("k3", KeyType::Rsa2048),
        ] {
            let jk = SoftwareKey::generate(kt).unwrap();
            b.jwt_authorities.push(JwtAuthority {
                key_id: kid.into(),
                public_key_der: jk.public_key_der().to_vec(),
                expires_at: 0,
            });
        }
        b.set_sequence(7);
        b.set_refresh_hint(300);
        b
    }

    #[test]
    fn oidc_keys_carry_kid_and_alg_and_no_spiffe_members() {
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        let ec = crate::key::SoftwareKey::generate(crate::key::KeyType::EcP384).unwrap();
        let rsa = crate::key::SoftwareKey::generate(crate::key::KeyType::Rsa2048).unwrap();
        b.set_jwt_authorities(vec![
            JwtAuthority {
                key_id: "k1".into(),
                public_key_der: ec.public_key_der().to_vec(),
                expires_at: 0,
            },
            JwtAuthority {
                key_id: "k2".into(),
                public_key_der: rsa.public_key_der().to_vec(),
                expires_at: 0,
            },
        ]);
        b.set_sequence(7);
        b.set_refresh_hint(300);
        let doc: Value = serde_json::from_str(&b.to_oidc_jwks()).unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 1, "only keys: {doc}");
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (&keys[0]["kid"], &keys[0]["alg"], &keys[0]["crv"]),
            (&json!("k1"), &json!("ES384"), &json!("P-384"))
        );
        assert_eq!(
            (&keys[1]["kid"], &keys[1]["alg"], &keys[1]["kty"]),
            (&json!("k2"), &json!("RS256"), &json!("RSA"))
        );
        assert!(keys.iter().all(|k| k.get("use").is_none()), "{doc}");
    }

    #[test]
    fn jwks_round_trip() {
        let b = sample();
        let json = b.to_jwks();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(keys[0]["use"], "x509-svid");
        assert!(keys[0].get("kid").is_none());
        assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
        assert_eq!(keys[1]["use"], "jwt-svid");
        assert_eq!(keys[1]["kid"], "k1");
        let back = Bundle::from_jwks(td(), json.as_bytes()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn jwt_only_view() {
        let b = sample();
        let v: Value = serde_json::from_str(&b.to_jwt_jwks()).unwrap();
        assert!(
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["use"] == "jwt-svid")
        );
    }

    #[test]
    fn empty_keys_means_trust_nothing_and_missing_keys_is_an_error() {
        let b = Bundle::from_jwks(td(), br#"{"keys": []}"#).unwrap();
        assert!(b.x509_authorities().is_empty() && b.jwt_authorities().is_empty());
        assert_eq!(Bundle::from_jwks(td(), br#"{}"#), Err(BundleError::NoKeys));
        assert!(matches!(
            Bundle::from_jwks(td(), b"nope"),
            Err(BundleError::Json(_))
        ));
    }

    #[test]
    fn unknown_kty_and_use_are_skipped() {
        let json = br#"{"keys": [
            {"kty": "OKP", "use": "jwt-svid", "kid": "a", "crv": "Ed25519", "x": "AA"},
            {"kty": "EC", "use": "something-else", "crv": "P-256", "x": "AA", "y": "AA"}
        ]}"#;
        let b = Bundle::from_jwks(td(), json).unwrap();
        assert!(b.jwt_authorities().is_empty());
    }

    /// An x509-svid key whose members are not the certificate's key, or whose
    /// certificate has a key a JWK cannot describe here, is refused: it used to
    /// be accepted, and the authority then vanished through `to_jwks` and
    /// `from_jwks` (found by the `jwks_bundle` fuzz target).
    #[test]
    fn x509_key_members_must_be_the_certificates_key() {
        let b = sample();
        let good: Value = serde_json::from_str(&b.to_jwks()).unwrap();
        let entry = good["keys"][0].clone();
        let with = |entry: &Value| {
            let doc = json!({ "keys": [entry] });
            Bundle::from_jwks(td(), doc.to_string().as_bytes())
        };
        assert_eq!(
            with(&entry).unwrap().x509_authorities(),
            b.x509_authorities()
        );

        // Another key's coordinates.
        let other = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let other_jwk = public_jwk(other.public_key_der()).unwrap();
        let mut wrong = entry.clone();
        wrong["x"] = other_jwk["x"].clone();
        let err = with(&wrong).unwrap_err();
        assert!(
            matches!(&err, BundleError::BadKey { index: 0, reason } if reason.contains("not the key of the x5c certificate")),
            "{err:?}"
        );
        // Members missing altogether.
        let mut bare = entry.clone();
        bare.as_object_mut().unwrap().remove("y");
        assert!(with(&bare).is_err());

        // A certificate whose key algorithm is unknown (the id-ecPublicKey OID
        // changed by one byte, as the fuzzer did).
        let mut der = b.x509_authorities()[0].clone();
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let at = der.windows(oid.len()).position(|w| w == oid).unwrap();
        der[at + 4] = 0x3c;
        let mut odd = entry.clone();
        odd["x5c"] = json!([STANDARD.encode(&der)]);
        let err = with(&odd).unwrap_err();
        assert!(
            matches!(&err, BundleError::BadKey { reason, .. } if reason.contains("not EC P-256")),
            "{err:?}"
        );
        assert_eq!(check_x509_authority(&der), Err(UNDESCRIBED_KEY.to_owned()));
        assert_eq!(check_x509_authority(&b.x509_authorities()[0]), Ok(()));
        assert!(check_x509_authority(b"junk").is_err());
    }

    #[test]
    fn x5c_must_hold_one_certificate() {
        let b = sample();
        let cert = STANDARD.encode(&b.x509_authorities()[0]);
        let json = format!(
            r#"{{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{cert}", "{cert}"]}}]}}"#
        );
        assert_eq!(
            Bundle::from_jwks(td(), json.as_bytes()),
            Err(BundleError::BadX5c(0))
        );
        let json =
            r#"{"keys": [{"kty": "EC", "use": "jwt-svid", "crv": "P-256", "x": "AA", "y": "AA"}]}"#;
        assert!(matches!(
            Bundle::from_jwks(td(), json.as_bytes()),
            Err(BundleError::BadKey { .. })
        ));
    }
}
