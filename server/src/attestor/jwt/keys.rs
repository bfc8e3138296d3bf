//! The signing keys of a token issuer (Google, Microsoft Entra ID, a Kubernetes
//! cluster's service account issuer): a JWK Set read from a file, fetched over HTTPS
//! or found through the issuer's OpenID Connect discovery document, cached, and loaded again when it is older than
//! its refresh interval, when the file changed, or when a token names a key the
//! cached set lacks (issuers rotate keys; a fetch for an unknown key is made at most
//! once per [`MIN_REFETCH`], so tokens with made-up key IDs cannot make the server
//! hammer the issuer). A failed refresh keeps the keys already loaded.
//!
//! Besides the JWK Set format (`{"keys": [...]}`), the older map of key ID to PEM
//! certificate that Google also publishes is read. Only RSA keys are kept: both
//! issuers sign with RS256.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tessera_process::http;
use tokio::time::Instant;

use crate::attestor::AttestError;

/// The shortest time between two loads caused by unknown key IDs.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

/// The largest key set accepted.
const MAX_KEY_SET: usize = 1 << 20;

/// An RSA public key from a key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaKey {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

impl RsaKey {
    /// The key from its big-endian modulus and exponent (leading zeros, as DER
    /// integers carry them, are dropped).
    pub fn new(n: &[u8], e: &[u8]) -> Self {
        use tessera_core::der::trim_leading_zeros;
        Self {
            n: trim_leading_zeros(n).to_vec(),
            e: trim_leading_zeros(e).to_vec(),
        }
    }

    /// Checks an RS256 signature.
    pub fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature,
        )
        .is_ok()
    }
}

/// Keys by key ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: BTreeMap<String, RsaKey>,
}

impl KeySet {
    /// Parses a JWK Set, or a map of key ID to PEM certificate. Keys that are not RSA
    /// signing keys are skipped; a set with no usable key at all is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let mut keys = BTreeMap::new();
        if let Some(list) = obj.get("keys") {
            let list = list.as_array().ok_or("\"keys\" is not an array")?;
            for jwk in list {
                let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
                    continue;
                };
                if jwk.get("kty").and_then(Value::as_str) != Some("RSA") {
                    continue;
                }
                if jwk
                    .get("use")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u != "sig")
                {
                    continue;
                }
                if let Some(key) = jwk_rsa(jwk) {
                    keys.insert(kid.to_owned(), key);
                }
            }
        } else {
            for (kid, pem) in obj {
                let Some(pem) = pem.as_str() else { continue };
                let ders = tessera_core::x509::pem_certs(pem.as_bytes())
                    .map_err(|e| format!("key {kid:?}: {e}"))?;
                if let Some(key) = ders.first().and_then(|d| cert_rsa(d)) {
                    keys.insert(kid.clone(), key);
                }
            }
        }
        if keys.is_empty() {
            return Err("no RSA signing key in it".into());
        }
        Ok(Self { keys })
    }

    /// The key with ID `kid`.
    pub fn get(&self, kid: &str) -> Option<&RsaKey> {
        self.keys.get(kid)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn b64url(v: Option<&Value>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v?.as_str()?.trim_end_matches('=').as_bytes())
        .ok()
}

fn jwk_rsa(jwk: &Value) -> Option<RsaKey> {
    if let (Some(n), Some(e)) = (b64url(jwk.get("n")), b64url(jwk.get("e"))) {
        return Some(RsaKey::new(&n, &e));
    }
    // Only a certificate chain: its first certificate holds the key.
    let x5c = jwk.get("x5c")?.as_array()?.first()?.as_str()?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c.as_bytes())
        .ok()?;
    cert_rsa(&der)
}

fn cert_rsa(der: &[u8]) -> Option<RsaKey> {
    use x509_parser::prelude::*;
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match cert.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => Some(RsaKey::new(rsa.modulus, rsa.exponent)),
        _ => None,
    }
}

/// Where a key set comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url {
        url: String,
        http: http::Options,
    },
    /// An OpenID Connect discovery document at `url`, whose `issuer` must be `issuer`
    /// and whose `jwks_uri` (HTTPS) is the key set; both are fetched on each load.
    Discovery {
        url: String,
        issuer: String,
        http: http::Options,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Url { url, .. } | Source::Discovery { url, .. } => url.clone(),
        }
    }
}

/// GETs `url` (at most `MAX_KEY_SET` bytes) and returns the body of a 200.
async fn get(url: &str, opts: &http::Options) -> Result<Vec<u8>, String> {
    let opts = http::Options {
        max_body: MAX_KEY_SET,
        ..opts.clone()
    };
    let r = http::send(http::Request::get(url), &opts)
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("HTTP status {}: {}", r.status, r.body_excerpt()));
    }
    Ok(r.body)
}

