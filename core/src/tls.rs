//! SPIFFE authentication for rustls: certificate verifiers that trust a live,
//! rotating bundle and check SPIFFE IDs instead of DNS names, and certificate
//! resolvers that serve a rotating SVID whose key may live in hardware.
//!
//! The agent and the server both use these: the agent verifies the server's SVID
//! (`spiffe://<td>/spire/server`) and presents its own; the server presents its SVID and
//! accepts (without requiring) agent SVIDs, so that attestation can run before the
//! agent has one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::bundle::Bundle;
use crate::key::{Key, TlsSigningKey};
use crate::spiffe_id::SpiffeId;
use crate::x509;

/// A bundle shared between the code that refreshes it and the TLS verifiers.
#[derive(Debug)]
pub struct SharedBundle(RwLock<Arc<Bundle>>);

impl SharedBundle {
    /// A shared bundle holding `bundle`.
    pub fn new(bundle: Bundle) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(bundle))))
    }

    /// The current bundle.
    pub fn get(&self) -> Arc<Bundle> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the bundle.
    pub fn set(&self, bundle: Bundle) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(bundle),
            Err(p) => *p.into_inner() = Arc::new(bundle),
        }
    }
}

/// A certificate chain and key shared between the code that renews it and TLS.
#[derive(Debug, Default)]
pub struct SharedIdentity(RwLock<Option<Arc<CertifiedKey>>>);

impl SharedIdentity {
    /// A shared identity holding none yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs a new chain (leaf first, DER) and its key.
    pub fn set(&self, chain: &[Vec<u8>], key: Arc<dyn Key>) {
        let certs = chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let ck = Arc::new(CertifiedKey::new(certs, Arc::new(TlsSigningKey::new(key))));
        match self.0.write() {
            Ok(mut g) => *g = Some(ck),
            Err(p) => *p.into_inner() = Some(ck),
        }
    }

    /// Removes the identity (the next handshakes present none).
    pub fn clear(&self) {
        match self.0.write() {
            Ok(mut g) => *g = None,
            Err(p) => *p.into_inner() = None,
        }
    }

