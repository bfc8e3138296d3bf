//! h2's server as the judge of the `:authority` adapter: runs a client's bytes
//! into a real h2 server over an in-memory duplex, either directly or through
//! [`tessera_h2_authority::fix_authority`] as the agent does, and reports the
//! requests h2 accepted and how the connection ended.
//!
//! The client's bytes are written a piece at a time (the caller cuts them at
//! frame or header block boundaries) and h2 is left to process each piece
//! before the next is written: h2 drops requests it has decoded but not yet
//! handed out when a later frame in the same read ends the connection, so
//! writing everything at once would hide requests depending on how reads
//! happen to be cut. "Processed" is decided by Tokio's paused clock: a short
//! sleep only ends once every other future on the runtime is idle. The header
//! block timeout of the adapter runs on the same paused clock and never fires,
//! since each piece takes one millisecond of it and a block is one piece.

use std::cell::RefCell;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// hyper's default header list limit, which tonic (and so the agent) runs h2 with.
pub(crate) const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Whether h2 refuses a request with this header list when the block comes
/// in one frame: a connection-specific field, or `te` other than `trailers`
/// (RFC 9113 §8.2.2). h2 (0.4.20) forgets such a field when the field after
/// it is split across a HEADERS/CONTINUATION boundary (its "malformed" mark
/// lives in one call of its decoder, and a split field ends that call), and
/// then accepts the request; through the adapter, which writes blocks whole,
/// it refuses it.
pub(crate) fn malformed_for_h2(list: &[(Vec<u8>, Vec<u8>)]) -> bool {
    list.iter().any(|(name, value)| {
        matches!(
            name.as_slice(),
            b"connection" | b"transfer-encoding" | b"upgrade" | b"keep-alive" | b"proxy-connection"
        ) || (name == b"te" && value != b"trailers")
    })
}

/// A request h2 accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub stream: u32,
    pub method: String,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub headers: http::HeaderMap,
    pub end_stream: bool,
}

impl Accepted {
    /// The same request with another authority.
    pub(crate) fn with_authority(&self, authority: Option<&str>) -> Accepted {
        Accepted {
            authority: authority.map(str::to_owned),
            ..self.clone()
        }
    }
}

/// What h2 made of a connection.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub accepted: Vec<Accepted>,
    /// The error the connection ended with, if it did not end cleanly.
    pub error: Option<String>,
}

impl Verdict {
    pub(crate) fn get(&self, stream: u32) -> Option<&Accepted> {
        self.accepted.iter().find(|a| a.stream == stream)
    }
}

/// Runs `pieces`, in order, into h2's server (through the adapter when
/// `through_adapter`), then closes the client's side.
pub(crate) fn judge(pieces: &[&[u8]], through_adapter: bool) -> Verdict {
    thread_local! {
        static PAUSED: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a paused Tokio runtime");
    }
    PAUSED.with(|rt| rt.block_on(run(pieces, through_adapter)))
}

async fn run(pieces: &[&[u8]], through_adapter: bool) -> Verdict {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    // Room for everything either way, so that neither side waits on the other's
    // reading and "idle" means "done with what it was given".
    let (client, server) = tokio::io::duplex((total + 1).max(1 << 20));
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let verdict = RefCell::new(Verdict::default());

    let serve = async {
        if through_adapter {
            serve(tessera_h2_authority::fix_authority(server), &verdict).await;
        } else {
            serve(server, &verdict).await;
        }
    };
    let write = async {
        for piece in pieces {
            if client_tx.write_all(piece).await.is_err() {
                break;
            }
            idle().await;
        }
        let _ = client_tx.shutdown().await;
    };
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let all = async {
        tokio::join!(serve, write, drain);
    };
    // On the paused clock this bounds the number of idle rounds, not real time:
    // a connection that never ends is a finding, not something to wait out.
    if tokio::time::timeout(Duration::from_secs(24 * 3600), all)
        .await
        .is_err()
    {
        panic!("h2 never finished with the connection");
    }
    verdict.into_inner()
}

/// Returns once the runtime has nothing else to do.
async fn idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn serve<T>(io: T, verdict: &RefCell<Verdict>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, bytes::Bytes>(io)
        .await;
    let mut conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            verdict.borrow_mut().error = Some(e.to_string());
            return;
        }
    };
    // Kept until the end: dropping one resets its stream, which h2 counts
    // against the client.
    let mut open = Vec::new();
    loop {
        match conn.accept().await {
            Some(Ok((req, mut respond))) => {
                let stream = respond.stream_id().as_u32();
                let (parts, body) = req.into_parts();
                let uri = &parts.uri;
                verdict.borrow_mut().accepted.push(Accepted {
                    stream,
                    method: parts.method.to_string(),
                    scheme: uri.scheme_str().map(str::to_owned),
                    authority: uri.authority().map(|a| a.as_str().to_owned()),
                    path: uri.path_and_query().map(|p| p.as_str().to_owned()),
                    headers: parts.headers,
                    end_stream: body.is_end_stream(),
                });
                // Answered at once, as the Workload API answers a call it
                // refuses, so the stream's state does not depend on timing.
                let _ = respond.send_response(http::Response::new(()), true);
                open.push(respond);
            }
            Some(Err(e)) => {
                verdict.borrow_mut().error = Some(e.to_string());
                break;
            }
            None => break,
        }
    }
    drop(open);
}