/// The `jwks_uri` of the discovery document `doc`, once its `issuer` is `issuer`.
fn discovered_jwks_uri(doc: &[u8], issuer: &str) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(doc).map_err(|e| format!("discovery document: not JSON: {e}"))?;
    let actual = v.get("issuer").and_then(Value::as_str).unwrap_or("");
    if actual != issuer {
        return Err(format!(
            "the discovery document is for issuer {actual:?}, not {issuer:?}"
        ));
    }
    let uri = v
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("the discovery document has no jwks_uri")?;
    if !uri.starts_with("https://") {
        return Err(format!(
            "the discovery document's jwks_uri {uri:?} is not https"
        ));
    }
    Ok(uri.to_owned())
}

#[derive(Debug, Default)]
struct State {
    set: Option<Arc<KeySet>>,
    loaded_at: Option<Instant>,
    last_try: Option<Instant>,
    file_stamp: Option<(SystemTime, u64)>,
}

/// A key set kept fresh (see the module documentation).
#[derive(Debug)]
pub struct Keys {
    /// The attestor, for messages.
    name: &'static str,
    source: Source,
    refresh: Duration,
    state: tokio::sync::Mutex<State>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Keys {
    /// Keys from `source`, loaded again after `refresh`.
    pub fn new(name: &'static str, source: Source, refresh: Duration) -> Self {
        Self {
            name,
            source,
            refresh,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let bytes = match &self.source {
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            Source::Url { url, http: opts } => get(url, opts).await?,
            Source::Discovery { url, issuer, http } => {
                let uri = discovered_jwks_uri(&get(url, http).await?, issuer)?;
                get(&uri, http)
                    .await
                    .map_err(|e| format!("jwks_uri {uri}: {e}"))?
            }
        };
        KeySet::parse(&bytes)
    }

    async fn reload(&self, st: &mut State) {
        st.last_try = Some(Instant::now());
        let stamp = match &self.source {
            Source::File(p) => file_stamp(p),
            Source::Url { .. } | Source::Discovery { .. } => None,
        };
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(attestor = self.name, source = %self.source.describe(), keys = set.len(), "key set loaded");
                st.set = Some(Arc::new(set));
                st.loaded_at = Some(Instant::now());
                st.file_stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(
                    attestor = self.name,
                    source = %self.source.describe(),
                    kept = st.set.is_some(),
                    "cannot load the key set: {e}"
                );
            }
        }
    }

