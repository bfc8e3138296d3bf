//! `h2_authority`: any bytes, as a client's side of a Workload API connection,
//! through the `:authority` adapter (`tessera_h2_authority`).
//!
//! Checked for every input:
//!
//! - The adapter gives the same bytes whether the client's bytes come whole,
//!   one at a time or in other pieces, through [`tessera_h2_authority::rewrite`],
//!   a [`tessera_h2_authority::Rewriter`] or [`tessera_h2_authority::fix_authority`]
//!   on a socket.
//! - Up to where it stops following the connection, its output is the input
//!   with each header block re-encoded: every frame that is not HEADERS or
//!   CONTINUATION is there byte for byte; each header block decodes, with a
//!   fresh HPACK decoder (so it needs no table state), to the client's header
//!   list with every `:authority` set to `localhost` and nothing else changed,
//!   on the same stream with the same END_STREAM and priority, in frames of
//!   at most 16,384 bytes. From where it stops, the output is the client's own
//!   bytes. It stops only at something it documents as a reason: never at the
//!   preface, a frame that is not a header frame, or a well-formed header block
//!   within its limits.
//! - h2 judges the same bytes with and without the adapter: every request h2
//!   accepts through the adapter is exactly what the client sent, with
//!   `localhost` as its authority; every request h2 accepts from the client's
//!   own bytes before the point where the adapter stopped, h2 also accepts
//!   through it, identical but for the authority (unless the request is
//!   malformed and h2 took it only because of how its block was cut into
//!   frames: see [`crate::h2_requests`]); past that point, whatever h2 accepts
//!   through the adapter it also accepts without it, identical.

use tessera_h2_authority::{HeaderDecoder, MAX_HEADER_BLOCK, REPLACEMENT_AUTHORITY, Rewriter};

use crate::h2_judge::{Accepted, Verdict, judge, malformed_for_h2};

pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
const MAX_FRAME: usize = 16_384;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub start: usize,
    pub end: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Frame {
    fn payload<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.start + HEADER_LEN..self.end]
    }
}

/// The complete frame at `pos`, if there is one.
pub(crate) fn frame_at(data: &[u8], pos: usize) -> Option<Frame> {
    let h = data.get(pos..pos + HEADER_LEN)?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let end = pos + HEADER_LEN + len;
    if end > data.len() {
        return None;
    }
    Some(Frame {
        start: pos,
        end,
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    })
}

/// The units the adapter follows a connection in.
#[derive(Debug, Clone)]
pub(crate) enum Unit {
    Preface,
    /// A frame that is not part of a header block.
    Other(Frame),
    /// HEADERS and its CONTINUATION frames, up to END_HEADERS.
    Block(Vec<Frame>),
    /// From here on the input cannot be followed (wrong preface, a header
    /// block interrupted or a stray CONTINUATION) or is cut short.
    Rest,
}

/// The input cut into units, each with its start offset.
pub(crate) fn units(data: &[u8]) -> Vec<(usize, Unit)> {
    let mut out = Vec::new();
    if data.len() < PREFACE.len() || data[..PREFACE.len()] != PREFACE[..] {
        if !data.is_empty() {
            out.push((0, Unit::Rest));
        }
        return out;
    }
    out.push((0, Unit::Preface));
    let mut pos = PREFACE.len();
    while pos < data.len() {
        let Some(f) = frame_at(data, pos) else {
            out.push((pos, Unit::Rest));
            return out;
        };
        match f.kind {
            HEADERS => {
                let mut frames = vec![f];
                let mut last = f;
                while last.flags & END_HEADERS == 0 {
                    match frame_at(data, last.end) {
                        Some(g) if g.kind == CONTINUATION && g.stream == f.stream => {
                            frames.push(g);
                            last = g;
                        }
                        _ => {
                            out.push((pos, Unit::Rest));
                            return out;
                        }
                    }
                }
                out.push((pos, Unit::Block(frames)));
                pos = last.end;
            }
            CONTINUATION => {
                out.push((pos, Unit::Rest));
                return out;
            }
            _ => {
                out.push((pos, Unit::Other(f)));
                pos = f.end;
            }
        }
    }
    out
}

fn unit_end(data: &[u8], unit: &Unit, start: usize) -> usize {
    match unit {
        Unit::Preface => PREFACE.len(),
        Unit::Other(f) => f.end,
        Unit::Block(frames) => frames.last().map_or(start, |f| f.end),
        Unit::Rest => data.len(),
    }
}

