//! Helpers the adapter's unit tests share: hex and frame builders, the
//! captured grpcio request and the RFC 7541 examples, decoders that check the
//! rewritten blocks need no table state, and runners that push input through
//! the adapter under many chunkings.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::frame::{
    FLAG_END_HEADERS, FRAME_HEADER_LEN, FrameHeader, PREFACE, TYPE_CONTINUATION, TYPE_HEADERS,
    frame_at, headers_fields, put_frame_header,
};
use crate::hpack::{Decoder, HpackError, INITIAL_TABLE_SIZE, Repr};
use crate::{REPLACEMENT_AUTHORITY, Rewriter, fix_authority, rewrite};

pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    put_frame_header(&mut f, payload.len(), kind, flags, stream);
    f.extend_from_slice(payload);
    f
}

pub(crate) type Field = (Vec<u8>, Vec<u8>, bool);

pub(crate) fn field(name: &str, value: &str) -> Field {
    (name.as_bytes().to_vec(), value.as_bytes().to_vec(), false)
}

pub(crate) fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter().map(|(n, v)| field(n, v)).collect()
}

pub(crate) fn decode_list(dec: &mut Decoder, block: &[u8]) -> Result<Vec<Field>, HpackError> {
    let mut list = Vec::new();
    dec.decode(block, |r| {
        if let Repr::Field {
            name,
            value,
            never_indexed,
        } = r
        {
            list.push((name.to_vec(), value.to_vec(), never_indexed));
        }
    })?;
    Ok(list)
}

/// The list with every `:authority` set to the replacement.
pub(crate) fn with_localhost(list: &[Field]) -> Vec<Field> {
    list.iter()
        .map(|(n, v, s)| {
            let v = if n == b":authority" {
                REPLACEMENT_AUTHORITY.to_vec()
            } else {
                v.clone()
            };
            (n.clone(), v, *s)
        })
        .collect()
}

/// Feeds its data `chunk` bytes at a time, with a pending poll before
/// each chunk, as a socket would.
pub(crate) struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
    ready: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let n = (self.data.len() - self.pos)
            .min(self.chunk)
            .min(buf.remaining());
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs `input` through the adapter, read `chunk` bytes at a time from
/// the socket and `read_size` bytes at a time by the consumer.
pub(crate) async fn run_with(input: &[u8], chunk: usize, read_size: usize) -> Vec<u8> {
    let mut io = fix_authority(Chunked {
        data: input.to_vec(),
        pos: 0,
        chunk,
        ready: false,
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size];
    loop {
        let n = io.read(&mut buf).await.unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Runs `input` through the adapter under several chunkings, checks they
/// all agree, and returns the output.
pub(crate) async fn run(input: &[u8]) -> Vec<u8> {
    let whole = run_with(input, usize::MAX, 1 << 20).await;
    for (chunk, read_size) in [(1, 8192), (3, 5), (9, 1), (700, 16 * 1024 + 9), (8192, 64)] {
        assert_eq!(
            run_with(input, chunk, read_size).await,
            whole,
            "chunk {chunk}, read size {read_size}"
        );
    }
    // Without a socket, whole or fed piece by piece, the same bytes come out.
    assert_eq!(rewrite(input).output, whole, "rewrite()");
    for chunk in [1, 7, 4096] {
        assert_eq!(
            feed_in_chunks(input, chunk),
            whole,
            "Rewriter, chunk {chunk}"
        );
    }
    whole
}

/// Runs `input` through a [`Rewriter`], `chunk` bytes at a time.
pub(crate) fn feed_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        rewriter.feed(piece, &mut out);
    }
    rewriter.finish(&mut out);
    out
}

pub(crate) fn split_frames(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    assert!(buf.starts_with(PREFACE));
    let frames = complete_frames(buf);
    let len: usize = frames.iter().map(|(h, _)| FRAME_HEADER_LEN + h.len).sum();
    assert_eq!(PREFACE.len() + len, buf.len(), "a frame is cut short");
    frames
}

/// The complete frames of client bytes, after the preface.
pub(crate) fn complete_frames(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    match buf.strip_prefix(PREFACE.as_slice()) {
        Some(frames) => split_frames_from_server(frames),
        None => Vec::new(),
    }
}

/// The complete frames in `buf` (no preface).
pub(crate) fn split_frames_from_server(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some((h, payload)) = frame_at(buf, pos) {
        frames.push((h, payload.to_vec()));
        pos += FRAME_HEADER_LEN + h.len;
    }
    frames
}

/// The header blocks of the HEADERS(+CONTINUATION) sequences in `frames`,
/// with the first frame of each.
pub(crate) fn header_blocks(frames: &[(FrameHeader, Vec<u8>)]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(FrameHeader, Vec<u8>)> = None;
    for (h, payload) in frames {
        match h.kind {
            TYPE_HEADERS => {
                assert!(current.is_none());
                let (_, fragment) = headers_fields(h.flags, payload).unwrap();
                current = Some((*h, fragment.to_vec()));
            }
            TYPE_CONTINUATION => current.as_mut().unwrap().1.extend_from_slice(payload),
            _ => {
                assert!(current.is_none(), "frame inside a header block");
                continue;
            }
        }
        if h.flags & FLAG_END_HEADERS != 0 {
            blocks.push(current.take().unwrap());
        }
    }
    assert!(current.is_none());
    blocks
}

/// Decodes each output block with a fresh decoder: the rewritten blocks
/// must not depend on any dynamic table state.
pub(crate) fn decode_stateless(block: &[u8]) -> Vec<Field> {
    let mut fresh = Decoder::new(INITIAL_TABLE_SIZE);
    let list = decode_list(&mut fresh, block).unwrap();
    assert!(fresh.entries() == 0, "the rewritten block indexed a field");
    list
}

pub(crate) fn settings() -> Vec<u8> {
    // HEADER_TABLE_SIZE 4096, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB.
    frame(0x4, 0, 0, &hex("000100001000 000200000000 000400400000"))
}

/// The header block grpcio 1.85.1 (grpc-c 58.0.0) sent for
/// `grpc.insecure_channel("unix:/tmp/cap/sock.sock")`, captured from the
/// socket: `:authority` is the percent-encoded path, which h2 rejects.
pub(crate) const GRPCIO_BLOCK: &str = "40053a706174681f2f537069666665576f726b6c6f61644150492f4665746368\
    4a575453564944400a3a617574686f7269747915746d70253246636170253246736f636b2e736f636b838640\
    0c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c65727340\
    14677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a69\
    70400c677270632d74696d656f7574023353400a757365722d6167656e7430677270632d707974686f6e2f31\
    2e38352e3120677270632d632f35382e302e3020286c696e75783b20636874747032290012776f726b6c6f61\
    642e7370696666652e696f0474727565";

pub(crate) fn grpcio_fields(authority: &str) -> Vec<Field> {
    fields(&[
        (":path", "/SpiffeWorkloadAPI/FetchJWTSVID"),
        (":authority", authority),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
        ("grpc-timeout", "3S"),
        (
            "user-agent",
            "grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)",
        ),
        ("workload.spiffe.io", "true"),
    ])
}

/// RFC 7541 C.3 (raw) and C.4 (Huffman): three requests on one
/// connection sharing the dynamic table.
pub(crate) fn rfc_requests() -> Vec<(Vec<u8>, Vec<u8>, Vec<Field>)> {
    let lists = [
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]),
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ]),
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]),
    ];
    let raw = [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ];
    let huffman = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ];
    lists
        .into_iter()
        .zip(raw.iter().zip(huffman))
        .map(|(list, (r, h))| (hex(r), hex(h), list))
        .collect()
}

pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}