    /// The current chain and key, if any.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl ResolvesClientCert for SharedIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

impl ResolvesServerCert for SharedIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

fn to_system_time(now: UnixTime) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_vec(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Vec<Vec<u8>> {
    std::iter::once(end_entity.as_ref().to_vec())
        .chain(intermediates.iter().map(|c| c.as_ref().to_vec()))
        .collect()
}

/// The handshake-signature methods every verifier here shares: checked with the ring
/// provider's algorithms held in `self.provider`.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

fn general(msg: String) -> rustls::Error {
    rustls::Error::General(msg)
}

/// Verifies a server's X509-SVID against a live bundle and requires an exact SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<SharedBundle>,
    expected: SpiffeId,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// A verifier of servers whose leaf carries `expected`, chained to `bundle`.
    pub fn new(bundle: Arc<SharedBundle>, expected: SpiffeId) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            expected,
            provider: provider(),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        let chain = chain_vec(end_entity, intermediates);
        let id =
            x509::validate_leaf(&chain[0]).map_err(|e| general(format!("server SVID: {e}")))?;
        if id != self.expected {
            return Err(general(format!(
                "server presented SPIFFE ID {id}, expected {}",
                self.expected
            )));
        }
        x509::verify_path(
            &chain,
            bundle.x509_authorities(),
            to_system_time(now),
            webpki::KeyUsage::server_auth(),
        )
        .map_err(|e| general(format!("server SVID: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts (optionally) client X509-SVIDs that chain to a live bundle. Which SPIFFE
/// IDs may do what is decided later, by the API handlers.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<SharedBundle>,
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SpiffeClientVerifier {
    /// A verifier of client certificates chained to `bundle`; `mandatory` refuses clients without one.
    pub fn new(bundle: Arc<SharedBundle>, mandatory: bool) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            mandatory,
            provider: provider(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.get();
        let chain = chain_vec(end_entity, intermediates);
        x509::verify_svid_chain(&chain, &bundle, to_system_time(now))
            .map_err(|e| general(format!("client SVID: {e}")))?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// A server config presenting `identity` and accepting optional client SVIDs.
pub fn server_config(
    identity: Arc<SharedIdentity>,
    bundle: Arc<SharedBundle>,
) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is supported by the ring provider"))
        .with_client_cert_verifier(SpiffeClientVerifier::new(bundle, false))
        .with_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

/// A client config that trusts `bundle`, requires the server to be `server_id`, and
/// presents `identity` when it holds one.
pub fn client_config(
    bundle: Arc<SharedBundle>,
    server_id: SpiffeId,
    identity: Option<Arc<SharedIdentity>>,
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is supported by the ring provider"))
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(bundle, server_id));
    let mut cfg = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session carries the client certificate of the
    // handshake it resumes, so a client that reconnects to present a renewed SVID
    // would be seen with the one it replaced.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

/// A client config that accepts any server certificate: only for the agent's
/// explicitly configured insecure bootstrap, which then pins the bundle it receives.
pub fn insecure_client_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AcceptAny {
        provider: Arc<rustls::crypto::CryptoProvider>,
    }
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        handshake_signatures!();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is supported by the ring provider"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny {
            provider: provider(),
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

/// The SPIFFE ID of the leaf of a peer's certificate chain, if any.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    chain
        .first()
        .and_then(|c| x509::validate_leaf(c.as_ref()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyType, SoftwareKey};
    use crate::spiffe_id::TrustDomain;
    use crate::x509::{Issuer, SvidTemplate};
    use std::time::SystemTime;

    struct Ca {
        issuer: Issuer,
        bundle: Arc<SharedBundle>,
    }

    fn ca() -> Ca {
        let td = TrustDomain::new("example.org").unwrap();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let now = SystemTime::now();
        let der =
            x509::self_signed_ca(&td, "ca", &key, now, now + Duration::from_secs(600)).unwrap();
        let bundle = SharedBundle::new(Bundle::with_x509(td, vec![der.clone()]));
        Ca {
            issuer: Issuer::new(der, key).unwrap(),
            bundle,
        }
    }

    fn identity(ca: &Ca, id: &str) -> Arc<SharedIdentity> {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let id = SpiffeId::new(id).unwrap();
        let cert = x509::sign_x509_svid(
            &SvidTemplate {
                spiffe_id: &id,
                public_key_der: key.public_key_der(),
                dns_names: &[],
                ttl: Duration::from_secs(60),
                now: SystemTime::now(),
            },
            &ca.issuer,
        )
        .unwrap();
        let shared = SharedIdentity::new();
        shared.set(&[cert], key);
        shared
    }

    /// Runs a handshake in memory; returns the client's and the server's result.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> (
        Result<(), rustls::Error>,
        Result<Option<SpiffeId>, rustls::Error>,
    ) {
        let mut c = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("server").unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut buf = Vec::new();
        for _ in 0..20 {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = s.process_new_packets() {
                return (Ok(()), Err(e));
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = c.process_new_packets() {
                return (Err(e), Ok(None));
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        let peer = s.peer_certificates().and_then(peer_spiffe_id);
        (Ok(()), Ok(peer))
    }

    #[test]
    fn mutual_spiffe_authentication() {
        let ca = ca();
        let server_id = SpiffeId::new("spiffe://example.org/spire/server").unwrap();
        let server = server_config(
            identity(&ca, "spiffe://example.org/spire/server"),
            ca.bundle.clone(),
        );
        let agent = identity(&ca, "spiffe://example.org/spire/agent/x");
        let client = client_config(ca.bundle.clone(), server_id.clone(), Some(agent));
        let (c, s) = handshake(client, server.clone());
        c.unwrap();
        assert_eq!(s.unwrap().unwrap().path(), "/spire/agent/x");

        // Without a client identity the handshake still completes (attestation).
        let (c, s) = handshake(
            client_config(ca.bundle.clone(), server_id.clone(), None),
            server.clone(),
        );
        c.unwrap();
        assert_eq!(s.unwrap(), None);

        // A server with another SPIFFE ID is refused.
        let wrong = server_config(
            identity(&ca, "spiffe://example.org/not-server"),
            ca.bundle.clone(),
        );
        let (c, _) = handshake(
            client_config(ca.bundle.clone(), server_id.clone(), None),
            wrong,
        );
        assert!(
            c.unwrap_err()
                .to_string()
                .contains("expected spiffe://example.org/spire/server")
        );

        // A server whose CA the client does not trust is refused.
        let other = self::ca();
        let (c, _) = handshake(
            client_config(other.bundle.clone(), server_id.clone(), None),
            server.clone(),
        );
        assert!(c.is_err());

        // A client SVID from an untrusted CA is refused by the server.
        let stranger = identity(&other, "spiffe://example.org/spire/agent/y");
        let (_, s) = handshake(
            client_config(ca.bundle.clone(), server_id, Some(stranger)),
            server,
        );
        assert!(s.is_err());
    }
}
