//! TLS for the agent API: accepts TCP connections under the connection caps (a total
//! and a share per source address; a connection past either is closed at once), runs
//! each TLS handshake in its own task under a deadline (a slow or hostile client
//! cannot hold up the accept loop), and hands tonic the established streams together
//! with what the client's certificate says. Established connections close themselves
//! when idle ([`tessera_process::limits::Guarded`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use tessera_core::SpiffeId;
use tessera_telemetry::span::CallerFields;

use tessera_process::limits::{ConnLimiter, Guarded, IpPeer};

/// How the listener limits its clients.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub limiter: Arc<ConnLimiter<IpPeer>>,
    /// Handshakes that take longer than this are dropped.
    pub handshake_timeout: Duration,
    /// Connections with no call in progress for this long are closed.
    pub idle_timeout: Option<Duration>,
}

/// A connection as tonic receives it.
pub type AgentConn = Guarded<TlsConn>;

/// What the handlers learn about the peer of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// The SPIFFE ID of the client SVID, when one was presented (it was verified
    /// against the bundle during the handshake).
    pub spiffe_id: Option<SpiffeId>,
    /// The client SVID's serial, lower-case hex.
    pub serial: String,
}

impl PeerInfo {
    /// The caller of a TLS call as the log's `rpc` span names it: its address and
    /// the SPIFFE ID of the SVID it presented.
    pub fn describe(ext: &tonic::codegen::http::Extensions) -> CallerFields {
        let info = ext.get::<PeerInfo>();
        CallerFields {
            caller: info.and_then(|i| i.addr).map(|a| a.to_string()),
            agent_id: info
                .and_then(|i| i.spiffe_id.as_ref())
                .map(ToString::to_string),
        }
    }
}

/// The caller of a call on the admin socket as the log's `rpc` span names it.
pub fn describe_local(ext: &tonic::codegen::http::Extensions) -> CallerFields {
    let cred = ext
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred);
    CallerFields {
        caller: cred.map(|c| match c.pid() {
            Some(pid) => format!("pid={pid} uid={}", c.uid()),
            None => format!("uid={}", c.uid()),
        }),
        agent_id: None,
    }
}

/// An established TLS connection.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn peer_info(stream: &TlsStream<TcpStream>, addr: SocketAddr) -> PeerInfo {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let (spiffe_id, serial) = match leaf.map(|c| tessera_core::x509::cert_info(c.as_ref())) {
        Some(Ok(info)) => (info.spiffe_id, info.serial_hex),
        _ => (None, String::new()),
    };
    PeerInfo {
        addr: Some(addr),
        spiffe_id,
        serial,
    }
}

/// Accepts connections on `listener` forever, yielding established TLS streams.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<AgentConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            // Past a cap the connection is closed here and now (dropping it); the
            // limiter logs refusals in summaries, not one line each.
            let Ok(permit) = limits.limiter.try_acquire(IpPeer::from(addr.ip())) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let handshake_timeout = limits.handshake_timeout;
            let idle_timeout = limits.idle_timeout;
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let info = peer_info(&stream, addr);
                        let conn = TlsConn {
                            inner: stream,
                            info,
                        };
                        let _ = tx.send(Ok(Guarded::new(conn, permit, idle_timeout))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
