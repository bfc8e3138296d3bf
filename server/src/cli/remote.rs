//! `tessera-server --remote HOST:PORT --svid DIR <command>`: the admin commands over
//! mTLS on a server's TLS port instead of its admin socket. The caller presents an
//! X509-SVID of an admin (an entry with `admin` set, or an ID in the server's
//! `admin_ids`), as a workload fetches it from its agent:
//! `tessera-agent api fetch x509 --write DIR` leaves `svid.0.pem` (the chain),
//! `svid.0.key` (its PKCS#8 key) and `bundle.0.pem` (the trust bundle) in `DIR`. The
//! server is authenticated as `spiffe://<trust domain>/spire/server` against that
//! bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use tessera_core::key::{Key, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::{Bundle, SpiffeId};
use tessera_proto::admin::admin_client::AdminClient;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::CliError;

/// The files read from the `--svid` directory.
pub const SVID_FILE: &str = "svid.0.pem";
pub const KEY_FILE: &str = "svid.0.key";
pub const BUNDLE_FILE: &str = "bundle.0.pem";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What `--svid DIR` holds, read and checked.
#[derive(Debug)]
pub struct AdminSvid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    chain: Vec<Vec<u8>>,
    key: Arc<dyn Key>,
    bundle: Bundle,
}

fn read(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), CliError> {
    let path = dir.join(name);
    let data = std::fs::read(&path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, data))
}

fn bad(path: PathBuf, reason: impl Into<String>) -> CliError {
    CliError::BadFile {
        path,
        reason: reason.into(),
    }
}

impl AdminSvid {
    /// Reads `svid.0.pem`, `svid.0.key` and `bundle.0.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CliError> {
        let (path, pem) = read(dir, SVID_FILE)?;
        let chain =
            tessera_core::x509::pem_certs(&pem).map_err(|e| bad(path.clone(), e.to_string()))?;
        let spiffe_id = tessera_core::x509::validate_leaf(&chain[0])
            .map_err(|e| bad(path.clone(), format!("not an X509-SVID: {e}")))?;
        let (path, pem) = read(dir, KEY_FILE)?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|e| bad(path.clone(), format!("no PKCS#8 PRIVATE KEY: {e}")))?;
        let key = SoftwareKey::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| bad(path.clone(), e.to_string()))?;
        let leaf_key = tessera_core::x509::cert_info(&chain[0])
            .map_err(|e| bad(dir.join(SVID_FILE), e.to_string()))?
            .public_key_der;
        if leaf_key != key.public_key_der() {
            return Err(bad(
                path,
                format!("this key is not the key of the SVID in {SVID_FILE}"),
            ));
        }
        let (path, pem) = read(dir, BUNDLE_FILE)?;
        let roots = tessera_core::x509::pem_certs(&pem).map_err(|e| bad(path, e.to_string()))?;
        let bundle = Bundle::with_x509(spiffe_id.trust_domain().clone(), roots);
        Ok(Self {
            spiffe_id,
            chain,
            key: Arc::new(key),
            bundle,
        })
    }
}

/// A client of the admin API at `address`, authenticated by `svid`. The connection is
/// made now, so that an unreachable server or a failed handshake is reported as such.
pub async fn connect(address: &str, svid: AdminSvid) -> Result<AdminClient<Channel>, CliError> {
    let server_id = crate::api::server_id(svid.spiffe_id.trust_domain());
    let identity = SharedIdentity::new();
    identity.set(&svid.chain, svid.key);
    let config =
        tessera_core::tls::client_config(SharedBundle::new(svid.bundle), server_id, Some(identity));
    let connector = TlsConnector::from(Arc::new(config));
    let addr = address.to_owned();
    let failed = |message: String| CliError::Remote {
        address: address.to_owned(),
        message,
    };
    let channel = Endpoint::from_static("http://tessera-server")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect(addr.as_str()),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
                let _ = tcp.set_nodelay(true);
                let name = rustls_pki_types::ServerName::try_from("tessera-server")
                    .unwrap_or_else(|_| unreachable!("a literal DNS name"));
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| failed(super::error::innermost(&e)))?;
    Ok(AdminClient::new(channel))
}
