//! HTTP/2 framing (RFC 9113 §4 and §6.2, §6.10): frame headers, the fields of a
//! HEADERS payload, and a header block written back out as HEADERS plus
//! CONTINUATION frames. Only what the adapter needs: every other frame passes
//! through without being looked into.

pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const FRAME_HEADER_LEN: usize = 9;

/// The protocol's default SETTINGS_MAX_FRAME_SIZE, which every server accepts.
pub(crate) const MAX_FRAME_SIZE: usize = 16_384;

pub(crate) const TYPE_HEADERS: u8 = 0x1;
pub(crate) const TYPE_CONTINUATION: u8 = 0x9;

pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;

/// The 9-byte header every frame starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    /// Payload length.
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// Stream identifier, reserved bit cleared.
    pub(crate) stream: u32,
}

impl FrameHeader {
    /// The header at the start of `buf`, if all nine bytes are there.
    pub(crate) fn parse(buf: &[u8]) -> Option<FrameHeader> {
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
pub(crate) fn frame_at(buf: &[u8], pos: usize) -> Option<(FrameHeader, &[u8])> {
    let rest = buf.get(pos..)?;
    let h = FrameHeader::parse(rest)?;
    let payload = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.len)?;
    Some((h, payload))
}

/// Splits a HEADERS payload into its priority fields and header block
/// fragment, dropping padding (RFC 9113 §6.2). `None`: the padding or priority
/// fields are longer than the frame.
pub(crate) fn headers_fields(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, r) = rest.split_first()?;
        pad = usize::from(n);
        rest = r;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (p, r) = rest.split_first_chunk::<5>()?;
        priority = Some(*p);
        rest = r;
    }
    let keep = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..keep]))
}

/// Frames a header block as HEADERS plus as many CONTINUATION frames as the
/// default frame size needs.
pub(crate) fn write_header_frames(
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

/// Appends a frame header; `len` is at most [`MAX_FRAME_SIZE`].
pub(crate) fn put_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_FRAME_SIZE, so three bytes hold it.
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}
