//! X.509 proof-of-possession attestation (`x509pop`), agent side: the node's
//! certificate chain, then a signature over the server's nonce and a nonce of the
//! agent's own, made with the node key through the key seam, so the key may be a
//! PKCS#8 file, a TPM key or a key in a PKCS#11 token. The certificate (and a key
//! file) are read at each attestation, so renewed files are used without a restart;
//! a certificate that does not belong to the key is refused before the server is
//! asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::attestation::x509pop::{
    Challenge, NAME, NONCE_LEN, Payload, Response, scheme_for, signed_message,
};
use tessera_core::key::{Key, SoftwareKey};

use super::{AttestError, NodeAttestor, Session};

/// Where the node key is.
#[derive(Debug, Clone)]
pub enum NodeKey {
    /// A PKCS#8 file (PEM or DER), read at each attestation.
    File(PathBuf),
    /// A key opened at start-up (in the TPM or a PKCS#11 token).
    Held(Arc<dyn Key>),
}

/// A certificate chain (the node's certificate first) and its key.
pub type Identity = (Vec<Vec<u8>>, Arc<dyn Key>);

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct X509Pop {
    certificate_path: PathBuf,
    key: NodeKey,
}

fn failed(m: String) -> AttestError {
    AttestError::Failed(format!("{NAME}: {m}"))
}

/// Reads a PKCS#8 key file.
pub fn read_key_file(path: &Path) -> Result<Arc<dyn Key>, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let der = match PrivatePkcs8KeyDer::from_pem_slice(&bytes) {
        Ok(k) => zeroize::Zeroizing::new(k.secret_pkcs8_der().to_vec()),
        Err(_) => bytes.clone(),
    };
    SoftwareKey::from_pkcs8(&der)
        .map(|k| Arc::new(k) as Arc<dyn Key>)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the certificate chain (PEM, the node's certificate first).
pub fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chain =
        tessera_core::x509::pem_certs(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(chain)
}

/// Whether `leaf` certifies `key`.
pub fn matches(leaf: &[u8], key: &dyn Key) -> bool {
    let info = match tessera_core::x509::cert_info(leaf) {
        Ok(i) => i,
        Err(_) => return false,
    };
    let bits = tessera_core::der::spki_public_key_bits;
    matches!(
        (bits(&info.public_key_der), bits(key.public_key_der())),
        (Ok(a), Ok(b)) if a == b
    )
}

impl X509Pop {
    pub fn new(certificate_path: PathBuf, key: NodeKey) -> Self {
        Self {
            certificate_path,
            key,
        }
    }

    /// The chain and the key, checked to belong together.
    pub fn load(&self) -> Result<Identity, AttestError> {
        let chain = read_chain(&self.certificate_path).map_err(failed)?;
        let key = match &self.key {
            NodeKey::File(p) => read_key_file(p).map_err(failed)?,
            NodeKey::Held(k) => k.clone(),
        };
        if !matches(&chain[0], key.as_ref()) {
            return Err(failed(format!(
                "the certificate in {} is not for the node key",
                self.certificate_path.display()
            )));
        }
        Ok((chain, key))
    }
}

struct PopSession {
    attestor: X509Pop,
    key: Option<Arc<dyn Key>>,
}

#[async_trait]
impl Session for PopSession {
    async fn payload(&mut self) -> Result<Vec<u8>, AttestError> {
        let attestor = self.attestor.clone();
        let (certificates, key) = tokio::task::spawn_blocking(move || attestor.load())
            .await
            .map_err(|e| failed(e.to_string()))??;
        self.key = Some(key);
        serde_json::to_vec(&Payload { certificates }).map_err(|e| failed(e.to_string()))
    }

    async fn answer(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| failed("a second challenge was not expected".into()))?;
        let c: Challenge =
            serde_json::from_slice(&challenge).map_err(|e| failed(format!("challenge: {e}")))?;
        if c.nonce.len() != NONCE_LEN {
            return Err(failed(format!(
                "the server's nonce has {} bytes, not {NONCE_LEN}",
                c.nonce.len()
            )));
        }
        let mut nonce = vec![0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| failed("no randomness for the nonce".into()))?;
        let message = signed_message(&c.nonce, &nonce);
        // TPM and PKCS#11 keys block: sign off the async threads.
        let signature =
            tokio::task::spawn_blocking(move || key.sign(scheme_for(key.key_type()), &message))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| match e {
                    tessera_core::key::KeyError::Unavailable(m) => AttestError::Unavailable(
                        format!("{NAME}: the node key cannot sign now: {m}"),
                    ),
                    other => failed(format!("the node key cannot sign: {other}")),
                })?;
        serde_json::to_vec(&Response { nonce, signature }).map_err(|e| failed(e.to_string()))
    }
}

impl NodeAttestor for X509Pop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn can_reattest(&self) -> bool {
        true
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(PopSession {
            attestor: self.clone(),
            key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::key::KeyType;

    use super::*;

    fn cert_for(key: &Arc<dyn Key>) -> Vec<u8> {
        let td = tessera_core::TrustDomain::new("example.org").unwrap();
        let now = std::time::SystemTime::now();
        tessera_core::x509::self_signed_ca(
            &td,
            "n",
            key,
            now,
            now + std::time::Duration::from_secs(60),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sends_the_chain_and_signs_the_labelled_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
        let key_path = dir.path().join("node.key");
        std::fs::write(
            &key_path,
            tessera_core::x509::to_pem("PRIVATE KEY", key.pkcs8_der()),
        )
        .unwrap();
        let key: Arc<dyn Key> = Arc::new(key);
        let cert = cert_for(&key);
        let cert_path = dir.path().join("node.pem");
        std::fs::write(&cert_path, tessera_core::x509::to_pem("CERTIFICATE", &cert)).unwrap();
        let a = X509Pop::new(cert_path.clone(), NodeKey::File(key_path));
        assert!(a.can_reattest());
        let mut s = a.session();
        let p: Payload = serde_json::from_slice(&s.payload().await.unwrap()).unwrap();
        assert_eq!(p.certificates, vec![cert]);
        let challenge = serde_json::to_vec(&Challenge {
            nonce: vec![9; NONCE_LEN],
        })
        .unwrap();
        let r: Response =
            serde_json::from_slice(&s.answer(challenge.clone()).await.unwrap()).unwrap();
        assert!(tessera_core::key::verify_signature(
            key.public_key_der(),
            scheme_for(KeyType::EcP256),
            &signed_message(&[9; NONCE_LEN], &r.nonce),
            &r.signature
        ));
        let e = s.answer(challenge).await.unwrap_err();
        assert!(e.to_string().contains("second challenge"), "{e}");

        // A certificate for another key is caught before the server is asked.
        let other: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let a = X509Pop::new(cert_path, NodeKey::Held(other));
        let e = a.session().payload().await.unwrap_err();
        assert!(e.to_string().contains("is not for the node key"), "{e}");
        let a = X509Pop::new(dir.path().join("missing.pem"), NodeKey::Held(key));
        let e = a.session().payload().await.unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
