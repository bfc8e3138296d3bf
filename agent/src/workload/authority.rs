//! A transport adapter that lets Python and Java workloads reach the Workload
//! API over its Unix socket.
//!
//! gRPC clients built on grpc-core 1.57 and later (Python's grpcio, which
//! py-spiffe uses) send the percent-encoded socket path as the HTTP/2
//! `:authority` of every request on a Unix socket (`unix:/run/tessera/api.sock`
//! becomes `run%2Ftessera%2Fapi.sock`), and grpc-java sends the raw path. h2,
//! under tonic, parses `:authority` as a URI authority, fails, and resets the
//! stream with PROTOCOL_ERROR, so those workloads could never fetch an SVID.
//! h2 has no option to relax the check (hyperium/h2#487 is still open).
//!
//! [`fix_authority`] wraps the accepted socket. The server-to-client direction
//! passes through untouched. On the client-to-server direction the adapter
//! follows the HTTP/2 framing: every frame except HEADERS and CONTINUATION
//! passes through byte for byte (DATA payloads are read straight into the
//! caller's buffer when nothing is pending), and each header block is decoded
//! with an HPACK decoder that tracks the client's dynamic table, has its
//! `:authority` set to `localhost`, and is re-encoded with static-table
//! references and literals that add nothing to the dynamic table, so h2's
//! decoder needs no state from the adapter and the two tables cannot
//! disagree.
//!
//! Why always `localhost`: over a Unix socket the authority names nothing (the
//! socket path already is the peer, and the caller is identified from the
//! kernel, not from headers), nothing in Tessera reads it, and `localhost` is
//! what grpc-go, grpc-dart and Kubernetes send there. Rewriting every value,
//! valid or not, keeps one rule instead of a copy of h2's URI grammar. A
//! request without `:authority` is left without one.
//!
//! What is kept: header order and bytes, the never-indexed flag of sensitive
//! fields (RFC 7541 §6.2.3 asks intermediaries to keep it), dynamic table size
//! updates (forwarded, so h2 still enforces its SETTINGS_HEADER_TABLE_SIZE),
//! END_STREAM and the PRIORITY fields. Padding is dropped: it hides lengths
//! from observers on the wire, and there are none on a local socket. Blocks
//! are re-framed at 16,384 bytes, the smallest SETTINGS_MAX_FRAME_SIZE a
//! server may announce and the one tonic and hyper use unless configured.
//!
//! Malformed input never panics and never makes the adapter invent an error
//! of its own: at the first thing it cannot follow (a wrong preface, an HPACK
//! error, a header frame above 16,384 bytes, a block above 64 KiB, a broken
//! CONTINUATION sequence, a connection closed mid-frame) it hands on the
//! client's own bytes from that point, unchanged, and stays a plain pipe for
//! the rest of the connection. h2 then judges exactly what the client sent and
//! answers with its own GOAWAY or RST_STREAM, as it would without the adapter.
//! h2's table never saw the entries the adapter consumed, so a later reference
//! to one of them fails with COMPRESSION_ERROR rather than decoding wrongly.
//!
//! What a client can make it hold: a header block is buffered until it is
//! complete, at most [`MAX_HEADER_BLOCK`] bytes (64 KiB), and for at most
//! [`HEADER_BLOCK_TIMEOUT`] (5 s) once the adapter has seen the header of its
//! HEADERS frame: a client that starts a block and does not finish it in time
//! has its connection closed. h2 under tonic accepts header lists up to 16 KiB
//! (hyper's default), and a header list h2 accepts can encode to at most
//! about 60 KiB (a Huffman code is up to 30 bits per byte), so neither limit
//! refuses a request h2 would serve.
//!
//! The HPACK decoder is written here from RFC 7541 rather than taken from a
//! crate: of the crates on crates.io, httlib-hpack panics on truncated input,
//! and hpack/fluke-hpack/loona-hpack rebuild a hash map of the whole Huffman
//! code for every string and do not report the never-indexed flag.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The value every `:authority` is rewritten to.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

/// The protocol's default SETTINGS_MAX_FRAME_SIZE, which every server accepts.
const MAX_FRAME_SIZE: usize = 16_384;

/// Largest header block (HEADERS plus CONTINUATION frames, as received) the
/// adapter buffers. hyper's default header list limit is 16 KiB decoded, which
/// Huffman coding can stretch to at most 30/8 of that on the wire; a bigger
/// block is handed to h2 as it is, and h2 refuses it.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Largest decoded header list (RFC 9113 §6.5.2 accounting: name, value and 32
/// per field). Bounds what a small block can expand to through the dynamic
/// table; four times what h2 accepts behind it.
const MAX_HEADER_LIST: usize = 64 * 1024;

/// How long a header block may take from the first byte of its HEADERS frame
/// to the end of its last frame. A client sends a block in one write; one that
/// is still incomplete after this is holding memory, and its connection is
/// closed.
pub const HEADER_BLOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest dynamic table the adapter keeps for a client. h2 announces the
/// default 4,096 and rejects larger size updates itself.
const MAX_TABLE_SIZE: usize = 1 << 16;

/// The dynamic table size both ends start with (RFC 9113 §6.5.2).
const INITIAL_TABLE_SIZE: usize = 4_096;

/// Read size from the socket while frames are parsed.
const READ_CHUNK: usize = 16 * 1024;
const MIN_READ: usize = 4 * 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Wraps a freshly accepted Workload API connection so that gRPC clients that
/// send an unusable `:authority` (grpcio, grpc-java) are served; see the module
/// documentation.
pub fn fix_authority<S>(io: S) -> AuthorityFix<S> {
    AuthorityFix {
        io,
        rx: Inbound::new(),
        deadline: None,
        deadline_block: 0,
    }
}

/// A connection whose client-to-server header blocks carry `:authority:
/// localhost`; everything else passes through. Built by [`fix_authority`].
pub struct AuthorityFix<S> {
    io: S,
    rx: Inbound,
    /// When the header block being collected must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Which block (`Inbound::blocks`) the deadline is for.
    deadline_block: u64,
}