    /// The attestor these keys are for.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the keys come from, for messages.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Whether they come from a file.
    pub fn is_file(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    /// Loads the set once, for start-up; the error says why it could not be read.
    pub async fn load(&self) -> Result<usize, String> {
        let set = self.fetch().await?;
        let n = set.len();
        let mut st = self.state.lock().await;
        st.set = Some(Arc::new(set));
        st.loaded_at = Some(Instant::now());
        st.last_try = st.loaded_at;
        if let Source::File(p) = &self.source {
            st.file_stamp = file_stamp(p);
        }
        Ok(n)
    }

    /// The key with ID `kid`, loading the set first when it is stale.
    pub async fn key(&self, kid: &str) -> Result<RsaKey, AttestError> {
        let mut st = self.state.lock().await;
        let may_try = |st: &State| st.last_try.is_none_or(|t| t.elapsed() >= MIN_REFETCH);
        // A file is read again when it changed (a local read is cheap); a URL when the
        // set is older than the refresh interval, at most once per MIN_REFETCH while
        // the issuer fails.
        let due = match &self.source {
            Source::File(p) => st.loaded_at.is_none() || file_stamp(p) != st.file_stamp,
            Source::Url { .. } | Source::Discovery { .. } => {
                st.loaded_at.is_none_or(|t| t.elapsed() >= self.refresh) && may_try(&st)
            }
        };
        if due {
            self.reload(&mut st).await;
        }
        if let Some(k) = st.set.as_ref().and_then(|s| s.get(kid)) {
            return Ok(k.clone());
        }
        if st.set.is_some() && may_try(&st) {
            // Perhaps the issuer rotated its keys since the last load.
            self.reload(&mut st).await;
            if let Some(k) = st.set.as_ref().and_then(|s| s.get(kid)) {
                return Ok(k.clone());
            }
        }
        match &st.set {
            None => Err(AttestError::Unavailable(format!(
                "{}: the token signing keys from {} could not be loaded",
                self.name,
                self.source.describe()
            ))),
            Some(_) => Err(AttestError::Refused(format!(
                "{}: the token is signed with key {kid:?}, which is not among the keys from {}",
                self.name,
                self.source.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn jwk(kid: &str, key: &RsaKey) -> Value {
        serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&key.n), "e": URL_SAFE_NO_PAD.encode(&key.e),
        })
    }

    fn some_key(b: u8) -> RsaKey {
        RsaKey {
            n: vec![b; 256],
            e: vec![1, 0, 1],
        }
    }

    #[test]
    fn parses_jwks_and_skips_what_it_cannot_use() {
        let set = serde_json::json!({"keys": [
            jwk("a", &some_key(1)),
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQ", "e": "AQAB"},
            {"kty": "RSA", "n": "AQ", "e": "AQAB"},
        ]});
        let ks = KeySet::parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(ks.len(), 1);
        assert_eq!(ks.get("a"), Some(&some_key(1)));
        for bad in [&b"[]"[..], b"{\"keys\": 1}", b"{\"keys\": []}", b"nope"] {
            assert!(
                KeySet::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_a_map_of_pem_certificates() {
        let rsa: Arc<dyn tessera_core::key::Key> = Arc::new(
            tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::Rsa2048).unwrap(),
        );
        let cert = |key: &Arc<dyn tessera_core::key::Key>| {
            let signer = tessera_core::key::RcgenKey::new(key.clone()).unwrap();
            rcgen::CertificateParams::new(vec!["k".to_owned()])
                .unwrap()
                .self_signed(&signer)
                .unwrap()
                .der()
                .to_vec()
        };
        let ec: Arc<dyn tessera_core::key::Key> = Arc::new(
            tessera_core::key::SoftwareKey::generate(tessera_core::key::KeyType::EcP256).unwrap(),
        );
        let map = serde_json::json!({
            "k1": tessera_core::x509::to_pem("CERTIFICATE", &cert(&rsa)),
            "k2": tessera_core::x509::to_pem("CERTIFICATE", &cert(&ec)),
        });
        let ks = KeySet::parse(map.to_string().as_bytes()).unwrap();
        assert_eq!(ks.len(), 1, "the EC certificate is skipped");
        let k1 = ks.get("k1").unwrap();
        let sig = rsa
            .sign(tessera_core::key::SignatureScheme::RsaPkcs1Sha256, b"m")
            .unwrap();
        assert!(k1.verify_rs256(b"m", &sig));
        assert!(!k1.verify_rs256(b"n", &sig));
        let map =
            serde_json::json!({ "k2": tessera_core::x509::to_pem("CERTIFICATE", &cert(&ec)) });
        let e = KeySet::parse(map.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("no RSA signing key"), "{e}");
    }

    #[tokio::test]
    async fn a_file_is_read_again_when_it_changes_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(
            &path,
            serde_json::json!({"keys": [jwk("a", &some_key(1))]}).to_string(),
        )
        .unwrap();
        let keys = Keys::new(
            "gcp_iit",
            Source::File(path.clone()),
            Duration::from_secs(3600),
        );
        assert_eq!(keys.load().await.unwrap(), 1);
        assert_eq!(keys.key("a").await.unwrap(), some_key(1));
        let e = keys.key("b").await.unwrap_err();
        assert!(matches!(e, AttestError::Refused(_)), "{e}");
        assert!(
            e.to_string().contains("\"b\", which is not among the keys"),
            "{e}"
        );
        // A rotation: the file now holds b (and is longer, so its stamp differs).
        std::fs::write(
            &path,
            serde_json::json!({"keys": [jwk("b", &some_key(2)), jwk("c", &some_key(3))]})
                .to_string(),
        )
        .unwrap();
        assert_eq!(keys.key("b").await.unwrap(), some_key(2));
        // A broken file keeps the keys already loaded.
        std::fs::write(&path, "{").unwrap();
        assert_eq!(keys.key("c").await.unwrap(), some_key(3));
    }

    #[test]
    fn a_discovery_document_must_name_the_issuer_and_an_https_key_set() {
        let doc = |iss: &str, uri: &str| {
            serde_json::json!({
                "issuer": iss, "jwks_uri": uri,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string()
        };
        let k8s = "https://kubernetes.default.svc.cluster.local";
        assert_eq!(
            discovered_jwks_uri(
                doc(k8s, "https://10.0.0.1:6443/openid/v1/jwks").as_bytes(),
                k8s
            )
            .unwrap(),
            "https://10.0.0.1:6443/openid/v1/jwks"
        );
        let e =
            discovered_jwks_uri(doc("https://other", "https://x/k").as_bytes(), k8s).unwrap_err();
        assert!(e.contains("for issuer \"https://other\""), "{e}");
        let e = discovered_jwks_uri(doc(k8s, "http://x/k").as_bytes(), k8s).unwrap_err();
        assert!(e.contains("is not https"), "{e}");
        let e = discovered_jwks_uri(b"{\"issuer\": 1}", "").unwrap_err();
        assert!(e.contains("no jwks_uri"), "{e}");
    }

    #[tokio::test]
    async fn keys_that_never_loaded_are_unavailable_not_refused() {
        let keys = Keys::new(
            "azure_msi",
            Source::File(PathBuf::from("/nonexistent/keys.json")),
            Duration::from_secs(3600),
        );
        assert!(keys.load().await.is_err());
        let e = keys.key("a").await.unwrap_err();
        assert!(matches!(e, AttestError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("/nonexistent/keys.json"), "{e}");
    }
}