/// A HEADERS payload's priority fields and fragment (padding dropped), or
/// `None` when the padding or priority does not fit.
fn headers_fields(flags: u8, payload: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, r) = rest.split_first()?;
        pad = usize::from(n);
        rest = r;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if rest.len() < 5 {
            return None;
        }
        let (p, r) = rest.split_at(5);
        priority = Some(p);
        rest = r;
    }
    let keep = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..keep]))
}

/// What a header block says, apart from its header list.
pub(crate) struct BlockParts<'a> {
    pub stream: u32,
    pub end_stream: bool,
    /// The HEADERS frame's priority fields, if it has them.
    pub priority: Option<&'a [u8]>,
    /// The header block fragments put together, without padding.
    pub fragment: Vec<u8>,
}

/// A header block's parts; `None` when the HEADERS padding or priority does
/// not fit.
pub(crate) fn block_parts<'a>(data: &'a [u8], frames: &[Frame]) -> Option<BlockParts<'a>> {
    let first = frames.first()?;
    let (priority, fragment) = headers_fields(first.flags, first.payload(data))?;
    let mut block = fragment.to_vec();
    for f in &frames[1..] {
        block.extend_from_slice(f.payload(data));
    }
    Some(BlockParts {
        stream: first.stream,
        end_stream: first.flags & END_STREAM != 0,
        priority,
        fragment: block,
    })
}

pub(crate) type List = Vec<(Vec<u8>, Vec<u8>)>;