impl<S> AuthorityFix<S> {
    /// The wrapped connection, e.g. to read the peer's credentials.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("io", &self.io)
            .field("phase", &self.rx.phase)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = dst.filled().len();
        loop {
            let want = this.rx.drain_into(dst);
            if this.rx.block.is_none() || this.deadline_block != this.rx.blocks {
                this.deadline = None;
            }
            // Hand over what is ready before waiting on the socket again; a
            // zero-length success would read as end of stream.
            if dst.filled().len() > start || this.rx.eof {
                return Poll::Ready(Ok(()));
            }
            match want {
                Want::Full => return Poll::Ready(Ok(())),
                Want::Input => {
                    let mut rb = ReadBuf::new(this.rx.input_space());
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(r) => r?,
                        // Waiting in the middle of a header block: only so long.
                        Poll::Pending if this.rx.block.is_some() => {
                            this.deadline_block = this.rx.blocks;
                            let deadline = this.deadline.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep(HEADER_BLOCK_TIMEOUT))
                            });
                            ready!(deadline.as_mut().poll(cx));
                            tracing::debug!(
                                "workload API connection: header block not completed within {HEADER_BLOCK_TIMEOUT:?}; closing it"
                            );
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "header block not completed within {HEADER_BLOCK_TIMEOUT:?}"
                                ),
                            )));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                    let n = rb.filled().len();
                    this.rx.on_input(n);
                }
                Want::Direct(limit) => {
                    // Zeroing the unfilled part first is the price of no
                    // unsafe code: a memset, cheaper than the copy it saves.
                    let n = limit.min(dst.remaining());
                    let mut rb = ReadBuf::new(dst.initialize_unfilled_to(n));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    dst.advance(n);
                    this.rx.on_direct(n);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What [`Inbound::drain_into`] needs next.
enum Want {
    /// The caller's buffer is full.
    Full,
    /// More bytes from the socket in [`Inbound::input_space`].
    Input,
    /// Up to this many bytes that pass through unchanged: read them from the
    /// socket straight into the caller's buffer.
    Direct(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Expecting the 24-byte client connection preface.
    Preface,
    /// Following frames.
    Frames,
    /// Passing everything through (after input the adapter cannot follow).
    Transparent,
}

/// A header block being collected at the start of the input buffer.
#[derive(Clone, Copy)]
struct BlockScan {
    stream: u32,
    /// Bytes of complete frames of the block already in the buffer.
    scanned: usize,
}

/// The client-to-server direction, without I/O: bytes go in through
/// [`Inbound::input_space`], come out through [`Inbound::drain_into`].
struct Inbound {
    phase: Phase,
    /// Bytes from the client not yet handed on: `inp[head..tail]`. Kept
    /// initialized so it can back a `ReadBuf` without unsafe code.
    inp: Vec<u8>,
    head: usize,
    tail: usize,
    /// How many bytes from `head` the unit being parsed needs (0: no need).
    need: usize,
    /// Bytes of a pass-through frame still to hand on.
    fwd: usize,
    block: Option<BlockScan>,
    /// How many header blocks have been started.
    blocks: u64,
    /// Rewritten frames not yet handed on: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    hpack: Decoder,
    /// A header block fragment assembled from several frames.
    gather: Vec<u8>,
    /// The re-encoded header block before framing.
    enc: Vec<u8>,
    /// The client closed its side.
    eof: bool,
}

impl Inbound {
    fn new() -> Self {
        Inbound {
            phase: Phase::Preface,
            inp: Vec::new(),
            head: 0,
            tail: 0,
            need: 0,
            fwd: 0,
            block: None,
            blocks: 0,
            out: Vec::new(),
            out_pos: 0,
            hpack: Decoder::new(INITIAL_TABLE_SIZE),
            gather: Vec::new(),
            enc: Vec::new(),
            eof: false,
        }
    }

    /// Where the next read from the socket goes; room for at least the unit
    /// being parsed.
    fn input_space(&mut self) -> &mut [u8] {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
            // A big header block grew the buffer; don't keep that per idle
            // connection.
            if self.inp.len() > 4 * READ_CHUNK {
                self.inp.truncate(READ_CHUNK);
                self.inp.shrink_to_fit();
            }
        }
        let pending = self.tail - self.head;
        let want = self.need.max(pending + MIN_READ);
        if self.inp.len() - self.head < want && self.head > 0 {
            self.inp.copy_within(self.head..self.tail, 0);
            self.head = 0;
            self.tail = pending;
        }
        if self.inp.len() < want {
            self.inp.resize(want.max(READ_CHUNK), 0);
        }
        &mut self.inp[self.tail..]
    }

    fn on_input(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
        self.tail += n;
    }

    fn on_direct(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
        if self.phase != Phase::Transparent {
            self.fwd -= n.min(self.fwd);
        }
    }

    /// Moves whatever is ready into `dst`, parsing frames as it goes.
    fn drain_into(&mut self, dst: &mut ReadBuf<'_>) -> Want {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(dst.remaining());
                dst.put_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                if self.out_pos < self.out.len() {
                    return Want::Full;
                }
                self.out.clear();
                self.out_pos = 0;
                shrink(&mut self.out);
            }
            if dst.remaining() == 0 {
                return Want::Full;
            }
            let transparent = self.phase == Phase::Transparent;
            if transparent || self.fwd > 0 {
                let limit = if transparent { usize::MAX } else { self.fwd };
                let avail = self.tail - self.head;
                if avail == 0 {
                    return Want::Direct(limit);
                }
                let n = avail.min(limit).min(dst.remaining());
                dst.put_slice(&self.inp[self.head..self.head + n]);
                self.head += n;
                if !transparent {
                    self.fwd -= n;
                }
                continue;
            }
            match self.step() {
                Ok(true) => self.need = 0,
                Ok(false) if !self.eof => return Want::Input,
                // A clean end between frames.
                Ok(false) if self.head == self.tail && self.block.is_none() => {
                    return Want::Input;
                }
                Ok(false) => self.pass_through(&Malformed::Truncated),
                Err(e) => self.pass_through(&e),
            }
        }
    }

    /// From here on, hands on the client's bytes as they are.
    fn pass_through(&mut self, why: &Malformed) {
        tracing::debug!(
            error = %why,
            "workload API connection: passing the rest of the client's bytes through unchanged",
        );
        self.phase = Phase::Transparent;
        self.block = None;
        self.need = 0;
    }

    /// Parses the next unit at `head`. Ok(false): needs more input.
    fn step(&mut self) -> Result<bool, Malformed> {
        let avail = &self.inp[self.head..self.tail];
        match self.phase {
            Phase::Preface => {
                let n = avail.len().min(PREFACE.len());
                if avail[..n] != PREFACE[..n] {
                    return Err(Malformed::Preface);
                }
                if n < PREFACE.len() {
                    self.need = PREFACE.len();
                    return Ok(false);
                }
                self.fwd = PREFACE.len();
                self.phase = Phase::Frames;
                Ok(true)
            }
            Phase::Frames => {
                let Some(scan) = self.block else {
                    let Some(h) = FrameHeader::parse(avail) else {
                        self.need = FRAME_HEADER_LEN;
                        return Ok(false);
                    };
                    match h.kind {
                        TYPE_HEADERS if h.stream == 0 => return Err(Malformed::StreamZero),
                        TYPE_HEADERS => {
                            self.blocks += 1;
                            self.block = Some(BlockScan {
                                stream: h.stream,
                                scanned: 0,
                            });
                        }
                        TYPE_CONTINUATION => return Err(Malformed::StrayContinuation),
                        _ => self.fwd = FRAME_HEADER_LEN + h.len,
                    }
                    return Ok(true);
                };
                let Some(h) = avail.get(scan.scanned..).and_then(FrameHeader::parse) else {
                    self.need = scan.scanned + FRAME_HEADER_LEN;
                    return Ok(false);
                };
                if scan.scanned > 0 && (h.kind != TYPE_CONTINUATION || h.stream != scan.stream) {
                    return Err(Malformed::Interrupted(h.kind));
                }
                if h.len > MAX_FRAME_SIZE {
                    return Err(Malformed::FrameTooLarge(h.len));
                }
                let end = scan.scanned + FRAME_HEADER_LEN + h.len;
                if end > MAX_HEADER_BLOCK {
                    return Err(Malformed::BlockTooLarge);
                }
                if avail.len() < end {
                    self.need = end;
                    return Ok(false);
                }
                if h.flags & FLAG_END_HEADERS == 0 {
                    self.block = Some(BlockScan {
                        scanned: end,
                        ..scan
                    });
                    return Ok(true);
                }
                self.block = None;
                self.rewrite_block(end)?;
                self.head += end;
                Ok(true)
            }
            Phase::Transparent => Ok(false),
        }
    }

    /// Re-encodes the complete header block `inp[head..head + len]` into
    /// `out`. Nothing is written on error.
    fn rewrite_block(&mut self, len: usize) -> Result<(), Malformed> {
        let raw = self
            .inp
            .get(self.head..self.head + len)
            .ok_or(Malformed::Truncated)?;
        let (first, payload) = frame_at(raw, 0).ok_or(Malformed::Truncated)?;
        let (priority, first_fragment) = headers_fields(first.flags, payload)?;
        let fragment: &[u8] = if first.flags & FLAG_END_HEADERS != 0 {
            first_fragment
        } else {
            self.gather.clear();
            self.gather.extend_from_slice(first_fragment);
            let mut pos = FRAME_HEADER_LEN + first.len;
            while let Some((h, payload)) = frame_at(raw, pos) {
                self.gather.extend_from_slice(payload);
                pos += FRAME_HEADER_LEN + h.len;
            }
            &self.gather
        };
        self.enc.clear();
        self.hpack.rewrite(fragment, &mut self.enc)?;
        write_header_frames(
            &mut self.out,
            first.stream,
            first.flags & FLAG_END_STREAM != 0,
            priority,
            &self.enc,
        );
        self.gather.clear();
        self.enc.clear();
        shrink(&mut self.gather);
        shrink(&mut self.enc);
        Ok(())
    }
}

