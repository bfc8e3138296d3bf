//! The agent's connection to the server: gRPC over TLS, with the server authenticated as
//! `spiffe://<td>/spire/server` against the agent's bundle (the bootstrap bundle before
//! the first attestation) and the agent authenticated by its SVID once it has one.
//! Several server addresses are tried in order ([`dial`]).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tessera_core::SpiffeId;
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_proto::agent::node_client::NodeClient;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
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

/// Builds a channel to the first reachable server. The channel connects lazily, on
/// its first call, and again (from the first address) whenever its connection breaks.
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
                dial(&servers, &connector, CONNECT_TIMEOUT)
                    .await
                    .map(TokioIo::new)
            }
        }))
}

/// Connects to the first of `servers` that accepts a TCP connection within
/// `connect_timeout` and completes the TLS handshake (so presents the server's SVID,
/// when the connector checks it). A server that is down, slow or not the server is
/// skipped; the error is the last address's when none works.
pub async fn dial(
    servers: &[String],
    connector: &TlsConnector,
    connect_timeout: Duration,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut last_err = std::io::Error::other("no server address configured");
    for addr in servers {
        let tcp =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr.as_str())).await {
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
        match connector.connect(server_name(addr), tcp).await {
            Ok(tls) => return Ok(tls),
            Err(e) => {
                last_err = std::io::Error::new(e.kind(), format!("{addr}: TLS: {e}"));
            }
        }
    }
    Err(last_err)
}

/// The TLS server name for `host:port` (only sent as SNI: the server is authenticated
/// by its SPIFFE ID, not by name).
fn server_name(addr: &str) -> rustls::pki_types::ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("tessera-server")
                .unwrap_or_else(|_| unreachable!("a literal DNS name"))
        })
}

/// A client for the agent API.
pub fn node_client(ch: Channel) -> NodeClient<Channel> {
    NodeClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GrpcServer, ServerApi};
    use crate::testing::{TestPki, id, net};
    use std::time::SystemTime;

    fn connector(pki: &TestPki) -> TlsConnector {
        TlsConnector::from(Arc::new(tessera_core::tls::client_config(
            SharedBundle::new(pki.bundle().clone()),
            id("/spire/server"),
            None,
        )))
    }

    #[tokio::test]
    async fn servers_that_are_down_or_not_the_server_are_skipped_in_order() {
        let pki = TestPki::new(SystemTime::now());
        let down = net::refused();
        let not_tls = net::closes().await;
        let impostor = net::node_server(&pki, &id("/not-the-server"), 1).await;
        let good = net::node_server(&pki, &id("/spire/server"), 2).await;
        let later = net::node_server(&pki, &id("/spire/server"), 3).await;
        let servers = [down.clone(), not_tls, impostor, good.clone(), later];
        let tls = dial(&servers, &connector(&pki), CONNECT_TIMEOUT)
            .await
            .unwrap();
        // The first that proved to be the server, not a later one.
        assert_eq!(tls.get_ref().0.peer_addr().unwrap().to_string(), good);
        // None works: the error names the last address tried.
        let e = dial(
            std::slice::from_ref(&down),
            &connector(&pki),
            CONNECT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().starts_with(&format!("{down}: ")), "{e}");
        let e = dial(&[], &connector(&pki), CONNECT_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no server address configured");
    }

    #[tokio::test]
    async fn the_agent_calls_the_next_server_when_the_first_is_down() {
        let pki = TestPki::new(SystemTime::now());
        let first = net::node_server(&pki, &id("/spire/server"), 1).await;
        let second = net::node_server(&pki, &id("/spire/server"), 2).await;
        let sync = |servers: Vec<String>| {
            let server = GrpcServer::new(
                servers,
                id("/spire/server"),
                SharedBundle::new(pki.bundle().clone()),
                SharedIdentity::new(),
            );
            async move {
                server
                    .sync_entries(tessera_proto::agent::SyncRequest::default())
                    .await
                    .map(|r| r.revision)
            }
        };
        assert_eq!(sync(vec![first.clone(), second.clone()]).await, Ok(1));
        assert_eq!(sync(vec![net::refused(), second.clone()]).await, Ok(2));
        assert_eq!(
            sync(vec![net::closes().await, net::refused(), second]).await,
            Ok(2)
        );
        let e = sync(vec![net::refused()]).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
