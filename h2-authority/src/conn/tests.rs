//! The adapter on a socket: the header block timeout, and h2 itself behind it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::MAX_HEADER_BLOCK;
use crate::frame::{
    FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_HEADER_LEN, FrameHeader, PREFACE, TYPE_CONTINUATION,
    TYPE_HEADERS,
};
use crate::hpack::table::STATIC_TABLE;
use crate::testutil::*;

#[tokio::test(start_paused = true)]
async fn an_unfinished_header_block_closes_the_connection() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut io = fix_authority(server);
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    client.write_all(&input).await.unwrap();
    // Part of a block: HEADERS without END_HEADERS, then nothing more.
    let block = hex(GRPCIO_BLOCK);
    client
        .write_all(&frame(TYPE_HEADERS, 0, 1, &block[..20]))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let err = loop {
        match io.read(&mut buf).await {
            Ok(0) => panic!("end of stream instead of a timeout"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() >= HEADER_BLOCK_TIMEOUT);
    // What came before the block was handed on.
    assert_eq!(got, input);
    // The client is still connected: only the timer closed it.
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn each_block_has_its_own_time_and_idle_connections_stay() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut io = fix_authority(server);
    let block = hex(GRPCIO_BLOCK);
    let almost = HEADER_BLOCK_TIMEOUT - Duration::from_millis(500);
    let writer = tokio::spawn(async move {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        client.write_all(&input).await.unwrap();
        for stream in [1, 3, 5] {
            // Each block takes nearly the whole allowance, and the next
            // starts at once.
            client
                .write_all(&frame(TYPE_HEADERS, 0, stream, &block[..20]))
                .await
                .unwrap();
            tokio::time::sleep(almost).await;
            client
                .write_all(&frame(
                    TYPE_CONTINUATION,
                    FLAG_END_HEADERS,
                    stream,
                    &block[20..],
                ))
                .await
                .unwrap();
        }
        // Then idle, much longer than the allowance, still connected.
        tokio::time::sleep(10 * HEADER_BLOCK_TIMEOUT).await;
        client
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let wanted = 3;
    while header_blocks(&complete_frames(&got)).len() < wanted {
        let n = io.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    for (_, b) in header_blocks(&split_frames(&got)) {
        assert_eq!(decode_stateless(&b), grpcio_fields("localhost"));
    }
    // Idle between blocks: no timeout.
    let idle = tokio::time::timeout(5 * HEADER_BLOCK_TIMEOUT, io.read(&mut buf)).await;
    assert!(idle.is_err(), "an idle connection was closed: {idle:?}");
    let _client = writer.await.unwrap();
}

#[tokio::test]
async fn a_block_above_the_limit_is_handed_to_h2_unchanged() {
    // HEADERS and CONTINUATION frames past MAX_HEADER_BLOCK, never ended.
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(TYPE_HEADERS, 0, 1, &vec![0x82; 16_000]));
    for _ in 0..8 {
        input.extend(frame(TYPE_CONTINUATION, 0, 1, &vec![0x82; 16_000]));
    }
    assert!(input.len() > MAX_HEADER_BLOCK);
    assert_eq!(run(&input).await, input);
    // h2 behind it refuses such a block (its own limit is smaller).
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut requests = spawn_h2_server_with_default_limits(fix_authority(server));
    client.write_all(&input).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut reply)).await;
    assert!(requests.try_recv().is_err(), "h2 accepted the block");
    let goaway = split_frames_from_server(&reply)
        .into_iter()
        .any(|(h, _)| h.kind == 0x7);
    assert!(goaway, "h2 did not end the connection: {reply:?}");
}

/// h2's server behind the adapter, answering every request with 200 and
/// reporting (authority, headers) of what it accepted.
fn spawn_h2_server<T>(io: T) -> tokio::sync::mpsc::UnboundedReceiver<(String, http::HeaderMap)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    spawn_h2_server_with(io, 1 << 20)
}