/// Gives back the memory of an occasional huge header block.
fn shrink(v: &mut Vec<u8>) {
    if v.capacity() > 4 * READ_CHUNK && v.is_empty() {
        v.shrink_to(READ_CHUNK);
    }
}

/// Why the adapter stopped following a connection.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("not an HTTP/2 client connection preface")]
    Preface,
    #[error("HEADERS frame on stream 0")]
    StreamZero,
    #[error("CONTINUATION frame outside a header block")]
    StrayContinuation,
    #[error("header block interrupted by a frame of type {0:#x}")]
    Interrupted(u8),
    #[error("header frame of {0} bytes, above the default SETTINGS_MAX_FRAME_SIZE")]
    FrameTooLarge(usize),
    #[error("header block above {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    #[error("HEADERS padding or priority longer than the frame")]
    Padding,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("HPACK: {0}")]
    Hpack(#[from] HpackError),
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

/// The frame starting at `pos` and its payload, if complete.
fn frame_at(buf: &[u8], pos: usize) -> Option<(FrameHeader, &[u8])> {
    let rest = buf.get(pos..)?;
    let h = FrameHeader::parse(rest)?;
    let payload = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len)?;
    Some((h, payload))
}

/// Splits a HEADERS payload into its priority fields and header block
/// fragment, dropping padding (RFC 9113 §6.2).
fn headers_fields(flags: u8, payload: &[u8]) -> Result<(Option<[u8; 5]>, &[u8]), Malformed> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, r) = rest.split_first().ok_or(Malformed::Padding)?;
        pad = usize::from(n);
        rest = r;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (p, r) = rest.split_first_chunk::<5>().ok_or(Malformed::Padding)?;
        priority = Some(*p);
        rest = r;
    }
    let keep = rest.len().checked_sub(pad).ok_or(Malformed::Padding)?;
    Ok((priority, &rest[..keep]))
}

/// Frames a header block as HEADERS plus as many CONTINUATION frames as the
/// default frame size needs.
fn write_header_frames(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(MAX_FRAME_SIZE - prio_len));
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(block.len() + prio_len + FRAME_HEADER_LEN * (1 + block.len() / MAX_FRAME_SIZE));
    put_frame_header(out, first.len() + prio_len, TYPE_HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
        rest = r;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

fn put_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_FRAME_SIZE, so three bytes hold it.
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

// ---------------------------------------------------------------------------
// HPACK (RFC 7541)
// ---------------------------------------------------------------------------

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Integer,
    #[error("index {0} is in neither table")]
    Index(usize),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("EOS symbol inside a Huffman string")]
    HuffmanEos,
    #[error("Huffman padding longer than 7 bits or not EOS")]
    HuffmanPadding,
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
    #[error("dynamic table size {0} above the adapter's limit")]
    TableSize(usize),
    #[error("decoded header list above {MAX_HEADER_LIST} bytes")]
    ListTooLarge,
}

/// One decoded representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr<'a> {
    SizeUpdate(usize),
    Field {
        name: &'a [u8],
        value: &'a [u8],
        never_indexed: bool,
    },
}

