//! The keys and certificates that stand in for the clouds' own: RSA keys that sign
//! identity tokens (with their JWK Set), an RSA-2048 certificate that signs instance
//! identity documents as AWS's region certificates do (PKCS #7 with OpenSSL), and a
//! TLS CA and certificates for serving key sets and APIs over HTTPS (with client
//! certificates when asked).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use der::{Decode, Reader};
use tessera_core::key::{Key, KeyType, SignatureScheme, SoftwareKey};

use crate::run_ok;

/// An RSA key that signs RS256 tokens, with its key ID.
#[derive(Debug, Clone)]
pub struct TokenSigner {
    pub key: Arc<dyn Key>,
    pub kid: String,
}

impl TokenSigner {
    pub fn new(kid: &str) -> Self {
        Self {
            key: Arc::new(SoftwareKey::generate(KeyType::Rsa2048).expect("RSA key")),
            kid: kid.to_owned(),
        }
    }

    /// The public key as a JWK (`kty`, `kid`, `use`, `alg`, `n`, `e`).
    pub fn jwk(&self) -> serde_json::Value {
        let der = tessera_core::der::spki_public_key_bits(self.key.public_key_der()).expect("SPKI");
        // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
        let (n, e) = der::SliceReader::new(der)
            .and_then(|mut r| {
                r.sequence(|seq| {
                    Ok((
                        der::asn1::UintRef::decode(seq)?,
                        der::asn1::UintRef::decode(seq)?,
                    ))
                })
            })
            .expect("RSAPublicKey");
        serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(n.as_bytes()), "e": URL_SAFE_NO_PAD.encode(e.as_bytes()),
        })
    }

    /// An RS256 JWT of `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(SignatureScheme::RsaPkcs1Sha256, input.as_bytes())
            .expect("RS256 signature");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// A JWK Set of `signers`.
pub fn jwks(signers: &[&TokenSigner]) -> serde_json::Value {
    serde_json::json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() })
}

/// An RSA-2048 certificate and key that sign documents the way AWS's regions do.
#[derive(Debug, Clone)]
pub struct DocumentSigner {
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

impl DocumentSigner {
    /// A self-signed RSA-2048 certificate named like AWS's (`O=<org>`).
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("signer dir");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    &format!("/C=US/ST=Washington State/L=Seattle/O={name}"),
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        Self {
            cert,
            key,
            dir: dir.to_owned(),
        }
    }

    /// The `rsa2048` (base64 PKCS #7 SignedData embedding `document`, signed attributes,
    /// no certificates, as AWS serves it) and `signature` (base64 RSA SHA-256 over the
    /// document) of `document`.
    pub fn sign(&self, document: &str) -> (String, String) {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let doc = self.dir.join(format!("doc-{n}.json"));
        std::fs::write(&doc, document).expect("document file");
        let p7 = self.dir.join(format!("doc-{n}.p7"));
        run_ok(
            Command::new("openssl")
                .args([
                    "cms",
                    "-sign",
                    "-binary",
                    "-nodetach",
                    "-nocerts",
                    "-md",
                    "sha256",
                ])
                .arg("-in")
                .arg(&doc)
                .arg("-signer")
                .arg(&self.cert)
                .arg("-inkey")
                .arg(&self.key)
                .args(["-outform", "DER", "-out"])
                .arg(&p7),
        );
        let sig = self.dir.join(format!("doc-{n}.sig"));
        run_ok(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-sign"])
                .arg(&self.key)
                .arg("-out")
                .arg(&sig)
                .arg(&doc),
        );
        let wrap = |bytes: Vec<u8>| -> String {
            let b = STANDARD.encode(bytes);
            // AWS serves it in lines.
            b.as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        (
            wrap(std::fs::read(&p7).expect("PKCS #7")),
            wrap(std::fs::read(&sig).expect("signature")),
        )
    }
}

/// A CA and a server certificate for `ip`, for serving a key set (or an API) over
/// HTTPS; the CA can also issue client certificates.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsIdentity {
    pub fn new(dir: &Path, ip: &str) -> Self {
        let ca = crate::TestCa::new(dir, "Key Set CA");
        let (cert, key) = issue(
            dir,
            &ca.cert,
            &ca.key,
            "tls",
            "keys",
            &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"),
        );
        Self {
            ca: ca.cert,
            ca_key: ca.key,
            cert,
            key,
        }
    }

    /// A client certificate (and key) for `cn` from the same CA, in `dir`.
    pub fn client(&self, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        issue(
            dir,
            &self.ca,
            &self.ca_key,
            &format!("client-{cn}"),
            cn,
            "extendedKeyUsage=clientAuth\n",
        )
    }

    /// The rustls server configuration that requires a client certificate from this
    /// CA.
    pub fn server_config_with_clients(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).expect("CA file") {
            roots.add(c.expect("CA certificate")).expect("CA");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let (certs, key) = self.cert_and_key();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("TLS certificate");
        Arc::new(cfg)
    }

    fn cert_and_key(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificates");
        (
            certs,
            PrivateKeyDer::from_pem_file(&self.key).expect("TLS key"),
        )
    }

    /// The rustls server configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let (certs, key) = self.cert_and_key();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS certificate");
        Arc::new(cfg)
    }
}

/// A P-256 key and a certificate for `cn` with the extensions in `ext` (an OpenSSL
/// extension file's text), signed by the CA `ca`/`ca_key`; `<name>.pem` and
/// `<name>.key` in `dir`.
fn issue(
    dir: &Path,
    ca: &Path,
    ca_key: &Path,
    name: &str,
    cn: &str,
    ext: &str,
) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    let ext_file = dir.join(format!("{name}.ext"));
    std::fs::write(&ext_file, ext).expect("extension file");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(ca)
            .arg("-CAkey")
            .arg(ca_key)
            .args(["-CAcreateserial", "-extfile"])
            .arg(&ext_file)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}
