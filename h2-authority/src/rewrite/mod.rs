//! The rewriting state machine over the client-to-server bytes, without I/O:
//! it follows the preface and the frames, collects each header block, and has
//! it re-encoded with `:authority` replaced; everything else is handed on as it
//! came. [`AuthorityFix`](crate::AuthorityFix) drives it from a socket;
//! [`Rewriter`] and [`rewrite`] drive it from byte slices.

use std::fmt;

use tokio::io::ReadBuf;

use crate::frame::{
    FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_HEADER_LEN, FrameHeader, MAX_FRAME_SIZE, PREFACE,
    TYPE_CONTINUATION, TYPE_HEADERS, frame_at, headers_fields, write_header_frames,
};
use crate::hpack::{self, Decoder, HpackError, INITIAL_TABLE_SIZE, Repr};
use crate::{MAX_HEADER_BLOCK, REPLACEMENT_AUTHORITY};

/// Read size from the socket while frames are parsed.
const READ_CHUNK: usize = 16 * 1024;
const MIN_READ: usize = 4 * 1024;

/// What [`Inbound::drain_into`] needs next.
pub(crate) enum Want {
    /// The caller's buffer is full.
    Full,
    /// More bytes from the socket in [`Inbound::input_space`].
    Input,
    /// Up to this many bytes that pass through unchanged: read them from the
    /// socket straight into the caller's buffer.
    Direct(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
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
pub(crate) struct Inbound {
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
    /// Why the adapter stopped following the connection, once it has.
    stopped: Option<Malformed>,
}

impl Inbound {
    pub(crate) fn new() -> Self {
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
            stopped: None,
        }
    }

    /// Whether a header block is being collected (the adapter holds bytes).
    pub(crate) fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// How many header blocks have been started, to tell one block from the next.
    pub(crate) fn blocks_started(&self) -> u64 {
        self.blocks
    }

    /// Whether the client closed its side.
    pub(crate) fn at_eof(&self) -> bool {
        self.eof
    }

    /// Where in the connection the state machine is.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Where the next read from the socket goes; room for at least the unit
    /// being parsed.
    pub(crate) fn input_space(&mut self) -> &mut [u8] {
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

    pub(crate) fn on_input(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
        self.tail += n;
    }

    pub(crate) fn on_direct(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
        if self.phase != Phase::Transparent {
            self.fwd -= n.min(self.fwd);
        }
    }

    /// Moves whatever is ready into `dst`, parsing frames as it goes.
    pub(crate) fn drain_into(&mut self, dst: &mut ReadBuf<'_>) -> Want {
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
                if avail == 0 && !transparent && self.eof {
                    // The client closed its side in the middle of a frame
                    // that was being handed on as it came.
                    self.pass_through(Malformed::Truncated);
                    continue;
                }
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
                Ok(false) => self.pass_through(Malformed::Truncated),
                Err(e) => self.pass_through(e),
            }
        }
    }