/// A dynamic table entry: name and value in one allocation.
struct Entry {
    field: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        Entry {
            field: field.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        self.field.split_at(self.name_len)
    }

    /// RFC 7541 §4.1.
    fn size(&self) -> usize {
        self.field.len() + 32
    }
}

/// A decoded header field: name and value.
pub type HeaderField = (Vec<u8>, Vec<u8>);

/// An HPACK decoder for tools that read HTTP/2 by hand: the end-to-end tests
/// drive Workload API connections byte by byte (to split a request around a
/// fork) and decode the agent's answers with it.
pub struct HeaderDecoder(Decoder);

impl fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("table_entries", &self.0.table.len())
            .finish()
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        HeaderDecoder(Decoder::new(INITIAL_TABLE_SIZE))
    }
}

impl HeaderDecoder {
    /// Decodes the next complete header block of a connection into its
    /// (name, value) pairs, following the dynamic table across blocks.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, String> {
        let mut out = Vec::new();
        self.0
            .decode(block, |repr| {
                if let Repr::Field { name, value, .. } = repr {
                    out.push((name.to_vec(), value.to_vec()));
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// A decoder that follows the encoder's dynamic table across header blocks.
struct Decoder {
    /// Newest entry first, so index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    fn new(max_size: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Re-encodes `block` into `enc` without the dynamic table, with
    /// `:authority` replaced.
    fn rewrite(&mut self, block: &[u8], enc: &mut Vec<u8>) -> Result<(), HpackError> {
        self.decode(block, |repr| match repr {
            Repr::SizeUpdate(size) => put_int(enc, 0x20, 5, size),
            Repr::Field {
                name,
                value,
                never_indexed,
            } => {
                let value = if name == b":authority" {
                    if value != REPLACEMENT_AUTHORITY {
                        tracing::trace!(
                            authority = %value.escape_ascii(),
                            "rewriting the :authority of a Workload API request",
                        );
                    }
                    REPLACEMENT_AUTHORITY
                } else {
                    value
                };
                encode_field(enc, name, value, never_indexed);
            }
        })
    }

    /// Decodes one complete header block, updating the dynamic table, and
    /// hands each representation to `sink` in order.
    fn decode(&mut self, block: &[u8], mut sink: impl FnMut(Repr<'_>)) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        let mut list_size = 0usize;
        while let Some(&b) = block.get(pos) {
            if b & 0x20 != 0 && b & 0xc0 == 0 {
                // Size updates belong at the start of a block (§4.2); h2 agrees.
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = read_int(block, &mut pos, 5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSize(size));
                }
                self.max_size = size;
                self.evict(0);
                sink(Repr::SizeUpdate(size));
                continue;
            }
            fields_seen = true;
            if b & 0x80 != 0 {
                let index = read_int(block, &mut pos, 7)?;
                let (name, value) = lookup(&self.table, index)?;
                account(&mut list_size, name, value)?;
                sink(Repr::Field {
                    name,
                    value,
                    never_indexed: false,
                });
                continue;
            }
            let (prefix, indexing, never_indexed) = if b & 0x40 != 0 {
                (6, true, false)
            } else {
                (4, false, b & 0x10 != 0)
            };
            let index = read_int(block, &mut pos, prefix)?;
            let name = if index == 0 {
                read_string(block, &mut pos, &mut self.name_buf)?
            } else {
                lookup(&self.table, index)?.0
            };
            let value = read_string(block, &mut pos, &mut self.value_buf)?;
            account(&mut list_size, name, value)?;
            sink(Repr::Field {
                name,
                value,
                never_indexed,
            });
            if indexing {
                let entry = Entry::new(name, value);
                self.insert(entry);
            }
        }
        Ok(())
    }

    /// RFC 7541 §4.4: evict to make room; an entry larger than the table
    /// empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Evicts until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(old) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= old.size();
        }
    }
}

fn account(list_size: &mut usize, name: &[u8], value: &[u8]) -> Result<(), HpackError> {
    *list_size += name.len() + value.len() + 32;
    if *list_size > MAX_HEADER_LIST {
        return Err(HpackError::ListTooLarge);
    }
    Ok(())
}

fn lookup(table: &VecDeque<Entry>, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
    match index {
        0 => Err(HpackError::Index(0)),
        1..=61 => Ok(STATIC_TABLE[index - 1]),
        _ => table
            .get(index - 62)
            .map(Entry::parts)
            .ok_or(HpackError::Index(index)),
    }
}

/// RFC 7541 §5.1. Values above u32::MAX are refused (nothing in HTTP/2 needs
/// them), as are encodings longer than five continuation bytes.
fn read_int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let max = (1u8 << prefix) - 1;
    let mut value = u64::from(first & max);
    if value < u64::from(max) {
        return Ok(value as usize);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::Integer);
        }
    }
    u32::try_from(value)
        .map(|v| v as usize)
        .map_err(|_| HpackError::Integer)
}

/// RFC 7541 §5.2: a string literal, borrowed from the block when raw, decoded
/// into `buf` when Huffman-coded.
fn read_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = read_int(block, pos, 7)?;
    let raw = block
        .get(*pos..pos.saturating_add(len))
        .ok_or(HpackError::Truncated)?;
    *pos += len;
    if !huffman {
        return Ok(raw);
    }
    buf.clear();
    huffman_decode(raw, buf)?;
    Ok(buf)
}

/// RFC 7541 §5.1 integer with `flags` in the bits above the prefix.
fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A raw (not Huffman-coded) string literal.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Encodes one field without touching the dynamic table: an indexed static
/// entry when name and value match one, else a literal without indexing (or
/// never indexed, as received) with the name from the static table if it is
/// there.
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    let mut name_index = 0;
    for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
        if n != name {
            continue;
        }
        if v == value && !never_indexed {
            put_int(out, 0x80, 7, i + 1);
            return;
        }
        if name_index == 0 {
            name_index = i + 1;
        }
    }
    let flags = if never_indexed { 0x10 } else { 0x00 };
    put_int(out, flags, 4, name_index);
    if name_index == 0 {
        put_string(out, name);
    }
    put_string(out, value);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// RFC 7541 Appendix B, as the code length of each symbol (0..=255, then EOS).
