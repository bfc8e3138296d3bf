//! The agent's connection to the server: gRPC over TLS, with the server authenticated as
//! `spiffe://<td>/spire/server` against the agent's bundle (the bootstrap bundle before
//! the first attestation) and the agent authenticated by its SVID once it has one.
//! Several server addresses are tried in order.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tessera_core::SpiffeId;
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_proto::agent::node_client::NodeClient;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Per-call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent trusts the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify the server's SVID against this bundle.
    Bundle(Arc<SharedBundle>),
    /// Accept any server (insecure bootstrap only).
    Insecure,
}

/// Builds a channel to the first reachable server.
pub fn channel(
    servers: Vec<String>,
    server_id: SpiffeId,
    trust: Trust,
    identity: Option<Arc<SharedIdentity>>,
) -> Channel {
    let config = Arc::new(match trust {
        Trust::Bundle(b) => tessera_core::tls::client_config(b, server_id, identity),
        Trust::Insecure => tessera_core::tls::insecure_client_config(),
    });
    let connector = TlsConnector::from(config);
    let servers = Arc::new(servers);
    // The URI is only a label: the connector below picks the address.
    Endpoint::from_static("http://tessera-server")
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let servers = servers.clone();
            async move {
                let mut last_err = std::io::Error::other("no server address configured");
                for addr in servers.iter() {
                    let tcp = match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        TcpStream::connect(addr.as_str()),
                    )
                    .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            last_err = std::io::Error::new(e.kind(), format!("{addr}: {e}"));
                            continue;
                        }
                        Err(_) => {
                            last_err = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("{addr}: connect timed out"),
                            );
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                    let name = rustls::pki_types::ServerName::try_from(
                        host.trim_matches(['[', ']']).to_owned(),
                    )
                    .unwrap_or_else(|_| {
                        rustls::pki_types::ServerName::try_from("tessera-server")
                            .unwrap_or_else(|_| unreachable!("a literal DNS name"))
                    });
                    match connector.connect(name, tcp).await {
                        Ok(tls) => return Ok(TokioIo::new(tls)),
                        Err(e) => {
                            last_err = std::io::Error::new(e.kind(), format!("{addr}: TLS: {e}"));
                        }
                    }
                }
                Err(last_err)
            }
        }))
}

/// A client for the agent API.
pub fn node_client(ch: Channel) -> NodeClient<Channel> {
    NodeClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
}
