//! TLS to PostgreSQL through rustls, with libpq's `sslmode` rules: `require` (and
//! `prefer`) encrypt without checking the server's certificate unless a root CA file
//! is given, when the chain is checked as for `verify-ca`; `verify-ca` checks the
//! chain up to that CA but not the name; `verify-full` checks the chain and that the
//! certificate is for the host named in the connection string.
//!
//! tokio-postgres asks for a connector per host it tries ([`MakeTlsConnect`]), so a
//! failed handshake names the host it was with.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::datastore::{DatastoreError, Failure, Result};

/// How the server's certificate is checked (libpq's `sslmode`, less `disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// Encrypted, the certificate not checked (`prefer` or `require` without a root CA).
    Nothing,
    /// The chain up to the root CA file, not the name (`verify-ca`, or `prefer` and
    /// `require` with a root CA file).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// Makes a rustls connector per host; cheap to clone (the pool clones it).
#[derive(Clone)]
pub(super) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsConnect").finish_non_exhaustive()
    }
}

impl RustlsConnect {
    /// A connector that checks what `verify` says against the CAs in `roots`
    /// (certificates, DER).
    pub(super) fn new(verify: Verify, roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(|e| {
                DatastoreError::Invalid(Failure::caused_by(
                    format!("a certificate in sslrootcert is not a usable CA: {e}"),
                    e,
                ))
            })?;
        }
        let store = Arc::new(store);
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(NoNameCheck {
                roots: None,
                provider: provider.clone(),
            }),
            Verify::Chain => Arc::new(NoNameCheck {
                roots: Some(store),
                provider: provider.clone(),
            }),
            Verify::ChainAndName => {
                WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|e| {
                        DatastoreError::Invalid(Failure::caused_by(
                            format!("sslrootcert cannot verify server certificates: {e}"),
                            e,
                        ))
                    })?
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DatastoreError::Backend(Failure::caused_by("TLS configuration", e)))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// Reads the CA certificates (PEM) of an `sslrootcert` file.
pub(super) fn read_root_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        DatastoreError::Invalid(Failure::caused_by(
            format!("cannot read the PostgreSQL root CA file sslrootcert={shown}: {e}"),
            e,
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            DatastoreError::Invalid(Failure::caused_by(
                format!("the PostgreSQL root CA file sslrootcert={shown} is not PEM: {e}"),
                e,
            ))
        })?;
    if certs.is_empty() {
        return Err(DatastoreError::Invalid(
            format!(
                "the PostgreSQL root CA file sslrootcert={shown} holds no certificate \
                 (-----BEGIN CERTIFICATE-----)"
            )
            .into(),
        ));
    }
    Ok(certs)
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectHost;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsConnectHost> {
        // Called for Unix sockets too (with no name), where TLS is never used.
        Ok(RustlsConnectHost {
            connector: self.connector.clone(),
            host: host.to_owned(),
        })
    }
}

/// The connector for one host.
pub(super) struct RustlsConnectHost {
    connector: tokio_rustls::TlsConnector,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnectHost
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let host = self.host;
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a host name TLS can verify: {e}"),
                )
            })?;
            self.connector
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("TLS handshake with {host} failed: {e}"))
                })
        })
    }
}

/// A TLS session with PostgreSQL.
pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then authenticates without channel binding (tokio-postgres' default
        // channel_binding=prefer allows it).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Checks the chain up to `roots` when there are any (`verify-ca`), nothing
/// otherwise (`require` without a root CA: encryption only, as libpq does); never
/// the name. Handshake signatures are checked either way: the server must hold the
/// key of the certificate it sent.
#[derive(Debug)]
struct NoNameCheck {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
