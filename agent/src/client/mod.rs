//! The agent's connection to the server: gRPC over TLS, with the server authenticated as
//! `spiffe://<td>/spire/server` against the agent's bundle (the bootstrap bundle before
//! the first attestation) and the agent authenticated by its SVID once it has one.
//!
//! - `dial`: several servers, and several addresses per name, tried in order;
//! - `connection`: the agent's one connection, and its return to the preferred server
//!   after falling over to another.

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

mod connection;
mod dial;

pub use connection::{Lease, ServerConnection};
pub use dial::{Link, dial};

/// Per-call deadline.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each step of reaching one address may take: resolving a name, the TCP
/// connect, the TLS handshake.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection to a fallback server is first kept this many sync intervals...
const RETURN_INTERVALS: u32 = 6;
/// ...but at least this long...
const MIN_RETURN_AFTER: Duration = Duration::from_secs(10);
/// ...and, doubling while the preferred server stays away, at most this long.
pub const MAX_RETURN_AFTER: Duration = Duration::from_secs(300);

/// How the agent dials its servers and when it leaves a fallback for the preferred
/// server (see [`ServerConnection`]). Not a setting: it follows the sync interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// Each step of reaching one address may take this long.
    pub step_timeout: Duration,
    /// A call gets this long, once connected.
    pub call_timeout: Duration,
    /// A connection to a fallback is kept from half to all of this, the first time.
    pub return_after: Duration,
    /// The ceiling the age limit doubles up to while the preferred server stays away.
    pub return_after_max: Duration,
}

impl Failover {
    /// The agent's: six sync intervals (30 s with the default 5 s), at least 10 s,
    /// doubling up to five minutes.
    pub fn for_interval(sync_interval: Duration) -> Self {
        Self {
            step_timeout: STEP_TIMEOUT,
            call_timeout: CALL_TIMEOUT,
            return_after: sync_interval
                .saturating_mul(RETURN_INTERVALS)
                .clamp(MIN_RETURN_AFTER, MAX_RETURN_AFTER),
            return_after_max: MAX_RETURN_AFTER,
        }
    }
}

impl Default for Failover {
    fn default() -> Self {
        Self::for_interval(Duration::from_secs(5))
    }
}

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
/// It stays on the server it reached: the agent's long-lived connection is a
/// [`ServerConnection`], which returns to the preferred server.
pub fn channel(
    servers: Vec<String>,
    server_id: SpiffeId,
    trust: Trust,
    identity: Option<Arc<SharedIdentity>>,
) -> Channel {
    let connector = tls_connector(server_id, trust, identity);
    let servers = Arc::new(servers);
    lazy_channel(CALL_TIMEOUT, move || {
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
fn lazy_channel<F, Fut>(call_timeout: Duration, connect: F) -> Channel
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<TlsStream<TcpStream>>> + Send + 'static,
{
    // The URI is only a label: the connector picks the address.
    Endpoint::from_static("http://tessera-server")
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let fut = connect();
            async move { fut.await.map(TokioIo::new) }
        }))
}

/// Whether `status` is the client's own, not a server's answer: the connection
/// broke, the call timed out, no server could be reached. tonic keeps the error a
/// status was made from as its source; a status read off the wire has none.
pub fn is_local(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A client for the agent API.
pub fn node_client(ch: Channel) -> NodeClient<Channel> {
    NodeClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
}