/// The code is canonical: within one length, codes increase with the symbol,
/// and each length starts where the previous one ended, shifted left. So the
/// lengths alone determine every code (the tests check codes against the
/// RFC's).
const HUFFMAN_CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..0x7f
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// Canonical-code decoding tables: the codes of length `l` are
/// `first[l] .. first[l] + count[l]`, for the symbols
/// `symbols[offset[l]..][..count[l]]`.
struct HuffmanTables {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

static HUFFMAN: HuffmanTables = huffman_tables();

const fn huffman_tables() -> HuffmanTables {
    let mut count = [0u32; MAX_CODE_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[HUFFMAN_CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_CODE_LEN + 1];
    let mut offset = [0u16; MAX_CODE_LEN + 1];
    let mut symbols = [0u16; 257];
    let mut code = 0u32;
    let mut next = 0usize;
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        first[len] = code;
        offset[len] = next as u16;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_CODE_LENGTHS[s] as usize == len {
                symbols[next] = s as u16;
                next += 1;
            }
            s += 1;
        }
        code = (code + count[len]) << 1;
        len += 1;
    }
    HuffmanTables {
        first,
        count,
        offset,
        symbols,
    }
}

/// RFC 7541 §5.2: decodes bit by bit against the canonical tables; padding
/// must be at most 7 bits of the EOS prefix (all ones), and EOS itself is an
/// error.
fn huffman_decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    dst.reserve(src.len() + src.len() / 2);
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let i = code.wrapping_sub(HUFFMAN.first[len]);
            if i < HUFFMAN.count[len] {
                let symbol = HUFFMAN.symbols[usize::from(HUFFMAN.offset[len]) + i as usize];
                if symbol == EOS {
                    return Err(HpackError::HuffmanEos);
                }
                dst.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_LEN {
                // The code is complete, so this cannot happen; it keeps `len`
                // inside the tables whatever they hold.
                return Err(HpackError::Huffman);
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError::HuffmanPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // ----- helpers -------------------------------------------------------

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        put_frame_header(&mut f, payload.len(), kind, flags, stream);
        f.extend_from_slice(payload);
        f
    }

    type Field = (Vec<u8>, Vec<u8>, bool);

    fn field(name: &str, value: &str) -> Field {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec(), false)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter().map(|(n, v)| field(n, v)).collect()
    }

    fn decode_list(dec: &mut Decoder, block: &[u8]) -> Result<Vec<Field>, HpackError> {
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
    fn with_localhost(list: &[Field]) -> Vec<Field> {
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

    /// The canonical code of a symbol, from the decoder's tables.
    fn code_of(symbol: u16) -> (u32, usize) {
        let len = usize::from(HUFFMAN_CODE_LENGTHS[usize::from(symbol)]);
        let start = usize::from(HUFFMAN.offset[len]);
        let rank = HUFFMAN.symbols[start..]
            .iter()
            .position(|&s| s == symbol)
            .unwrap();
        (HUFFMAN.first[len] + rank as u32, len)
    }

    /// Test-only Huffman encoder, to feed the decoder strings the RFC has no
    /// example for.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc = 0u64;
        let mut bits = 0;
        for &b in s {
            let (code, len) = code_of(u16::from(b));
            acc = (acc << len) | u64::from(code);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    /// Feeds its data `chunk` bytes at a time, with a pending poll before
    /// each chunk, as a socket would.
    struct Chunked {
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
    async fn run_with(input: &[u8], chunk: usize, read_size: usize) -> Vec<u8> {
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
    async fn run(input: &[u8]) -> Vec<u8> {
        let whole = run_with(input, usize::MAX, 1 << 20).await;
        for (chunk, read_size) in [(1, 8192), (3, 5), (9, 1), (700, 16 * 1024 + 9), (8192, 64)] {
            assert_eq!(
                run_with(input, chunk, read_size).await,
                whole,
                "chunk {chunk}, read size {read_size}"
            );
        }
        whole
    }

    fn split_frames(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        assert!(buf.starts_with(PREFACE));
        let frames = complete_frames(buf);
        let len: usize = frames.iter().map(|(h, _)| FRAME_HEADER_LEN + h.len).sum();
        assert_eq!(PREFACE.len() + len, buf.len(), "a frame is cut short");
        frames
    }

    /// The complete frames of client bytes, after the preface.
    fn complete_frames(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        match buf.strip_prefix(PREFACE.as_slice()) {
            Some(frames) => split_frames_from_server(frames),
            None => Vec::new(),
        }
    }

    /// The complete frames in `buf` (no preface).
    fn split_frames_from_server(buf: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
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
    fn header_blocks(frames: &[(FrameHeader, Vec<u8>)]) -> Vec<(FrameHeader, Vec<u8>)> {
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
    fn decode_stateless(block: &[u8]) -> Vec<Field> {
        let mut fresh = Decoder::new(INITIAL_TABLE_SIZE);
        let list = decode_list(&mut fresh, block).unwrap();
        assert!(
            fresh.table.is_empty(),
            "the rewritten block indexed a field"
        );
        list
    }

    fn settings() -> Vec<u8> {
        // HEADER_TABLE_SIZE 4096, ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB.
        frame(0x4, 0, 0, &hex("000100001000 000200000000 000400400000"))
    }

    /// The header block grpcio 1.85.1 (grpc-c 58.0.0) sent for
    /// `grpc.insecure_channel("unix:/tmp/cap/sock.sock")`, captured from the
    /// socket: `:authority` is the percent-encoded path, which h2 rejects.
    const GRPCIO_BLOCK: &str = "40053a706174681f2f537069666665576f726b6c6f61644150492f4665746368\
        4a575453564944400a3a617574686f7269747915746d70253246636170253246736f636b2e736f636b838640\
        0c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c65727340\
        14677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a69\
        70400c677270632d74696d656f7574023353400a757365722d6167656e7430677270632d707974686f6e2f31\
        2e38352e3120677270632d632f35382e302e3020286c696e75783b20636874747032290012776f726b6c6f61\
        642e7370696666652e696f0474727565";

    fn grpcio_fields(authority: &str) -> Vec<Field> {
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

    // ----- Huffman ---------------------------------------------------------

    #[test]
    fn huffman_code_is_canonical_and_matches_the_rfc() {
        // Every bit string is covered: the last length ends exactly at 2^30.
        assert_eq!(
            HUFFMAN.first[MAX_CODE_LEN] + HUFFMAN.count[MAX_CODE_LEN],
            1 << 30
        );
        // (symbol, code, length) from RFC 7541 Appendix B, one or more per
        // code length.
        let rfc: [(u16, u32, usize); 27] = [
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (11, 0xfffffe9, 28),
            (22, 0x3ffffffe, 30),
            (b' '.into(), 0x14, 6),
            (b'!'.into(), 0x3f8, 10),
            (b'#'.into(), 0xffa, 12),
            (b'$'.into(), 0x1ff9, 13),
            (b'%'.into(), 0x15, 6),
            (b'&'.into(), 0xf8, 8),
            (b'\''.into(), 0x7fa, 11),
            (b'0'.into(), 0x0, 5),
            (b':'.into(), 0x5c, 7),
            (b'<'.into(), 0x7ffc, 15),
            (b'\\'.into(), 0x7fff0, 19),
            (b'^'.into(), 0x3ffc, 14),
            (b't'.into(), 0x9, 5),
            (128, 0xfffe6, 20),
            (153, 0x1fffdc, 21),
            (129, 0x3fffd2, 22),
            (199, 0x1ffffec, 25),
            (192, 0x3ffffe0, 26),
            (203, 0x7ffffde, 27),
            (254, 0x7fffff0, 27),
            (EOS, 0x3fffffff, 30),
        ];
        for (symbol, code, len) in rfc {
            assert_eq!(code_of(symbol), (code, len), "symbol {symbol}");
        }
    }

    #[test]
    fn huffman_decodes_the_rfc_examples() {
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ];
        for (coded, plain) in cases {
            let mut out = Vec::new();
            huffman_decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            assert_eq!(huffman_encode(plain.as_bytes()), hex(coded));
        }
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for s in [all.clone(), all.iter().rev().copied().collect(), vec![]] {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&s), &mut out).unwrap();
            assert_eq!(out, s);
        }
        for b in 0..=255u8 {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&[b, b'a', b]), &mut out).unwrap();
            assert_eq!(out, [b, b'a', b]);
        }
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // '0' is 00000; padding 000 is not a prefix of EOS.
        assert_eq!(
            huffman_decode(&[0x00], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // 'a' then 11 bits of ones: padding longer than 7 bits.
        assert_eq!(
            huffman_decode(&[0x1f, 0xff], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // A whole EOS symbol.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HpackError::HuffmanEos)
        );
        // A lone 0xff: 8 bits of padding.
        assert_eq!(
            huffman_decode(&[0xff], &mut out),
            Err(HpackError::HuffmanPadding)
        );
    }

    // ----- HPACK -----------------------------------------------------------

    #[test]
    fn integers_follow_the_rfc() {
        let mut pos = 0;
        assert_eq!(read_int(&[0xea], &mut pos, 5), Ok(10));
        pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        for prefix in 4..=7 {
            for value in (0..300).chain([1337, 4096, 65_535, 1 << 20, u32::MAX as usize]) {
                let mut enc = Vec::new();
                put_int(&mut enc, 0, prefix, value);
                let mut pos = 0;
                assert_eq!(read_int(&enc, &mut pos, prefix), Ok(value));
                assert_eq!(pos, enc.len());
            }
        }
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0x80], &mut pos, 5),
            Err(HpackError::Truncated)
        );
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 5),
            Err(HpackError::Integer)
        );
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x0f], &mut pos, 5),
            Err(HpackError::Integer)
        );
    }

    /// RFC 7541 C.3 (raw) and C.4 (Huffman): three requests on one
    /// connection sharing the dynamic table.
    fn rfc_requests() -> Vec<(Vec<u8>, Vec<u8>, Vec<Field>)> {
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

    #[test]
    fn decodes_rfc_requests_with_the_dynamic_table() {
        let mut raw_dec = Decoder::new(INITIAL_TABLE_SIZE);
        let mut huff_dec = Decoder::new(INITIAL_TABLE_SIZE);
        for (raw, huffman, list) in rfc_requests() {
            assert_eq!(decode_list(&mut raw_dec, &raw).unwrap(), list);
            assert_eq!(decode_list(&mut huff_dec, &huffman).unwrap(), list);
        }
        assert_eq!(raw_dec.size, 164);
        assert_eq!(huff_dec.size, 164);
        assert_eq!(raw_dec.table.len(), 3);
    }

    #[test]
    fn decodes_rfc_responses_with_eviction() {
        // C.5 (raw) and C.6 (Huffman), with SETTINGS_HEADER_TABLE_SIZE 256.
        let lists = [
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                ),
            ]),
        ];
        let raw = [
            "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32312047\
             4d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            "4803333037c1c0bf",
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970773866\
             6f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630\
             303b2076657273696f6e3d31",
        ];
        let huffman = [
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863\
             c78f0b97c8e9ae82ae43d3",
            "4883640effc1c0bf",
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b3\
             35dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ];
        for blocks in [raw, huffman] {
            let mut dec = Decoder::new(256);
            for (block, list) in blocks.iter().zip(&lists) {
                assert_eq!(&decode_list(&mut dec, &hex(block)).unwrap(), list);
            }
            // After C.5.3: set-cookie, content-encoding, date (:22).
            assert_eq!(dec.size, 215);
            assert_eq!(dec.table.len(), 3);
            assert_eq!(lookup(&dec.table, 64).unwrap().0, b"date");
        }
    }

    #[test]
    fn rewrite_is_stateless_and_replaces_only_the_authority() {
        let mut raw_dec = Decoder::new(INITIAL_TABLE_SIZE);
        let mut huff_dec = Decoder::new(INITIAL_TABLE_SIZE);
        for (raw, huffman, list) in rfc_requests() {
            for (dec, block) in [(&mut raw_dec, raw), (&mut huff_dec, huffman)] {
                let mut enc = Vec::new();
                dec.rewrite(&block, &mut enc).unwrap();
                assert_eq!(decode_stateless(&enc), with_localhost(&list));
            }
        }
        // The client's table is still followed: the third request referred
        // to entries the first two added.
        assert_eq!(raw_dec.size, 164);

        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        let mut enc = Vec::new();
        dec.rewrite(&hex(GRPCIO_BLOCK), &mut enc).unwrap();
        assert_eq!(decode_stateless(&enc), grpcio_fields("localhost"));
    }

    #[test]
    fn rewrite_keeps_never_indexed_fields_and_uses_static_entries() {
        // RFC 7541 C.2.3: "password: secret", never indexed.
        let block = hex("100870617373776f726406736563726574");
        let mut enc = Vec::new();
        Decoder::new(INITIAL_TABLE_SIZE)
            .rewrite(&block, &mut enc)
            .unwrap();
        assert_eq!(enc, block);
        assert_eq!(
            decode_stateless(&enc),
            vec![(b"password".to_vec(), b"secret".to_vec(), true)]
        );

        // A never-indexed field whose name and value are a static entry
        // stays a never-indexed literal; other static matches become indexed.
        let mut enc = Vec::new();
        encode_field(&mut enc, b":method", b"POST", true);
        assert_eq!(enc, hex("1204 504f5354"));
        enc.clear();
        encode_field(&mut enc, b":method", b"POST", false);
        encode_field(&mut enc, b"accept-encoding", b"gzip, deflate", false);
        encode_field(&mut enc, b"content-type", b"application/grpc", false);
        assert_eq!(enc, hex("83 90 0f10 10 6170706c69636174696f6e2f67727063"));
    }

    #[test]
    fn size_updates_are_followed_and_forwarded() {
        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        let (first, _, _) = rfc_requests().remove(0);
        decode_list(&mut dec, &first).unwrap();
        assert_eq!(dec.table.len(), 1);

        // Shrinking to 0 empties the table; growing back keeps it empty.
        let mut block = hex("20 3fe11f 82");
        let mut enc = Vec::new();
        dec.rewrite(&block, &mut enc).unwrap();
        assert_eq!(enc, block);
        assert!(dec.table.is_empty());
        assert_eq!(dec.max_size, 4096);
        assert_eq!(
            decode_list(&mut dec, &hex("be")),
            Err(HpackError::Index(62))
        );

        // Only at the start of a block.
        block = hex("82 20");
        assert_eq!(
            decode_list(&mut dec, &block),
            Err(HpackError::LateSizeUpdate)
        );
        // Not beyond what the adapter keeps.
        let mut too_big = vec![];
        put_int(&mut too_big, 0x20, 5, MAX_TABLE_SIZE + 1);
        assert_eq!(
            decode_list(&mut dec, &too_big),
            Err(HpackError::TableSize(MAX_TABLE_SIZE + 1))
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: [(&str, HpackError); 6] = [
            ("80", HpackError::Index(0)),
            ("be", HpackError::Index(62)),
            ("ff80", HpackError::Truncated),
            ("400a637573", HpackError::Truncated),
            ("4001", HpackError::Truncated),
            ("04 81 00", HpackError::HuffmanPadding),
        ];
        for (block, err) in cases {
            let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
            assert_eq!(decode_list(&mut dec, &hex(block)), Err(err), "{block}");
        }

        // A small block that would expand beyond the list limit through the
        // dynamic table.
        let mut block = vec![0x40, 0x01, b'x'];
        put_int(&mut block, 0, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0xbe, 300));
        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        assert_eq!(decode_list(&mut dec, &block), Err(HpackError::ListTooLarge));
    }

    #[test]
    fn random_blocks_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        for _ in 0..20_000 {
            let len = rng.below(64);
            let block: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            let mut enc = Vec::new();
            if dec.rewrite(&block, &mut enc).is_ok() {
                decode_stateless(&enc);
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    // ----- framing ---------------------------------------------------------

    #[tokio::test]
    async fn grpcio_request_gets_localhost_and_other_frames_are_untouched() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(0x8, 0, 0, &hex("003f0001")));
        input.extend(frame(0x4, 0x1, 0, &[]));
        let before = input.clone();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK)));
        let headers_end = input.len();
        let mut tail = frame(0x8, 0, 1, &hex("00000005"));
        tail.extend(frame(0x0, FLAG_END_STREAM, 1, &hex("0000000000")));
        input.extend(&tail);

        let out = run(&input).await;
        assert!(out.starts_with(&before));
        assert!(out.ends_with(&tail));
        let frames = split_frames(&out);
        let blocks = header_blocks(&frames);
        assert_eq!(blocks.len(), 1);
        let (h, block) = &blocks[0];
        assert_eq!((h.stream, h.flags), (1, FLAG_END_HEADERS));
        assert_eq!(decode_stateless(block), grpcio_fields("localhost"));
        // The original block, for contrast, really carries the path.
        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        assert_eq!(
            decode_list(&mut dec, &input[before.len() + 9..headers_end]).unwrap(),
            grpcio_fields("tmp%2Fcap%2Fsock.sock")
        );
    }

    #[tokio::test]
    async fn follows_the_dynamic_table_across_streams() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let requests = rfc_requests();
        for (i, (_, huffman, _)) in requests.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, huffman));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"body"));
        }
        let out = run(&input).await;
        let frames = split_frames(&out);
        let blocks = header_blocks(&frames);
        assert_eq!(blocks.len(), 3);
        for ((h, block), (i, (_, _, list))) in blocks.iter().zip(requests.iter().enumerate()) {
            assert_eq!(h.stream, 1 + 2 * i as u32);
            assert_eq!(decode_stateless(block), with_localhost(list));
        }
        let data: Vec<_> = frames.iter().filter(|(h, _)| h.kind == 0).collect();
        assert_eq!(data.len(), 3);
        assert!(data.iter().all(|(_, p)| p == b"body"));
    }

    #[tokio::test]
    async fn padded_priority_headers_keep_priority_and_end_stream() {
        let (first, _, list) = rfc_requests().remove(0);
        let mut payload = vec![7];
        payload.extend(hex("80000003 0f"));
        payload.extend(&first);
        payload.extend([0; 7]);
        let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS;
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, flags, 5, &payload));
        let out = run(&input).await;
        let frames = split_frames(&out);
        assert_eq!(frames.len(), 1);
        let (h, p) = &frames[0];
        assert_eq!(
            (h.kind, h.flags, h.stream),
            (
                TYPE_HEADERS,
                FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS,
                5
            )
        );
        assert_eq!(p[..5], hex("80000003 0f"));
        assert_eq!(decode_stateless(&p[5..]), with_localhost(&list));
    }

    #[tokio::test]
    async fn continuation_frames_are_reassembled() {
        let block = hex(GRPCIO_BLOCK);
        // Split inside strings, with an empty CONTINUATION in between.
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(100);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED,
            3,
            &[&[2u8][..], a, &[0, 0]].concat(),
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 3, b));
        input.extend(frame(TYPE_CONTINUATION, 0, 3, &[]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, c));
        let out = run(&input).await;
        let frames = split_frames(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.flags, FLAG_END_HEADERS);
        assert_eq!(decode_stateless(&frames[0].1), grpcio_fields("localhost"));
    }

    #[tokio::test]
    async fn large_blocks_are_split_at_the_default_frame_size() {
        let big = "x".repeat(40_000);
        let mut block = hex("8386 41 09 6c6f63616c686f7374 84");
        block.extend([0x00, 0x05]);
        block.extend(b"x-big");
        put_int(&mut block, 0, 7, big.len());
        block.extend(big.as_bytes());
        for priority in [false, true] {
            let mut input = PREFACE.to_vec();
            let mut chunks = block.chunks(MAX_FRAME_SIZE - 5).peekable();
            let mut first = true;
            while let Some(chunk) = chunks.next() {
                let mut flags = if chunks.peek().is_none() {
                    FLAG_END_HEADERS
                } else {
                    0
                };
                let mut payload = Vec::new();
                let kind = if first {
                    TYPE_HEADERS
                } else {
                    TYPE_CONTINUATION
                };
                if first && priority {
                    flags |= FLAG_PRIORITY;
                    payload.extend([0, 0, 0, 0, 200]);
                }
                payload.extend(chunk);
                input.extend(frame(kind, flags, 1, &payload));
                first = false;
            }
            let out = run(&input).await;
            let frames = split_frames(&out);
            let kinds: Vec<_> = frames
                .iter()
                .map(|(h, _)| (h.kind, h.len, h.flags))
                .collect();
            let total = block.len() + if priority { 5 } else { 0 };
            let prio_flag = if priority { FLAG_PRIORITY } else { 0 };
            assert_eq!(
                kinds,
                vec![
                    (TYPE_HEADERS, MAX_FRAME_SIZE, prio_flag),
                    (TYPE_CONTINUATION, MAX_FRAME_SIZE, 0),
                    (
                        TYPE_CONTINUATION,
                        total - 2 * MAX_FRAME_SIZE,
                        FLAG_END_HEADERS
                    ),
                ]
            );
            let blocks = header_blocks(&frames);
            let list = decode_stateless(&blocks[0].1);
            assert_eq!(list[4], field("x-big", &big));
            assert_eq!(list[2], field(":authority", "localhost"));
        }
    }

    #[tokio::test]
    async fn non_header_frames_pass_through_byte_for_byte() {
        let mut rng = XorShift(42);
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(0x6, 0, 0, b"pingping"));
        input.extend(frame(0x8, 0, 0, &hex("7fffffff")));
        input.extend(frame(0x2, 0, 1, &hex("0000000010")));
        let big: Vec<u8> = (0..300_000).map(|_| rng.byte()).collect();
        input.extend(frame(0x0, 0, 1, &big[..100_000]));
        input.extend(frame(
            0x0,
            FLAG_PADDED,
            1,
            &[&[3u8][..], b"data", &[0, 0, 0]].concat(),
        ));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &big));
        input.extend(frame(0x3, 0, 1, &hex("00000008")));
        input.extend(frame(0xfa, 0xff, 7, b"an extension frame"));
        input.extend(frame(0x7, 0, 0, &hex("00000000 00000000 676f6f64627965")));
        assert_eq!(run(&input).await, input);
    }

    #[tokio::test]
    async fn malformed_input_is_handed_on_unchanged() {
        let good = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK));
        let with_preface = |frames: &[Vec<u8>]| {
            let mut v = PREFACE.to_vec();
            v.extend(settings());
            for f in frames {
                v.extend(f);
            }
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("short preface then EOF", PREFACE[..10].to_vec()),
            (
                "bad HPACK index",
                with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex("82 ff10"))]),
            ),
            (
                "bad Huffman",
                with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex("82 0481 00"))]),
            ),
            ("truncated HEADERS", {
                let mut v = with_preface(std::slice::from_ref(&good));
                v.truncate(v.len() - 20);
                v
            }),
            ("truncated frame header", {
                let mut v = with_preface(&[]);
                v.extend(&good[..5]);
                v
            }),
            (
                "oversized HEADERS",
                with_preface(&[frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &vec![0x82; 20_000],
                )]),
            ),
            (
                "stray CONTINUATION",
                with_preface(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &hex("82"))]),
            ),
            (
                "interrupted block",
                with_preface(&[
                    frame(TYPE_HEADERS, 0, 1, &hex("82")),
                    frame(0x0, 0, 1, b"data"),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &hex("84")),
                ]),
            ),
            (
                "CONTINUATION on another stream",
                with_preface(&[
                    frame(TYPE_HEADERS, 0, 1, &hex("82")),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &hex("84")),
                ]),
            ),
            (
                "padding longer than the frame",
                with_preface(&[frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS | FLAG_PADDED,
                    1,
                    &hex("09 8286"),
                )]),
            ),
            (
                "priority missing",
                with_preface(&[frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS | FLAG_PRIORITY,
                    1,
                    &hex("82"),
                )]),
            ),
            (
                "HEADERS on stream 0",
                with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &hex("82"))]),
            ),
        ];
        for (name, input) in cases {
            assert_eq!(run(&input).await, input, "{name}");
        }

        // After a good block, a bad one: the good one was rewritten, the
        // rest is handed on as the client sent it.
        let bad = frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &hex("82 ff10"));
        let input = with_preface(&[good.clone(), bad.clone(), frame(0x6, 0, 0, b"pingping")]);
        let out = run(&input).await;
        let tail = [bad, frame(0x6, 0, 0, b"pingping")].concat();
        assert!(out.ends_with(&tail));
        let rewritten = &out[..out.len() - tail.len()];
        let blocks = header_blocks(&split_frames(rewritten));
        assert_eq!(decode_stateless(&blocks[0].1), grpcio_fields("localhost"));
    }

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

    #[tokio::test]
    async fn random_frames_never_panic() {
        let mut rng = XorShift(7);
        let kinds = [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, 0x4, 0x8, 0x22];
        for _ in 0..300 {
            let mut input = PREFACE.to_vec();
            for _ in 0..rng.below(6) {
                let kind = kinds[rng.below(kinds.len())];
                let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.byte()).collect();
                let mut f = frame(kind, rng.byte(), rng.below(4) as u32, &payload);
                if rng.below(8) == 0 {
                    // A lying length.
                    f[2] = rng.byte();
                }
                input.extend(f);
            }
            let out = run_with(&input, 1 + rng.below(20), 1 + rng.below(50)).await;
            assert!(out.starts_with(PREFACE));
        }
    }

    // ----- against h2 itself ----------------------------------------------

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
}