/// The list with every `:authority` set to the replacement.
pub(crate) fn with_localhost(list: &List) -> List {
    list.iter()
        .map(|(n, v)| {
            if n == b":authority" {
                (n.clone(), REPLACEMENT_AUTHORITY.to_vec())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

/// What the adapter gives for `data` fed `chunk` bytes at a time, and after
/// how many bytes it stopped following the connection (`None`: it never did;
/// `Some(data.len() + 1)`: at the end, when told the client closed its side).
fn feed(data: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>) {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    let mut stopped_at = None;
    let mut fed = 0;
    for piece in data.chunks(chunk.max(1)) {
        rewriter.feed(piece, &mut out);
        fed += piece.len();
        if stopped_at.is_none() && rewriter.stopped().is_some() {
            stopped_at = Some(fed);
        }
    }
    rewriter.finish(&mut out);
    if stopped_at.is_none() && rewriter.stopped().is_some() {
        stopped_at = Some(data.len() + 1);
    }
    (out, stopped_at)
}

/// The adapter reading `data` from a socket, the way the agent runs it.
fn through_socket(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    crate::fixtures::block_on(async {
        let mut io = tessera_h2_authority::fix_authority(data);
        let mut out = Vec::new();
        io.read_to_end(&mut out)
            .await
            .expect("reading from memory does not fail");
        out
    })
}

pub fn run(data: &[u8]) {
    let whole = tessera_h2_authority::rewrite(data);
    let out = whole.output;

    // The same bytes however the input arrives.
    let (bytewise, stopped_at) = feed(data, 1);
    assert_eq!(bytewise, out, "one byte at a time gives other bytes");
    for chunk in [7, 4096] {
        assert_eq!(feed(data, chunk).0, out, "{chunk} bytes at a time differ");
    }
    assert_eq!(through_socket(data), out, "the socket adapter differs");
    assert_eq!(
        whole.stopped.is_some(),
        stopped_at.is_some(),
        "rewrite() and Rewriter disagree on stopping"
    );

    let units = units(data);
    // The unit the adapter stopped in: it decides on a unit once it has read
    // to (at most) the header of the frame after it.
    let stop_unit = stopped_at.map(|n| {
        let last = n.min(data.len()).saturating_sub(1);
        units
            .iter()
            .rposition(|(start, _)| *start <= last)
            .unwrap_or(0)
    });

    let mut table = HeaderDecoder::default();
    let mut opos = 0;
    let mut expected: Vec<(u32, usize, List)> = Vec::new();
    let mut pieces: Vec<&[u8]> = Vec::new();
    for (i, (start, unit)) in units.iter().enumerate() {
        let end = unit_end(data, unit, *start);
        pieces.push(&data[*start..end]);
        if Some(i) == stop_unit {
            check_stop_is_justified(data, unit, &mut table);
            assert_eq!(
                &out[opos..],
                &data[*start..],
                "after it stopped the adapter did not hand on the client's bytes"
            );
            opos = out.len();
            pieces.push(&data[end..]);
            break;
        }
        match unit {
            Unit::Preface | Unit::Other(_) => {
                assert_eq!(
                    out.get(opos..opos + end - start),
                    Some(&data[*start..end]),
                    "a frame that is not a header frame changed"
                );
                opos += end - start;
            }
            Unit::Block(frames) => {
                let BlockParts {
                    stream,
                    end_stream,
                    priority,
                    fragment,
                } = block_parts(data, frames)
                    .expect("the adapter followed a block whose padding does not fit");
                let list = table
                    .decode(&fragment)
                    .expect("the adapter followed a block that does not decode");
                opos += check_rewritten_block(
                    &out[opos..],
                    stream,
                    end_stream,
                    priority,
                    &with_localhost(&list),
                );
                if !expected.iter().any(|(s, _, _)| *s == stream) {
                    expected.push((stream, i, list));
                }
            }
            Unit::Rest => panic!("the adapter followed input it cannot follow: {unit:?}"),
        }
    }
    assert_eq!(opos, out.len(), "the adapter added bytes");

    let direct = judge(&pieces, false);
    let adapted = judge(&pieces, true);
    compare_verdicts(&direct, &adapted, &expected, stop_unit);
}

/// The adapter may stop only at something it documents as a reason.
fn check_stop_is_justified(data: &[u8], unit: &Unit, table: &mut HeaderDecoder) {
    let Unit::Block(frames) = unit else {
        assert!(
            matches!(unit, Unit::Rest),
            "the adapter stopped at the preface or a plain frame: {unit:?}"
        );
        return;
    };
    let first = frames[0];
    let too_big = frames
        .iter()
        .any(|f| f.end - f.start - HEADER_LEN > MAX_FRAME)
        || frames.last().map_or(0, |f| f.end) - first.start > MAX_HEADER_BLOCK;
    if first.stream == 0 || too_big {
        return;
    }
    let Some(BlockParts { fragment, .. }) = block_parts(data, frames) else {
        return;
    };
    assert!(
        table.decode(&fragment).is_err(),
        "the adapter stopped at a well-formed header block within its limits"
    );
}

/// Checks the rewritten header block at the start of `out`; returns its length.
fn check_rewritten_block(
    out: &[u8],
    stream: u32,
    end_stream: bool,
    priority: Option<&[u8]>,
    expected: &List,
) -> usize {
    let first = frame_at(out, 0).expect("a rewritten header block is cut short");
    assert_eq!(
        first.kind, HEADERS,
        "a header block does not start with HEADERS"
    );
    assert_eq!(
        first.stream, stream,
        "a header block moved to another stream"
    );
    assert_eq!(
        first.flags & END_STREAM != 0,
        end_stream,
        "END_STREAM changed"
    );
    assert_eq!(first.flags & PADDED, 0, "the adapter wrote padding");
    let (prio, fragment) =
        headers_fields(first.flags, first.payload(out)).expect("the adapter's priority fields");
    assert_eq!(prio, priority, "the priority fields changed");
    let mut block = fragment.to_vec();
    let mut last = first;
    loop {
        assert!(
            last.end - last.start - HEADER_LEN <= MAX_FRAME,
            "the adapter wrote a frame above the default size"
        );
        if last.flags & END_HEADERS != 0 {
            break;
        }
        let next = frame_at(out, last.end).expect("a rewritten header block is cut short");
        assert!(
            next.kind == CONTINUATION && next.stream == stream && next.flags & !END_HEADERS == 0,
            "a rewritten header block continues with {next:?}"
        );
        block.extend_from_slice(next.payload(out));
        last = next;
    }
    let list = HeaderDecoder::default()
        .decode(&block)
        .expect("a rewritten block needs table state or does not decode");
    assert_eq!(
        &list, expected,
        "the rewritten block is not the client's with localhost"
    );
    last.end
}

/// The request a header list makes, as h2 hands it out.
fn matches_list(a: &Accepted, list: &List) -> bool {
    let pseudo = |name: &[u8]| {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let mut headers = http::HeaderMap::new();
    for (n, v) in list.iter().filter(|(n, _)| !n.starts_with(b":")) {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n),
            http::HeaderValue::from_bytes(v),
        ) else {
            return false;
        };
        headers.append(n, v);
    }
    // h2 checks `:scheme` but keeps it only with an authority (an
    // `http::Uri` cannot hold a scheme and a path without one).
    let scheme = pseudo(b":authority").and(pseudo(b":scheme"));
    Some(&a.method) == pseudo(b":method").as_ref()
        && a.scheme == scheme
        && a.authority == pseudo(b":authority")
        && (a.path == pseudo(b":path") || (a.path.is_none() && a.method == "CONNECT"))
        && a.headers == headers
}

fn compare_verdicts(
    direct: &Verdict,
    adapted: &Verdict,
    expected: &[(u32, usize, List)],
    stop_unit: Option<usize>,
) {
    let followed = |unit: usize| stop_unit.is_none_or(|stop| unit < stop);
    for b in &adapted.accepted {
        match expected.iter().find(|(s, _, _)| *s == b.stream) {
            Some((_, unit, list)) if followed(*unit) => assert!(
                matches_list(b, &with_localhost(list)),
                "through the adapter h2 accepted {b:?}, not the client's {list:?} with localhost"
            ),
            _ => assert_eq!(
                direct.get(b.stream),
                Some(b),
                "past the adapter's stop h2 accepted a request it does not accept from the client's bytes"
            ),
        }
    }
    for a in &direct.accepted {
        let Some((_, unit, list)) = expected.iter().find(|(s, _, _)| *s == a.stream) else {
            continue;
        };
        // h2 takes a malformed request when its block is cut into frames
        // just so (see `h2_judge::malformed_for_h2`); the adapter writes
        // blocks whole, and h2 then refuses it, as it should.
        if !followed(*unit) || malformed_for_h2(list) {
            continue;
        }
        let has_authority = list.iter().any(|(n, _)| n == b":authority");
        let want = a.with_authority(has_authority.then_some("localhost"));
        assert_eq!(
            adapted.get(a.stream),
            Some(&want),
            "h2 accepts this request from the client's bytes but not the same through the adapter"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The judge sees what the adapter is for: h2 refuses grpcio's request
    /// from the client's own bytes and accepts it, with localhost, through
    /// the adapter.
    #[test]
    fn h2_refuses_grpcio_alone_and_accepts_it_through_the_adapter() {
        let seed = crate::seeds::all()
            .into_iter()
            .find(|(t, n, _)| *t == "h2_authority" && n == "grpcio-fetch-jwt-svid.bin")
            .unwrap()
            .2;
        let pieces: Vec<&[u8]> = units(&seed)
            .iter()
            .map(|(start, u)| &seed[*start..unit_end(&seed, u, *start)])
            .collect();
        assert_eq!(pieces.concat(), seed);
        let direct = judge(&pieces, false);
        assert!(direct.get(1).is_none(), "{direct:?}");
        let adapted = judge(&pieces, true);
        let req = adapted.get(1).expect("accepted through the adapter");
        assert_eq!(req.authority.as_deref(), Some("localhost"));
        assert_eq!(req.path.as_deref(), Some("/SpiffeWorkloadAPI/FetchJWTSVID"));
        assert_eq!(req.headers["workload.spiffe.io"], "true");
        run(&seed);
    }

    /// A request with a valid authority is accepted both ways.
    #[test]
    fn rfc_requests_are_accepted_both_ways() {
        let seed = crate::seeds::all()
            .into_iter()
            .find(|(t, n, _)| *t == "h2_authority" && n == "rfc7541-c4.bin")
            .unwrap()
            .2;
        let pieces: Vec<&[u8]> = units(&seed)
            .iter()
            .map(|(start, u)| &seed[*start..unit_end(&seed, u, *start)])
            .collect();
        let direct = judge(&pieces, false);
        let adapted = judge(&pieces, true);
        assert_eq!(direct.accepted.len(), 3, "{direct:?}");
        assert_eq!(adapted.accepted.len(), 3, "{adapted:?}");
        assert_eq!(
            direct.accepted[2].authority.as_deref(),
            Some("www.example.com")
        );
        assert_eq!(adapted.accepted[2].authority.as_deref(), Some("localhost"));
    }
}