/// h2 with the header list limit hyper (so tonic) gives it by default.
fn spawn_h2_server_with_default_limits<T>(
    io: T,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, http::HeaderMap)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    spawn_h2_server_with(io, 16 * 1024)
}

fn spawn_h2_server_with<T>(
    io: T,
    max_header_list: u32,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, http::HeaderMap)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conn = h2::server::Builder::new()
            .max_header_list_size(max_header_list)
            .handshake::<_, bytes::Bytes>(io)
            .await
            .unwrap();
        while let Some(request) = conn.accept().await {
            let Ok((request, mut respond)) = request else {
                return;
            };
            let authority = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let _ = tx.send((authority, request.headers().clone()));
            let _ = respond.send_response(http::Response::new(()), true);
        }
    });
    rx
}

#[tokio::test]
async fn h2_client_to_h2_server_through_the_adapter() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let mut accepted = spawn_h2_server(fix_authority(server_io));
    let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(conn);

    // Every regular static-table name, with its static value where it
    // has one, so h2's encoder uses static references the adapter must
    // read and write with the same table h2's decoder has.
    let statics: Vec<(&str, String)> = STATIC_TABLE
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| !n.starts_with(b":") && *n != b"transfer-encoding")
        .map(|(i, (n, v))| {
            // h2 checks content-length against the (empty) body.
            let value = if *n == b"content-length" {
                "0".to_string()
            } else if v.is_empty() {
                format!("value-{i}")
            } else {
                String::from_utf8(v.to_vec()).unwrap()
            };
            (std::str::from_utf8(n).unwrap(), value)
        })
        .collect();
    let big = "y".repeat(50_000);
    for i in 0..6 {
        let mut request = http::Request::builder().method("POST").uri(format!(
            "http://example.test:{}/svc/Method{}",
            8000 + i % 2,
            i % 3
        ));
        // Repeated values, so h2's encoder refers to its dynamic table.
        request = request
            .header("x-repeated", "same every time")
            .header("x-counter", i.to_string());
        if i == 2 {
            for (n, v) in &statics {
                request = request.header(*n, v.as_str());
            }
        }
        if i == 4 {
            request = request.header("x-big", big.as_str());
        }
        let (response, _) = client
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);

        let (authority, headers) = accepted.recv().await.unwrap();
        assert_eq!(authority, "localhost");
        assert_eq!(headers["x-repeated"], "same every time");
        assert_eq!(headers["x-counter"], i.to_string().as_str());
        if i == 2 {
            for (n, v) in &statics {
                assert_eq!(headers[*n], v.as_str(), "{n}");
            }
        }
        if i == 4 {
            assert_eq!(headers["x-big"], big.as_str());
        }
    }
}

/// Sends grpcio's captured request to h2's server and returns the first
/// frame h2 answers on stream 1.
async fn grpcio_request_to_h2<T>(client: tokio::io::DuplexStream, server: T) -> (u8, Vec<u8>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _accepted = spawn_h2_server(server);
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK)));
    input.extend(frame(0x0, FLAG_END_STREAM, 1, &hex("0000000000")));
    wr.write_all(&input).await.unwrap();
    let answer = async {
        loop {
            let mut head = [0u8; FRAME_HEADER_LEN];
            rd.read_exact(&mut head).await.unwrap();
            let h = FrameHeader::parse(&head).unwrap();
            let mut payload = vec![0; h.len];
            rd.read_exact(&mut payload).await.unwrap();
            if h.stream == 1 {
                return (h.kind, payload);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .unwrap()
}

#[tokio::test]
async fn h2_resets_grpcio_requests_unless_the_adapter_is_there() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (kind, payload) = grpcio_request_to_h2(client, server).await;
    // RST_STREAM with PROTOCOL_ERROR: the trap this module exists for.
    assert_eq!((kind, payload), (0x3, vec![0, 0, 0, 1]));

    let (client, server) = tokio::io::duplex(64 * 1024);
    let (kind, _) = grpcio_request_to_h2(client, fix_authority(server)).await;
    assert_eq!(kind, TYPE_HEADERS, "h2 answered the request");
}
