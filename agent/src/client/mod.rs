//! The agent's connection to the server: gRPC over TLS, with the server authenticated as
//! `spiffe://<td>/spire/server` against the agent's bundle (the bootstrap bundle before
//! the first attestation) and the agent authenticated by its SVID once it has one.
//! Several servers, and several addresses per name, are tried in order ([`dial`]).

use std::future::Future;
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

mod dial;

pub use dial::{Link, dial};

/// Per-call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each step of reaching one address may take: resolving a name, the TCP
/// connect, the TLS handshake.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent trusts the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify the server's SVID against this bundle.
    Bundle(Arc<SharedBundle>),
    /// Accept any server (insecure bootstrap only).
    Insecure,
}

/// The TLS side of a connection to the server trusted as `trust`, presenting
/// `identity` when given.
pub fn tls_connector(
    server_id: SpiffeId,
    trust: Trust,
    identity: Option<Arc<SharedIdentity>>,
) -> TlsConnector {
    TlsConnector::from(Arc::new(match trust {
        Trust::Bundle(b) => tessera_core::tls::client_config(b, server_id, identity),
        Trust::Insecure => tessera_core::tls::insecure_client_config(),
    }))
}

/// Builds a channel to the first reachable server. The channel connects lazily, on
/// its first call, and again (from the first address) whenever its connection breaks.
pub fn channel(
    servers: Vec<String>,
    server_id: SpiffeId,
    trust: Trust,
    identity: Option<Arc<SharedIdentity>>,
) -> Channel {
    let connector = tls_connector(server_id, trust, identity);
    let servers = Arc::new(servers);
    lazy_channel(move || {
        let (servers, connector) = (servers.clone(), connector.clone());
        async move {
            let (stream, link) = dial(&servers, &connector, STEP_TIMEOUT).await?;
            tracing::debug!(server = %link.describe(), "connected to the server");
            Ok(stream)
        }
    })
}

/// A lazy channel whose connections `connect` makes. The endpoint sets no connect
/// timeout: tonic's would bound a whole dial, all addresses together, so [`dial`]
/// times each step instead.
fn lazy_channel<F, Fut>(connect: F) -> Channel
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<TlsStream<TcpStream>>> + Send + 'static,
{
    // The URI is only a label: the connector picks the address.
    Endpoint::from_static("http://tessera-server")
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let fut = connect();
            async move { fut.await.map(TokioIo::new) }
        }))
}

/// A client for the agent API.
pub fn node_client(ch: Channel) -> NodeClient<Channel> {
    NodeClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use crate::protocol::{GrpcServer, ServerApi};
    use crate::testing::{TestPki, id, net};
    use std::time::SystemTime;
    use tessera_core::tls::{SharedBundle, SharedIdentity};

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