    /// From here on, hands on the client's bytes as they are.
    fn pass_through(&mut self, why: Malformed) {
        tracing::debug!(
            error = %why,
            "workload API connection: passing the rest of the client's bytes through unchanged",
        );
        self.phase = Phase::Transparent;
        self.block = None;
        self.need = 0;
        self.stopped = Some(why);
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
        let (priority, first_fragment) =
            headers_fields(first.flags, payload).ok_or(Malformed::Padding)?;
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
        transcode(&mut self.hpack, fragment, &mut self.enc)?;
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

/// Why the adapter stopped following a connection (and handed on the rest of
/// the client's bytes unchanged, for h2 to judge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The connection does not start with the HTTP/2 client preface.
    #[error("not an HTTP/2 client connection preface")]
    Preface,
    /// A HEADERS frame on the connection's stream 0.
    #[error("HEADERS frame on stream 0")]
    StreamZero,
    /// A CONTINUATION frame with no header block open.
    #[error("CONTINUATION frame outside a header block")]
    StrayContinuation,
    /// Another frame (of this type), or another stream, inside a header block.
    #[error("header block interrupted by a frame of type {0:#x}")]
    Interrupted(u8),
    /// A HEADERS or CONTINUATION frame longer than the default frame size.
    #[error("header frame of {0} bytes, above the default SETTINGS_MAX_FRAME_SIZE")]
    FrameTooLarge(usize),
    /// A header block longer than [`MAX_HEADER_BLOCK`].
    #[error("header block above {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    /// HEADERS padding or priority fields longer than the frame.
    #[error("HEADERS padding or priority longer than the frame")]
    Padding,
    /// The client closed its side in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A header block that does not decode.
    #[error("HPACK: {0}")]
    Hpack(#[from] HpackError),
}

/// Re-encodes the header block `block` into `enc` without the dynamic table,
/// with `:authority` replaced, following the client's table in `hpack`.
fn transcode(hpack: &mut Decoder, block: &[u8], enc: &mut Vec<u8>) -> Result<(), HpackError> {
    hpack.decode(block, |repr| match repr {
        Repr::SizeUpdate(size) => hpack::encode_size_update(enc, size),
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
            hpack::encode_field(enc, name, value, never_indexed);
        }
    })
}

/// The rewriter without a socket: feed it the client's bytes as they arrive,
/// and it appends what h2 must read. The same state machine as
/// [`AuthorityFix`](crate::AuthorityFix), minus the header block timeout (there
/// is no clock here).
pub struct Rewriter {
    rx: Inbound,
    /// Where [`Inbound::drain_into`] writes before the bytes go to the caller
    /// (initialized once: a `ReadBuf` needs initialized memory without unsafe).
    scratch: Vec<u8>,
}

impl fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewriter")
            .field("phase", &self.rx.phase)
            .field("stopped", &self.rx.stopped)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection (expecting the client preface).
    pub fn new() -> Self {
        Rewriter {
            rx: Inbound::new(),
            scratch: vec![0; READ_CHUNK],
        }
    }

    /// Takes the next bytes the client sent and appends to `out` everything
    /// that is ready for h2. A header block is held back until it is complete.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match self.drain(out) {
                Want::Full => {}
                Want::Input => {
                    if input.is_empty() {
                        return;
                    }
                    let space = self.rx.input_space();
                    let n = space.len().min(input.len());
                    space[..n].copy_from_slice(&input[..n]);
                    self.rx.on_input(n);
                    input = &input[n..];
                }
                Want::Direct(limit) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = limit.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    self.rx.on_direct(n);
                    input = &input[n..];
                }
            }
        }
    }

    /// The client closed its side: appends what is still held (an unfinished
    /// frame or header block, as the client sent it).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.rx.eof {
            return;
        }
        self.rx.on_input(0);
        while let Want::Full = self.drain(out) {}
    }

    /// Why the rewriter stopped following the connection, if it has: from that
    /// point on it hands the client's bytes on unchanged.
    pub fn stopped(&self) -> Option<&Malformed> {
        self.rx.stopped.as_ref()
    }

    /// One round of [`Inbound::drain_into`] into `out`.
    fn drain(&mut self, out: &mut Vec<u8>) -> Want {
        let mut dst = ReadBuf::new(&mut self.scratch);
        let want = self.rx.drain_into(&mut dst);
        out.extend_from_slice(dst.filled());
        want
    }
}

/// What [`rewrite`] made of a client's whole byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The bytes h2 reads in place of the client's.
    pub output: Vec<u8>,
    /// Why the rewriter stopped following the connection, if it did: from that
    /// point `output` holds the client's own bytes, unchanged.
    pub stopped: Option<Malformed>,
}

/// Runs everything a client sent on one connection, up to its end, through the
/// rewriter: what h2 behind the adapter reads, and where the rewriter gave up
/// following, if it did.
pub fn rewrite(client_bytes: &[u8]) -> Rewritten {
    let mut rewriter = Rewriter::new();
    let mut output = Vec::with_capacity(client_bytes.len());
    rewriter.feed(client_bytes, &mut output);
    rewriter.finish(&mut output);
    Rewritten {
        output,
        stopped: rewriter.rx.stopped.take(),
    }
}

#[cfg(test)]
mod tests;
